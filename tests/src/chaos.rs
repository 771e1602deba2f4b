//! The chaos scenario: app changes and sales-rep edits through the whole local stack while the
//! CRM fails, throttles and runs out of its daily budget, webhooks come twice and out of order,
//! and sync invocations crash mid-flight. Then, once everything has drained, a DLQ redrive and a
//! reconciliation run: the CRM must hold exactly the app's latest values, once per record, every
//! conflict must be journaled, and only the deliberately invalid messages may stay dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync::ports::state::*;
use crm_sync_local::esm::Crashes;
use hubspot_sandbox::{Faults, WebhookSettings};
use serde_json::{json, Value};

use crate::{spawn_app_with, AppOptions, TestApp};

/// How big and how hostile a run is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub records: usize,
    /// Update rounds after the creation; each round updates every record once or twice.
    pub rounds: usize,
    /// Share of records deleted at the end.
    pub delete_share: f64,
    /// Sales-rep edits: half of an app-owned field (conflicts), half of a CRM-owned one.
    pub rep_edits: usize,
    /// Emails reps edit once the app is quiet: drift the reconciliation must heal.
    pub late_rep_edits: usize,
    /// Messages that break the contract, dead-lettered on purpose.
    pub invalid: usize,
    /// Share of changes the app sends twice.
    pub duplicate_share: f64,
    pub crm_error_rate: f64,
    pub crm_timeout_rate: f64,
    pub crash_rate: f64,
    pub seed: u64,
    /// How long each wait for the queues to drain may take.
    pub drain_timeout: Duration,
}

impl Plan {
    /// The size the test suite runs.
    pub fn small() -> Self {
        Plan {
            records: 60,
            rounds: 3,
            delete_share: 0.1,
            rep_edits: 12,
            late_rep_edits: 3,
            invalid: 4,
            duplicate_share: 0.1,
            crm_error_rate: 0.15,
            crm_timeout_rate: 0.05,
            crash_rate: 0.3,
            seed: 7,
            // A bound that only keeps a stuck run from hanging: alone the drains take about
            // 100 s here, beside the whole suite on two cores once up to 407 s.
            drain_timeout: Duration::from_secs(480),
        }
    }
}

/// What happened, and what was found wrong.
#[derive(Debug, Default)]
pub struct Tally {
    pub changes_sent: usize,
    pub duplicates_sent: usize,
    pub invalid_sent: usize,
    pub deletes_sent: usize,
    pub rep_edits_app_owned: usize,
    pub rep_edits_crm_owned: usize,
    pub crm_calls: u64,
    pub crm_errors_injected: u64,
    pub crm_timeouts_injected: u64,
    pub crm_throttled_burst: u64,
    pub crm_throttled_daily: u64,
    pub invocations_crashed: u64,
    pub webhook_deliveries: u64,
    pub webhook_duplicates: u64,
    pub redriven: usize,
    pub reconcile_checked: u64,
    pub reconcile_healed: u64,
    /// App-owned fields a rep changed and no later app change overwrote: what the reconciliation
    /// must heal.
    pub rep_drift_to_heal: usize,
    pub conflicts_journaled: usize,
    /// Entries in the conflict journals, all records: each must be a rep's edit.
    pub conflict_entries: usize,
    pub inbox_messages: usize,
    pub inbox_repeats: usize,
    pub dead_letters_left: usize,
    pub records_checked: usize,
    pub seconds: f64,
    /// Everything that broke a guarantee; empty when the run passed.
    pub problems: Vec<String>,
    /// For the first records a problem names: their sync state, timeline and CRM record.
    pub diagnoses: Vec<String>,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, String); 26] = [
            ("app changes sent", self.changes_sent.to_string()),
            ("  of which sent twice", self.duplicates_sent.to_string()),
            ("  of which deletes", self.deletes_sent.to_string()),
            ("invalid messages sent", self.invalid_sent.to_string()),
            (
                "rep edits of app-owned fields",
                self.rep_edits_app_owned.to_string(),
            ),
            (
                "rep edits of CRM-owned fields",
                self.rep_edits_crm_owned.to_string(),
            ),
            ("CRM calls", self.crm_calls.to_string()),
            ("  5xx injected", self.crm_errors_injected.to_string()),
            ("  timeouts injected", self.crm_timeouts_injected.to_string()),
            ("  429 burst", self.crm_throttled_burst.to_string()),
            ("  429 daily", self.crm_throttled_daily.to_string()),
            ("sync invocations crashed", self.invocations_crashed.to_string()),
            ("webhook deliveries", self.webhook_deliveries.to_string()),
            ("  posted twice", self.webhook_duplicates.to_string()),
            ("dead letters redriven", self.redriven.to_string()),
            ("reconciliation: checked", self.reconcile_checked.to_string()),
            ("rep drift to heal, before it", self.rep_drift_to_heal.to_string()),
            ("reconciliation: healed", self.reconcile_healed.to_string()),
            (
                "rep edits journaled as conflicts",
                self.conflicts_journaled.to_string(),
            ),
            ("conflict entries, all records", self.conflict_entries.to_string()),
            ("app-inbox messages", self.inbox_messages.to_string()),
            ("  repeats (same event key)", self.inbox_repeats.to_string()),
            ("dead letters left", self.dead_letters_left.to_string()),
            ("records checked", self.records_checked.to_string()),
            ("seconds", format!("{:.1}", self.seconds)),
            ("problems", self.problems.len().to_string()),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<32} {value:>10}")?;
        }
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        for diagnosis in &self.diagnoses {
            writeln!(f, "{diagnosis}")?;
        }
        Ok(())
    }
}

