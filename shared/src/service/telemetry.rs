//! Logging: JSON lines in Lambda (and whenever `AWS_LAMBDA_LOG_FORMAT=JSON`), human-readable
//! text otherwise; level from `RUST_LOG` (default `info`). Metrics: [`super::metrics`].

pub fn init() {
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().with_current_span(false).without_time().try_init()
    } else {
        builder.with_target(false).try_init()
    };
}
