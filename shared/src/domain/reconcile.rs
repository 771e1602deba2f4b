//! A reconciliation run's progress and report: what the store keeps between invocations and
//! the dashboard shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// A run in progress: its report so far and where the scan stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub report: RunReport,
    pub cursor: Option<String>,
}
