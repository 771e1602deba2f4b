//! DynamoDB adapters.

mod rate_limiter;
mod sync_state;
mod webhook_store;

pub use rate_limiter::{DynamoDbRateLimiter, LimiterSettings};
pub use sync_state::{record_pk, state_from_item, DynamoDbSyncState, BY_CRM_ID, BY_STATUS};
pub use webhook_store::DynamoDbWebhookStore;

use aws_sdk_dynamodb::types::AttributeValue;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}
