//! The inbound use case against in-memory ports: what a CRM change becomes (an app-inbox
//! message, a conflict, an echo, nothing) in milliseconds. The same is proven end to end, with
//! the sandboxes posting signed webhooks, in `tests/integration/sync_inbound.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{EventsOf, InboundService, InboundSettings};
use crate::adapters::hubspot::HubSpotEvents;
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::ports::state::*;
use crate::ports::EventOutcome;
use crate::sync::{SyncService, SyncSettings};
use crate::testing::{
    deadline, worker, ManualClock, MemoryCrm, MemoryJournal, MemoryQueue, MemorySyncState, OpenLimiter,
};
use crate::worker::SyncMessage;

const NOW: i64 = 1_796_000_000_000;

struct Harness {
    inbound: InboundService,
    outbound: SyncService,
    state: Arc<MemorySyncState>,
    journal: Arc<MemoryJournal>,
    app_inbox: Arc<MemoryQueue>,
    /// Where retried messages go (a busy record's event comes back later).
    retries: Arc<MemoryQueue>,
    crm: Arc<MemoryCrm>,
}

fn harness() -> Harness {
    let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING).expect("the shipped mapping"));
    let crm = Arc::new(MemoryCrm::new(100));
    let state = Arc::new(MemorySyncState::default());
    let journal = Arc::new(MemoryJournal::default());
    let app_inbox = Arc::new(MemoryQueue::default());
    let clock = Arc::new(ManualClock::at(NOW));
    let queue = Arc::new(MemoryQueue::default());
    let worker = worker(clock.clone(), queue.clone(), 2, false);
    let inbound = InboundService::new(
        mapping.clone(),
        crm.clone(),
        Arc::new(EventsOf::new("hubspot", Some(Arc::new(HubSpotEvents::default())))),
        journal.clone(),
        state.clone(),
        app_inbox.clone(),
        clock.clone(),
        worker,
        InboundSettings::default(),
    );
    let outbound = SyncService::new(
        mapping,
        crm.clone(),
        state.clone(),
        Arc::new(OpenLimiter),
        queue.clone(),
        queue.clone(),
        clock,
        SyncSettings::default(),
    );
    Harness {
        inbound,
        outbound,
        state,
        journal,
        app_inbox,
        retries: queue,
        crm,
    }
}

/// Syncs `user-1` (email, deal-less) to the CRM; returns its CRM id.
async fn synced(h: &Harness) -> String {
    let change = SyncMessage {
        message_id: "out-1".into(),
        body: json!({"version": 1, "type": "contact.upsert", "record_id": "user-1", "idempotency_id": "c-1",
                     "changed_at": NOW - 60_000, "data": {"email": "ada@example.com"}})
        .to_string(),
        attributes: HashMap::new(),
    };
    assert_eq!(h.outbound.process(vec![change], deadline()).await.applied, 1);
    let (state, _) = h.state.record(&user(), 1).await.unwrap().unwrap();
    state.crm_id.expect("synced")
}

fn user() -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: "user-1".into(),
    }
}

/// An inbound-queue message of one HubSpot property change.
fn change(key: &str, crm_id: &str, at_ms: i64, property: &str, value: &str, source: &str) -> SyncMessage {
    let event = json!({"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": at_ms,
                       "subscriptionType": "contact.propertyChange", "objectId": crm_id,
                       "propertyName": property, "propertyValue": value, "changeSource": source});
    SyncMessage {
        message_id: key.into(),
        body: json!({"version": 1, "provider": "hubspot", "event_key": key, "delivery_id": "d-1",
                     "received_at_ms": NOW, "kind": "contact.propertyChange", "object_type": "contact",
                     "object_id": crm_id, "occurred_at_ms": at_ms, "event": event})
        .to_string(),
        attributes: HashMap::new(),
    }
}

fn inbox(h: &Harness) -> Vec<Value> {
    h.app_inbox
        .take()
        .into_iter()
        .map(|message| serde_json::from_str(&message.body).expect("JSON"))
        .collect()
}

#[tokio::test]
async fn a_reps_change_of_a_crm_owned_field_reaches_the_app_inbox_once() {
    let h = harness();
    let crm_id = synced(&h).await;
    let event = change(
        "e-1",
        &crm_id,
        NOW - 1_000,
        "lifecyclestage",
        "customer",
        "CRM_UI",
    );

    h.inbound.process(vec![event.clone()], deadline()).await;
    h.inbound.process(vec![event], deadline()).await;

    let messages = inbox(&h);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["record_id"], "user-1");
    assert_eq!(messages[0]["changes"]["lifecycle_stage"], "customer");
    assert_eq!(
        h.journal.outcome("hubspot", "e-1").unwrap().0,
        EventOutcome::Applied
    );
}

