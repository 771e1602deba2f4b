//! A Pipedrive v2 delivery, from parsing to what the inbound worker decides: an accepted body is
//! one event whose key holds its entity and id, whose queue message parses back, and whose
//! interpretation names that same record.
#![no_main]

use crm_sync::adapters::pipedrive::webhook::{interpret, parse_event};
use crm_sync::domain::inbound::{parse_inbound, Interpretation};
use crm_sync::domain::Delivery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = parse_event(data) else {
        return;
    };
    let (entity, id) = (event.object_type.clone().unwrap(), event.object_id.clone().unwrap());
    assert!(event.key.starts_with(&format!("{entity}:{id}:")));
    let delivery = Delivery::new("pipedrive", data.to_vec(), 1_795_000_000_000, 1);
    let message = event.queue_message(&delivery);
    let inbound = parse_inbound(&message).expect("a queue message we wrote parses back");
    assert_eq!(inbound.event_key, event.key);
    if let Interpretation::Change(change) = interpret(&inbound) {
        assert_eq!(change.crm_id, id);
        assert_eq!(change.created, event.kind.ends_with(".create"));
    }
});
