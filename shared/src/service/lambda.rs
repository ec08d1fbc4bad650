//! Lambda glue for the SQS-triggered functions: one record at a time (compare: a batch's shards
//! of one run together, see `Pipeline::compare_batch`), failures reported per record
//! (`ReportBatchItemFailures`) so one bad message never makes a batch's good ones rerun.
//!
//! A failed message normally reappears when the queue's visibility timeout ends: 6 × the
//! function's timeout (5,400 s for compare in AWS), which gives a crashed or timed-out
//! invocation's work time to be abandoned. A failure that a prompt retry may cure
//! ([`PipelineError::retry_soon`]: a transaction conflict that outlasted the in-process
//! retries) should not wait that long, so its message is made visible again within a few
//! seconds (ChangeMessageVisibility, jittered so that messages which failed together are not
//! redelivered together), after the whole batch is handled.

use std::ops::RangeInclusive;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::{error, warn, Instrument};

use super::pipeline::events::s3_event_keys;
use super::pipeline::{Pipeline, PipelineError, PipelinePorts, ShardQueueMessage};
use super::ports::{BlobStore, Ports, ProjectStore, RunStore, ShardCounter, WorkQueue};
use super::retry::jitter;

/// When a message whose failure is worth retrying soon becomes visible again.
pub const RETRY_SOON: RangeInclusive<Duration> = Duration::from_secs(2)..=Duration::from_secs(8);

async fn for_each_record<P: Ports, F, Fut>(pipeline: &Pipeline<P>, event: SqsEvent, mut handle: F) -> SqsBatchResponse
where
    P::Queue: WorkQueue,
    F: FnMut(SqsMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), PipelineError>>,
{
    let mut outcomes = Vec::with_capacity(event.records.len());
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("message", message_id = %id);
        let source = (id, record.event_source_arn.clone(), record.receipt_handle.clone());
        outcomes.push((source, handle(record).instrument(span).await));
    }
    report(pipeline, outcomes).await
}

/// Where a record came from: its message id, source ARN and receipt handle.
type RecordSource = (String, Option<String>, Option<String>);

/// The batch response for handled records: failed ones are reported (and those worth a prompt
/// retry made visible again soon); the rest are deleted by Lambda.
async fn report<P: Ports>(pipeline: &Pipeline<P>, outcomes: Vec<(RecordSource, Result<(), PipelineError>)>) -> SqsBatchResponse
where
    P::Queue: WorkQueue,
{
    let mut response = SqsBatchResponse::default();
    let mut retry_soon = Vec::new();
    for ((id, arn, receipt_handle), outcome) in outcomes {
        if let Err(e) = outcome {
            error!(message_id = %id, error = %e, retry_soon = e.retry_soon(), "message failed; it will be retried");
            if e.retry_soon() {
                retry_soon.push((id.clone(), (arn, receipt_handle)));
            }
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    for (id, (arn, receipt_handle)) in retry_soon {
        make_visible_soon(pipeline, &id, arn.as_deref(), receipt_handle.as_deref()).await;
    }
    response
}

/// Best effort: if it fails, the message waits for the visibility timeout as it would anyway.
async fn make_visible_soon<P: Ports>(pipeline: &Pipeline<P>, id: &str, arn: Option<&str>, receipt_handle: Option<&str>)
where
    P::Queue: WorkQueue,
{
    let s = &pipeline.settings;
    let known = [s.shard_queue_url.as_str(), s.solve_queue_url.as_str(), s.watchdog.ingest_queue_url.as_str()];
    let (Some(queue_url), Some(receipt_handle)) = (arn.and_then(|arn| queue_url_of(arn, &known)), receipt_handle) else {
        warn!(message_id = %id, arn, "no queue URL or receipt handle; the message waits for the visibility timeout");
        return;
    };
    let delay = jitter(RETRY_SOON).as_secs() as u32;
    match pipeline.queue.change_visibility(&queue_url, receipt_handle, delay).await {
        Ok(()) => tracing::info!(message_id = %id, delay_secs = delay, "message visible again soon"),
        Err(e) => warn!(message_id = %id, error = %e, "could not shorten the message's visibility; it waits for the visibility timeout"),
    }
}

/// The URL of the queue `arn` names (`arn:aws:sqs:{region}:{account}:{name}`): one of the
/// `known` URLs of this deployment (which locally point at the emulator) when one is the
/// queue's, otherwise SQS's own URL for it.
pub fn queue_url_of(arn: &str, known: &[&str]) -> Option<String> {
    let [_, partition, "sqs", region, account, name] = arn.split(':').collect::<Vec<_>>()[..] else { return None };
    if region.is_empty() || account.is_empty() || name.is_empty() {
        return None;
    }
    let path = format!("/{account}/{name}");
    if let Some(url) = known.iter().find(|u| u.ends_with(&path)) {
        return Some(url.to_string());
    }
    let domain = if partition == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    Some(format!("https://sqs.{region}.{domain}{path}"))
}

/// Whether a Lambda payload is an EventBridge schedule's event (fan-out's watchdog timer)
/// rather than an SQS batch.
pub fn is_scheduled_event(payload: &serde_json::Value) -> bool {
    payload.get("source").and_then(|s| s.as_str()) == Some("aws.events")
        && payload.get("detail-type").and_then(|s| s.as_str()) == Some("Scheduled Event")
}

/// Runs `step` on one Lambda payload: an SQS batch, or (fan-out only) the watchdog's schedule.
pub async fn handle_payload<P: PipelinePorts>(step: Step, pipeline: &Pipeline<P>, payload: serde_json::Value) -> Result<serde_json::Value, PipelineError>
{
    if step == Step::FanOut && is_scheduled_event(&payload) {
        let sweep = pipeline.watchdog(crate::service::time::now_secs()).await?;
        return Ok(serde_json::json!({
            "projects": sweep.projects, "watched": sweep.watched, "redriven": sweep.redriven, "failed": sweep.failed,
            "expired": sweep.expired, "purges_retried": sweep.purges_retried, "errors": sweep.errors,
        }));
    }
    let event: SqsEvent = serde_json::from_value(payload).map_err(|e| PipelineError::Event(format!("not an SQS event: {e}")))?;
    let response = handle(step, pipeline, event).await;
    serde_json::to_value(response).map_err(|e| PipelineError::Event(format!("batch response: {e}")))
}

/// Which pipeline step an SQS-triggered function runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    FanOut,
    Compare,
    Solve,
}

impl Step {
    /// The function's name in the template (after the stack's), as the metrics name it.
    pub fn function_name(self) -> &'static str {
        match self {
            Step::FanOut => "fan-out",
            Step::Compare => "compare",
            Step::Solve => "solve",
        }
    }
}

