//! The runner holds functions to their MemorySize and Timeout as Lambda does: an invocation over
//! either is killed, its REPORT line says why, its message comes back from SQS (here until the
//! queue's redrive moves it to the dead-letter queue after two receives), and a new instance
//! takes the next message.
//!
//! Real pieces throughout: the real `local-runner` binary, LocalStack's SQS of the running local
//! stack (`localstack/up.sh`; the test reads its endpoint from `localstack/.state/env`), and a
//! real Lambda function (`lambda-probe`, on the Rust Lambda runtime) that allocates or sleeps as
//! its message says. Each test makes its own queues and its own runner with its own log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

/// The local stack's settings (endpoint, region, credentials), as its functions get them.
fn stack_env() -> BTreeMap<String, String> {
    let dir = std::env::var("PPRL_LOCAL_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.state/env"));
    let path = dir.join("fan-out.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (these tests need the local stack: localstack/up.sh)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn sqs_client(env: &BTreeMap<String, String>) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_sqs::config::Region::new(env["AWS_REGION"].clone()))
        .endpoint_url(&env["AWS_ENDPOINT_URL_SQS"])
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            &env["AWS_ACCESS_KEY_ID"],
            &env["AWS_SECRET_ACCESS_KEY"],
            None,
            None,
            "local-stack",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A queue (visibility 2 s: redeliveries come quickly) whose messages go to its dead-letter
/// queue after two receives, a runner serving `lambda-probe` from it, and the runner's log.
struct Harness {
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dead_letters: String,
    runner: tokio::process::Child,
    log: PathBuf,
}

impl Harness {
    async fn start(name: &str, memory_limit: &str, memory_mb: u64, timeout_secs: u64) -> anyhow::Result<Self> {
        let env = stack_env();
        let sqs = sqs_client(&env).await;
        let unique = format!("{name}-{}-{}", std::process::id(), rand_suffix() % 1_000_000_000);
        let dead_letters = sqs.create_queue().queue_name(format!("runner-limits-{unique}-dlq")).send().await?.queue_url.context("dlq url")?;
        let dlq_arn = queue_arn(&sqs, &dead_letters).await?;
        let queue = sqs
            .create_queue()
            .queue_name(format!("runner-limits-{unique}"))
            .attributes(QueueAttributeName::VisibilityTimeout, "2")
            .attributes(
                QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string(),
            )
            .send()
            .await?
            .queue_url
            .context("queue url")?;
        let arn = queue_arn(&sqs, &queue).await?;
        let dir = std::env::temp_dir().join(format!("runner-limits-{unique}"));
        std::fs::create_dir_all(&dir)?;
        let config = json!({"functions": [{
            "name": "probe",
            "binary": env!("CARGO_BIN_EXE_lambda-probe"),
            "env": env,
            "timeout_secs": timeout_secs,
            "memory_mb": memory_mb,
            "concurrency": 1,
            "event_sources": [{"queue_url": queue, "queue_arn": arn, "batch_size": 1, "report_batch_item_failures": true}],
        }]});
        let config_path = dir.join("runner.json");
        std::fs::write(&config_path, config.to_string())?;
        let log = dir.join("runner.log");
        let out = std::fs::File::create(&log)?;
        let runner = tokio::process::Command::new(env!("CARGO_BIN_EXE_local-runner"))
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .env("LOCAL_RUNNER_MEMORY_LIMIT", memory_limit)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Harness { sqs, queue, dead_letters, runner, log })
    }

    async fn send(&self, body: serde_json::Value) -> anyhow::Result<()> {
        self.sqs.send_message().queue_url(&self.queue).message_body(body.to_string()).send().await?;
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn reports(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.starts_with("probe REPORT RequestId: ")).map(String::from).collect()
    }

    /// Waits for the message to reach the dead-letter queue, which SQS does only after it was
    /// received (and not deleted) twice.
    async fn wait_for_dead_letter(&mut self, limit: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let out = self.sqs.receive_message().queue_url(&self.dead_letters).wait_time_seconds(1).send().await?;
            if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
                return Ok(m.body.unwrap_or_default());
            }
            self.runner_alive()?;
        }
        bail!("the message never reached the dead-letter queue within {limit:?}; runner log:\n{}", self.log())
    }

    /// Waits until the queue is empty and a REPORT line without a Status (a completed
    /// invocation) follows the killed ones.
    async fn wait_for_completed(&mut self, after_reports: usize, limit: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let reports = self.reports();
            if let Some(done) = reports.iter().skip(after_reports).find(|r| !r.contains("Status:")) {
                let attrs = self
                    .sqs
                    .get_queue_attributes()
                    .queue_url(&self.queue)
                    .attribute_names(QueueAttributeName::All)
                    .send()
                    .await?;
                let count = |a: QueueAttributeName| {
                    attrs.attributes().and_then(|m| m.get(&a)).map(|v| v.as_str() != "0").unwrap_or(true)
                };
                if !count(QueueAttributeName::ApproximateNumberOfMessages)
                    && !count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                {
                    return Ok(done.clone());
                }
            }
            self.runner_alive()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no completed invocation within {limit:?}; runner log:\n{}", self.log())
    }

    fn runner_alive(&mut self) -> anyhow::Result<()> {
        // A runner that exits fails the test at once rather than by timing out.
        if let Ok(Some(status)) = self.runner.try_wait() {
            bail!("the runner exited ({status}); log:\n{}", self.log());
        }
        Ok(())
    }

    async fn finish(mut self) {
        let _ = self.runner.start_kill();
        let _ = self.runner.wait().await;
        for q in [&self.queue, &self.dead_letters] {
            let _ = self.sqs.delete_queue().queue_url(q).send().await;
        }
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    let out = sqs.get_queue_attributes().queue_url(url).attribute_names(QueueAttributeName::QueueArn).send().await?;
    out.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().context("queue arn")
}

