//! HubSpot: the CRM v3 API client, webhook signatures (v1, v2, v3) and the webhook event format.

pub mod client;
pub mod signature;
pub mod webhook;

pub use client::HubSpotClient;
pub use webhook::{HubSpotEvents, HubSpotWebhookSettings, HubSpotWebhooks};
