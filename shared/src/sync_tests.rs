//! The sync use case against in-memory ports: its rules (one write per change, order, per-input
//! failures, throttles, retries) in milliseconds. The same guarantees are proven end to end
//! against moto and the sandboxes in `tests/integration/sync_outbound.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{SyncService, SyncSettings};
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::domain::crm::FailureKind;
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::domain::sync::SyncStatus;
use crate::ports::state::*;
use crate::testing::{deadline, ManualClock, MemoryCrm, MemoryQueue, MemorySyncState, OpenLimiter};
use crate::worker::{SyncMessage, ATTEMPTS_ATTRIBUTE, ERROR_ATTRIBUTE};

const NOW: i64 = 1_796_000_000_000;

struct Harness {
    service: SyncService,
    crm: Arc<MemoryCrm>,
    state: Arc<MemorySyncState>,
    retries: Arc<MemoryQueue>,
    dead_letters: Arc<MemoryQueue>,
}

fn harness() -> Harness {
    harness_with(DEFAULT_MAPPING)
}

fn harness_with(mapping: &str) -> Harness {
    let crm = Arc::new(MemoryCrm::new(100));
    let state = Arc::new(MemorySyncState::default());
    let retries = Arc::new(MemoryQueue::default());
    let dead_letters = Arc::new(MemoryQueue::default());
    let settings = SyncSettings {
        quick_retry_base: Duration::from_millis(1),
        ..SyncSettings::default()
    };
    let service = SyncService::new(
        Arc::new(Mapping::parse(mapping).expect("the shipped mapping")),
        crm.clone(),
        state.clone(),
        Arc::new(OpenLimiter),
        retries.clone(),
        dead_letters.clone(),
        Arc::new(ManualClock::at(NOW)),
        settings,
    );
    Harness {
        service,
        crm,
        state,
        retries,
        dead_letters,
    }
}

fn message(id: &str, record: &str, changed_at_ms: i64, data: serde_json::Value) -> SyncMessage {
    SyncMessage {
        message_id: id.to_string(),
        body: json!({
            "version": 1, "type": "contact.upsert", "record_id": record,
            "idempotency_id": id, "changed_at": changed_at_ms, "data": data,
        })
        .to_string(),
        attributes: HashMap::new(),
    }
}

/// A message attribute's value.
fn attribute(message: &crate::ports::OutgoingMessage, name: &str) -> Option<String> {
    message
        .attributes
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

fn contact(record: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: record.to_string(),
    }
}

#[tokio::test]
async fn a_change_is_written_once_and_the_same_message_again_writes_nothing() {
    let h = harness();
    let change = message("m-1", "user-1", NOW - 1_000, json!({"email": "a@example.com"}));

    let first = h.service.process(vec![change.clone()], deadline()).await;
    let calls = h.crm.calls();
    let again = h.service.process(vec![change], deadline()).await;

    assert_eq!((first.applied, again.applied), (1, 0), "{first:?} {again:?}");
    assert_eq!(h.crm.calls(), calls, "the duplicate made no CRM call");
    assert_eq!(
        h.crm.record("contacts", "user-1").unwrap().properties["email"],
        "a@example.com"
    );
    let (state, _) = h.state.record(&contact("user-1"), 1).await.unwrap().unwrap();
    assert_eq!(state.status, SyncStatus::Synced);
}

#[tokio::test]
async fn within_a_batch_and_across_batches_the_newest_change_wins() {
    let h = harness();
    h.service
        .process(
            vec![
                message("m-2", "user-2", NOW - 1_000, json!({"email": "new@example.com"})),
                message("m-1", "user-2", NOW - 2_000, json!({"email": "old@example.com"})),
            ],
            deadline(),
        )
        .await;
    let late = h
        .service
        .process(
            vec![message(
                "m-0",
                "user-2",
                NOW - 3_000,
                json!({"email": "older@example.com"}),
            )],
            deadline(),
        )
        .await;

    assert_eq!(late.skipped, 1, "{late:?}");
    assert_eq!(
        h.crm.record("contacts", "user-2").unwrap().properties["email"],
        "new@example.com"
    );
}

