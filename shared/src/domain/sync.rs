//! Sync state and the pure rules of outbound sync: the newest change per record wins, an older
//! or repeated change is skipped, retries back off exponentially with jitter.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::contract::{Change, Operation, RecordRef};

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncStatus {
    /// A change is waiting for (or in) a sync attempt.
    Pending,
    Synced,
    /// The last change failed permanently, or kept failing; its message is in the dead-letter queue.
    Failed,
    /// Archived in the CRM.
    Deleted,
}

impl SyncStatus {
    pub const ALL: [SyncStatus; 4] = [
        SyncStatus::Pending,
        SyncStatus::Synced,
        SyncStatus::Failed,
        SyncStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Pending => "pending",
            SyncStatus::Synced => "synced",
            SyncStatus::Failed => "failed",
            SyncStatus::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<SyncStatus> {
        SyncStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// A record's sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    pub record: RecordRef,
    pub crm_id: Option<String>,
    pub status: SyncStatus,
    pub last_synced_at_ms: Option<i64>,
    pub last_attempt_at_ms: Option<i64>,
    /// Attempts at the current change since the last success.
    pub attempts: u32,
    /// The last error, with the CRM's own message.
    pub last_error: Option<String>,
    /// `changed_at` of the last change applied: the record's version in the CRM.
    pub applied_version_ms: Option<i64>,
    pub applied_idempotency_id: Option<String>,
    /// CRM property → the value crm-sync last wrote.
    pub written: BTreeMap<String, String>,
    /// CRM property → fingerprints of the values crm-sync wrote to it lately, oldest first (at
    /// most [`RECENT_WRITES`]): a CRM reports writes late and in any order, so the echo of an
    /// earlier write can arrive after a later one.
    pub recent_writes: BTreeMap<String, Vec<String>>,
    /// CRM property → fingerprints of values attempts claimed to write since the last applied
    /// change: an attempt that wrote to the CRM and then crashed or lost its lease still made
    /// them crm-sync's own.
    pub claimed_writes: BTreeMap<String, Vec<String>>,
    /// CRM property → when the last CRM change of it that crm-sync acted on happened.
    pub inbound_at: BTreeMap<String, i64>,
    /// CRM property → the value the app last received from the CRM.
    pub received: BTreeMap<String, String>,
    /// Conflicts journaled for this record.
    pub conflicts: u32,
    /// The `sequence` of the last app-inbox message sent for this record.
    pub inbox_sequence: u64,
    /// The message of the newest change not yet applied (what reconciliation re-enqueues).
    pub pending_change: Option<String>,
    /// The last failure may pass on a later try (it was not refused as invalid).
    pub retryable: bool,
    /// The message of the last change applied (what a re-sync of a synced record sends again).
    pub last_change: Option<String>,
    /// Conflicts journaled since an operator last dismissed them.
    pub open_conflicts: bool,
    /// Fingerprints of the CRM events last acted on for this record, oldest first (at most
    /// [`RECENT_EVENTS`]), saved with the record's inbound update under its lease: a copy of an
    /// event (a CRM's retry, enqueued again) that reaches the record after the first is known
    /// here even before the first's outcome is recorded in the event journal.
    pub recent_events: Vec<String>,
    /// The CRM record is known by its id only and written by it: a merge moved the record onto
    /// a survivor whose id property may hold another app record's id, or none.
    pub follow_crm_id: bool,
    /// Why the record's writes wait: its CRM record is also another app record's (a merge in the
    /// CRM made them one), until the app or an operator decides.
    pub identity_conflict: Option<String>,
    /// When the CRM erased the record for privacy: its values are forgotten and its changes refused.
    pub erased_at_ms: Option<i64>,
    /// The CRM ids the record was on before merges moved it, oldest first (at most
    /// [`crate::domain::identity::MAX_MERGE_HOPS`]): a merge's event that comes after a later
    /// merge moved the record still finds it.
    pub previous_crm_ids: Vec<String>,
    /// Where the record's conflicts stand, per CRM property.
    pub conflict_marks: crate::domain::inbound::ConflictMarks,
    /// When an operator last dismissed the record's conflicts.
    pub conflicts_dismissed_at_ms: Option<i64>,
    /// Since when a change of the record has waited to be applied: set by the first claim,
    /// kept through retries, cleared when a change is applied or given up.
    pub pending_since_ms: Option<i64>,
}

/// How many event fingerprints a record keeps: copies of an event race each other for moments,
/// and later ones are found by their recorded outcome.
pub const RECENT_EVENTS: usize = 16;

/// An event key's fingerprint in a record's state: short, for the state item's size.
pub fn event_fingerprint(event_key: &str) -> String {
    crate::domain::webhook::sha256_hex(event_key.as_bytes())[..12].to_string()
}

impl RecordState {
    /// Whether an event with this key was acted on for this record lately.
    pub fn acted_on(&self, event_key: &str) -> bool {
        self.recent_events.contains(&event_fingerprint(event_key))
    }

    pub fn new(record: RecordRef) -> Self {
        Self {
            record,
            crm_id: None,
            status: SyncStatus::Pending,
            last_synced_at_ms: None,
            last_attempt_at_ms: None,
            attempts: 0,
            last_error: None,
            applied_version_ms: None,
            applied_idempotency_id: None,
            written: BTreeMap::new(),
            recent_writes: BTreeMap::new(),
            claimed_writes: BTreeMap::new(),
            inbound_at: BTreeMap::new(),
            received: BTreeMap::new(),
            conflicts: 0,
            inbox_sequence: 0,
            pending_change: None,
            retryable: false,
            last_change: None,
            open_conflicts: false,
            recent_events: Vec::new(),
            follow_crm_id: false,
            identity_conflict: None,
            erased_at_ms: None,
            previous_crm_ids: Vec::new(),
            conflict_marks: Default::default(),
            conflicts_dismissed_at_ms: None,
            pending_since_ms: None,
        }
    }
}

/// How many of its own writes of each property crm-sync remembers for recognizing their echoes.
pub const RECENT_WRITES: usize = 8;

/// A short digest of a value as a CRM reports it back: text as it is, a number with a fraction
/// as the number (`100.0` is the `100` crm-sync wrote; see `same_value`).
pub fn value_fingerprint(value: &str) -> String {
    use sha2::{Digest, Sha256};
    // Only a plain decimal with a fraction is read as a number, as `same_value` reads them.
    let digits = value.strip_prefix('-').unwrap_or(value);
    let plain_decimal = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() == 1;
    let canonical = match value.parse::<f64>() {
        Ok(number) if plain_decimal && number.is_finite() => number.to_string(),
        _ => value.to_string(),
    };
    super::webhook::hex(&Sha256::digest(canonical.as_bytes())[..8])
}

/// Adds `written` to the remembered writes: each value once, newest last, the oldest forgotten
/// past [`RECENT_WRITES`].
pub fn remember_writes(recent: &mut BTreeMap<String, Vec<String>>, written: &BTreeMap<String, String>) {
    for (property, value) in written {
        remember_fingerprint(recent, property, value_fingerprint(value));
    }
}

/// Adds one fingerprint of `property` to the remembered writes (see [`remember_writes`]).
pub fn remember_fingerprint(recent: &mut BTreeMap<String, Vec<String>>, property: &str, fingerprint: String) {
    let fingerprints = recent.entry(property.to_string()).or_default();
    fingerprints.retain(|known| *known != fingerprint);
    fingerprints.push(fingerprint);
    let excess = fingerprints.len().saturating_sub(RECENT_WRITES);
    fingerprints.drain(..excess);
}

impl RecordState {
    /// The remembered writes with the claimed ones folded in: what crm-sync may have written.
    pub fn own_writes(&self) -> BTreeMap<String, Vec<String>> {
        let mut own = self.recent_writes.clone();
        for (property, fingerprints) in &self.claimed_writes {
            for fingerprint in fingerprints {
                remember_fingerprint(&mut own, property, fingerprint.clone());
            }
        }
        own
    }
}

impl RecordState {
    /// Whether crm-sync wrote `value` to `property` lately (or last).
    pub fn wrote_recently(&self, property: &str, value: &str) -> bool {
        self.written
            .get(property)
            .is_some_and(|written| super::inbound::same_value(written, value))
            || [&self.recent_writes, &self.claimed_writes].iter().any(|writes| {
                writes
                    .get(property)
                    .is_some_and(|known| known.contains(&value_fingerprint(value)))
            })
    }
}

/// A listing of records: by status, or those with open conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFilter {
    Status(SyncStatus),
    OpenConflicts,
}

impl RecordFilter {
    /// In the order the dashboard shows them: what needs a look first.
    pub const ALL: [RecordFilter; 5] = [
        RecordFilter::Status(SyncStatus::Failed),
        RecordFilter::Status(SyncStatus::Pending),
        RecordFilter::OpenConflicts,
        RecordFilter::Status(SyncStatus::Synced),
        RecordFilter::Status(SyncStatus::Deleted),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordFilter::Status(status) => status.as_str(),
            RecordFilter::OpenConflicts => "conflict",
        }
    }

