//! HubSpot: the CRM v3 API client, webhook signatures (v1, v2, v3) and the webhook event format.

pub mod client;
pub mod signature;
pub mod webhook;

pub use client::HubSpotClient;
pub use webhook::{HubSpotEvents, HubSpotWebhookSettings, HubSpotWebhooks};

use crate::domain::contract::ObjectKind;

/// HubSpot's object type id of what an app object becomes (contacts, deals, notes).
pub fn object_type_id(object: ObjectKind) -> &'static str {
    match object {
        ObjectKind::Contact => "0-1",
        ObjectKind::Deal => "0-3",
        ObjectKind::Activity => "0-46",
    }
}

/// A record's page in HubSpot's app.
pub fn record_url(app_url: &str, portal_id: &str, object: ObjectKind, crm_id: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    format!(
        "{app_url}/contacts/{portal_id}/record/{}/{id}",
        object_type_id(object)
    )
}
