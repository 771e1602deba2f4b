//! Adoption day: what bringing an existing app and an existing CRM together does to each app
//! record, decided from what the CRM holds under the app's id and under the record's email.
//! Pure: the planner feeds it the records and the CRM's answers, and writes what it decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::contract::{Change, ObjectKind};
use super::crm::ValueKind;
use super::mapping::{ObjectMapping, Owner};
use super::values;

/// A CRM record found by one of its property values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub crm_id: String,
    /// CRM property → value, as read.
    pub values: BTreeMap<String, String>,
}

/// One app-owned field whose CRM value is not the app's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub crm_property: String,
    /// What the CRM holds (empty: nothing).
    pub in_crm: String,
    pub app: String,
}

/// What the backfill does with one app record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// No CRM record is the app record's: one is created.
    Create,
    /// The CRM record carrying the app's id is written where its app-owned fields differ.
    Update {
        crm_id: String,
        fields: Vec<FieldChange>,
    },
    /// The CRM record carrying the app's id already holds every app-owned value.
    Unchanged { crm_id: String },
    /// A CRM record without any app id holds the record's email: it is linked (the app's id
    /// written onto it), then written where its fields differ.
    Link {
        crm_id: String,
        fields: Vec<FieldChange>,
    },
    /// Not written: which CRM record is the app record's is for a person to say.
    Conflict { reason: String, crm_ids: Vec<String> },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update { .. } => "update",
            Action::Unchanged { .. } => "unchanged",
            Action::Link { .. } => "link",
            Action::Conflict { .. } => "conflict",
        }
    }

    /// The CRM record the app record is (or becomes) linked to, when known before the write.
    pub fn crm_id(&self) -> Option<&str> {
        match self {
            Action::Update { crm_id, .. } | Action::Unchanged { crm_id } | Action::Link { crm_id, .. } => {
                Some(crm_id)
            }
            Action::Create | Action::Conflict { .. } => None,
        }
    }
}

/// One line of a plan: an app record, what happens to it, and the CRM-owned values the app does
/// not have yet (the initial pull delivers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    /// The record's line in the input (1-based).
    pub line: u64,
    /// Its line in the plan file (1-based), set as the plan is read back: the backfill's
    /// progress counts in these, as the plan holds each object's batches together rather than
    /// in input order.
    #[serde(skip)]
    pub plan_line: u64,
    pub object: ObjectKind,
    pub record_id: String,
    #[serde(flatten)]
    pub action: Action,
    /// App field → the CRM's value, for CRM-owned fields the CRM holds a value of.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub crm_owned: BTreeMap<String, String>,
    /// The outbound-change message the backfill sends for it (contract v1).
    pub message: String,
}

/// Several app records of one object share an email: none of them may be linked or created by
/// it until a person says which is which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEmail {
    /// The other app records with the same email.
    pub others: Vec<String>,
}

/// The app field matched against CRM records without the app's id.
pub const MATCH_FIELD: &str = "email";

/// The lower-cased email an app record is matched by, when it has one.
pub fn match_key(change: &Change) -> Option<String> {
    change.search_email()
}

