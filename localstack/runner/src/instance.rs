//! One instance of a function: a child process running the real bootstrap, fed SQS batches
//! through its own Runtime API, held to the function's MemorySize (see `limits`) and Timeout.
//!
//! Every invocation is logged as Lambda logs it (`START`, `END`, `REPORT` with its duration and
//! peak memory, see `report`). An invocation that overruns its Timeout or is killed for its
//! memory ends with `Status: timeout` / `Status: error Error Type: Runtime.OutOfMemory`; its
//! batch is neither deleted nor kept invisible any longer, so SQS redelivers it after the
//! visibility timeout (and counts the receive towards the redrive to the dead-letter queue), and
//! a fresh process takes the next batch, as Lambda replaces a failed execution environment.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::FunctionConfig;
use crate::limits::{Limiter, Sandbox};
use crate::report::{self, Ending, Report};
use crate::runtime_api::{self, Invocation, Outcome};
use crate::sqs_source;

/// How often the RSS watchdog (where no memory cgroup is writable) looks at an instance.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(20);

pub struct Instance {
    function: FunctionConfig,
    number: usize,
    // Declared before `sandbox`: dropped (killed) first, so its memory cgroup can be removed.
    process: Process,
    sandbox: Sandbox,
    region: String,
}

/// One running bootstrap and the Runtime API it polls.
struct Process {
    child: Child,
    invocations: mpsc::Sender<Invocation>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.server.abort();
        let _ = self.child.start_kill();
    }
}

async fn spawn(function: &FunctionConfig, number: usize, sandbox: &mut Sandbox) -> anyhow::Result<Process> {
    let (addr, invocations, server) = runtime_api::serve().await?;
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
    sandbox.enter_on_spawn(&mut cmd);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            server.abort();
            return Err(e).with_context(|| format!("starting {} ({})", function.name, function.binary));
        }
    };
    sandbox.started(child.id());
    info!(function = function.name, instance = number, runtime_api = %addr, pid = child.id(), "instance started");
    Ok(Process { child, invocations, server })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How the wait for an invocation's outcome ended.
enum Waited {
    Outcome(Outcome),
    Died,
    TimedOut,
}

impl Instance {
    pub async fn start(function: FunctionConfig, number: usize, limiter: &Limiter) -> anyhow::Result<Self> {
        let mut sandbox = limiter.sandbox(&format!("{}.{number}", function.name), function.memory_mb)?;
        let process = spawn(&function, number, &mut sandbox).await?;
        let region = function.env.get("AWS_REGION").cloned().unwrap_or_else(|| "us-east-1".into());
        Ok(Instance { function, number, process, sandbox, region })
    }

