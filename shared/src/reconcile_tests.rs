//! The reconciliation against in-memory ports: drift healed or flagged as each field says,
//! retryable failures re-enqueued on the low lane, in milliseconds. The same is proven against
//! moto and the sandboxes in `tests/integration/reconcile.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{MergeMark, Phase, ReconcileService, ReconcileSettings};
use crate::domain::crm::FailureKind;
use crate::domain::crm::MergeSeen;
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::ports::ReconcileStore;
use crate::sync::{SyncService, SyncSettings};
use crate::testing::{deadline, worker, ManualClock, MemoryCrm, MemoryQueue, MemorySyncState, OpenLimiter};
use crate::worker::SyncMessage;

const NOW: i64 = 1_796_000_000_000;

struct Harness {
    reconcile: ReconcileService,
    sync: SyncService,
    crm: Arc<MemoryCrm>,
    low_lane: Arc<MemoryQueue>,
    inbound: Arc<MemoryQueue>,
    state: Arc<MemorySyncState>,
}

fn harness() -> Harness {
    let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING).expect("the shipped mapping"));
    let crm = Arc::new(MemoryCrm::new(100));
    let state = Arc::new(MemorySyncState::default());
    let clock = Arc::new(ManualClock::at(NOW));
    let queue = Arc::new(MemoryQueue::default());
    let low_lane = Arc::new(MemoryQueue::default());
    let inbound = Arc::new(MemoryQueue::default());
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
    )
    .with_inbound_queue(Some(inbound.clone()));
    let sync = SyncService::new(
        mapping,
        crm.clone(),
        state.clone(),
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
        inbound,
        state,
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

/// Merges of contacts stamped one second apart, from `first` on: `c{i}` into `s{i}`.
fn merges(first: i64, count: usize) -> Vec<MergeSeen> {
    (0..count)
        .map(|i| MergeSeen {
            merged: format!("c{i}"),
            survivor: format!("s{i}"),
            at_ms: first + 1_000 * i as i64,
            by: None,
        })
        .collect()
}

/// The merged ids of the inbound events sent since the last look.
fn merged_ids(inbound: &MemoryQueue) -> Vec<String> {
    inbound
        .take()
        .iter()
        .map(|message| {
            let event = crate::domain::inbound::parse_inbound(&message.body).expect("an inbound message");
            assert_eq!(event.kind, "contacts.merged");
            event.event["merged"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_merge_backlog_stopped_by_the_budget_goes_on_after_its_last_enqueued_page_and_misses_none() {
    let h = harness();
    h.crm.keep_merges("contacts", merges(NOW - 3_600_000, 5), 2);
    h.crm.spend_budget_after_merge_pages(Some(0));

    let first = h.reconcile.scan_merges(deadline()).await.unwrap();
    assert_eq!(first.read, 2, "{first:?}");
    assert!(first.stopped.is_some(), "stopped by the budget: {first:?}");
    assert_eq!(merged_ids(&h.inbound), ["c0", "c1"]);
    let mark = h.state.merge_mark("contacts").await.unwrap();
    assert_eq!(mark.read_to_ms, None, "not read to the end");
    assert_eq!(
        mark.resume_from_ms,
        Some(NOW - 3_600_000 + 1_000),
        "after the last page enqueued"
    );

    h.crm.spend_budget_after_merge_pages(None);
    let second = h.reconcile.scan_merges(deadline()).await.unwrap();
    assert_eq!(second.stopped, None);
    assert_eq!(
        merged_ids(&h.inbound),
        ["c1", "c2", "c3", "c4"],
        "from the resume stamp, inclusive (c1 again is one event by its key)"
    );
    let mark = h.state.merge_mark("contacts").await.unwrap();
    assert_eq!(
        mark,
        MergeMark {
            read_to_ms: Some(NOW),
            resume_from_ms: None
        }
    );
}

#[tokio::test]
async fn merges_the_inbound_queue_did_not_take_are_read_again_and_a_complete_read_overlaps_the_next() {
    let h = harness();
    // One merged long ago, one a minute before this read.
    h.crm.keep_merges(
        "contacts",
        vec![
            merges(NOW - 86_400_000, 1).remove(0),
            MergeSeen {
                at_ms: NOW - 60_000,
                ..merges(0, 2).remove(1)
            },
        ],
        100,
    );
    h.inbound.fail_sends(true);
    let failed = h.reconcile.scan_merges(deadline()).await.unwrap();
    assert_eq!((failed.read, failed.errors), (0, 2));
    assert_eq!(
        h.state.merge_mark("contacts").await.unwrap(),
        MergeMark::default(),
        "nothing counted as read"
    );

    h.inbound.fail_sends(false);
    h.reconcile.scan_merges(deadline()).await.unwrap();
    assert_eq!(merged_ids(&h.inbound), ["c0", "c1"]);
    // The next read starts ten minutes before this one did: the recent merge is read again (one
    // event by its key), the old one is not.
    h.reconcile.scan_merges(deadline()).await.unwrap();
    assert_eq!(merged_ids(&h.inbound), ["c1"]);
}

#[tokio::test]
async fn a_crm_that_announces_its_merges_costs_no_call_in_the_nightly_run() {
    let h = harness();
    let report = h.reconcile.run(deadline()).await.unwrap();
    assert_eq!(report.merges_read, 0);
    assert!(h.inbound.take().is_empty());
    assert_eq!(report.api_calls, 0, "nothing synced, nothing read: {report:?}");
}
