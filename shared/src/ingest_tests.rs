//! Webhook ingest against in-memory ports: the delivery stored once and its events sent, a
//! redelivery sent again (for the consumer to recognise), an outage of either side answered with
//! a retry, an oversized event refused before anything is stored or sent. Proven end to end over
//! HTTP in `tests/integration/webhook_ingest.rs`.

use std::sync::Arc;

use base64::Engine;
use secrecy::SecretString;
use serde_json::json;

use super::{IngestError, IngestSettings, WebhookIngest};
use crate::adapters::pipedrive::{PipedriveWebhookSettings, PipedriveWebhooks};
use crate::domain::WebhookRequest;
use crate::testing::{ManualClock, MemoryQueue, MemoryWebhookStore};

const NOW: i64 = 1_796_000_000_000;

fn ingest(settings: IngestSettings) -> (WebhookIngest, Arc<MemoryWebhookStore>, Arc<MemoryQueue>) {
    let store = Arc::new(MemoryWebhookStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let provider = PipedriveWebhooks::new(&PipedriveWebhookSettings {
        username: "hooks".into(),
        password: SecretString::from("hook password"),
    });
    let service = WebhookIngest::new(
        vec![Arc::new(provider)],
        store.clone(),
        queue.clone(),
        Arc::new(ManualClock::at(NOW)),
        settings,
    );
    (service, store, queue)
}

/// A Pipedrive v2 delivery of one person's change, with the webhook's credentials.
fn delivery(event_id: &str, padding: usize) -> WebhookRequest {
    let body = json!({
        "meta": {"action": "change", "entity": "person", "entity_id": "7", "id": event_id,
                 "timestamp": "2026-11-27T10:15:00Z", "version": "2.0", "change_source": "app", "attempt": 1},
        "data": {"id": 7, "name": "Ada", "note": "x".repeat(padding)},
        "previous": {"name": "Ad"}
    });
    WebhookRequest {
        method: "POST".into(),
        public_url: "https://hooks.example.com/webhooks/pipedrive".into(),
        headers: vec![(
            "authorization".into(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("hooks:hook password")
            ),
        )],
        body: body.to_string().into_bytes(),
    }
}

#[tokio::test]
async fn a_delivery_is_stored_once_and_each_posting_sends_its_events() {
    let (service, store, queue) = ingest(IngestSettings::default());

    let first = service.ingest("pipedrive", &delivery("e-1", 0)).await.unwrap();
    let again = service.ingest("pipedrive", &delivery("e-1", 0)).await.unwrap();

    assert_eq!((first.enqueued, first.duplicates), (1, 0));
    assert_eq!(again.enqueued, 1, "sent again: the consumer recognises it");
    let sent = queue.take();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].body, sent[1].body,
        "the same event, as the consumer will see it"
    );
    assert_eq!(store.deliveries(), 1, "the raw delivery once");
}

#[tokio::test]
async fn a_storage_outage_is_answered_with_a_retry_and_the_retry_stores_the_delivery() {
    let (service, store, queue) = ingest(IngestSettings::default());
    store.fail_deliveries(true);

    let failed = service.ingest("pipedrive", &delivery("e-2", 0)).await;
    assert!(matches!(failed, Err(IngestError::Unavailable(_))), "{failed:?}");
    assert_eq!(queue.take().len(), 1, "sent side by side with the failed write");
    assert_eq!(store.deliveries(), 0);

    store.fail_deliveries(false);
    let retry = service.ingest("pipedrive", &delivery("e-2", 0)).await.unwrap();
    assert_eq!(retry.enqueued, 1);
    assert_eq!(store.deliveries(), 1);
}

#[tokio::test]
async fn a_queue_outage_is_answered_with_a_retry_naming_the_events_not_sent() {
    let (service, store, queue) = ingest(IngestSettings::default());
    queue.fail_sends(true);

    let failed = service.ingest("pipedrive", &delivery("e-4", 0)).await;
    assert!(
        matches!(
            failed,
            Err(IngestError::Incomplete {
                pending: 1,
                events: 1
            })
        ),
        "{failed:?}"
    );
    assert_eq!(store.deliveries(), 1, "stored side by side");

    queue.fail_sends(false);
    service.ingest("pipedrive", &delivery("e-4", 0)).await.unwrap();
    assert_eq!(queue.take().len(), 1, "the retry sends it");
}

#[tokio::test]
async fn an_event_past_the_queue_message_limit_is_refused_before_anything_is_stored() {
    let (service, store, queue) = ingest(IngestSettings {
        max_message_bytes: 2_048,
        ..IngestSettings::default()
    });

    let refused = service.ingest("pipedrive", &delivery("e-3", 4_000)).await;

    match refused {
        Err(IngestError::BadRequest(error)) => assert!(error.to_string().contains("2048 allowed"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.deliveries(), 0);
    assert!(queue.take().is_empty());
}
