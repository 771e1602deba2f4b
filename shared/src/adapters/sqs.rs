//! SQS as a [`MessageQueue`]: SendMessageBatch, at most ten entries and 256 KiB a call, the
//! calls for one send made concurrently.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use futures::future::join_all;

use crate::ports::{MessageQueue, OutgoingMessage, SendFailure};

const MAX_ENTRIES: usize = 10;
const MAX_BATCH_BYTES: usize = 256 * 1024;
const CONCURRENT_CALLS: usize = 10;

/// One SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn send_batch(&self, batch: &[&OutgoingMessage]) -> Vec<SendFailure> {
        // SQS entry ids allow only [A-Za-z0-9_-]; the position in the batch maps them back.
        let entries = batch.iter().enumerate().map(|(position, message)| {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(position.to_string())
                .message_body(&message.body);
            if message.delay_secs > 0 {
                entry = entry.delay_seconds(i32::try_from(message.delay_secs.min(900)).unwrap_or(900));
            }
            for (name, value) in &message.attributes {
                entry = entry.message_attributes(
                    name,
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(value)
                        .build()
                        .expect("type and value are set"),
                );
            }
            entry.build().expect("id and body are set")
        });
        let result = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries.collect()))
            .send()
            .await;
        match result {
            Ok(output) => output
                .failed()
                .iter()
                .filter_map(|failed| {
                    let message = batch.get(failed.id().parse::<usize>().ok()?)?;
                    Some(SendFailure {
                        id: message.id.clone(),
                        reason: format!("{}: {}", failed.code(), failed.message().unwrap_or("no message")),
                    })
                })
                .collect(),
            Err(error) => {
                let reason = DisplayErrorContext(&error).to_string();
                batch
                    .iter()
                    .map(|message| SendFailure {
                        id: message.id.clone(),
                        reason: reason.clone(),
                    })
                    .collect()
            }
        }
    }
}

/// Splits messages into SendMessageBatch-sized groups, in order.
fn batches(messages: &[OutgoingMessage]) -> Vec<Vec<&OutgoingMessage>> {
    let mut groups: Vec<Vec<&OutgoingMessage>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message.body.len();
        let fits = groups
            .last()
            .is_some_and(|group| group.len() < MAX_ENTRIES && bytes + size <= MAX_BATCH_BYTES);
        if !fits {
            groups.push(Vec::new());
            bytes = 0;
        }
        groups.last_mut().expect("a group was just ensured").push(message);
        bytes += size;
    }
    groups
}

#[async_trait]
impl MessageQueue for SqsQueue {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        let groups = batches(messages);
        let mut failures = Vec::new();
        for wave in groups.chunks(CONCURRENT_CALLS) {
            let results = join_all(wave.iter().map(|group| self.send_batch(group))).await;
            failures.extend(results.into_iter().flatten());
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: usize, size: usize) -> OutgoingMessage {
        OutgoingMessage::new(id.to_string(), "x".repeat(size))
    }

    #[test]
    fn messages_are_grouped_ten_at_a_time() {
        let messages: Vec<_> = (0..25).map(|i| message(i, 10)).collect();
        let sizes: Vec<_> = batches(&messages).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }

    #[test]
    fn a_group_never_exceeds_the_batch_byte_limit() {
        let messages: Vec<_> = (0..4).map(|i| message(i, 100 * 1024)).collect();
        let sizes: Vec<_> = batches(&messages).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2]);
    }
}
