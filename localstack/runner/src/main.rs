//! `local-runner`: Lambda's runtime and event-source mappings, locally.
//!
//! For every function in its config it starts instances of the real function binary (the same
//! bootstrap that runs in Lambda) with `AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API served
//! here, and polls the function's SQS queues the way an event-source mapping does: receive a
//! batch, invoke, delete what succeeded (honouring `batchItemFailures`), leave failures to
//! reappear after the visibility timeout, and let the queue's redrive policy move a message to
//! its dead-letter queue after N receives. Each instance is held to its function's template
//! `MemorySize` (a memory cgroup per instance, or an RSS watchdog: `limits`) and `Timeout`; an
//! instance that crashes, is killed for its memory or overruns its timeout is replaced and its
//! batch counts as failed, as in Lambda. Every invocation ends with Lambda's `REPORT` line on
//! stdout (`report`). Schedules (EventBridge rules) invoke the function with a `Scheduled Event`
//! at their rate.
//!
//! `LOCAL_RUNNER_MEMORY_LIMIT` = `auto` (default) | `cgroup-v1` | `cgroup-v2` | `watchdog`
//! chooses the memory mechanism; the runner's first line says which one is active.

mod config;
mod instance;
mod limits;
mod report;
mod runtime_api;
mod sqs_source;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::service::telemetry::init();
    let mut args = std::env::args().skip(1);
    let mut config_path = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next(),
            "-h" | "--help" => {
                println!("usage: local-runner --config runner.json");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: local-runner --config runner.json)"),
        }
    }
    let path = config_path.context("--config runner.json is required")?;
    let config = config::RunnerConfig::load(&path)?;
    let limiter = limits::Limiter::detect(std::env::var("LOCAL_RUNNER_MEMORY_LIMIT").ok().as_deref())?;
    limiter.remove_stale_groups();
    // A plain line (not JSON like the rest of the runner's own logging) that tests and people grep for.
    report::emit(&format!(
        "local-runner: {}; timeouts: an invocation past its function's Timeout is killed",
        limiter.describe()
    ));
    let sdk = shared::aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);

    let mut tasks = tokio::task::JoinSet::new();
    for function in config.functions {
        if function.event_sources.is_empty() && function.schedules.is_empty() {
            continue;
        }
        for n in 0..function.concurrency.max(1) {
            let instance = instance::Instance::start(function.clone(), n, &limiter).await?;
            tasks.spawn(instance.serve(sqs.clone()));
        }
    }
    tracing::info!(instances = tasks.len(), "local runner started");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        Some(res) = tasks.join_next() => {
            tracing::error!(?res, "an instance loop ended");
        }
    }
    // Aborting the loops drops the instances: each kills its process, then removes its cgroup.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}
