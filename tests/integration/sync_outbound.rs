//! App -> CRM through the local stack: changes on the outbound queue, the sync handler fed by the
//! local event source mapping, state in DynamoDB (moto), HubSpot played by the sandbox over HTTP.

use std::collections::HashSet;

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::{RecordFilter, SyncStatus, Tally, TimelineKind};
use crm_sync::ports::state::*;
use crm_sync::ports::ListError;
use crm_sync_tests::app_changes::{activity, contact, contact_delete, deal};
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use hubspot_sandbox::Faults;
use serde_json::json;

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.to_string(),
    }
}

/// Waits until the record has `status`, and returns its state and timeline.
async fn settled(
    app: &TestApp,
    record: RecordRef,
    status: SyncStatus,
) -> (
    crm_sync::domain::sync::RecordState,
    Vec<crm_sync::domain::sync::TimelineEntry>,
) {
    app.settled(record, status).await
}

/// Waits for `count` dead letters on the outbound DLQ and takes them off it.
async fn dead_letters(
    app: &TestApp,
    count: usize,
) -> Vec<(serde_json::Value, std::collections::HashMap<String, String>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut letters = Vec::new();
    while letters.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {count} dead letters: {letters:?}"
        );
        letters.extend(app.drain_dead_letters("OutboundDeadLetterQueue").await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    letters
}

async fn contact_in_crm(app: &TestApp, record_id: &str) -> hubspot_sandbox::Record {
    eventually(30, &format!("contact {record_id} in the sandbox"), || async {
        app.sandbox().find("contacts", "crm_sync_app_id", record_id)
    })
    .await
}

#[tokio::test]
async fn a_contact_upsert_creates_the_contact_with_app_owned_fields_only() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[contact(
        "user-1",
        at,
        json!({"email": "ada@example.com", "first_name": "Ada", "lifecycle_stage": "customer"}),
    )])
    .await;

    let record = contact_in_crm(&app, "user-1").await;
    assert_eq!(record.properties["email"], "ada@example.com");
    assert_eq!(record.properties["firstname"], "Ada");
    assert!(
        !record.properties.contains_key("lifecyclestage"),
        "the CRM owns the lifecycle stage"
    );

    let (state, timeline) = settled(&app, contact_ref("user-1"), SyncStatus::Synced).await;
    assert_eq!(state.crm_id, Some(record.id.to_string()));
    assert_eq!(state.applied_version_ms, Some(at));
    assert_eq!(
        state.written.get("email").map(String::as_str),
        Some("ada@example.com")
    );
    assert!(state.last_synced_at_ms.is_some());
    assert_eq!(timeline[0].kind, TimelineKind::Synced);
    assert!(timeline[0]
        .detail
        .contains("not written, owned by the CRM: lifecycle_stage"));
}

#[tokio::test]
async fn a_later_change_updates_the_same_contact_and_a_delete_archives_it() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[contact("user-2", at, json!({"email": "bo@example.com"}))])
        .await;
    let first = contact_in_crm(&app, "user-2").await;
    settled(&app, contact_ref("user-2"), SyncStatus::Synced).await;

    app.send_changes(&[contact(
        "user-2",
        at + 1000,
        json!({"email": "bo@new.example.com"}),
    )])
    .await;
    eventually(30, "the new email", || async {
        app.sandbox()
            .find("contacts", "crm_sync_app_id", "user-2")
            .filter(|r| r.properties["email"] == "bo@new.example.com")
    })
    .await;
    assert_eq!(
        app.sandbox().records("contacts").len(),
        1,
        "updated in place, not duplicated"
    );

    app.send_changes(&[contact_delete("user-2", at + 2000)]).await;
    let (state, _) = settled(&app, contact_ref("user-2"), SyncStatus::Deleted).await;
    assert_eq!(state.crm_id, Some(first.id.to_string()));
    assert!(app.sandbox().records("contacts").is_empty());
    assert!(app.sandbox().all_records("contacts")[0].archived);
}

#[tokio::test]
async fn a_deal_and_an_activity_are_created_and_associated_with_their_contact() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        contact("user-3", at, json!({"email": "cy@example.com"})),
        deal(
            "deal-3",
            "user-3",
            at,
            json!({"name": "Pro plan", "amount": 1200, "stage": "closedwon"}),
        ),
        activity("note-3", "user-3", at, "Upgraded to Pro"),
    ])
    .await;

    let contact = contact_in_crm(&app, "user-3").await;
    let deal_state = settled(
        &app,
        RecordRef {
            object: ObjectKind::Deal,
            record_id: "deal-3".into(),
        },
        SyncStatus::Synced,
    )
    .await
    .0;
    let note_state = settled(
        &app,
        RecordRef {
            object: ObjectKind::Activity,
            record_id: "note-3".into(),
        },
        SyncStatus::Synced,
    )
    .await
    .0;
    let deal = app.sandbox().find("deals", "crm_sync_app_id", "deal-3").unwrap();
    assert_eq!(deal.properties["dealname"], "Pro plan");
    assert_eq!(deal.properties["amount"], "1200");
    assert!(
        !deal.properties.contains_key("dealstage"),
        "the CRM owns the deal stage"
    );
    assert_eq!(deal_state.crm_id, Some(deal.id.to_string()));
    assert!(app
        .sandbox()
        .associations("deals", deal.id)
        .contains(&("contacts".to_string(), contact.id)));
    let note = app.sandbox().find("notes", "crm_sync_app_id", "note-3").unwrap();
    assert_eq!(note.properties["hs_note_body"], "Upgraded to Pro");
    assert_eq!(note.properties["hs_timestamp"], "1795773600000");
    assert_eq!(note_state.crm_id, Some(note.id.to_string()));
    assert!(app
        .sandbox()
        .associations("notes", note.id)
        .contains(&("contacts".to_string(), contact.id)));
}

