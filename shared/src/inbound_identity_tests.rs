//! Identity events against in-memory ports: merges, restores, privacy deletions, and what the
//! outbound sync makes of them. End to end, with the sandboxes merging as people would, in
//! `tests/integration/identity.rs`.

use super::*;
use crate::domain::sync::{SyncStatus, TimelineKind};
use crate::ports::Crm;

/// Syncs a contact with `record_id` and `email`; returns its CRM id.
async fn synced_as(h: &Harness, record_id: &str, email: &str, at_ms: i64) -> String {
    let change = SyncMessage {
        message_id: format!("out-{record_id}-{at_ms}"),
        body: json!({"version": 1, "type": "contact.upsert", "record_id": record_id,
                     "idempotency_id": format!("c-{record_id}-{at_ms}"), "changed_at": at_ms,
                     "data": {"email": email}})
        .to_string(),
        attributes: HashMap::new(),
    };
    h.outbound.process(vec![change], deadline()).await;
    state_of(h, record_id).await.crm_id.expect("synced")
}

async fn state_of(h: &Harness, record_id: &str) -> crate::domain::sync::RecordState {
    let record = RecordRef {
        object: ObjectKind::Contact,
        record_id: record_id.into(),
    };
    h.state.record(&record, 1).await.unwrap().unwrap().0
}

async fn timeline_of(h: &Harness, record_id: &str) -> Vec<crate::domain::sync::TimelineEntry> {
    let record = RecordRef {
        object: ObjectKind::Contact,
        record_id: record_id.into(),
    };
    h.state.record(&record, 50).await.unwrap().unwrap().1
}

/// Syncs user-1 and user-2, then merges user-1's CRM contact into user-2's as a person would,
/// and acts on the merge's event; returns the two CRM ids (merged away, survivor).
async fn merged_pair(h: &Harness) -> (String, String) {
    let loser = synced_as(h, "user-1", "ada@example.com", NOW - 60_000).await;
    let survivor = synced_as(h, "user-2", "ada@work.example", NOW - 59_000).await;
    h.crm.merge("contacts", "user-1", "user-2");
    h.inbound
        .process(vec![merge("m-1", &survivor, &[&loser])], deadline())
        .await;
    (loser, survivor)
}

/// A CRM contact no app record is linked to (a person's entry); `key` names it in the memory CRM.
async fn crm_only(h: &Harness, key: &str) -> String {
    let written = h
        .crm
        .upsert(
            "contacts",
            "crm_sync_app_id",
            &[crate::domain::crm::UpsertInput::new(key, Default::default())],
        )
        .await
        .unwrap();
    match &written.outcomes[0] {
        crate::domain::crm::InputOutcome::Done { crm_id, .. } => crm_id.clone(),
        other => panic!("{other:?}"),
    }
}

/// A HubSpot identity event (`contact.merge`, `contact.restore`, `contact.privacyDeletion`).
fn identity(key: &str, kind: &str, crm_id: &str, extra: Value) -> SyncMessage {
    let mut event = json!({"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": NOW - 500,
                           "subscriptionType": kind, "objectId": crm_id, "changeSource": "CRM_UI"});
    for (name, value) in extra.as_object().unwrap() {
        event[name] = value.clone();
    }
    SyncMessage {
        message_id: key.into(),
        body: json!({"version": 1, "provider": "hubspot", "event_key": key, "delivery_id": "d-1",
                     "received_at_ms": NOW, "kind": kind, "object_type": "contact",
                     "object_id": crm_id, "occurred_at_ms": NOW - 500, "event": event})
        .to_string(),
        attributes: HashMap::new(),
    }
}

fn merge(key: &str, survivor: &str, merged: &[&str]) -> SyncMessage {
    identity(
        key,
        "contact.merge",
        survivor,
        json!({"primaryObjectId": survivor, "mergedObjectIds": merged}),
    )
}

/// The app's `contact.delete` or `contact.erase` of user-1.
fn without_data(message_id: &str, kind: &str, at_ms: i64) -> SyncMessage {
    SyncMessage {
        message_id: message_id.into(),
        body: json!({"version": 1, "type": kind, "record_id": "user-1",
                     "idempotency_id": message_id, "changed_at": at_ms})
        .to_string(),
        attributes: HashMap::new(),
    }
}

