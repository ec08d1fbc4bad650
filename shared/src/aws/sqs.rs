//! [`WorkQueue`] on SQS.

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

use crate::service::ports::{QueueError, WorkQueue};

/// SQS takes at most 10 messages per batch.
const SQS_BATCH: usize = 10;

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
        for chunk in bodies.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e))))?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError(format!(
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
            .map_err(|e| QueueError(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e))))?;
        let attributes = out.attributes.unwrap_or_default();
        let mut depth = 0u64;
        for name in &counts {
            let value = attributes.get(name).map(String::as_str).unwrap_or("0");
            let count: u64 = value
                .parse()
                .map_err(|_| QueueError(format!("{queue_url}: {} is {value:?}, not a count", name.as_str())))?;
            depth = depth.saturating_add(count);
        }
        Ok(depth)
    }
}
