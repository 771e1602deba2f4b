//! HubSpot: webhook signatures (v1, v2, v3) and the webhook event format.

pub mod signature;
pub mod webhook;

pub use webhook::{HubSpotWebhookSettings, HubSpotWebhooks};
