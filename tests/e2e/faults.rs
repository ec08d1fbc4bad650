//! At-least-once delivery and failures: duplicated messages, killed workers, poison messages and
//! deletes in flight must not change results, hang a run, or leave anything behind.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use shared::aws::s3::S3Blobs;
use shared::service::keys;
use shared::service::ports::BlobStore;
use serde_json::json;

use crate::helpers::*;

/// Direct access to the local stack's resources, configured exactly as the functions are.
pub struct Stack {
    /// The working bucket, through the same adapter the functions use.
    pub work: S3Blobs,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub env: std::collections::BTreeMap<String, String>,
}

impl Stack {
    pub async fn connect() -> Self {
        let env = function_env("compare");
        // SAFETY of set_var: tests only read these through the SDK's loader right below; all
        // tests set the same values.
        for (k, v) in &env {
            if k.starts_with("AWS_") {
                unsafe { std::env::set_var(k, v) };
            }
        }
        let config = shared::aws::sdk_config().await;
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
        Stack {
            work: S3Blobs::new(s3, env["WORK_BUCKET"].clone()),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            env,
        }
    }

    /// Objects in the working bucket and items in the table that belong to the project.
    pub async fn project_leftovers(&self, project: &str) -> anyhow::Result<(Vec<String>, usize)> {
        let mut objects = Vec::new();
        for prefix in keys::project_prefixes(project) {
            objects.extend(self.work.list(&prefix).await?);
        }
        let items = self
            .dynamodb
            .query()
            .table_name(&self.env["TABLE_NAME"])
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("P#{project}")))
            .consistent_read(true)
            .send()
            .await?;
        Ok((objects, items.items().len()))
    }

    /// Items of one run (the run and its shard markers).
    pub async fn run_items(&self, project: &str, run: &str) -> anyhow::Result<usize> {
        let mut count = 0;
        for prefix in [format!("RUN#{run}"), format!("SHARD#{run}#")] {
            let items = self
                .dynamodb
                .query()
                .table_name(&self.env["TABLE_NAME"])
                .key_condition_expression("pk = :pk AND begins_with(sk, :sk)")
                .expression_attribute_values(":pk", AttributeValue::S(format!("P#{project}")))
                .expression_attribute_values(":sk", AttributeValue::S(prefix))
                .consistent_read(true)
                .send()
                .await?;
            count += items.items().len();
        }
        Ok(count)
    }

    /// Waits until nothing of the project (or of one of its runs) is left in the working bucket
    /// or the table, then checks that it stays so for a few seconds (no late writes of stopped
    /// work).
    pub async fn wait_until_gone(&self, project: &str, run: Option<&str>, within: Duration) -> anyhow::Result<()> {
        let leftovers = || async {
            let (objects, items) = self.project_leftovers(project).await?;
            Ok::<_, anyhow::Error>(match run {
                None => (objects, items),
                Some(run) => (objects.into_iter().filter(|k| k.contains(run)).collect(), self.run_items(project, run).await?),
            })
        };
        let start = std::time::Instant::now();
        loop {
            let left = leftovers().await?;
            if left.0.is_empty() && left.1 == 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let after = leftovers().await?;
                anyhow::ensure!(after.0.is_empty() && after.1 == 0, "late writes after the purge: {after:?}");
                return Ok(());
            }
            anyhow::ensure!(start.elapsed() < within, "after {within:?} still objects {:?} and {} items", left.0, left.1);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the queue holds no message, visible or in flight: the work it carried has
    /// ended (a redelivery would make a message visible again, so two idle looks 2 s apart).
    pub async fn wait_until_queue_idle(&self, queue_url: &str, within: Duration) -> anyhow::Result<()> {
        use aws_sdk_sqs::types::QueueAttributeName::{ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible};
        let start = std::time::Instant::now();
        let mut idle_looks = 0;
        loop {
            let attributes = self
                .sqs
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(ApproximateNumberOfMessages)
                .attribute_names(ApproximateNumberOfMessagesNotVisible)
                .send()
                .await?;
            let count = |name| attributes.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let held = count(ApproximateNumberOfMessages) + count(ApproximateNumberOfMessagesNotVisible);
            idle_looks = if held == 0 { idle_looks + 1 } else { 0 };
            if idle_looks == 2 {
                return Ok(());
            }
            anyhow::ensure!(start.elapsed() < within, "after {within:?} {queue_url} still holds {held} messages");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    pub async fn send(&self, queue_url_var: &str, body: String) -> anyhow::Result<()> {
        self.sqs.send_message().queue_url(&self.env[queue_url_var]).message_body(body).send().await?;
        Ok(())
    }
}

#[tokio::test]
async fn duplicated_shard_and_solve_messages_change_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let project = api.create_project("similarity_scores", 2, false).await?;
    api.upload_json(&project, 0, &febrl4_clks("a")).await?;
    api.upload_json(&project, 1, &febrl4_clks("b")).await?;
    let run = api.post_run(&project, 0.8).await?;
    let first = api.wait_for_run(&project, &run, Duration::from_secs(180)).await?;
    assert_eq!(first["state"], "completed", "{first}");
    let (_, result) = api.result(&project, &run, &project.result_token).await?;

    // Every shard and the solve delivered again, twice, after completion.
    // 25 million comparisons fit in one shard at the default target size.
    let shards = 1u32;
    for _ in 0..2 {
        for shard in 0..shards {
            let body = json!({"project_id": project.id, "run_id": run, "shard_index": shard}).to_string();
            stack.send("SHARD_QUEUE_URL", body).await?;
        }
        stack.send("SOLVE_QUEUE_URL", json!({"project_id": project.id, "run_id": run}).to_string()).await?;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = api.run_status(&project, &run).await?;
    assert_eq!(again["state"], "completed");
    assert_eq!(again["time_completed"], first["time_completed"], "completed exactly once");
    assert_eq!(again["total_number_comparisons"], first["total_number_comparisons"]);
    let (_, result_again) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(result, result_again);
    Ok(())
}

/// Two parties of `n` 128-byte encodings, uploaded as binary (big enough that a run computes
/// for seconds in the debug build, small enough for the API's request limit).
async fn slow_project(api: &Api, n: usize, result_type: &str) -> anyhow::Result<(Project, Vec<Vec<Vec<u8>>>)> {
    let data = synthetic_parties(77, 2, n, 128, 60);
    let project = api.create_project(result_type, 2, false).await?;
    for (party, records) in data.iter().enumerate() {
        api.upload_binary(&project, party, records.concat(), n, 128).await?;
    }
    Ok((project, data))
}

async fn wait_until_computing(api: &Api, project: &Project, run: &str) -> anyhow::Result<serde_json::Value> {
    for _ in 0..400 {
        let status = api.run_status(project, run).await?;
        if status["state"] == "running" {
            return Ok(status);
        }
        anyhow::ensure!(status["state"] != "completed" && status["state"] != "error", "run finished too early: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("run never started computing")
}

/// Kills every running instance of a function (the local runner replaces them, as Lambda does).
fn kill_function(name: &str) -> bool {
    std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("/(debug|release)/{name}$")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn a_compare_killed_mid_shard_is_retried_and_the_result_is_exact() -> anyhow::Result<()> {
    let api = Api::new();
    let (project, data) = slow_project(&api, 20_000, "similarity_scores").await?;
    let run = api.post_run(&project, 0.8).await?;
    wait_until_computing(&api, &project, &run).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = api.run_status(&project, &run).await?;
    assert!(kill_function("compare"), "a compare instance was running");
    let status = api.wait_for_run(&project, &run, Duration::from_secs(240)).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert!(before["state"] == "running", "the kill hit a running run: {before}");

    assert_scores_exact(&api, &project, &run, &data, &status).await
}

/// The completed run's comparisons and similarity scores (threshold 0.8) equal the engine's on
/// the same 128-byte encodings.
async fn assert_scores_exact(api: &Api, project: &Project, run: &str, data: &[Vec<Vec<u8>>], status: &serde_json::Value) -> anyhow::Result<()> {
    let parties: Vec<shared::engine::encoding::PartyEncodings> = data
        .iter()
        .map(|p| shared::engine::encoding::PartyEncodings { encoding_size: 128, data: p.concat(), blocks: None })
        .collect();
    let expected = shared::engine::link::link(&parties, 0.8, 300_000_000)?;
    assert_eq!(status["total_number_comparisons"], expected.total_comparisons);
    let (_, result) = api.result(project, run, &project.result_token).await?;
    let mut want = Vec::new();
    shared::engine::output::write_similarity_scores(&mut want, expected.candidates.into_iter())?;
    let want: serde_json::Value = serde_json::from_slice(&want)?;
    assert_eq!(result["similarity_scores"], want["similarity_scores"]);
    Ok(())
}

#[tokio::test]
async fn a_shard_that_keeps_failing_ends_the_run_in_error_via_the_dead_letter_queue() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let project = api.create_project("groups", 2, false).await?;
    let run = api.post_run(&project, 0.9).await?;
    // A shard of a run that never started: compare refuses it on every delivery.
    let body = json!({"project_id": project.id, "run_id": run, "shard_index": 0}).to_string();
    stack.send("SHARD_QUEUE_URL", body).await?;
    let status = api.wait_for_run(&project, &run, Duration::from_secs(300)).await?;
    assert_eq!(status["state"], "error", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("Shard 0 could not be computed"), "{status}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_run_while_it_computes_stops_it_and_leaves_nothing() -> anyhow::Result<()> {
    let api = Api::new();
    let stack = Stack::connect().await;
    let (project, _) = slow_project(&api, 20_000, "groups").await?;
    let run = api.post_run(&project, 0.8).await?;
    wait_until_computing(&api, &project, &run).await?;
    api.delete_and_check_gone(&project, &format!("/projects/{}/runs/{run}", project.id), &format!("/projects/{}/runs/{run}/status", project.id)).await?;
    // In-flight shards finish or stop; nothing of the run may remain afterwards.
    stack.wait_until_gone(&project.id, Some(&run), Duration::from_secs(40)).await
}

/// Tests that stop and start parts of the local stack. They disturb every test running beside
/// them, so `scripts/test.sh` runs them on their own, one at a time.
mod restarts {
    use std::process::{Command, Stdio};

    // Deletes against a failing S3 (tests/e2e/faults/restarts/purge_faults.rs).
    mod purge_faults;

    use super::*;

    fn local_stack(script: &str, args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new(repo_root().join("localstack").join(script))
            .args(args)
            .env("PPRL_SKIP_BUILD", "1")
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "localstack/{script} {args:?} failed: {status}");
        Ok(())
    }

    async fn purge(stack: &Stack, queue_url: &str) -> anyhow::Result<()> {
        stack.sqs.purge_queue().queue_url(queue_url).send().await?;
        Ok(())
    }

    /// The queues lose their messages while the workers are down (LocalStack keeps SQS in
    /// memory, so restarting it does exactly this): first an upload's S3 event and a run's start
    /// request, later the run's shards, whose compare instances die mid-shard. Nothing can be
    /// redelivered; the watchdog finds the upload and the run stalled with their queues empty,
    /// sends their work again, and the result is exact.
    #[tokio::test]
    async fn work_lost_with_the_queues_is_sent_again_by_the_watchdog() -> anyhow::Result<()> {
        let api = Api::new();
        let stack = Stack::connect().await;
        let ingest_queue = function_env("fan-out")["INGEST_QUEUE_URL"].clone();
        let n = 20_000;
        let data = synthetic_parties(78, 2, n, 128, 60);
        let project = api.create_project("similarity_scores", 2, false).await?;
        api.upload_binary(&project, 0, data[0].concat(), n, 128).await?;

        // Phase 1: the last upload's event and the run's start request are lost.
        local_stack("down.sh", &["--only", "runner"])?;
        api.upload_binary(&project, 1, data[1].concat(), n, 128).await?;
        let run = api.post_run(&project, 0.8).await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // the S3 events reach the queue
        purge(&stack, &ingest_queue).await?;
        local_stack("up.sh", &[])?;
        // The watchdog acts once the upload has shown no progress for the stall time (20 s locally).
        let mut status = api.run_status(&project, &run).await?;
        for _ in 0..180 {
            // `queued` is the moment between fan-out claiming the run and sending its shards.
            if status["state"] != "created" && status["state"] != "queued" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            status = api.run_status(&project, &run).await?;
        }
        anyhow::ensure!(status["state"] == "running", "the watchdog did not restart the lost upload: {status}");

        // Phase 2: the workers die mid-shard and the shard messages are lost.
        local_stack("down.sh", &["--only", "runner"])?;
        // Past the visibility timeout (10 s locally) the messages being processed are back in
        // the queue, so the purge loses them too.
        tokio::time::sleep(Duration::from_secs(12)).await;
        purge(&stack, &stack.env["SHARD_QUEUE_URL"]).await?;
        purge(&stack, &stack.env["SOLVE_QUEUE_URL"]).await?;
        local_stack("up.sh", &[])?;
        let status = api.wait_for_run(&project, &run, Duration::from_secs(300)).await?;
        assert_eq!(status["state"], "completed", "{status}");

        let log = runner_log();
        assert!(log.lines().any(|l| l.contains("stalled upload sent again") && l.contains(&project.id)), "the upload was re-sent by the watchdog");
        assert!(log.lines().any(|l| l.contains("uncounted shards sent again") && l.contains(&run)), "the shards were re-sent by the watchdog");
        assert_scores_exact(&api, &project, &run, &data, &status).await
    }

    /// DynamoDB restarted while a run computes (its table on disk, as DynamoDB's is durable):
    /// meanwhile the api answers 503 and every step fails; the failed messages come back after
    /// the visibility timeout, and the run completes with the exact result.
    #[tokio::test]
    async fn dynamodb_restarted_mid_run_the_run_completes_exactly() -> anyhow::Result<()> {
        let api = Api::new();
        let (project, data) = slow_project(&api, 20_000, "similarity_scores").await?;
        let run = api.post_run(&project, 0.8).await?;
        wait_until_computing(&api, &project, &run).await?;
        local_stack("down.sh", &["--only", "dynamodb"])?;
        let path = format!("/projects/{}/runs/{run}/status", project.id);
        let down = api.http.get(api.url(&path)).header("Authorization", &project.result_token).send().await?;
        assert_eq!(down.status(), 503, "the api says the metadata store is unavailable");
        tokio::time::sleep(Duration::from_secs(5)).await;
        local_stack("up.sh", &[])?;
        let status = api.wait_for_run(&project, &run, Duration::from_secs(300)).await?;
        assert_eq!(status["state"], "completed", "{status}");
        assert_scores_exact(&api, &project, &run, &data, &status).await
    }
}
