//! App -> CRM with `CRM=pipedrive`: the same local stack and sync handler, the Pipedrive sandbox
//! over HTTP in HubSpot's place. Pipedrive takes one record a call.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync_tests::app_changes::{activity, contact};
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use pipedrive_sandbox::{Faults, Limits, Sandbox};
use serde_json::{json, Map, Value};

const TOKEN: &str = "pipedrive-sync-token";

/// A syncing stack whose CRM is `sandbox`.
fn syncing_to(sandbox: &Sandbox) -> AppOptions {
    AppOptions::syncing()
        .with_env("CRM", "pipedrive")
        .with_env("PIPEDRIVE_API_BASE", &sandbox.url())
        .with_env("PIPEDRIVE_API_TOKEN", TOKEN)
}

async fn pipedrive_stack(limits: Limits, burst_limit: u64) -> (Sandbox, TestApp) {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, limits)
        .await
        .expect("the sandbox starts");
    let app =
        spawn_app_with(syncing_to(&sandbox).with_env("PIPEDRIVE_BURST_LIMIT", &burst_limit.to_string()))
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

/// A stack whose Pipedrive token allows 6 requests per 2 s, and the limiter told so.
async fn six_a_window() -> (Sandbox, TestApp) {
    pipedrive_stack(
        Limits {
            burst_limit: 6,
            ..Limits::default()
        },
        6,
    )
    .await
}

/// Sends eight new contacts named `{prefix}-{i}` and waits until each is synced.
async fn eight_new_contacts_synced(app: &TestApp, prefix: &str) {
    let at = now_ms();
    let changes: Vec<Value> = (0..8)
        .map(|i| {
            contact(
                &format!("{prefix}-{i}"),
                at,
                json!({"email": format!("{prefix}{i}@example.com")}),
            )
        })
        .collect();
    app.send_changes(&changes).await;
    for i in 0..8 {
        app.settled(
            RecordRef {
                object: ObjectKind::Contact,
                record_id: format!("{prefix}-{i}"),
            },
            SyncStatus::Synced,
        )
        .await;
    }
}