/// The app's side: each record's latest values, or `None` once deleted.
struct AppModel {
    latest: BTreeMap<String, Option<Value>>,
    /// Deal `d{r}` of contact `c{r}` → its latest values (deals are never deleted).
    deals: BTreeMap<String, Value>,
    /// Activity `a{r}` → the contact it is logged on.
    activities: BTreeMap<String, String>,
    next_id: u64,
}

impl AppModel {
    fn change(&mut self, record: &str, at: i64, data: Option<Value>) -> Value {
        self.next_id += 1;
        self.latest.insert(record.to_string(), data.clone());
        let mut message = json!({
            "version": 1,
            "type": if data.is_some() { "contact.upsert" } else { "contact.delete" },
            "record_id": record,
            "idempotency_id": format!("chaos-{}", self.next_id),
            "changed_at": at,
        });
        if let Some(data) = data {
            message["data"] = data;
        }
        message
    }

    fn deal_change(&mut self, r: usize, at: i64, data: Value) -> Value {
        self.next_id += 1;
        self.deals.insert(format!("d{r}"), data.clone());
        json!({
            "version": 1, "type": "deal.upsert", "record_id": format!("d{r}"),
            "idempotency_id": format!("chaos-{}", self.next_id), "changed_at": at,
            "contact_record_id": format!("c{r}"), "data": data,
        })
    }

    fn activity(&mut self, r: usize, at: i64) -> Value {
        self.next_id += 1;
        self.activities.insert(format!("a{r}"), format!("c{r}"));
        json!({
            "version": 1, "type": "activity.log", "record_id": format!("a{r}"),
            "idempotency_id": format!("chaos-{}", self.next_id), "changed_at": at,
            "contact_record_id": format!("c{r}"),
            "data": {"body": format!("Called contact {r}"), "occurred_at": "2026-11-27T10:00:00Z"},
        })
    }
}

fn deal_values(record: usize, version: usize) -> Value {
    json!({"name": format!("Deal{record}v{version}"), "amount": (version as u64 + 1) * 100})
}

const DEAL_STAGES: [&str; 3] = ["qualifiedtobuy", "contractsent", "closedwon"];

fn values(record: usize, version: usize) -> Value {
    json!({
        "email": format!("r{record}.v{version}@example.com"),
        "phone": format!("+1 555 {record:04} {version:02}"),
        "first_name": format!("Name{record}v{version}"),
    })
}

const LIFECYCLE: [&str; 4] = ["lead", "opportunity", "customer", "evangelist"];

/// Starts a stack made for chaos: short leases, retries and backoff caps, so that a run takes
/// minutes; small batches; and one reconciliation segment, so that one run checks every record.
pub async fn chaos_app() -> TestApp {
    let mut options = AppOptions::syncing().with_webhooks();
    options.fault_proxy = false;
    // Small batches: more invocations and CRM calls for the faults and crashes to hit, as when
    // changes trickle in.
    options
        .parameters
        .insert("SyncBatchSize".to_string(), "10".to_string());
    for (name, value) in [
        ("SYNC_LEASE_SECONDS", "10"),
        ("SYNC_RETRY_CAP_SECONDS", "4"),
        ("SYNC_CRM_TIMEOUT_SECONDS", "3"),
        ("RECONCILE_CYCLE_NIGHTS", "1"),
    ] {
        options = options.with_env(name, value);
    }
    spawn_app_with(options).await
}