/// `Memory Size` and `Max Memory Used` of a REPORT line, in MB.
fn memory_fields(report: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        let rest = report.split(name).nth(1).unwrap_or_else(|| panic!("{name} missing in {report:?}"));
        rest.trim_start().split(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad {name} in {report:?}"))
    };
    (field("Memory Size:"), field("Max Memory Used:"))
}

/// Over its memory: killed (`Runtime.OutOfMemory`) on each of the two receives, redelivered in
/// between, then in the dead-letter queue; a new instance completes the next message within its
/// memory.
async fn over_memory_case(mechanism: &str, expect_in_log: &str) -> anyhow::Result<()> {
    let mut h = Harness::start("memory", mechanism, 64, 20).await?;
    let greedy = json!({"allocate_mib": 256, "hold_ms": 500});
    h.send(greedy.clone()).await?;
    let dead = h.wait_for_dead_letter(Duration::from_secs(60)).await?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&dead)?, greedy);
    let killed: Vec<String> = h.reports().into_iter().filter(|r| r.contains("Status:")).collect();
    assert!(killed.len() >= 2, "killed on each receive: {killed:?}\n{}", h.log());
    for r in &killed {
        assert!(r.ends_with("\tStatus: error\tError Type: Runtime.OutOfMemory"), "{r:?}");
    }
    assert!(h.log().lines().next().is_some_and(|l| l.contains(expect_in_log)), "mechanism named first:\n{}", h.log());

    h.send(json!({"allocate_mib": 16, "hold_ms": 100})).await?;
    let done = h.wait_for_completed(killed.len(), Duration::from_secs(30)).await?;
    let (size, used) = memory_fields(&done);
    assert_eq!(size, 64, "{done}");
    assert!((16..=64).contains(&used), "the 16 MiB it held are counted, within its 64 MB: {done}");
    h.finish().await;
    Ok(())
}

#[tokio::test]
async fn an_invocation_over_its_memory_is_killed_and_redelivered() -> anyhow::Result<()> {
    over_memory_case("auto", "memory limits: ").await
}

#[tokio::test]
async fn the_rss_watchdog_kills_an_invocation_over_its_memory_too() -> anyhow::Result<()> {
    over_memory_case("watchdog", "memory limits: RSS watchdog").await
}

#[tokio::test]
async fn an_invocation_over_its_timeout_is_killed_and_redelivered() -> anyhow::Result<()> {
    let mut h = Harness::start("timeout", "auto", 128, 1).await?;
    let slow = json!({"sleep_ms": 4000});
    h.send(slow.clone()).await?;
    let dead = h.wait_for_dead_letter(Duration::from_secs(60)).await?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&dead)?, slow);
    let killed: Vec<String> = h.reports().into_iter().filter(|r| r.contains("Status:")).collect();
    assert!(killed.len() >= 2, "killed on each receive: {killed:?}\n{}", h.log());
    for r in &killed {
        assert!(r.ends_with("\tStatus: timeout"), "{r:?}");
        let ms: f64 = r.split("Duration: ").nth(1).and_then(|d| d.split(' ').next()).and_then(|d| d.parse().ok()).expect("duration");
        assert!((1000.0..4000.0).contains(&ms), "killed at its 1 s timeout, not after the 4 s sleep: {r:?}");
    }
    h.send(json!({"sleep_ms": 10})).await?;
    h.wait_for_completed(killed.len(), Duration::from_secs(30)).await?;
    h.finish().await;
    Ok(())
}
