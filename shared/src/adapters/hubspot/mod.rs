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

/// HubSpot's standard objects a mapping may declare: (CRM object, event prefix, objectTypeId).
pub(crate) const STANDARD_OBJECTS: [(&str, &str, &str); 4] = [
    ("companies", "company", "0-2"),
    ("tickets", "ticket", "0-5"),
    ("products", "product", "0-7"),
    ("line_items", "line_item", "0-8"),
];

/// A page in HubSpot's app of a record of a type the mapping declares on `crm_object`: a
/// standard object (`companies`, `tickets`) or a custom one named by its objectTypeId (`2-…`).
pub fn declared_record_url(app_url: &str, portal_id: &str, crm_object: &str, crm_id: &str) -> Option<String> {
    let crm_object = crm_object.to_ascii_lowercase();
    let standard = STANDARD_OBJECTS
        .iter()
        .find(|(plural, _, _)| *plural == crm_object)
        .map(|(_, _, type_id)| *type_id);
    let custom = crm_object.starts_with("2-") && crm_object[2..].chars().all(|c| c.is_ascii_digit());
    let type_id = standard.or(custom.then_some(crm_object.as_str()))?;
    Some(record_page(app_url, portal_id, type_id, crm_id))
}

/// A record's page in HubSpot's app, for the built-in objects.
pub fn record_url(app_url: &str, portal_id: &str, object: ObjectKind, crm_id: &str) -> Option<String> {
    Some(record_page(app_url, portal_id, object_type_id(object)?, crm_id))
}

fn record_page(app_url: &str, portal_id: &str, type_id: &str, crm_id: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    format!("{app_url}/contacts/{portal_id}/record/{type_id}/{id}")
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
