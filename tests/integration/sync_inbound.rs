//! CRM → app through the whole local stack: a "sales rep" edits a record in the sandbox, the
//! sandbox posts v3-signed webhooks to the local API, the webhook function stores and queues
//! them, and the sync function applies the ownership rules: CRM-owned changes reach the app
//! inbox, app-owned ones are journaled as conflicts, crm-sync's own writes are recognised.

use std::collections::BTreeMap;

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync::ports::state::*;
use crm_sync_tests::app_changes::{contact, deal};
use crm_sync_tests::hubspot::{now_ms, v3_headers};
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp, HUBSPOT_SECRET};
use serde_json::json;

fn record(object: ObjectKind, id: &str) -> RecordRef {
    RecordRef {
        object,
        record_id: id.to_string(),
    }
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Syncs a contact (and optionally a deal) from the app and waits until both are in the CRM and
/// every webhook their creation caused has been processed.
async fn synced(app: &TestApp, contact_id: &str, deal_id: Option<&str>) -> (u64, Option<u64>) {
    let at = now_ms();
    let mut changes = vec![contact(
        contact_id,
        at,
        json!({"email": format!("{contact_id}@example.com"), "first_name": "Ann"}),
    )];
    if let Some(deal_id) = deal_id {
        changes.push(deal(
            deal_id,
            contact_id,
            at,
            json!({"name": "Pro plan", "amount": 100}),
        ));
    }
    app.send_changes(&changes).await;
    let store = app.sync_state();
    for r in [
        Some(record(ObjectKind::Contact, contact_id)),
        deal_id.map(|d| record(ObjectKind::Deal, d)),
    ]
    .into_iter()
    .flatten()
    {
        eventually(60, &format!("{r} synced"), || {
            let (store, r) = (store.clone(), r.clone());
            async move {
                store
                    .record(&r, 1)
                    .await
                    .ok()
                    .flatten()
                    .filter(|(s, _)| s.status == SyncStatus::Synced)
            }
        })
        .await;
    }
    settle_webhooks(app).await;
    let contact_crm = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", contact_id)
        .unwrap()
        .id;
    let deal_crm = deal_id.map(|d| app.sandbox().find("deals", "crm_sync_app_id", d).unwrap().id);
    (contact_crm, deal_crm)
}

/// Waits until every stored webhook event has an outcome.
async fn settle_webhooks(app: &TestApp) {
    app.webhooks_settled(|| app.sandbox().pending_webhooks()).await;
}

/// A HubSpot delivery of one rep's move of deal `deal_crm` to `stage`, at `at`.
fn stage_change(deal_crm: u64, event_id: i64, at: i64, stage: &str) -> serde_json::Value {
    json!({"eventId": event_id, "subscriptionId": 202, "portalId": 62515, "appId": 1, "occurredAt": at,
           "subscriptionType": "deal.propertyChange", "attemptNumber": 0, "objectId": deal_crm,
           "propertyName": "dealstage", "propertyValue": stage, "changeSource": "CRM_UI"})
}

/// Posts `body` to the stack's HubSpot webhook route, signed now.
async fn post_signed(app: &TestApp, body: String) -> reqwest::StatusCode {
    let url = app.webhook_url("hubspot");
    let headers = v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms());
    let mut request = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn with_reassertion_on_the_apps_value_is_written_back_to_the_crm() {
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_webhooks()
            .with_env("REASSERT_APP_VALUES", "true"),
    )
    .await;
    let (contact_crm, _) = synced(&app, "rep-3", None).await;

    app.sandbox()
        .edit("contacts", contact_crm, props(&[("email", "typo@example.com")]))
        .unwrap();

    eventually(60, "the app's email back in the CRM", || async {
        let record = app.sandbox().find("contacts", "crm_sync_app_id", "rep-3")?;
        (record.properties["email"] == "rep-3@example.com").then_some(())
    })
    .await;
    settle_webhooks(&app).await;
    let conflicts = app
        .sync_state()
        .conflicts(&record(ObjectKind::Contact, "rep-3"), 10)
        .await
        .unwrap();
    assert_eq!(
        conflicts.len(),
        1,
        "the re-assertion's own echo is not another conflict"
    );
    assert_eq!(conflicts[0].resolution, "re-asserted the app's value in the CRM");
    let (state, _) = app
        .sync_state()
        .record(&record(ObjectKind::Contact, "rep-3"), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !state.open_conflicts,
        "resolved at once: never on the open listing"
    );
    assert!(state.conflict_marks.open.is_empty(), "{:?}", state.conflict_marks);
    assert!(state.conflict_marks.reasserted.contains_key("email"));
}

