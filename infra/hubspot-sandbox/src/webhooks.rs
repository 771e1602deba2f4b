//! HubSpot's side of webhooks: every change to a contact or deal (through the API or by a "sales
//! rep" through the control API) becomes events that are batched, signed (v3) and posted to the
//! target URL, and retried on failure, as HubSpot does.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::store::StoreChange;

/// Where and how events are delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// The app's webhook target URL; no events are emitted without one.
    pub target_url: Option<String>,
    /// The app's client secret: the v3 signature key.
    pub client_secret: String,
    pub app_id: u64,
    pub portal_id: u64,
    /// How long events gather before a delivery goes out.
    pub batch_window_ms: u64,
    /// Events per delivery (HubSpot: fewer than 100).
    pub max_events: usize,
    /// Retries of a delivery that failed (non-2xx, error, or no answer within `timeout_ms`).
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
    /// Share of deliveries posted twice, as HubSpot sometimes does.
    pub duplicate_rate: f64,
    /// Each delivery first waits a random time up to this, so that later ones overtake it.
    pub reorder_ms: u64,
    /// Whether the app subscribes to association changes (`deal.associationChange` and the
    /// contact's side): off unless a test asks, as an app's subscriptions are its own choice.
    pub association_changes: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            target_url: None,
            client_secret: String::new(),
            app_id: 1_160_452,
            portal_id: 62_515,
            batch_window_ms: 100,
            max_events: 100,
            max_retries: 10,
            retry_base_ms: 1_000,
            timeout_ms: 5_000,
            duplicate_rate: 0.0,
            reorder_ms: 0,
            association_changes: false,
        }
    }
}

/// Delivery counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookStats {
    pub events: u64,
    pub deliveries: u64,
    pub failed_attempts: u64,
    pub duplicates_sent: u64,
    /// Deliveries posted or being retried right now.
    pub in_flight: u64,
}

fn singular(object: &str) -> Option<&'static str> {
    match object {
        "contacts" => Some("contact"),
        "deals" => Some("deal"),
        "companies" => Some("company"),
        _ => None,
    }
}

/// Turns store changes into HubSpot events (creation, then one propertyChange per property).
pub fn events_for(
    changes: Vec<StoreChange>,
    settings: &WebhookSettings,
    source: &str,
    next_id: &mut u64,
    now_ms: i64,
) -> Vec<Value> {
    let mut events = Vec::new();
    for change in changes {
        let Some(kind) = singular(&change.object) else {
            continue;
        };
        let mut base = json!({
            "subscriptionId": 0,
            "portalId": settings.portal_id,
            "appId": settings.app_id,
            "occurredAt": now_ms,
            "attemptNumber": 0,
            "objectId": change.id,
            "changeSource": source,
        });
        if source == "INTEGRATION" {
            base["sourceId"] = json!(settings.app_id.to_string());
        }
        if let Some((action, fields)) = &change.identity {
            if *action == "associationChange" && !settings.association_changes {
                continue;
            }
            // A privacy deletion is reported as a deletion too.
            let actions: &[&str] = if *action == "privacyDeletion" {
                &["privacyDeletion", "deletion"]
            } else {
                std::slice::from_ref(action)
            };
            for action in actions {
                *next_id += 1;
                let mut event = base.clone();
                event["eventId"] = json!(*next_id);
                event["subscriptionType"] = json!(format!("{kind}.{action}"));
                event["subscriptionId"] = json!(subscription(kind, action));
                for (name, value) in fields.as_object().into_iter().flatten() {
                    event[name] = value.clone();
                }
                // HubSpot's association events name their records as from and to only.
                if *action == "associationChange" {
                    if let Some(event) = event.as_object_mut() {
                        event.remove("objectId");
                    }
                }
                events.push(event);
            }
            continue;
        }
        if change.created {
            *next_id += 1;
            let mut event = base.clone();
            event["eventId"] = json!(*next_id);
            event["subscriptionType"] = json!(format!("{kind}.creation"));
            event["subscriptionId"] = json!(subscription(kind, "creation"));
            event["changeFlag"] = json!("NEW");
            events.push(event);
        }
        for (property, value) in change.properties {
            *next_id += 1;
            let mut event = base.clone();
            event["eventId"] = json!(*next_id);
            event["subscriptionType"] = json!(format!("{kind}.propertyChange"));
            event["subscriptionId"] = json!(subscription(kind, "propertyChange"));
            event["propertyName"] = json!(property);
            event["propertyValue"] = json!(value);
            events.push(event);
        }
    }
    events
}