    pub fn parse(text: &str) -> Option<RecordFilter> {
        RecordFilter::ALL
            .into_iter()
            .find(|filter| filter.as_str() == text)
    }
}

/// A count that may have stopped early: `complete` is false when there are more than `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub complete: bool,
}

/// What happened, for a record's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineKind {
    Synced,
    Deleted,
    /// Older than what is applied already, or superseded by a newer change in the same batch.
    Skipped,
    Retrying,
    Failed,
    /// A CRM-owned change delivered to the app.
    Received,
    /// An app-owned field changed in the CRM.
    Conflict,
    /// The reconciliation found the CRM differing from what crm-sync wrote or the app received.
    Drift,
    /// The reconciliation wrote crm-sync's value back.
    Healed,
    /// Who the record is in the CRM changed: a merge, a restore, a privacy deletion.
    Identity,
    Note,
}

impl TimelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineKind::Synced => "synced",
            TimelineKind::Deleted => "deleted",
            TimelineKind::Skipped => "skipped",
            TimelineKind::Retrying => "retrying",
            TimelineKind::Failed => "failed",
            TimelineKind::Received => "received",
            TimelineKind::Conflict => "conflict",
            TimelineKind::Drift => "drift",
            TimelineKind::Healed => "healed",
            TimelineKind::Identity => "identity",
            TimelineKind::Note => "note",
        }
    }

    pub fn parse(text: &str) -> Option<TimelineKind> {
        [
            TimelineKind::Synced,
            TimelineKind::Deleted,
            TimelineKind::Skipped,
            TimelineKind::Retrying,
            TimelineKind::Failed,
            TimelineKind::Received,
            TimelineKind::Conflict,
            TimelineKind::Drift,
            TimelineKind::Healed,
            TimelineKind::Identity,
            TimelineKind::Note,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One entry of a record's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub record: RecordRef,
    pub at_ms: i64,
    pub kind: TimelineKind,
    pub idempotency_id: Option<String>,
    pub detail: String,
    /// The CRM call that decided it (`POST /crm/objects/2026-03/contacts/batch/upsert -> 207`).
    pub call: Option<String>,
}

/// A change read from the queue, with how many transient failures it has had.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub message_id: String,
    pub change: Change,
    pub attempts: u32,
    /// The message as sent.
    pub body: String,
}