#[tokio::test]
async fn one_refused_input_is_dead_lettered_with_the_crms_reason_and_the_rest_of_its_batch_is_written() {
    let h = harness();
    h.crm
        .fail("user-bad", FailureKind::Permanent, "Email address x is invalid");

    let report = h
        .service
        .process(
            vec![
                message("m-1", "user-good", NOW, json!({"email": "g@example.com"})),
                message("m-2", "user-bad", NOW, json!({"email": "x"})),
            ],
            deadline(),
        )
        .await;

    assert_eq!((report.applied, report.dead_lettered), (1, 1), "{report:?}");
    assert!(h.crm.record("contacts", "user-good").is_some());
    let letters = h.dead_letters.take();
    assert_eq!(letters.len(), 1);
    let reason = attribute(&letters[0], ERROR_ATTRIBUTE).unwrap();
    assert!(reason.contains("Email address x is invalid"), "{reason}");
    let (state, _) = h.state.record(&contact("user-bad"), 1).await.unwrap().unwrap();
    assert_eq!(state.status, SyncStatus::Failed);
}

#[tokio::test]
async fn a_transient_failure_goes_back_on_the_queue_with_its_attempt_counted_and_then_applies() {
    let h = harness();
    h.crm.fail("user-3", FailureKind::Transient, "503 from the CRM");

    let report = h
        .service
        .process(
            vec![message("m-1", "user-3", NOW, json!({"email": "t@example.com"}))],
            deadline(),
        )
        .await;

    assert_eq!(report.retried, 1, "{report:?}");
    let retry = h.retries.take().pop().expect("re-queued");
    // The first backoff step: half the 10 s base plus jitter.
    assert!(
        (5..=10).contains(&retry.delay_secs),
        "backoff, not a hot loop: {retry:?}"
    );
    let attempts: HashMap<_, _> = retry.attributes.iter().cloned().collect();
    assert_eq!(attempts[ATTEMPTS_ATTRIBUTE], "1");

    h.crm.heal("user-3");
    let redelivered = SyncMessage {
        message_id: "m-1-retry".into(),
        body: retry.body,
        attributes: attempts,
    };
    let report = h.service.process(vec![redelivered], deadline()).await;
    assert_eq!(report.applied, 1, "{report:?}");
    assert!(h.dead_letters.take().is_empty());
}

#[tokio::test]
async fn a_throttle_that_outlasts_the_quick_retries_re_queues_without_counting_an_attempt() {
    let h = harness();
    h.crm.throttle_next(100);

    let report = h
        .service
        .process(
            vec![message("m-1", "user-4", NOW, json!({"email": "q@example.com"}))],
            deadline(),
        )
        .await;

    assert_eq!(report.applied, 0, "{report:?}");
    let retry = h.retries.take().pop().expect("re-queued");
    let attempts = attribute(&retry, ATTEMPTS_ATTRIBUTE).unwrap_or_else(|| "0".into());
    assert_eq!(attempts, "0", "a throttle is no failure: {retry:?}");
    assert!(h.dead_letters.take().is_empty(), "a throttle never dead-letters");
    assert_eq!(h.crm.count("contacts"), 0);
}

#[tokio::test]
async fn an_invalid_message_is_dead_lettered_before_any_crm_call() {
    let h = harness();
    let bad = message("m-1", "user-5", NOW, json!({"shoe_size": 44}));

    let report = h.service.process(vec![bad], deadline()).await;

    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(h.crm.calls(), 0);
    let reason = attribute(&h.dead_letters.take()[0], ERROR_ATTRIBUTE).unwrap();
    assert!(reason.contains("shoe_size"), "{reason}");
}

/// A claimed contact change at its `attempts`th try, writing an email.
fn work(attempts: u32) -> super::Work {
    let body = message("m-1", "user-9", NOW, json!({"email": "w@example.com"})).body;
    let change = crate::domain::contract::parse_change(&body).expect("a valid change");
    super::Work {
        queued: crate::domain::sync::Queued {
            message_id: "m-1".into(),
            change: change.clone(),
            attempts,
            body,
        },
        prior: crate::domain::sync::RecordState::new(change.record()),
        outbound: crate::domain::mapping::OutboundProperties {
            properties: [("email".to_string(), "w@example.com".to_string())].into(),
            crm_owned: vec!["lifecycle_stage".into()],
        },
        claimed_at_ms: NOW,
    }
}