/// Runs `step` on one SQS event.
pub async fn handle<P: PipelinePorts>(step: Step, pipeline: &Pipeline<P>, event: SqsEvent) -> SqsBatchResponse
{
    match step {
        Step::FanOut => fan_out(pipeline, event).await,
        Step::Compare => compare(pipeline, event).await,
        Step::Solve => solve(pipeline, event).await,
    }
}

fn body(record: &SqsMessage) -> Result<&str, PipelineError> {
    record.body.as_deref().ok_or_else(|| PipelineError::Event("SQS message without body".into()))
}

/// fan-out: S3 notifications from the ingest queue, and dead letters from every DLQ.
pub async fn fan_out<P: PipelinePorts>(pipeline: &Pipeline<P>, event: SqsEvent) -> SqsBatchResponse
{
    for_each_record(pipeline, event, |record| async move {
        let body = body(&record)?;
        let arn = record.event_source_arn.as_deref().unwrap_or_default();
        if let Some(source) = pipeline.settings.dead_letter_queues.source_of(arn) {
            return pipeline.on_dead_letter(source, body).await;
        }
        for key in s3_event_keys(body)? {
            pipeline.on_incoming(&key).await?;
        }
        Ok(())
    })
    .await
}

/// compare: shard messages, and the range messages of a run's dispatch (`pipeline::dispatch`).
/// The batch's shard messages are computed together; range messages and unreadable records one
/// at a time.
pub async fn compare<P: Ports>(pipeline: &Pipeline<P>, event: SqsEvent) -> SqsBatchResponse
where
    P::Meta: ProjectStore + RunStore + ShardCounter,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
    let mut outcomes = Vec::with_capacity(event.records.len());
    let (mut shard_sources, mut shards) = (Vec::new(), Vec::new());
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let source = (id.clone(), record.event_source_arn.clone(), record.receipt_handle.clone());
        let message = body(&record).and_then(|body| {
            serde_json::from_str::<ShardQueueMessage>(body).map_err(|e| PipelineError::Event(format!("not a shard or dispatch message: {e}")))
        });
        match message {
            Ok(ShardQueueMessage::Shard(message)) => {
                shard_sources.push(source);
                shards.push(message);
            }
            Ok(ShardQueueMessage::Dispatch(message)) => {
                let span = tracing::info_span!("message", message_id = %id);
                outcomes.push((source, pipeline.dispatch(&message).instrument(span).await));
            }
            Err(e) => outcomes.push((source, Err(e))),
        }
    }
    if !shards.is_empty() {
        let span = tracing::info_span!("shards", messages = shards.len());
        let results = pipeline.compare_batch(&shards).instrument(span).await;
        outcomes.extend(shard_sources.into_iter().zip(results));
    }
    report(pipeline, outcomes).await
}

/// solve: solve messages and merge steps.
pub async fn solve<P: Ports>(pipeline: &Pipeline<P>, event: SqsEvent) -> SqsBatchResponse
where
    P::Meta: ProjectStore + RunStore,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
    for_each_record(pipeline, event, |record| async move { pipeline.on_solve_queue(body(&record)?).await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_come_from_the_event_source_arn() {
        let arn = "arn:aws:sqs:eu-west-1:123456789012:pprl-shards";
        assert_eq!(queue_url_of(arn, &[]).as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/123456789012/pprl-shards"));
        // Locally the deployment's own URLs point at the emulator: they win when they name the queue.
        let local = "http://sqs.eu-west-1.localhost.localstack.cloud:4566/123456789012/pprl-shards";
        let other = "http://sqs.eu-west-1.localhost.localstack.cloud:4566/123456789012/pprl-shards-dlq";
        assert_eq!(queue_url_of(arn, &[other, local]).as_deref(), Some(local));
        assert_eq!(queue_url_of("arn:aws-cn:sqs:cn-north-1:1:q", &[]).as_deref(), Some("https://sqs.cn-north-1.amazonaws.com.cn/1/q"));
        assert_eq!(queue_url_of("arn:aws:s3:::bucket", &[]), None);
        assert_eq!(queue_url_of("", &[]), None);
    }
}
