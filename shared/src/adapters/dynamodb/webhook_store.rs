//! Raw deliveries and their events' outcomes in one DynamoDB table keyed by `pk`:
//! - `DELIVERY#{provider}#{sha256 of body}`: the body as received, expiring by TTL; the webhook
//!   function's one write per delivery;
//! - `EVENT#{provider}#{event key}`: one item per event, written once by the consumer with the
//!   event's outcome (the dedupe record: a copy of the event processed later finds it).

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::{n, s, written_or_not};
use crate::domain::clock::rfc3339;
use crate::domain::inbound::InboundMessage;
use crate::domain::Delivery;
use crate::ports::{EventJournal, EventOutcome, StoreUnavailable, WebhookStore};

/// Statuses of an event not processed yet: what the earlier ingest left while an event waited,
/// and `failed` (dead-lettered: a redrive may process it after all).
const WAITING: [&str; 3] = ["claimed", "enqueued", "failed"];

/// [`WebhookStore`] over a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbWebhookStore {
    client: Client,
    table: String,
}

impl DynamoDbWebhookStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

pub fn delivery_pk(provider: &str, id: &str) -> String {
    format!("DELIVERY#{provider}#{id}")
}

pub fn event_pk(provider: &str, key: &str) -> String {
    format!("EVENT#{provider}#{key}")
}

fn seconds(ms: i64) -> i64 {
    ms / 1000
}

/// [`EventJournal`] over the same table: each event's outcome, with the event.
#[derive(Debug, Clone)]
pub struct DynamoDbEventJournal {
    client: Client,
    table: String,
    /// How long an event's item, and so its dedupe record, is kept (TTL).
    retention_ms: i64,
}

impl DynamoDbEventJournal {
    pub fn new(client: Client, table: impl Into<String>, retention_ms: i64) -> Self {
        Self {
            client,
            table: table.into(),
            retention_ms,
        }
    }
}

#[async_trait]
impl WebhookStore for DynamoDbWebhookStore {
    async fn put_delivery(&self, delivery: &Delivery, expires_at_ms: i64) -> Result<(), StoreUnavailable> {
        let body = match std::str::from_utf8(&delivery.body) {
            Ok(text) => s(text),
            Err(_) => AttributeValue::B(Blob::new(delivery.body.clone())),
        };
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(delivery_pk(delivery.provider, &delivery.id)))
            .item("kind", s("delivery"))
            .item("provider", s(delivery.provider))
            .item("delivery_id", s(&delivery.id))
            .item("received_at", n(delivery.received_at_ms))
            .item("received_at_iso", s(rfc3339(delivery.received_at_ms)))
            .item("event_count", n(delivery.event_count))
            .item("body", body)
            .item("expires_at", n(seconds(expires_at_ms)))
            // A re-post of the same body keeps the first copy and its first arrival time.
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        written_or_not(result).map(|_| ())
    }
}

#[async_trait]
impl EventJournal for DynamoDbEventJournal {
    async fn processed(
        &self,
        provider: &str,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreUnavailable> {
        let mut done = std::collections::HashSet::new();
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let keys = unique
            .iter()
            .map(|key| std::collections::HashMap::from([("pk".to_string(), s(event_pk(provider, key)))]))
            .collect();
        let items = super::batch_get(
            &self.client,
            &self.table,
            keys,
            Some(("event_key, #status", &[("#status", "status")])),
        )
        .await?;
        for item in items {
            let status = item.get("status").and_then(|v| v.as_s().ok()).map(String::as_str);
            if status.is_some_and(|status| !WAITING.contains(&status)) {
                if let Some(key) = item.get("event_key").and_then(|v| v.as_s().ok()) {
                    done.insert(key.clone());
                }
            }
        }
        Ok(done)
    }

    async fn record_outcome(
        &self,
        event: &InboundMessage,
        outcome: EventOutcome,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(event_pk(&event.provider, &event.event_key)))
            .item("kind", s("event"))
            .item("provider", s(&event.provider))
            .item("event_key", s(&event.event_key))
            .item("event_kind", s(&event.kind))
            .item("occurred_at", n(event.occurred_at_ms))
            .item("payload", s(event.event.to_string()))
            .item("status", s(outcome.as_str()))
            .item("outcome_detail", s(detail))
            .item("processed_at", n(now_ms))
            .item("expires_at", n(seconds(now_ms + self.retention_ms)));
        for (name, value) in [
            ("object_type", &event.object_type),
            ("object_id", &event.object_id),
            ("delivery_id", &event.delivery_id),
        ] {
            if let Some(value) = value {
                request = request.item(name, s(value));
            }
        }
        if let Some(received_at) = event.received_at_ms {
            request = request.item("received_at", n(received_at));
        }
        let result = request
            // Once: the first copy of the event records it; an item the earlier ingest left
            // waiting, or a dead letter's, takes it too.
            .condition_expression("attribute_not_exists(pk) OR #status IN (:claimed, :enqueued, :failed)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":claimed", s(WAITING[0]))
            .expression_attribute_values(":enqueued", s(WAITING[1]))
            .expression_attribute_values(":failed", s(WAITING[2]))
            .send()
            .await;
        written_or_not(result)
    }
}
