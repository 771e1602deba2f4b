//! SQS as a [`MessageQueue`]: SendMessageBatch, at most ten entries and 256 KiB a call, the
//! calls for one send made concurrently (one message alone goes by SendMessage, the smaller call). And SQS as a [`DeadLetterQueue`], redriven by receive,
//! send, then delete (moto has no StartMessageMoveTask, and this way the redrive is the same code
//! everywhere).

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures::future::join_all;

use crate::ports::{
    DeadLetter, DeadLetterQueue, DeadLetterSummary, MessageQueue, OutgoingMessage, QueueUnavailable,
    RedriveOutcome, SendFailure,
};
use crate::worker::ERROR_ATTRIBUTE;

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

    async fn send_one(&self, message: &OutgoingMessage) -> Vec<SendFailure> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body);
        if message.delay_secs > 0 {
            request = request.delay_seconds(i32::try_from(message.delay_secs.min(900)).unwrap_or(900));
        }
        for (name, value) in &message.attributes {
            request = request.message_attributes(name, string_attribute(value));
        }
        match request.send().await {
            Ok(_) => Vec::new(),
            Err(error) => vec![SendFailure {
                id: message.id.clone(),
                reason: DisplayErrorContext(&error).to_string(),
            }],
        }
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
                entry = entry.message_attributes(name, string_attribute(value));
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

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("type and value are set")
}

/// Splits messages into SendMessageBatch-sized groups, in order.
fn batches(messages: &[OutgoingMessage]) -> Vec<Vec<&OutgoingMessage>> {
    let mut groups: Vec<Vec<&OutgoingMessage>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        // SQS counts attributes (name, type and value) towards the batch's size, as it does
        // towards each message's.
        let size = message.body.len()
            + message
                .attributes
                .iter()
                .map(|(name, value)| name.len() + "String".len() + value.len())
                .sum::<usize>();
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
        if let [message] = messages {
            return self.send_one(message).await;
        }
        let groups = batches(messages);
        let mut failures = Vec::new();
        for wave in groups.chunks(CONCURRENT_CALLS) {
            let results = join_all(wave.iter().map(|group| self.send_batch(group))).await;
            failures.extend(results.into_iter().flatten());
        }
        failures
    }
}

/// A dead-letter queue in SQS and the queue it redrives to.
#[derive(Debug, Clone)]
pub struct SqsDeadLetterQueue {
    client: Client,
    dlq_url: String,
    source_url: String,
}

impl SqsDeadLetterQueue {
    pub fn new(client: Client, dlq_url: impl Into<String>, source_url: impl Into<String>) -> Self {
        Self {
            client,
            dlq_url: dlq_url.into(),
            source_url: source_url.into(),
        }
    }

    /// Sends received messages to the source queue; returns the receipt handles of those it holds.
    async fn forward(&self, messages: &[Message]) -> Result<Vec<String>, QueueUnavailable> {
        let mut sent = Vec::new();
        let mut group: Vec<&Message> = Vec::new();
        let mut bytes = 0;
        let mut groups = Vec::new();
        for message in messages {
            let size = message_size(message);
            if !group.is_empty() && (group.len() == MAX_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
                groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            group.push(message);
            bytes += size;
        }
        groups.push(group);
        for group in groups.into_iter().filter(|group| !group.is_empty()) {
            let entries = group.iter().enumerate().map(|(position, message)| {
                SendMessageBatchRequestEntry::builder()
                    .id(position.to_string())
                    .message_body(message.body().unwrap_or_default())
                    .set_message_attributes(message.message_attributes().cloned())
                    .build()
                    .expect("id and body are set")
            });
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.source_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(|error| QueueUnavailable(anyhow::anyhow!("{}", DisplayErrorContext(&error))))?;
            for done in output.successful() {
                if let Some(message) = done.id().parse::<usize>().ok().and_then(|i| group.get(i)) {
                    sent.extend(message.receipt_handle().map(str::to_string));
                }
            }
        }
        Ok(sent)
    }
}

/// What a message weighs against the batch limit: body plus attribute names and values.
fn message_size(message: &Message) -> usize {
    let attributes: usize = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    name.len()
                        + value.data_type().len()
                        + value.string_value().map_or(0, str::len)
                        + value.binary_value().map_or(0, |blob| blob.as_ref().len())
                })
                .sum()
        })
        .unwrap_or(0);
    message.body().map_or(0, str::len) + attributes
}