#[test]
fn an_applied_outcome_records_the_values_written_and_names_the_fields_the_crm_owns() {
    let outcome = super::Outcome::Applied {
        crm_id: Some("7".into()),
        created: true,
        call: "POST x -> 200".into(),
        followed: None,
    };
    let (settlement, disposition, _, detail, _) =
        super::settlement(&work(0), outcome, &SyncSettings::default(), NOW, 0.5);
    assert!(matches!(disposition, crate::worker::Disposition::Done));
    assert_eq!(
        detail,
        "created CRM record 7; not written, owned by the CRM: lifecycle_stage"
    );
    match settlement {
        crate::ports::Settlement::Applied { written, status, .. } => {
            assert_eq!(written["email"], "w@example.com");
            assert_eq!(status, SyncStatus::Synced);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_names_the_crm_call_that_failed_or_why_no_call_was_made() {
    let settings = SyncSettings::default();
    let failed = super::per_input(
        Err(crate::worker::CallFailure::Transient(
            "POST /crm/objects/2026-03/contacts/batch/upsert -> 503: Service Unavailable".into(),
        )),
        1,
    )
    .pop()
    .unwrap();
    let (_, _, kind, _, call) = super::settlement(&work(0), failed, &settings, NOW, 0.5);
    assert_eq!(kind, crate::domain::sync::TimelineKind::Retrying);
    assert_eq!(
        call.as_deref(),
        Some("POST /crm/objects/2026-03/contacts/batch/upsert -> 503")
    );
    let throttled = super::Outcome::Throttled {
        until_ms: NOW + 5_000,
    };
    let (_, _, _, _, call) = super::settlement(&work(0), throttled, &settings, NOW, 0.5);
    assert!(call.unwrap().starts_with("no CRM call: the shared limiter"));
    assert_eq!(
        super::call_named("contact u-1 is not in the CRM yet: so it waits"),
        None
    );
}

#[test]
fn a_transient_failure_retries_with_backoff_until_the_last_attempt_then_dead_letters_as_retryable() {
    let settings = SyncSettings::default();
    let failed = || super::Outcome::Failed {
        kind: FailureKind::Transient,
        error: "503".into(),
        call: None,
    };
    let (_, disposition, _, _, _) = super::settlement(&work(0), failed(), &settings, NOW, 1.0);
    match disposition {
        crate::worker::Disposition::Retry { delay, attempts } => {
            assert_eq!((delay, attempts), (Duration::from_secs(10), 1));
        }
        other => panic!("{other:?}"),
    }
    let (settlement, disposition, _, detail, _) =
        super::settlement(&work(settings.max_attempts - 1), failed(), &settings, NOW, 1.0);
    assert!(matches!(
        disposition,
        crate::worker::Disposition::DeadLetter { .. }
    ));
    assert_eq!(detail, "gave up after 5 attempts: 503");
    assert!(matches!(
        settlement,
        crate::ports::Settlement::Failed {
            retryable: true,
            status: SyncStatus::Failed,
            ..
        }
    ));
}

#[test]
fn a_throttle_releases_the_record_remembering_what_the_attempt_may_have_written_and_waits_without_counting_an_attempt(
) {
    let outcome = super::Outcome::Throttled {
        until_ms: NOW + 30_000,
    };
    let (settlement, disposition, _, _, _) =
        super::settlement(&work(2), outcome, &SyncSettings::default(), NOW, 0.5);
    match settlement {
        crate::ports::Settlement::Released { recent_writes } => assert_eq!(
            recent_writes["email"],
            [crate::domain::sync::value_fingerprint("w@example.com")],
            "a throttle after a write (a deal's association) leaves the write crm-sync's own"
        ),
        other => panic!("{other:?}"),
    }
    match disposition {
        crate::worker::Disposition::Retry { delay, attempts } => {
            assert_eq!((delay, attempts), (Duration::from_secs(30), 2));
        }
        other => panic!("{other:?}"),
    }
}

fn raw(id: &str, body: serde_json::Value) -> SyncMessage {
    SyncMessage {
        message_id: id.to_string(),
        body: body.to_string(),
        attributes: HashMap::new(),
    }
}

fn company(id: &str, at: i64) -> SyncMessage {
    raw(
        &format!("{id}-{at}"),
        json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": id,
               "idempotency_id": format!("{id}-{at}"), "changed_at": at, "data": {"name": "Acme"}}),
    )
}

fn link(id: &str, contact: &str, company: &str, at: i64, labels: Option<&[&str]>) -> SyncMessage {
    let mut body = json!({"version": 2, "type": "association.upsert", "object_type": "contact",
                          "record_id": contact, "to_object_type": "company", "to_record_id": company,
                          "idempotency_id": id, "changed_at": at});
    match labels {
        Some(labels) => body["labels"] = json!(labels),
        None => body["type"] = json!("association.delete"),
    }
    raw(id, body)
}

/// A link's state and newest timeline entries.
async fn link_record(
    h: &Harness,
    contact: &str,
    company: &str,
    entries: usize,
) -> (
    crate::domain::sync::RecordState,
    Vec<crate::domain::sync::TimelineEntry>,
) {
    h.state
        .record(&link_ref(contact, company), entries)
        .await
        .unwrap()
        .expect("the link has a state")
}

/// Company `acme` and contact `user-1`, both in the CRM.
async fn acme_and_user_1(h: &Harness) {
    h.service
        .process(
            vec![
                company("acme", NOW - 9_000),
                message("c-1", "user-1", NOW - 9_000, json!({"email": "a@example.com"})),
            ],
            deadline(),
        )
        .await;
}

fn link_ref(contact: &str, company: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Link,
        record_id: format!("contact:{contact}|company:{company}"),
    }
}

