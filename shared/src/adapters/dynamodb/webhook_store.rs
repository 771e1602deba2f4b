//! Raw deliveries and their events in one DynamoDB table keyed by `pk`:
//! - `DELIVERY#{provider}#{sha256 of body}`: the body as received, expiring by TTL;
//! - `EVENT#{provider}#{event key}`: one item per event, the dedupe record and the lease that
//!   makes "stored and enqueued once" hold across concurrent and repeated deliveries.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::{condition_failed, n, s, unavailable, written_or_not};
use crate::domain::clock::rfc3339;
use crate::domain::{Delivery, InboundEvent, ProviderId};
use crate::ports::{Claim, EventJournal, EventOutcome, StoreUnavailable, WebhookStore};

const STATUS_CLAIMED: &str = "claimed";
const STATUS_ENQUEUED: &str = "enqueued";

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

    async fn claim_event(
        &self,
        event: &InboundEvent,
        delivery: &Delivery,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Claim, StoreUnavailable> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(event_pk(event.provider, &event.key)))
            .item("kind", s("event"))
            .item("provider", s(event.provider))
            .item("event_key", s(&event.key))
            .item("event_kind", s(&event.kind))
            .item("occurred_at", n(event.occurred_at_ms))
            .item("payload", s(event.raw.get()))
            .item("delivery_id", s(&delivery.id))
            .item("received_at", n(delivery.received_at_ms))
            .item("status", s(STATUS_CLAIMED))
            .item("claim_token", s(token))
            .item("lease_until", n(lease_until_ms))
            .item("expires_at", n(seconds(expires_at_ms)));
        if let Some(object_type) = &event.object_type {
            request = request.item("object_type", s(object_type));
        }
        if let Some(object_id) = &event.object_id {
            request = request.item("object_id", s(object_id));
        }
        let result = request
            // New, or claimed by a request whose lease ran out without enqueueing it.
            .condition_expression("attribute_not_exists(pk) OR (#status = :claimed AND lease_until < :now)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":claimed", s(STATUS_CLAIMED))
            .expression_attribute_values(":now", n(now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Won),
            Err(error) if condition_failed(&error) => {
                let old = match error.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(check)) => check.item(),
                    _ => None,
                };
                let field = |name: &str| {
                    old.and_then(|item| item.get(name))
                        .and_then(|value| value.as_s().ok())
                        .map(String::as_str)
                };
                Ok(match (field("status"), field("claim_token")) {
                    // The SDK retried a write that had landed (its first answer was lost): the
                    // claim it finds is this request's own.
                    (Some(STATUS_CLAIMED), Some(holder)) if holder == token => Claim::Won,
                    (Some(STATUS_CLAIMED), _) => Claim::HeldElsewhere,
                    _ => Claim::AlreadyEnqueued,
                })
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn confirm_enqueued(
        &self,
        provider: ProviderId,
        key: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(event_pk(provider, key)))
            .update_expression("SET #status = :enqueued, enqueued_at = :now REMOVE lease_until")
            .condition_expression("claim_token = :token")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":enqueued", s(STATUS_ENQUEUED))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                // Our lease ran out and a retry took the event over; it enqueues and confirms it.
                tracing::warn!(
                    event_key = key,
                    "lease lost before confirming; the event may be enqueued twice"
                );
                Ok(())
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn release(&self, provider: ProviderId, key: &str, token: &str) -> Result<(), StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(event_pk(provider, key)))
            .update_expression("SET lease_until = :zero")
            .condition_expression("claim_token = :token AND #status = :claimed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":claimed", s(STATUS_CLAIMED))
            .send()
            .await;
        written_or_not(result).map(|_| ())
    }
}

#[async_trait]
impl EventJournal for DynamoDbWebhookStore {
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
            if !matches!(status, Some(STATUS_CLAIMED | STATUS_ENQUEUED) | None) {
                if let Some(key) = item.get("event_key").and_then(|v| v.as_s().ok()) {
                    done.insert(key.clone());
                }
            }
        }
        Ok(done)
    }

    async fn record_outcome(
        &self,
        provider: &str,
        key: &str,
        outcome: EventOutcome,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(event_pk(provider, key)))
            .update_expression("SET #status = :outcome, outcome_detail = :detail, processed_at = :now")
            // Once: only an event still waiting for processing takes an outcome.
            .condition_expression("#status IN (:claimed, :enqueued)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":outcome", s(outcome.as_str()))
            .expression_attribute_values(":detail", s(detail))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":claimed", s(STATUS_CLAIMED))
            .expression_attribute_values(":enqueued", s(STATUS_ENQUEUED))
            .send()
            .await;
        written_or_not(result)
    }
}