#[tokio::test]
async fn an_older_event_never_overrides_a_newer_one_and_a_duplicate_is_processed_once() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let (_, deal_crm) = synced(&app, "order-1", Some("deal-order-1")).await;
    let deal_crm = deal_crm.unwrap();
    let t = now_ms();
    let newer = json!([stage_change(deal_crm, 9001, t, "closedwon")]).to_string();
    let older = json!([stage_change(deal_crm, 9000, t - 60_000, "qualifiedtobuy")]).to_string();

    assert_eq!(post_signed(&app, newer.clone()).await, 200);
    assert_eq!(post_signed(&app, newer).await, 200);
    let first = eventually(60, "the newer stage in the app inbox", || async {
        let messages = app.drain_app_inbox().await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(post_signed(&app, older).await, 200);
    settle_webhooks(&app).await;
    let later = app.drain_app_inbox().await;

    assert_eq!(first.len(), 1, "the duplicate delivery is processed once");
    assert_eq!(first[0]["changes"]["stage"], "closedwon");
    assert!(
        later.is_empty(),
        "the older stage never reaches the app: {later:?}"
    );
    let stale: Vec<_> = app
        .webhook_events()
        .await
        .into_iter()
        .filter(|(_, _, _, e)| e["eventId"] == 9000)
        .collect();
    assert_eq!(stale[0].1, "ignored");
    assert_eq!(stale[0].2, "older than a change already applied");
}

#[tokio::test]
async fn a_delivery_posted_again_and_again_at_once_reaches_the_app_once_with_one_outcome() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let (_, deal_crm) = synced(&app, "replay-1", Some("deal-replay-1")).await;
    let body = json!([stage_change(deal_crm.unwrap(), 9300, now_ms(), "contractsent")]).to_string();

    // A CRM retrying a slow answer, and a burst of copies at once: every copy is enqueued.
    for _ in 0..3 {
        assert_eq!(post_signed(&app, body.clone()).await, 200);
    }
    let statuses = futures::future::join_all((0..20).map(|_| post_signed(&app, body.clone()))).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    settle_webhooks(&app).await;

    let messages = app.drain_app_inbox().await;
    assert_eq!(messages.len(), 1, "once, of 23 copies: {messages:?}");
    assert_eq!(messages[0]["changes"]["stage"], "contractsent");
    let outcomes: Vec<_> = app
        .webhook_events()
        .await
        .into_iter()
        .filter(|(_, _, _, event)| event["eventId"] == 9300)
        .collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].1, "applied");
}

#[tokio::test]
async fn a_generic_object_property_change_from_hubspots_developer_platform_reaches_the_app_inbox() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let (_, deal_crm) = synced(&app, "order-7", Some("deal-order-7")).await;
    let mut event = stage_change(deal_crm.unwrap(), 9100, now_ms(), "contractsent");
    event["subscriptionType"] = json!("object.propertyChange");
    event["objectTypeId"] = json!("0-3");

    assert_eq!(post_signed(&app, json!([event]).to_string()).await, 200);
    let messages = eventually(60, "the stage in the app inbox", || async {
        let messages = app.drain_app_inbox().await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;

    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["record_id"], "deal-order-7");
    assert_eq!(messages[0]["changes"]["stage"], "contractsent");
}

#[tokio::test]
async fn a_crm_record_the_app_does_not_know_is_ignored_with_the_reason() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let created = app
        .sandbox()
        .create("contacts", props(&[("email", "walkin@example.com")]))
        .unwrap();

    settle_webhooks(&app).await;
    let events = app.webhook_events().await;
    assert!(!events.is_empty());
    for (_, status, detail, _) in &events {
        assert_eq!(status, "ignored");
        assert_eq!(
            detail,
            &format!("no app record has contact CRM id {}", created.id)
        );
    }
    assert!(app.drain_app_inbox().await.is_empty());
}

