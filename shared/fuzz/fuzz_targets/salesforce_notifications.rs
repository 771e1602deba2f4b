//! A Salesforce Outbound Message, from authentication to what the inbound worker decides: any body
//! with the right token authenticates or is refused without a panic, an accepted body holds 1 to
//! 100 events keyed by one org, each queue message parses back, and a change it is read as names
//! the notified record.
#![no_main]

use crm_sync::adapters::salesforce::outbound_messages::parse_notifications;
use crm_sync::adapters::salesforce::{SalesforceEvents, SalesforceOutboundMessages, SalesforceWebhookSettings};
use crm_sync::domain::inbound::{parse_inbound, Interpretation};
use crm_sync::domain::{Delivery, WebhookRequest};
use crm_sync::ports::{CrmEvents, WebhookProvider};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let provider = SalesforceOutboundMessages::new(&SalesforceWebhookSettings {
        organization_id: "00D000000000062EAA".into(),
        token: "t".to_string().into(),
    });
    let request = WebhookRequest {
        method: "POST".into(),
        public_url: "https://h/webhooks/salesforce?token=t".into(),
        headers: Vec::new(),
        body: data.to_vec(),
    };
    let authentic = provider.authenticate(&request, 0).is_ok();
    let Ok(events) = parse_notifications(data) else {
        return;
    };
    assert!((1..=100).contains(&events.len()));
    let organization = events[0].key.split(':').next().unwrap().to_string();
    let delivery = Delivery::new("salesforce", data.to_vec(), 1_795_000_000_000, events.len());
    let reader = SalesforceEvents::default();
    for event in &events {
        assert!(event.key.starts_with(&format!("{organization}:")));
        let message = event.queue_message(&delivery);
        let inbound = parse_inbound(&message).expect("a queue message we wrote parses back");
        assert_eq!(inbound.event_key, event.key);
        if let Interpretation::Change(change) = reader.interpret(&inbound) {
            assert_eq!(Some(change.crm_id), event.object_id.clone());
        }
    }
    // An accepted body from another org never passes authentication.
    if organization.get(..15) != Some("00D000000000062") {
        assert!(!authentic);
    }
});