fn upsert(record_id: &str, at_ms: i64, data: Value) -> SyncMessage {
    SyncMessage {
        message_id: format!("up-{record_id}-{at_ms}"),
        body: json!({"version": 1, "type": "contact.upsert", "record_id": record_id,
                     "idempotency_id": format!("u-{record_id}-{at_ms}"), "changed_at": at_ms, "data": data})
        .to_string(),
        attributes: HashMap::new(),
    }
}

#[tokio::test]
async fn a_merge_moves_the_app_record_of_the_merged_away_id_to_the_survivor_and_tells_the_app_once() {
    let h = harness();
    let loser = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    // A CRM contact of no app record: a rep's own entry of the same person.
    let survivor = crm_only(&h, "rep-entry").await;
    h.crm.merge("contacts", "user-1", "rep-entry");
    let event = merge("m-1", &survivor, &[&loser]);

    h.inbound.process(vec![event.clone()], deadline()).await;
    h.inbound.process(vec![event], deadline()).await;

    let messages = inbox(&h);
    let merged: Vec<&Value> = messages.iter().filter(|m| m["type"] == "crm.merged").collect();
    assert_eq!(merged.len(), 1, "{messages:?}");
    assert_eq!(merged[0]["version"], 2);
    assert_eq!(merged[0]["crm_id"], survivor.as_str());
    assert_eq!(merged[0]["merged_crm_ids"], json!([loser]));
    assert!(merged[0]["moved_record_ids"]
        .as_array()
        .unwrap()
        .contains(&json!("user-1")));
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.crm_id.as_deref(), Some(survivor.as_str()));
    assert!(state.follow_crm_id);
    let timeline = timeline_of(&h, "user-1").await;
    assert!(
        timeline
            .iter()
            .any(|e| e.kind == TimelineKind::Identity
                && e.detail.contains(&format!("into CRM record {survivor}"))),
        "{timeline:?}"
    );
    assert_eq!(
        h.journal.outcome("hubspot", "m-1").unwrap().0,
        EventOutcome::Applied
    );
}

#[tokio::test]
async fn a_write_after_a_merge_goes_to_the_survivor_and_creates_nothing() {
    let h = harness();
    let (_, survivor) = merged_pair(&h).await;
    h.state.share_crm_record(&user(), NOW).await.unwrap();
    let before = h.crm.count("contacts");

    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Ada"}))],
            deadline(),
        )
        .await;

    assert_eq!(h.crm.count("contacts"), before, "no contact created");
    let written = h.crm.by_crm_id("contacts", &survivor).unwrap();
    assert_eq!(written.properties["firstname"], "Ada");
    // The survivor keeps the id of the app record it already was.
    assert_ne!(
        written.properties.get("crm_sync_app_id").map(String::as_str),
        Some("user-1")
    );
    assert_eq!(state_of(&h, "user-1").await.status, SyncStatus::Synced);
}

#[tokio::test]
async fn two_app_records_on_one_crm_record_are_an_identity_conflict_that_holds_the_moved_ones_writes() {
    let h = harness();
    let loser = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    let survivor = synced_as(&h, "user-2", "ada@work.example", NOW - 59_000).await;
    h.crm.merge("contacts", "user-1", "user-2");

    h.inbound
        .process(vec![merge("m-1", &survivor, &[&loser])], deadline())
        .await;

    let messages = inbox(&h);
    assert_eq!(messages[0]["identity_conflict"], true);
    assert_eq!(messages[0]["record_ids"], json!(["user-2", "user-1"]));
    let moved = state_of(&h, "user-1").await;
    let reason = moved.identity_conflict.clone().expect("an identity conflict");
    assert!(reason.contains("app record user-2 also holds"), "{reason}");
    for record_id in ["user-1", "user-2"] {
        let state = state_of(&h, record_id).await;
        assert!(state.open_conflicts, "{record_id} shows in the open conflicts");
    }
    // The moved record's write waits for a decision, in the dead-letter queue with its reason.
    let calls = h.crm.calls();
    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Ada"}))],
            deadline(),
        )
        .await;
    assert_eq!(h.crm.calls(), calls, "no CRM call for a held record");
    let held = state_of(&h, "user-1").await;
    assert_eq!(held.status, SyncStatus::Failed);
    assert!(held.last_error.unwrap().starts_with("held: identity conflict"));
    // The app merges its records and deletes the duplicate: unlinked, the CRM record stays.
    let delete = without_data("del-1", "contact.delete", NOW - 5_000);
    h.outbound.process(vec![delete], deadline()).await;
    assert!(h.crm.by_crm_id("contacts", &survivor).is_some(), "not archived");
    let deleted = state_of(&h, "user-1").await;
    assert_eq!(deleted.status, SyncStatus::Deleted);
    let timeline = timeline_of(&h, "user-1").await;
    assert!(
        timeline[0].detail.starts_with("unlinked: CRM record"),
        "{:?}",
        timeline[0]
    );
}