#[tokio::test]
async fn a_burst_of_500_changes_goes_out_in_full_batches_of_100() {
    let mut app = spawn_app_with(AppOptions {
        event_sources: false,
        ..AppOptions::syncing()
    })
    .await;
    let at = now_ms();
    let changes: Vec<_> = (0..500)
        .map(|i| {
            contact(
                &format!("burst-{i}"),
                at,
                json!({"email": format!("burst{i}@example.com")}),
            )
        })
        .collect();
    app.send_changes(&changes).await;
    // The backlog is there before the event source polls, as after an outage or a bulk import.
    app.stack.start_event_sources();

    eventually(180, "500 contacts in the sandbox", || async {
        (app.sandbox().records("contacts").len() == 500).then_some(())
    })
    .await;
    let stats = app.sandbox().stats();
    let calls = stats.calls["POST /crm/objects/2026-03/contacts/batch/upsert"];
    // Two concurrent pollers split the backlog into a few batches, each ending in one part-filled
    // call: 500 records fit in 5 full calls, and this allows three part-filled ones.
    assert!(calls <= 8, "500 records took {calls} calls");
    assert_eq!(stats.batch_inputs, 500);
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn the_same_change_delivered_three_times_is_applied_once() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let change = contact("user-4", now_ms(), json!({"email": "dee@example.com"}));
    app.send_changes(&[change.clone(), change.clone()]).await;
    settled(&app, contact_ref("user-4"), SyncStatus::Synced).await;
    app.send_changes(&[change]).await;
    app.queue_settled("OutboundQueue").await;

    assert_eq!(app.sandbox().records("contacts").len(), 1);
    let (state, timeline) = app
        .sync_state()
        .record(&contact_ref("user-4"), 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, SyncStatus::Synced);
    let synced = timeline.iter().filter(|e| e.kind == TimelineKind::Synced).count();
    assert_eq!(synced, 1, "{timeline:?}");
    assert_eq!(timeline.len(), 1, "duplicates leave no trace: {timeline:?}");
    assert_eq!(
        app.sandbox().stats().batch_inputs,
        1,
        "the CRM saw the change once"
    );
}

#[tokio::test]
async fn within_one_batch_only_the_newest_change_of_a_record_is_written() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        contact("user-6", at + 2, json!({"email": "third@example.com"})),
        contact("user-6", at, json!({"email": "first@example.com"})),
        contact("user-6", at + 1, json!({"email": "second@example.com"})),
    ])
    .await;
    let (state, _) = settled(&app, contact_ref("user-6"), SyncStatus::Synced).await;
    assert_eq!(state.applied_version_ms, Some(at + 2));
    let record = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "user-6")
        .unwrap();
    assert_eq!(record.properties["email"], "third@example.com");
}

#[tokio::test]
async fn a_partial_failure_syncs_the_rest_and_dead_letters_the_bad_record_with_the_crms_reason() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        contact("ok-1", at, json!({"email": "ok1@example.com"})),
        contact("bad-1", at, json!({"email": "not-an-email"})),
        contact("ok-2", at, json!({"email": "ok2@example.com"})),
    ])
    .await;

    let (failed, timeline) = settled(&app, contact_ref("bad-1"), SyncStatus::Failed).await;
    settled(&app, contact_ref("ok-1"), SyncStatus::Synced).await;
    settled(&app, contact_ref("ok-2"), SyncStatus::Synced).await;
    let error = failed.last_error.unwrap();
    assert!(
        error.starts_with("INVALID_EMAIL: Property values were not valid"),
        "{error}"
    );
    assert_eq!(timeline[0].kind, TimelineKind::Failed);
    assert!(timeline[0].call.as_deref().unwrap().ends_with("-> 207"));
    let letters = dead_letters(&app, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0["record_id"], "bad-1");
    assert_eq!(letters[0].1["crm_sync_error"], error);
    assert_eq!(
        app.sandbox().stats().calls["POST /crm/objects/2026-03/contacts/batch/upsert"],
        1
    );
}

#[tokio::test]
async fn an_invalid_message_is_dead_lettered_with_its_reason_and_never_fails_its_batch() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        json!({"version": 1, "type": "contact.merge", "record_id": "x"}),
        contact("user-7", at, json!({"email": "eve@example.com", "shoe_size": 44})),
        contact("user-8", at, json!({"email": "fay@example.com"})),
    ])
    .await;

    settled(&app, contact_ref("user-8"), SyncStatus::Synced).await;
    let letters = dead_letters(&app, 2).await;
    let mut reasons: Vec<_> = letters
        .iter()
        .map(|(_, attrs)| attrs["crm_sync_error"].clone())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "invalid message: `data.shoe_size` is not a mapped contact field (shared/config/mapping.toml)".to_string(),
            "invalid message: type `contact.merge` is not one of contact.upsert, contact.delete, contact.erase, deal.upsert, deal.delete, activity.log".to_string(),
        ]
    );
    assert!(app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "user-7")
        .is_none());
}

#[tokio::test]
async fn a_429_storm_slows_the_sync_down_but_dead_letters_nothing() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    app.sandbox().set_faults(Faults {
        throttle_next: 12,
        ..Faults::default()
    });
    let at = now_ms();
    let changes: Vec<_> = (0..150)
        .map(|i| {
            contact(
                &format!("storm-{i}"),
                at,
                json!({"email": format!("storm{i}@example.com")}),
            )
        })
        .collect();
    app.send_changes(&changes).await;

    eventually(180, "150 contacts despite the storm", || async {
        (app.sandbox().records("contacts").len() == 150).then_some(())
    })
    .await;
    assert_eq!(app.sandbox().stats().throttled_burst, 12);
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn a_change_that_keeps_failing_transiently_is_dead_lettered_after_the_configured_attempts() {
    let app = spawn_app_with(AppOptions::syncing().with_env("SYNC_MAX_ATTEMPTS", "2")).await;
    app.sandbox().set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        ..Faults::default()
    });
    app.send_changes(&[contact("user-9", now_ms(), json!({"email": "gus@example.com"}))])
        .await;

    let (state, timeline) = settled(&app, contact_ref("user-9"), SyncStatus::Failed).await;
    let error = state.last_error.unwrap();
    assert!(error.starts_with("gave up after 2 attempts"), "{error}");
    assert!(timeline.iter().any(|e| e.kind == TimelineKind::Retrying));
    let letters = dead_letters(&app, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1["crm_sync_error"], error);
}

