//! [`WorkQueue`] on SQS.
//!
//! Bodies go out in SendMessageBatch requests planned and checked against SQS's limits (10
//! entries and 256 KiB per request, 256 KiB per message: [`aws_limits`]) before the SDK call.

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

use crate::service::aws_limits;
use crate::service::ports::{QueueError, WorkQueue};

fn backend<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError {
    QueueError::Backend(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))
}

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        SqsQueue { client }
    }
}

impl WorkQueue for SqsQueue {
    async fn send(&self, queue_url: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        for batch in aws_limits::plan_sqs_batches(&bodies)? {
            let chunk = &bodies[batch];
            aws_limits::check_sqs_batch(chunk)?;
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError::Backend(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(backend)?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError::Backend(format!(
                    "{} of {} messages not sent, e.g. {}: {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.code(),
                    failed.message().unwrap_or("no message")
                )));
            }
        }
        Ok(())
    }

    async fn depth(&self, queue_url: &str) -> Result<u64, QueueError> {
        let counts = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .set_attribute_names(Some(counts.to_vec()))
            .send()
            .await
            .map_err(backend)?;
        let attributes = out.attributes.unwrap_or_default();
        let mut depth = 0u64;
        for name in &counts {
            let value = attributes.get(name).map(String::as_str).unwrap_or("0");
            let count: u64 = value
                .parse()
                .map_err(|_| QueueError::Backend(format!("{queue_url}: {} is {value:?}, not a count", name.as_str())))?;
            depth = depth.saturating_add(count);
        }
        Ok(depth)
    }

    async fn change_visibility(&self, queue_url: &str, receipt_handle: &str, visibility_secs: u32) -> Result<(), QueueError> {
        let secs = i32::try_from(visibility_secs).unwrap_or(i32::MAX);
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{sqs_client, unreachable_config};
    use crate::service::aws_limits::{LimitExceeded, SQS_MAX_MESSAGE_BYTES};

    #[tokio::test]
    async fn a_message_sqs_would_refuse_is_refused_before_the_call() {
        let sqs = SqsQueue::new(sqs_client(&unreachable_config()));
        let r = sqs.send("https://sqs.eu-west-1.amazonaws.com/1/q", vec!["x".repeat(SQS_MAX_MESSAGE_BYTES + 1)]).await;
        assert!(matches!(r, Err(QueueError::Limit(LimitExceeded::SqsMessage { .. }))), "{r:?}");
        // Within the limits the request does go out (and fails here: nothing listens).
        let r = sqs.send("https://sqs.eu-west-1.amazonaws.com/1/q", vec!["x".repeat(SQS_MAX_MESSAGE_BYTES)]).await;
        assert!(matches!(r, Err(QueueError::Backend(_))), "{r:?}");
    }
}
