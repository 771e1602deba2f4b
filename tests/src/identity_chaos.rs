//! The identity chaos scenario: people merge contacts in HubSpot (into their own entries, in
//! chains, two app records into one), archive and restore a merge's survivor and move lifecycle
//! stages, while the app's updates are in flight, the CRM fails and times out calls, and webhooks
//! arrive twice and out of order. Afterwards every app record must be on a live CRM record,
//! no CRM record may have been created twice, the last app change of every record that writes
//! must be on its CRM record, the held ones must be held, and every merge must have reached the
//! app once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync::ports::state::*;
use hubspot_sandbox::{Faults, WebhookSettings};
use serde_json::{json, Value};

use crate::app_changes::contact;
use crate::TestApp;

/// How big and how hostile a run is.
#[derive(Debug, Clone)]
pub struct IdentityPlan {
    pub contacts: usize,
    pub crm_error_rate: f64,
    pub crm_timeout_rate: f64,
    pub seed: u64,
    pub drain_timeout: Duration,
}

impl IdentityPlan {
    pub fn small() -> Self {
        Self {
            contacts: 24,
            crm_error_rate: 0.2,
            crm_timeout_rate: 0.05,
            seed: 7,
            drain_timeout: Duration::from_secs(180),
        }
    }
}

/// What happened, and what was found wrong.
#[derive(Debug, Default)]
pub struct IdentityTally {
    pub merges: usize,
    pub chained: usize,
    pub app_pairs: usize,
    pub restores: usize,
    pub rep_stage_moves: usize,
    pub updates_sent: usize,
    pub crm_calls: u64,
    pub crm_errors_injected: u64,
    pub crm_timeouts_injected: u64,
    pub webhook_duplicates: u64,
    pub merged_messages: usize,
    pub restored_messages: usize,
    pub live_contacts: usize,
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl fmt::Display for IdentityTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("merges made by people", self.merges),
            ("  of which onto a merge survivor", self.chained),
            ("  of which of two app records", self.app_pairs),
            ("survivors archived and restored", self.restores),
            ("lifecycle stages moved by people", self.rep_stage_moves),
            ("app updates sent", self.updates_sent),
            ("CRM calls under faults", self.crm_calls as usize),
            ("5xx injected", self.crm_errors_injected as usize),
            ("timeouts injected", self.crm_timeouts_injected as usize),
            ("webhooks posted twice", self.webhook_duplicates as usize),
            ("crm.merged messages", self.merged_messages),
            ("crm.restored messages", self.restored_messages),
            ("live CRM contacts", self.live_contacts),
            ("problems", self.problems.len()),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<34} {value:>8}")?;
        }
        writeln!(f, "{:<34} {:>8.1}", "seconds", self.seconds)?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.into(),
    }
}

fn last_name(record: usize, version: usize) -> String {
    format!("L{record}v{version}")
}

fn update(record: usize, version: usize, at_ms: i64) -> Value {
    contact(
        &format!("c{record}"),
        at_ms,
        json!({"email": format!("c{record}@example.com"), "last_name": last_name(record, version)}),
    )
}

