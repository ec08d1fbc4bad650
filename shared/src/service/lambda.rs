//! Lambda glue for the SQS-triggered functions: one record at a time, failures reported per
//! record (`ReportBatchItemFailures`) so one bad message never makes a batch's good ones rerun.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::{error, Instrument};

use super::pipeline::events::s3_event_keys;
use super::pipeline::{Pipeline, PipelineError, ShardQueueMessage};
use super::ports::{BlobStore, ClientStores, MetaStore, WorkQueue};

async fn for_each_record<F, Fut>(event: SqsEvent, mut handle: F) -> SqsBatchResponse
where
    F: FnMut(SqsMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), PipelineError>>,
{
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("message", message_id = %id);
        if let Err(e) = handle(record).instrument(span).await {
            error!(message_id = %id, error = %e, "message failed; it will be retried");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// Whether a Lambda payload is an EventBridge schedule's event (fan-out's watchdog timer)
/// rather than an SQS batch.
pub fn is_scheduled_event(payload: &serde_json::Value) -> bool {
    payload.get("source").and_then(|s| s.as_str()) == Some("aws.events")
        && payload.get("detail-type").and_then(|s| s.as_str()) == Some("Scheduled Event")
}

/// Runs `step` on one Lambda payload: an SQS batch, or (fan-out only) the watchdog's schedule.
pub async fn handle_payload<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C: ClientStores>(
    step: Step,
    pipeline: &Pipeline<M, B, U, Q, C>,
    payload: serde_json::Value,
) -> Result<serde_json::Value, PipelineError> {
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

/// Runs `step` on one SQS event.
pub async fn handle<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C: ClientStores>(
    step: Step,
    pipeline: &Pipeline<M, B, U, Q, C>,
    event: SqsEvent,
) -> SqsBatchResponse {
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
pub async fn fan_out<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C: ClientStores>(
    pipeline: &Pipeline<M, B, U, Q, C>,
    event: SqsEvent,
) -> SqsBatchResponse {
    for_each_record(event, |record| async move {
        let body = body(&record)?;
        let source = record.event_source_arn.as_deref().unwrap_or_default();
        if pipeline.settings.dead_letter_queue_arns.iter().any(|arn| arn == source) {
            return pipeline.on_dead_letter(body).await;
        }
        for key in s3_event_keys(body)? {
            pipeline.on_incoming(&key).await?;
        }
        Ok(())
    })
    .await
}

/// compare: shard messages, and the range messages of a run's dispatch (`pipeline::dispatch`).
pub async fn compare<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C>(
    pipeline: &Pipeline<M, B, U, Q, C>,
    event: SqsEvent,
) -> SqsBatchResponse {
    for_each_record(event, |record| async move {
        let message: ShardQueueMessage = serde_json::from_str(body(&record)?)
            .map_err(|e| PipelineError::Event(format!("not a shard or dispatch message: {e}")))?;
        match message {
            ShardQueueMessage::Shard(message) => pipeline.compare(&message).await,
            ShardQueueMessage::Dispatch(message) => pipeline.dispatch(&message).await,
        }
    })
    .await
}

/// solve: solve messages and merge steps.
pub async fn solve<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue, C>(
    pipeline: &Pipeline<M, B, U, Q, C>,
    event: SqsEvent,
) -> SqsBatchResponse {
    for_each_record(event, |record| async move { pipeline.on_solve_queue(body(&record)?).await }).await
}
