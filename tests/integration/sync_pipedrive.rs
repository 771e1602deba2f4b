//! App -> CRM with `CRM=pipedrive`: the same local stack and sync handler, the Pipedrive sandbox
//! over HTTP in HubSpot's place. Pipedrive takes one record a call.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use pipedrive_sandbox::{Limits, Sandbox};
use serde_json::{json, Map, Value};

const TOKEN: &str = "pipedrive-sync-token";

async fn pipedrive_stack(limits: Limits, burst_limit: u64) -> (Sandbox, TestApp) {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, limits)
        .await
        .expect("the sandbox starts");
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_env("CRM", "pipedrive")
            .with_env("PIPEDRIVE_API_BASE", &sandbox.url())
            .with_env("PIPEDRIVE_API_TOKEN", TOKEN)
            .with_env("PIPEDRIVE_BURST_LIMIT", &burst_limit.to_string()),
    )
    .await;
    (sandbox, app)
}

fn person<'a>(persons: &'a [Map<String, Value>], record_id: &str) -> Option<&'a Map<String, Value>> {
    persons
        .iter()
        .find(|person| person["custom_fields"]["crm_sync_app_id"] == record_id)
}

#[tokio::test]
async fn contacts_reach_pipedrive_as_persons_once_each_and_updates_follow_the_apps_id() {
    let (sandbox, app) = pipedrive_stack(Limits::default(), 20).await;
    let at = now_ms();
    let first = contact(
        "user-1",
        at,
        json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}),
    );
    app.send_changes(&[
        first.clone(),
        first,
        contact(
            "user-2",
            at,
            json!({"email": "grace@example.com", "phone": "+1 555 0100"}),
        ),
    ])
    .await;
    eventually(30, "two persons in Pipedrive", || async {
        (sandbox.records("persons").len() == 2).then_some(())
    })
    .await;
    let (state, timeline) = app
        .settled(
            RecordRef {
                object: ObjectKind::Contact,
                record_id: "user-1".into(),
            },
            SyncStatus::Synced,
        )
        .await;
    let persons = sandbox.records("persons");
    let ada = person(&persons, "user-1").expect("user-1 is a person");
    assert_eq!(state.crm_id, Some(ada["id"].to_string()));
    assert_eq!(
        ada["name"], "Ada Lovelace",
        "named from the app's names on creation"
    );
    assert_eq!(ada["emails"][0]["value"], "ada@example.com");
    assert!(timeline.iter().any(|entry| entry
        .call
        .as_deref()
        .is_some_and(|call| call.starts_with("POST /persons"))));

    app.send_changes(&[contact(
        "user-1",
        at + 1_000,
        json!({"email": "ada@lovelace.example"}),
    )])
    .await;
    eventually(30, "the new email in Pipedrive", || async {
        let persons = sandbox.records("persons");
        (person(&persons, "user-1")?["emails"][0]["value"] == "ada@lovelace.example").then_some(())
    })
    .await;
    assert_eq!(
        sandbox.records("persons").len(),
        2,
        "the update found the person by the app's id"
    );
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn a_small_burst_window_is_paced_by_the_limiter_and_nothing_is_lost() {
    // 6 calls per 2 s; each new contact costs a search and a create.
    let (sandbox, app) = pipedrive_stack(
        Limits {
            burst_limit: 6,
            ..Limits::default()
        },
        6,
    )
    .await;
    let at = now_ms();
    let changes: Vec<Value> = (0..8)
        .map(|i| {
            contact(
                &format!("paced-{i}"),
                at,
                json!({"email": format!("p{i}@example.com")}),
            )
        })
        .collect();
    app.send_changes(&changes).await;
    eventually(60, "eight persons in Pipedrive", || async {
        (sandbox.records("persons").len() == 8).then_some(())
    })
    .await;
    for i in 0..8 {
        app.settled(
            RecordRef {
                object: ObjectKind::Contact,
                record_id: format!("paced-{i}"),
            },
            SyncStatus::Synced,
        )
        .await;
    }
    let stats = sandbox.stats();
    assert_eq!(stats.throttled, 0, "the limiter keeps to the window: {stats:?}");
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}
