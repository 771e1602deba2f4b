//! Salesforce: the REST API client (sObject Collections, 200 records a call, OAuth refresh) and
//! the inbound Outbound Messages (SOAP notifications).

pub mod client;
pub mod outbound_messages;

pub use client::{OAuthRefresh, SalesforceClient};
pub use outbound_messages::{SalesforceEvents, SalesforceOutboundMessages, SalesforceWebhookSettings};

use crate::domain::contract::ObjectKind;

/// A page in Lightning Experience of a record of a type the mapping declares on an sObject.
pub fn declared_record_url(instance_url: &str, sobject: &str, crm_id: &str) -> Option<String> {
    let sobject = client::soql_name(sobject)?;
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    Some(format!("{instance_url}/lightning/r/{sobject}/{id}/view"))
}

/// A record's page in Lightning Experience at the org's instance URL, for the built-in objects.
pub fn record_url(instance_url: &str, object: ObjectKind, crm_id: &str) -> Option<String> {
    let id: String = form_urlencoded::byte_serialize(crm_id.as_bytes()).collect();
    let sobject = match object {
        ObjectKind::Contact => "Contact",
        ObjectKind::Deal => "Opportunity",
        ObjectKind::Activity => "Task",
        _ => return None,
    };
    Some(format!("{instance_url}/lightning/r/{sobject}/{id}/view"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_link_to_their_lightning_pages() {
        assert_eq!(
            record_url(
                "https://acme.my.salesforce.com",
                ObjectKind::Deal,
                "006000000000001AAA"
            )
            .as_deref(),
            Some("https://acme.my.salesforce.com/lightning/r/Opportunity/006000000000001AAA/view")
        );
        assert_eq!(
            record_url("https://acme.my.salesforce.com", ObjectKind::Contact, "003x").as_deref(),
            Some("https://acme.my.salesforce.com/lightning/r/Contact/003x/view")
        );
    }

    #[test]
    fn a_declared_types_records_link_to_their_sobjects_pages() {
        let org = "https://acme.my.salesforce.com";
        assert_eq!(
            declared_record_url(org, "Project__c", "a01x").as_deref(),
            Some("https://acme.my.salesforce.com/lightning/r/Project__c/a01x/view")
        );
        assert_eq!(declared_record_url(org, "Bad/Name", "a01x"), None);
    }
}