    /// A crashed, OOM-killed or timed-out process is replaced by a fresh one with a fresh
    /// Runtime API, so no half-delivered invocation can leak into the new process. A process
    /// that cannot be started is retried (never an instance loop that ends, or one that spins).
    async fn replace(&mut self) {
        let _ = self.process.child.start_kill();
        let _ = self.process.child.wait().await;
        self.process.server.abort();
        let mut backoff = Duration::from_millis(500);
        loop {
            match spawn(&self.function, self.number, &mut self.sandbox).await {
                Ok(process) => {
                    self.process = process;
                    return;
                }
                Err(e) => {
                    warn!(function = self.function.name, instance = self.number, error = %format!("{e:#}"), "could not start a new instance; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
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
            if let Ok(Some(status)) = self.process.child.try_wait() {
                let oom = if self.sandbox.oom_killed() { " (out of memory)" } else { "" };
                warn!(function = self.function.name, instance = self.number, %status, "instance exited between invocations{oom}; restarting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.replace().await;
            }
            let now = tokio::time::Instant::now();
            if let Some(i) = due.iter().position(|d| *d <= now) {
                due[i] = now + Duration::from_secs(schedules[i].every_secs);
                let payload = scheduled_event(&schedules[i].name, &self.region).to_string();
                if let Some(Outcome::Error(body)) = self.invoke(payload, None).await {
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
            let outcome = self.invoke(payload, Some((&sqs, source, &messages[..], visibilities[index]))).await;
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
    /// (OOM-killed or crashed) or overran its timeout; the process is then replaced. `batch`
    /// names the SQS messages being processed, which are kept invisible meanwhile.
    ///
    /// Visibility heartbeat: in AWS the visibility timeout (6 x the function's timeout) outlasts
    /// any invocation and the event-source mapping never changes it. The local stack uses a
    /// short one (10 s) so that crashed work comes back quickly, and instead, every half
    /// visibility timeout while the invocation runs, sets the batch's visibility back to the
    /// queue's timeout. It stops the moment the invocation ends (whatever its outcome) and never
    /// touches the messages afterwards, so a visibility the function itself set for a message it
    /// reports as failed stands, unless the function set it less than one tick before returning.
    async fn invoke(
        &mut self,
        payload: String,
        batch: Option<(&aws_sdk_sqs::Client, &crate::config::EventSource, &[aws_sdk_sqs::types::Message], i32)>,
    ) -> Option<Outcome> {
        let timeout = Duration::from_secs(self.function.timeout_secs);
        let request_id = shared::service::tokens::generate();
        let (tx, rx) = oneshot::channel();
        let invocation = Invocation {
            request_id: request_id.clone(),
            payload,
            deadline_ms: now_ms() + timeout.as_millis() as u64,
            function_arn: format!("arn:aws:lambda:{}:000000000000:function:{}", self.region, self.function.name),
            outcome: tx,
        };
        self.sandbox.begin_invocation();
        let started = Instant::now();
        report::emit(&report::start_line(&self.function.name, &request_id));
        let waited = if self.process.invocations.send(invocation).await.is_err() {
            Waited::Died
        } else {
            self.wait_for_outcome(rx, timeout, batch).await
        };
        let duration = started.elapsed();
        let (ending, outcome) = match waited {
            Waited::Outcome(outcome) => (Ending::Completed, Some(outcome)),
            Waited::TimedOut => (Ending::Timeout, None),
            Waited::Died => {
                // The exit is what tells the kernel's OOM kill (or the watchdog's) apart.
                let _ = self.process.child.wait().await;
                (if self.sandbox.oom_killed() { Ending::OutOfMemory } else { Ending::ExitError }, None)
            }
        };
        if ending == Ending::Timeout {
            let _ = self.process.child.start_kill();
            let _ = self.process.child.wait().await;
        }
        report::emit(&report::end_line(&self.function.name, &request_id));
        report::emit(
            &Report {
                function: &self.function.name,
                request_id: &request_id,
                duration,
                memory_size_mb: self.function.memory_mb,
                max_memory_used_bytes: self.sandbox.peak_bytes(),
                ending,
            }
            .to_string(),
        );
        match ending {
            Ending::Completed => {}
            Ending::Timeout => warn!(function = self.function.name, instance = self.number, request_id = %request_id, timeout_secs = self.function.timeout_secs, "invocation timed out; instance killed, the batch will be redelivered"),
            Ending::OutOfMemory => warn!(function = self.function.name, instance = self.number, request_id = %request_id, memory_mb = self.function.memory_mb, "instance killed for exceeding its memory; the batch will be redelivered"),
            Ending::ExitError => warn!(function = self.function.name, instance = self.number, request_id = %request_id, "instance died during an invocation; the batch will be redelivered"),
        }
        if outcome.is_none() {
            self.replace().await;
        }
        outcome
    }

    async fn wait_for_outcome(
        &mut self,
        rx: oneshot::Receiver<Outcome>,
        timeout: Duration,
        batch: Option<(&aws_sdk_sqs::Client, &crate::config::EventSource, &[aws_sdk_sqs::types::Message], i32)>,
    ) -> Waited {
        let visibility = batch.map(|(_, _, _, v)| v).unwrap_or(30);
        let mut heartbeat = tokio::time::interval(Duration::from_secs((visibility as u64 / 2).max(1)));
        heartbeat.tick().await;
        let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polling = self.sandbox.needs_polling();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        tokio::pin!(rx);
        loop {
            tokio::select! {
                r = &mut rx => return match r {
                    Ok(outcome) => Waited::Outcome(outcome),
                    Err(_) => Waited::Died,
                },
                _ = self.process.child.wait() => return Waited::Died,
                _ = &mut deadline => return Waited::TimedOut,
                _ = watchdog.tick(), if polling => {
                    if self.sandbox.poll_over_limit() {
                        let _ = self.process.child.start_kill();
                    }
                }
                _ = heartbeat.tick() => {
                    if let Some((sqs, source, messages, _)) = batch {
                        sqs_source::extend_visibility(sqs, source, messages, visibility).await;
                    }
                }
            }
        }
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