/// A batch reduced to one change per record.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// The newest change of each record, in a stable order.
    pub newest: Vec<Queued>,
    /// Message ids of changes a newer one in the same batch replaces, with that newer change.
    pub superseded: Vec<(Queued, String)>,
}

/// Orders two changes of one record: later `changed_at` wins; on a tie an erasure, then a
/// delete wins, then the greater idempotency id, so that every consumer picks the same one.
fn newer(a: &Change, b: &Change) -> bool {
    let rank = |change: &Change| {
        (
            change.changed_at_ms,
            change.operation == Operation::Erase,
            change.operation == Operation::Delete,
            change.idempotency_id.clone(),
        )
    };
    rank(a) > rank(b)
}

/// Keeps the newest change per record.
pub fn newest_per_record(batch: Vec<Queued>) -> BatchPlan {
    let mut winners: HashMap<RecordRef, Queued> = HashMap::new();
    let mut superseded = Vec::new();
    for queued in batch {
        let record = queued.change.record();
        match winners.remove(&record) {
            None => {
                winners.insert(record, queued);
            }
            Some(current) if newer(&queued.change, &current.change) => {
                let by = queued.change.idempotency_id.clone();
                superseded.push((current, by));
                winners.insert(record, queued);
            }
            Some(current) => {
                let by = current.change.idempotency_id.clone();
                superseded.push((queued, by));
                winners.insert(record, current);
            }
        }
    }
    let mut newest: Vec<Queued> = winners.into_values().collect();
    newest.sort_by_key(|queued| queued.change.record());
    BatchPlan { newest, superseded }
}

/// How a change compares with what is applied already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Newer,
    /// This very change is applied already.
    Duplicate,
    /// A newer change is applied already.
    Stale,
}

pub fn freshness(change: &Change, state: &RecordState) -> Freshness {
    match state.applied_version_ms {
        None => Freshness::Newer,
        Some(applied) if change.changed_at_ms > applied => Freshness::Newer,
        Some(applied) if change.changed_at_ms < applied => Freshness::Stale,
        Some(_) if state.applied_idempotency_id.as_deref() == Some(change.idempotency_id.as_str()) => {
            Freshness::Duplicate
        }
        Some(_) => Freshness::Newer,
    }
}

