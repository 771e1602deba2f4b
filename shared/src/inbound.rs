//! The inbound use case: stored webhook events become, per field and under the ownership rules,
//! changes delivered to the app (CRM-owned fields), conflicts journaled (app-owned fields), or
//! nothing (crm-sync's own echo, an older change, an unmapped property). Each event is acted on
//! once and records its outcome.
//!
//! A record is leased for inbound work exactly as for an outbound attempt, so the two directions
//! never interleave on one record: the echo check always sees what crm-sync last wrote.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::contract::parse_change;
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::domain::crm::UpdateInput;
use crate::domain::inbound::{
    app_inbox_message, decide, parse_inbound, ConflictEntry, CrmChange, FieldDecision, InboundMessage,
    Interpretation,
};
use crate::domain::mapping::Mapping;
use crate::domain::sync::{backoff, remember_writes, RecordState, SyncStatus, TimelineEntry, TimelineKind};
use crate::domain::Clock;
use crate::ports::state::*;
use crate::ports::{
    Crm, CrmEvents, EventJournal, EventOutcome, InboundUpdate, LeaseOutcome, MessageQueue, OutgoingMessage,
};
use crate::worker::{bounded, BatchReport, CallFailure, Disposition, SyncMessage, Worker};

#[path = "inbound_identity.rs"]
mod identity;
use identity::IdentityWork;
#[path = "inbound_links.rs"]
mod links;
use links::LinkWork;

/// A conflict's resolution, as journaled: the CRM keeps the person's value until crm-sync
/// writes the field again (which resolves it).
pub const NOT_APPLIED: &str =
    "not applied: the app keeps its value, the CRM the person's until crm-sync writes the field again";
pub use crate::domain::inbound::OVERWRITTEN;
/// The app's value was written back to the CRM at once (`REASSERT_APP_VALUES`).
pub const REASSERTED: &str = "re-asserted the app's value in the CRM";
/// Re-asserting failed: the CRM still holds the person's value.
pub const REASSERT_FAILED: &str =
    "not applied: re-asserting the app's value in the CRM failed, so the CRM keeps the \
     person's until crm-sync writes the field again (the nightly reconciliation will)";

