//! AWS behaviours the local stack may or may not reproduce, checked against it: concurrent
//! transactions on one DynamoDB item, and a function shortening its own message's visibility.

use std::time::{Duration, Instant};

use shared::aws::dynamo::DynamoMeta;
use shared::aws::sqs::SqsQueue;
use shared::service::model::{Party, Project, ResultType, Run, RunPlan};
use shared::service::ports::{ProjectStore, RunStore, ShardCounter, TombstoneStore, WorkQueue};
use shared::service::tokens::{self, TokenHash};

use crate::faults::Stack;

/// 50 shards of one run counted at the same moment through the DynamoDB adapter: each exactly
/// once, whether or not DynamoDB Local cancels the concurrent transactions (it prints which).
#[tokio::test]
async fn concurrent_shard_transactions_on_one_run_count_exactly() -> anyhow::Result<()> {
    let stack = Stack::connect().await;
    let meta = DynamoMeta::new(stack.dynamodb.clone(), stack.env["TABLE_NAME"].clone());
    let project_id = format!("e2e-conflicts-{}", &tokens::generate()[..12]);
    let project = Project {
        project_id: project_id.clone(),
        result_type: ResultType::Groups,
        number_parties: 2,
        name: String::new(),
        notes: String::new(),
        schema: serde_json::json!({}),
        uses_blocking: false,
        time_added: shared::service::time::now_iso(),
        result_token_hash: TokenHash::of("r"),
    };
    let parties: Vec<Party> = (0..2).map(|i| Party::new(i, TokenHash::of("u"))).collect();
    meta.create_project(&project, &parties).await?;
    let run = Run::created(project_id.clone(), "r".into(), 0.8, String::new(), String::new(), shared::service::time::now_iso());
    meta.create_run(&run).await?;
    assert!(meta.claim_run(&project_id, "r").await?);
    let plan = RunPlan { shards_total: 50, total_comparisons: 500, time_started: shared::service::time::now_iso() };
    assert!(meta.start_run(&project_id, "r", &plan).await?);

    let retried_before = shared::service::retry::conflicts_retried();
    let started = Instant::now();
    let shards = (0..50).map(|shard| meta.record_shard(&project_id, "r", shard, 10, 1));
    let outcomes = futures::future::join_all(shards).await;
    let elapsed = started.elapsed();
    let retried = shared::service::retry::conflicts_retried() - retried_before;
    println!("50 concurrent record_shard transactions on one run item: {retried} transaction conflicts retried, {elapsed:?}");
    for outcome in &outcomes {
        assert!(outcome.as_ref().is_ok_and(|o| o.counted), "{outcome:?}");
    }
    let run = meta.get_run(&project_id, "r").await?.expect("the run");
    assert_eq!((run.shards_done, run.comparisons_done, run.candidate_count), (50, 500, 50));
    assert_eq!(meta.counted_shards(&project_id, "r").await?.len(), 50);

    assert!(meta.mark_project_deleted(&project_id).await?);
    meta.purge_project(&project_id).await?;
    Ok(())
}

/// ChangeMessageVisibility as the SQS glue sends it (to the URL derived from the event source
/// ARN) brings a received message back within seconds instead of at its visibility timeout.
#[tokio::test]
async fn a_message_made_visible_again_soon_comes_back_within_seconds() -> anyhow::Result<()> {
    let stack = Stack::connect().await;
    let name = format!("pprl-e2e-visibility-{}", &tokens::generate()[..12]);
    let created = stack.sqs.create_queue().queue_name(&name).attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "300").send().await?;
    let url = created.queue_url().expect("queue url").to_string();
    let arn = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
        .expect("queue arn");
    let queue = SqsQueue::new(stack.sqs.clone());
    let result = async {
        queue.send(&url, vec!["hello".into()]).await?;
        let first = stack.sqs.receive_message().queue_url(&url).wait_time_seconds(5).send().await?;
        let receipt = first.messages()[0].receipt_handle().expect("receipt").to_string();

        // The URL the functions use when the ARN names none of their configured queues.
        let derived = shared::service::lambda::queue_url_of(&arn, &[]).expect("an SQS ARN");
        queue.change_visibility(&derived, &receipt, 1).await?;
        let changed = Instant::now();
        loop {
            let again = stack.sqs.receive_message().queue_url(&url).wait_time_seconds(2).send().await?;
            if !again.messages().is_empty() {
                println!("message visible again {:?} after ChangeMessageVisibility to 1 s (queue timeout 300 s)", changed.elapsed());
                return Ok::<_, anyhow::Error>(());
            }
            anyhow::ensure!(changed.elapsed() < Duration::from_secs(20), "the message did not come back within 20 s");
        }
    }
    .await;
    stack.sqs.delete_queue().queue_url(&url).send().await?;
    result
}
