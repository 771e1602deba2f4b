//! Pipedrive: the webhooks v2 dialect (HTTP Basic credentials, one event per delivery) and its
//! events read as changes.

pub mod webhook;

pub use webhook::{PipedriveEvents, PipedriveWebhookSettings, PipedriveWebhooks};
