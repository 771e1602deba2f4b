//! The outbound sync use case: a batch of app changes from the queue becomes as few CRM calls as
//! possible, each record's newest change only, within the CRM's budget; every message ends done,
//! re-queued with a delay, or dead-lettered with its reason, and never fails its batch.
//!
//! Retries go back on the queue as fresh messages (`DelaySeconds`, with the attempt count in a
//! message attribute) rather than through the visibility timeout, so that the queue's receive
//! count, and with it the redrive policy, only ever sees crashes: a throttle never dead-letters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::contract::{
    parse_change, Association, Change, ContractError, ObjectKind, Operation, RecordRef,
};
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmLink, FailureKind, InputOutcome, LinkInput, UpdateInput, UpsertInput,
};
use crate::domain::mapping::{Mapping, ObjectMapping, OutboundProperties, LABELS};
use crate::domain::sync::{
    backoff, newest_per_record, remember_writes, Queued, RecordState, SyncStatus, TimelineEntry, TimelineKind,
};
use crate::domain::Clock;
use crate::ports::state::*;
use crate::ports::{Crm, MessageQueue, RateLimiter, RecordClaim, Settlement};
use crate::worker::{bounded_each, BatchReport, CallFailure, CallSettings, Disposition, SyncMessage, Worker};

/// Retry and lease settings.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Transient failures before a change is dead-lettered.
    pub max_attempts: u32,
    /// Queue-level backoff: base and cap (SQS delays stop at 900 s).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Quick retries of a failed call inside one invocation, before re-queueing.
    pub quick_retries: u32,
    pub quick_retry_base: Duration,
    /// How long a record stays leased to one attempt: above the function timeout, below the
    /// queue's visibility timeout.
    pub lease: Duration,
    /// Delay before retrying a record another attempt holds.
    pub busy_delay: Duration,
    /// Longest wait for the rate limiter inside an invocation; longer waits re-queue.
    pub max_limiter_wait: Duration,
    /// The reconciliation lane: only call slots live work leaves idle.
    pub low_priority: bool,
    /// How far ahead of this clock a change's `changed_at` may be. A change dated further ahead
    /// would win over every real change after it, so it is dead-lettered instead.
    pub max_clock_skew: Duration,
    /// What a record whose unique value (an email) a CRM record already holds does.
    pub shared_email: SharedEmailPolicy,
    /// How long after it was made a link waits for the records it joins to be in the CRM,
    /// before it is dead-lettered (retryable: the nightly reconciliation sends it again).
    pub max_link_wait: Duration,
}

/// What a record does when a CRM record it is not linked to holds its unique value (a contact's
/// email). Either way a CRM record that carries another app record's id is never taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedEmailPolicy {
    /// Take the CRM record over when it carries no other app record's id (a contact a person
    /// entered before the app had it): one CRM record per person.
    #[default]
    Adopt,
    /// Never take one over: the change fails as an identity conflict for an operator, who merges
    /// or relinks in the CRM.
    Refuse,
}

impl SharedEmailPolicy {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "adopt" => Some(Self::Adopt),
            "refuse" => Some(Self::Refuse),
            _ => None,
        }
    }
}

impl SyncSettings {
    pub fn call_settings(&self) -> CallSettings {
        CallSettings {
            quick_retries: self.quick_retries,
            quick_retry_base: self.quick_retry_base,
            max_limiter_wait: self.max_limiter_wait,
            low_priority: self.low_priority,
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(900),
            quick_retries: 2,
            quick_retry_base: Duration::from_millis(250),
            lease: Duration::from_secs(120),
            busy_delay: Duration::from_secs(5),
            max_limiter_wait: Duration::from_secs(10),
            low_priority: false,
            max_clock_skew: Duration::from_secs(300),
            shared_email: SharedEmailPolicy::Adopt,
            max_link_wait: Duration::from_secs(24 * 3600),
        }
    }
}

/// A batch's bookkeeping as its phases go: the report, each message's fate, the timeline
/// entries to write, and the batch's clock reading.
struct Tally {
    report: BatchReport,
    dispositions: HashMap<String, Disposition>,
    timeline: Vec<TimelineEntry>,
    now_ms: i64,
}

/// How a change of an erased record is refused (kept nowhere, not dead-lettered).
const ERASED: &str = "refused";

#[path = "sync_identity.rs"]
mod identity;
use identity::{CrmFuture, Target};

/// A claimed record and the change to apply to it.
struct Work {
    queued: Queued,
    prior: RecordState,
    outbound: OutboundProperties,
    /// When the attempt took the record (before any CRM call): what its writes resolve
    /// conflicts up to, and what a later event of the CRM is compared with.
    claimed_at_ms: i64,
}

/// How one piece of work ended.
#[derive(Debug, Clone)]
enum Outcome {
    Applied {
        crm_id: Option<String>,
        created: bool,
        call: String,
        /// The record's own CRM id, when the write went to `crm_id`, the survivor the CRM merged
        /// it into: the record stays where it is until the merge's event moves it.
        followed: Option<String>,
    },
    Failed {
        kind: FailureKind,
        error: String,
        call: Option<String>,
    },
    Throttled {
        until_ms: i64,
    },
    /// Waits for a record it links to to be in the CRM: retried without counting an attempt,
    /// up to [`SyncSettings::max_link_wait`] after the change was made.
    Waiting {
        reason: String,
    },
}

/// The ports the sync needs.
pub struct SyncService {
    mapping: Arc<Mapping>,
    crm: Arc<dyn Crm>,
    leases: Arc<dyn RecordLeases>,
    history: Arc<dyn RecordJournal>,
    queries: Arc<dyn RecordQueries>,
    clock: Arc<dyn Clock>,
    worker: Worker,
    settings: SyncSettings,
}

