//! One instance of a function: a child process running the real bootstrap, fed SQS batches
//! through its own Runtime API.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::FunctionConfig;
use crate::runtime_api::{self, Invocation, Outcome};
use crate::sqs_source;

pub struct Instance {
    function: FunctionConfig,
    number: usize,
    child: Child,
    invocations: mpsc::Sender<Invocation>,
    region: String,
}

async fn spawn(function: &FunctionConfig, number: usize) -> anyhow::Result<(Child, mpsc::Sender<Invocation>)> {
    let (addr, invocations) = runtime_api::serve().await?;
    let mut cmd = Command::new(&function.binary);
    cmd.envs(&function.env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &function.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", function.memory_mb.to_string())
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", function.name))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/{number}"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {} ({})", function.name, function.binary))?;
    info!(function = function.name, instance = number, runtime_api = %addr, "instance started");
    Ok((child, invocations))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Instance {
    pub async fn start(function: FunctionConfig, number: usize) -> anyhow::Result<Self> {
        let (child, invocations) = spawn(&function, number).await?;
        let region = function.env.get("AWS_REGION").cloned().unwrap_or_else(|| "us-east-1".into());
        Ok(Instance { function, number, child, invocations, region })
    }

    /// A crashed or timed-out process is replaced by a fresh one with a fresh Runtime API, so no
    /// half-delivered invocation can leak into the new process.
    async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let (child, invocations) = spawn(&self.function, self.number).await?;
        self.child = child;
        self.invocations = invocations;
        Ok(())
    }

    pub async fn serve(mut self, sqs: aws_sdk_sqs::Client) -> anyhow::Result<()> {
        let sources = self.function.event_sources.clone();
        let mut turn = 0usize;
        let mut visibilities = Vec::with_capacity(sources.len());
        for source in &sources {
            visibilities.push(sqs_source::visibility_timeout(&sqs, source).await.unwrap_or(30).max(2));
        }
        // One instance fires the schedules, as EventBridge invokes the function once per tick.
        let schedules = if self.number == 0 { self.function.schedules.clone() } else { Vec::new() };
        let mut due: Vec<tokio::time::Instant> =
            schedules.iter().map(|s| tokio::time::Instant::now() + Duration::from_secs(s.every_secs)).collect();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                warn!(function = self.function.name, instance = self.number, %status, "instance exited; restarting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.restart().await?;
            }
            let now = tokio::time::Instant::now();
            if let Some(i) = due.iter().position(|d| *d <= now) {
                due[i] = now + Duration::from_secs(schedules[i].every_secs);
                let payload = scheduled_event(&schedules[i].name, &self.region).to_string();
                if let Some(Outcome::Error(body)) = self.invoke(payload, None).await? {
                    warn!(function = self.function.name, schedule = schedules[i].name, error = %String::from_utf8_lossy(&body), "scheduled invocation failed");
                }
                continue;
            }
            if sources.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            // Long-poll the main queue; the others (dead-letter queues) are checked in passing.
            let index = turn % sources.len();
            let source = &sources[index];
            turn += 1;
            let wait_secs = match (sources.len(), index) {
                (1, _) => 2,
                (_, 0) => 1,
                _ => 0,
            };
            let messages = match sqs_source::receive(&sqs, source, wait_secs).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(queue = source.queue_url, error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let payload = sqs_source::event(&messages, source, &self.region).to_string();
            let outcome = self.invoke(payload, Some((&sqs, source, &messages[..], visibilities[index]))).await?;
            match outcome {
                Some(Outcome::Response(body)) => {
                    let failed = failed_ids(&body, source.report_batch_item_failures);
                    let done: Vec<_> = messages
                        .iter()
                        .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
                        .collect();
                    if let Err(e) = sqs_source::delete(&sqs, source, &done).await {
                        warn!(error = %e, "deleting processed messages failed; they will be redelivered");
                    }
                }
                Some(Outcome::Error(body)) => {
                    warn!(function = self.function.name, error = %String::from_utf8_lossy(&body), "invocation failed; the batch will be retried");
                }
                None => {}
            }
        }
    }

    /// Hands one invocation to the process and waits for its outcome; `None` if the process died
    /// or overran its timeout (it is then killed). `batch` names the SQS messages being
    /// processed, which are kept invisible meanwhile.
    async fn invoke(
        &mut self,
        payload: String,
        batch: Option<(&aws_sdk_sqs::Client, &crate::config::EventSource, &[aws_sdk_sqs::types::Message], i32)>,
    ) -> anyhow::Result<Option<Outcome>> {
        let timeout = Duration::from_secs(self.function.timeout_secs);
        let (tx, rx) = oneshot::channel();
        let invocation = Invocation {
            request_id: shared::service::tokens::generate(),
            payload,
            deadline_ms: now_ms() + timeout.as_millis() as u64,
            function_arn: format!("arn:aws:lambda:{}:000000000000:function:{}", self.region, self.function.name),
            outcome: tx,
        };
        if self.invocations.send(invocation).await.is_err() {
            self.restart().await?;
            return Ok(None);
        }
        // In AWS the visibility timeout (6 x the function's) outlasts any invocation. The
        // local stack uses a short one so crashed work is retried quickly, and instead
        // keeps the messages of a running invocation invisible, as AWS's would be.
        let visibility = batch.map(|(_, _, _, v)| v).unwrap_or(30);
        let mut heartbeat = tokio::time::interval(Duration::from_secs((visibility as u64 / 2).max(1)));
        heartbeat.tick().await;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        tokio::pin!(rx);
        let outcome = loop {
            tokio::select! {
                r = &mut rx => break r.ok(),
                status = self.child.wait() => {
                    warn!(function = self.function.name, instance = self.number, ?status, "instance died during an invocation");
                    break None;
                }
                _ = &mut deadline => {
                    warn!(function = self.function.name, instance = self.number, "invocation timed out; killing the instance");
                    let _ = self.child.start_kill();
                    break None;
                }
                _ = heartbeat.tick() => {
                    if let Some((sqs, source, messages, _)) = batch {
                        sqs_source::extend_visibility(sqs, source, messages, visibility).await;
                    }
                }
            }
        };
        Ok(outcome)
    }
}

/// The event an EventBridge schedule delivers.
fn scheduled_event(rule: &str, region: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": shared::service::tokens::generate(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": shared::service::time::now_iso(),
        "region": region,
        "resources": [format!("arn:aws:events:{region}:000000000000:rule/{rule}")],
        "detail": {}
    })
}

/// Message ids the function reported as failed (`batchItemFailures`); without
/// ReportBatchItemFailures a response means the whole batch succeeded.
fn failed_ids(body: &[u8], report_batch_item_failures: bool) -> Vec<String> {
    if !report_batch_item_failures {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("batchItemFailures").cloned())
        .and_then(|f| f.as_array().cloned())
        .map(|a| a.iter().filter_map(|f| f.get("itemIdentifier")?.as_str().map(String::from)).collect())
        .unwrap_or_default()
}