#[tokio::test]
async fn a_write_follows_a_chain_of_merges_recorded_before_its_record_moved() {
    let h = harness();
    let first = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    let last = crm_only(&h, "rep-last").await;
    h.crm.merge("contacts", "user-1", "rep-last");
    // A into B, then B into C, recorded while no app record was on B.
    h.state
        .record_merge(
            ObjectKind::Contact,
            std::slice::from_ref(&first),
            "intermediate",
            NOW,
        )
        .await
        .unwrap();
    h.state
        .record_merge(ObjectKind::Contact, &["intermediate".into()], &last, NOW)
        .await
        .unwrap();
    let before = h.crm.count("contacts");

    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Ada"}))],
            deadline(),
        )
        .await;

    assert_eq!(h.crm.count("contacts"), before);
    assert_eq!(
        h.crm.by_crm_id("contacts", &last).unwrap().properties["firstname"],
        "Ada"
    );
    // The write moved the record, remembering where it was.
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.crm_id.as_deref(), Some(last.as_str()));
    assert_eq!(state.previous_crm_ids, vec![first.clone()]);
    let timeline = timeline_of(&h, "user-1").await;
    assert_eq!(
        timeline[0].detail,
        format!(
            "updated CRM record {last}, into which the CRM merged CRM record {first}; the record follows \
             it from now on"
        )
    );
    // The merges' events, late, still find the record and tell the app, each once.
    h.inbound
        .process(
            vec![
                merge("m-1", "intermediate", &[&first]),
                merge("m-2", &last, &["intermediate"]),
            ],
            deadline(),
        )
        .await;
    let told = inbox(&h);
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told.iter().all(|m| m["record_ids"] == json!(["user-1"])),
        "{told:?}"
    );
    assert_eq!(
        state_of(&h, "user-1").await.crm_id.as_deref(),
        Some(last.as_str())
    );
}

#[tokio::test]
async fn a_write_that_finds_its_id_merged_into_another_app_records_crm_record_waits_for_the_merges_event() {
    let h = harness();
    let loser = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    let survivor = synced_as(&h, "user-2", "ada@work.example", NOW - 59_000).await;
    h.crm.merge("contacts", "user-1", "user-2");
    // The merge is recorded; its event has not moved user-1 yet (its record was busy).
    h.state
        .record_merge(ObjectKind::Contact, std::slice::from_ref(&loser), &survivor, NOW)
        .await
        .unwrap();

    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Other"}))],
            deadline(),
        )
        .await;

    // The survivor carries user-2's id: user-2 owns it, and nothing of user-1 is written there.
    assert!(
        !h.crm
            .by_crm_id("contacts", &survivor)
            .unwrap()
            .properties
            .values()
            .any(|value| value == "Other"),
        "nothing written over user-2's CRM record"
    );
    let state = state_of(&h, "user-1").await;
    assert_eq!(
        state.status,
        SyncStatus::Pending,
        "it waits for the merge's event"
    );
    assert!(
        state
            .last_error
            .unwrap()
            .contains("which app record user-2 is on too"),
        "the reason names the other record"
    );

    // The event comes: user-2 owns the survivor, user-1 moves and is held.
    h.inbound
        .process(vec![merge("m-1", &survivor, &[&loser])], deadline())
        .await;
    let moved = state_of(&h, "user-1").await;
    assert_eq!(moved.crm_id.as_deref(), Some(survivor.as_str()));
    assert!(moved.identity_conflict.is_some());
    assert!(state_of(&h, "user-2").await.identity_conflict.is_none());
}