#[tokio::test]
async fn a_dead_letter_redriven_after_the_fix_syncs_once() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    // An admin removed the phone property: every contact with a phone is refused.
    app.sandbox().remove_property("contacts", "phone");
    let change = contact(
        "user-10",
        now_ms(),
        json!({"email": "hal@example.com", "phone": "+1 555 0100"}),
    );
    app.send_changes(&[change]).await;
    let (failed, _) = settled(&app, contact_ref("user-10"), SyncStatus::Failed).await;
    assert!(failed.last_error.unwrap().starts_with("PROPERTY_DOESNT_EXIST"));
    let dlq = app.stack.resources.queue("OutboundDeadLetterQueue").url.clone();
    eventually(30, "the dead letter", || async {
        let attributes = app
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok()?;
        let count = attributes
            .attributes()?
            .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)?
            .clone();
        (count == "1").then_some(())
    })
    .await;

    app.sandbox().add_property("contacts", "phone");
    assert_eq!(app.redrive("OutboundDeadLetterQueue", "OutboundQueue").await, 1);
    assert_eq!(
        app.redrive("OutboundDeadLetterQueue", "OutboundQueue").await,
        0,
        "a second redrive moves nothing"
    );

    let (state, _) = settled(&app, contact_ref("user-10"), SyncStatus::Synced).await;
    let records = app.sandbox().records("contacts");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].properties["phone"], "+1 555 0100");
    assert_eq!(state.crm_id, Some(records[0].id.to_string()));
    assert_eq!(state.attempts, 0);
    assert!(state.last_error.is_none());
}

#[tokio::test]
async fn a_contact_whose_email_already_exists_in_the_crm_is_adopted_not_duplicated() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let existing = app
        .sandbox()
        .create(
            "contacts",
            [("email".to_string(), "ivy@example.com".to_string())].into(),
        )
        .unwrap();
    app.send_changes(&[contact(
        "user-11",
        now_ms(),
        json!({"email": "ivy@example.com", "first_name": "Ivy"}),
    )])
    .await;

    let (state, _) = settled(&app, contact_ref("user-11"), SyncStatus::Synced).await;
    assert_eq!(state.crm_id, Some(existing.id.to_string()));
    let records = app.sandbox().records("contacts");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].properties["crm_sync_app_id"], "user-11");
    assert_eq!(records[0].properties["firstname"], "Ivy");
}

#[tokio::test]
async fn the_daily_reserve_is_never_spent_and_waiting_changes_are_not_dead_lettered() {
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_env("HUBSPOT_DAILY_LIMIT", "6")
            .with_env("HUBSPOT_DAILY_RESERVE", "3"),
    )
    .await;
    app.sandbox().set_faults(Faults {
        daily_limit: 6,
        ..Faults::default()
    });
    let at = now_ms();
    // One change a batch: each is written, or waits, before the next is sent.
    for i in 0..5 {
        let id = format!("day-{i}");
        app.send_changes(&[contact(&id, at, json!({"email": format!("day{i}@example.com")}))])
            .await;
        if i < 3 {
            app.applied(contact_ref(&id), at).await;
        } else {
            app.timeline_says(contact_ref(&id), "CRM budget exhausted").await;
        }
    }
    app.queue_settled("OutboundQueue").await;

    let stats = app.sandbox().stats();
    assert_eq!(stats.total_calls, 3, "three calls, then the reserve: {stats:?}");
    assert_eq!(stats.throttled_daily, 0, "the CRM never had to say no");
    assert_eq!(app.sandbox().records("contacts").len(), 3);
    assert!(
        app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty(),
        "waiting is not failing"
    );
    let (waiting, timeline) = app
        .sync_state()
        .record(&contact_ref("day-4"), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.status, SyncStatus::Pending);
    assert!(
        timeline[0].detail.starts_with("CRM budget exhausted for now"),
        "{timeline:?}"
    );
}

#[tokio::test]
async fn a_bad_mapping_file_stops_the_sync_function_from_starting_and_names_the_entry() {
    let path = std::env::temp_dir().join(format!("crm-sync-bad-mapping-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[contact]\ncrm_object = \"contacts\"\nid_property = \"crm_sync_app_id\"\n[contact.fields]\nemail = { crm = \"email\", owner = \"sales\" }\n",
    )
    .unwrap();
    let result = crm_sync_local::LocalStack::start(crm_sync_local::StackOptions {
        aws_endpoint: crm_sync_tests::moto_endpoint().to_string(),
        handler_aws_endpoint: None,
        stack_name: format!("badmap-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        crm: crm_sync_local::CrmTarget::Sandbox {
            addr: "127.0.0.1:0".into(),
        },
        parameters: [("HubSpotClientSecret".to_string(), "s".to_string())].into(),
        env_overrides: [("CRM_SYNC_MAPPING_FILE".to_string(), path.display().to_string())].into(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: Default::default(),
        dashboard_password: "test-dashboard-password".to_string(),
    })
    .await;
    let error = format!("{:#}", result.err().expect("a bad mapping stops the start"));
    assert!(
        error.contains("mapping: contact.fields.email: owner `sales` must be `app` or `crm`"),
        "{error}"
    );
}

#[tokio::test]
async fn records_can_be_listed_by_status() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        contact("list-1", at, json!({"email": "l1@example.com"})),
        contact("list-2", at, json!({"email": "broken"})),
        contact("list-3", at, json!({"email": "l3@example.com"})),
    ])
    .await;
    settled(&app, contact_ref("list-2"), SyncStatus::Failed).await;
    settled(&app, contact_ref("list-3"), SyncStatus::Synced).await;
    settled(&app, contact_ref("list-1"), SyncStatus::Synced).await;

    let store = app.sync_state();
    let failed_filter = RecordFilter::Status(SyncStatus::Failed);
    let synced_filter = RecordFilter::Status(SyncStatus::Synced);
    let (failed, _) = store.list(failed_filter, 10, None).await.unwrap();
    assert_eq!(
        failed
            .iter()
            .map(|s| s.record.record_id.as_str())
            .collect::<Vec<_>>(),
        vec!["list-2"]
    );
    let (first_page, cursor) = store.list(synced_filter, 1, None).await.unwrap();
    let cursor = cursor.expect("a second page");
    let (second_page, _) = store.list(synced_filter, 1, Some(cursor.clone())).await.unwrap();
    assert!(
        matches!(
            store.list(failed_filter, 1, Some(cursor)).await,
            Err(ListError::BadCursor)
        ),
        "a cursor of one listing is refused by another"
    );
    assert!(matches!(
        store.list(synced_filter, 1, Some("not-a-cursor".into())).await,
        Err(ListError::BadCursor)
    ));
    assert_eq!(
        store.count(synced_filter, 5).await.unwrap(),
        Tally {
            count: 2,
            complete: true
        }
    );
    let ids: HashSet<_> = first_page
        .iter()
        .chain(&second_page)
        .map(|s| s.record.record_id.clone())
        .collect();
    assert_eq!(ids, HashSet::from(["list-1".to_string(), "list-3".to_string()]));
}