/// Runs the scenario on `app` (from [`chaos_app`]) and checks every guarantee.
pub async fn run(app: &TestApp, plan: &Plan) -> Tally {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut tally = Tally::default();
    let sandbox = app.sandbox();
    // The app's versions are moments of its own past: the rounds step 10 s apart and the
    // deletes come 1,000 s after the start, all still behind now, as crm-sync refuses changes
    // dated further ahead than its allowed clock skew.
    let base_ms = crate::hubspot::now_ms() - 1_800_000;
    let mut model = AppModel {
        latest: BTreeMap::new(),
        deals: BTreeMap::new(),
        activities: BTreeMap::new(),
        next_id: 0,
    };

    sandbox.set_faults(Faults {
        error_rate: plan.crm_error_rate,
        timeout_rate: plan.crm_timeout_rate,
        // Longer than the sync function's CRM timeout: a real client-side timeout.
        timeout_ms: 4_000,
        seed: Some(plan.seed),
        ..sandbox.faults()
    });
    sandbox.set_webhooks(WebhookSettings {
        duplicate_rate: 0.2,
        reorder_ms: 800,
        ..sandbox.webhooks()
    });
    app.stack.crashes.set(Crashes {
        rate: plan.crash_rate,
        within: Duration::from_millis(1_500),
        return_after: Duration::from_secs(2),
    });

    let send = |messages: Vec<Value>, rng: &mut fastrand::Rng, tally: &mut Tally| {
        let mut batch = messages;
        let repeats: Vec<Value> = batch
            .iter()
            .filter(|_| rng.f64() < plan.duplicate_share)
            .cloned()
            .collect();
        tally.changes_sent += batch.len();
        tally.duplicates_sent += repeats.len();
        batch.extend(repeats);
        rng.shuffle(&mut batch);
        batch
    };

    // Creation, then update rounds sent straight after, each record sometimes twice in a round
    // (two changes a millisecond apart, in either order).
    let mut version = vec![0usize; plan.records];
    // Each contact comes with a deal, and every fifth with a logged call, all in one shuffle: a
    // deal or an activity may arrive before its contact.
    let mut creations: Vec<Value> = (0..plan.records)
        .map(|r| model.change(&format!("c{r}"), base_ms, Some(values(r, 0))))
        .collect();
    for r in 0..plan.records {
        creations.push(model.deal_change(r, base_ms, deal_values(r, 0)));
        if r % 5 == 0 {
            creations.push(model.activity(r, base_ms));
        }
    }
    let batch = send(creations, &mut rng, &mut tally);
    app.send_changes(&batch).await;
    for round in 1..=plan.rounds {
        let mut messages = Vec::new();
        for (r, v) in version.iter_mut().enumerate() {
            let times = if rng.f64() < 0.3 { 2 } else { 1 };
            for _ in 0..times {
                *v += 1;
                let at = base_ms + (round as i64) * 10_000 + *v as i64;
                messages.push(model.change(&format!("c{r}"), at, Some(values(r, *v))));
                if rng.f64() < 0.5 {
                    messages.push(model.deal_change(r, at, deal_values(r, *v)));
                }
            }
        }
        let batch = send(messages, &mut rng, &mut tally);
        app.send_changes(&batch).await;
        if round == 1 {
            // A 429 storm.
            sandbox.set_faults(Faults {
                throttle_next: 40,
                ..sandbox.faults()
            });
        }
    }

    // Sales reps edit records the sync state knows in the CRM (not those about to be deleted).
    let deleted: HashSet<usize> = (0..plan.records)
        .filter(|_| rng.f64() < plan.delete_share)
        .collect();
    let store = app.sync_state();
    let mut app_owned_edits: Vec<(String, String)> = Vec::new();
    // Every stage each record was given, in order: the app may see any of them, and no other.
    let mut crm_owned_edits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + plan.drain_timeout;
    let mut edit = 0;
    while edit < plan.rep_edits && Instant::now() < deadline {
        let r = rng.usize(0..plan.records);
        if deleted.contains(&r) {
            continue;
        }
        let record = format!("c{r}");
        let reference = RecordRef {
            object: ObjectKind::Contact,
            record_id: record.clone(),
        };
        let known = match store.record(&reference, 1).await {
            Ok(Some((state, _))) => state.crm_id.filter(|_| state.status == SyncStatus::Synced),
            _ => None,
        };
        let Some(crm_id) = known.and_then(|id| id.parse::<u64>().ok()) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if edit % 3 == 2 {
            // A rep moves the record's deal to another stage (CRM-owned).
            let deal = format!("d{r}");
            let deal_reference = RecordRef {
                object: ObjectKind::Deal,
                record_id: deal.clone(),
            };
            let deal_crm = match store.record(&deal_reference, 1).await {
                Ok(Some((state, _))) => state.crm_id.and_then(|id| id.parse::<u64>().ok()),
                _ => None,
            };
            let Some(deal_crm) = deal_crm else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let stage = DEAL_STAGES[(edit / 3) % DEAL_STAGES.len()].to_string();
            let edited = sandbox.edit(
                "deals",
                deal_crm,
                BTreeMap::from([("dealstage".to_string(), stage.clone())]),
            );
            if edited.is_err() {
                continue;
            }
            crm_owned_edits.entry(deal).or_default().push(stage);
            edit += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let (property, value) = if edit % 3 == 0 {
            ("email", format!("rep-edit-{edit}@example.org"))
        } else {
            ("lifecyclestage", LIFECYCLE[edit % LIFECYCLE.len()].to_string())
        };
        let edited = sandbox.edit(
            "contacts",
            crm_id,
            BTreeMap::from([(property.to_string(), value.clone())]),
        );
        if edited.is_err() {
            continue;
        }
        if property == "email" {
            app_owned_edits.push((record, value));
        } else {
            crm_owned_edits.entry(record).or_default().push(value);
        }
        edit += 1;
        // Two edits of one record never share a millisecond.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally.rep_edits_app_owned = app_owned_edits.len();
    tally.rep_edits_crm_owned = edit - app_owned_edits.len();

    // Another app spends the day's budget; the sandbox's day turns a few seconds later.
    let faults = sandbox.faults();
    sandbox.set_faults(Faults {
        day_ms: 6_000,
        daily_used: faults.daily_limit,
        ..faults
    });

    // Deletes, and messages that break the contract.
    let mut last = Vec::new();
    for r in &deleted {
        let at = base_ms + 1_000_000;
        last.push(model.change(&format!("c{r}"), at, None));
        tally.deletes_sent += 1;
    }
    let batch = send(last, &mut rng, &mut tally);
    let invalid: Vec<Value> = (0..plan.invalid)
        .map(|n| {
            json!({"version": 1, "type": "contact.upsert", "record_id": format!("c{n}"),
                   "idempotency_id": format!("invalid-{n}"), "changed_at": base_ms,
                   "data": {"favourite_colour": "green"}})
        })
        .collect();
    tally.invalid_sent = invalid.len();
    app.send_changes(&batch).await;
    app.send_changes(&invalid).await;

    // Drain with the faults still on, then without crashes: an operator redrives the DLQs.
    quiet(app, plan.drain_timeout, &mut tally).await;
    app.stack.crashes.set(Crashes::default());
    sandbox.set_faults(Faults {
        error_rate: 0.0,
        timeout_rate: 0.0,
        ..sandbox.faults()
    });
    for (dlq, source) in [
        ("OutboundDeadLetterQueue", "OutboundQueue"),
        ("InboundDeadLetterQueue", "InboundQueue"),
    ] {
        tally.redriven += app.redrive(dlq, source).await;
    }
    quiet(app, plan.drain_timeout, &mut tally).await;

    // Once the app is quiet, reps edit a few emails more: no app change overwrites these, so they
    // stay in the CRM until the reconciliation heals them.
    let mut late = 0;
    for r in (0..plan.records).filter(|r| !deleted.contains(r)) {
        if late == plan.late_rep_edits {
            break;
        }
        let record = format!("c{r}");
        let reference = RecordRef {
            object: ObjectKind::Contact,
            record_id: record.clone(),
        };
        let Ok(Some((state, _))) = store.record(&reference, 1).await else {
            continue;
        };
        let Some(crm_id) = state.crm_id.and_then(|id| id.parse::<u64>().ok()) else {
            continue;
        };
        let value = format!("rep-late-{late}@example.org");
        let edited = sandbox.edit(
            "contacts",
            crm_id,
            BTreeMap::from([("email".to_string(), value.clone())]),
        );
        if edited.is_ok() {
            app_owned_edits.push((record, value));
            late += 1;
        }
    }
    tally.rep_edits_app_owned = app_owned_edits.len();
    quiet(app, plan.drain_timeout, &mut tally).await;
    check_before_reconciliation(app, &model, &app_owned_edits, &mut tally);
    // Tonight's reconciliation heals the drift the reps left in app-owned fields.
    let report = app
        .stack
        .reconcile
        .run_until(tokio::time::Instant::now() + Duration::from_secs(120))
        .await;
    match report {
        Ok(report) => {
            tally.reconcile_checked = report.checked;
            tally.reconcile_healed = report.healed;
            if report.healed > tally.rep_drift_to_heal as u64 {
                tally.problems.push(format!(
                    "the reconciliation healed {} fields, but only {} were reps' edits: it hid lost updates",
                    report.healed, tally.rep_drift_to_heal
                ));
            }
            if report.finished_at_ms.is_none() {
                tally
                    .problems
                    .push(format!("the reconciliation did not finish: {:?}", report.stopped));
            }
        }
        Err(error) => tally
            .problems
            .push(format!("the reconciliation failed: {error:#}")),
    }
    quiet(app, plan.drain_timeout, &mut tally).await;

    check(app, &model, &app_owned_edits, &crm_owned_edits, plan, &mut tally).await;
    let stats = sandbox.stats();
    tally.crm_calls = stats.total_calls;
    tally.crm_errors_injected = stats.injected_errors;
    tally.crm_timeouts_injected = stats.injected_timeouts;
    tally.crm_throttled_burst = stats.throttled_burst;
    tally.crm_throttled_daily = stats.throttled_daily;
    tally.invocations_crashed = app.stack.crashes.crashed();
    let webhooks = sandbox.webhook_stats();
    tally.webhook_deliveries = webhooks.deliveries;
    tally.webhook_duplicates = webhooks.duplicates_sent;
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

/// The app-owned fields whose CRM value is not the app's latest: (field, CRM's, app's).
fn differences(data: &Value, crm: &hubspot_sandbox::Record) -> Vec<(&'static str, String, String)> {
    [
        ("email", "email"),
        ("phone", "phone"),
        ("first_name", "firstname"),
    ]
    .into_iter()
    .filter_map(|(field, property)| {
        let want = data[field].as_str().unwrap_or_default();
        let have = crm
            .properties
            .get(property)
            .map(String::as_str)
            .unwrap_or_default();
        (want != have).then(|| (field, have.to_string(), want.to_string()))
    })
    .collect()
}

/// A deal's app-owned fields whose CRM value is not the app's latest: (field, what differs).
fn deal_differences(data: &Value, crm: &hubspot_sandbox::Record) -> Vec<(&'static str, String)> {
    let name = data["name"].as_str().unwrap_or_default().to_string();
    let amount = data["amount"].to_string();
    [("name", "dealname", name), ("amount", "amount", amount)]
        .into_iter()
        .filter_map(|(field, property, want)| {
            let have = crm.properties.get(property).cloned().unwrap_or_default();
            (have != want).then(|| (field, format!("the CRM has `{have}`, the app `{want}`")))
        })
        .collect()
}

/// Before the reconciliation: the only app-owned values the CRM may hold that are not the app's
/// latest are reps' edits, which the reconciliation heals. Anything else is an app update the
/// sync lost, and the reconciliation must not be what hides it.
fn check_before_reconciliation(
    app: &TestApp,
    model: &AppModel,
    app_owned_edits: &[(String, String)],
    tally: &mut Tally,
) {
    for (deal, data) in &model.deals {
        if let Some(crm) = app.sandbox().find("deals", "crm_sync_app_id", deal) {
            for (field, what) in deal_differences(data, &crm) {
                tally.problems.push(format!(
                    "before the reconciliation, {deal}.{field}: {what} (a lost update)"
                ));
            }
        }
    }
    for (record, latest) in &model.latest {
        let (Some(data), Some(crm)) = (latest, app.sandbox().find("contacts", "crm_sync_app_id", record))
        else {
            continue;
        };
        for (field, have, want) in differences(data, &crm) {
            let a_rep_edit = field == "email"
                && app_owned_edits
                    .iter()
                    .any(|(edited, value)| edited == record && *value == have);
            if a_rep_edit {
                tally.rep_drift_to_heal += 1;
            } else {
                tally.problems.push(format!(
                    "before the reconciliation, {record}.{field}: the CRM has `{have}`, the app `{want}` (a lost update)"
                ));
            }
        }
    }
}

/// Waits until no queue holds a message (visible, in flight or delayed) and the sandbox has no
/// webhook left to post, three polls in a row.
async fn quiet(app: &TestApp, timeout: Duration, tally: &mut Tally) {
    let queues = ["OutboundQueue", "InboundQueue", "ResyncQueue", "ReconcileQueue"];
    let deadline = Instant::now() + timeout;
    let mut calm = 0;
    while calm < 3 {
        if Instant::now() > deadline {
            tally
                .problems
                .push(format!("the queues did not drain within {} s", timeout.as_secs()));
            return;
        }
        let mut busy = app.sandbox().pending_webhooks() > 0;
        for queue in queues {
            busy |= depth(app, queue).await > 0;
        }
        calm = if busy { 0 } else { calm + 1 };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn depth(app: &TestApp, queue: &str) -> u64 {
    let attributes = app
        .sqs
        .get_queue_attributes()
        .queue_url(&app.stack.resources.queue(queue).url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("moto answers");
    attributes
        .attributes()
        .map(|values| {
            values
                .values()
                .filter_map(|count| count.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

async fn check(
    app: &TestApp,
    model: &AppModel,
    app_owned_edits: &[(String, String)],
    crm_owned_edits: &BTreeMap<String, Vec<String>>,
    plan: &Plan,
    tally: &mut Tally,
) {
    let sandbox = app.sandbox();
    let store = app.sync_state();

    // The CRM holds each live record once, with the app's latest values; deleted ones archived.
    let mut per_app_id: HashMap<String, usize> = HashMap::new();
    for record in sandbox.all_records("contacts") {
        if let Some(id) = record.properties.get("crm_sync_app_id") {
            *per_app_id.entry(id.clone()).or_default() += 1;
        }
    }
    for (id, count) in &per_app_id {
        if *count > 1 {
            tally.problems.push(format!("{id} is in the CRM {count} times"));
        }
    }
    for (record, latest) in &model.latest {
        tally.records_checked += 1;
        let live = sandbox.find("contacts", "crm_sync_app_id", record);
        match (latest, live) {
            (None, Some(crm)) => tally.problems.push(format!(
                "{record} was deleted in the app but is live in the CRM ({})",
                crm.id
            )),
            (Some(_), None) => tally.problems.push(format!("{record} is missing from the CRM")),
            (Some(data), Some(crm)) => {
                for (field, have, want) in differences(data, &crm) {
                    tally.problems.push(format!(
                        "{record}.{field}: the CRM has `{have}`, the app `{want}`"
                    ));
                }
            }
            (None, None) => {}
        }
        let reference = RecordRef {
            object: ObjectKind::Contact,
            record_id: record.clone(),
        };
        let want = if latest.is_some() {
            SyncStatus::Synced
        } else {
            SyncStatus::Deleted
        };
        match store.record(&reference, 1).await {
            Ok(Some((state, _))) if state.status == want => {}
            Ok(Some((state, _))) => tally.problems.push(format!(
                "{record} is {} (want {}): {}",
                state.status.as_str(),
                want.as_str(),
                state.last_error.unwrap_or_default()
            )),
            Ok(None) => tally.problems.push(format!("{record} has no sync state")),
            Err(error) => tally.problems.push(format!("{record}: {error}")),
        }
    }

    // Every rep edit of an app-owned field is journaled with the CRM's value.
    let events = if app_owned_edits.is_empty() {
        Vec::new()
    } else {
        app.webhook_events().await
    };
    for (record, value) in app_owned_edits {
        let reference = RecordRef {
            object: ObjectKind::Contact,
            record_id: record.clone(),
        };
        let conflicts = store.conflicts(&reference, 100).await.unwrap_or_default();
        if conflicts.iter().any(|c| &c.crm_value == value) {
            tally.conflicts_journaled += 1;
        } else {
            // What became of the event that carried it, to tell where it went.
            let fate: Vec<String> = events
                .iter()
                .filter(|(_, _, _, event)| event["propertyValue"] == value.as_str())
                .map(|(key, status, detail, _)| format!("{key}: {status} ({detail})"))
                .collect();
            tally.problems.push(format!(
                "{record}: the rep's email `{value}` was not journaled as a conflict; its events: {fate:?}"
            ));
        }
    }

    // Each deal is in the CRM once, with the app's latest values, linked to its contact; each
    // activity is one note on its contact.
    for (deal, data) in &model.deals {
        tally.records_checked += 1;
        let copies: Vec<_> = sandbox
            .all_records("deals")
            .into_iter()
            .filter(|record| record.properties.get("crm_sync_app_id") == Some(deal))
            .collect();
        let Some(crm) = copies.first() else {
            tally.problems.push(format!("{deal} is missing from the CRM"));
            continue;
        };
        if copies.len() > 1 {
            tally
                .problems
                .push(format!("{deal} is in the CRM {} times", copies.len()));
        }
        for (field, what) in deal_differences(data, crm) {
            tally.problems.push(format!("{deal}.{field}: {what}"));
        }
        let contact = deal.replacen('d', "c", 1);
        if let Some(contact_crm) = sandbox.find("contacts", "crm_sync_app_id", &contact) {
            if !sandbox
                .associations("deals", crm.id)
                .iter()
                .any(|(object, id)| object == "contacts" && *id == contact_crm.id)
            {
                tally.problems.push(format!("{deal} is not linked to {contact}"));
            }
        }
        let reference = RecordRef {
            object: ObjectKind::Deal,
            record_id: deal.clone(),
        };
        match store.record(&reference, 1).await {
            Ok(Some((state, _))) if state.status == SyncStatus::Synced => {}
            other => tally.problems.push(format!(
                "{deal} is not synced: {:?}",
                other.map(|found| found.map(|(state, _)| (state.status, state.last_error)))
            )),
        }
    }
    for (activity, contact) in &model.activities {
        tally.records_checked += 1;
        let notes: Vec<_> = sandbox
            .all_records("notes")
            .into_iter()
            .filter(|record| record.properties.get("crm_sync_app_id") == Some(activity))
            .collect();
        match notes.as_slice() {
            [note] => {
                let linked = sandbox
                    .find("contacts", "crm_sync_app_id", contact)
                    .is_none_or(|contact| {
                        sandbox
                            .associations("notes", note.id)
                            .iter()
                            .any(|(object, id)| object == "contacts" && *id == contact.id)
                    });
                if !linked {
                    tally
                        .problems
                        .push(format!("{activity} is not linked to {contact}"));
                }
            }
            notes => tally
                .problems
                .push(format!("{activity} is in the CRM {} times", notes.len())),
        }
    }

    // The journal holds only real edits by someone else: a rep's value of that record's email.
    let mut journaled = 0;
    for record in model.latest.keys() {
        let reference = RecordRef {
            object: ObjectKind::Contact,
            record_id: record.clone(),
        };
        for conflict in store.conflicts(&reference, 100).await.unwrap_or_default() {
            journaled += 1;
            let a_rep_edit = app_owned_edits
                .iter()
                .any(|(edited, value)| edited == record && *value == conflict.crm_value);
            if !a_rep_edit {
                tally.problems.push(format!(
                    "{record}: a conflict that is no rep's edit: {} = {:?} from {} (event {})",
                    conflict.field, conflict.crm_value, conflict.source, conflict.event_key
                ));
            }
        }
    }
    // No rep edits a deal's app-owned fields: any conflict there is crm-sync's own echo.
    for deal in model.deals.keys() {
        let reference = RecordRef {
            object: ObjectKind::Deal,
            record_id: deal.clone(),
        };
        for conflict in store.conflicts(&reference, 100).await.unwrap_or_default() {
            journaled += 1;
            tally.problems.push(format!(
                "{deal}: a conflict that is no rep's edit: {} = {:?} from {} (event {})",
                conflict.field, conflict.crm_value, conflict.source, conflict.event_key
            ));
        }
    }
    tally.conflict_entries = journaled;

    // The app inbox holds the reps' stages and nothing else (repeats of one event allowed), and
    // the newest, by (occurred_at_ms, sequence), is the last one a rep set.
    let inbox = app.drain_app_inbox().await;
    tally.inbox_messages = inbox.len();
    let keys: HashSet<&str> = inbox.iter().filter_map(|m| m["event_key"].as_str()).collect();
    tally.inbox_repeats = inbox.len() - keys.len();
    for message in &inbox {
        let record = message["record_id"].as_str().unwrap_or_default();
        let set_by_reps = crm_owned_edits.get(record);
        let owned_field = if record.starts_with('d') {
            "stage"
        } else {
            "lifecycle_stage"
        };
        let expected = message["changes"].as_object().is_some_and(|changes| {
            changes.iter().all(|(field, value)| {
                field == owned_field
                    && set_by_reps.is_some_and(|values| values.iter().any(|v| value == v.as_str()))
            })
        });
        if !expected {
            tally
                .problems
                .push(format!("{record}: the app inbox got what no rep set: {message}"));
        }
    }
    for (record, values) in crm_owned_edits {
        let owned_field = if record.starts_with('d') {
            "stage"
        } else {
            "lifecycle_stage"
        };
        let newest = inbox
            .iter()
            .filter(|m| m["record_id"] == record.as_str() && m["changes"][owned_field].is_string())
            .max_by_key(|m| (m["occurred_at_ms"].as_i64(), m["sequence"].as_u64()));
        let delivered = newest.and_then(|m| m["changes"][owned_field].as_str());
        let last = values.last().map(String::as_str);
        if delivered != last {
            tally.problems.push(format!(
                "{record}: the app inbox's newest {owned_field} is {delivered:?}, the rep set {last:?} last"
            ));
        }
    }

    // Only the deliberately invalid messages are dead-lettered.
    for dlq in [
        "OutboundDeadLetterQueue",
        "InboundDeadLetterQueue",
        "AppInboxDeadLetterQueue",
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for (body, attributes) in app.drain_dead_letters(dlq).await {
            // A crash after dead-lettering and before the delete repeats the dead letter, with
            // its idempotency id: one change, which a redrive applies once.
            if !seen.insert(body["idempotency_id"].to_string()) {
                continue;
            }
            tally.dead_letters_left += 1;
            let on_purpose = dlq == "OutboundDeadLetterQueue"
                && body["idempotency_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("invalid-"));
            if !on_purpose {
                tally
                    .problems
                    .push(format!("{dlq} holds {body} ({attributes:?})"));
            }
        }
    }
    diagnose(app, tally).await;
    if tally.dead_letters_left < plan.invalid {
        tally.problems.push(format!(
            "{} invalid messages were sent, {} were dead-lettered",
            plan.invalid, tally.dead_letters_left
        ));
    }
}

/// Describes the first records the problems name (`c12`, `d12`, `a10`): their state, newest timeline entries,
/// conflicts and CRM record, so that a failed run says what happened to them.
async fn diagnose(app: &TestApp, tally: &mut Tally) {
    let mut named: Vec<String> = Vec::new();
    for problem in &tally.problems {
        let Some(record) = problem.split(|c: char| !c.is_ascii_alphanumeric()).find(|word| {
            word.len() > 1
                && (word.starts_with('c') || word.starts_with('d') || word.starts_with('a'))
                && word[1..].bytes().all(|b| b.is_ascii_digit())
        }) else {
            continue;
        };
        if !named.iter().any(|known| known == record) {
            named.push(record.to_string());
        }
    }
    let store = app.sync_state();
    for record in named.into_iter().take(5) {
        let (object, crm_object) = match record.as_bytes()[0] {
            b'd' => (ObjectKind::Deal, "deals"),
            b'a' => (ObjectKind::Activity, "notes"),
            _ => (ObjectKind::Contact, "contacts"),
        };
        let reference = RecordRef {
            object,
            record_id: record.clone(),
        };
        let mut lines = vec![format!("{record}:")];
        match store.record(&reference, 12).await {
            Ok(Some((state, timeline))) => {
                lines.push(format!(
                    "  state: {} crm id {:?}, applied version {:?} ({:?}), written {:?}, error {:?}",
                    state.status.as_str(),
                    state.crm_id,
                    state.applied_version_ms,
                    state.applied_idempotency_id,
                    state.written,
                    state.last_error
                ));
                for entry in timeline {
                    lines.push(format!(
                        "  {} {} {} {}",
                        entry.at_ms,
                        entry.kind.as_str(),
                        entry.idempotency_id.unwrap_or_default(),
                        entry.detail
                    ));
                }
            }
            other => lines.push(format!("  state: {other:?}")),
        }
        for conflict in store.conflicts(&reference, 5).await.unwrap_or_default() {
            lines.push(format!(
                "  conflict {} = {:?} from {} ({})",
                conflict.field, conflict.crm_value, conflict.source, conflict.event_key
            ));
        }
        let crm = app.sandbox().find(crm_object, "crm_sync_app_id", &record);
        lines.push(format!("  CRM: {:?}", crm.map(|r| (r.id, r.properties))));
        tally.diagnoses.push(lines.join("\n"));
    }
}
