//! Pipedrive: the API v2 client (persons and deals, one record a call), the webhooks v2 dialect
//! (HTTP Basic credentials, one event per delivery) and its events read as changes.

pub mod client;
pub mod webhook;

pub use client::PipedriveClient;
pub use webhook::{PipedriveEvents, PipedriveWebhookSettings, PipedriveWebhooks};