#[tokio::test]
async fn a_second_app_record_with_the_same_email_never_takes_over_the_first_ones_crm_record() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[contact(
        "user-a",
        at,
        json!({"email": "team@example.com", "first_name": "Ann"}),
    )])
    .await;
    let (first, _) = settled(&app, contact_ref("user-a"), SyncStatus::Synced).await;
    let crm_id = first.crm_id.clone().unwrap();

    app.send_changes(&[contact(
        "user-b",
        at + 1,
        json!({"email": "team@example.com", "first_name": "Bob"}),
    )])
    .await;

    let (second, timeline) = settled(&app, contact_ref("user-b"), SyncStatus::Failed).await;
    let error = second.last_error.clone().unwrap();
    assert!(error.starts_with("identity conflict"), "{error}");
    for part in [crm_id.as_str(), "user-a", "user-b"] {
        assert!(error.contains(part), "{part} is named in: {error}");
    }
    assert_eq!(second.crm_id, None);
    assert_eq!(timeline[0].kind, TimelineKind::Failed);
    let letters = dead_letters(&app, 1).await;
    assert_eq!(letters[0].0["record_id"], "user-b");
    assert_eq!(letters[0].1["crm_sync_error"], error);

    let records = app.sandbox().records("contacts");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].properties["crm_sync_app_id"], "user-a");
    assert_eq!(records[0].properties["firstname"], "Ann");
    let (first_after, first_timeline) = settled(&app, contact_ref("user-a"), SyncStatus::Synced).await;
    assert_eq!(first_after.crm_id, Some(crm_id));
    assert!(first_timeline
        .iter()
        .all(|entry| entry.kind != TimelineKind::Conflict));
}

#[tokio::test]
async fn a_crm_record_already_carrying_another_app_id_is_not_adopted_even_if_crm_sync_never_saw_it() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    app.sandbox()
        .create(
            "contacts",
            [
                ("email".to_string(), "kim@example.com".to_string()),
                ("crm_sync_app_id".to_string(), "legacy-9".to_string()),
            ]
            .into(),
        )
        .unwrap();
    app.send_changes(&[contact("user-k", now_ms(), json!({"email": "kim@example.com"}))])
        .await;

    let (state, _) = settled(&app, contact_ref("user-k"), SyncStatus::Failed).await;
    assert!(state.last_error.unwrap().contains("legacy-9"));
    let records = app.sandbox().records("contacts");
    assert_eq!(records[0].properties["crm_sync_app_id"], "legacy-9");
}

#[tokio::test]
async fn a_synced_contact_changing_to_an_email_another_crm_record_holds_is_an_identity_conflict_not_a_takeover(
) {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let lead = app
        .sandbox()
        .create(
            "contacts",
            [("email".to_string(), "lee@example.com".to_string())].into(),
        )
        .unwrap();
    app.send_changes(&[contact("user-l", now_ms(), json!({"email": "l@example.com"}))])
        .await;
    let (synced, _) = settled(&app, contact_ref("user-l"), SyncStatus::Synced).await;
    let own = synced.crm_id.expect("a CRM id");

    app.send_changes(&[contact(
        "user-l",
        now_ms() + 1,
        json!({"email": "lee@example.com"}),
    )])
    .await;

    let (state, _) = settled(&app, contact_ref("user-l"), SyncStatus::Failed).await;
    let error = state.last_error.unwrap();
    assert!(
        error.contains("identity conflict") && error.contains(&own) && error.contains(&lead.id.to_string()),
        "{error}"
    );
    assert_eq!(state.crm_id, Some(own), "still its own CRM record");
    let lead_now = app
        .sandbox()
        .find("contacts", "email", "lee@example.com")
        .unwrap();
    assert_eq!(lead_now.id, lead.id);
    assert!(
        !lead_now.properties.contains_key("crm_sync_app_id"),
        "the lead is not taken over"
    );
}

#[tokio::test]
async fn a_change_dated_past_the_allowed_clock_skew_is_dead_lettered_and_poisons_nothing() {
    let app = spawn_app_with(AppOptions::syncing().with_env("MAX_CLOCK_SKEW_SECONDS", "60")).await;
    let now = now_ms();
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    app.send_changes(&[
        contact("user-f", now + ten_years, json!({"first_name": "Future"})),
        contact("user-g", now + 55_000, json!({"first_name": "Within"})),
    ])
    .await;
    let letters = dead_letters(&app, 1).await;
    assert_eq!(letters[0].0["record_id"], "user-f");
    let reason = &letters[0].1["crm_sync_error"];
    assert!(
        reason.contains("ahead of crm-sync's clock, more than the 60 s allowed"),
        "{reason}"
    );
    settled(&app, contact_ref("user-g"), SyncStatus::Synced).await;

    // The real change after it is applied: nothing was recorded for the future one.
    app.send_changes(&[contact("user-f", now_ms(), json!({"first_name": "Real"}))])
        .await;
    settled(&app, contact_ref("user-f"), SyncStatus::Synced).await;
    assert_eq!(
        contact_in_crm(&app, "user-f").await.properties["firstname"],
        "Real"
    );
}

