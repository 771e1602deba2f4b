//! Adoption day through the local stack, against the HubSpot sandbox: an app and a CRM that
//! already hold records, planned (nothing written), then backfilled, killed in the middle and
//! resumed, with every record written once and the CRM-owned values pulled once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::adapters::plan_files::{self, InputFormat};
use crm_sync::adoption::{AdoptionError, BackfillSettings};
use crm_sync::config::Env;
use crm_sync::domain::adoption::{Action, BackfillPhase, PlanCounts};
use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::{SyncStatus, TimelineKind};
use crm_sync::entrypoints::adoption_tool::{AdoptionTool, PlanRequest};
use crm_sync::ports::state::*;
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, TestApp};
use serde_json::json;

const CHANGED_AT: i64 = 1_796_000_000_000;

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "crm-sync-adoption-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn message(id: &str, email: &str, first_name: &str) -> String {
    json!({"version": 1, "type": "contact.upsert", "record_id": id, "idempotency_id": format!("adopt-{id}"),
           "changed_at": CHANGED_AT, "data": {"email": email, "first_name": first_name, "last_name": "Adopted"}})
    .to_string()
}

/// The tool as `crm-sync-adopt` builds it against the stack: with the adoption function's wiring.
async fn tool(app: &TestApp, settings: BackfillSettings) -> AdoptionTool {
    let env = app.stack.adoption_env.clone();
    let config = Env(move |name: &str| env.get(name).cloned()).adopt().unwrap();
    let aws = load_sdk_config(
        &AwsTarget::local(crm_sync_tests::moto_endpoint()),
        CallBudget::BACKGROUND,
    )
    .await;
    AdoptionTool::build_with(&aws, config, settings).await.unwrap()
}

