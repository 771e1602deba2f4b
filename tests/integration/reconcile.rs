//! The nightly reconciliation through the local stack: failed changes re-enqueued in the
//! low-priority lane and synced, drift in the CRM healed or flagged per field, a run interrupted
//! by its time limit or the CRM budget resumed without checking any record twice.

use std::time::Duration;

use crm_sync::adapters::dynamodb::{DynamoDbRateLimiter, LimiterSettings};
use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::crm::ThrottlePolicy;
use crm_sync::domain::sync::{SyncStatus, TimelineKind};
use crm_sync::ports::state::*;
use crm_sync::ports::RateLimiter;
use crm_sync::reconcile::Phase;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use hubspot_sandbox::Faults;
use serde_json::json;
use tokio::time::Instant;

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.to_string(),
    }
}

async fn status_of(app: &TestApp, id: &str, status: SyncStatus) -> crm_sync::domain::sync::RecordState {
    let store = app.sync_state();
    eventually(60, &format!("{id} to be {}", status.as_str()), || {
        let store = store.clone();
        let record = contact_ref(id);
        async move {
            store
                .record(&record, 1)
                .await
                .ok()
                .flatten()
                .map(|(s, _)| s)
                .filter(|s| s.status == status)
        }
    })
    .await
}

async fn sync_contacts(app: &TestApp, ids: &[String]) {
    let at = now_ms();
    let changes: Vec<_> = ids
        .iter()
        .map(|id| {
            contact(
                id,
                at,
                json!({"email": format!("{id}@example.com"), "company": "Acme"}),
            )
        })
        .collect();
    app.send_changes(&changes).await;
    eventually(60, "every contact synced", || async {
        (app.sandbox().records("contacts").len() == ids.len()).then_some(())
    })
    .await;
    status_of(app, ids.last().unwrap(), SyncStatus::Synced).await;
}

async fn reconcile(app: &TestApp) -> crm_sync::reconcile::RunReport {
    app.reconcile().await
}

#[tokio::test]
async fn records_unchanged_since_their_sync_show_no_drift_though_the_crm_reads_dates_and_numbers_back_in_its_own_form(
) {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    let at = now_ms();
    app.send_changes(&[
        contact("buyer-1", at, json!({"email": "buyer-1@example.com"})),
        crm_sync_tests::app_changes::deal(
            "order-1",
            "buyer-1",
            at,
            json!({"name": "Annual plan", "amount": "1200.50", "close_date": "2026-12-31T00:00:00Z"}),
        ),
    ])
    .await;
    let deal = RecordRef {
        object: ObjectKind::Deal,
        record_id: "order-1".into(),
    };
    let (state, _) = app.settled(deal, SyncStatus::Synced).await;
    // What crm-sync wrote and what HubSpot reads back differ in form only.
    assert_eq!(state.written["closedate"], "1798675200000");
    assert_eq!(state.written["amount"], "1200.50");

    let report = reconcile(&app).await;

    assert_eq!(report.phase, Phase::Done);
    assert_eq!(report.checked, 2, "{report:?}");
    assert_eq!(
        (report.healed, report.flagged, report.crm_drift),
        (0, 0, 0),
        "{report:?}"
    );
    let calls = app.sandbox().stats().calls;
    assert_eq!(
        calls.get("POST /crm/objects/2026-03/deals/batch/update"),
        None,
        "nothing written back: {calls:?}"
    );
}

#[tokio::test]
async fn retryably_failed_changes_are_re_enqueued_and_then_synced_but_refused_ones_are_not() {
    let app = spawn_app_with(AppOptions::syncing().with_env("SYNC_MAX_ATTEMPTS", "1")).await;
    app.sandbox().set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    app.send_changes(&[contact("outage-1", now_ms(), json!({"email": "o1@example.com"}))])
        .await;
    let failed = status_of(&app, "outage-1", SyncStatus::Failed).await;
    assert!(failed.retryable);
    app.sandbox().set_faults(Faults::default());
    app.send_changes(&[contact("invalid-1", now_ms(), json!({"email": "not-an-email"}))])
        .await;
    let refused = status_of(&app, "invalid-1", SyncStatus::Failed).await;
    assert!(!refused.retryable);

    let report = reconcile(&app).await;

    assert_eq!(report.requeued, 1, "{report:?}");
    let synced = status_of(&app, "outage-1", SyncStatus::Synced).await;
    assert!(synced.pending_change.is_none());
    assert!(app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "outage-1")
        .is_some());
    assert_eq!(
        status_of(&app, "invalid-1", SyncStatus::Failed).await.attempts,
        1,
        "not retried"
    );
}