#[tokio::test]
async fn a_small_burst_window_is_paced_by_the_limiter_and_nothing_is_lost() {
    // Each new contact costs a search and a create.
    let (sandbox, app) = six_a_window().await;
    eight_new_contacts_synced(&app, "paced").await;
    let stats = sandbox.stats();
    assert_eq!(stats.throttled, 0, "the limiter keeps to the window: {stats:?}");
    assert_eq!(sandbox.records("persons").len(), 8);
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn slow_answers_do_not_push_an_upserts_write_past_the_burst_window() {
    // The limiter grants a search and a write together; a search answered late sends its
    // write into the next call's window, where only the client's own count keeps it out.
    let (sandbox, app) = six_a_window().await;
    sandbox.set_faults(
        Faults {
            timeout_rate: 0.4,
            timeout: std::time::Duration::from_millis(700),
            ..Faults::default()
        },
        7,
    );
    eight_new_contacts_synced(&app, "slow").await;
    let stats = sandbox.stats();
    assert!(stats.injected_timeouts > 0, "some answers came late: {stats:?}");
    assert_eq!(stats.throttled, 0, "no request went past the window: {stats:?}");
    assert_eq!(sandbox.records("persons").len(), 8);
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

const HOOK_USER: &str = "pipedrive-hooks";
const HOOK_PASSWORD: &str = "pipedrive hook password";

/// A stack that syncs to Pipedrive and takes its webhooks, and the sandbox posting them to it.
async fn pipedrive_loop() -> (Sandbox, TestApp) {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, Limits::default())
        .await
        .expect("the sandbox starts");
    let mut options = syncing_to(&sandbox);
    options.parameters.extend([
        ("PipedriveWebhookUser".to_string(), HOOK_USER.to_string()),
        ("PipedriveWebhookPassword".to_string(), HOOK_PASSWORD.to_string()),
    ]);
    let app = spawn_app_with(options).await;
    sandbox.set_webhook(pipedrive_sandbox::Webhook {
        url: app.webhook_url("pipedrive"),
        user: HOOK_USER.into(),
        password: HOOK_PASSWORD.into(),
    });
    (sandbox, app)
}

/// Syncs a contact and its deal, and waits until every webhook their writes caused is processed;
/// returns their Pipedrive ids.
async fn synced(sandbox: &Sandbox, app: &TestApp, contact_id: &str, deal_id: &str) -> (u64, u64) {
    let (person, deal) = app
        .synced_contact_and_deal(
            contact_id,
            deal_id,
            json!({"email": format!("{contact_id}@example.com"), "first_name": "Ann"}),
        )
        .await;
    settle_webhooks(sandbox, app).await;
    // The deal's creation tells the app the pipeline and stage Pipedrive gave it.
    let first = app.drain_app_inbox().await;
    assert!(
        first
            .iter()
            .all(|m| m["object"] == "deal" && m["changes"]["stage"].is_string()),
        "{first:?}"
    );
    let numeric = |id: String| id.parse::<u64>().expect("a numeric Pipedrive id");
    (numeric(person), numeric(deal))
}

async fn settle_webhooks(sandbox: &Sandbox, app: &TestApp) {
    app.webhooks_settled(|| sandbox.pending_webhooks()).await;
}

#[tokio::test]
async fn pipedrive_echoes_of_crm_syncs_own_writes_are_recognised_and_dropped() {
    let (sandbox, app) = pipedrive_loop().await;
    synced(&sandbox, &app, "pd-echo-1", "pd-echo-deal-1").await;

    let events = app.webhook_events().await;
    assert!(events.len() >= 2, "creations of both records: {events:?}");
    for (_, status, detail, event) in &events {
        assert_eq!(event["meta"]["change_source"], "api");
        // The deal's creation carries the pipeline and stage Pipedrive chose, which the CRM
        // owns and crm-sync never wrote: news for the app, not an echo. Nothing else is.
        let crm_defaults = event["meta"]["action"] == "create"
            && event["meta"]["entity"] == "deal"
            && detail == "delivered to the app: pipeline, stage";
        assert!(
            status == "echo" || status == "ignored" || crm_defaults,
            "{status}: {detail}: {event}"
        );
    }
    assert!(
        events.iter().any(|(_, status, _, _)| status == "echo"),
        "{events:?}"
    );
    assert!(app.drain_app_inbox().await.is_empty());
}

#[tokio::test]
async fn a_stage_move_reaches_the_app_when_pipedrive_dates_its_webhook_in_epoch_seconds() {
    let (sandbox, app) = pipedrive_loop().await;
    let (_, deal) = synced(&sandbox, &app, "pd-rep-3", "pd-deal-rep-3").await;
    sandbox.set_epoch_timestamps(true);

    sandbox.edit("deals", deal, json!({"stage_id": 5}));

    let messages = eventually(60, "the app inbox message", || async {
        let messages = app.drain_app_inbox().await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(messages[0]["record_id"], "pd-deal-rep-3");
    assert_eq!(messages[0]["changes"], json!({"stage": "5"}));
    let events = app.webhook_events().await;
    assert!(
        events
            .iter()
            .any(|(_, _, _, event)| event["meta"]["timestamp"].is_number()),
        "the webhook carried an epoch number: {events:?}"
    );
}

#[tokio::test]
async fn a_two_word_first_name_comes_back_from_pipedrive_as_an_echo_not_a_conflict() {
    use crm_sync::ports::state::*;
    let (sandbox, app) = pipedrive_loop().await;
    let person = RecordRef {
        object: ObjectKind::Contact,
        record_id: "pd-name-1".into(),
    };
    app.send_changes(&[contact(
        "pd-name-1",
        now_ms(),
        json!({"email": "mary@example.com", "first_name": "Mary Ann", "last_name": "Smith"}),
    )])
    .await;
    app.settled(person.clone(), SyncStatus::Synced).await;
    settle_webhooks(&sandbox, &app).await;

    assert_eq!(sandbox.records("persons")[0]["name"], "Mary Ann Smith");
    let events = app.webhook_events().await;
    assert!(!events.is_empty());
    for (_, status, detail, event) in &events {
        assert!(
            status == "echo" || status == "ignored",
            "{status}: {detail}: {event}"
        );
    }
    let conflicts = app.sync_state().conflicts(&person, 10).await.unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
}

#[tokio::test]
async fn an_unchanged_deal_shows_no_drift_though_pipedrive_reads_amounts_and_dates_in_its_own_form() {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, Limits::default())
        .await
        .expect("the sandbox starts");
    let app = spawn_app_with(syncing_to(&sandbox).with_env("RECONCILE_CYCLE_NIGHTS", "1")).await;
    let at = now_ms();
    app.send_changes(&[
        // Pipedrive keeps only `name` and splits it at its first space: `Mary` + `Ann Smith`.
        contact(
            "pd-buyer-1",
            at,
            json!({"email": "buyer@example.com", "first_name": "Mary Ann", "last_name": "Smith"}),
        ),
        crm_sync_tests::app_changes::deal(
            "pd-order-9",
            "pd-buyer-1",
            at,
            json!({"name": "Annual plan", "amount": "1200.50", "close_date": "2026-12-31T00:00:00Z"}),
        ),
    ])
    .await;
    let (deal, _) = app
        .settled(
            RecordRef {
                object: ObjectKind::Deal,
                record_id: "pd-order-9".into(),
            },
            SyncStatus::Synced,
        )
        .await;
    let stored = &sandbox.records("deals")[0];
    assert_eq!(
        stored["value"],
        json!(1200.5),
        "a number, as the v2 model types it"
    );
    assert_eq!(stored["expected_close_date"], "2026-12-31");
    assert_eq!(deal.written["value"], "1200.50");

    let report = app.reconcile().await;

    assert_eq!(report.checked, 2, "{report:?}");
    assert_eq!((report.healed, report.flagged), (0, 0), "{report:?}");
    // The one CRM-side difference is real: the stage and pipeline Pipedrive gave the new deal,
    // which the app never received (this stack takes no webhooks).
    assert_eq!((report.crm_drift, report.delivered), (2, 1), "{report:?}");
    assert_eq!(sandbox.stats().invalid, 0, "every request fit the v2 models");
    let person = &sandbox.records("persons")[0];
    assert_eq!(person["first_name"], "Mary", "Pipedrive's own split");
}

#[tokio::test]
async fn under_pipedrive_errors_and_lost_answers_every_person_and_note_ends_up_once_with_its_latest_values() {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, Limits::default())
        .await
        .expect("the sandbox starts");
    sandbox.set_faults(
        pipedrive_sandbox::Faults {
            error_rate: 0.15,
            timeout_rate: 0.05,
            timeout: std::time::Duration::from_secs(2),
        },
        // Its first four rolls hold an error and a late answer, so both happen in any run.
        20,
    );
    let app = spawn_app_with(syncing_to(&sandbox).with_patient_retries()).await;
    let records = 15;
    let at = now_ms();
    for (version, label) in [(at, "v1"), (at + 1, "v2")] {
        let changes: Vec<Value> = (0..records)
            .map(|n| {
                contact(
                    &format!("pd-fault-{n}"),
                    version,
                    json!({"email": format!("{label}-{n}@example.com")}),
                )
            })
            .collect();
        app.send_changes(&changes).await;
    }
    let notes = 5;
    let calls: Vec<Value> = (0..notes)
        .map(|n| {
            activity(
                &format!("pd-fault-act-{n}"),
                &format!("pd-fault-{n}"),
                at,
                &format!("Call {n}"),
            )
        })
        .collect();
    app.send_changes(&calls).await;
    for n in 0..records {
        app.applied(
            RecordRef {
                object: ObjectKind::Contact,
                record_id: format!("pd-fault-{n}"),
            },
            at + 1,
        )
        .await;
    }
    for n in 0..notes {
        app.applied(
            RecordRef {
                object: ObjectKind::Activity,
                record_id: format!("pd-fault-act-{n}"),
            },
            at,
        )
        .await;
    }
    let persons = sandbox.records("persons");
    assert_eq!(persons.len(), records, "no person twice, whatever was retried");
    for n in 0..records {
        let person = person(&persons, &format!("pd-fault-{n}")).expect("in Pipedrive");
        assert_eq!(person["emails"][0]["value"], format!("v2-{n}@example.com"));
    }
    let mut contents: Vec<String> = sandbox
        .records("notes")
        .iter()
        .map(|note| note["content"].as_str().unwrap_or_default().to_string())
        .map(|content| content.split('\n').next().unwrap_or_default().to_string())
        .collect();
    contents.sort();
    let expected: Vec<String> = (0..notes).map(|n| format!("Call {n}")).collect();
    assert_eq!(contents, expected, "each note once");
    let stats = sandbox.stats();
    assert!(
        stats.injected_errors > 0 && stats.injected_timeouts > 0,
        "the run proves little: {stats:?}"
    );
    assert!(app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty());
}

#[tokio::test]
async fn an_activity_becomes_one_note_on_its_person_and_a_later_change_rewrites_that_note() {
    let (sandbox, app) = pipedrive_stack(Limits::default(), 20).await;
    let at = now_ms();
    app.send_changes(&[contact("pd-act-c", at, json!({"email": "act@example.com"}))])
        .await;
    let (person, _) = app
        .settled(
            RecordRef {
                object: ObjectKind::Contact,
                record_id: "pd-act-c".into(),
            },
            SyncStatus::Synced,
        )
        .await;
    let call = activity("pd-act-1", "pd-act-c", at, "Called about the renewal");
    app.send_changes(&[call.clone(), call]).await;
    let note = RecordRef {
        object: ObjectKind::Activity,
        record_id: "pd-act-1".into(),
    };
    app.applied(note.clone(), at).await;
    app.send_changes(&[activity("pd-act-1", "pd-act-c", at + 1, "Renewal signed")])
        .await;
    app.applied(note, at + 1).await;

    let notes = sandbox.records("notes");
    assert_eq!(notes.len(), 1, "one note, sent twice and changed once: {notes:?}");
    assert_eq!(notes[0]["content"], "Renewal signed\n[crm-sync:pd-act-1]");
    assert_eq!(Some(notes[0]["person_id"].to_string()), person.crm_id);
    assert_eq!(notes[0]["add_time"], "2026-11-27 10:00:00");
}
