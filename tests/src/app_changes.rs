//! App change messages (contract v1), as a web app would send them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

static NEXT: AtomicU64 = AtomicU64::new(1);

fn idempotency_id() -> String {
    format!("change-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

pub fn contact(record_id: &str, changed_at_ms: i64, data: Value) -> Value {
    json!({
        "version": 1,
        "type": "contact.upsert",
        "record_id": record_id,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
        "data": data,
    })
}

pub fn contact_delete(record_id: &str, changed_at_ms: i64) -> Value {
    json!({
        "version": 1,
        "type": "contact.delete",
        "record_id": record_id,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
    })
}

pub fn deal(record_id: &str, contact_record_id: &str, changed_at_ms: i64, data: Value) -> Value {
    json!({
        "version": 1,
        "type": "deal.upsert",
        "record_id": record_id,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
        "contact_record_id": contact_record_id,
        "data": data,
    })
}

pub fn activity(record_id: &str, contact_record_id: &str, changed_at_ms: i64, body: &str) -> Value {
    json!({
        "version": 1,
        "type": "activity.log",
        "record_id": record_id,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
        "contact_record_id": contact_record_id,
        "data": { "body": body, "occurred_at": "2026-11-27T10:00:00Z" },
    })
}