/// Exponential backoff with "equal jitter": half the step fixed, half random (`jitter` in 0..1).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let step = base.saturating_mul(1 << exponent).min(cap);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_keep_each_value_once_newest_last_and_forget_the_oldest() {
        let mut recent = BTreeMap::new();
        for i in 0..RECENT_WRITES + 2 {
            let written = BTreeMap::from([("p".to_string(), format!("v{i}"))]);
            remember_writes(&mut recent, &written);
        }
        remember_writes(
            &mut recent,
            &BTreeMap::from([("p".to_string(), "v3".to_string())]),
        );
        let kept = &recent["p"];
        assert_eq!(kept.len(), RECENT_WRITES);
        assert_eq!(kept.last(), Some(&value_fingerprint("v3")));
        assert!(!kept.contains(&value_fingerprint("v0")));
        assert!(!kept.contains(&value_fingerprint("v1")));
        assert!(kept.contains(&value_fingerprint("v2")));
        assert_eq!(kept.iter().filter(|f| **f == value_fingerprint("v3")).count(), 1);
    }

    #[test]
    fn a_number_reported_with_a_fraction_has_the_fingerprint_crm_sync_wrote() {
        assert_eq!(value_fingerprint("100.0"), value_fingerprint("100"));
        assert_ne!(value_fingerprint("0123"), value_fingerprint("123"));
        assert_ne!(value_fingerprint("Ada"), value_fingerprint("ada"));
        assert_ne!(value_fingerprint("1.5e3"), value_fingerprint("1500"));
        assert_ne!(value_fingerprint("+1.5"), value_fingerprint("1.5"));
    }
    use crate::domain::contract::ObjectKind;

    fn change(record: &str, at: i64, id: &str, operation: Operation) -> Change {
        Change {
            object: ObjectKind::Contact,
            operation,
            record_id: record.into(),
            idempotency_id: id.into(),
            changed_at_ms: at,
            data: BTreeMap::new(),
            contact_record_id: None,
            association: None,
        }
    }

    fn queued(message: &str, change: Change) -> Queued {
        Queued {
            message_id: message.into(),
            change,
            attempts: 0,
            body: String::new(),
        }
    }

    #[test]
    fn the_newest_change_of_each_record_wins_whatever_the_order() {
        let plan = newest_per_record(vec![
            queued("m1", change("a", 20, "x", Operation::Upsert)),
            queued("m2", change("a", 30, "y", Operation::Upsert)),
            queued("m3", change("b", 10, "z", Operation::Upsert)),
            queued("m4", change("a", 25, "w", Operation::Upsert)),
        ]);
        let kept: Vec<_> = plan.newest.iter().map(|q| q.message_id.as_str()).collect();
        assert_eq!(kept, vec!["m2", "m3"]);
        let mut dropped: Vec<_> = plan
            .superseded
            .iter()
            .map(|(q, by)| (q.message_id.as_str(), by.as_str()))
            .collect();
        dropped.sort();
        assert_eq!(dropped, vec![("m1", "y"), ("m4", "y")]);
    }

    #[test]
    fn on_equal_times_a_delete_wins_over_an_upsert() {
        let plan = newest_per_record(vec![
            queued("m1", change("a", 20, "z", Operation::Delete)),
            queued("m2", change("a", 20, "y", Operation::Upsert)),
        ]);
        assert_eq!(plan.newest[0].message_id, "m1");
    }

    #[test]
    fn freshness_compares_versions_then_idempotency_ids() {
        let mut state = RecordState::new(change("a", 0, "", Operation::Upsert).record());
        assert_eq!(
            freshness(&change("a", 5, "i", Operation::Upsert), &state),
            Freshness::Newer
        );
        state.applied_version_ms = Some(10);
        state.applied_idempotency_id = Some("i".into());
        assert_eq!(
            freshness(&change("a", 5, "j", Operation::Upsert), &state),
            Freshness::Stale
        );
        assert_eq!(
            freshness(&change("a", 10, "i", Operation::Upsert), &state),
            Freshness::Duplicate
        );
        assert_eq!(
            freshness(&change("a", 10, "k", Operation::Upsert), &state),
            Freshness::Newer
        );
        assert_eq!(
            freshness(&change("a", 11, "i", Operation::Upsert), &state),
            Freshness::Newer
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_with_bounded_jitter() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, base, cap, 1.0), cap);
        assert_eq!(backoff(30, base, cap, 0.0), cap / 2);
    }
}