/// The labels of each contact → company link in the CRM, by the app's ids.
fn links_by_app_id(h: &Harness) -> Vec<(String, String, Vec<String>)> {
    let app_id = |object: &str, crm_id: &str| h.crm.app_id_of(object, crm_id).unwrap_or_default();
    h.crm
        .links("contacts", "companies")
        .into_iter()
        .map(|((from, to), labels)| (app_id("contacts", &from), app_id("companies", &to), labels))
        .collect()
}

#[tokio::test]
async fn a_link_whose_company_is_not_in_the_crm_yet_waits_and_is_written_once_it_is() {
    let h = harness();
    h.service
        .process(
            vec![message(
                "c-1",
                "user-1",
                NOW - 5_000,
                json!({"email": "a@example.com"}),
            )],
            deadline(),
        )
        .await;
    let early = h
        .service
        .process(
            vec![link(
                "l-1",
                "user-1",
                "acme",
                NOW - 4_000,
                Some(&["Billing contact"]),
            )],
            deadline(),
        )
        .await;
    assert_eq!(early.retried, 1, "{early:?}");
    assert!(
        h.crm.links("contacts", "companies").is_empty(),
        "linked to nothing meanwhile"
    );
    let (state, _) = link_record(&h, "user-1", "acme", 5).await;
    assert_eq!(state.status, SyncStatus::Pending);
    assert!(state
        .last_error
        .unwrap()
        .contains("company/acme is not in the CRM yet"));
    let retry = h.retries.take().pop().expect("re-queued");
    assert_eq!(
        attribute(&retry, ATTEMPTS_ATTRIBUTE).as_deref().unwrap_or("0"),
        "0",
        "waiting is no failed attempt"
    );
    assert!((5..=10).contains(&retry.delay_secs), "{retry:?}");

    h.service
        .process(vec![company("acme", NOW - 3_000)], deadline())
        .await;
    let report = h
        .service
        .process(
            vec![SyncMessage {
                message_id: "l-1-retry".into(),
                body: retry.body,
                attributes: retry.attributes.into_iter().collect(),
            }],
            deadline(),
        )
        .await;
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(
        links_by_app_id(&h),
        vec![("user-1".into(), "acme".into(), vec!["Billing contact".into()])]
    );
    let (state, timeline) = link_record(&h, "user-1", "acme", 5).await;
    assert_eq!(state.status, SyncStatus::Synced);
    assert!(
        timeline[0].detail.starts_with("linked CRM records"),
        "{}",
        timeline[0].detail
    );
}

