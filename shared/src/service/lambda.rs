//! Lambda glue for the SQS-triggered functions: one record at a time, failures reported per
//! record (`ReportBatchItemFailures`) so one bad message never makes a batch's good ones rerun.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::{error, Instrument};

use super::pipeline::events::s3_event_keys;
use super::pipeline::{Pipeline, PipelineError, ShardMessage, SolveMessage};
use super::ports::{BlobStore, MetaStore, WorkQueue};

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

/// Which pipeline step an SQS-triggered function runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    FanOut,
    Compare,
    Solve,
}

/// Runs `step` on one SQS event.
pub async fn handle<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue>(
    step: Step,
    pipeline: &Pipeline<M, B, U, Q>,
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
pub async fn fan_out<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue>(
    pipeline: &Pipeline<M, B, U, Q>,
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

/// compare: shard messages.
pub async fn compare<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue>(
    pipeline: &Pipeline<M, B, U, Q>,
    event: SqsEvent,
) -> SqsBatchResponse {
    for_each_record(event, |record| async move {
        let message: ShardMessage = serde_json::from_str(body(&record)?)
            .map_err(|e| PipelineError::Event(format!("not a shard message: {e}")))?;
        pipeline.compare(&message).await
    })
    .await
}

/// solve: solve messages.
pub async fn solve<M: MetaStore, B: BlobStore, U: BlobStore, Q: WorkQueue>(
    pipeline: &Pipeline<M, B, U, Q>,
    event: SqsEvent,
) -> SqsBatchResponse {
    for_each_record(event, |record| async move {
        let message: SolveMessage = serde_json::from_str(body(&record)?)
            .map_err(|e| PipelineError::Event(format!("not a solve message: {e}")))?;
        pipeline.solve(&message).await
    })
    .await
}