#[tokio::test]
async fn drift_in_the_crm_is_healed_or_flagged_as_each_field_says() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    sync_contacts(&app, &["drift-1".to_string(), "steady-1".to_string()]).await;
    let drifted = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "drift-1")
        .unwrap();
    // Someone edits the CRM and no webhook tells crm-sync (this stack has them off).
    app.sandbox()
        .edit(
            "contacts",
            drifted.id,
            [
                ("email".to_string(), "x@elsewhere.com".to_string()),
                ("company".to_string(), "Other Ltd".to_string()),
            ]
            .into(),
        )
        .unwrap();

    let report = reconcile(&app).await;

    assert_eq!(report.phase, Phase::Done);
    assert_eq!(report.checked, 2);
    assert_eq!(report.healed, 1, "email heals: {report:?}");
    assert_eq!(report.flagged, 1, "company is configured to flag: {report:?}");
    let now = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "drift-1")
        .unwrap();
    assert_eq!(now.properties["email"], "drift-1@example.com");
    assert_eq!(now.properties["company"], "Other Ltd");
    let (_, timeline) = app
        .sync_state()
        .record(&contact_ref("drift-1"), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(timeline
        .iter()
        .any(|e| e.kind == TimelineKind::Healed && e.detail.contains("email")));
    assert!(timeline
        .iter()
        .any(|e| e.kind == TimelineKind::Drift && e.detail.contains("company is \"Other Ltd\" in the CRM")));
    let reports = crm_sync::reconcile::ReconcileStore::reports(&app.sync_state(), 5)
        .await
        .unwrap();
    assert_eq!(reports[0], report, "the run report is stored for the dashboard");
}

#[tokio::test]
async fn a_run_cut_short_by_its_time_limit_resumes_and_checks_every_record_exactly_once() {
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_env("RECONCILE_CYCLE_NIGHTS", "1")
            .with_env("RECONCILE_PAGE_SIZE", "40"),
    )
    .await;
    let ids: Vec<String> = (0..230).map(|i| format!("many-{i}")).collect();
    sync_contacts(&app, &ids).await;
    let reads_before = app
        .sandbox()
        .stats()
        .calls
        .get("POST /crm/objects/2026-03/contacts/batch/read")
        .copied()
        .unwrap_or(0);
    let inputs_before = app.sandbox().stats().batch_inputs;

    let mut invocations = 0;
    let report = loop {
        invocations += 1;
        // Ten seconds are kept back for saving: this leaves time for a page or two.
        let report = app
            .stack
            .reconcile
            .run_until(Instant::now() + Duration::from_millis(10_300))
            .await
            .unwrap();
        if report.phase == Phase::Done {
            break report;
        }
        assert!(invocations < 100, "the run never finished: {report:?}");
    };

    assert!(
        report.invocations > 1,
        "the run was cut short and resumed: {report:?}"
    );
    assert_eq!(report.checked, 230);
    let stats = app.sandbox().stats();
    assert_eq!(
        stats.batch_inputs - inputs_before,
        230,
        "each record read exactly once"
    );
    assert!(stats.calls["POST /crm/objects/2026-03/contacts/batch/read"] - reads_before >= 6);
    assert_eq!(report.healed + report.flagged + report.errors, 0);
}

#[tokio::test]
async fn the_run_stops_when_the_crm_budget_says_so_and_resumes_later() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    let ids: Vec<String> = (0..120).map(|i| format!("budget-{i}")).collect();
    sync_contacts(&app, &ids).await;
    let limiter = DynamoDbRateLimiter::new(
        app.dynamodb.clone(),
        app.stack.resources.table("RateLimitTable"),
        "hubspot",
        LimiterSettings::default(),
    );
    // Longer than any wait inside an invocation (10 s): the run must stop, not wait.
    limiter
        .throttled(ThrottlePolicy::Daily, Duration::from_secs(20), now_ms())
        .await
        .unwrap();
    let reads = || {
        app.sandbox()
            .stats()
            .calls
            .get("POST /crm/objects/2026-03/contacts/batch/read")
            .copied()
            .unwrap_or(0)
    };
    let before = reads();

    let stopped = reconcile(&app).await;
    assert_eq!(stopped.phase, Phase::Drift, "{stopped:?}");
    assert!(
        stopped.stopped.as_deref().unwrap().starts_with("the CRM budget"),
        "{stopped:?}"
    );
    assert_eq!(stopped.checked, 0);
    assert_eq!(reads(), before, "not one call over the budget");

    // The CRM's budget comes back (the pause is lifted, as the pause's end would).
    app.dynamodb
        .update_item()
        .table_name(app.stack.resources.table("RateLimitTable"))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("hubspot".into()))
        .update_expression("REMOVE paused_until")
        .send()
        .await
        .unwrap();
    let resumed = reconcile(&app).await;
    assert_eq!(resumed.phase, Phase::Done);
    assert_eq!(resumed.checked, 120);
    assert_eq!(resumed.run_id, stopped.run_id, "the same run, resumed");
}