/// Plans `input` as the tool does, under `plan_id`; the dashboard is given the summary.
async fn plan(tool: &AdoptionTool, plan_id: &str, input: &Path, dir: &Path) -> PlanCounts {
    let request = PlanRequest {
        plan_id,
        input,
        format: InputFormat::of(input, ObjectKind::Contact),
        dir,
        exported_ms: CHANGED_AT,
        now_ms: crm_sync_tests::hubspot::now_ms(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    };
    let (summary, unsaved) = tool.plan_file(&request, &|_| {}).await.unwrap();
    assert_eq!(unsaved, None);
    let saved = tool
        .store
        .plan(plan_id)
        .await
        .unwrap()
        .expect("the dashboard's copy");
    assert_eq!(
        (&saved.counts, &saved.examples),
        (&summary.counts, &summary.examples)
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["counts"]["records"], summary.counts.records);
    summary.counts
}

/// A tool with a quick backfill (batches of 100, polled every 200 ms).
async fn quick_tool(app: &TestApp) -> AdoptionTool {
    tool(
        app,
        BackfillSettings {
            send_batch: 100,
            settle_poll: Duration::from_millis(200),
            run_hold: Duration::from_secs(3),
        },
    )
    .await
}

/// Runs the plan in `dir` to its end, within two minutes.
async fn backfill_all(
    tool: &AdoptionTool,
    plan_id: &str,
    counts: &PlanCounts,
    dir: &Path,
) -> crm_sync::domain::adoption::BackfillProgress {
    let dir = dir.to_path_buf();
    let reader = move || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<_>> + Send>> {
        Ok(Box::new(plan_files::read_plan(&dir)?))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    tool.backfill
        .run(plan_id, counts, &reader, deadline, &|_| {})
        .await
        .unwrap()
}

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.into(),
    }
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn adoption_plans_without_writing_then_a_killed_backfill_resumes_and_writes_each_record_once() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let sandbox = app.sandbox();
    // The CRM before adoption: one contact crm-sync wrote long ago (our id), a person's contact
    // with the email of an app user, and a person's contact nobody in the app has.
    let known = sandbox
        .create(
            "contacts",
            props(&[
                ("crm_sync_app_id", "user-1"),
                ("email", "user-1@example.com"),
                ("firstname", "Old"),
            ]),
        )
        .unwrap();
    let person = sandbox
        .create(
            "contacts",
            props(&[
                ("email", "ada@example.com"),
                ("lifecyclestage", "customer"),
                ("firstname", "Ada"),
            ]),
        )
        .unwrap();
    sandbox
        .create("contacts", props(&[("email", "stranger@example.com")]))
        .unwrap();
    let crm_before = sandbox.records("contacts").len();

    let dir = work_dir("plan");
    let input = dir.join("users.jsonl");
    let mut lines = vec![
        message("user-1", "user-1@example.com", "New"),
        message("user-2", "ADA@example.com", "Ada"),
        message("twin-a", "twin@example.com", "Twin"),
        message("twin-b", "twin@example.com", "Twin"),
        "not a message".to_string(),
        // A deal of a contact that waits for a person waits with it.
        json!({"version": 1, "type": "deal.upsert", "record_id": "deal-twin", "contact_record_id": "twin-a",
               "idempotency_id": "adopt-deal-twin", "changed_at": CHANGED_AT,
               "data": {"name": "Twin's deal", "amount": 100}})
        .to_string(),
    ];
    lines.extend((0..12).map(|i| message(&format!("new-{i}"), &format!("new-{i}@example.com"), "New")));
    std::fs::write(&input, lines.join("\n")).unwrap();

    let tool = tool(
        &app,
        BackfillSettings {
            send_batch: 4,
            settle_poll: Duration::from_millis(200),
            run_hold: Duration::from_secs(3),
        },
    )
    .await;
    let calls_before = sandbox.stats().total_calls;
    let counts = plan(&tool, "plan-test", &input, &dir).await;
    assert_eq!(
        (
            counts.update,
            counts.link,
            counts.conflict,
            counts.create,
            counts.invalid
        ),
        (1, 1, 2, 13, 1),
        "{counts:?}"
    );
    assert_eq!(counts.crm_owned_records, 1, "the person's lifecycle stage");
    let plan_calls = sandbox.stats().total_calls - calls_before;
    assert!(
        plan_calls <= 5,
        "a batch of contacts (types, by id, by email) and one of deals (types, by id): {plan_calls}"
    );
    assert_eq!(
        sandbox.records("contacts").len(),
        crm_before,
        "the plan writes nothing"
    );
    assert_eq!(
        sandbox
            .find("contacts", "email", "ada@example.com")
            .unwrap()
            .properties
            .get("crm_sync_app_id"),
        None
    );
    let items: Vec<_> = plan_files::read_plan(&dir).unwrap().map(Result::unwrap).collect();
    let update = items.iter().find(|i| i.record_id == "user-1").unwrap();
    assert!(
        matches!(&update.action, Action::Update { crm_id, fields } if *crm_id == known.id.to_string()
            && fields.iter().any(|f| f.field == "first_name" && f.in_crm == "Old" && f.app == "New")),
        "{update:?}"
    );

    // Killed once some records are on the lane: the run is dropped at its next step.
    let reader = || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<_>> + Send>> {
        Ok(Box::new(plan_files::read_plan(&dir)?))
    };
    let (kill, killed) = tokio::sync::watch::channel(false);
    let show = move |progress: &crm_sync::domain::adoption::BackfillProgress| {
        if progress.phase == BackfillPhase::Writes && progress.sent >= 4 {
            let _ = kill.send(true);
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut killed = killed;
    tokio::select! {
        outcome = tool.backfill.run("plan-test", &counts, &reader, deadline, &show) => {
            panic!("the backfill should have been killed first: {outcome:?}")
        }
        _ = killed.wait_for(|k| *k) => {}
    }
    let saved = tool.store.backfill("plan-test").await.unwrap().unwrap();
    assert_eq!(saved.phase, BackfillPhase::Writes, "{saved:?}");
    assert_eq!(saved.linked, 1, "links first");
    assert!(saved.sent >= 4 && saved.sent < 14, "{saved:?}");

    let first_seen = std::sync::Mutex::new(None::<u64>);
    let resumed = |progress: &crm_sync::domain::adoption::BackfillProgress| {
        first_seen.lock().unwrap().get_or_insert(progress.sent);
    };
    // The killed run still holds the plan (its machine may only be slow): a second run is refused.
    let second = tool
        .backfill
        .run("plan-test", &counts, &reader, deadline, &|_| {})
        .await;
    assert!(matches!(second, Err(AdoptionError::Busy)), "{second:?}");
    // Once its hold lapses, the next run goes on where it stopped.
    let done = eventually(30, "the killed run's hold lapsed", || async {
        match tool
            .backfill
            .run("plan-test", &counts, &reader, deadline, &resumed)
            .await
        {
            Err(AdoptionError::Busy) => None,
            other => Some(other),
        }
    })
    .await
    .unwrap();
    assert!(
        first_seen.lock().unwrap().unwrap() >= saved.sent,
        "resumed from its saved progress, not from the start"
    );
    assert_eq!(done.phase, BackfillPhase::Done, "{done:?}");
    assert_eq!(
        done.sent, 14,
        "every record but the conflicts, each sent once: {done:?}"
    );
    assert_eq!(
        done.waiting_on_contact, 1,
        "the twin's deal waits with its contact"
    );
    assert_eq!(done.pulled, 1);

    // Every record written is synced, once: one `synced` line each.
    let store = app.sync_state();
    for id in ["user-1", "user-2"]
        .into_iter()
        .map(String::from)
        .chain((0..12).map(|i| format!("new-{i}")))
    {
        let (state, timeline) = store.record(&contact_ref(&id), 20).await.unwrap().unwrap();
        assert_eq!(state.status, SyncStatus::Synced, "{id}");
        let writes = timeline.iter().filter(|e| e.kind == TimelineKind::Synced).count();
        assert_eq!(writes, 1, "{id} written once: {timeline:?}");
    }
    assert!(
        store.record(&contact_ref("twin-a"), 1).await.unwrap().is_none(),
        "conflicts wait"
    );
    let deal = RecordRef {
        object: ObjectKind::Deal,
        record_id: "deal-twin".into(),
    };
    assert!(store.record(&deal, 1).await.unwrap().is_none(), "its deal too");
    // The person's contact is linked, not duplicated; the stranger is left alone.
    let linked = sandbox.find("contacts", "crm_sync_app_id", "user-2").unwrap();
    assert_eq!(linked.id, person.id);
    assert_eq!(
        sandbox.records("contacts").len(),
        crm_before + 12,
        "only the twelve new ones created"
    );

    // The initial pull: the CRM-owned stage reached the app once, in the v1 contract.
    let inbox = app.drain_app_inbox().await;
    let pulled: Vec<_> = inbox.iter().filter(|m| m["source"] == "ADOPTION").collect();
    assert_eq!(pulled.len(), 1, "{inbox:?}");
    assert_eq!(pulled[0]["record_id"], "user-2");
    assert_eq!(pulled[0]["changes"]["lifecycle_stage"], "customer");

    // A backfill run again after it is done does nothing more.
    let again = tool
        .backfill
        .run("plan-test", &counts, &reader, deadline, &|_| {})
        .await
        .unwrap();
    assert_eq!(again.sent, 14);
    assert!(app.drain_app_inbox().await.is_empty());
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn adoption_against_salesforce_and_pipedrive_links_by_email_and_leaves_an_email_two_contacts_share_to_a_person(
) {
    for crm in [
        crm_sync_tests::crms::Crm::Salesforce,
        crm_sync_tests::crms::Crm::Pipedrive,
    ] {
        adopts_against(crm).await;
    }
}

async fn adopts_against(crm: crm_sync_tests::crms::Crm) {
    let stack = crm.stack().await;
    let name = format!("{crm:?}").to_lowercase();
    let crm_sync_tests::crms::CrmStack { app, .. } = &stack;
    let person = stack.create_contact_as_a_person("ada@example.com");
    stack.create_contact_as_a_person("twin@example.com");
    stack.create_contact_as_a_person("twin@example.com");
    let before = stack.contact_count();

    let dir = work_dir(&name);
    let input = dir.join("users.jsonl");
    let lines = [
        message("sf-1", "Ada@Example.com", "Ada"),
        message("sf-2", "twin@example.com", "Twin"),
        message("sf-3", "new@example.com", "New"),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let tool = quick_tool(app).await;
    let plan_id = format!("plan-{name}");
    let counts = plan(&tool, &plan_id, &input, &dir).await;
    assert_eq!(
        (counts.link, counts.conflict, counts.create),
        (1, 1, 1),
        "{name}: {counts:?}"
    );
    assert_eq!(stack.contact_count(), before, "{name}: the plan writes nothing");

    let done = backfill_all(&tool, &plan_id, &counts, &dir).await;
    assert_eq!(
        (done.phase, done.linked, done.sent),
        (BackfillPhase::Done, 1, 2),
        "{name}: {done:?}"
    );
    assert_eq!(
        stack.contact_crm_id("sf-1"),
        person,
        "{name}: linked, not created"
    );
    assert_eq!(
        stack.contact_count(),
        before + 1,
        "{name}: only the new one created"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn in_every_crm_companies_are_adopted_by_their_app_id_updated_in_place_or_created_once() {
    use crm_sync_tests::crms::Crm;
    for crm in Crm::ALL {
        let stack = crm.stack().await;
        let name = format!("{crm:?}").to_lowercase();
        let crm_sync_tests::crms::CrmStack { app, .. } = &stack;
        // A company crm-sync wrote long ago, under the app's id and an old name.
        app.synced_company("acct-1", json!({"name": "Old Engines"})).await;
        let before = stack.companies();

        let dir = work_dir(&format!("companies-{name}"));
        let input = dir.join("companies.jsonl");
        // Renamed in the app since that write.
        let changed_at = crm_sync_tests::hubspot::now_ms();
        let company = |id: &str, company_name: &str| {
            json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": id,
                   "idempotency_id": format!("adopt-{id}"), "changed_at": changed_at,
                   "data": {"name": company_name}})
            .to_string()
        };
        std::fs::write(
            &input,
            [
                company("acct-1", "Analytical Engines"),
                company("acct-2", "Difference Engines"),
            ]
            .join("\n"),
        )
        .unwrap();
        let tool = quick_tool(app).await;
        let plan_id = format!("plan-companies-{name}");
        let counts = plan(&tool, &plan_id, &input, &dir).await;
        assert_eq!(
            (counts.update, counts.create, counts.invalid),
            (1, 1, 0),
            "{name}: {counts:?}"
        );
        assert_eq!(stack.companies(), before, "{name}: the plan writes nothing");

        let done = backfill_all(&tool, &plan_id, &counts, &dir).await;
        assert_eq!(done.phase, BackfillPhase::Done, "{name}: {done:?}");
        let mut names: Vec<String> = stack.companies().into_iter().map(|(_, n)| n).collect();
        names.sort();
        assert_eq!(
            names,
            ["Analytical Engines", "Difference Engines"],
            "{name}: one each"
        );
        assert_eq!(
            stack
                .companies()
                .iter()
                .find(|(_, n)| n == "Analytical Engines")
                .map(|(id, _)| id),
            before.first().map(|(id, _)| id),
            "{name}: updated in place"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}

#[tokio::test]
async fn a_backfill_started_in_aws_runs_slice_by_slice_to_the_end_with_nothing_kept_here() {
    // Two-second slices: the adoption function hands the run on many times.
    let mut options = AppOptions::syncing();
    options.env.insert("ADOPTION_SLICE_SECONDS".into(), "2".into());
    let app = spawn_app_with(options).await;
    let sandbox = app.sandbox();
    let person = sandbox
        .create(
            "contacts",
            props(&[("email", "grace@example.com"), ("lifecyclestage", "customer")]),
        )
        .unwrap();
    let crm_before = sandbox.records("contacts").len();
    let dir = work_dir("in-aws");
    let input = dir.join("users.jsonl");
    let mut lines = vec![message("aws-grace", "grace@example.com", "Grace")];
    lines.extend((0..30).map(|i| message(&format!("aws-{i}"), &format!("aws-{i}@example.com"), "New")));
    std::fs::write(&input, lines.join("\n")).unwrap();

    let tool = tool(&app, BackfillSettings::default()).await;
    let counts = plan(&tool, "plan-in-aws", &input, &dir).await;
    assert_eq!((counts.link, counts.create), (1, 30), "{counts:?}");
    let summary = tool.store.plan("plan-in-aws").await.unwrap().unwrap();
    tool.runs
        .as_ref()
        .expect("the stack has an adoption function")
        .start(&summary, &dir)
        .await
        .unwrap();
    // Nothing here is needed any more: the plan is kept in the stack's bucket.
    std::fs::remove_dir_all(&dir).unwrap();

    let done = eventually(180, "the backfill in AWS to finish", || async {
        tool.store
            .backfill("plan-in-aws")
            .await
            .unwrap()
            .filter(|progress| progress.phase == BackfillPhase::Done)
    })
    .await;
    assert!(done.runs >= 2, "handed on from slice to slice: {done:?}");
    assert_eq!((done.linked, done.sent, done.pulled), (1, 31, 1), "{done:?}");
    let store = app.sync_state();
    for id in std::iter::once("aws-grace".to_string()).chain((0..30).map(|i| format!("aws-{i}"))) {
        let (state, timeline) = store.record(&contact_ref(&id), 20).await.unwrap().unwrap();
        assert_eq!(state.status, SyncStatus::Synced, "{id}");
        let writes = timeline.iter().filter(|e| e.kind == TimelineKind::Synced).count();
        assert_eq!(writes, 1, "{id} written once across the slices: {timeline:?}");
    }
    assert_eq!(
        sandbox
            .find("contacts", "crm_sync_app_id", "aws-grace")
            .unwrap()
            .id,
        person.id,
        "linked, not created"
    );
    assert_eq!(sandbox.records("contacts").len(), crm_before + 30);
    let pulled: Vec<_> = app
        .drain_app_inbox()
        .await
        .into_iter()
        .filter(|m| m["source"] == "ADOPTION")
        .collect();
    assert_eq!(pulled.len(), 1, "pulled once: {pulled:?}");
    assert_eq!(pulled[0]["changes"]["lifecycle_stage"], "customer");
}