#[tokio::test]
async fn two_copies_of_an_event_processed_at_once_reach_the_app_once_and_record_one_outcome() {
    let h = harness();
    let crm_id = synced(&h).await;
    h.retries.take();
    let event = change("e-9", &crm_id, NOW - 1_000, "lifecyclestage", "lead", "CRM_UI");
    let copy = SyncMessage {
        message_id: "e-9-copy".into(),
        ..event.clone()
    };

    // A CRM's retry enqueued the event twice, and two batches hold one copy each.
    futures::future::join(
        h.inbound.process(vec![event], deadline()),
        h.inbound.process(vec![copy], deadline()),
    )
    .await;
    // A copy that found the record busy comes back later, as SQS redelivers it.
    let retried: Vec<SyncMessage> = h
        .retries
        .take()
        .into_iter()
        .map(|message| SyncMessage {
            message_id: format!("{}-again", message.id),
            body: message.body,
            attributes: HashMap::new(),
        })
        .collect();
    h.inbound.process(retried, deadline()).await;

    let messages = inbox(&h);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["changes"]["lifecycle_stage"], "lead");
    assert_eq!(
        h.journal.outcome("hubspot", "e-9").unwrap().0,
        EventOutcome::Applied
    );
}

#[tokio::test]
async fn a_copy_of_a_reps_conflicting_edit_that_misses_the_first_copys_outcome_is_no_second_conflict() {
    let h = harness();
    let crm_id = synced(&h).await;
    let event = change("e-7", &crm_id, NOW - 1_000, "email", "typo@example.com", "CRM_UI");
    let copy = SyncMessage {
        message_id: "e-7-copy".into(),
        ..event.clone()
    };

    h.inbound.process(vec![event], deadline()).await;
    // The copy's batch reads the journal before the first copy's outcome shows there.
    h.journal.forget("hubspot", "e-7");
    h.inbound.process(vec![copy], deadline()).await;

    let (state, _) = h.state.record(&user(), 10).await.unwrap().unwrap();
    assert_eq!(state.conflicts, 1, "one person's edit, one conflict");
    let (outcome, detail) = h.journal.outcome("hubspot", "e-7").unwrap();
    assert_eq!(outcome, EventOutcome::Ignored);
    assert!(detail.contains("copy"), "{detail}");
}

#[tokio::test]
async fn the_same_event_twice_in_one_batch_reaches_the_app_once() {
    let h = harness();
    let crm_id = synced(&h).await;
    let event = change(
        "e-8",
        &crm_id,
        NOW - 1_000,
        "lifecyclestage",
        "customer",
        "CRM_UI",
    );
    let copy = SyncMessage {
        message_id: "e-8-copy".into(),
        ..event.clone()
    };

    h.inbound.process(vec![event, copy], deadline()).await;
    let retried = h.retries.take();

    assert_eq!(inbox(&h).len(), 1);
    assert!(retried.is_empty(), "neither copy is left for later: {retried:?}");
}

#[tokio::test]
async fn a_reps_change_of_an_app_owned_field_is_journaled_as_a_conflict_not_applied() {
    let h = harness();
    let crm_id = synced(&h).await;

    h.inbound
        .process(
            vec![change(
                "e-2",
                &crm_id,
                NOW - 1_000,
                "email",
                "typo@example.com",
                "CRM_UI",
            )],
            deadline(),
        )
        .await;

    assert!(inbox(&h).is_empty(), "the app owns the email");
    assert_eq!(
        h.journal.outcome("hubspot", "e-2").unwrap().0,
        EventOutcome::Conflict
    );
    let conflicts = h.state.conflicts(&user(), 10).await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].crm_value, "typo@example.com");
    assert_eq!(conflicts[0].app_value.as_deref(), Some("ada@example.com"));
}

#[tokio::test]
async fn the_late_echo_of_an_earlier_write_is_recognised_and_no_conflict() {
    let h = harness();
    let crm_id = synced(&h).await;
    // A second write replaces the first before the first one's webhook arrives.
    let second = SyncMessage {
        message_id: "out-2".into(),
        body: json!({"version": 1, "type": "contact.upsert", "record_id": "user-1", "idempotency_id": "c-2",
                     "changed_at": NOW - 30_000, "data": {"email": "ada@lovelace.example"}})
        .to_string(),
        attributes: HashMap::new(),
    };
    assert_eq!(h.outbound.process(vec![second], deadline()).await.applied, 1);

    h.inbound
        .process(
            vec![change(
                "e-3",
                &crm_id,
                NOW - 59_000,
                "email",
                "ada@example.com",
                "INTEGRATION",
            )],
            deadline(),
        )
        .await;

    assert_eq!(h.journal.outcome("hubspot", "e-3").unwrap().0, EventOutcome::Echo);
    assert!(h.state.conflicts(&user(), 10).await.unwrap().is_empty());
    assert!(inbox(&h).is_empty());
}

#[tokio::test]
async fn an_older_crm_change_arriving_after_a_newer_one_never_overrides_it() {
    let h = harness();
    let crm_id = synced(&h).await;

    h.inbound
        .process(
            vec![change(
                "e-new",
                &crm_id,
                NOW - 1_000,
                "lifecyclestage",
                "customer",
                "CRM_UI",
            )],
            deadline(),
        )
        .await;
    h.inbound
        .process(
            vec![change(
                "e-old",
                &crm_id,
                NOW - 5_000,
                "lifecyclestage",
                "lead",
                "CRM_UI",
            )],
            deadline(),
        )
        .await;

    let messages = inbox(&h);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["changes"]["lifecycle_stage"], "customer");
    assert_eq!(
        h.journal.outcome("hubspot", "e-old").unwrap().0,
        EventOutcome::Ignored
    );
}

#[path = "inbound_identity_tests.rs"]
mod identity;