#[tokio::test]
async fn an_oversized_change_is_dead_lettered_before_any_crm_call_and_never_shows_as_synced() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let calls_before = app.sandbox().stats().calls.values().sum::<u64>();
    app.send_changes(&[
        contact("user-big", now_ms(), json!({"first_name": "x".repeat(260_000)})),
        contact("user-long", now_ms(), json!({"first_name": "x".repeat(65_537)})),
    ])
    .await;

    let letters = dead_letters(&app, 2).await;
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|(_, attrs)| attrs["crm_sync_error"].clone())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].contains("`data.first_name` is 65537 characters, more than the 65536 allowed"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("bytes, more than the 102400 allowed"),
        "{reasons:?}"
    );
    assert_eq!(app.sandbox().stats().calls.values().sum::<u64>(), calls_before);
    for id in ["user-big", "user-long"] {
        let state = app.sync_state().record(&contact_ref(id), 1).await.unwrap();
        assert!(
            state.is_none(),
            "{id}: nothing stored for a message refused whole"
        );
    }
}

#[tokio::test]
async fn a_change_that_would_overflow_its_records_state_fails_visibly_before_the_crm_is_called() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    // Each message is under every limit; together, the values written would not fit one item.
    let fields = ["first_name", "last_name", "phone", "company"];
    let mut changes = Vec::new();
    let at = now_ms();
    for (round, field) in fields.iter().enumerate() {
        changes.push(contact(
            "user-wide",
            at + round as i64,
            json!({ *field: "w".repeat(65_000) }),
        ));
    }
    for change in changes {
        app.send_changes(std::slice::from_ref(&change)).await;
        let version = change["changed_at"].as_i64().unwrap();
        let done = eventually(30, "the change settled", || async {
            let (state, _) = app
                .sync_state()
                .record(&contact_ref("user-wide"), 1)
                .await
                .unwrap()?;
            (state.applied_version_ms == Some(version) || state.status == SyncStatus::Failed).then_some(state)
        })
        .await;
        if done.status == SyncStatus::Failed {
            let error = done.last_error.unwrap();
            assert!(error.contains("sync state would take about"), "{error}");
            let letters = dead_letters(&app, 1).await;
            assert_eq!(letters[0].1["crm_sync_error"], error);
            return;
        }
    }
    panic!("four 65,000-character fields never hit the state's size budget");
}

#[tokio::test]
async fn a_record_id_of_256_four_byte_characters_syncs_as_the_schema_allows() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let wide = "\u{1F600}".repeat(256);
    let accented = "é".repeat(200);
    app.send_changes(&[
        contact(&wide, now_ms(), json!({"email": "wide@example.com"})),
        contact(&accented, now_ms(), json!({"email": "accent@example.com"})),
    ])
    .await;
    settled(&app, contact_ref(&wide), SyncStatus::Synced).await;
    settled(&app, contact_ref(&accented), SyncStatus::Synced).await;
    let synced = app
        .sync_state()
        .list(RecordFilter::Status(SyncStatus::Synced), 10, None)
        .await
        .unwrap()
        .0;
    assert_eq!(synced.len(), 2, "both are listed by status");
}

#[tokio::test]
async fn two_records_of_one_batch_naming_the_same_crm_record_never_both_take_it() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let existing = app
        .sandbox()
        .create(
            "contacts",
            [("email".to_string(), "desk@example.com".to_string())].into(),
        )
        .unwrap();
    let at = now_ms();
    app.send_changes(&[
        contact(
            "user-c",
            at,
            json!({"email": "desk@example.com", "first_name": "Cy"}),
        ),
        contact(
            "user-d",
            at,
            json!({"email": "desk@example.com", "first_name": "Di"}),
        ),
    ])
    .await;

    let states = eventually(30, "both records settled", || async {
        let store = app.sync_state();
        let mut states = Vec::new();
        for id in ["user-c", "user-d"] {
            let (state, _) = store.record(&contact_ref(id), 1).await.ok()??;
            if !matches!(state.status, SyncStatus::Synced | SyncStatus::Failed) {
                return None;
            }
            states.push(state);
        }
        Some(states)
    })
    .await;
    let synced: Vec<_> = states.iter().filter(|s| s.status == SyncStatus::Synced).collect();
    let failed: Vec<_> = states.iter().filter(|s| s.status == SyncStatus::Failed).collect();
    assert_eq!((synced.len(), failed.len()), (1, 1), "{states:?}");
    assert_eq!(synced[0].crm_id, Some(existing.id.to_string()));
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("identity conflict"));
    let records = app.sandbox().records("contacts");
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].properties["crm_sync_app_id"],
        synced[0].record.record_id
    );
}

#[tokio::test]
async fn of_concurrent_claims_on_one_crm_record_exactly_one_app_record_wins() {
    let app = spawn_app_with(AppOptions::default()).await;
    let store = app.sync_state();
    let claims = futures::future::join_all((0..10).map(|i| {
        let store = store.clone();
        async move {
            let id = format!("claimant-{i}");
            (
                id.clone(),
                store
                    .claim_crm_record(ObjectKind::Contact, "777", &id)
                    .await
                    .unwrap(),
            )
        }
    }))
    .await;

    let winners: Vec<_> = claims.iter().filter(|(_, other)| other.is_none()).collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let winner = &winners[0].0;
    for (_, other) in claims.iter().filter(|(_, other)| other.is_some()) {
        assert_eq!(other.as_deref(), Some(winner.as_str()));
    }
    assert_eq!(
        store
            .claim_crm_record(ObjectKind::Contact, "777", winner)
            .await
            .unwrap(),
        None,
        "the winner's claim holds again"
    );
}

