//! HubSpot: the CRM v3 API client, webhook signatures (v1, v2, v3) and the webhook event format.

pub mod client;
pub mod signature;
pub mod webhook;

pub use client::HubSpotClient;
pub use webhook::{HubSpotEvents, HubSpotWebhookSettings, HubSpotWebhooks};

use crate::domain::contract::ObjectKind;

/// HubSpot's object type id of what a built-in app object becomes (contacts, deals, notes); a
/// declared object's is its mapping's.
pub fn object_type_id(object: ObjectKind) -> Option<&'static str> {
    match object {
        ObjectKind::Contact => Some("0-1"),
        ObjectKind::Deal => Some("0-3"),
        ObjectKind::Activity => Some("0-46"),
        _ => None,
    }
}

/// A record's page in HubSpot's app, for the built-in objects.
pub fn record_url(app_url: &str, portal_id: &str, object: ObjectKind, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    let type_id = object_type_id(object)?;
    Some(format!("{app_url}/contacts/{portal_id}/record/{type_id}/{id}"))
}
