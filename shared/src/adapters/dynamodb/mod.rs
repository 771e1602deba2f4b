//! DynamoDB adapters.

mod dashboard_store;
mod rate_limiter;
mod sync_state;
mod webhook_store;

pub use dashboard_store::{session_pk, sign_in_pk, DynamoDbDashboardStore};
pub use rate_limiter::{DynamoDbRateLimiter, LimiterSettings};
pub use sync_state::{record_pk, state_from_item, DynamoDbSyncState, BY_CRM_ID, BY_STATUS};
pub use webhook_store::DynamoDbWebhookStore;

use anyhow::anyhow;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

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