/// Runs the scenario on `app` (from [`crate::chaos::chaos_app`]) and checks every guarantee.
///
/// Long on purpose: the scenario's acts (create, update while merging, restore, move stages,
/// update again) read in the order they happen.
pub async fn run(app: &TestApp, plan: &IdentityPlan) -> IdentityTally {
    let started = Instant::now();
    let mut tally = IdentityTally::default();
    let sandbox = app.sandbox();
    let base_ms = crate::hubspot::now_ms() - 600_000;
    let n = plan.contacts;
    assert!(n >= 18, "the scenario needs 18 contacts at least");

    // Each app contact exists in HubSpot, and so does a rep's own entry for half of them.
    let creations: Vec<Value> = (0..n).map(|r| update(r, 0, base_ms)).collect();
    app.send_changes(&creations).await;
    for r in 0..n {
        app.applied(contact_ref(&format!("c{r}")), base_ms).await;
    }
    let reps: Vec<u64> = (0..n / 2)
        .map(|r| {
            sandbox
                .create(
                    "contacts",
                    [("email".to_string(), format!("rep{r}@work.example"))].into(),
                )
                .expect("a contact HubSpot takes")
                .id
        })
        .collect();
    app.webhooks_settled(|| sandbox.pending_webhooks()).await;
    app.drain_app_inbox().await;
    let before = sandbox.records("contacts").len();

    let calls_before = sandbox.stats().total_calls;
    sandbox.set_faults(Faults {
        error_rate: plan.crm_error_rate,
        timeout_rate: plan.crm_timeout_rate,
        timeout_ms: 4_000,
        seed: Some(plan.seed),
        ..sandbox.faults()
    });
    sandbox.set_webhooks(WebhookSettings {
        duplicate_rate: 0.4,
        reorder_ms: 800,
        ..sandbox.webhooks()
    });

    // Round 1 goes out, and people merge while it is in flight.
    let round = |version: usize, tally: &mut IdentityTally| -> Vec<Value> {
        tally.updates_sent += n;
        (0..n)
            .map(|r| update(r, version, base_ms + version as i64 * 10_000))
            .collect()
    };
    app.send_changes(&round(1, &mut tally)).await;
    let crm_id = |record: usize| {
        sandbox
            .find("contacts", "crm_sync_app_id", &format!("c{record}"))
            .expect("the contact is in HubSpot")
            .id
    };
    let merge = |primary: u64, secondary: u64, tally: &mut IdentityTally| -> u64 {
        tally.merges += 1;
        sandbox
            .merge("contacts", primary, secondary)
            .expect("a merge HubSpot takes")
            .id
    };
    // c0..c5 into reps' entries; c0's and c1's survivors then into two more entries (chains).
    let mut survivor_of: BTreeMap<usize, u64> = BTreeMap::new();
    for (r, rep) in reps.iter().enumerate().take(6) {
        let id = crm_id(r);
        survivor_of.insert(r, merge(*rep, id, &mut tally));
    }
    for (r, rep) in [(0, reps[6]), (1, reps[7])] {
        tally.chained += 1;
        let id = survivor_of[&r];
        survivor_of.insert(r, merge(rep, id, &mut tally));
    }
    // Two app records each: the odd one moves onto the even one's and waits.
    let mut held: BTreeMap<usize, usize> = BTreeMap::new();
    for r in [12, 14, 16] {
        tally.app_pairs += 1;
        let (kept, gone) = (crm_id(r), crm_id(r + 1));
        let id = merge(kept, gone, &mut tally);
        survivor_of.insert(r, id);
        survivor_of.insert(r + 1, id);
        held.insert(r + 1, r);
    }
    // c8 and c9 into reps' entries, whose survivors are then archived and restored.
    for (r, rep) in [(8, reps[8]), (9, reps[9])] {
        let id = crm_id(r);
        let survivor = merge(rep, id, &mut tally);
        survivor_of.insert(r, survivor);
        sandbox.archive("contacts", survivor);
        assert!(sandbox.restore("contacts", survivor), "the survivor comes back");
        tally.restores += 1;
    }
    // People move lifecycle stages (CRM-owned) of two survivors, in the other direction.
    for r in [2, 3] {
        sandbox
            .edit(
                "contacts",
                survivor_of[&r],
                [("lifecyclestage".to_string(), "customer".to_string())].into(),
            )
            .expect("an edit HubSpot takes");
        tally.rep_stage_moves += 1;
    }
    // Round 2 while the merges' webhooks are on their way.
    app.send_changes(&round(2, &mut tally)).await;

    if !quiet(app, plan.drain_timeout).await {
        tally.problems.push(format!(
            "the queues did not drain within {} s",
            plan.drain_timeout.as_secs()
        ));
    }
    let stats = sandbox.stats();
    tally.crm_calls = stats.total_calls - calls_before;
    tally.crm_errors_injected = stats.injected_errors;
    tally.crm_timeouts_injected = stats.injected_timeouts;
    tally.webhook_duplicates = sandbox.webhook_stats().duplicates_sent;
    sandbox.set_faults(Faults {
        error_rate: 0.0,
        timeout_rate: 0.0,
        ..sandbox.faults()
    });
    check(app, plan, &survivor_of, &held, before, &mut tally).await;
    if std::env::var("IDENTITY_CHAOS_DEBUG").is_ok() {
        for (key, status, detail, _) in app.webhook_events().await {
            if key.contains("merge") || key.contains("restore") || key.contains("lifecyclestage") {
                println!("{key} {status} {detail}");
            }
        }
        println!("webhooks: {:?}", sandbox.webhook_stats());
    }
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

/// Waits until no queue holds a message and no webhook is on its way, three checks in a row.
async fn quiet(app: &TestApp, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut calm = 0;
    while calm < 3 {
        if Instant::now() > deadline {
            return false;
        }
        let mut busy = app.sandbox().pending_webhooks() > 0;
        for queue in ["OutboundQueue", "InboundQueue", "ResyncQueue"] {
            let (visible, in_flight, delayed) = app.queue_counts(queue).await.unwrap_or((1, 0, 0));
            busy |= visible + in_flight + delayed > 0;
        }
        calm = if busy { 0 } else { calm + 1 };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    true
}

/// The checks after the run: one problem line per broken guarantee.
///
/// Long on purpose: each guarantee's check, in the order the scenario states them.
async fn check(
    app: &TestApp,
    plan: &IdentityPlan,
    survivor_of: &BTreeMap<usize, u64>,
    held: &BTreeMap<usize, usize>,
    before: usize,
    tally: &mut IdentityTally,
) {
    let sandbox = app.sandbox();
    let live: BTreeMap<u64, hubspot_sandbox::Record> = sandbox
        .records("contacts")
        .into_iter()
        .map(|record| (record.id, record))
        .collect();
    tally.live_contacts = live.len();
    // Each merge turns two live contacts into one; nothing else may create or remove one.
    if live.len() != before - tally.merges {
        tally.problems.push(format!(
            "{} live contacts, expected {} ({} before, {} merges): a contact was created twice or lost",
            live.len(),
            before - tally.merges,
            before,
            tally.merges
        ));
    }
    let store = app.sync_state();
    for r in 0..plan.contacts {
        let record = contact_ref(&format!("c{r}"));
        let Some((state, _)) = store.record(&record, 1).await.ok().flatten() else {
            tally.problems.push(format!("c{r} has no sync state"));
            continue;
        };
        let Some(crm_id) = state.crm_id.as_deref().and_then(|id| id.parse::<u64>().ok()) else {
            tally.problems.push(format!("c{r} has no CRM id"));
            continue;
        };
        let Some(crm) = live.get(&crm_id) else {
            tally
                .problems
                .push(format!("c{r} points to CRM record {crm_id}, which is not alive"));
            continue;
        };
        if let Some(expected) = survivor_of.get(&r) {
            if crm_id != *expected {
                tally.problems.push(format!(
                    "c{r} is on CRM record {crm_id}, not on the survivor of its merges, {expected}"
                ));
            }
        }
        if let Some(owner) = held.get(&r) {
            if state.identity_conflict.is_none() {
                tally
                    .problems
                    .push(format!("c{r} shares c{owner}'s CRM record and is not held"));
            }
            let value = crm.properties.get("lastname").cloned().unwrap_or_default();
            if value != last_name(*owner, 2) {
                tally.problems.push(format!(
                    "the CRM record of c{owner} and c{r} holds last name {value:?}, not the owner's {:?}",
                    last_name(*owner, 2)
                ));
            }
            continue;
        }
        if state.status != SyncStatus::Synced || state.identity_conflict.is_some() {
            tally.problems.push(format!(
                "c{r} is {} (identity conflict: {:?}; error: {:?})",
                state.status.as_str(),
                state.identity_conflict,
                state.last_error
            ));
        }
        let value = crm.properties.get("lastname").cloned().unwrap_or_default();
        if value != last_name(r, 2) {
            tally.problems.push(format!(
                "c{r}'s CRM record {crm_id} holds last name {value:?}, not the latest {:?}",
                last_name(r, 2)
            ));
        }
    }
    let inbox = app.drain_app_inbox().await;
    let merged: Vec<&Value> = inbox.iter().filter(|m| m["type"] == "crm.merged").collect();
    // Delivery is at least once, a message's identity its event_key (the app-inbox contract):
    // a redelivery is no second merge.
    let distinct = |messages: Vec<&Value>| -> usize {
        messages
            .iter()
            .filter_map(|m| m["event_key"].as_str())
            .collect::<BTreeSet<&str>>()
            .len()
    };
    tally.merged_messages = merged.len();
    tally.restored_messages = distinct(inbox.iter().filter(|m| m["type"] == "crm.restored").collect());
    let keys: BTreeSet<&str> = merged.iter().filter_map(|m| m["event_key"].as_str()).collect();
    if keys.len() != tally.merges || merged.len() < tally.merges {
        tally.problems.push(format!(
            "{} merges reached the app as {} crm.merged messages of {} events",
            tally.merges,
            merged.len(),
            keys.len()
        ));
    }
    if tally.restored_messages != tally.restores {
        tally.problems.push(format!(
            "{} restores reached the app as {} crm.restored messages",
            tally.restores, tally.restored_messages
        ));
    }
    let stage_deliveries = distinct(
        inbox
            .iter()
            .filter(|m| m["type"] == "crm.change" && m["changes"]["lifecycle_stage"] == "customer")
            .collect(),
    );
    if stage_deliveries != tally.rep_stage_moves {
        tally.problems.push(format!(
            "{} lifecycle stages moved on merge survivors reached the app {} times",
            tally.rep_stage_moves, stage_deliveries
        ));
    }
}