#[tokio::test]
async fn a_record_gone_from_the_crm_waits_two_tries_for_a_merge_then_is_created_anew() {
    let h = harness();
    let gone = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    h.crm.delete("contacts", "user-1");
    h.retries.take();

    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Ada"}))],
            deadline(),
        )
        .await;
    let waiting = state_of(&h, "user-1").await;
    assert_eq!(waiting.status, SyncStatus::Pending);
    assert!(waiting.last_error.unwrap().contains("is gone from the CRM"));
    assert_eq!(h.crm.count("contacts"), 0, "not re-created at once");

    // No merge names it by the second try either: a person deleted it, and the app still has it.
    for (round, still_gone) in [(1, true), (2, false)] {
        let retry = h.retries.take().pop().expect("a retry");
        h.outbound
            .process(
                vec![SyncMessage {
                    message_id: format!("again-{round}"),
                    body: retry.body,
                    attributes: retry.attributes.iter().cloned().collect(),
                }],
                deadline(),
            )
            .await;
        assert_eq!(h.crm.count("contacts") == 0, still_gone, "try {round}");
    }
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.status, SyncStatus::Synced, "{:?}", state.last_error);
    assert_ne!(state.crm_id.as_deref(), Some(gone.as_str()));
    assert_eq!(h.crm.count("contacts"), 1);
}

#[tokio::test]
async fn a_restore_in_the_crm_tells_the_app_and_keeps_the_link() {
    let h = harness();
    let crm_id = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;

    h.inbound
        .process(
            vec![identity("r-1", "contact.restore", &crm_id, json!({}))],
            deadline(),
        )
        .await;

    let messages = inbox(&h);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["type"], "crm.restored");
    assert_eq!(messages[0]["record_id"], "user-1");
    assert_eq!(messages[0]["sequence"], 1);
    assert_eq!(
        state_of(&h, "user-1").await.crm_id.as_deref(),
        Some(crm_id.as_str())
    );
}

#[tokio::test]
async fn a_privacy_deletion_forgets_the_records_values_and_history_and_refuses_its_changes() {
    let h = harness();
    let crm_id = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    h.inbound
        .process(
            vec![change(
                "e-1",
                &crm_id,
                NOW - 2_000,
                "lifecyclestage",
                "lead",
                "CRM_UI",
            )],
            deadline(),
        )
        .await;
    inbox(&h);

    h.inbound
        .process(
            vec![identity("p-1", "contact.privacyDeletion", &crm_id, json!({}))],
            deadline(),
        )
        .await;

    let messages = inbox(&h);
    assert_eq!(messages[0]["type"], "crm.erased");
    assert_eq!(messages[0]["sequence"], 2);
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.status, SyncStatus::Deleted);
    assert!(state.erased_at_ms.is_some());
    assert!(state.written.is_empty() && state.received.is_empty() && state.last_change.is_none());
    let timeline = timeline_of(&h, "user-1").await;
    assert_eq!(timeline.len(), 1, "only that it happened: {timeline:?}");
    assert!(!timeline[0].detail.contains("ada@"), "{}", timeline[0].detail);
    assert!(h.state.conflicts(&user(), 10).await.unwrap().is_empty());

    // A change the app sends afterwards is refused and kept nowhere.
    let calls = h.crm.calls();
    h.retries.take();
    h.outbound
        .process(
            vec![upsert("user-1", NOW - 1_000, json!({"email": "ada@new.example"}))],
            deadline(),
        )
        .await;
    assert_eq!(h.crm.calls(), calls);
    assert!(h.retries.take().is_empty(), "not dead-lettered, not retried");
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.pending_change, None);
    assert_eq!(state.status, SyncStatus::Deleted);
    assert!(state.last_error.unwrap().contains("was erased for privacy"));
}