#[tokio::test]
async fn a_night_checks_its_own_segment_first_and_all_the_others_when_the_budget_allows() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "3")).await;
    let ids: Vec<String> = (0..30).map(|i| format!("slice-{i}")).collect();
    sync_contacts(&app, &ids).await;

    let report = reconcile(&app).await;

    assert_eq!(report.phase, Phase::Done);
    assert_eq!(report.segments, 3);
    assert_eq!(report.segments_checked, 3);
    assert_eq!(report.checked, 30, "every record once: {report:?}");
}

#[tokio::test]
async fn crm_owned_drift_the_app_never_received_is_delivered_to_the_app_once() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    sync_contacts(&app, &["silent-1".to_string()]).await;
    let record = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "silent-1")
        .unwrap();
    // A stage set in the CRM with no webhook: the app never received any stage.
    app.sandbox()
        .edit(
            "contacts",
            record.id,
            [("lifecyclestage".to_string(), "customer".to_string())].into(),
        )
        .unwrap();

    let first = reconcile(&app).await;
    assert_eq!(first.crm_drift, 1, "{first:?}");
    assert_eq!(first.delivered, 1, "{first:?}");
    let inbox = app.drain_app_inbox().await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["record_id"], "silent-1");
    assert_eq!(inbox[0]["changes"]["lifecycle_stage"], "customer");
    assert_eq!(inbox[0]["source"], "RECONCILIATION");
    assert_eq!(inbox[0]["sequence"], 1);

    app.stack.reconcile.restart().await.unwrap();
    let second = reconcile(&app).await;
    assert_eq!((second.crm_drift, second.delivered), (0, 0), "{second:?}");
    assert!(app.drain_app_inbox().await.is_empty(), "delivered once");
}

#[tokio::test]
async fn a_heal_skipped_because_the_record_is_busy_is_counted_with_its_reason() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    sync_contacts(&app, &["busy-1".to_string()]).await;
    let record = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "busy-1")
        .unwrap();
    app.sandbox()
        .edit(
            "contacts",
            record.id,
            [("email".to_string(), "x@elsewhere.com".to_string())].into(),
        )
        .unwrap();
    // A live change holds the record.
    let now = now_ms();
    let lease = app
        .sync_state()
        .lease(&contact_ref("busy-1"), "someone-else", now, now + 600_000)
        .await
        .unwrap();
    assert!(matches!(lease, crm_sync::ports::LeaseOutcome::Leased(_)));

    let report = reconcile(&app).await;

    assert_eq!(report.healed, 0, "{report:?}");
    assert_eq!(
        report.skipped.get("the record was busy with a live change"),
        Some(&1),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_declared_companys_drift_is_healed_and_its_crm_owned_change_delivered_as_version_2() {
    let app = spawn_app_with(AppOptions::syncing().with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    app.synced_company(
        "account-17",
        json!({"name": "Analytical Engines", "domain": "engines.example.com"}),
    )
    .await;
    let record = app
        .sandbox()
        .find("companies", "crm_sync_app_id", "account-17")
        .unwrap();
    // Edits in the CRM that no webhook reports (this stack has them off).
    app.sandbox()
        .edit(
            "companies",
            record.id,
            [
                ("name".to_string(), "Engines Ltd".to_string()),
                ("industry".to_string(), "AEROSPACE".to_string()),
            ]
            .into(),
        )
        .unwrap();

    let report = reconcile(&app).await;

    assert_eq!(
        (report.checked, report.healed, report.delivered),
        (1, 1, 1),
        "{report:?}"
    );
    let now = app
        .sandbox()
        .find("companies", "crm_sync_app_id", "account-17")
        .unwrap();
    assert_eq!(
        now.properties["name"], "Analytical Engines",
        "the app's name is back"
    );
    let inbox = app.drain_app_inbox().await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(
        (&inbox[0]["version"], &inbox[0]["object"], &inbox[0]["changes"]),
        (&json!(2), &json!("company"), &json!({"industry": "AEROSPACE"}))
    );
}