#[tokio::test]
async fn in_one_batch_both_records_are_written_before_the_link_that_joins_them() {
    let h = harness();
    let report = h
        .service
        .process(
            vec![
                link("l-1", "user-1", "acme", NOW - 1_000, Some(&[])),
                company("acme", NOW - 2_000),
                message("c-1", "user-1", NOW - 2_000, json!({"email": "a@example.com"})),
            ],
            deadline(),
        )
        .await;
    assert_eq!((report.applied, report.retried), (3, 0), "{report:?}");
    assert_eq!(
        links_by_app_id(&h),
        vec![("user-1".into(), "acme".into(), vec![])]
    );
}

#[tokio::test]
async fn a_links_labels_are_replaced_whole_an_older_change_is_skipped_and_a_delete_removes_it() {
    let h = harness();
    h.service
        .process(
            vec![
                company("acme", NOW - 9_000),
                message("c-1", "user-1", NOW - 9_000, json!({"email": "a@example.com"})),
                link(
                    "l-1",
                    "user-1",
                    "acme",
                    NOW - 8_000,
                    Some(&["Billing contact", "Decision maker"]),
                ),
            ],
            deadline(),
        )
        .await;
    h.service
        .process(
            vec![link(
                "l-2",
                "user-1",
                "acme",
                NOW - 7_000,
                Some(&["Decision maker", "Owner"]),
            )],
            deadline(),
        )
        .await;
    assert_eq!(
        links_by_app_id(&h),
        vec![(
            "user-1".into(),
            "acme".into(),
            vec!["Decision maker".into(), "Owner".into()]
        )],
        "the label the app no longer names came off"
    );
    let late = h
        .service
        .process(
            vec![link(
                "l-0",
                "user-1",
                "acme",
                NOW - 8_500,
                Some(&["Billing contact"]),
            )],
            deadline(),
        )
        .await;
    assert_eq!(late.skipped, 1, "{late:?}");
    h.service
        .process(vec![link("l-3", "user-1", "acme", NOW - 6_000, None)], deadline())
        .await;
    assert!(h.crm.links("contacts", "companies").is_empty());
    let (state, _) = link_record(&h, "user-1", "acme", 1).await;
    assert_eq!(state.status, SyncStatus::Deleted);
}

#[tokio::test]
async fn a_link_to_a_deleted_record_waits_for_it_and_removing_a_link_never_made_makes_no_crm_call() {
    let h = harness();
    acme_and_user_1(&h).await;
    h.service
        .process(
            vec![raw(
                "gone",
                json!({"version": 2, "type": "object.delete", "object_type": "company", "record_id": "acme",
                       "idempotency_id": "gone", "changed_at": NOW - 8_000}),
            )],
            deadline(),
        )
        .await;
    let calls = h.crm.calls();
    let report = h
        .service
        .process(
            vec![link("l-1", "user-1", "acme", NOW - 7_000, Some(&["Owner"]))],
            deadline(),
        )
        .await;
    assert_eq!((report.retried, h.crm.calls()), (1, calls), "{report:?}");
    let (state, _) = link_record(&h, "user-1", "acme", 1).await;
    assert_eq!(
        state.last_error.as_deref(),
        Some("company/acme is deleted, so the link waits for it to be written again")
    );

    let report = h
        .service
        .process(
            vec![link("l-9", "user-1", "other", NOW - 7_000, None)],
            deadline(),
        )
        .await;
    assert_eq!((report.applied, h.crm.calls()), (1, calls), "{report:?}");
    let (_, timeline) = link_record(&h, "user-1", "other", 1).await;
    assert_eq!(
        timeline[0].detail,
        "crm-sync has not linked these records, so there is no link to remove"
    );

    // The shipped mapping declares no link from a company to a contact.
    let backwards = raw(
        "l-2",
        json!({"version": 2, "type": "association.upsert", "object_type": "company", "record_id": "acme",
               "to_object_type": "contact", "to_record_id": "user-1", "idempotency_id": "l-2", "changed_at": NOW}),
    );
    let report = h.service.process(vec![backwards], deadline()).await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let reason = attribute(&h.dead_letters.take()[0], ERROR_ATTRIBUTE).unwrap();
    assert_eq!(
        reason,
        "invalid message: the mapping declares no link from company to contact (a [company.links.contact] table)"
    );
}