/// Decides what happens to `change`, from the CRM records carrying its app id (`by_id`) and those
/// holding its email (`by_email`, empty for objects without one). `shared` names other app
/// records of the input with the same email. `kinds` types the CRM's properties for comparing.
pub fn decide(
    mapping: &ObjectMapping,
    change: &Change,
    by_id: &[Found],
    by_email: &[Found],
    shared: Option<&SharedEmail>,
    kinds: &BTreeMap<String, ValueKind>,
) -> (Action, BTreeMap<String, String>) {
    let app_values = app_owned_values(mapping, change);
    // A record found by its email that carries this record's own id is the record found by id
    // (it was linked between the two lookups).
    let own: Vec<Found> = by_email
        .iter()
        .filter(|found| found.values.get(&mapping.id_property) == Some(&change.record_id))
        .cloned()
        .collect();
    let by_id = if by_id.is_empty() && !own.is_empty() {
        &own[..]
    } else {
        by_id
    };
    match by_id {
        [] => {}
        [found] => {
            let fields = differences(&app_values, found, kinds);
            let crm_owned = crm_owned_values(mapping, found);
            let crm_id = found.crm_id.clone();
            let action = if fields.is_empty() {
                Action::Unchanged { crm_id }
            } else {
                Action::Update { crm_id, fields }
            };
            return (action, crm_owned);
        }
        several => {
            return (
                Action::Conflict {
                    reason: format!("{} CRM records carry this app id", several.len()),
                    crm_ids: several.iter().map(|f| f.crm_id.clone()).collect(),
                },
                BTreeMap::new(),
            )
        }
    }
    if let Some(shared) = shared {
        return (
            Action::Conflict {
                reason: format!("app record(s) {} have the same email", shared.others.join(", ")),
                crm_ids: by_email.iter().map(|f| f.crm_id.clone()).collect(),
            },
            BTreeMap::new(),
        );
    }
    let held: Vec<&Found> = by_email
        .iter()
        .filter(|found| {
            found
                .values
                .get(&mapping.id_property)
                .is_some_and(|id| !id.trim().is_empty())
        })
        .collect();
    if let Some(other) = held.first() {
        return (
            Action::Conflict {
                reason: format!(
                    "the CRM record with this email is app record {}'s",
                    other.values[&mapping.id_property]
                ),
                crm_ids: by_email.iter().map(|f| f.crm_id.clone()).collect(),
            },
            BTreeMap::new(),
        );
    }
    match by_email {
        [] => (Action::Create, BTreeMap::new()),
        [found] => (
            Action::Link {
                crm_id: found.crm_id.clone(),
                fields: differences(&app_values, found, kinds),
            },
            crm_owned_values(mapping, found),
        ),
        several => (
            Action::Conflict {
                reason: format!("{} CRM records have this email", several.len()),
                crm_ids: several.iter().map(|f| f.crm_id.clone()).collect(),
            },
            BTreeMap::new(),
        ),
    }
}

/// App field → (CRM property, value as written) for the app-owned fields the change sets.
fn app_owned_values(mapping: &ObjectMapping, change: &Change) -> Vec<(String, String, String)> {
    let Ok(out) = mapping.outbound(change) else {
        return Vec::new();
    };
    mapping
        .fields
        .iter()
        .filter(|(_, rule)| rule.owner == Owner::App)
        .filter_map(|(field, rule)| {
            let value = out.properties.get(&rule.crm_property)?;
            Some((field.clone(), rule.crm_property.clone(), value.clone()))
        })
        .collect()
}

fn differences(
    app_values: &[(String, String, String)],
    found: &Found,
    kinds: &BTreeMap<String, ValueKind>,
) -> Vec<FieldChange> {
    app_values
        .iter()
        .filter_map(|(field, property, app)| {
            let in_crm = found.values.get(property).cloned().unwrap_or_default();
            let kind = kinds.get(property).copied().unwrap_or_default();
            (!values::equivalent(kind, app, &in_crm)).then(|| FieldChange {
                field: field.clone(),
                crm_property: property.clone(),
                in_crm,
                app: app.clone(),
            })
        })
        .collect()
}

fn crm_owned_values(mapping: &ObjectMapping, found: &Found) -> BTreeMap<String, String> {
    mapping
        .fields
        .iter()
        .filter(|(_, rule)| rule.owner == Owner::Crm)
        .filter_map(|(field, rule)| {
            let value = found.values.get(&rule.crm_property)?;
            (!value.trim().is_empty()).then(|| (field.clone(), value.clone()))
        })
        .collect()
}

/// What a plan holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    pub records: u64,
    pub create: u64,
    pub update: u64,
    pub unchanged: u64,
    pub link: u64,
    pub conflict: u64,
    /// App-owned fields that differ, over updates and links.
    pub fields_to_write: u64,
    /// Records whose CRM-owned values the app receives in the initial pull.
    pub crm_owned_records: u64,
    /// Input lines refused (not valid messages).
    pub invalid: u64,
    /// CRM calls the plan itself made, and the day's budget the CRM last said was left.
    pub plan_calls: u64,
    #[serde(default)]
    pub daily_remaining: Option<u64>,
}

