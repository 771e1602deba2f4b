//! The reconciliation against in-memory ports: drift healed or flagged as each field says,
//! retryable failures re-enqueued on the low lane, in milliseconds. The same is proven against
//! moto and the sandboxes in `tests/integration/reconcile.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Phase, ReconcileService, ReconcileSettings};
use crate::domain::crm::FailureKind;
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::sync::{SyncService, SyncSettings};
use crate::testing::{deadline, worker, ManualClock, MemoryCrm, MemoryQueue, MemorySyncState, OpenLimiter};
use crate::worker::SyncMessage;

const NOW: i64 = 1_796_000_000_000;

struct Harness {
    reconcile: ReconcileService,
    sync: SyncService,
    crm: Arc<MemoryCrm>,
    low_lane: Arc<MemoryQueue>,
}

fn harness() -> Harness {
    let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING).expect("the shipped mapping"));
    let crm = Arc::new(MemoryCrm::new(100));
    let state = Arc::new(MemorySyncState::default());
    let clock = Arc::new(ManualClock::at(NOW));
    let queue = Arc::new(MemoryQueue::default());
    let low_lane = Arc::new(MemoryQueue::default());
    let worker = worker(clock.clone(), queue.clone(), 0, true);
    let reconcile = ReconcileService::new(
        mapping.clone(),
        crm.clone(),
        state.clone(),
        state.clone(),
        low_lane.clone(),
        worker,
        clock.clone(),
        ReconcileSettings {
            cycle_nights: 1,
            stuck_after: Duration::from_secs(60),
            stop_margin: Duration::from_millis(10),
            ..ReconcileSettings::default()
        },
    );
    let sync = SyncService::new(
        mapping,
        crm.clone(),
        state,
        Arc::new(OpenLimiter),
        queue.clone(),
        queue,
        clock,
        // One attempt, so that a transient failure ends as a retryable `failed` at once.
        SyncSettings {
            quick_retries: 0,
            max_attempts: 1,
            ..SyncSettings::default()
        },
    );
    Harness {
        reconcile,
        sync,
        crm,
        low_lane,
    }
}

fn contact(record: &str, data: serde_json::Value) -> SyncMessage {
    SyncMessage {
        message_id: format!("m-{record}"),
        body: json!({"version": 1, "type": "contact.upsert", "record_id": record,
                     "idempotency_id": format!("c-{record}"), "changed_at": NOW - 60_000, "data": data})
        .to_string(),
        attributes: HashMap::new(),
    }
}

#[tokio::test]
async fn an_app_owned_field_changed_in_the_crm_is_healed_or_flagged_as_its_rule_says() {
    let h = harness();
    let synced = h
        .sync
        .process(
            vec![
                contact("user-1", json!({"email": "a@example.com", "company": "Acme"})),
                contact("user-2", json!({"email": "b@example.com", "company": "Acme"})),
            ],
            deadline(),
        )
        .await;
    assert_eq!(synced.applied, 2);
    // Someone edits the CRM, and no webhook tells crm-sync.
    h.crm.edit("contacts", "user-1", "email", "x@elsewhere.com");
    h.crm.edit("contacts", "user-1", "company", "Other Ltd");

    let report = h.reconcile.run(deadline()).await.unwrap();

    assert_eq!(report.phase, Phase::Done);
    assert_eq!(report.checked, 2, "{report:?}");
    assert_eq!(
        (report.healed, report.flagged),
        (1, 1),
        "email heals, company flags: {report:?}"
    );
    let record = h.crm.record("contacts", "user-1").unwrap();
    assert_eq!(record.properties["email"], "a@example.com");
    assert_eq!(record.properties["company"], "Other Ltd");
}

#[tokio::test]
async fn a_retryably_failed_change_is_re_enqueued_on_the_low_lane_and_a_refused_one_is_not() {
    let h = harness();
    h.crm.fail("user-3", FailureKind::Transient, "503");
    h.crm.fail("user-4", FailureKind::Permanent, "invalid email");
    h.sync
        .process(
            vec![
                contact("user-3", json!({"email": "c@example.com"})),
                contact("user-4", json!({"email": "d@example.com"})),
            ],
            deadline(),
        )
        .await;

    let report = h.reconcile.run(deadline()).await.unwrap();

    assert_eq!(report.requeued, 1, "{report:?}");
    let requeued = h.low_lane.take();
    assert_eq!(requeued.len(), 1);
    assert!(requeued[0].body.contains("\"user-3\""), "{:?}", requeued[0]);
}
