//! A reconciliation run's progress and report: what the store keeps between invocations and
//! the dashboard shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::crm::ValueKind;
use crate::domain::mapping::{DriftPolicy, ObjectMapping, Owner};
use crate::domain::sync::RecordState;
use crate::domain::values;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Requeue,
    Drift,
    Done,
}

/// What a run did, for the dashboard and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    /// The CRM day the run belongs to.
    pub day: i64,
    pub segment: u32,
    pub segments: u32,
    pub phase: Phase,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub invocations: u32,
    pub checked: u64,
    pub healed: u64,
    pub flagged: u64,
    /// CRM-owned fields whose CRM value differs from what the app last received (or that the
    /// app never received).
    pub crm_drift: u64,
    /// Records whose CRM-owned drift went to the app inbox.
    #[serde(default)]
    pub delivered: u64,
    /// Heals and deliveries not done, by reason; the next run tries them again.
    #[serde(default)]
    pub skipped: BTreeMap<String, u64>,
    pub requeued: u64,
    /// Merges read from the CRM and handed to the identity step (a merge read again in the next
    /// read's overlap counts again, and is still one event); none for a CRM that announces them.
    #[serde(default)]
    pub merges_read: u64,
    pub errors: u64,
    pub api_calls: u64,
    pub duration_ms: u64,
    /// Why the last invocation stopped before the run was done.
    pub stopped: Option<String>,
    /// Scan segments finished tonight: tonight's own first, then, while time and budget allow,
    /// the others, so that everything is checked when the budget allows it.
    #[serde(default)]
    pub segments_checked: u32,
}

/// How far the merges of one CRM object have been read (a CRM that announces none: Salesforce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeMark {
    /// Where the last complete read started: every merge stamped before it has been handed on
    /// (the next read starts a little earlier, for stamps that were committing then).
    pub read_to_ms: Option<i64>,
    /// A read that stopped after a page goes on from this stamp, inclusive.
    pub resume_from_ms: Option<i64>,
}

/// A run in progress: its report so far and where the scan stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub report: RunReport,
    pub cursor: Option<String>,
}

/// How one field of a record, as the CRM holds it, differs from what crm-sync knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldDrift {
    /// An app-owned field whose CRM value is not what crm-sync wrote, to be written back.
    Heal { crm_property: String, written: String },
    /// The same, where the mapping says to flag it rather than heal it.
    Flag {
        field: String,
        in_crm: String,
        written: String,
    },
    /// A CRM-owned field whose value is not what the app last received (or never received):
    /// the app missed a webhook.
    Missed {
        field: String,
        crm_property: String,
        in_crm: String,
        received: Option<String>,
    },
}

/// What the reconciliation finds in one record: each field compared by its CRM type (`kinds`;
/// a property missing from it compares as text), an app-owned one against what crm-sync wrote,
/// a CRM-owned one against what the app received.
pub fn field_drifts(
    mapping: &ObjectMapping,
    state: &RecordState,
    in_crm: &BTreeMap<String, String>,
    kinds: &BTreeMap<String, ValueKind>,
) -> Vec<FieldDrift> {
    let mut drifts = Vec::new();
    for (field, rule) in &mapping.fields {
        let value = in_crm.get(&rule.crm_property).cloned().unwrap_or_default();
        let kind = kinds.get(&rule.crm_property).copied().unwrap_or_default();
        match rule.owner {
            Owner::App => {
                let Some(written) = state.written.get(&rule.crm_property) else {
                    continue;
                };
                if values::equivalent(kind, written, &value) {
                    continue;
                }
                drifts.push(match rule.on_drift {
                    DriftPolicy::Heal => FieldDrift::Heal {
                        crm_property: rule.crm_property.clone(),
                        written: written.clone(),
                    },
                    DriftPolicy::Flag => FieldDrift::Flag {
                        field: field.clone(),
                        in_crm: value,
                        written: written.clone(),
                    },
                });
            }
            Owner::Crm => {
                // A value the app never received counts as empty: a stage set in the CRM without
                // a webhook is drift too.
                let received = state.received.get(&rule.crm_property);
                let received_value = received.map_or("", String::as_str);
                if crate::domain::inbound::same_value(received_value, &value)
                    || values::equivalent(kind, received_value, &value)
                {
                    continue;
                }
                drifts.push(FieldDrift::Missed {
                    field: field.clone(),
                    crm_property: rule.crm_property.clone(),
                    in_crm: value,
                    received: received.cloned(),
                });
            }
        }
    }
    drifts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::{ObjectKind, RecordRef};
    use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};

    fn state(written: &[(&str, &str)], received: &[(&str, &str)]) -> RecordState {
        let pairs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        RecordState {
            written: pairs(written),
            received: pairs(received),
            ..RecordState::new(RecordRef {
                object: ObjectKind::Deal,
                record_id: "order-1".into(),
            })
        }
    }

    #[test]
    fn a_field_compares_by_its_crm_type_and_by_whose_it_is() {
        let mapping = Mapping::parse(DEFAULT_MAPPING).unwrap();
        let deals = mapping.object(ObjectKind::Deal).unwrap();
        let known = state(
            &[
                ("amount", "1200.50"),
                ("closedate", "1798675200000"),
                ("dealname", "Plan"),
            ],
            &[("dealstage", "qualifiedtobuy")],
        );
        let read: BTreeMap<String, String> = [
            ("amount", "1200.5"),
            ("closedate", "2026-12-31T00:00:00.000Z"),
            ("dealname", "Plan B"),
            ("dealstage", "closedwon"),
            ("pipeline", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kinds = [("amount", ValueKind::Number), ("closedate", ValueKind::DateTime)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();

        let drifts = field_drifts(deals, &known, &read, &kinds);

        assert_eq!(
            drifts,
            vec![
                FieldDrift::Heal {
                    crm_property: "dealname".into(),
                    written: "Plan".into()
                },
                FieldDrift::Missed {
                    field: "stage".into(),
                    crm_property: "dealstage".into(),
                    in_crm: "closedwon".into(),
                    received: Some("qualifiedtobuy".into())
                },
            ],
            "the amount and the date differ in form only; an empty pipeline never received is no news"
        );
        // As text, the same values would all drift.
        assert_eq!(field_drifts(deals, &known, &read, &BTreeMap::new()).len(), 4);
    }
}