impl SyncService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mapping: Arc<Mapping>,
        crm: Arc<dyn Crm>,
        state: Arc<impl RecordLeases + RecordJournal + RecordQueries + 'static>,
        limiter: Arc<dyn RateLimiter>,
        retry_queue: Arc<dyn MessageQueue>,
        dead_letters: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
        settings: SyncSettings,
    ) -> Self {
        let worker = Worker::new(
            limiter,
            retry_queue,
            dead_letters,
            clock.clone(),
            settings.call_settings(),
        );
        Self {
            mapping,
            crm,
            leases: state.clone(),
            history: state.clone(),
            queries: state,
            clock,
            worker,
            settings,
        }
    }

    /// Handles a batch; finishes (or re-queues what it cannot finish) before `deadline`.
    pub async fn process(&self, messages: Vec<SyncMessage>, deadline: Instant) -> BatchReport {
        let mut batch = Tally {
            report: BatchReport::default(),
            dispositions: HashMap::new(),
            timeline: Vec::new(),
            now_ms: self.clock.now_ms(),
        };
        let queued = self.validate(&messages, &mut batch);
        // Newest change per record: what a newer one in the batch replaces is done.
        let plan = newest_per_record(queued);
        for (superseded, by) in &plan.superseded {
            batch
                .dispositions
                .insert(superseded.message_id.clone(), Disposition::Done);
            batch.report.skipped += 1;
            if *by == superseded.change.idempotency_id {
                // The same change delivered twice: nothing to tell.
                continue;
            }
            batch.timeline.push(entry(
                &superseded.change,
                batch.now_ms,
                TimelineKind::Skipped,
                format!("superseded by the newer change {by} in the same batch"),
                None,
            ));
        }

        let token = uuid::Uuid::new_v4().to_string();
        let work = self.claim(plan.newest, &token, &mut batch).await;
        let outcomes = self.write(&work, deadline, &mut batch.report).await;
        self.settle_all(&work, outcomes, &token, &mut batch).await;
        let Tally {
            mut report,
            dispositions,
            timeline,
            now_ms,
        } = batch;
        if let Err(error) = self.history.append_timeline(&timeline).await {
            // The outcome is in each record's state; only the history line is lost.
            tracing::error!(error = ?anyhow::Error::from(error), entries = timeline.len(), "could not write the timeline");
        }
        self.worker.dispatch(&messages, dispositions, &mut report).await;
        let (synced, failed) = (report.applied as u64, report.dead_lettered as u64);
        // Live changes only: the reconciliation's and backfills' would drown them out.
        if synced + failed > 0 && !self.settings.low_priority {
            let hour = crate::domain::health::hour_of(now_ms);
            if let Err(error) = self.history.count_outcomes(hour, synced, failed).await {
                // Only the health page's hourly chart misses them.
                tracing::warn!(error = ?anyhow::Error::from(error), "could not count the batch's outcomes");
            }
        }
        report
    }

    /// Validate: each message against the contract, the mapping and the clock; what fails is
    /// dead-lettered with its reason before any CRM call.
    fn validate(&self, messages: &[SyncMessage], batch: &mut Tally) -> Vec<Queued> {
        let mut queued = Vec::new();
        for message in messages {
            let attempts = message.attempts();
            match parse_change(&message.body)
                .and_then(|change| self.mapping.outbound(&change).map(|_| change))
                .and_then(|change| check_clock_skew(&change, batch.now_ms, self.settings.max_clock_skew))
                .map(|change| self.mapping.keyed(change))
            {
                Ok(change) => queued.push(Queued {
                    message_id: message.message_id.clone(),
                    change,
                    attempts,
                    body: message.body.clone(),
                }),
                Err(error) => {
                    tracing::warn!(message_id = %message.message_id, reason = %error, "invalid message");
                    batch.dispositions.insert(
                        message.message_id.clone(),
                        Disposition::DeadLetter {
                            reason: format!("invalid message: {error}"),
                        },
                    );
                }
            }
        }
        queued
    }

    /// Claim: each record's lease and the change's version in one conditional write, and what
    /// the attempt will write with it; a stale, duplicate, busy or oversized change goes no
    /// further. Returns the records this attempt now holds.
    ///
    /// Long on purpose: one arm per claim outcome (claimed, stale, refused, duplicate, busy), side by
    /// side.
    async fn claim(&self, newest: Vec<Queued>, token: &str, batch: &mut Tally) -> Vec<Work> {
        let lease_until_ms =
            batch.now_ms + i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX / 2);
        // What each attempt is about to write, mapped once and claimed with the lease (see
        // `claimed_writes`).
        let outbounds: Vec<OutboundProperties> = newest
            .iter()
            .map(|queued| {
                self.mapping
                    .outbound(&queued.change)
                    .expect("checked when parsed")
            })
            .collect();
        let claiming: Vec<(&Queued, &OutboundProperties)> = newest.iter().zip(&outbounds).collect();
        let claims = bounded_each(&claiming, |(queued, outbound)| {
            self.leases.claim(
                &queued.change,
                &queued.body,
                &outbound.properties,
                token,
                batch.now_ms,
                lease_until_ms,
            )
        })
        .await;
        let mut work = Vec::new();
        let mut oversized: Vec<(Queued, String, BTreeMap<String, Vec<String>>)> = Vec::new();
        for ((queued, claim), outbound) in newest.into_iter().zip(claims).zip(outbounds) {
            let id = queued.message_id.clone();
            match claim {
                Ok(RecordClaim::Claimed(prior)) => {
                    if let Some(at_ms) = prior.erased_at_ms {
                        // Nothing of it is kept: not the change, not a dead letter of it.
                        let at = crate::domain::clock::rfc3339(at_ms);
                        let reason = if queued.change.operation == Operation::Erase {
                            format!("{ERASED}: erased already at {at}")
                        } else {
                            format!("{ERASED}: the record was erased for privacy at {at}; erase it in the app too")
                        };
                        oversized.push((queued, reason, BTreeMap::new()));
                        continue;
                    }
                    if let Some(reason) = prior
                        .identity_conflict
                        .clone()
                        .filter(|_| !matches!(queued.change.operation, Operation::Delete | Operation::Erase))
                    {
                        // Held while another app record still holds the CRM record: once the
                        // others are deleted, the record writes again.
                        if self.still_shared(&prior).await {
                            oversized.push((queued, format!("held: {reason}"), prior.own_writes()));
                            continue;
                        }
                    }
                    if let Some(reason) = state_too_large(&queued, &prior, &outbound) {
                        // Refused before any CRM call: once written, the outcome could not be
                        // recorded, and the state would never say what the CRM holds.
                        oversized.push((queued, reason, prior.own_writes()));
                        continue;
                    }
                    work.push(Work {
                        queued,
                        prior,
                        outbound,
                        claimed_at_ms: batch.now_ms,
                    });
                }
                Ok(RecordClaim::Stale(state)) => {
                    batch.report.skipped += 1;
                    batch.dispositions.insert(id, Disposition::Done);
                    batch.timeline.push(entry(
                        &queued.change,
                        batch.now_ms,
                        TimelineKind::Skipped,
                        format!(
                            "older than the change applied already (changed at {})",
                            crate::domain::clock::rfc3339(state.applied_version_ms.unwrap_or_default())
                        ),
                        None,
                    ));
                }
                Ok(RecordClaim::Refused(reason)) => {
                    // Nothing was written: the state still says what the CRM holds.
                    tracing::warn!(message_id = %id, record = %queued.change.record(), "the record's state cannot take the change");
                    batch.dispositions.insert(
                        id,
                        refused(&queued.change, batch.now_ms, reason, &mut batch.timeline),
                    );
                }
                Ok(RecordClaim::Duplicate) => {
                    batch.report.skipped += 1;
                    batch.dispositions.insert(id, Disposition::Done);
                }
                Ok(RecordClaim::Busy) => {
                    batch.dispositions.insert(
                        id,
                        Disposition::Retry {
                            delay: self.settings.busy_delay,
                            attempts: queued.attempts,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(message_id = %id, error = ?anyhow::Error::from(error), "could not claim the record");
                    batch.dispositions.insert(id, Disposition::Redeliver);
                }
            }
        }

        // Refused after the claim: too large for the state, held by an identity conflict (a
        // dead letter an operator redrives once it is resolved), or erased (dropped, kept nowhere).
        for (queued, reason, recent_writes) in oversized {
            let erased = reason.starts_with(ERASED);
            let failed = if erased {
                Settlement::Dropped {
                    error: reason.clone(),
                }
            } else {
                Settlement::Failed {
                    error: reason.clone(),
                    status: SyncStatus::Failed,
                    retryable: false,
                    recent_writes,
                }
            };
            let record = queued.change.record();
            let disposition = match self.leases.settle(&record, token, batch.now_ms, &failed).await {
                Ok(false) => Disposition::Retry {
                    delay: self.settings.busy_delay,
                    attempts: queued.attempts,
                },
                Ok(true) if erased => {
                    batch.report.skipped += 1;
                    batch.timeline.push(entry(
                        &queued.change,
                        batch.now_ms,
                        TimelineKind::Skipped,
                        reason,
                        None,
                    ));
                    Disposition::Done
                }
                Ok(true) => refused(&queued.change, batch.now_ms, reason, &mut batch.timeline),
                Err(error) => {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not record the outcome");
                    Disposition::Redeliver
                }
            };
            batch.dispositions.insert(queued.message_id.clone(), disposition);
        }
        work
    }

    /// Write: the claimed changes to the CRM in bulk, contacts first (deals and activities link
    /// to them), then the links. Returns each message's outcome.
    async fn write(
        &self,
        work: &[Work],
        deadline: Instant,
        report: &mut BatchReport,
    ) -> HashMap<String, Outcome> {
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut written_contacts: HashMap<String, String> = HashMap::new();
        // Every record this batch put in the CRM or took out of it, for the links that follow.
        let mut written: HashMap<RecordRef, String> = HashMap::new();
        let mut gone: HashSet<RecordRef> = HashSet::new();
        // The CRM ids of the contacts deals and activities belong to, once contacts are written.
        let mut parents: Option<ContactIds> = None;
        // The built-in kinds in the order their records depend on each other, then the kinds the
        // mapping declares.
        let declared = self
            .mapping
            .kinds()
            .into_iter()
            .filter(|kind| !kind.is_built_in())
            .flat_map(|kind| [(kind, Operation::Upsert), (kind, Operation::Delete)]);
        let groups: Vec<(ObjectKind, Operation)> = [
            (ObjectKind::Contact, Operation::Upsert),
            (ObjectKind::Contact, Operation::Delete),
            (ObjectKind::Contact, Operation::Erase),
            (ObjectKind::Deal, Operation::Upsert),
            (ObjectKind::Deal, Operation::Delete),
            (ObjectKind::Activity, Operation::Log),
        ]
        .into_iter()
        .chain(declared)
        .collect();
        for (object, operation) in groups {
            let group: Vec<&Work> = work
                .iter()
                .filter(|w| w.queued.change.object == object && w.queued.change.operation == operation)
                .collect();
            if group.is_empty() {
                continue;
            }
            let mapping = self.mapping.object(object).expect("checked when parsed");
            if object != ObjectKind::Contact && object.is_built_in() && parents.is_none() {
                parents = Some(self.contact_crm_ids(work, &written_contacts).await);
            }
            let results = match operation {
                Operation::Delete => self.archive_group(mapping, &group, deadline, report).await,
                Operation::Erase => self.erase_group(mapping, &group, deadline, report).await,
                _ => {
                    let parents = parents.as_ref().map(|p| p.crm_ids.clone()).unwrap_or_default();
                    self.upsert_group(mapping, &group, &parents, deadline, report)
                        .await
                }
            };
            for (w, outcome) in group.iter().zip(results) {
                if let Outcome::Applied { crm_id, .. } = &outcome {
                    match (operation, crm_id) {
                        (Operation::Delete | Operation::Erase, _) => {
                            gone.insert(w.queued.change.record());
                        }
                        (_, Some(crm_id)) => {
                            written.insert(w.queued.change.record(), crm_id.clone());
                        }
                        _ => {}
                    }
                }
                if object == ObjectKind::Contact {
                    if let Outcome::Applied {
                        crm_id: Some(crm_id), ..
                    } = &outcome
                    {
                        written_contacts.insert(w.queued.change.record_id.clone(), crm_id.clone());
                    }
                }
                outcomes.insert(w.queued.message_id.clone(), outcome);
            }
        }
        let parents = match parents {
            Some(parents) => parents,
            None => self.contact_crm_ids(work, &written_contacts).await,
        };
        self.associate(work, &mut outcomes, &parents, deadline, report)
            .await;
        self.write_links(work, (&written, &gone), &mut outcomes, deadline, report)
            .await;
        outcomes
    }

    /// Writes the batch's association changes, once the records they join are written: a pair
    /// whose other end is not in the CRM (yet, or again after the app deleted it) waits and is
    /// retried, never linked to anything else; removing a link crm-sync never made, or one to a
    /// deleted record, makes no call.
    ///
    /// Long on purpose: finding both ends' CRM ids, then one call a chunk of pairs per link
    /// type and direction.
    async fn write_links(
        &self,
        work: &[Work],
        (written, gone): (&HashMap<RecordRef, String>, &HashSet<RecordRef>),
        outcomes: &mut HashMap<String, Outcome>,
        deadline: Instant,
        report: &mut BatchReport,
    ) {
        let links: Vec<(&Work, &Association)> = work
            .iter()
            .filter_map(|w| w.queued.change.association.as_ref().map(|a| (w, a)))
            .collect();
        if links.is_empty() {
            return;
        }
        let mut ends: Vec<RecordRef> = links
            .iter()
            .flat_map(|(_, a)| [a.from.clone(), a.to.clone()])
            .filter(|end| !written.contains_key(end) && !gone.contains(end))
            .collect();
        ends.sort();
        ends.dedup();
        let mut crm_ids = written.clone();
        // Deleted or erased in this batch, or before (the state says so).
        let mut deleted: HashSet<RecordRef> = gone.clone();
        if !ends.is_empty() {
            match self.in_crm(&ends).await {
                Ok((in_crm, gone_before)) => {
                    crm_ids.extend(in_crm);
                    deleted.extend(gone_before);
                }
                Err(error) => {
                    let error = format!("could not read the linked records' states: {error}");
                    for (w, _) in &links {
                        outcomes.insert(
                            w.queued.message_id.clone(),
                            Outcome::Failed {
                                kind: FailureKind::Transient,
                                error: error.clone(),
                                call: None,
                            },
                        );
                    }
                    return;
                }
            }
        }
        // A record the CRM merged away is linked on its survivor (its merge's event may not have
        // moved the record yet); one erased for privacy is gone.
        let mut by_kind: BTreeMap<ObjectKind, Vec<String>> = BTreeMap::new();
        for (record, crm_id) in &crm_ids {
            by_kind.entry(record.object).or_default().push(crm_id.clone());
        }
        for (kind, ids) in by_kind {
            let survivors = crate::merges::survivors(self.queries.as_ref(), kind, &ids).await;
            if survivors.is_empty() {
                continue;
            }
            for (record, crm_id) in crm_ids.iter_mut().filter(|(record, _)| record.object == kind) {
                match survivors.get(crm_id.as_str()) {
                    Some(survivor) if survivor == crate::domain::identity::ERASED_MARK => {
                        deleted.insert(record.clone());
                    }
                    Some(survivor) => *crm_id = survivor.clone(),
                    None => {}
                }
            }
        }
        crm_ids.retain(|record, _| !deleted.contains(record));
        // (from type, to type, operation) → the pairs to write, with the messages they settle.
        let mut groups: BTreeMap<(ObjectKind, ObjectKind, Operation), Vec<(String, LinkInput)>> =
            BTreeMap::new();
        for (w, association) in &links {
            let operation = w.queued.change.operation;
            let verb = if operation == Operation::Delete {
                "remove"
            } else {
                "set"
            };
            let id = w.queued.message_id.clone();
            let (from, to) = (&association.from, &association.to);
            // crm-sync made no link for this record yet (or removed it last): nothing to remove.
            let never_linked = w.prior.status == SyncStatus::Deleted
                || (w.prior.crm_id.is_none()
                    && w.prior.claimed_writes.is_empty()
                    && w.prior.recent_writes.is_empty());
            if operation == Operation::Delete && never_linked {
                outcomes.insert(
                    id,
                    no_call("crm-sync has not linked these records, so there is no link to remove".into()),
                );
                continue;
            }
            match (crm_ids.get(from), crm_ids.get(to)) {
                (Some(from_id), Some(to_id)) => {
                    let before: Vec<&str> = w
                        .prior
                        .written
                        .get(LABELS)
                        .map(|labels| labels.lines().collect())
                        .unwrap_or_default();
                    let input = LinkInput {
                        from_id: from_id.clone(),
                        to_id: to_id.clone(),
                        labels: association.labels.clone(),
                        drop_labels: before
                            .into_iter()
                            .filter(|label| !association.labels.iter().any(|kept| kept == label))
                            .map(str::to_string)
                            .collect(),
                    };
                    groups
                        .entry((from.object, to.object, operation))
                        .or_default()
                        .push((id, input));
                }
                _ if operation == Operation::Delete && (deleted.contains(from) || deleted.contains(to)) => {
                    let gone = if deleted.contains(from) { from } else { to };
                    outcomes.insert(
                        id,
                        no_call(format!("{gone} is deleted, so there is no link to {verb}")),
                    );
                }
                _ if deleted.contains(from) || deleted.contains(to) => {
                    // The app may create it again (a change still on its way): the link waits.
                    let gone = if deleted.contains(from) { from } else { to };
                    outcomes.insert(
                        id,
                        Outcome::Waiting {
                            reason: format!(
                                "{gone} is deleted, so the link waits for it to be written again"
                            ),
                        },
                    );
                }
                (found_from, _) if operation == Operation::Delete => {
                    let missing = if found_from.is_none() { from } else { to };
                    outcomes.insert(
                        id,
                        no_call(format!(
                            "{missing} was never in the CRM, so there is no link to remove"
                        )),
                    );
                }
                (found_from, _) => {
                    let missing = if found_from.is_none() { from } else { to };
                    outcomes.insert(
                        id,
                        Outcome::Waiting {
                            reason: format!("{missing} is not in the CRM yet, so the link waits"),
                        },
                    );
                }
            }
        }
        for ((from, to, operation), pairs) in groups {
            let (Some(from_mapping), Some(to_mapping), Some(via)) = (
                self.mapping.object(from),
                self.mapping.object(to),
                self.mapping.link(from, to),
            ) else {
                continue;
            };
            let link = CrmLink {
                from_object: from_mapping.crm_object.clone(),
                to_object: to_mapping.crm_object.clone(),
                via: via.clone(),
            };
            for chunk in pairs.chunks(self.crm.max_batch().max(1)) {
                let inputs: Vec<LinkInput> = chunk.iter().map(|(_, input)| input.clone()).collect();
                let result = self
                    .worker
                    .call(deadline, report, || async {
                        if operation == Operation::Delete {
                            self.crm.unlink(&link, &inputs).await
                        } else {
                            self.crm.link(&link, &inputs).await
                        }
                    })
                    .await;
                for ((id, input), outcome) in chunk.iter().zip(per_input(result, chunk.len())) {
                    let outcome = match outcome {
                        Outcome::Applied { call, .. } => Outcome::Applied {
                            crm_id: Some(format!("{} → {}", input.from_id, input.to_id)),
                            created: false,
                            call,
                            followed: None,
                        },
                        other => other,
                    };
                    outcomes.insert(id.clone(), outcome);
                }
            }
        }
    }

    /// Settle: each record's outcome into its state, under its lease; returns nothing, the
    /// messages' fates going into the batch. Every outcome is decided first and the timeline
    /// written while the leases are held: a line written after a lease is given back could land
    /// after a privacy erasure of the record had forgotten its history.
    async fn settle_all(
        &self,
        work: &[Work],
        outcomes: HashMap<String, Outcome>,
        token: &str,
        batch: &mut Tally,
    ) {
        let settle_now = self.clock.now_ms();
        let decided: Vec<_> = work
            .iter()
            .map(|w| {
                let outcome = outcomes
                    .get(&w.queued.message_id)
                    .cloned()
                    .unwrap_or(Outcome::Failed {
                        kind: FailureKind::Transient,
                        error: "not attempted".into(),
                        call: None,
                    });
                settlement(w, outcome, &self.settings, settle_now, fastrand::f64())
            })
            .collect();
        // An erasure forgets the history first: settled with its history still there, a crash
        // could leave it so. Erasing again is harmless.
        let mut history_kept = HashSet::new();
        for (w, (settlement, ..)) in work.iter().zip(&decided) {
            if matches!(settlement, Settlement::Erased { .. }) {
                let record = w.queued.change.record();
                if let Err(error) = self.history.forget(&record).await {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not forget an erased record's history");
                    history_kept.insert(w.queued.message_id.clone());
                }
            }
        }
        let entries: Vec<TimelineEntry> = work
            .iter()
            .zip(&decided)
            .filter(|(w, _)| !history_kept.contains(&w.queued.message_id))
            .map(|(w, (_, _, kind, detail, call))| {
                entry(&w.queued.change, settle_now, *kind, detail.clone(), call.clone())
            })
            .collect();
        if let Err(error) = self.history.append_timeline(&entries).await {
            // The outcome is in each record's state; only the history lines are lost.
            tracing::error!(error = ?anyhow::Error::from(error), entries = entries.len(), "could not write the timeline");
        }
        let items: Vec<(&Work, &Settlement, &Disposition)> = work
            .iter()
            .zip(&decided)
            .map(|(w, (settlement, disposition, ..))| (w, settlement, disposition))
            .collect();
        let settled = bounded_each(&items, |(w, settlement, disposition)| async {
            let record = w.queued.change.record();
            if history_kept.contains(&w.queued.message_id) {
                return Disposition::Redeliver;
            }
            match self.leases.settle(&record, token, settle_now, settlement).await {
                Ok(true) => (*disposition).clone(),
                // The attempt outlived its lease and another attempt now holds the record: this
                // outcome is not recorded, so the change is decided again (a newer one applied
                // since makes it stale then). Done here, a newer change whose write was overtaken
                // would be lost with the state saying the older one is in the CRM.
                Ok(false) => Disposition::Retry {
                    delay: self.settings.busy_delay,
                    attempts: w.queued.attempts,
                },
                Err(error) => {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not record the outcome");
                    // The lease runs out and the redelivered message tries again; the write is idempotent.
                    Disposition::Redeliver
                }
            }
        })
        .await;
        for (w, disposition) in work.iter().zip(settled) {
            match &disposition {
                Disposition::Done => batch.report.applied += 1,
                Disposition::Retry { .. } => batch.report.retried += 1,
                _ => {}
            }
            batch
                .dispositions
                .insert(w.queued.message_id.clone(), disposition);
        }
    }

    /// Long on purpose: the upsert, its conflicts and their adoption read as one step of the write.
    async fn upsert_group(
        &self,
        mapping: &ObjectMapping,
        group: &[&Work],
        parents: &HashMap<String, String>,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Vec<Outcome> {
        let inputs: Vec<UpsertInput> = group
            .iter()
            .map(|w| UpsertInput {
                key: w.queued.change.record_id.clone(),
                properties: w.outbound.properties.clone(),
                crm_id: w.prior.crm_id.clone(),
                parent_crm_id: w
                    .queued
                    .change
                    .contact_record_id
                    .as_ref()
                    .and_then(|contact| parents.get(contact))
                    .cloned(),
                // An earlier attempt of any change may have created it and lost the answer: a
                // retry, a claim whose holder wrote and never settled, a try that was throttled
                // or overtaken by a newer change. Only a record never tried is surely new.
                may_exist: w.prior.crm_id.is_none()
                    && (w.queued.attempts > 0
                        || !w.prior.claimed_writes.is_empty()
                        || w.prior.last_attempt_at_ms.is_some()),
                written_before: w.prior.written.clone(),
            })
            .collect();
        let object = group
            .first()
            .map_or(ObjectKind::Contact, |w| w.queued.change.object);
        // A record the CRM knows by id is written by it (following the CRM's merges); the rest
        // by the app's id.
        let targets = self.targets(object, mapping, group, deadline, report).await;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
        self.write_by_id(
            object,
            mapping,
            group,
            &inputs,
            &targets,
            &mut outcomes,
            deadline,
            report,
        )
        .await;
        let mut inputs = inputs;
        let upserting: Vec<usize> = (0..inputs.len())
            .filter(|index| matches!(targets[*index], Target::Upsert { .. }))
            .collect();
        for index in &upserting {
            if let Target::Upsert { forget_crm_id: true } = targets[*index] {
                inputs[*index].crm_id = None;
            }
        }
        let upserts: Vec<UpsertInput> = upserting.iter().map(|index| inputs[*index].clone()).collect();
        let max = self.crm.max_batch().max(1);
        for (indexes, chunk) in upserting.chunks(max).zip(upserts.chunks(max)) {
            let written = self
                .isolating(chunk, deadline, report, |slice| {
                    self.crm.upsert(&mapping.crm_object, &mapping.id_property, slice)
                })
                .await;
            for (index, outcome) in indexes.iter().zip(written) {
                outcomes[*index] = Some(outcome);
            }
        }
        let mut outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every input is decided"))
            .collect();
        // A record that exists in the CRM without our id (a contact with the same email): adopt it.
        let conflicts: Vec<(usize, String)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| match outcome {
                Outcome::Failed {
                    kind: FailureKind::Conflict,
                    error,
                    ..
                } => crate::domain::crm::existing_id(error).map(|id| (index, id)),
                _ => None,
            })
            .collect();
        // The policy may forbid adopting at all: each such record is an identity conflict.
        let conflicts = if self.settings.shared_email == SharedEmailPolicy::Refuse {
            for (index, crm_id) in conflicts {
                outcomes[index] = Outcome::Failed {
                    kind: FailureKind::Permanent,
                    error: format!(
                        "identity conflict: CRM record {crm_id} already holds app record {}'s unique value \
                         and SHARED_EMAIL_POLICY is refuse; merge or relink the two in the CRM, then re-sync {}",
                        inputs[index].key, inputs[index].key
                    ),
                    call: None,
                };
            }
            Vec::new()
        } else {
            conflicts
        };
        let conflicts = self
            .adoptable(
                object,
                mapping,
                &inputs,
                conflicts,
                &mut outcomes,
                deadline,
                report,
            )
            .await;
        if !conflicts.is_empty() {
            let updates: Vec<UpdateInput> = conflicts
                .iter()
                .map(|(index, crm_id)| {
                    let mut properties = inputs[*index].properties.clone();
                    properties.insert(mapping.id_property.clone(), inputs[*index].key.clone());
                    UpdateInput {
                        crm_id: crm_id.clone(),
                        properties,
                        written_before: BTreeMap::new(),
                    }
                })
                .collect();
            // One adoption a call: HubSpot refuses a batch as a whole when one of its inputs
            // collides (409), and an adoption is rare enough to pay a call each.
            for ((index, crm_id), update) in conflicts.into_iter().zip(updates) {
                let result = self
                    .worker
                    .call(deadline, report, || {
                        self.crm
                            .update(&mapping.crm_object, std::slice::from_ref(&update))
                    })
                    .await;
                let outcome = per_input(result, 1).pop().expect("one outcome");
                outcomes[index] = match outcome {
                    // Taking the record over collided with yet another one: the CRM holds two
                    // records where the app has one.
                    Outcome::Failed {
                        kind: FailureKind::Conflict,
                        error,
                        call,
                    } => Outcome::Failed {
                        kind: FailureKind::Permanent,
                        error: format!(
                            "identity conflict: adopting CRM record {crm_id} for app record {} collided \
                             with another CRM record ({error}); merge the duplicates in the CRM, then \
                             re-sync {}",
                            inputs[index].key, inputs[index].key
                        ),
                        call,
                    },
                    other => other,
                };
            }
        }
        outcomes
    }

    /// Of the CRM records that already hold a record's unique value, those this record may
    /// adopt: ones that carry no other app record's id, in the CRM or in the sync state, and
    /// that no other app record takes over first (in this batch, or concurrently: the store's
    /// claim on the CRM record decides). Any other is an identity conflict, left for an
    /// operator: re-pointing it would hand one app record's CRM record to another.
    ///
    /// Long on purpose: the adoption rules (the record's own CRM id, first in the batch, the CRM's
    /// id property, the state's owner, the concurrent claim) read in the order they apply.
    #[allow(clippy::too_many_arguments)]
    async fn adoptable(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        inputs: &[UpsertInput],
        conflicts: Vec<(usize, String)>,
        outcomes: &mut [Outcome],
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Vec<(usize, String)> {
        let identity_conflict =
            |crm_id: &str, other: &str, key: &str, call: Option<String>| Outcome::Failed {
                kind: FailureKind::Permanent,
                error: format!(
                    "identity conflict: CRM record {crm_id} already belongs to app record {other}, so app \
                 record {key} cannot take it over; merge or relink the two in the app or the CRM, then \
                 re-sync {key}"
                ),
                call,
            };
        // Two records of this batch naming one CRM record: the first may adopt it, not both.
        let mut first_by_crm_id: HashMap<String, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (index, crm_id) in conflicts {
            // The record is a CRM record already, and its new unique value (an email) is held by
            // another: two CRM records for one app record, which no adoption can resolve.
            if let Some(own) = inputs[index].crm_id.as_ref().filter(|own| **own != crm_id) {
                outcomes[index] = Outcome::Failed {
                    kind: FailureKind::Permanent,
                    error: format!(
                        "identity conflict: app record {} is CRM record {own}, and CRM record {crm_id} \
                         already holds its new unique value; merge the two in the CRM, then re-sync {}",
                        inputs[index].key, inputs[index].key
                    ),
                    call: None,
                };
                continue;
            }
            match first_by_crm_id.get(&crm_id) {
                Some(first) => {
                    outcomes[index] =
                        identity_conflict(&crm_id, &inputs[*first].key, &inputs[index].key, None)
                }
                None => {
                    first_by_crm_id.insert(crm_id.clone(), index);
                    unique.push((index, crm_id));
                }
            }
        }
        if unique.is_empty() {
            return unique;
        }
        let crm_ids: Vec<String> = unique.iter().map(|(_, crm_id)| crm_id.clone()).collect();
        let read = self
            .worker
            .call(deadline, report, || {
                self.crm.read(
                    &mapping.crm_object,
                    &crm_ids,
                    std::slice::from_ref(&mapping.id_property),
                )
            })
            .await;
        let read = match read {
            Ok(read) => read,
            Err(failure) => {
                for ((index, _), outcome) in unique.iter().zip(per_input(Err(failure), crm_ids.len())) {
                    outcomes[*index] = outcome;
                }
                return Vec::new();
            }
        };
        let known = bounded_each(&crm_ids, |crm_id| self.queries.find_by_crm_id(object, crm_id)).await;
        let mut candidates = Vec::new();
        for (((index, crm_id), record), known) in unique.into_iter().zip(read.records).zip(known) {
            let key = &inputs[index].key;
            let call = Some(read.call.clone());
            let Some(properties) = record else {
                // Named by the CRM, yet not readable (merged or deleted since): try again later.
                outcomes[index] = Outcome::Failed {
                    kind: FailureKind::Transient,
                    error: format!(
                        "CRM record {crm_id} holds this record's unique value but could not be read"
                    ),
                    call,
                };
                continue;
            };
            let in_crm = properties
                .get(&mapping.id_property)
                .filter(|id| !id.is_empty() && *id != key)
                .cloned();
            let in_state = match known {
                Ok(state) => state.map(|state| state.record.record_id).filter(|id| id != key),
                Err(error) => {
                    outcomes[index] = Outcome::Failed {
                        kind: FailureKind::Transient,
                        error: format!(
                            "could not look up who holds CRM record {crm_id}: {:#}",
                            anyhow::Error::from(error)
                        ),
                        call,
                    };
                    continue;
                }
            };
            match in_crm.or(in_state) {
                Some(other) => outcomes[index] = identity_conflict(&crm_id, &other, key, call),
                None => candidates.push((index, crm_id)),
            }
        }
        // Another invocation may be adopting the same CRM record right now: one claim wins.
        let claims = bounded_each(&candidates, |(index, crm_id)| {
            self.leases.claim_crm_record(object, crm_id, &inputs[*index].key)
        })
        .await;
        let mut adoptable = Vec::new();
        for ((index, crm_id), claim) in candidates.into_iter().zip(claims) {
            match claim {
                Ok(None) => adoptable.push((index, crm_id)),
                Ok(Some(other)) => {
                    outcomes[index] =
                        identity_conflict(&crm_id, &other, &inputs[index].key, Some(read.call.clone()))
                }
                Err(error) => {
                    outcomes[index] = Outcome::Failed {
                        kind: FailureKind::Transient,
                        error: format!(
                            "could not claim CRM record {crm_id}: {:#}",
                            anyhow::Error::from(error)
                        ),
                        call: None,
                    }
                }
            }
        }
        adoptable
    }

    /// Writes a chunk with `write` (an upsert, an update by id); when the CRM refuses the whole
    /// call, halves it until the refused inputs are isolated, so that one bad record never fails
    /// the others.
    async fn isolating<'s, T: Sync>(
        &'s self,
        inputs: &'s [T],
        deadline: Instant,
        report: &mut BatchReport,
        write: impl Fn(&'s [T]) -> CrmFuture<'s>,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = inputs.iter().map(|_| None).collect();
        let mut ranges = vec![(0, inputs.len())];
        while let Some((start, end)) = ranges.pop() {
            let slice = &inputs[start..end];
            let result = self.worker.call(deadline, report, || write(slice)).await;
            match result {
                Err(CallFailure::Rejected(_)) if slice.len() > 1 => {
                    let middle = start + slice.len() / 2;
                    ranges.push((start, middle));
                    ranges.push((middle, end));
                }
                other => {
                    for (offset, outcome) in per_input(other, slice.len()).into_iter().enumerate() {
                        outcomes[start + offset] = Some(outcome);
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every input is decided"))
            .collect()
    }

    async fn archive_group(
        &self,
        mapping: &ObjectMapping,
        group: &[&Work],
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; group.len()];
        let mut targets = Vec::new();
        let object = group
            .first()
            .map_or(ObjectKind::Contact, |w| w.queued.change.object);
        for (index, target) in self.delete_targets(object, group).await.into_iter().enumerate() {
            match target {
                Ok(crm_id) => targets.push((index, crm_id)),
                Err(outcome) => outcomes[index] = Some(outcome),
            }
        }
        for chunk in targets.chunks(self.crm.max_batch().max(1)) {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            let result = self
                .worker
                .call(deadline, report, || self.crm.archive(&mapping.crm_object, &ids))
                .await;
            for ((index, _), outcome) in chunk.iter().zip(per_input(result, ids.len())) {
                outcomes[*index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every delete is decided"))
            .collect()
    }

    /// The CRM ids of the contacts the batch's deals and activities name: written by this batch,
    /// or recorded earlier (and not deleted since). A contact not in the CRM is left out; one the
    /// app deleted is named as such.
    async fn contact_crm_ids(&self, work: &[Work], written_contacts: &HashMap<String, String>) -> ContactIds {
        let mut ids = ContactIds {
            crm_ids: written_contacts.clone(),
            deleted: HashSet::new(),
        };
        let mut missing: Vec<RecordRef> = work
            .iter()
            .filter(|w| w.queued.change.operation != Operation::Delete)
            .filter_map(|w| w.queued.change.contact_record_id.clone())
            .filter(|id| !written_contacts.contains_key(id))
            .map(|record_id| RecordRef {
                object: ObjectKind::Contact,
                record_id,
            })
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return ids;
        }
        match self.in_crm(&missing).await {
            Ok((in_crm, deleted)) => {
                ids.crm_ids.extend(
                    in_crm
                        .into_iter()
                        .map(|(record, crm_id)| (record.record_id, crm_id)),
                );
                ids.deleted
                    .extend(deleted.into_iter().map(|record| record.record_id));
            }
            Err(error) => {
                tracing::error!(error = ?anyhow::Error::from(error), "could not read contact states")
            }
        }
        ids
    }

    /// Which of `records` the CRM holds, by their recorded CRM ids, and which the app deleted; a
    /// record not written yet is in neither.
    async fn in_crm(
        &self,
        records: &[RecordRef],
    ) -> Result<(HashMap<RecordRef, String>, HashSet<RecordRef>), crate::ports::StoreUnavailable> {
        let (mut in_crm, mut deleted) = (HashMap::new(), HashSet::new());
        for (record, state) in self.queries.states(records).await? {
            match (state.crm_id, state.status) {
                (_, SyncStatus::Deleted) => {
                    deleted.insert(record);
                }
                (Some(crm_id), _) => {
                    in_crm.insert(record, crm_id);
                }
                (None, _) => {}
            }
        }
        Ok((in_crm, deleted))
    }

    /// Links applied deals and activities to their contacts. A contact that is not in the CRM
    /// yet makes its deal or activity retry later (the upsert again is harmless); one the app
    /// deleted never will be, so its deal or activity stays applied, unlinked.
    ///
    /// Long on purpose: one pass links deals and activities alike, with the cases above side by
    /// side.
    async fn associate(
        &self,
        work: &[Work],
        outcomes: &mut HashMap<String, Outcome>,
        contact_ids: &ContactIds,
        deadline: Instant,
        report: &mut BatchReport,
    ) {
        let Some(contacts) = self.mapping.object(ObjectKind::Contact) else {
            return;
        };
        let wanted: Vec<&Work> = work
            .iter()
            .filter(|w| {
                w.queued.change.contact_record_id.is_some() && w.queued.change.operation != Operation::Delete
            })
            .filter(|w| match outcomes.get(&w.queued.message_id) {
                // A deal whose contact link the CRM owns is linked until its first link is in
                // (settled with a CRM id): after that, people move the link in the CRM and
                // crm-sync leaves it to them.
                Some(Outcome::Applied { crm_id: Some(_), .. }) => {
                    w.prior.crm_id.is_none()
                        || w.queued.change.object != ObjectKind::Deal
                        || self
                            .mapping
                            .object(ObjectKind::Deal)
                            .is_none_or(|deal| deal.contact_link == crate::domain::mapping::Owner::App)
                }
                _ => false,
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let contact_crm_id = |record_id: &str| contact_ids.crm_ids.get(record_id).cloned();
        for object in [ObjectKind::Deal, ObjectKind::Activity] {
            let Some(mapping) = self.mapping.object(object) else {
                continue;
            };
            let mut pairs = Vec::new();
            let mut owners = Vec::new();
            for w in wanted.iter().filter(|w| w.queued.change.object == object) {
                let contact = w.queued.change.contact_record_id.as_deref().unwrap_or_default();
                let Some(Outcome::Applied {
                    crm_id: Some(from_id),
                    ..
                }) = outcomes.get(&w.queued.message_id).cloned()
                else {
                    continue;
                };
                match contact_crm_id(contact) {
                    Some(to_id) => {
                        pairs.push(AssociationInput { from_id, to_id });
                        owners.push(w.queued.message_id.clone());
                    }
                    None if contact_ids.deleted.contains(contact) => {}
                    None => {
                        outcomes.insert(
                            w.queued.message_id.clone(),
                            Outcome::Failed {
                                kind: FailureKind::Transient,
                                error: format!(
                                    "contact {contact} is not in the CRM yet, so the association waits"
                                ),
                                call: None,
                            },
                        );
                    }
                }
            }
            for (chunk, chunk_owners) in pairs
                .chunks(self.crm.max_batch().max(1))
                .zip(owners.chunks(self.crm.max_batch().max(1)))
            {
                let result = self
                    .worker
                    .call(deadline, report, || {
                        self.crm
                            .associate(&mapping.crm_object, &contacts.crm_object, chunk)
                    })
                    .await;
                for (owner, outcome) in chunk_owners.iter().zip(per_input(result, chunk.len())) {
                    if let Outcome::Applied { .. } = outcome {
                        continue;
                    }
                    outcomes.insert(owner.clone(), outcome);
                }
            }
        }
    }
}

/// A change crm-sync stops retrying: failed (a later try may pass, so reconciliation sends it
/// again) and dead-lettered with the reason.
fn gave_up(
    reason: String,
    own: BTreeMap<String, Vec<String>>,
    call: Option<String>,
) -> (Settlement, Disposition, TimelineKind, String, Option<String>) {
    (
        Settlement::Failed {
            error: reason.clone(),
            status: SyncStatus::Failed,
            retryable: true,
            recent_writes: own,
        },
        Disposition::DeadLetter {
            reason: reason.clone(),
        },
        TimelineKind::Failed,
        reason,
        call,
    )
}

/// The call a failure's text names (`POST /crm/… -> 503: …`, as the worker words a call that
/// failed), for the timeline's CRM-call column.
fn call_named(error: &str) -> Option<String> {
    let (head, _) = error.split_once(": ")?;
    let (method, target) = head.split_once(' ')?;
    let method_like = ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method);
    (method_like && (target.starts_with('/') || target.starts_with("http"))).then(|| head.to_string())
}

/// Applied without a CRM call, for the reason given.
fn no_call(why: String) -> Outcome {
    Outcome::Applied {
        crm_id: None,
        created: false,
        call: format!("no CRM call: {why}"),
        followed: None,
    }
}

/// A change refused before any CRM call: its timeline says why, and it is dead-lettered.
fn refused(change: &Change, at_ms: i64, reason: String, timeline: &mut Vec<TimelineEntry>) -> Disposition {
    timeline.push(entry(change, at_ms, TimelineKind::Failed, reason.clone(), None));
    Disposition::DeadLetter { reason }
}

fn entry(
    change: &Change,
    at_ms: i64,
    kind: TimelineKind,
    detail: String,
    call: Option<String>,
) -> TimelineEntry {
    TimelineEntry {
        record: change.record(),
        at_ms,
        kind,
        idempotency_id: Some(change.idempotency_id.clone()),
        detail,
        call,
    }
}

/// The contacts a batch's deals and activities belong to: CRM ids of those in the CRM, and the
/// app's ids of those the app deleted.
#[derive(Debug, Clone, Default)]
struct ContactIds {
    crm_ids: HashMap<String, String>,
    deleted: HashSet<String>,
}

/// Spreads a call's result over its inputs.
fn per_input(result: Result<BatchResult, CallFailure>, count: usize) -> Vec<Outcome> {
    match result {
        Ok(batch) => {
            let call = batch.call.clone();
            batch
                .outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    InputOutcome::Done { crm_id, created } => Outcome::Applied {
                        crm_id: Some(crm_id),
                        created,
                        call: call.clone(),
                        followed: None,
                    },
                    InputOutcome::Failed(error) => Outcome::Failed {
                        kind: error.kind,
                        error: format!("{}: {}", error.code, error.message),
                        call: Some(call.clone()),
                    },
                })
                .collect()
        }
        Err(failure) => {
            let outcome = match failure {
                CallFailure::Throttled { until_ms } => Outcome::Throttled { until_ms },
                CallFailure::Transient(error) => Outcome::Failed {
                    kind: FailureKind::Transient,
                    call: call_named(&error),
                    error,
                },
                CallFailure::Rejected(error) => Outcome::Failed {
                    kind: FailureKind::Permanent,
                    call: call_named(&error),
                    error,
                },
            };
            vec![outcome; count]
        }
    }
}

/// What an attempt's outcome makes of the record's state and of its message, decided without
/// touching either: the settlement to record, the message's fate, and the timeline line (kind,
/// detail, the CRM call). `jitter` (0..1) spreads the retries of a transient failure.
///
/// Long on purpose: one arm per outcome, so that what each does to the state and to the
/// message reads side by side.
fn settlement(
    w: &Work,
    outcome: Outcome,
    settings: &SyncSettings,
    now_ms: i64,
    jitter: f64,
) -> (Settlement, Disposition, TimelineKind, String, Option<String>) {
    let change = &w.queued.change;
    // A failed attempt may still have written (a deal written, its link refused).
    let mut own = w.prior.own_writes();
    remember_writes(&mut own, &w.outbound.properties);
    match outcome {
        Outcome::Applied { crm_id, call, .. } if change.operation == Operation::Erase => {
            let kept = call
                .strip_prefix("no CRM call: CRM record ")
                .filter(|why| why.contains("not erased"));
            let detail = match crm_id.or_else(|| w.prior.crm_id.clone()) {
                Some(_) if kept.is_some() => format!(
                    "erased at the app's request in crm-sync, which forgot the record's values and history; \
                     CRM record {}",
                    kept.unwrap_or_default()
                ),
                Some(id) => format!(
                    "erased at the app's request: CRM record {id} erased, and crm-sync forgot the record's \
                     values and history"
                ),
                None => "erased at the app's request: never in the CRM; crm-sync forgot the record's values \
                         and history"
                    .to_string(),
            };
            (
                Settlement::Erased {
                    version_ms: change.changed_at_ms,
                    idempotency_id: change.idempotency_id.clone(),
                },
                Disposition::Done,
                TimelineKind::Deleted,
                detail,
                Some(call),
            )
        }
        Outcome::Applied {
            crm_id,
            created,
            call,
            followed,
        } => {
            let deleted = change.operation == Operation::Delete;
            let mut written = w.prior.written.clone();
            written.extend(w.outbound.properties.clone());
            let mut recent_writes = w.prior.own_writes();
            remember_writes(&mut recent_writes, &w.outbound.properties);
            // A delete that only unlinked the record (its CRM record is shared) says so.
            let unlinked = call.strip_prefix("no CRM call: ").filter(|why| {
                deleted && (why.starts_with("unlinked") || why.starts_with("nothing to archive"))
            });
            // A write that followed the CRM's merge moves the record to the survivor (no other
            // app record holds it, or the write would have waited); the merge's own event, if it
            // comes, finds the record there by its previous ids and tells the app.
            let previous_crm_ids = followed
                .as_ref()
                .and_then(|_| crm_id.as_ref().map(|survivor| w.prior.moved_to(survivor)));
            let crm_id = crm_id.or_else(|| w.prior.crm_id.clone());
            let without_call = call.strip_prefix("no CRM call: ");
            let mut detail = match (deleted, created, &crm_id) {
                _ if change.association.is_some() => match (without_call, &crm_id, deleted) {
                    (Some(why), _, _) => why.to_string(),
                    (None, Some(pair), true) => format!("unlinked CRM records {pair}"),
                    (None, pair, false) => {
                        let labels = change.association.as_ref().map(|a| a.labels.join(", ")).unwrap_or_default();
                        format!(
                            "linked CRM records {}{}",
                            pair.as_deref().unwrap_or_default(),
                            if labels.is_empty() { String::new() } else { format!(" as {labels}") }
                        )
                    }
                    (None, None, true) => "unlinked".to_string(),
                },
                _ if unlinked.is_some() => unlinked.unwrap_or_default().to_string(),
                (_, _, Some(survivor)) if followed.is_some() => format!(
                    "{} CRM record {survivor}, into which the CRM merged CRM record {}; the record follows it \
                     from now on",
                    if deleted { "archived" } else { "updated" },
                    followed.clone().unwrap_or_default(),
                ),
                (true, _, Some(id)) => format!("archived CRM record {id}"),
                (true, _, None) => "nothing to archive: the record was never in the CRM".to_string(),
                (false, true, Some(id)) => format!("created CRM record {id}"),
                (false, _, Some(id)) => format!("updated CRM record {id}"),
                (false, _, None) => "applied".to_string(),
            };
            if !w.outbound.crm_owned.is_empty() {
                detail.push_str(&format!(
                    "; not written, owned by the CRM: {}",
                    w.outbound.crm_owned.join(", ")
                ));
            }
            // The app's values written now resolve the conflicts open on them: the CRM holds
            // the app's value again.
            let mut marks = w.prior.conflict_marks.clone();
            let wrote = !deleted && without_call.is_none() && change.association.is_none();
            // A deal's contact link is linked again by the deal's write (the app owns it, or no
            // link conflict would be open).
            let relinked = (wrote && change.object == ObjectKind::Deal && change.contact_record_id.is_some())
                .then(|| "(association)".to_string());
            let resolved = if wrote {
                marks.reassert(
                    w.outbound.properties.keys().chain(relinked.as_ref()),
                    w.claimed_at_ms,
                )
            } else {
                Vec::new()
            };
            if !resolved.is_empty() {
                detail.push_str(&format!(
                    "; resolved the conflict on {}: the app's value is in the CRM again",
                    resolved.join(", ")
                ));
            }
            (
                Settlement::Applied {
                    crm_id,
                    version_ms: change.changed_at_ms,
                    idempotency_id: change.idempotency_id.clone(),
                    written,
                    recent_writes,
                    status: if deleted {
                        SyncStatus::Deleted
                    } else {
                        SyncStatus::Synced
                    },
                    previous_crm_ids,
                    // Kept on every write: when each property was last written.
                    conflicts: wrote.then_some(marks),
                },
                Disposition::Done,
                if deleted {
                    TimelineKind::Deleted
                } else {
                    TimelineKind::Synced
                },
                detail,
                Some(call),
            )
        }
        Outcome::Waiting { reason } => {
            let waited_ms = u64::try_from(now_ms - change.changed_at_ms).unwrap_or(0);
            if Duration::from_millis(waited_ms) > settings.max_link_wait {
                let reason = format!(
                    "gave up after waiting {} s for the linked records: {reason}",
                    waited_ms / 1000
                );
                return gave_up(reason, own, None);
            }
            // Soon while the wait is young (the other record is likely in the same burst of
            // changes), rarer as it ages: a quarter of the time waited, within the backoff's
            // bounds.
            let delay = Duration::from_millis(waited_ms / 4)
                .max(settings.retry_base / 2)
                .min(settings.retry_cap);
            (
                Settlement::Failed {
                    error: reason.clone(),
                    status: SyncStatus::Pending,
                    retryable: true,
                    recent_writes: own.clone(),
                },
                Disposition::Retry {
                    delay,
                    attempts: w.queued.attempts,
                },
                TimelineKind::Retrying,
                format!("retrying in {} s: {reason}", delay.as_secs()),
                Some("no CRM call: the linked records are not in the CRM yet".to_string()),
            )
        }
        Outcome::Throttled { until_ms } => (
            // A throttle may come after this attempt wrote (a deal written, its association
            // throttled): what it may have written stays crm-sync's own, or its echo would read
            // as a person's edit.
            Settlement::Released {
                recent_writes: own.clone(),
            },
            Disposition::Retry {
                delay: Duration::from_millis(u64::try_from(until_ms - now_ms).unwrap_or(0))
                    .max(Duration::from_secs(1)),
                attempts: w.queued.attempts,
            },
            TimelineKind::Retrying,
            format!(
                "CRM budget exhausted for now; retrying at {}",
                crate::domain::clock::rfc3339(until_ms)
            ),
            Some("no CRM call: the shared limiter held it, or the CRM answered 429".to_string()),
        ),
        Outcome::Failed {
            kind: FailureKind::Transient,
            error,
            call,
        } => {
            let attempts = w.queued.attempts + 1;
            if attempts >= settings.max_attempts {
                gave_up(format!("gave up after {attempts} attempts: {error}"), own, call)
            } else {
                let delay = backoff(attempts, settings.retry_base, settings.retry_cap, jitter);
                (
                    Settlement::Failed {
                        error: error.clone(),
                        status: SyncStatus::Pending,
                        retryable: true,
                        recent_writes: own.clone(),
                    },
                    Disposition::Retry { delay, attempts },
                    TimelineKind::Retrying,
                    format!(
                        "attempt {attempts} failed, retrying in {} s: {error}",
                        delay.as_secs()
                    ),
                    call,
                )
            }
        }
        Outcome::Failed { error, call, .. } => (
            Settlement::Failed {
                error: error.clone(),
                status: SyncStatus::Failed,
                retryable: false,
                recent_writes: own.clone(),
            },
            Disposition::DeadLetter {
                reason: error.clone(),
            },
            TimelineKind::Failed,
            error,
            call,
        ),
    }
}

/// Refuses a change dated further ahead of `now_ms` than `max_skew`.
fn check_clock_skew(change: &Change, now_ms: i64, max_skew: Duration) -> Result<Change, ContractError> {
    let ahead_ms = change.changed_at_ms.saturating_sub(now_ms);
    if ahead_ms > i64::try_from(max_skew.as_millis()).unwrap_or(i64::MAX) {
        return Err(ContractError(format!(
            "`changed_at` is {} s ahead of crm-sync's clock, more than the {} s allowed: a change \
             from the future would win over every real change after it",
            ahead_ms / 1000,
            max_skew.as_secs()
        )));
    }
    Ok(change.clone())
}

/// What one record's state item would hold after this change, against DynamoDB's 400 KB item:
/// the message while pending, the last applied one, and the merged values written and received.
fn state_too_large(queued: &Queued, prior: &RecordState, outbound: &OutboundProperties) -> Option<String> {
    const ITEM_BUDGET: usize = 360 * 1024;
    let map_size = |map: &std::collections::BTreeMap<String, String>| -> usize {
        map.iter().map(|(name, value)| name.len() + value.len() + 8).sum()
    };
    let mut written = prior.written.clone();
    written.extend(outbound.properties.clone());
    let size = 2 * queued.body.len()
        + prior.last_change.as_ref().map_or(0, String::len)
        + map_size(&written)
        + map_size(&prior.received)
        + prior.inbound_at.keys().map(|name| name.len() + 16).sum::<usize>()
        + prior
            .claimed_writes
            .iter()
            .map(|(name, fingerprints)| fingerprints.len() * (name.len() + 24))
            .sum::<usize>()
        + 4 * 1024;
    (size > ITEM_BUDGET).then(|| {
        format!(
            "the record's sync state would take about {} KB with this change, more than the {} KB \
             one DynamoDB item can safely hold; shorten the record's largest fields",
            size / 1024,
            ITEM_BUDGET / 1024
        )
    })
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod use_case_tests;