impl PlanCounts {
    pub fn add(&mut self, item: &PlanItem) {
        self.records += 1;
        match &item.action {
            Action::Create => self.create += 1,
            Action::Update { fields, .. } => {
                self.update += 1;
                self.fields_to_write += fields.len() as u64;
            }
            Action::Unchanged { .. } => self.unchanged += 1,
            Action::Link { fields, .. } => {
                self.link += 1;
                self.fields_to_write += fields.len() as u64;
            }
            Action::Conflict { .. } => self.conflict += 1,
        }
        if !item.crm_owned.is_empty() {
            self.crm_owned_records += 1;
        }
    }
}

/// The CRM's limits the cost is reckoned against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Records one write call takes.
    pub batch: u64,
    /// Calls a day; how many are never spent (the reserve); and how many above it only live
    /// changes spend, so that a backfill leaves them their budget.
    pub daily_limit: u64,
    pub daily_reserve: u64,
    #[serde(default)]
    pub live_reserve: u64,
    /// Calls the day has left now, when the CRM said.
    pub left_today: Option<u64>,
    /// The rate ceiling: calls per second.
    pub calls_per_second: f64,
}

/// What running a plan costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Link calls (the app's id written onto matched records), write calls (every record but
    /// the conflicts, batched), and read calls of the initial pull (matched records holding
    /// CRM-owned values).
    pub link_calls: u64,
    pub write_calls: u64,
    pub pull_calls: u64,
    pub total_calls: u64,
    /// Of one day's budget after the reserve and the live reserve.
    pub share_of_daily_budget: f64,
    /// Days of that budget the backfill needs (1 when it fits in today's).
    pub days: u64,
    /// Seconds at the rate ceiling, if the budget allowed it all now.
    pub seconds_at_ceiling: f64,
}

/// The cost of running a plan with `counts` within `budget`.
pub fn cost(counts: &PlanCounts, budget: &Budget) -> Cost {
    let batch = budget.batch.max(1);
    // Each batch of links is read again, then written.
    let link_calls = 2 * counts.link.div_ceil(batch);
    // Unchanged records are written too: so that crm-sync knows them from the first day.
    let write_calls = (counts.create + counts.update + counts.link + counts.unchanged).div_ceil(batch);
    let pull_calls = counts.crm_owned_records.div_ceil(batch);
    let total_calls = link_calls + write_calls + pull_calls;
    let kept = budget.daily_reserve + budget.live_reserve;
    let per_day = budget.daily_limit.saturating_sub(kept).max(1);
    let today = budget
        .left_today
        .map_or(per_day, |left| left.saturating_sub(kept));
    let days = if total_calls <= today {
        1
    } else {
        1 + (total_calls - today).div_ceil(per_day)
    };
    Cost {
        link_calls,
        write_calls,
        pull_calls,
        total_calls,
        share_of_daily_budget: total_calls as f64 / per_day as f64,
        days,
        seconds_at_ceiling: total_calls as f64 / budget.calls_per_second.max(f64::MIN_POSITIVE),
    }
}

/// Where a backfill is: its phases run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillPhase {
    /// The app's id written onto the CRM records matched by email.
    Links,
    /// Every record to write sent to the backfill lane.
    Writes,
    /// The lane's writes finishing.
    Settle,
    /// CRM-owned values of matched records delivered to the app inbox.
    Pull,
    Done,
}

/// A backfill's progress, saved after every batch: a stopped backfill goes on from `line`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillProgress {
    pub plan_id: String,
    pub phase: BackfillPhase,
    /// The last line of the plan file the phase has handled.
    pub line: u64,
    /// Records in the plan, and how many of them the backfill writes.
    pub records: u64,
    pub to_write: u64,
    pub linked: u64,
    /// Links not made (`object/record id`): the CRM record carries another app id now, another
    /// app record took it, or it is gone.
    pub refused: Vec<String>,
    pub sent: u64,
    /// Records whose CRM-owned values reached the app inbox, and those left to the
    /// reconciliation (busy with live work throughout, or not written).
    pub pulled: u64,
    #[serde(default)]
    pub pull_deferred: u64,
    /// Identity conflicts left for a person, and the deals and activities not written because
    /// their contact is one (or its link was refused).
    pub conflicts: u64,
    #[serde(default)]
    pub waiting_on_contact: u64,
    pub crm_calls: u64,
    /// Runs that have worked on it: each `crm-sync-adopt backfill`, and each slice of the
    /// adoption function.
    #[serde(default)]
    pub runs: u64,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Why the last run stopped before the end.
    pub stopped: Option<String>,
    /// The run saving this progress: one run of a plan at a time (set by the run, not stored in
    /// the progress's JSON).
    #[serde(skip)]
    pub run_token: String,
}

