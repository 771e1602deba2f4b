//! DynamoDB adapters.

mod dashboard_store;
mod dead_letter_journal;
mod rate_limiter;
mod sync_state;
mod webhook_store;

pub use dashboard_store::{session_pk, sign_in_pk, DynamoDbDashboardStore};
pub use dead_letter_journal::DynamoDbDeadLetterJournal;
pub use rate_limiter::{DynamoDbRateLimiter, LimiterSettings};
pub use sync_state::{record_pk, state_from_item, DynamoDbSyncState, BY_CRM_ID, BY_STATUS};
pub use webhook_store::{DynamoDbEventJournal, DynamoDbWebhookStore};

use std::collections::HashMap;

use anyhow::anyhow;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};

use crate::ports::StoreUnavailable;

pub(crate) fn unavailable<E, R>(error: SdkError<E, R>) -> StoreUnavailable
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreUnavailable(anyhow!("{}", DisplayErrorContext(&error)))
}

/// Whether a write failed only because its condition did not hold.
pub(crate) fn condition_failed<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

/// For writes where "the condition did not hold" is a fine outcome: `Ok(true)` when written,
/// `Ok(false)` when the condition kept it from being written.
pub(crate) fn written_or_not<T, E, R>(result: Result<T, SdkError<E, R>>) -> Result<bool, StoreUnavailable>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(error) if condition_failed(&error) => Ok(false),
        Err(error) => Err(unavailable(error)),
    }
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A DynamoDB item, or a key.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// How many rounds of unprocessed keys or items are retried, 100 ms apart and doubling, before
/// the store counts as unavailable.
const UNPROCESSED_ROUNDS: u32 = 8;

async fn backoff_round(rounds: u32, what: &str) -> Result<(), StoreUnavailable> {
    if rounds > UNPROCESSED_ROUNDS {
        return Err(StoreUnavailable(anyhow!(
            "DynamoDB kept returning unprocessed {what}"
        )));
    }
    tokio::time::sleep(std::time::Duration::from_millis(50 << rounds)).await;
    Ok(())
}

/// Reads `keys` of `table`, 100 a call, retrying the keys DynamoDB leaves unprocessed (it may,
/// under load, without an error); `projection` names the attributes to read (`#name`s mapped).
/// Returns the items found, in no particular order.
pub(crate) async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
    projection: Option<(&str, &[(&str, &str)])>,
) -> Result<Vec<Item>, StoreUnavailable> {
    let mut found = Vec::new();
    for chunk in keys.chunks(100) {
        let mut request = KeysAndAttributes::builder().set_keys(Some(chunk.to_vec()));
        if let Some((expression, names)) = projection {
            request = request.projection_expression(expression);
            for (placeholder, name) in names {
                request = request.expression_attribute_names(*placeholder, *name);
            }
        }
        let mut pending = Some(request.build().map_err(|e| StoreUnavailable(e.into()))?);
        let mut rounds = 0;
        while let Some(request) = pending.take() {
            let output = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(unavailable)?;
            found.extend(
                output
                    .responses()
                    .and_then(|r| r.get(table))
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            pending = output
                .unprocessed_keys()
                .and_then(|unprocessed| unprocessed.get(table))
                .filter(|request| !request.keys().is_empty())
                .cloned();
            if pending.is_some() {
                rounds += 1;
                backoff_round(rounds, "keys").await?;
            }
        }
    }
    Ok(found)
}

/// A string attribute of an item.
pub(crate) fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|value| value.as_s().ok()).cloned()
}

/// A number attribute of an item, as whole milliseconds or counts.
pub(crate) fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|n| n.parse::<f64>().ok())
        .map(|n| n as i64)
}

fn put_requests(items: Vec<Item>) -> Vec<WriteRequest> {
    items
        .into_iter()
        .map(|item| {
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .expect("item is set"),
                )
                .build()
        })
        .collect()
}

/// Puts `items` into `table` in one batch call of at most 25, retrying the items DynamoDB leaves
/// unprocessed.
pub(crate) async fn batch_put(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<Item>,
) -> Result<(), StoreUnavailable> {
    debug_assert!(items.len() <= 25, "one batch call takes at most 25 items");
    batch_write(client, table, put_requests(items)).await
}

/// Puts `items` (at most 25) in one try, without retry rounds; returns how many DynamoDB left
/// unprocessed.
pub(crate) async fn batch_put_once(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<Item>,
) -> Result<usize, StoreUnavailable> {
    debug_assert!(items.len() <= 25, "one batch call takes at most 25 items");
    let output = client
        .batch_write_item()
        .request_items(table, put_requests(items))
        .send()
        .await
        .map_err(unavailable)?;
    Ok(output
        .unprocessed_items()
        .and_then(|unprocessed| unprocessed.get(table))
        .map_or(0, Vec::len))
}

/// Deletes the items of `keys` from `table` in one batch call of at most 25, retrying what
/// DynamoDB leaves unprocessed.
pub(crate) async fn batch_delete(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
) -> Result<(), StoreUnavailable> {
    debug_assert!(keys.len() <= 25, "one batch call takes at most 25 items");
    let requests = keys
        .into_iter()
        .map(|key| {
            WriteRequest::builder()
                .delete_request(
                    aws_sdk_dynamodb::types::DeleteRequest::builder()
                        .set_key(Some(key))
                        .build()
                        .expect("key is set"),
                )
                .build()
        })
        .collect();
    batch_write(client, table, requests).await
}

async fn batch_write(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    mut requests: Vec<WriteRequest>,
) -> Result<(), StoreUnavailable> {
    let mut rounds = 0;
    while !requests.is_empty() {
        let output = client
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await
            .map_err(unavailable)?;
        requests = output
            .unprocessed_items()
            .and_then(|unprocessed| unprocessed.get(table))
            .cloned()
            .unwrap_or_default();
        if !requests.is_empty() {
            rounds += 1;
            backoff_round(rounds, "items").await?;
        }
    }
    Ok(())
}
