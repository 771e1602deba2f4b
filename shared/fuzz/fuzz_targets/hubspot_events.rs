//! A HubSpot delivery body, from parsing to what the inbound worker decides: an accepted body
//! yields events whose queue messages parse back and can be interpreted, whatever they hold.
#![no_main]

use crm_sync::adapters::hubspot::webhook::{interpret, parse_events};
use crm_sync::domain::inbound::parse_inbound;
use crm_sync::domain::Delivery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(events) = parse_events(data, 100) else {
        return;
    };
    assert!(events.len() <= 100);
    let delivery = Delivery::new("hubspot", data.to_vec(), 1_795_000_000_000, events.len());
    for event in &events {
        let message = event.queue_message(&delivery);
        let inbound = parse_inbound(&message).expect("a queue message we wrote parses back");
        let _ = interpret(&inbound);
    }
});
