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

/// A page in HubSpot's app of a record of a type the mapping declares on `crm_object`: a
/// standard object (`companies`, `tickets`) or a custom one named by its objectTypeId (`2-…`).
pub fn declared_record_url(app_url: &str, portal_id: &str, crm_object: &str, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    let type_id = match crm_object.to_ascii_lowercase().as_str() {
        "companies" => "0-2".to_string(),
        "tickets" => "0-5".to_string(),
        "products" => "0-7".to_string(),
        "line_items" => "0-8".to_string(),
        custom if custom.starts_with("2-") && custom[2..].chars().all(|c| c.is_ascii_digit()) => {
            custom.to_string()
        }
        _ => return None,
    };
    Some(format!("{app_url}/contacts/{portal_id}/record/{type_id}/{id}"))
}

/// A record's page in HubSpot's app, for the built-in objects.
pub fn record_url(app_url: &str, portal_id: &str, object: ObjectKind, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    let type_id = object_type_id(object)?;
    Some(format!("{app_url}/contacts/{portal_id}/record/{type_id}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_types_records_link_by_their_object_type_id() {
        let app = "https://app.hubspot.com";
        assert_eq!(
            declared_record_url(app, "62515", "companies", "101").as_deref(),
            Some("https://app.hubspot.com/contacts/62515/record/0-2/101")
        );
        assert_eq!(
            declared_record_url(app, "62515", "2-3508482", "7").as_deref(),
            Some("https://app.hubspot.com/contacts/62515/record/2-3508482/7")
        );
        assert_eq!(declared_record_url(app, "62515", "p62515_projects", "7"), None);
    }
}
