//! App -> CRM with `CRM=salesforce`: the same local stack and sync handler, the Salesforce
//! sandbox over HTTP, records written 200 a call through sObject Collections.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync_tests::app_changes::{contact, deal};
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use salesforce_sandbox::Sandbox;
use serde_json::json;

async fn salesforce_stack() -> (Sandbox, TestApp) {
    let sandbox = Sandbox::start("127.0.0.1:0", "access-0", "refresh-1", 10_000)
        .await
        .expect("the sandbox starts");
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_env("SYNC_MAX_ATTEMPTS", "1")
            .with_env("CRM", "salesforce")
            .with_env("SALESFORCE_INSTANCE_URL", &sandbox.instance_url())
            .with_env("SALESFORCE_ACCESS_TOKEN", "access-0")
            .with_env("SALESFORCE_CLIENT_ID", "connected-app")
            .with_env("SALESFORCE_CLIENT_SECRET", "client-secret")
            .with_env("SALESFORCE_REFRESH_TOKEN", "refresh-1")
            .with_env("SALESFORCE_TOKEN_URL", &sandbox.token_url()),
    )
    .await;
    (sandbox, app)
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