/// How inbound events are handled.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// Write the app's value back to the CRM when a rep changes an app-owned field.
    pub reassert_app_values: bool,
    pub lease: Duration,
    pub busy_delay: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How far ahead of this clock an event's time may be; see `SyncSettings::max_clock_skew`.
    pub max_clock_skew: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        Self {
            reassert_app_values: false,
            lease: Duration::from_secs(120),
            busy_delay: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(900),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// How many times an event about a CRM record that carries the app's id of a record linked to
/// another CRM record comes back (waiting for the event of a merge of the two) before it is
/// taken as no app record's.
const WAITS_FOR_A_MERGE: u32 = 3;

/// One CRM's events; events another CRM posted are not this deployment's to apply, since their
/// ids name records in that other CRM.
pub struct EventsOf {
    provider: &'static str,
    /// `None` for a CRM whose events crm-sync does not read yet.
    events: Option<Arc<dyn CrmEvents>>,
}

impl EventsOf {
    pub fn new(provider: &'static str, events: Option<Arc<dyn CrmEvents>>) -> Self {
        Self { provider, events }
    }
}

impl CrmEvents for EventsOf {
    fn interpret(&self, message: &InboundMessage) -> Interpretation {
        if message.provider == self.provider {
            match &self.events {
                Some(events) => events.interpret(message),
                None => Interpretation::Ignore(format!("{} events are not read yet", self.provider)),
            }
        } else {
            Interpretation::Ignore(format!(
                "a {} event; this deployment syncs with {}",
                message.provider, self.provider
            ))
        }
    }

    fn align(
        &self,
        object: ObjectKind,
        values: &mut std::collections::BTreeMap<String, String>,
        written: &std::collections::BTreeMap<String, String>,
    ) {
        if let Some(events) = &self.events {
            events.align(object, values, written);
        }
    }
}

/// The ports inbound processing needs.
pub struct InboundService {
    mapping: Arc<Mapping>,
    crm: Arc<dyn Crm>,
    events: Arc<dyn CrmEvents>,
    journal: Arc<dyn EventJournal>,
    leases: Arc<dyn RecordLeases>,
    history: Arc<dyn RecordJournal>,
    queries: Arc<dyn RecordQueries>,
    app_inbox: Arc<dyn MessageQueue>,
    clock: Arc<dyn Clock>,
    worker: Worker,
    settings: InboundSettings,
}

/// One event on its way through a batch.
struct Pending {
    message_id: String,
    attempts: u32,
    message: InboundMessage,
    change: CrmChange,
    record: Option<RecordState>,
}

/// A batch's bookkeeping as its phases go: the report, each message's fate, each event's outcome
/// to record, and the batch's clock reading.
struct Tally {
    report: BatchReport,
    dispositions: HashMap<String, Disposition>,
    /// Each event with its outcome and why.
    outcomes: Vec<(InboundMessage, EventOutcome, String)>,
    now_ms: i64,
}

/// A record's state before, its update so far, and what each of its events did.
type RecordWork = (RecordState, InboundUpdate, Vec<(String, Effects)>);

/// What acting on one event produced.
#[derive(Default)]
struct Effects {
    delivered: BTreeMap<String, String>,
    conflicts: Vec<ConflictEntry>,
    echoes: usize,
    stale: usize,
    /// A copy of an event already acted on for the record: nothing to decide.
    copy: bool,
}

impl InboundService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mapping: Arc<Mapping>,
        crm: Arc<dyn Crm>,
        events: Arc<dyn CrmEvents>,
        journal: Arc<dyn EventJournal>,
        state: Arc<impl RecordLeases + RecordJournal + RecordQueries + 'static>,
        app_inbox: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
        worker: Worker,
        settings: InboundSettings,
    ) -> Self {
        Self {
            mapping,
            crm,
            events,
            journal,
            leases: state.clone(),
            history: state.clone(),
            queries: state,
            app_inbox,
            clock,
            worker,
            settings,
        }
    }

    fn retry(&self, attempts: u32, reason: &str) -> Disposition {
        let attempts = attempts + 1;
        if attempts >= self.settings.max_attempts {
            Disposition::DeadLetter {
                reason: format!("gave up after {attempts} attempts: {reason}"),
            }
        } else {
            Disposition::Retry {
                delay: backoff(
                    attempts,
                    self.settings.retry_base,
                    self.settings.retry_cap,
                    fastrand::f64(),
                ),
                attempts,
            }
        }
    }

    /// The state with the values of its pending change counted as written lately: a change
    /// whose attempt wrote to the CRM, then failed (its deal's contact not there yet) or crashed
    /// before settling, is echoed back like any other write of crm-sync's.
    fn with_pending_writes(&self, mut state: RecordState) -> RecordState {
        state.recent_writes = state.own_writes();
        let pending = state
            .pending_change
            .as_deref()
            .and_then(|body| parse_change(body).ok())
            .and_then(|change| self.mapping.outbound(&change).ok());
        if let Some(outbound) = pending {
            remember_writes(&mut state.recent_writes, &outbound.properties);
        }
        state
    }

    /// Finds the app records of CRM records the state does not know by CRM id, by the app's id
    /// that crm-sync wrote on them: a record whose first sync wrote to the CRM but has not
    /// settled (its deal's contact not there yet, or a crash) is still the app's, and a rep's
    /// edit of it must not be dropped. Returns the CRM records that could not be read, with why.
    ///
    /// Long on purpose: the CRM reads, their throttles and their failures are one lookup.
    async fn resolve_by_app_id(
        &self,
        unknown: &[(ObjectKind, String)],
        records: &mut HashMap<(ObjectKind, String), RecordRef>,
        deadline: Instant,
        report: &mut BatchReport,
        throttled: &mut HashMap<(ObjectKind, String), i64>,
        waiting: &mut HashMap<(ObjectKind, String), String>,
    ) -> HashMap<(ObjectKind, String), String> {
        let mut unresolved = HashMap::new();
        // Every mapped type, declared ones included (links have no mapping of their own).
        for object in self.mapping.kinds() {
            let Some(mapping) = self.mapping.object(object) else {
                continue;
            };
            let ids: Vec<String> = unknown
                .iter()
                .filter(|(kind, _)| *kind == object)
                .map(|(_, crm_id)| crm_id.clone())
                .collect();
            for chunk in ids.chunks(self.crm.max_batch().max(1)) {
                let read = self
                    .worker
                    .call(deadline, report, || {
                        self.crm.read(
                            &mapping.crm_object,
                            chunk,
                            std::slice::from_ref(&mapping.id_property),
                        )
                    })
                    .await;
                let read = match read {
                    Ok(read) => read,
                    Err(CallFailure::Throttled { until_ms }) => {
                        // The budget, not the event, is at fault: wait, counting no attempt.
                        for crm_id in chunk {
                            throttled.insert((object, crm_id.clone()), until_ms);
                        }
                        continue;
                    }
                    Err(CallFailure::Transient(_)) => {
                        for crm_id in chunk {
                            unresolved.insert(
                                (object, crm_id.clone()),
                                format!("could not read {object} CRM record {crm_id} to find its app record"),
                            );
                        }
                        continue;
                    }
                    // Refused (the record type cannot be read): nothing to resolve.
                    Err(CallFailure::Rejected(_)) => continue,
                };
                let candidates: Vec<(String, RecordRef)> = chunk
                    .iter()
                    .zip(read.records)
                    .filter_map(|(crm_id, properties)| {
                        let app_id = properties?.get(&mapping.id_property)?.clone();
                        (!app_id.is_empty()).then(|| {
                            (
                                crm_id.clone(),
                                RecordRef {
                                    object,
                                    record_id: app_id,
                                },
                            )
                        })
                    })
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let refs: Vec<RecordRef> = candidates.iter().map(|(_, record)| record.clone()).collect();
                match self.queries.states(&refs).await {
                    Ok(states) => {
                        // A record linked to a CRM id the CRM merged into this one is this one's
                        // too: its write followed the merge, whose own event moves it later.
                        let linked: Vec<String> =
                            states.values().filter_map(|state| state.crm_id.clone()).collect();
                        let survivors =
                            crate::merges::survivors(self.queries.as_ref(), object, &linked).await;
                        for (crm_id, record) in candidates {
                            // Only a record the app sent, and not one linked to another CRM record.
                            let ours = states.get(&record).is_some_and(|state| {
                                state.status != SyncStatus::Deleted
                                    && state.crm_id.as_ref().is_none_or(|known| {
                                        *known == crm_id || survivors.get(known) == Some(&crm_id)
                                    })
                            });
                            let elsewhere = states
                                .get(&record)
                                .filter(|state| state.status != SyncStatus::Deleted)
                                .and_then(|state| state.crm_id.clone())
                                .filter(|_| !ours);
                            // Where the CRM can tell (HubSpot reads a merged-away id as its
                            // survivor), it is asked whether the record's id went here.
                            let merged_here = match &elsewhere {
                                Some(known) => {
                                    self.merged_here(
                                        object,
                                        &mapping.crm_object,
                                        known,
                                        &crm_id,
                                        deadline,
                                        report,
                                    )
                                    .await
                                }
                                None => false,
                            };
                            if ours || merged_here {
                                records.insert((object, crm_id), record);
                            } else if let Some(known) = elsewhere {
                                // The CRM record carries the app's id of a record linked to
                                // another CRM record: most likely the survivor of a merge whose
                                // event has not come yet.
                                waiting.insert(
                                    (object, crm_id.clone()),
                                    format!(
                                        "CRM record {crm_id} carries app record {}'s id, which is linked to CRM \
                                         record {known}: waiting for a merge of the two",
                                        record.record_id
                                    ),
                                );
                            }
                        }
                    }
                    Err(error) => {
                        let reason =
                            format!("could not read the sync state: {:#}", anyhow::Error::from(error));
                        for (crm_id, _) in candidates {
                            unresolved.insert((object, crm_id), reason.clone());
                        }
                    }
                }
            }
        }
        unresolved
    }

    /// Whether the CRM says that its record `from` went into `into` (and then records the merge).
    async fn merged_here(
        &self,
        object: ObjectKind,
        crm_object: &str,
        from: &str,
        into: &str,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> bool {
        let Ok(lookup) = self
            .worker
            .call(deadline, report, || self.crm.survivor(crm_object, from))
            .await
        else {
            return false;
        };
        if lookup.survivor.as_deref() != Some(into) {
            return false;
        }
        if let Err(error) = self
            .leases
            .record_merge(object, &[from.to_string()], into, self.clock.now_ms())
            .await
        {
            tracing::warn!(error = ?anyhow::Error::from(error), "could not record a merge the CRM reported");
        }
        true
    }

    pub async fn process(&self, messages: Vec<SyncMessage>, deadline: Instant) -> BatchReport {
        let mut batch = Tally {
            report: BatchReport::default(),
            dispositions: HashMap::new(),
            outcomes: Vec::new(),
            now_ms: self.clock.now_ms(),
        };
        let (pending, identities, links) = self.triage(&messages, &mut batch).await;
        let (work, records) = self.resolve(pending, &mut batch, deadline).await;
        let token = uuid::Uuid::new_v4().to_string();
        let (mut ready, leased) = self.lease(work, &records, &token, &mut batch).await;
        // An integration creating a record crm-sync knows is crm-sync's own upsert: its values
        // come back one by one as property changes, so there is nothing to read.
        let mut own_creations = HashSet::new();
        for p in ready.iter_mut() {
            if p.change.created && p.change.from_integration && p.change.properties.is_none() {
                own_creations.insert(p.message_id.clone());
                p.change.properties = Some(BTreeMap::new());
            }
        }
        let failed_reads = self.read_missing(&mut ready, &mut batch, deadline).await;

        // Decide, record by record, in the order the changes happened.
        // Changes of one millisecond in a fixed order, so that a redelivery numbers them alike.
        ready.sort_by(|a, b| {
            (a.change.occurred_at_ms, &a.message.event_key)
                .cmp(&(b.change.occurred_at_ms, &b.message.event_key))
        });
        let noted_ms = self.clock.now_ms();
        let mut per_record = self.decide_all(&ready, &failed_reads, &own_creations, noted_ms);

        // Re-assert the app's values where configured (the CRM reports it back as an echo): a
        // conflict whose app value is in the CRM again is resolved at once; one whose write
        // failed stays open and says so.
        if self.settings.reassert_app_values {
            let written = self.reassert(&per_record, deadline, &mut batch.report).await;
            // Written after the conflicts were noted: resolved as of then.
            let now_ms = noted_ms;
            for (record, (_, update, items)) in per_record.iter_mut() {
                let done = written.contains(record);
                for (_, effects) in items.iter_mut() {
                    for conflict in effects
                        .conflicts
                        .iter_mut()
                        .filter(|c| c.app_value.is_some() && c.resolution != OVERWRITTEN)
                    {
                        if done {
                            update
                                .conflict_marks
                                .reassert(std::iter::once(&conflict.crm_property), now_ms);
                        } else {
                            conflict.resolution = REASSERT_FAILED.to_string();
                        }
                    }
                }
                // Still flagged only if a conflict of this batch is still open.
                update.flag_conflicts = items
                    .iter()
                    .flat_map(|(_, effects)| &effects.conflicts)
                    .any(|c| update.conflict_marks.open.contains_key(&c.crm_property));
            }
        }

        // Tell the app, journal conflicts, settle each record.
        let by_id: HashMap<&str, &Pending> = ready.iter().map(|p| (p.message_id.as_str(), p)).collect();
        let inbox_failures = self.deliver(&mut per_record, &by_id).await;
        let settle_now = self.clock.now_ms();
        let settled = self
            .settle_records(
                per_record,
                &inbox_failures,
                &by_id,
                &token,
                settle_now,
                &mut batch,
            )
            .await;
        for (id, disposition) in failed_reads {
            batch.dispositions.insert(id, disposition);
        }
        // Records leased for events that all failed to read are given back untouched.
        for (record, state) in &leased {
            if !settled.contains(record) {
                let untouched = InboundUpdate::unchanged(state);
                if let Err(error) = self
                    .leases
                    .settle_inbound(record, &token, settle_now, &untouched)
                    .await
                {
                    tracing::warn!(record = %record, error = ?anyhow::Error::from(error), "could not release a lease; it runs out");
                }
            }
        }
        // Identity events after the changes, whose records' leases are given back by now. Their
        // timeline lines name ids and times, never values.
        let mut identity = self.apply_identities(identities, &mut batch, deadline).await;
        self.apply_links(links, &mut batch, &mut identity).await;
        self.record(
            &messages,
            &batch.dispositions,
            &batch.outcomes,
            &identity.timeline,
            settle_now,
        )
        .await;
        self.worker
            .dispatch(&messages, batch.dispositions, &mut batch.report)
            .await;
        batch.report
    }

    /// Triage: each message parsed, events acted on already (a redelivery) or twice in this
    /// batch dropped, events from beyond the clock skew dead-lettered, the rest read as changes.
    ///
    /// Long on purpose: each way an event leaves the batch early (invalid, done, duplicate, from the
    /// future, ignored), in the order they are checked.
    async fn triage(
        &self,
        messages: &[SyncMessage],
        batch: &mut Tally,
    ) -> (Vec<Pending>, Vec<IdentityWork>, Vec<LinkWork>) {
        let mut parsed = Vec::new();
        for message in messages {
            match parse_inbound(&message.body) {
                Ok(inbound) => parsed.push((message, inbound)),
                Err(error) => {
                    batch.dispositions.insert(
                        message.message_id.clone(),
                        Disposition::DeadLetter {
                            reason: format!("invalid inbound message: {error}"),
                        },
                    );
                }
            }
        }

        // Events acted on already (a redelivery), or twice in this batch, are done.
        let mut done_keys: HashSet<(String, String)> = HashSet::new();
        let mut by_provider: HashMap<&str, Vec<String>> = HashMap::new();
        for (_, inbound) in &parsed {
            by_provider
                .entry(&inbound.provider)
                .or_default()
                .push(inbound.event_key.clone());
        }
        for (provider, keys) in by_provider {
            match self.journal.processed(provider, &keys).await {
                Ok(done) => done_keys.extend(done.into_iter().map(|key| (provider.to_string(), key))),
                Err(error) => {
                    tracing::warn!(error = ?anyhow::Error::from(error), "could not look up processed events")
                }
            }
        }
        let mut pending: Vec<Pending> = Vec::new();
        let mut identities: Vec<IdentityWork> = Vec::new();
        let mut links: Vec<LinkWork> = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        for (message, inbound) in parsed {
            let id = (inbound.provider.clone(), inbound.event_key.clone());
            if done_keys.contains(&id) || !seen.insert(id) {
                batch.report.skipped += 1;
                batch
                    .dispositions
                    .insert(message.message_id.clone(), Disposition::Done);
                continue;
            }
            let ahead_ms = inbound.occurred_at_ms.saturating_sub(batch.now_ms);
            if ahead_ms > i64::try_from(self.settings.max_clock_skew.as_millis()).unwrap_or(i64::MAX) {
                // An event from the future would make every real change after it look older.
                // Its outcome is recorded as failed, which a redrive, once the clocks agree,
                // replaces when it applies the event.
                batch.dispositions.insert(
                    message.message_id.clone(),
                    Disposition::DeadLetter {
                        reason: format!(
                            "the event's time is {} s ahead of crm-sync's clock, more than the {} s allowed",
                            ahead_ms / 1000,
                            self.settings.max_clock_skew.as_secs()
                        ),
                    },
                );
                continue;
            }
            match self.events.interpret(&inbound) {
                Interpretation::Ignore(reason) => {
                    batch.report.skipped += 1;
                    batch
                        .dispositions
                        .insert(message.message_id.clone(), Disposition::Done);
                    batch
                        .outcomes
                        .push((inbound.clone(), EventOutcome::Ignored, reason));
                }
                Interpretation::Change(change) => pending.push(Pending {
                    message_id: message.message_id.clone(),
                    attempts: message.attempts(),
                    message: inbound,
                    change,
                    record: None,
                }),
                Interpretation::Identity(change) => identities.push(IdentityWork {
                    message_id: message.message_id.clone(),
                    attempts: message.attempts(),
                    message: inbound,
                    change,
                }),
                Interpretation::Link(change) => links.push(LinkWork {
                    message_id: message.message_id.clone(),
                    attempts: message.attempts(),
                    message: inbound,
                    change,
                }),
            }
        }
        (pending, identities, links)
    }

    /// Resolve: which app record each event's CRM record is (the state's index, else the CRM's
    /// id property); an event whose record cannot be known now waits, one of no app record is
    /// done with the reason.
    ///
    /// Long on purpose: one arm per way an event's record can be unknown (lookup failed, throttled,
    /// unreadable, none), side by side.
    async fn resolve(
        &self,
        pending: Vec<Pending>,
        batch: &mut Tally,
        deadline: Instant,
    ) -> (Vec<Pending>, HashMap<(ObjectKind, String), RecordRef>) {
        // Which app record each CRM record is.
        let mut crm_keys: Vec<(ObjectKind, String)> = pending
            .iter()
            .map(|p| (p.change.object, p.change.crm_id.clone()))
            .collect();
        crm_keys.sort();
        crm_keys.dedup();
        let found = bounded(
            crm_keys
                .iter()
                .map(|(object, crm_id)| self.queries.find_by_crm_id(*object, crm_id))
                .collect(),
        )
        .await;
        let mut records: HashMap<(ObjectKind, String), RecordRef> = HashMap::new();
        let mut lookup_failed = false;
        let mut unknown: Vec<(ObjectKind, String)> = Vec::new();
        for (key, result) in crm_keys.into_iter().zip(found) {
            match result {
                Ok(Some(state)) => {
                    records.insert(key, state.record);
                }
                Ok(None) => unknown.push(key),
                Err(error) => {
                    lookup_failed = true;
                    tracing::error!(error = ?anyhow::Error::from(error), "could not resolve a CRM id");
                }
            }
        }
        let mut throttled = HashMap::new();
        let mut waiting = HashMap::new();
        let unresolved = self
            .resolve_by_app_id(
                &unknown,
                &mut records,
                deadline,
                &mut batch.report,
                &mut throttled,
                &mut waiting,
            )
            .await;
        let mut work: Vec<Pending> = Vec::new();
        for p in pending {
            let key = (p.change.object, p.change.crm_id.clone());
            match records.get(&key) {
                Some(_) => work.push(p),
                None if lookup_failed => {
                    batch
                        .dispositions
                        .insert(p.message_id.clone(), Disposition::Redeliver);
                }
                None if throttled.contains_key(&key) => {
                    let wait_ms = u64::try_from(throttled[&key] - batch.now_ms).unwrap_or(1000);
                    batch.dispositions.insert(
                        p.message_id.clone(),
                        Disposition::Retry {
                            delay: Duration::from_millis(wait_ms).max(Duration::from_secs(1)),
                            attempts: p.attempts,
                        },
                    );
                }
                // Back three times, for the merge's event to arrive; then taken as no record's.
                None if waiting.contains_key(&key) && p.attempts < WAITS_FOR_A_MERGE => {
                    batch
                        .dispositions
                        .insert(p.message_id.clone(), self.retry(p.attempts, &waiting[&key]));
                }
                None if waiting.contains_key(&key) => {
                    batch.report.skipped += 1;
                    batch.dispositions.insert(p.message_id.clone(), Disposition::Done);
                    batch
                        .outcomes
                        .push((p.message.clone(), EventOutcome::Ignored, waiting[&key].clone()));
                }
                None if unresolved.contains_key(&key) => {
                    let reason = &unresolved[&key];
                    batch
                        .dispositions
                        .insert(p.message_id.clone(), self.retry(p.attempts, reason));
                }
                None => {
                    batch.report.skipped += 1;
                    batch.dispositions.insert(p.message_id.clone(), Disposition::Done);
                    let detail = format!("no app record has {} CRM id {}", p.change.object, p.change.crm_id);
                    batch
                        .outcomes
                        .push((p.message.clone(), EventOutcome::Ignored, detail));
                }
            }
        }
        (work, records)
    }

    /// Lease: each record leased to this attempt, as an outbound attempt would; an event of a
    /// record leased elsewhere waits a moment. Returns the events ready to decide, each with its
    /// record's state, and the states leased.
    async fn lease(
        &self,
        work: Vec<Pending>,
        records: &HashMap<(ObjectKind, String), RecordRef>,
        token: &str,
        batch: &mut Tally,
    ) -> (Vec<Pending>, HashMap<RecordRef, RecordState>) {
        let lease_until =
            batch.now_ms + i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut refs: Vec<RecordRef> = records.values().cloned().collect();
        refs.sort();
        refs.dedup();
        let leases = bounded(
            refs.iter()
                .map(|r| self.leases.lease(r, token, batch.now_ms, lease_until))
                .collect(),
        )
        .await;
        let mut leased: HashMap<RecordRef, RecordState> = HashMap::new();
        for (record, lease) in refs.into_iter().zip(leases) {
            match lease {
                Ok(LeaseOutcome::Leased(state)) => {
                    leased.insert(record, *state);
                }
                Ok(LeaseOutcome::Busy) => {}
                Err(error) => {
                    tracing::error!(error = ?anyhow::Error::from(error), "could not lease a record")
                }
            }
        }
        let mut ready = Vec::new();
        for mut p in work {
            let record = records[&(p.change.object, p.change.crm_id.clone())].clone();
            match leased.get(&record) {
                Some(state) => {
                    p.record = Some(state.clone());
                    ready.push(p);
                }
                None => {
                    batch.dispositions.insert(
                        p.message_id.clone(),
                        Disposition::Retry {
                            delay: self.settings.busy_delay,
                            attempts: p.attempts,
                        },
                    );
                }
            }
        }
        (ready, leased)
    }

    /// Read: creations and redacted values carry no usable values, so they are read from the
    /// CRM, in bulk. Returns what became of the events whose read failed.
    async fn read_missing(
        &self,
        ready: &mut [Pending],
        batch: &mut Tally,
        deadline: Instant,
    ) -> HashMap<String, Disposition> {
        // Creations and redacted values carry no usable values: read them, in bulk.
        let mut failed_reads: HashMap<String, Disposition> = HashMap::new();
        for object in self.mapping.kinds() {
            let Some(mapping) = self.mapping.object(object) else {
                continue;
            };
            let mut ids: Vec<String> = ready
                .iter()
                .filter(|p| p.change.object == object && p.change.properties.is_none())
                .map(|p| p.change.crm_id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            let properties: Vec<String> = mapping
                .fields
                .values()
                .map(|rule| rule.crm_property.clone())
                .collect();
            for chunk in ids.chunks(self.crm.max_batch().max(1)) {
                let result = self
                    .worker
                    .call(deadline, &mut batch.report, || {
                        self.crm.read(&mapping.crm_object, chunk, &properties)
                    })
                    .await;
                match result {
                    Ok(read) => {
                        for (crm_id, values) in chunk.iter().zip(read.records) {
                            for p in ready
                                .iter_mut()
                                .filter(|p| p.change.object == object && &p.change.crm_id == crm_id)
                            {
                                if p.change.properties.is_none() {
                                    p.change.properties = Some(values.clone().unwrap_or_default());
                                }
                            }
                        }
                    }
                    Err(failure) => {
                        for p in ready
                            .iter()
                            .filter(|p| p.change.object == object && chunk.contains(&p.change.crm_id))
                        {
                            let disposition = match &failure {
                                CallFailure::Throttled { until_ms } => Disposition::Retry {
                                    delay: Duration::from_millis(
                                        u64::try_from(until_ms - batch.now_ms).unwrap_or(1000),
                                    ),
                                    attempts: p.attempts,
                                },
                                CallFailure::Transient(reason) => self.retry(p.attempts, reason),
                                CallFailure::Rejected(reason) => Disposition::DeadLetter {
                                    reason: reason.clone(),
                                },
                            };
                            failed_reads.insert(p.message_id.clone(), disposition);
                        }
                    }
                }
            }
        }
        failed_reads
    }

    /// Decide: each event's values field by field (deliver, conflict, echo, stale), per record
    /// in the order they happened, against the record's state as this batch moves it on.
    fn decide_all(
        &self,
        ready: &[Pending],
        failed_reads: &HashMap<String, Disposition>,
        own_creations: &HashSet<String>,
        noted_ms: i64,
    ) -> BTreeMap<RecordRef, RecordWork> {
        let mut per_record: BTreeMap<RecordRef, RecordWork> = BTreeMap::new();
        for p in ready {
            if failed_reads.contains_key(&p.message_id) {
                continue;
            }
            let leased = p.record.as_ref().expect("leased records carry their state");
            let record = leased.record.clone();
            // Once a record: its pending change is parsed for the first of its events only.
            let entry = per_record.entry(record.clone()).or_insert_with(|| {
                let state = self.with_pending_writes(leased.clone());
                let update = InboundUpdate::unchanged(&state);
                (state, update, Vec::new())
            });
            let Some(mapping) = self.mapping.object(record.object) else {
                continue;
            };
            // Decide against the state as this batch has moved it on.
            let mut current = entry.0.clone();
            current.inbound_at = entry.1.inbound_at.clone();
            current.received = entry.1.received.clone();
            current.recent_events = entry.1.recent_events.clone();
            let mut effects = Effects::default();
            if current.acted_on(&p.message.event_key) {
                effects.copy = true;
                entry.2.push((p.message_id.clone(), effects));
                continue;
            }
            entry.1.acted_on(&p.message.event_key);
            if own_creations.contains(&p.message_id) {
                effects.echoes += 1;
            }
            let mut properties = p.change.properties.clone().unwrap_or_default();
            self.events
                .align(record.object, &mut properties, &current.written);
            for (property, value) in properties {
                match decide(mapping, &current, &p.change, &property, &value) {
                    FieldDecision::Deliver { field, value } => {
                        later(&mut entry.1.inbound_at, &property, p.change.occurred_at_ms);
                        entry.1.received.insert(property.clone(), value.clone());
                        effects.delivered.insert(field, value);
                    }
                    FieldDecision::Conflict {
                        field,
                        app_value,
                        crm_value,
                    } => {
                        later(&mut entry.1.inbound_at, &property, p.change.occurred_at_ms);
                        let open = entry.1.conflict(&property, p.change.occurred_at_ms, noted_ms);
                        let resolution = if !open {
                            OVERWRITTEN
                        } else if self.settings.reassert_app_values && app_value.is_some() {
                            REASSERTED
                        } else {
                            NOT_APPLIED
                        };
                        effects.conflicts.push(ConflictEntry {
                            record: record.clone(),
                            at_ms: p.change.occurred_at_ms,
                            field,
                            crm_property: property.clone(),
                            app_value,
                            crm_value,
                            source: p.change.source.clone(),
                            event_key: p.message.event_key.clone(),
                            resolution: resolution.to_string(),
                            noted_at_ms: noted_ms,
                        });
                    }
                    FieldDecision::Echo => {
                        later(&mut entry.1.inbound_at, &property, p.change.occurred_at_ms);
                        effects.echoes += 1;
                    }
                    FieldDecision::Stale => effects.stale += 1,
                    FieldDecision::Unmapped => {}
                }
            }
            entry.2.push((p.message_id.clone(), effects));
        }
        per_record
    }

    /// Settle: each record's conflicts journaled, the timeline written, then each record's
    /// update under its lease (with the fingerprints of the events acted on, so that a copy finds
    /// them: the conflicts must be journaled by then), and its events' outcomes; a record whose
    /// inbox messages did not all go out counts as not done. The timeline is written while the
    /// leases are held: a line written after a lease is given back could land after a privacy
    /// erasure had forgotten the record's history. Returns the records settled.
    ///
    /// Long on purpose: a record's update, outcomes, timeline and conflicts are settled together.
    async fn settle_records(
        &self,
        per_record: BTreeMap<RecordRef, RecordWork>,
        inbox_failures: &HashSet<String>,
        by_id: &HashMap<&str, &Pending>,
        token: &str,
        settle_now: i64,
        batch: &mut Tally,
    ) -> HashSet<RecordRef> {
        let settled: HashSet<RecordRef> = per_record.keys().cloned().collect();
        let mut timeline = Vec::new();
        let mut ready = Vec::new();
        for (record, (state, update, items)) in per_record {
            let failed = items.iter().any(|(id, _)| inbox_failures.contains(id));
            let update = if failed {
                // Nothing of this record counts as done: the redelivery acts on it again. The
                // sequence numbers some of its messages went out with stay spent, so that no
                // later message of the record is numbered like one the app may hold already.
                InboundUpdate {
                    inbox_sequence: update.inbox_sequence,
                    ..InboundUpdate::unchanged(&state)
                }
            } else {
                let mut update = update;
                if self.settings.reassert_app_values {
                    update.written = Some(state.written.clone());
                }
                update
            };
            // Entries are keyed by event and property, so one journaled again (a crash before
            // the settle below) is the same entry.
            let conflicts: Vec<ConflictEntry> = items
                .iter()
                .filter(|_| !failed)
                .flat_map(|(_, effects)| effects.conflicts.iter().cloned())
                .collect();
            if !conflicts.is_empty() {
                if let Err(error) = self.history.append_conflicts(&conflicts).await {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not journal conflicts; the events are acted on again");
                    for (id, _) in &items {
                        batch.dispositions.insert(id.clone(), Disposition::Redeliver);
                    }
                    continue;
                }
            }
            if !failed {
                for (id, effects) in &items {
                    timeline.extend(event_entries(&record, by_id[id.as_str()], effects));
                }
            }
            ready.push((record, update, items, failed));
        }
        if let Err(error) = self.history.append_timeline(&timeline).await {
            tracing::error!(error = ?anyhow::Error::from(error), "could not write the timeline");
        }
        for (record, update, items, failed) in ready {
            let settled = match self
                .leases
                .settle_inbound(&record, token, settle_now, &update)
                .await
            {
                Ok(settled) => settled,
                Err(error) => {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not settle inbound work");
                    false
                }
            };
            if !settled || failed {
                // Not recorded (the lease ran out, or the store failed), or not all told to the
                // app: acted on again.
                for (id, _) in &items {
                    batch.dispositions.insert(id.clone(), Disposition::Redeliver);
                }
                continue;
            }
            for (id, effects) in items {
                let p = by_id[id.as_str()];
                let (outcome, detail) = describe(&effects);
                match outcome {
                    EventOutcome::Applied => batch.report.applied += 1,
                    _ => batch.report.skipped += 1,
                }
                batch.outcomes.push((p.message.clone(), outcome, detail));
                batch.dispositions.insert(id, Disposition::Done);
            }
        }
        settled
    }

    /// Deliver: the CRM-owned changes each record's events decided, to the app inbox, numbered
    /// per record in the order they happened. Returns the messages the inbox did not take.
    async fn deliver(
        &self,
        per_record: &mut BTreeMap<RecordRef, RecordWork>,
        by_id: &HashMap<&str, &Pending>,
    ) -> HashSet<String> {
        let mut inbox = Vec::new();
        for (record, (state, update, items)) in per_record.iter_mut() {
            let mut sequence = state.inbox_sequence;
            for (message_id, effects) in items.iter() {
                if effects.delivered.is_empty() {
                    continue;
                }
                let p = by_id[message_id.as_str()];
                sequence += 1;
                inbox.push(OutgoingMessage::new(
                    message_id.clone(),
                    app_inbox_message(
                        record,
                        sequence,
                        &p.message.provider,
                        &p.change.crm_id,
                        &effects.delivered,
                        p.change.occurred_at_ms,
                        &p.change.source,
                        &p.message.event_key,
                    ),
                ));
            }
            update.inbox_sequence = sequence;
        }
        self.app_inbox
            .send(&inbox)
            .await
            .into_iter()
            .map(|f| f.id)
            .collect()
    }

    /// Record: the conflict journal, the timeline, and each event's outcome on its stored item
    /// (dead-lettered ones as failed, with the reason), so that a redelivery is known as one.
    async fn record(
        &self,
        messages: &[SyncMessage],
        dispositions: &HashMap<String, Disposition>,
        outcomes: &[(InboundMessage, EventOutcome, String)],
        timeline: &[TimelineEntry],
        settle_now: i64,
    ) {
        if let Err(error) = self.history.append_timeline(timeline).await {
            tracing::error!(error = ?anyhow::Error::from(error), "could not write the timeline");
        }
        let recorded = bounded(
            outcomes
                .iter()
                .map(|(event, outcome, detail)| {
                    self.journal.record_outcome(event, *outcome, detail, settle_now)
                })
                .collect(),
        )
        .await;
        for result in recorded {
            if let Err(error) = result {
                tracing::warn!(error = ?anyhow::Error::from(error), "could not record an event outcome");
            }
        }
        for message in messages {
            if let Some(Disposition::DeadLetter { reason }) = dispositions.get(&message.message_id) {
                if let Ok(inbound) = parse_inbound(&message.body) {
                    let _ = self
                        .journal
                        .record_outcome(&inbound, EventOutcome::Failed, reason, settle_now)
                        .await;
                }
            }
        }
    }

    /// Writes the app's values of this batch's conflicts back to the CRM; returns the records
    /// whose write went through.
    async fn reassert(
        &self,
        per_record: &BTreeMap<RecordRef, RecordWork>,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> HashSet<RecordRef> {
        let mut written = HashSet::new();
        for object in self.mapping.kinds() {
            let Some(mapping) = self.mapping.object(object) else {
                continue;
            };
            let (records, inputs): (Vec<&RecordRef>, Vec<UpdateInput>) = per_record
                .iter()
                .filter(|(record, _)| record.object == object)
                .filter_map(|(record, (state, _, items))| {
                    let properties: BTreeMap<String, String> = items
                        .iter()
                        .flat_map(|(_, effects)| effects.conflicts.iter())
                        .filter(|c| c.resolution != OVERWRITTEN)
                        .filter_map(|c| Some((c.crm_property.clone(), c.app_value.clone()?)))
                        .collect();
                    (!properties.is_empty()).then(|| {
                        (
                            record,
                            UpdateInput {
                                crm_id: state.crm_id.clone().unwrap_or_default(),
                                properties,
                                written_before: state.written.clone(),
                            },
                        )
                    })
                })
                .unzip();
            let max = self.crm.max_batch().max(1);
            for (chunk, chunk_records) in inputs.chunks(max).zip(records.chunks(max)) {
                match self
                    .worker
                    .call(deadline, report, || self.crm.update(&mapping.crm_object, chunk))
                    .await
                {
                    Ok(result) => {
                        for (record, outcome) in chunk_records.iter().zip(&result.outcomes) {
                            if matches!(outcome, crate::domain::crm::InputOutcome::Done { .. }) {
                                written.insert((*record).clone());
                            }
                        }
                    }
                    Err(failure) => {
                        let reason = match failure {
                            CallFailure::Throttled { .. } => "throttled".to_string(),
                            CallFailure::Transient(reason) | CallFailure::Rejected(reason) => reason,
                        };
                        tracing::warn!(%reason, "could not re-assert app values; the nightly reconciliation will");
                    }
                }
            }
        }
        written
    }
}

/// Moves a property's last acted-on time forward, never back: a late conflict is journaled
/// without making older events look new.
fn later(inbound_at: &mut BTreeMap<String, i64>, property: &str, at_ms: i64) {
    let known = inbound_at.entry(property.to_string()).or_insert(at_ms);
    *known = (*known).max(at_ms);
}

fn inbound_entry(record: &RecordRef, p: &Pending, kind: TimelineKind, detail: String) -> TimelineEntry {
    TimelineEntry {
        record: record.clone(),
        at_ms: p.change.occurred_at_ms,
        kind,
        idempotency_id: Some(p.message.event_key.clone()),
        detail,
        call: None,
    }
}

/// The timeline lines of one event acted on: what it delivered, and each conflict.
fn event_entries(record: &RecordRef, p: &Pending, effects: &Effects) -> Vec<TimelineEntry> {
    let mut entries = Vec::new();
    if !effects.delivered.is_empty() {
        let fields: Vec<String> = effects
            .delivered
            .iter()
            .map(|(f, v)| format!("{f} = {v}"))
            .collect();
        entries.push(inbound_entry(
            record,
            p,
            TimelineKind::Received,
            format!("from the CRM ({}): {}", p.change.source, fields.join(", ")),
        ));
    }
    for conflict in &effects.conflicts {
        entries.push(inbound_entry(
            record,
            p,
            TimelineKind::Conflict,
            format!(
                "{} changed in the CRM ({}) to {:?}; the app owns it ({:?}): {}",
                conflict.field,
                conflict.source,
                conflict.crm_value,
                conflict.app_value.as_deref().unwrap_or(""),
                conflict.resolution
            ),
        ));
    }
    entries
}

/// The event's outcome: delivered beats conflict beats echo beats ignored.
fn describe(effects: &Effects) -> (EventOutcome, String) {
    if effects.copy {
        (
            EventOutcome::Ignored,
            "a copy of an event already acted on for this record".to_string(),
        )
    } else if !effects.delivered.is_empty() {
        let fields: Vec<&str> = effects.delivered.keys().map(String::as_str).collect();
        (
            EventOutcome::Applied,
            format!("delivered to the app: {}", fields.join(", ")),
        )
    } else if !effects.conflicts.is_empty() {
        let fields: Vec<&str> = effects.conflicts.iter().map(|c| c.field.as_str()).collect();
        (
            EventOutcome::Conflict,
            format!("app-owned, journaled: {}", fields.join(", ")),
        )
    } else if effects.echoes > 0 {
        (EventOutcome::Echo, "crm-sync's own write".to_string())
    } else if effects.stale > 0 {
        (
            EventOutcome::Ignored,
            "older than a change already applied".to_string(),
        )
    } else {
        (EventOutcome::Ignored, "no mapped property changed".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AlwaysChange;

    impl CrmEvents for AlwaysChange {
        fn interpret(&self, message: &InboundMessage) -> Interpretation {
            Interpretation::Change(CrmChange {
                object: ObjectKind::Contact,
                crm_id: message.object_id.clone().unwrap_or_default(),
                occurred_at_ms: message.occurred_at_ms,
                source: "CRM_UI".into(),
                from_integration: false,
                created: false,
                properties: None,
            })
        }
    }

    fn message(provider: &str) -> InboundMessage {
        InboundMessage {
            provider: provider.into(),
            event_key: "k".into(),
            delivery_id: None,
            received_at_ms: None,
            kind: "contact.propertyChange".into(),
            object_type: Some("contact".into()),
            object_id: Some("7".into()),
            occurred_at_ms: 1,
            event: serde_json::json!({}),
        }
    }

    #[test]
    fn events_of_the_configured_crm_are_read_and_another_crms_are_ignored() {
        let events = EventsOf::new("hubspot", Some(Arc::new(AlwaysChange)));
        assert!(matches!(
            events.interpret(&message("hubspot")),
            Interpretation::Change(_)
        ));
        let Interpretation::Ignore(reason) = events.interpret(&message("pipedrive")) else {
            panic!("a pipedrive event is not for a hubspot deployment");
        };
        assert!(
            reason.contains("pipedrive") && reason.contains("hubspot"),
            "{reason}"
        );
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod use_case_tests;
