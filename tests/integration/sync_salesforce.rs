//! App -> CRM with `CRM=salesforce`: the same local stack and sync handler, the Salesforce
//! sandbox over HTTP, records written 200 a call through sObject Collections.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync_tests::app_changes::{activity, contact, deal};
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use salesforce_sandbox::{Sandbox, INTEGRATION_USER_ID};
use serde_json::json;

/// A syncing stack whose CRM is `sandbox`.
fn syncing_to(sandbox: &Sandbox) -> AppOptions {
    AppOptions::syncing()
        .with_env("SYNC_MAX_ATTEMPTS", "1")
        .with_env("CRM", "salesforce")
        .with_env("SALESFORCE_INSTANCE_URL", &sandbox.instance_url())
        .with_env("SALESFORCE_ACCESS_TOKEN", "access-0")
        .with_env("SALESFORCE_CLIENT_ID", "connected-app")
        .with_env("SALESFORCE_CLIENT_SECRET", "client-secret")
        .with_env("SALESFORCE_REFRESH_TOKEN", "refresh-1")
        .with_env("SALESFORCE_TOKEN_URL", &sandbox.token_url())
        // The sandbox's day, as an org's edition would set it.
        .with_env("SALESFORCE_DAILY_LIMIT", "10000")
}

async fn start_sandbox() -> Sandbox {
    Sandbox::start("127.0.0.1:0", "access-0", "refresh-1", 10_000)
        .await
        .expect("the sandbox starts")
}

async fn salesforce_stack() -> (Sandbox, TestApp) {
    let sandbox = start_sandbox().await;
    let app = spawn_app_with(syncing_to(&sandbox)).await;
    (sandbox, app)
}

/// The whole loop: crm-sync writes to the sandbox, whose Outbound Messages come back to the
/// stack's webhook route, as a workflow rule on Contact and Opportunity would send them.
async fn salesforce_loop() -> (Sandbox, TestApp) {
    let sandbox = start_sandbox().await;
    let app = crm_sync_tests::crms::salesforce_looped_app(&sandbox, syncing_to(&sandbox)).await;
    (sandbox, app)
}

/// Syncs a contact and its deal and waits until every Outbound Message their writes caused is
/// processed; returns their Salesforce ids.
async fn synced(sandbox: &Sandbox, app: &TestApp, contact_id: &str, deal_id: &str) -> (String, String) {
    let ids = app
        .synced_contact_and_deal(
            contact_id,
            deal_id,
            json!({"email": format!("{contact_id}@example.com"), "last_name": "Byron"}),
        )
        .await;
    app.webhooks_settled(|| sandbox.pending_messages()).await;
    ids
}

fn record(object: ObjectKind, id: &str) -> RecordRef {
    RecordRef {
        object,
        record_id: id.into(),
    }
}

#[tokio::test]
async fn contacts_and_deals_reach_salesforce_linked_and_an_invalid_record_fails_alone() {
    let (sandbox, app) = salesforce_stack().await;
    let at = now_ms();
    app.send_changes(&[
        contact(
            "sf-1",
            at,
            json!({"email": "ada@example.com", "last_name": "Lovelace"}),
        ),
        contact("sf-2", at, json!({"email": "not-an-email", "last_name": "Typo"})),
        contact(
            "sf-3",
            at,
            json!({"email": "grace@example.com", "last_name": "Hopper"}),
        ),
        deal("sf-deal-1", "sf-1", at, json!({"name": "Pilot", "amount": 100})),
    ])
    .await;
    for id in ["sf-1", "sf-3"] {
        app.settled(record(ObjectKind::Contact, id), SyncStatus::Synced)
            .await;
    }
    app.settled(record(ObjectKind::Deal, "sf-deal-1"), SyncStatus::Synced)
        .await;
    let (failed, _) = app
        .settled(record(ObjectKind::Contact, "sf-2"), SyncStatus::Failed)
        .await;
    assert!(!failed.retryable, "Salesforce refused the record itself");
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("INVALID_EMAIL_ADDRESS"),
        "{failed:?}"
    );

    let contacts = sandbox.records("Contact");
    assert_eq!(contacts.len(), 2);
    let ada = contacts
        .iter()
        .find(|c| c["Crm_Sync_App_Id__c"] == "sf-1")
        .expect("sf-1 in Salesforce");
    assert_eq!(ada["Email"], "ada@example.com");
    let opportunity = &sandbox.records("Opportunity")[0];
    assert_eq!(opportunity["Name"], "Pilot");
    let roles = sandbox.records("OpportunityContactRole");
    assert_eq!(roles.len(), 1, "the deal is linked to its contact");
    assert_eq!(roles[0]["ContactId"], ada["Id"]);
    assert_eq!(roles[0]["OpportunityId"], opportunity["Id"]);
}

#[tokio::test]
async fn an_activity_becomes_a_task_on_its_contact_once_however_often_it_is_sent() {
    let (sandbox, app) = salesforce_stack().await;
    let at = now_ms();
    app.send_changes(&[contact(
        "sf-act-c",
        at,
        json!({"email": "act@example.com", "last_name": "Noether"}),
    )])
    .await;
    let (contact_state, _) = app
        .settled(record(ObjectKind::Contact, "sf-act-c"), SyncStatus::Synced)
        .await;
    let call = activity("sf-act-1", "sf-act-c", at, "Called about the renewal");
    app.send_changes(&[call.clone(), call]).await;
    let (task_state, _) = app
        .settled(record(ObjectKind::Activity, "sf-act-1"), SyncStatus::Synced)
        .await;

    let tasks = sandbox.records("Task");
    assert_eq!(tasks.len(), 1, "upserted by the app's id: {tasks:?}");
    let task = &tasks[0];
    assert_eq!(task["Crm_Sync_App_Id__c"], "sf-act-1");
    assert_eq!(task["Description"], "Called about the renewal");
    assert_eq!(task["ActivityDate"], "2026-11-27", "a date field takes the day");
    assert_eq!(
        task["WhoId"].as_str(),
        contact_state.crm_id.as_deref(),
        "on its contact"
    );
    assert_eq!(task_state.crm_id.as_deref(), task["Id"].as_str());
}