#[tokio::test]
async fn a_crm_event_dated_past_the_allowed_clock_skew_is_dead_lettered_and_the_next_real_edit_applies() {
    let app = spawn_app_with(
        AppOptions::syncing()
            .with_webhooks()
            .with_env("MAX_CLOCK_SKEW_SECONDS", "60"),
    )
    .await;
    let (_, deal_crm) = synced(&app, "order-9", Some("deal-order-9")).await;
    let deal_crm = deal_crm.unwrap();
    let ten_years = 10 * 365 * 24 * 3600 * 1000_i64;

    assert_eq!(
        post_signed(
            &app,
            json!([stage_change(deal_crm, 7001, now_ms() + ten_years, "closedlost")]).to_string()
        )
        .await,
        200
    );
    let letters = eventually(60, "the future event dead-lettered", || async {
        let letters = app.drain_dead_letters("InboundDeadLetterQueue").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].1["crm_sync_error"].contains("ahead of crm-sync's clock, more than the 60 s allowed"),
        "{:?}",
        letters[0].1
    );

    assert_eq!(
        post_signed(
            &app,
            json!([stage_change(deal_crm, 7002, now_ms(), "closedwon")]).to_string()
        )
        .await,
        200
    );
    let delivered = eventually(60, "the real stage in the app inbox", || async {
        let messages = app.drain_app_inbox().await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["changes"]["stage"], "closedwon");
}

#[tokio::test]
async fn the_late_echo_of_an_earlier_write_is_recognised_and_never_journaled() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    synced(&app, "late-1", None).await;
    // HubSpot batches and delays its deliveries: the echo of one write arrives after the next.
    app.sandbox().set_webhooks(hubspot_sandbox::WebhookSettings {
        batch_window_ms: 4_000,
        ..app.sandbox().webhooks()
    });
    let contact_ref = record(ObjectKind::Contact, "late-1");
    for name in ["Two", "Three"] {
        let at = now_ms();
        app.send_changes(&[contact(
            "late-1",
            at,
            json!({"email": "late-1@example.com", "first_name": name}),
        )])
        .await;
        app.applied(contact_ref.clone(), at).await;
    }
    settle_webhooks(&app).await;

    let events = app.webhook_events().await;
    let late: Vec<_> = events
        .iter()
        .filter(|(_, _, _, e)| e["propertyName"] == "firstname" && e["propertyValue"] == "Two")
        .collect();
    assert!(
        !late.is_empty(),
        "the first write's echo was delivered: {events:?}"
    );
    for (_, status, detail, event) in &events {
        assert_eq!(status, "echo", "{detail}: {event}");
    }
    let conflicts = app.sync_state().conflicts(&contact_ref, 10).await.unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert!(app.drain_app_inbox().await.is_empty());
}

#[tokio::test]
async fn a_reps_edit_back_to_an_earlier_app_value_is_still_a_conflict() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let contact_crm = synced(&app, "late-2", None).await.0;
    let contact_ref = record(ObjectKind::Contact, "late-2");
    let at = now_ms();
    app.send_changes(&[contact(
        "late-2",
        at,
        json!({"email": "late-2@example.com", "first_name": "Newer"}),
    )])
    .await;
    app.applied(contact_ref.clone(), at).await;
    settle_webhooks(&app).await;

    // "Ann" is what crm-sync wrote first; a person typing it back is no echo.
    app.sandbox()
        .edit("contacts", contact_crm, props(&[("firstname", "Ann")]))
        .unwrap();
    let conflicts = app.journaled_conflicts(contact_ref).await;
    assert_eq!(conflicts[0].crm_value, "Ann");
    assert_eq!(conflicts[0].app_value.as_deref(), Some("Newer"));
}

#[tokio::test]
async fn a_reps_edit_of_a_deal_whose_first_sync_has_not_settled_reaches_the_app() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    // The deal's contact never reaches the CRM, so the deal is written but never settles.
    app.send_changes(&[deal(
        "deal-early",
        "contact-missing",
        now_ms(),
        json!({"name": "Early plan", "amount": 50}),
    )])
    .await;
    let created = eventually(60, "the deal in the CRM", || async {
        app.sandbox().find("deals", "crm_sync_app_id", "deal-early")
    })
    .await;
    let deal_ref = record(ObjectKind::Deal, "deal-early");
    let state = app.sync_state().record(&deal_ref, 1).await.unwrap().unwrap().0;
    assert_eq!(
        state.crm_id, None,
        "the sync has not recorded the CRM id: {state:?}"
    );

    app.sandbox()
        .edit("deals", created.id, props(&[("dealstage", "closedwon")]))
        .unwrap();

    let inbox = eventually(60, "the rep's stage in the app inbox", || async {
        let messages = app.drain_app_inbox().await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["record_id"], "deal-early");
    assert_eq!(inbox[0]["changes"]["stage"], "closedwon");
    settle_webhooks(&app).await;
    let conflicts = app.sync_state().conflicts(&deal_ref, 10).await.unwrap();
    assert!(
        conflicts.is_empty(),
        "the creation's echoes are crm-sync's own: {conflicts:?}"
    );
}

