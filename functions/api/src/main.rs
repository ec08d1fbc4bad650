//! The `api` Lambda: the REST API v1 router (`shared::service::api`) over DynamoDB, the working
//! bucket and STS. Behind API Gateway when the Lambda runtime is present; otherwise a local HTTP
//! server on `BIND` (default 127.0.0.1:8851) that stops cleanly on SIGTERM or Ctrl-C.

use shared::aws::{dynamo::DynamoMeta, s3::S3Blobs, sts::StsIssuer};
use shared::service::api::{ApiState, router};
use shared::service::config::Settings;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::service::telemetry::init();
    let settings = Settings::from_env()?;
    let config = shared::aws::sdk_config().await;
    let state = ApiState {
        meta: DynamoMeta::new(shared::aws::dynamodb_client(&config), settings.table_name.clone()),
        work: S3Blobs::new(shared::aws::work_s3_client(&config), settings.work_bucket.clone()),
        credentials: StsIssuer::new(shared::aws::upload_sts_client(&config), settings.upload.role_arn.clone()),
        settings,
    };
    let app = router(state);
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda_http::run(app).await;
    }
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8851".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(address = %bind, "serving the API locally");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and process supervisors send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