#[tokio::test]
async fn an_erasure_the_app_sends_erases_the_contact_in_the_crm_and_everything_crm_sync_held_of_it() {
    let h = harness();
    synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    assert_eq!(h.crm.count("contacts"), 1);
    let erase = without_data("erase-1", "contact.erase", NOW - 5_000);

    h.outbound.process(vec![erase.clone()], deadline()).await;

    assert_eq!(h.crm.count("contacts"), 0, "erased in the CRM");
    let state = state_of(&h, "user-1").await;
    assert_eq!(state.status, SyncStatus::Deleted);
    assert!(state.erased_at_ms.is_some());
    assert!(state.written.is_empty() && state.last_change.is_none() && state.pending_change.is_none());
    let timeline = timeline_of(&h, "user-1").await;
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert!(timeline[0].detail.starts_with("erased at the app's request"));

    // Sent again, and then followed by a change: nothing reaches the CRM.
    let calls = h.crm.calls();
    h.outbound
        .process(
            vec![
                SyncMessage {
                    message_id: "erase-2".into(),
                    ..erase
                },
                upsert("user-1", NOW - 1_000, json!({"email": "ada@example.com"})),
            ],
            deadline(),
        )
        .await;
    assert_eq!(h.crm.calls(), calls);
    assert_eq!(h.crm.count("contacts"), 0);
    assert_eq!(state_of(&h, "user-1").await.status, SyncStatus::Deleted);
}

#[tokio::test]
async fn an_erasure_of_a_held_record_forgets_it_and_leaves_the_crm_record_its_owner_still_holds() {
    let h = harness();
    let (_, survivor) = merged_pair(&h).await;
    assert!(state_of(&h, "user-1").await.identity_conflict.is_some());
    let erase = without_data("erase-held", "contact.erase", NOW - 1_000);

    h.outbound.process(vec![erase], deadline()).await;

    let erased = state_of(&h, "user-1").await;
    assert!(erased.erased_at_ms.is_some(), "not held: {:?}", erased.last_error);
    assert!(
        h.crm.by_crm_id("contacts", &survivor).is_some(),
        "user-2's CRM record stays"
    );
    let timeline = timeline_of(&h, "user-1").await;
    assert!(
        timeline[0].detail.contains("not erased in the CRM"),
        "{:?}",
        timeline[0]
    );
}

#[tokio::test]
async fn a_record_a_late_merge_brings_onto_a_contact_the_crm_erased_is_erased_too_and_never_written_back() {
    let h = harness();
    let loser = synced_as(&h, "user-1", "ada@example.com", NOW - 60_000).await;
    let survivor = crm_only(&h, "rep-entry").await;
    h.crm.merge("contacts", "user-1", "rep-entry");
    // The survivor is erased for privacy before the merge's event comes (none of the app's is on it).
    for _ in 0..3 {
        h.inbound
            .process(
                vec![identity("p-1", "contact.privacyDeletion", &survivor, json!({}))],
                deadline(),
            )
            .await;
    }
    h.crm.delete("contacts", "rep-entry");
    let before = h.crm.count("contacts");

    // The app's write meanwhile is not written back into the CRM.
    h.outbound
        .process(
            vec![upsert("user-1", NOW - 10_000, json!({"first_name": "Ada"}))],
            deadline(),
        )
        .await;
    assert_eq!(h.crm.count("contacts"), before, "nothing re-created");
    assert!(state_of(&h, "user-1")
        .await
        .last_error
        .unwrap()
        .contains("is gone from the CRM"));

    // The merge's event erases the record it brings there.
    h.inbound
        .process(vec![merge("m-1", &survivor, &[&loser])], deadline())
        .await;
    let state = state_of(&h, "user-1").await;
    assert!(state.erased_at_ms.is_some(), "{state:?}");
    assert!(state.written.is_empty());
    let told = inbox(&h);
    assert!(
        told.iter()
            .any(|m| m["type"] == "crm.erased" && m["record_id"] == "user-1"),
        "{told:?}"
    );
    // The write's retry is refused: the person stays erased.
    let retry = h
        .retries
        .take()
        .into_iter()
        .find(|m| m.body.contains("user-1"))
        .expect("a retry");
    h.outbound
        .process(
            vec![SyncMessage {
                message_id: "again".into(),
                body: retry.body,
                attributes: retry.attributes.iter().cloned().collect(),
            }],
            deadline(),
        )
        .await;
    assert_eq!(h.crm.count("contacts"), before, "never written back");
}