#[tokio::test]
async fn a_link_still_waiting_a_day_after_it_was_made_is_dead_lettered_retryable_with_its_reason() {
    let h = harness();
    let day_ms = 24 * 3600 * 1000;
    let young = h
        .service
        .process(
            vec![link("l-1", "user-1", "acme", NOW - day_ms + 60_000, Some(&[]))],
            deadline(),
        )
        .await;
    assert_eq!(young.retried, 1, "{young:?}");
    let retry = h.retries.take().pop().unwrap();
    assert_eq!(retry.delay_secs, 900, "an old wait retries at the backoff's cap");
    let old = h
        .service
        .process(
            vec![link("l-2", "user-1", "acme", NOW - day_ms - 1_000, Some(&[]))],
            deadline(),
        )
        .await;
    assert_eq!(old.dead_lettered, 1, "{old:?}");
    let reason = attribute(&h.dead_letters.take()[0], ERROR_ATTRIBUTE).unwrap();
    assert_eq!(
        reason,
        "gave up after waiting 86401 s for the linked records: contact/user-1 is not in the CRM yet, so the link waits"
    );
    let (state, _) = link_record(&h, "user-1", "acme", 1).await;
    assert!(state.retryable && state.status == SyncStatus::Failed, "{state:?}");
}

#[tokio::test]
async fn a_link_held_in_one_field_is_one_record_so_the_newest_change_wins_whatever_arrives_last() {
    let h = harness_with(crate::domain::mapping::PIPEDRIVE_MAPPING);
    h.service
        .process(
            vec![
                company("acme", NOW - 9_000),
                company("globex", NOW - 9_000),
                message("c-1", "user-1", NOW - 9_000, json!({"email": "a@example.com"})),
                link("l-2", "user-1", "globex", NOW - 5_000, Some(&[])),
            ],
            deadline(),
        )
        .await;
    let late = h
        .service
        .process(
            vec![link("l-1", "user-1", "acme", NOW - 6_000, Some(&[]))],
            deadline(),
        )
        .await;
    assert_eq!(
        late.skipped, 1,
        "the older link does not take the field: {late:?}"
    );
    let one = RecordRef {
        object: ObjectKind::Link,
        record_id: "contact:user-1|company".into(),
    };
    let (state, _) = h.state.record(&one, 1).await.unwrap().unwrap();
    assert_eq!(state.applied_idempotency_id.as_deref(), Some("l-2"));
    let linked: Vec<(String, String)> = h
        .crm
        .links("persons", "organizations")
        .into_keys()
        .map(|(from, to)| {
            (
                h.crm.app_id_of("persons", &from).unwrap_or_default(),
                h.crm.app_id_of("organizations", &to).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(linked, vec![("user-1".to_string(), "globex".to_string())]);
}

#[tokio::test]
async fn a_link_to_a_record_the_crm_merged_away_is_made_on_its_survivor() {
    let h = harness();
    acme_and_user_1(&h).await;
    let company_ref = RecordRef {
        object: ObjectKind::parse("company").unwrap(),
        record_id: "acme".into(),
    };
    let (state, _) = h.state.record(&company_ref, 1).await.unwrap().unwrap();
    let merged_away = state.crm_id.unwrap();
    // The CRM merged it into another company; the merge's event has not moved the record yet.
    h.state
        .record_merge(
            company_ref.object,
            std::slice::from_ref(&merged_away),
            "999",
            NOW - 8_000,
        )
        .await
        .unwrap();

    h.service
        .process(
            vec![link("l-1", "user-1", "acme", NOW - 7_000, Some(&[]))],
            deadline(),
        )
        .await;

    let linked: Vec<String> = h
        .crm
        .links("contacts", "companies")
        .into_keys()
        .map(|(_, to)| to)
        .collect();
    assert_eq!(linked, vec!["999".to_string()], "not {merged_away}");
}