#[tokio::test]
async fn a_change_the_records_stored_state_cannot_take_is_dead_lettered_with_the_reason() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let app = spawn_app_with(AppOptions::syncing()).await;
    // A state that holds 320 KB of values already (written before the limits existed).
    let big = AttributeValue::S("w".repeat(320 * 1024));
    app.dynamodb
        .put_item()
        .table_name(app.stack.resources.table("SyncStateTable"))
        .item("pk", AttributeValue::S("REC#contact#user-full".into()))
        .item("sk", AttributeValue::S("~state".into()))
        .item("object", AttributeValue::S("contact".into()))
        .item("record_id", AttributeValue::S("user-full".into()))
        .item("status", AttributeValue::S("synced".into()))
        .item(
            "written",
            AttributeValue::M([("company".to_string(), big)].into()),
        )
        .send()
        .await
        .unwrap();
    let calls_before = app.sandbox().stats().calls.values().sum::<u64>();

    app.send_changes(&[contact(
        "user-full",
        now_ms(),
        json!({"first_name": "é".repeat(45_000)}),
    )])
    .await;

    let letters = dead_letters(&app, 1).await;
    let reason = &letters[0].1["crm_sync_error"];
    assert!(
        reason.contains("would exceed DynamoDB's 400 KB item limit"),
        "{reason}"
    );
    assert_eq!(app.sandbox().stats().calls.values().sum::<u64>(), calls_before);
    let (state, timeline) = app
        .sync_state()
        .record(&contact_ref("user-full"), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.status,
        SyncStatus::Synced,
        "the state still says what the CRM holds"
    );
    assert!(state.pending_change.is_none());
    assert_eq!(timeline[0].kind, TimelineKind::Failed);
}

#[tokio::test]
async fn a_newer_change_whose_attempt_outlived_its_lease_is_decided_again_not_lost() {
    // A lease shorter than one CRM call: the attempt at the newer change is overtaken by an
    // attempt at an older one, whose write lands last.
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_env("SYNC_LEASE_SECONDS", "1")
            .with_env("SYNC_CRM_TIMEOUT_SECONDS", "10"),
    )
    .await;
    let at = now_ms() - 60_000;
    app.send_changes(&[contact("user-z", at, json!({"first_name": "v1"}))])
        .await;
    app.applied(contact_ref("user-z"), at).await;
    app.sandbox().set_faults(Faults {
        latency_ms: 3_000,
        ..app.sandbox().faults()
    });

    app.send_changes(&[contact("user-z", at + 3, json!({"first_name": "v3"}))])
        .await;
    eventually(30, "the attempt at v3 holds the record", || async {
        let (state, _) = app.sync_state().record(&contact_ref("user-z"), 1).await.ok()??;
        state
            .pending_change
            .filter(|body| body.contains("\"v3\""))
            .map(|_| ())
    })
    .await;
    // The older change: busy at first, then claimed once v3's lease has run out.
    app.send_changes(&[contact("user-z", at + 2, json!({"first_name": "v2"}))])
        .await;

    app.applied(contact_ref("user-z"), at + 3).await;
    app.sandbox().set_faults(Faults {
        latency_ms: 0,
        ..app.sandbox().faults()
    });
    let record = eventually(60, "the CRM holds v3", || async {
        app.sandbox()
            .find("contacts", "crm_sync_app_id", "user-z")
            .filter(|record| record.properties["firstname"] == "v3")
    })
    .await;
    assert_eq!(record.properties["firstname"], "v3");
}

/// After which step a test stops the sync function mid-flight.
#[derive(Debug, Clone, Copy)]
enum CrashAfter {
    /// The record is claimed; the CRM call has not answered.
    Claim,
    /// The CRM holds the change; its outcome is not recorded.
    CrmWrite,
    /// The outcome is recorded; the timeline is not written.
    Settle,
}

/// One outbound message as Lambda hands it over.
fn sqs_event(message_id: &str, body: &serde_json::Value) -> aws_lambda_events::sqs::SqsEvent {
    let mut message = aws_lambda_events::sqs::SqsMessage::default();
    message.message_id = Some(message_id.to_string());
    message.body = Some(body.to_string());
    let mut event = aws_lambda_events::sqs::SqsEvent::default();
    event.records = vec![message];
    event
}

/// Invokes the sync function on `event` as Lambda would, with a minute to run.
async fn invoke(
    app: &TestApp,
    event: aws_lambda_events::sqs::SqsEvent,
) -> Result<aws_lambda_events::sqs::SqsBatchResponse, lambda_runtime::Error> {
    let mut context = lambda_runtime::Context::default();
    context.deadline = (now_ms() + 60_000) as u64;
    app.stack
        .sync
        .handle(lambda_runtime::LambdaEvent::new(event, context))
        .await
}