#[tokio::test]
async fn two_edits_in_one_millisecond_reach_the_app_in_an_order_it_can_rely_on() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let (_, deal_crm) = synced(&app, "tie-1", Some("deal-tie-1")).await;
    let deal_crm = deal_crm.unwrap();
    let at = now_ms();
    let body = json!([
        stage_change(deal_crm, 8101, at, "contractsent"),
        stage_change(deal_crm, 8102, at, "closedwon")
    ])
    .to_string();
    assert_eq!(post_signed(&app, body).await, 200);

    let mut inbox = eventually(60, "both stages in the app inbox", || async {
        let messages = app.drain_app_inbox().await;
        (messages.len() >= 2).then_some(messages)
    })
    .await;
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert_eq!(inbox[0]["occurred_at_ms"], inbox[1]["occurred_at_ms"]);
    inbox.sort_by_key(|message| message["sequence"].as_u64().unwrap());
    let (first, last) = (&inbox[0], &inbox[1]);
    assert_eq!(
        last["sequence"].as_u64().unwrap(),
        first["sequence"].as_u64().unwrap() + 1
    );
    // The app, applying by (occurred_at_ms, sequence), ends where crm-sync's state says it is.
    let (state, _) = app
        .sync_state()
        .record(&record(ObjectKind::Deal, "deal-tie-1"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last["changes"]["stage"].as_str(),
        state.received.get("dealstage").map(String::as_str)
    );
    assert_eq!(state.inbox_sequence, last["sequence"].as_u64().unwrap());
}

#[tokio::test]
async fn an_event_acted_on_again_after_a_crash_journals_its_conflict_once() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let record = RecordRef {
        object: ObjectKind::Contact,
        record_id: "user-j".into(),
    };
    let entry = |property: &str| crm_sync::domain::inbound::ConflictEntry {
        record: record.clone(),
        at_ms: now_ms(),
        field: property.into(),
        crm_property: property.into(),
        app_value: Some("ada@example.com".into()),
        crm_value: "typo@example.com".into(),
        source: "CRM_UI".into(),
        event_key: "62515:1:contact.propertyChange:7:email:1:2".into(),
        resolution:
            "not applied: the app keeps its value, the CRM the person's until crm-sync writes the field again"
                .into(),
        noted_at_ms: now_ms(),
    };
    let store = app.sync_state();
    let email = entry("email");

    // The first attempt journaled it and crashed before recording the event's outcome; the
    // redelivery decides the same event again.
    store
        .append_conflicts(std::slice::from_ref(&email))
        .await
        .unwrap();
    store
        .append_conflicts(std::slice::from_ref(&email))
        .await
        .unwrap();
    store.append_conflicts(&[entry("phone")]).await.unwrap();

    let conflicts = store.conflicts(&record, 10).await.unwrap();
    assert_eq!(conflicts.len(), 2, "one per event and property: {conflicts:?}");
}

#[tokio::test]
async fn a_reps_edits_of_a_declared_company_reach_the_app_or_the_conflict_journal_and_its_echoes_neither() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let company = app
        .synced_company(
            "account-17",
            json!({"name": "Analytical Engines", "domain": "engines.example.com"}),
        )
        .await;
    // crm-sync's own write comes back as company events: echoes, not conflicts.
    settle_webhooks(&app).await;
    assert!(app.drain_app_inbox().await.is_empty());
    let crm_id = app
        .sandbox()
        .find("companies", "crm_sync_app_id", "account-17")
        .unwrap()
        .id;

    // A rep sets the industry (the CRM's) and renames the company (the app's).
    app.sandbox()
        .edit("companies", crm_id, props(&[("industry", "AEROSPACE")]))
        .unwrap();
    app.sandbox()
        .edit("companies", crm_id, props(&[("name", "Engines Ltd")]))
        .unwrap();
    settle_webhooks(&app).await;

    let inbox = app.drain_app_inbox().await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["version"], 2);
    assert_eq!(inbox[0]["object"], "company");
    assert_eq!(inbox[0]["record_id"], "account-17");
    assert_eq!(inbox[0]["changes"], json!({"industry": "AEROSPACE"}));
    let conflicts = app.journaled_conflicts(company).await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, "name");
    assert_eq!(conflicts[0].crm_value, "Engines Ltd");
}