#[tokio::test]
async fn an_expired_session_is_renewed_and_the_sync_carries_on() {
    let (sandbox, app) = salesforce_stack().await;
    app.send_changes(&[contact(
        "sf-renew-1",
        now_ms(),
        json!({"email": "r1@example.com"}),
    )])
    .await;
    app.settled(record(ObjectKind::Contact, "sf-renew-1"), SyncStatus::Synced)
        .await;
    sandbox.expire_session();
    app.send_changes(&[contact(
        "sf-renew-2",
        now_ms(),
        json!({"email": "r2@example.com"}),
    )])
    .await;
    app.settled(record(ObjectKind::Contact, "sf-renew-2"), SyncStatus::Synced)
        .await;
    let stats = eventually(10, "the renewal counted", || async {
        let stats = sandbox.stats();
        (stats.refreshed == 1).then_some(stats)
    })
    .await;
    assert_eq!(stats.refused_sessions, 1);
    assert_eq!(sandbox.records("Contact").len(), 2);
}

#[tokio::test]
async fn salesforce_notifications_of_crm_syncs_own_writes_are_echoes() {
    let (sandbox, app) = salesforce_loop().await;
    synced(&sandbox, &app, "sf-echo-1", "sf-echo-deal-1").await;

    let events = app.webhook_events().await;
    assert!(events.len() >= 2, "notifications of both records: {events:?}");
    for (_, status, detail, event) in &events {
        assert_eq!(event["fields"]["LastModifiedById"], INTEGRATION_USER_ID);
        assert_eq!(status, "echo", "{detail}: {event}");
    }
    assert!(
        app.drain_app_inbox().await.is_empty(),
        "an amount written as 100 and reported as 100.0 is no change"
    );
    assert!(sandbox.stats().messages_acknowledged >= 2);
    assert_eq!(
        sandbox.stats().messages_refused,
        0,
        "every message was acknowledged at once"
    );
}

#[tokio::test]
async fn an_unchanged_opportunity_shows_no_drift_though_salesforce_reads_amounts_and_dates_in_its_own_form() {
    let sandbox = start_sandbox().await;
    let app = spawn_app_with(syncing_to(&sandbox).with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    let at = now_ms();
    app.send_changes(&[
        contact(
            "sf-buyer-1",
            at,
            json!({"email": "buyer@example.com", "last_name": "Buyer"}),
        ),
        crm_sync_tests::app_changes::deal(
            "sf-order-9",
            "sf-buyer-1",
            at,
            json!({"name": "Annual plan", "amount": 1200, "close_date": "2026-12-31T00:00:00Z"}),
        ),
    ])
    .await;
    let (deal, _) = app
        .settled(record(ObjectKind::Deal, "sf-order-9"), SyncStatus::Synced)
        .await;
    let opportunity = &sandbox.records("Opportunity")[0];
    // Salesforce keeps the amount as a double and the day as a date.
    assert_eq!(opportunity["Amount"], json!(1200.0));
    assert_eq!(opportunity["CloseDate"], "2026-12-31");
    assert_eq!(deal.written["Amount"], "1200");

    let report = app.reconcile().await;

    assert_eq!(report.checked, 2, "{report:?}");
    assert_eq!((report.healed, report.flagged), (0, 0), "{report:?}");
}

#[tokio::test]
async fn a_spent_salesforce_day_read_from_its_limit_header_holds_the_sync_before_salesforce_refuses() {
    // One API request left today: the first batch spends it, and its Sforce-Limit-Info says so.
    let sandbox = Sandbox::start("127.0.0.1:0", "access-0", "refresh-1", 1)
        .await
        .expect("the sandbox starts");
    let app = spawn_app_with(syncing_to(&sandbox)).await;
    let at = now_ms();
    app.send_changes(&[contact(
        "sf-day-1",
        at,
        json!({"email": "d1@example.com", "last_name": "Day"}),
    )])
    .await;
    app.applied(record(ObjectKind::Contact, "sf-day-1"), at).await;
    app.send_changes(&[contact(
        "sf-day-2",
        at,
        json!({"email": "d2@example.com", "last_name": "Day"}),
    )])
    .await;

    let (waiting, _) = app
        .timeline_says(record(ObjectKind::Contact, "sf-day-2"), "CRM budget exhausted")
        .await;
    assert_eq!(waiting.status, SyncStatus::Pending, "waiting, not failed");
    // Every instance now waits for Salesforce's day to end instead of asking and being refused:
    // the change is on the queue, delayed, and nothing else is left to run.
    assert_eq!(
        app.queue_settled("OutboundQueue").await,
        1,
        "the waiting change, delayed"
    );
    assert_eq!(sandbox.stats().limit_refusals, 0);
    assert_eq!(sandbox.stats().calls, 1);
    assert_eq!(sandbox.records("Contact").len(), 1);
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}