/// The id of the app's subscription to one kind of event.
fn subscription(kind: &str, action: &str) -> u64 {
    let base = if kind == "contact" { 100 } else { 200 };
    base + match action {
        "creation" => 1,
        "propertyChange" => 2,
        "deletion" => 3,
        "merge" => 4,
        "restore" => 5,
        "associationChange" => 7,
        _ => 6,
    }
}

/// The v3 signature of a POST of `body` to `url` at `timestamp`.
pub fn sign_v3(secret: &str, url: &str, body: &str, timestamp: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"POST");
    mac.update(url.as_bytes());
    mac.update(body.as_bytes());
    mac.update(timestamp.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Posts one batch, retrying with exponential backoff; returns (attempts that failed, duplicated).
pub async fn deliver(
    http: &reqwest::Client,
    settings: &WebhookSettings,
    mut events: Vec<Value>,
) -> (u64, bool) {
    let Some(url) = settings.target_url.clone() else {
        return (0, false);
    };
    if settings.reorder_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=settings.reorder_ms))).await;
    }
    let mut failed = 0;
    for attempt in 0..=settings.max_retries {
        for event in &mut events {
            event["attemptNumber"] = json!(attempt);
        }
        let body = Value::Array(events.clone()).to_string();
        let post = || {
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            let timestamp = timestamp.to_string();
            http.post(&url)
                .timeout(Duration::from_millis(settings.timeout_ms))
                .header("content-type", "application/json")
                .header("x-hubspot-request-timestamp", &timestamp)
                .header(
                    "x-hubspot-signature-v3",
                    sign_v3(&settings.client_secret, &url, &body, &timestamp),
                )
                .body(body.clone())
                .send()
        };
        let ok = matches!(post().await, Ok(response) if response.status().is_success());
        if ok {
            let duplicate = fastrand::f64() < settings.duplicate_rate;
            if duplicate {
                let _ = post().await;
            }
            return (failed, duplicate);
        }
        failed += 1;
        let wait = settings.retry_base_ms.saturating_mul(1 << attempt.min(10));
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    (failed, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v3_signature_matches_the_published_vector() {
        assert_eq!(
            sign_v3(
                "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
                "https://www.example.com/webhook_uri",
                "{'example_field':'example_value'}",
                "15000000"
            ),
            "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw="
        );
    }

    #[test]
    fn a_new_contact_gives_a_creation_event_and_one_event_per_property() {
        let change = StoreChange {
            object: "contacts".into(),
            id: 5,
            created: true,
            properties: [("email".to_string(), "a@b.io".to_string())].into(),
            identity: None,
        };
        let mut next = 0;
        let events = events_for(vec![change], &WebhookSettings::default(), "CRM_UI", &mut next, 9);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["subscriptionType"], "contact.creation");
        assert_eq!(events[1]["propertyName"], "email");
        assert_eq!(events[1]["objectId"], 5);
        assert_ne!(events[0]["eventId"], events[1]["eventId"]);
    }

    #[test]
    fn a_merge_is_one_event_with_its_ids_and_a_privacy_deletion_is_reported_as_a_deletion_too() {
        let mut store = crate::store::Store::default();
        let a = store
            .create("contacts", [("email".to_string(), "a@b.io".to_string())].into())
            .unwrap();
        let b = store
            .create("contacts", [("email".to_string(), "b@b.io".to_string())].into())
            .unwrap();
        store.changes.clear();
        let survivor = store.merge("contacts", a.id, b.id).unwrap();
        assert!(store.privacy_delete("contacts", survivor.id));
        let mut next = 0;
        let changes = std::mem::take(&mut store.changes);
        let events = events_for(changes, &WebhookSettings::default(), "CRM_UI", &mut next, 9);
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["subscriptionType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["contact.merge", "contact.privacyDeletion", "contact.deletion"]
        );
        assert_eq!(events[0]["primaryObjectId"], a.id);
        assert_eq!(events[0]["mergedObjectIds"], json!([b.id]));
        assert_eq!(events[0]["newObjectId"], survivor.id);
        assert_eq!(events[0]["objectId"], survivor.id);
    }
}
