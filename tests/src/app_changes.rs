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

/// A version 2 change of an object type the mapping declares.
pub fn object_upsert(object_type: &str, record_id: &str, changed_at_ms: i64, data: Value) -> Value {
    json!({
        "version": 2,
        "type": "object.upsert",
        "object_type": object_type,
        "record_id": record_id,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
        "data": data,
    })
}

/// A version 2 association change from one record to another: set with `labels`, or removed
/// (`None`).
pub fn association(
    from: (&str, &str),
    to: (&str, &str),
    changed_at_ms: i64,
    labels: Option<&[&str]>,
) -> Value {
    let mut change = json!({
        "version": 2,
        "type": "association.upsert",
        "object_type": from.0,
        "record_id": from.1,
        "to_object_type": to.0,
        "to_record_id": to.1,
        "idempotency_id": idempotency_id(),
        "changed_at": changed_at_ms,
    });
    match labels {
        Some(labels) => change["labels"] = json!(labels),
        None => change["type"] = json!("association.delete"),
    }
    change
}
