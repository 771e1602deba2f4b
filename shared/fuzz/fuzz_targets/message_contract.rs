//! The outbound message contract and the inbound queue message: any text either parses or is
//! refused with a reason; a parsed change keeps its meaning when re-stamped for a re-sync.
#![no_main]

use crm_sync::domain::contract::{parse_change, with_idempotency_id};
use crm_sync::domain::inbound::parse_inbound;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_inbound(text);
    let Ok(change) = parse_change(text) else {
        return;
    };
    let restamped = with_idempotency_id(text, "resync-1").expect("a valid message can be re-stamped");
    let again = parse_change(&restamped).expect("a re-stamped message is still valid");
    assert_eq!(again.idempotency_id, "resync-1");
    assert_eq!(again.record(), change.record());
    assert_eq!(again.changed_at_ms, change.changed_at_ms);
    assert_eq!(again.data, change.data);
});