impl BackfillProgress {
    pub fn new(plan_id: &str, counts: &PlanCounts, now_ms: i64) -> Self {
        Self {
            plan_id: plan_id.to_string(),
            phase: BackfillPhase::Links,
            line: 0,
            records: counts.records,
            to_write: counts.create + counts.update + counts.link + counts.unchanged,
            linked: 0,
            refused: Vec::new(),
            sent: 0,
            pulled: 0,
            pull_deferred: 0,
            conflicts: counts.conflict,
            waiting_on_contact: 0,
            crm_calls: 0,
            runs: 0,
            started_at_ms: now_ms,
            updated_at_ms: now_ms,
            finished_at_ms: None,
            stopped: None,
            run_token: String::new(),
        }
    }
}

/// A plan as the terminal, `summary.json` and the dashboard show it: its counts, the CRM's
/// limits, the cost, and a few of its records of each decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub plan_id: String,
    pub input: String,
    pub crm: String,
    pub planned_at: String,
    pub counts: PlanCounts,
    pub budget: Budget,
    pub cost: Cost,
    /// Up to [`EXAMPLES_PER_ACTION`] records of each decision but `create`, without their
    /// messages, long values cut short.
    #[serde(default)]
    pub examples: Vec<PlanItem>,
}

/// Records of each decision a summary shows.
pub const EXAMPLES_PER_ACTION: usize = 10;

/// Characters of a value an example keeps, and the fields of a record it shows.
const EXAMPLE_VALUE_CHARS: usize = 120;
const EXAMPLE_FIELDS: usize = 20;

/// The most a summary's examples take, serialized: it is stored as one item (400 KB at most).
const EXAMPLES_MAX_BYTES: usize = 64 * 1024;

fn cut(value: &str) -> String {
    match value.char_indices().nth(EXAMPLE_VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_string(),
    }
}

impl PlanSummary {
    /// Keeps the first few records of each decision but `create` (nothing to show but the
    /// message) from a plan read in order.
    pub fn take_examples(&mut self, plan: impl Iterator<Item = PlanItem>) {
        let mut taken: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut bytes = 0;
        for item in plan {
            let name = item.action.name();
            let count = taken.entry(name).or_default();
            if name == "create" || *count >= EXAMPLES_PER_ACTION {
                // Every kind shown has its examples: the rest of the plan changes nothing.
                let full = |kind: &str| taken.get(kind).is_some_and(|c| *c >= EXAMPLES_PER_ACTION);
                if ["update", "unchanged", "link", "conflict"].into_iter().all(full) {
                    break;
                }
                continue;
            }
            let example = Self::example(item);
            let size = serde_json::to_string(&example).map_or(usize::MAX / 2, |json| json.len());
            // One large example leaves room for others that fit.
            if bytes + size > EXAMPLES_MAX_BYTES {
                continue;
            }
            bytes += size;
            *count += 1;
            self.examples.push(example);
        }
    }