#[tokio::test]
async fn a_crash_at_any_step_of_a_sync_leaves_the_change_applied_once_after_redelivery() {
    for point in [CrashAfter::Claim, CrashAfter::CrmWrite, CrashAfter::Settle] {
        let app = spawn_app_with(AppOptions {
            fault_proxy: true,
            ..AppOptions::default().with_env("SYNC_LEASE_SECONDS", "1")
        })
        .await;
        let faults = app.faults.as_ref().unwrap();
        let record_id = format!("crash-{point:?}");
        let at = now_ms() - 1_000;
        let change = contact(
            &record_id,
            at,
            json!({"email": "crash@example.com", "first_name": "Once"}),
        );
        let event = sqs_event("m-1", &change);

        // Hold the sync function at the point, then stop it there, as a crash would.
        match point {
            CrashAfter::Claim => app.sandbox().set_faults(Faults {
                latency_ms: 60_000,
                ..app.sandbox().faults()
            }),
            // The settle is the only write conditioned on the lease alone.
            CrashAfter::CrmWrite => faults.hold("\"lease_token = :token\""),
            // The timeline's items are the only ones keyed `T#…`.
            CrashAfter::Settle => faults.hold("{\"S\":\"T#"),
        }
        let running = tokio::spawn({
            let app_sync = app.stack.sync.clone();
            let event = event.clone();
            async move {
                let mut context = lambda_runtime::Context::default();
                context.deadline = (now_ms() + 60_000) as u64;
                app_sync
                    .handle(lambda_runtime::LambdaEvent::new(event, context))
                    .await
            }
        });
        eventually(30, &format!("the sync held {point:?}"), || async {
            match point {
                CrashAfter::Claim => app
                    .sync_state()
                    .record(&contact_ref(&record_id), 1)
                    .await
                    .ok()
                    .flatten()
                    .filter(|(state, _)| state.pending_change.is_some())
                    .map(|_| ()),
                _ => (faults.held() > 0).then_some(()),
            }
        })
        .await;
        running.abort();
        let _ = running.await;
        faults.release();
        app.sandbox().set_faults(Faults {
            latency_ms: 0,
            ..app.sandbox().faults()
        });

        // The crashed batch comes back once; after that the change lives only where the sync
        // function put it: a retry on the queue. A step that dropped it would lose the change.
        let response = invoke(&app, event.clone()).await.expect("the handler answers");
        assert!(response.batch_item_failures.is_empty(), "{point:?}: {response:?}");
        let queue = app.stack.resources.queue("OutboundQueue").url.clone();
        eventually(
            60,
            &format!("the change applied after a crash {point:?}"),
            || async {
                if let Some((state, _)) = app.sync_state().record(&contact_ref(&record_id), 1).await.ok()? {
                    if state.status == SyncStatus::Synced && state.applied_version_ms == Some(at) {
                        return Some(state);
                    }
                }
                let received = app
                    .sqs
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .ok()?;
                for message in received.messages() {
                    let mut retry = aws_lambda_events::sqs::SqsMessage::default();
                    retry.message_id = message.message_id().map(str::to_string);
                    retry.body = message.body().map(str::to_string);
                    for (name, value) in message.message_attributes().into_iter().flatten() {
                        let mut attribute = aws_lambda_events::sqs::SqsMessageAttribute::default();
                        attribute.string_value = value.string_value().map(str::to_string);
                        attribute.data_type = Some("String".to_string());
                        retry.message_attributes.insert(name.clone(), attribute);
                    }
                    let mut batch = aws_lambda_events::sqs::SqsEvent::default();
                    batch.records = vec![retry];
                    invoke(&app, batch).await.expect("the handler answers");
                    app.sqs
                        .delete_message()
                        .queue_url(&queue)
                        .receipt_handle(message.receipt_handle().unwrap_or_default())
                        .send()
                        .await
                        .ok()?;
                }
                None
            },
        )
        .await;
        let in_crm: Vec<_> = app
            .sandbox()
            .records("contacts")
            .into_iter()
            .filter(|r| r.properties.get("crm_sync_app_id") == Some(&record_id))
            .collect();
        assert_eq!(in_crm.len(), 1, "{point:?}: the contact is in the CRM once");
        assert_eq!(in_crm[0].properties["firstname"], "Once", "{point:?}");
    }
}

#[tokio::test]
async fn a_deal_of_a_contact_the_app_deleted_is_written_unlinked_not_retried_forever() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms() - 10_000;
    app.send_changes(&[contact("gone-1", at, json!({"email": "gone@example.com"}))])
        .await;
    app.applied(contact_ref("gone-1"), at).await;
    app.send_changes(&[contact_delete("gone-1", at + 1)]).await;
    settled(&app, contact_ref("gone-1"), SyncStatus::Deleted).await;

    app.send_changes(&[deal("deal-gone-1", "gone-1", at + 2, json!({"name": "Orphan"}))])
        .await;

    let deal_ref = RecordRef {
        object: ObjectKind::Deal,
        record_id: "deal-gone-1".into(),
    };
    let (state, _) = settled(&app, deal_ref, SyncStatus::Synced).await;
    let crm_id: u64 = state.crm_id.unwrap().parse().unwrap();
    assert!(app.sandbox().associations("deals", crm_id).is_empty());
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn an_object_type_the_mapping_declares_is_created_updated_and_archived_by_version_2_messages() {
    // The built-in mapping declares [company] (HubSpot companies).
    let app = spawn_app_with(AppOptions::syncing()).await;
    let company = RecordRef {
        object: ObjectKind::declare("company").unwrap(),
        record_id: "acct-1".into(),
    };
    let at = now_ms();
    let upsert = |version: i64, data: serde_json::Value| {
        json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": "acct-1",
               "idempotency_id": format!("acct-1-{version}"), "changed_at": version, "data": data})
    };
    app.send_changes(&[upsert(
        at,
        json!({"name": "Analytical Engines", "domain": "engines.example.com", "industry": "COMPUTER_SOFTWARE"}),
    )])
    .await;
    let record = eventually(30, "the company in the sandbox", || async {
        app.sandbox().find("companies", "crm_sync_app_id", "acct-1")
    })
    .await;
    assert_eq!(record.properties["name"], "Analytical Engines");
    assert_eq!(record.properties["domain"], "engines.example.com");
    assert!(
        !record.properties.contains_key("industry"),
        "the CRM owns the industry"
    );
    let (state, _) = settled(&app, company.clone(), SyncStatus::Synced).await;
    assert_eq!(state.crm_id, Some(record.id.to_string()));

    app.send_changes(&[upsert(at + 1000, json!({"name": "Analytical Engines plc"}))])
        .await;
    eventually(30, "the new name", || async {
        app.sandbox()
            .find("companies", "crm_sync_app_id", "acct-1")
            .filter(|r| r.properties["name"] == "Analytical Engines plc")
    })
    .await;
    assert_eq!(app.sandbox().records("companies").len(), 1, "updated in place");

    app.send_changes(&[json!({"version": 2, "type": "object.delete", "object_type": "company",
                               "record_id": "acct-1", "idempotency_id": "acct-1-gone", "changed_at": at + 2000})])
        .await;
    settled(&app, company, SyncStatus::Deleted).await;
    assert!(app.sandbox().records("companies").is_empty());

    app.send_changes(&[json!({"version": 2, "type": "object.upsert", "object_type": "spaceship",
                               "record_id": "s-1", "idempotency_id": "s-1", "changed_at": at, "data": {"name": "x"}})])
        .await;
    let letters = dead_letters(&app, 1).await;
    assert_eq!(
        letters[0].1["crm_sync_error"],
        "invalid message: object_type `spaceship` is not an object type the mapping declares"
    );
}

