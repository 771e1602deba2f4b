//! How Lambda events reach the use cases. `functions/*` only build these and hand them to the
//! Lambda runtime; the local stack hands them the same events.

pub mod reconcile_schedule;
pub mod sync_sqs;
pub mod webhook_http;