fn queue_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_sqs::error::SdkError<E, R>,
) -> QueueUnavailable {
    QueueUnavailable(anyhow::anyhow!("{}", DisplayErrorContext(&error)))
}

#[async_trait]
impl crate::ports::QueueDepth for SqsQueue {
    async fn depth(&self) -> Result<u64, QueueUnavailable> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(attributes
            .attributes()
            .into_iter()
            .flatten()
            .filter_map(|(_, value)| value.parse::<u64>().ok())
            .sum())
    }
}

#[async_trait]
impl DeadLetterQueue for SqsDeadLetterQueue {
    async fn summary(&self) -> Result<DeadLetterSummary, QueueUnavailable> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&self.dlq_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(queue_error)?;
        let count = |name: QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|all| all.get(&name))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        let waiting = count(QueueAttributeName::ApproximateNumberOfMessages);
        let in_flight = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        // A look, not a take: visibility 0 leaves every message where it was.
        let sample = self
            .client
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(ERROR_ATTRIBUTE)
            .send()
            .await
            .map_err(queue_error)?;
        let oldest = sample
            .messages()
            .iter()
            .map(|message| DeadLetter {
                sent_at_ms: message
                    .attributes()
                    .and_then(|all| all.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0),
                reason: message
                    .message_attributes()
                    .and_then(|all| all.get(ERROR_ATTRIBUTE))
                    .and_then(|value| value.string_value())
                    .map(str::to_string),
                body: message.body().unwrap_or_default().to_string(),
            })
            .min_by_key(|letter| letter.sent_at_ms);
        // The consumer's backlog: a sync that is not running leaves its queue full.
        let source_waiting = self
            .client
            .get_queue_attributes()
            .queue_url(&self.source_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok()
            .and_then(|source| {
                source
                    .attributes()?
                    .get(&QueueAttributeName::ApproximateNumberOfMessages)?
                    .parse()
                    .ok()
            });
        Ok(DeadLetterSummary {
            waiting,
            in_flight,
            oldest,
            source_waiting,
        })
    }

    async fn redrive(&self, max_messages: usize) -> Result<RedriveOutcome, QueueUnavailable> {
        let mut outcome = RedriveOutcome::default();
        loop {
            if outcome.moved + outcome.failed >= max_messages as u64 {
                outcome.more = true;
                break;
            }
            // Long enough to send and delete a batch; a crash in between lets the message reappear.
            let received = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(queue_error)?;
            let messages = received.messages();
            if messages.is_empty() {
                break;
            }
            let sent = self.forward(messages).await?;
            outcome.failed += (messages.len() - sent.len()) as u64;
            // The journal keys of what moves, for the dashboard to mark them redriven.
            let letters: std::collections::HashMap<&str, String> = messages
                .iter()
                .filter_map(|message| {
                    let key = message
                        .message_attributes()?
                        .get(crate::worker::LETTER_ATTRIBUTE)?
                        .string_value()?;
                    Some((message.receipt_handle()?, key.to_string()))
                })
                .collect();
            if sent.is_empty() {
                // The source queue refuses them: stop rather than spin on the same messages.
                break;
            }
            let entries = sent.iter().enumerate().map(|(position, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(position.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("id and handle are set")
            });
            let deleted = self
                .client
                .delete_message_batch()
                .queue_url(&self.dlq_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(queue_error)?;
            outcome.moved += deleted.successful().len() as u64;
            for done in deleted.successful() {
                let handle = done
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|position| sent.get(position));
                if let Some(key) = handle.and_then(|handle| letters.get(handle.as_str())) {
                    outcome.letters.push(key.clone());
                }
            }
        }
        Ok(outcome)
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

    #[test]
    fn attributes_count_towards_the_batch_byte_limit() {
        // Ten dead letters of 26,000 bytes fit by their bodies alone, not with their reasons.
        let reason = "r".repeat(1000);
        let messages: Vec<_> = (0..10)
            .map(|i| OutgoingMessage {
                attributes: vec![("crm_sync_error".into(), reason.clone())],
                ..message(i, 26_000)
            })
            .collect();
        let groups = batches(&messages);
        assert_eq!(groups.len(), 2);
        for group in groups {
            let bytes: usize = group
                .iter()
                .map(|m| {
                    m.body.len()
                        + m.attributes
                            .iter()
                            .map(|(n, v)| n.len() + 6 + v.len())
                            .sum::<usize>()
                })
                .sum();
            assert!(bytes <= MAX_BATCH_BYTES);
        }
    }
}