    fn example(item: PlanItem) -> PlanItem {
        let fields = |fields: Vec<FieldChange>| {
            fields
                .into_iter()
                .take(EXAMPLE_FIELDS)
                .map(|change| FieldChange {
                    in_crm: cut(&change.in_crm),
                    app: cut(&change.app),
                    ..change
                })
                .collect()
        };
        let action = match item.action {
            Action::Update { crm_id, fields: f } => Action::Update {
                crm_id: cut(&crm_id),
                fields: fields(f),
            },
            Action::Link { crm_id, fields: f } => Action::Link {
                crm_id: cut(&crm_id),
                fields: fields(f),
            },
            Action::Unchanged { crm_id } => Action::Unchanged { crm_id: cut(&crm_id) },
            Action::Conflict { reason, crm_ids } => Action::Conflict {
                reason: cut(&reason),
                crm_ids: crm_ids.iter().take(5).map(|id| cut(id)).collect(),
            },
            Action::Create => Action::Create,
        };
        PlanItem {
            record_id: cut(&item.record_id),
            action,
            crm_owned: item
                .crm_owned
                .into_iter()
                .map(|(field, value)| (field, cut(&value)))
                .collect(),
            message: String::new(),
            ..item
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::parse_change;
    use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
    use serde_json::json;

    fn contacts() -> ObjectMapping {
        Mapping::parse(DEFAULT_MAPPING)
            .unwrap()
            .object(ObjectKind::Contact)
            .unwrap()
            .clone()
    }

    fn change(id: &str, email: &str) -> Change {
        parse_change(
            &json!({"version": 1, "type": "contact.upsert", "record_id": id, "idempotency_id": "i",
                    "changed_at": 1_796_000_000_000_i64, "data": {"email": email, "first_name": "Ada"}})
            .to_string(),
        )
        .unwrap()
    }

    fn found(id: &str, values: &[(&str, &str)]) -> Found {
        Found {
            crm_id: id.into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_crm_record_with_the_apps_id_is_updated_field_by_field_or_left_alone() {
        let m = contacts();
        let c = change("u1", "ada@example.com");
        let (action, _) = decide(
            &m,
            &c,
            &[found("9", &[("email", "ada@example.com"), ("firstname", "Ad")])],
            &[],
            None,
            &BTreeMap::new(),
        );
        let Action::Update { crm_id, fields } = action else {
            panic!("an update: {action:?}")
        };
        assert_eq!(crm_id, "9");
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(
            (fields[0].field.as_str(), fields[0].in_crm.as_str()),
            ("first_name", "Ad")
        );
        let (action, _) = decide(
            &m,
            &c,
            &[found("9", &[("email", "ada@example.com"), ("firstname", "Ada")])],
            &[],
            None,
            &BTreeMap::new(),
        );
        assert_eq!(action, Action::Unchanged { crm_id: "9".into() });
    }

    #[test]
    fn a_crm_record_without_an_app_id_that_holds_the_email_is_linked() {
        let (action, _) = decide(
            &contacts(),
            &change("u1", "ada@example.com"),
            &[],
            &[found("7", &[("email", "ada@example.com")])],
            None,
            &BTreeMap::new(),
        );
        assert!(
            matches!(action, Action::Link { ref crm_id, .. } if crm_id == "7"),
            "{action:?}"
        );
    }

    #[test]
    fn an_email_another_app_record_holds_in_the_crm_or_shares_in_the_app_is_an_identity_conflict() {
        let m = contacts();
        let c = change("u1", "ada@example.com");
        let (taken, _) = decide(
            &m,
            &c,
            &[],
            &[found("7", &[("crm_sync_app_id", "u9")])],
            None,
            &BTreeMap::new(),
        );
        assert!(
            matches!(taken, Action::Conflict { ref reason, .. } if reason.contains("u9")),
            "{taken:?}"
        );
        let (several, _) = decide(
            &m,
            &c,
            &[],
            &[found("7", &[]), found("8", &[])],
            None,
            &BTreeMap::new(),
        );
        assert!(matches!(several, Action::Conflict { ref crm_ids, .. } if crm_ids.len() == 2));
        let shared = SharedEmail {
            others: vec!["u2".into()],
        };
        let (app_side, _) = decide(&m, &c, &[], &[], Some(&shared), &BTreeMap::new());
        assert!(matches!(app_side, Action::Conflict { ref reason, .. } if reason.contains("u2")));
        // A record the CRM already knows by its app id is no conflict, whatever its email.
        let (known, _) = decide(&m, &c, &[found("9", &[])], &[], Some(&shared), &BTreeMap::new());
        assert_eq!(known.name(), "update");
        // Found by email carrying its own id (linked between the lookups): the record is its own.
        let (own, _) = decide(
            &m,
            &c,
            &[],
            &[found("7", &[("crm_sync_app_id", "u1")])],
            None,
            &BTreeMap::new(),
        );
        assert_eq!(own.crm_id(), Some("7"), "{own:?}");
        assert_eq!(own.name(), "update");
    }

    #[test]
    fn the_cost_counts_batched_calls_against_the_budget_left_after_the_reserve() {
        let counts = PlanCounts {
            create: 150,
            update: 30,
            link: 20,
            ..PlanCounts::default()
        };
        let budget = Budget {
            batch: 100,
            daily_limit: 1_000,
            daily_reserve: 990,
            live_reserve: 8,
            left_today: Some(999),
            calls_per_second: 2.0,
        };
        let cost = cost(&counts, &budget);
        assert_eq!(
            (
                cost.link_calls,
                cost.write_calls,
                cost.pull_calls,
                cost.total_calls
            ),
            (2, 2, 0, 4),
            "links are read again, then written"
        );
        assert_eq!(cost.days, 3, "one call today, then two a day");
        assert!((cost.seconds_at_ceiling - 2.0).abs() < 1e-9);
        assert!((cost.share_of_daily_budget - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_summary_keeps_a_few_records_of_each_decision_short_and_without_their_messages() {
        let item = |n: u64, action: Action| PlanItem {
            line: n,
            plan_line: 0,
            object: ObjectKind::Contact,
            record_id: format!("u{n}"),
            action,
            crm_owned: BTreeMap::from([("lifecycle_stage".to_string(), "x".repeat(500))]),
            message: "{\"the\":\"message\"}".into(),
        };
        let long = FieldChange {
            field: "last_name".into(),
            crm_property: "lastname".into(),
            in_crm: "é".repeat(300),
            app: "Lovelace".into(),
        };
        let plan = (0..30).flat_map(|n| {
            [
                item(n * 4, Action::Create),
                item(
                    n * 4 + 1,
                    Action::Update {
                        crm_id: n.to_string(),
                        fields: vec![long.clone()],
                    },
                ),
                item(
                    n * 4 + 2,
                    Action::Conflict {
                        reason: "shared".into(),
                        crm_ids: (0..9).map(|i| i.to_string()).collect(),
                    },
                ),
                item(
                    n * 4 + 3,
                    Action::Unchanged {
                        crm_id: n.to_string(),
                    },
                ),
            ]
        });
        let mut summary = PlanSummary {
            plan_id: "p".into(),
            input: "users.jsonl".into(),
            crm: "hubspot".into(),
            planned_at: "2026-12-02T00:00:00Z".into(),
            counts: PlanCounts::default(),
            budget: Budget {
                batch: 100,
                daily_limit: 1,
                daily_reserve: 0,
                live_reserve: 0,
                left_today: None,
                calls_per_second: 1.0,
            },
            cost: cost(
                &PlanCounts::default(),
                &Budget {
                    batch: 100,
                    daily_limit: 1,
                    daily_reserve: 0,
                    live_reserve: 0,
                    left_today: None,
                    calls_per_second: 1.0,
                },
            ),
            examples: Vec::new(),
        };
        summary.take_examples(plan);
        let named = |name: &str| {
            summary
                .examples
                .iter()
                .filter(|e| e.action.name() == name)
                .count()
        };
        assert_eq!(
            (
                named("create"),
                named("update"),
                named("conflict"),
                named("unchanged")
            ),
            (0, 10, 10, 10)
        );
        let first = &summary.examples[0];
        assert_eq!(first.record_id, "u1", "the first ones, in plan order");
        assert!(first.message.is_empty());
        assert_eq!(
            first.crm_owned["lifecycle_stage"].chars().count(),
            EXAMPLE_VALUE_CHARS + 1
        );
        let Action::Update { fields, .. } = &first.action else {
            panic!("{first:?}")
        };
        assert_eq!(
            fields[0].in_crm.chars().count(),
            EXAMPLE_VALUE_CHARS + 1,
            "cut at a character, marked"
        );
        let conflict = summary
            .examples
            .iter()
            .find(|e| e.action.name() == "conflict")
            .unwrap();
        let Action::Conflict { crm_ids, .. } = &conflict.action else {
            unreachable!()
        };
        assert_eq!(crm_ids.len(), 5);
    }
}
