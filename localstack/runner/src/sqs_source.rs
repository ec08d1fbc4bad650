//! Polling one SQS queue as an event-source mapping does, and building Lambda's SQS event.

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde_json::{json, Map, Value};

use crate::config::EventSource;

/// Receives up to `batch_size` messages, waiting briefly (long polling).
pub async fn receive(sqs: &aws_sdk_sqs::Client, source: &EventSource, wait_secs: i32) -> anyhow::Result<Vec<Message>> {
    let out = sqs
        .receive_message()
        .queue_url(&source.queue_url)
        .max_number_of_messages(source.batch_size.clamp(1, 10))
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    Ok(out.messages.unwrap_or_default())
}

/// The `SQSEvent` Lambda would deliver for these messages.
pub fn event(messages: &[Message], source: &EventSource, region: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: Map<String, Value> = m
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone()))).collect())
                .unwrap_or_default();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body().unwrap_or_default(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": source.queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Deletes the messages that succeeded.
pub async fn delete(sqs: &aws_sdk_sqs::Client, source: &EventSource, done: &[&Message]) -> anyhow::Result<()> {
    for chunk in done.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        if entries.is_empty() {
            continue;
        }
        sqs.delete_message_batch()
            .queue_url(&source.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    }
    Ok(())
}

/// The queue's visibility timeout in seconds.
pub async fn visibility_timeout(sqs: &aws_sdk_sqs::Client, source: &EventSource) -> anyhow::Result<i32> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(&source.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    let secs = out
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    Ok(secs)
}

/// Keeps messages of a running invocation invisible for another `secs` seconds.
pub async fn extend_visibility(sqs: &aws_sdk_sqs::Client, source: &EventSource, messages: &[Message], secs: i32) {
    use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .visibility_timeout(secs)
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        if let Err(e) = sqs
            .change_message_visibility_batch()
            .queue_url(&source.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "could not extend message visibility");
        }
    }
}
