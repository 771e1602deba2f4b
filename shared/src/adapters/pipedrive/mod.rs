//! Pipedrive: the API v2 client (persons and deals, one record a call), the webhooks v2 dialect
//! (HTTP Basic credentials, one event per delivery) and its events read as changes.

pub mod client;
pub mod webhook;

pub use client::PipedriveClient;
pub use webhook::{PipedriveEvents, PipedriveWebhookSettings, PipedriveWebhooks};

use crate::domain::contract::ObjectKind;

/// A page in Pipedrive of a record of a type the mapping declares on `crm_object`
/// (organizations, products).
pub fn declared_record_url(app_url: &str, crm_object: &str, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    match crm_object {
        "organizations" => Some(format!("{app_url}/organization/{id}")),
        "products" => Some(format!("{app_url}/product/{id}")),
        _ => None,
    }
}

/// A record's page in the company's Pipedrive (`https://{company}.pipedrive.com`), for the
/// built-in objects.
pub fn record_url(app_url: &str, object: ObjectKind, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    match object {
        ObjectKind::Contact => Some(format!("{app_url}/person/{id}")),
        ObjectKind::Deal => Some(format!("{app_url}/deal/{id}")),
        // Activities are not synced to Pipedrive: its activity list, not a record.
        ObjectKind::Activity => Some(format!("{app_url}/activities/list")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persons_and_deals_link_to_their_pages_in_the_companys_pipedrive() {
        let app = "https://acme.pipedrive.com";
        assert_eq!(
            record_url(app, ObjectKind::Contact, "42").as_deref(),
            Some("https://acme.pipedrive.com/person/42")
        );
        assert_eq!(
            record_url(app, ObjectKind::Deal, "7").as_deref(),
            Some("https://acme.pipedrive.com/deal/7")
        );
        assert_eq!(
            record_url(app, ObjectKind::Deal, "7/../x").as_deref(),
            Some("https://acme.pipedrive.com/deal/7%2F..%2Fx")
        );
    }

    #[test]
    fn an_organization_links_to_its_page_and_an_unknown_object_to_none() {
        let app = "https://acme.pipedrive.com";
        assert_eq!(
            declared_record_url(app, "organizations", "9").as_deref(),
            Some("https://acme.pipedrive.com/organization/9")
        );
        assert_eq!(declared_record_url(app, "leads", "9"), None);
    }
}