#[tokio::test]
async fn in_every_crm_a_declared_company_is_written_by_the_apps_id_and_renamed_in_place() {
    use crm_sync_tests::crms::Crm;
    // Each CRM's built-in mapping declares [company].
    for (crm, crm_object) in [
        (Crm::HubSpot, "companies"),
        (Crm::Pipedrive, "organizations"),
        (Crm::Salesforce, "Account"),
    ] {
        let stack = crm.stack_with_env(&[]).await;
        let company = RecordRef {
            object: ObjectKind::declare("company").unwrap(),
            record_id: "acct-7".into(),
        };
        let at = now_ms();
        let upsert = |version: i64, name: &str| {
            json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": "acct-7",
                   "idempotency_id": format!("acct-7-{version}"), "changed_at": version, "data": {"name": name}})
        };
        stack.app.send_changes(&[upsert(at, "Analytical Engines")]).await;
        stack.app.settled(company.clone(), SyncStatus::Synced).await;
        assert_eq!(
            stack.named_records(crm_object),
            vec![("acct-7".to_string(), "Analytical Engines".to_string())],
            "{crm:?}"
        );
        stack
            .app
            .send_changes(&[upsert(at + 1000, "Analytical Engines plc")])
            .await;
        eventually(30, &format!("{crm:?}: the new name"), || async {
            let records = stack.named_records(crm_object);
            (records == vec![("acct-7".to_string(), "Analytical Engines plc".to_string())]).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn the_docs_worked_example_a_new_object_type_and_its_link_need_only_the_mapping_file() {
    use crm_sync::domain::mapping::{DEFAULT_MAPPING, SALESFORCE_MAPPING};
    use crm_sync_tests::app_changes::{association, object_upsert};
    use crm_sync_tests::crms::Crm;
    let dir = std::env::temp_dir().join(format!("crm-sync-project-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The first custom object a fresh HubSpot sandbox defines gets this id.
    const PROJECTS: &str = "2-2000001";
    for (crm, project_table) in [
        (
            Crm::HubSpot,
            format!(
                "{DEFAULT_MAPPING}\n[project]\ncrm_object = \"{PROJECTS}\"\nid_property = \"crm_sync_app_id\"\n\
                 [project.fields]\nname = {{ crm = \"project_name\", owner = \"app\" }}\n\
                 status = {{ crm = \"project_status\", owner = \"crm\" }}\n[project.links.company]\n"
            ),
        ),
        (
            Crm::Salesforce,
            format!(
                "{SALESFORCE_MAPPING}\n[project]\ncrm_object = \"Project__c\"\nid_property = \"Crm_Sync_App_Id__c\"\n\
                 [project.fields]\nname = {{ crm = \"Name\", owner = \"app\" }}\n\
                 status = {{ crm = \"Status__c\", owner = \"crm\" }}\n[project.links.company]\nfield = \"Account__c\"\n"
            ),
        ),
    ] {
        let mapping = dir.join(format!("{crm:?}.toml"));
        std::fs::write(&mapping, project_table).unwrap();
        let stack = crm
            .stack_with_env(&[("CRM_SYNC_MAPPING_FILE", mapping.to_str().unwrap())])
            .await;
        if crm == Crm::HubSpot {
            let schema = stack
                .app
                .sandbox()
                .define_object(&json!({
                    "name": "project", "labels": {"singular": "Project", "plural": "Projects"},
                    "requiredProperties": ["project_name"], "primaryDisplayProperty": "project_name",
                    "properties": [
                        {"name": "project_name", "type": "string"},
                        {"name": "project_status", "type": "string"},
                        {"name": "crm_sync_app_id", "type": "string", "hasUniqueValue": true}
                    ]
                }))
                .unwrap();
            assert_eq!(schema["objectTypeId"], PROJECTS);
        }
        let at = now_ms();
        // The link first: it waits for both records.
        stack
            .app
            .send_changes(&[association(("project", "p-7"), ("company", "account-17"), at, Some(&[]))])
            .await;
        stack
            .app
            .send_changes(&[
                object_upsert("project", "p-7", at, json!({"name": "Engine"})),
                object_upsert("company", "account-17", at, json!({"name": "Analytical Engines"})),
            ])
            .await;
        // Salesforce holds the link in the project's Account__c: one record per project.
        let link = RecordRef {
            object: ObjectKind::Link,
            record_id: match crm {
                Crm::Salesforce => "project:p-7|company".into(),
                _ => "project:p-7|company:account-17".into(),
            },
        };
        stack.app.settled(link, SyncStatus::Synced).await;
        match stack.salesforce() {
            None => {
                let sandbox = stack.app.sandbox();
                let project = sandbox.find(PROJECTS, "crm_sync_app_id", "p-7").expect("the project in HubSpot");
                assert_eq!(project.properties["project_name"], "Engine");
                let company = sandbox.find("companies", "crm_sync_app_id", "account-17").unwrap();
                assert_eq!(
                    sandbox.associations(PROJECTS, project.id),
                    vec![("companies".to_string(), company.id)]
                );
            }
            Some(sandbox) => {
                let account = sandbox
                    .records("Account")
                    .into_iter()
                    .find(|a| a["Crm_Sync_App_Id__c"] == "account-17")
                    .unwrap();
                let project = sandbox
                    .records("Project__c")
                    .into_iter()
                    .find(|p| p["Crm_Sync_App_Id__c"] == "p-7")
                    .expect("the project in Salesforce");
                assert_eq!(project["Name"], "Engine");
                assert_eq!(project["Account__c"], account["Id"]);
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
