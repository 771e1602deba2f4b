//! HubSpot webhook fixtures and signing, as HubSpot does it.

use std::time::{SystemTime, UNIX_EPOCH};

use crm_sync::adapters::hubspot::signature;
use serde_json::json;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A propertyChange event on contact `object_id`.
pub fn property_change(
    event_id: i64,
    object_id: i64,
    property: &str,
    value: &str,
    attempt: u32,
) -> serde_json::Value {
    json!({
        "eventId": event_id,
        "subscriptionId": 25,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": 1_767_225_600_000_i64 + event_id,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": attempt,
        "objectId": object_id,
        "propertyName": property,
        "propertyValue": value,
        "changeSource": "CRM_UI"
    })
}

/// A delivery of `count` events, as the JSON text HubSpot posts.
pub fn delivery(count: i64, attempt: u32) -> String {
    let events: Vec<_> = (1..=count)
        .map(|i| property_change(i, 1000 + i, "email", &format!("person{i}@example.com"), attempt))
        .collect();
    serde_json::Value::Array(events).to_string()
}

/// v3 headers for a POST of `body` to `url`, signed at `timestamp_ms` with `secret`.
pub fn v3_headers(secret: &str, url: &str, body: &[u8], timestamp_ms: i64) -> Vec<(&'static str, String)> {
    let timestamp = timestamp_ms.to_string();
    vec![
        (
            "x-hubspot-signature-v3",
            signature::sign_v3(secret.as_bytes(), "POST", url, body, &timestamp),
        ),
        ("x-hubspot-request-timestamp", timestamp),
    ]
}
