//! The nightly reconciliation: the backstop that makes the system converge. It re-enqueues
//! changes that failed (retryably) or got stuck, in the low-priority lane, then reads the CRM in
//! bulk for synced records and compares each field with what crm-sync last wrote (app-owned:
//! healed or flagged per field) or what the app last received (CRM-owned: reported).
//!
//! Work is checkpointed after every page, so a run that meets the invocation's time limit or the
//! daily budget reserve stops cleanly and the next invocation resumes where it stopped: every
//! record is checked once per run however many invocations it takes. The table is scanned in
//! `cycle_nights` segments: a night starts with its own segment and goes on with the others while
//! the budget and time allow, so everything is checked every night when the budget allows, and
//! every record within `cycle_nights` nights when it does not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::crm::{UpdateInput, ValueKind};
use crate::domain::mapping::Mapping;
use crate::domain::sync::{RecordState, SyncStatus, TimelineEntry, TimelineKind};
use crate::domain::Clock;
use crate::ports::state::*;
use crate::ports::{Crm, InboundUpdate, LeaseOutcome, MessageQueue, OutgoingMessage, StoreUnavailable};
use crate::worker::{BatchReport, CallFailure, Worker};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

use crate::domain::reconcile::{field_drifts, FieldDrift, MergeMark};
pub use crate::domain::reconcile::{Checkpoint, Phase, RunReport};
pub use crate::ports::ReconcileStore;

/// How the reconciliation runs.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Every record is checked within this many nights (one scan segment a night).
    pub cycle_nights: u32,
    /// A change pending longer than this is re-enqueued.
    pub stuck_after: Duration,
    /// Records scanned per page (one checkpoint each).
    pub page_size: usize,
    /// The CRM's day starts at midnight in this offset from UTC.
    pub day_offset_minutes: i32,
    /// At most this many changes re-enqueued a night.
    pub requeue_cap: usize,
    /// Time kept back from the deadline to save and answer.
    pub stop_margin: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            cycle_nights: 7,
            stuck_after: Duration::from_secs(3600),
            page_size: 100,
            day_offset_minutes: 0,
            requeue_cap: 10_000,
            stop_margin: Duration::from_secs(10),
        }
    }
}

/// The ports the reconciliation needs.
pub struct ReconcileService {
    mapping: Arc<Mapping>,
    crm: Arc<dyn Crm>,
    store: Arc<dyn ReconcileStore>,
    leases: Arc<dyn RecordLeases>,
    history: Arc<dyn RecordJournal>,
    low_lane: Arc<dyn MessageQueue>,
    /// Where CRM-owned drift is delivered; `None`: only reported.
    app_inbox: Option<Arc<dyn MessageQueue>>,
    /// Where merges read from the CRM go, as events for the identity step; `None`: not read.
    inbound: Option<Arc<dyn MessageQueue>>,
    worker: Worker,
    clock: Arc<dyn Clock>,
    settings: ReconcileSettings,
    /// Each CRM object's property kinds, read once an hour at most: `(read at ms, kinds)`.
    kinds: tokio::sync::Mutex<HashMap<String, (i64, Arc<Kinds>)>>,
}

type Kinds = BTreeMap<String, ValueKind>;

/// How long property kinds read from the CRM are used before they are read again.
const KINDS_TTL_MS: i64 = 60 * 60 * 1000;

/// A record's drifted CRM-owned fields: CRM property → (app field, the CRM's value).
type Drifted = BTreeMap<String, (String, String)>;

/// Why a heal or a delivery was left for the next run.
const SKIP_LEASED: &str = "the record was busy with a live change";
const SKIP_CHANGED: &str = "the record changed since the CRM was read";
const SKIP_UNAVAILABLE: &str = "the record could not be leased";
const SKIP_INBOX: &str = "the app inbox did not take the message";

/// How far before the last read's start the next read of merges begins: the CRM stamps a merge
/// by its own clock, and a merge committing as a read runs may carry a stamp just before it.
const MERGE_READ_OVERLAP_MS: i64 = 10 * 60 * 1000;

/// How far back the first read of merges looks: Salesforce keeps merged records in the recycle
/// bin for 15 days.
const FIRST_MERGE_LOOKBACK_MS: i64 = 15 * DAY_MS;

/// What one read of merges did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeScan {
    /// Merges handed to the identity step (re-reads of the overlap included).
    pub read: u64,
    /// Reads that failed and messages not enqueued; the next read tries them again.
    pub errors: u64,
    /// Why the read stopped before every object was read.
    pub stopped: Option<String>,
}

/// Why a page could not be finished.
enum Stop {
    Budget,
    Store(StoreUnavailable),
}

impl ReconcileService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mapping: Arc<Mapping>,
        crm: Arc<dyn Crm>,
        store: Arc<dyn ReconcileStore>,
        state: Arc<impl RecordLeases + RecordJournal + 'static>,
        low_lane: Arc<dyn MessageQueue>,
        worker: Worker,
        clock: Arc<dyn Clock>,
        settings: ReconcileSettings,
    ) -> Self {
        Self {
            mapping,
            crm,
            store,
            leases: state.clone(),
            history: state,
            low_lane,
            app_inbox: None,
            inbound: None,
            worker,
            clock,
            settings,
            kinds: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The property kinds of a CRM object, from the cache or the CRM. When the CRM cannot say,
    /// values compare as text for the hour (a drift may show that a read a moment later would
    /// not), and the CRM is asked again after it.
    async fn kinds(&self, object: &str, deadline: Instant, calls: &mut BatchReport) -> Arc<Kinds> {
        let now_ms = self.clock.now_ms();
        if let Some((at_ms, kinds)) = self.kinds.lock().await.get(object) {
            if now_ms - at_ms < KINDS_TTL_MS {
                return kinds.clone();
            }
        }
        match self
            .worker
            .call(deadline, calls, || self.crm.property_kinds(object))
            .await
        {
            Ok(read) => {
                let kinds = Arc::new(read.kinds);
                self.kinds
                    .lock()
                    .await
                    .insert(object.to_string(), (now_ms, kinds.clone()));
                kinds
            }
            Err(failure) => {
                // Kept like a success, so that a refusal costs one call an hour, not one a page.
                tracing::warn!(
                    ?failure,
                    object,
                    "could not read the CRM's property types; comparing as text"
                );
                let kinds = Arc::new(BTreeMap::new());
                self.kinds
                    .lock()
                    .await
                    .insert(object.to_string(), (now_ms, kinds.clone()));
                kinds
            }
        }
    }

    /// Delivers CRM-owned drift to the app inbox, once per drifted value.
    pub fn with_app_inbox(mut self, app_inbox: Option<Arc<dyn MessageQueue>>) -> Self {
        self.app_inbox = app_inbox;
        self
    }

    /// Reads the merges of a CRM that does not announce them and hands them to the identity step
    /// on the inbound queue.
    pub fn with_inbound_queue(mut self, inbound: Option<Arc<dyn MessageQueue>>) -> Self {
        self.inbound = inbound;
        self
    }

    fn day_of(&self, now_ms: i64) -> i64 {
        (now_ms + i64::from(self.settings.day_offset_minutes) * 60_000).div_euclid(DAY_MS)
    }

    fn fresh(&self, day: i64, now_ms: i64) -> Checkpoint {
        let segments = self.settings.cycle_nights.max(1);
        Checkpoint {
            report: RunReport {
                run_id: crate::domain::clock::rfc3339(now_ms),
                day,
                segment: u32::try_from(day.rem_euclid(i64::from(segments))).unwrap_or(0),
                segments,
                phase: Phase::Requeue,
                started_at_ms: now_ms,
                finished_at_ms: None,
                invocations: 0,
                checked: 0,
                healed: 0,
                flagged: 0,
                crm_drift: 0,
                delivered: 0,
                skipped: BTreeMap::new(),
                requeued: 0,
                merges_read: 0,
                errors: 0,
                api_calls: 0,
                duration_ms: 0,
                stopped: None,
                segments_checked: 0,
            },
            cursor: None,
        }
    }

    /// Discards today's run, done or not, so that the next `run` starts over.
    pub async fn restart(&self) -> Result<(), StoreUnavailable> {
        let now_ms = self.clock.now_ms();
        self.store.save(&self.fresh(self.day_of(now_ms), now_ms)).await
    }

    /// Runs (or resumes) tonight's reconciliation until it is done, the deadline nears, or the
    /// budget reserve is reached.
    ///
    /// Long on purpose: the night's phases (re-enqueue, drift, done) and their checkpoints in order.
    pub async fn run(&self, deadline: Instant) -> Result<RunReport, StoreUnavailable> {
        let started = Instant::now();
        let now_ms = self.clock.now_ms();
        let day = self.day_of(now_ms);
        let mut checkpoint = match self.store.checkpoint().await? {
            Some(checkpoint) if checkpoint.report.day == day => checkpoint,
            _ => self.fresh(day, now_ms),
        };
        if checkpoint.report.phase == Phase::Done {
            // The night's later invocations still read merges: they hold the only slot.
            self.scan_merges(deadline).await?;
            return Ok(checkpoint.report);
        }
        checkpoint.report.invocations += 1;
        checkpoint.report.stopped = None;
        let mut calls = BatchReport::default();

        if checkpoint.report.phase == Phase::Requeue {
            let stuck_before = now_ms - i64::try_from(self.settings.stuck_after.as_millis()).unwrap_or(0);
            let records = self
                .store
                .needing_requeue(stuck_before, self.settings.requeue_cap)
                .await?;
            let messages: Vec<OutgoingMessage> = records
                .iter()
                .filter_map(|state| {
                    Some(OutgoingMessage::new(
                        state.record.to_string(),
                        state.pending_change.clone()?,
                    ))
                })
                .collect();
            let failures = self.low_lane.send(&messages).await;
            checkpoint.report.requeued += (messages.len() - failures.len()) as u64;
            checkpoint.report.errors += failures.len() as u64;
            checkpoint.report.phase = Phase::Drift;
            self.store.save(&checkpoint).await?;
        }

        // Every invocation reads the merges first (one call when there are none): the night's
        // invocations hold the function's only slot, which the merge scan would otherwise need.
        let scan = self.read_merges(deadline, &mut calls).await?;
        checkpoint.report.merges_read += scan.read;
        checkpoint.report.errors += scan.errors;
        checkpoint.report.api_calls += calls.crm_calls as u64;
        calls.crm_calls = 0;
        if let Some(stopped) = scan.stopped {
            // The next invocation reads on from the last page saved, then checks drift.
            checkpoint.report.stopped = Some(stopped);
        }
        self.store.save(&checkpoint).await?;

        while checkpoint.report.phase == Phase::Drift && checkpoint.report.stopped.is_none() {
            if Instant::now() + self.settings.stop_margin >= deadline {
                checkpoint.report.stopped = Some("the invocation's time limit; the next one resumes".into());
                break;
            }
            let (states, next) = self
                .store
                .synced_page(
                    checkpoint.report.segment,
                    checkpoint.report.segments,
                    checkpoint.cursor.clone(),
                    self.settings.page_size,
                )
                .await?;
            match self
                .check_page(&states, deadline, &mut checkpoint.report, &mut calls)
                .await
            {
                Ok(()) => {}
                Err(Stop::Budget) => {
                    checkpoint.report.stopped =
                        Some("the CRM budget (reserve or limit); the next run resumes".into());
                    break;
                }
                Err(Stop::Store(error)) => return Err(error),
            }
            checkpoint.cursor = next;
            if checkpoint.cursor.is_none() {
                checkpoint.report.segments_checked += 1;
                if checkpoint.report.segments_checked >= checkpoint.report.segments {
                    checkpoint.report.phase = Phase::Done;
                    checkpoint.report.finished_at_ms = Some(self.clock.now_ms());
                } else {
                    // Tonight's segment is done: go on with the next while budget and time last.
                    checkpoint.report.segment = (checkpoint.report.segment + 1) % checkpoint.report.segments;
                }
            }
            checkpoint.report.api_calls += calls.crm_calls as u64;
            calls.crm_calls = 0;
            self.store.save(&checkpoint).await?;
        }

        checkpoint.report.api_calls += calls.crm_calls as u64;
        checkpoint.report.duration_ms += u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.store.save(&checkpoint).await?;
        emit_metrics(&checkpoint.report);
        Ok(checkpoint.report)
    }

    /// Reads the CRM's merges now, between nightly runs (a frequent schedule), so that the app
    /// hears of a merge within minutes rather than by the next night.
    pub async fn scan_merges(&self, deadline: Instant) -> Result<MergeScan, StoreUnavailable> {
        let mut calls = BatchReport::default();
        let scan = self.read_merges(deadline, &mut calls).await?;
        emit(
            "reconcile",
            self.clock.now_ms(),
            &[
                ("MergesRead", scan.read),
                ("MergeScanErrors", scan.errors),
                ("MergeScanApiCalls", calls.crm_calls as u64),
            ],
        );
        Ok(scan)
    }

    /// Reads the merges the CRM recorded since the last read, for each synced object whose merges
    /// the CRM does not announce, and puts each on the inbound queue as an event: the identity
    /// step moves the records and tells the app, as for a merge a webhook announced.
    ///
    /// Pages come oldest first; after each page is enqueued, its last stamp is saved as where a
    /// stopped read resumes (inclusive), so a long backlog moves on across invocations. A complete
    /// read saves its start; the next read begins a little before it. A merge read twice is one
    /// event (its key).
    async fn read_merges(
        &self,
        deadline: Instant,
        calls: &mut BatchReport,
    ) -> Result<MergeScan, StoreUnavailable> {
        let mut scan = MergeScan::default();
        let Some(inbound) = &self.inbound else {
            return Ok(scan);
        };
        let kinds = self.mapping.kinds();
        let mut objects: Vec<&str> = kinds
            .iter()
            .filter_map(|object| self.mapping.object(*object))
            .map(|mapping| mapping.crm_object.as_str())
            .filter(|object| self.crm.merges_are_read(object))
            .collect();
        objects.sort_unstable();
        objects.dedup();
        'objects: for object in objects {
            let started_ms = self.clock.now_ms();
            let mut mark = self.store.merge_mark(object).await?;
            let since_ms = match (mark.resume_from_ms, mark.read_to_ms) {
                // Stamps are whole seconds: a millisecond before takes the resume stamp's in.
                (Some(resume), _) => resume - 1,
                (None, Some(read_to)) => read_to - MERGE_READ_OVERLAP_MS,
                (None, None) => started_ms - FIRST_MERGE_LOOKBACK_MS,
            };
            let mut next: Option<String> = None;
            loop {
                if Instant::now() + self.settings.stop_margin >= deadline {
                    scan.stopped = Some("the invocation's time limit; the next one resumes".into());
                    break 'objects;
                }
                let page = match self
                    .worker
                    .call(deadline, calls, || {
                        self.crm.merges_since(object, since_ms, next.as_deref())
                    })
                    .await
                {
                    Ok(page) => page,
                    Err(CallFailure::Throttled { .. }) => {
                        scan.stopped = Some("the CRM budget (reserve or limit); the next run resumes".into());
                        break 'objects;
                    }
                    Err(CallFailure::Transient(reason) | CallFailure::Rejected(reason)) => {
                        tracing::warn!(%reason, object, "could not read the CRM's merges");
                        scan.errors += 1;
                        continue 'objects;
                    }
                };
                let read_at_ms = self.clock.now_ms();
                let messages: Vec<OutgoingMessage> = page
                    .merges
                    .iter()
                    .enumerate()
                    .map(|(index, seen)| {
                        OutgoingMessage::new(
                            index.to_string(),
                            crate::domain::identity::merge_seen_message(
                                self.crm.name(),
                                object,
                                seen,
                                read_at_ms,
                            ),
                        )
                    })
                    .collect();
                let failures = inbound.send(&messages).await;
                if !failures.is_empty() {
                    // Not saved as read: the next read finds them again.
                    tracing::warn!(
                        object,
                        failed = failures.len(),
                        "could not enqueue merges read from the CRM"
                    );
                    scan.errors += failures.len() as u64;
                    continue 'objects;
                }
                scan.read += messages.len() as u64;
                next = page.next;
                if next.is_none() {
                    mark = MergeMark {
                        read_to_ms: Some(started_ms),
                        resume_from_ms: None,
                    };
                    self.store.save_merge_mark(object, &mark).await?;
                    break;
                }
                if let Some(last) = page.merges.iter().map(|seen| seen.at_ms).max() {
                    mark.resume_from_ms = Some(last);
                    self.store.save_merge_mark(object, &mark).await?;
                }
            }
        }
        Ok(scan)
    }

    /// Compares one page of records with the CRM; heals, flags and reports. A record whose
    /// check fails is counted as an error and left for the next cycle.
    ///
    /// Long on purpose: one page read, compared (the rule is `field_drifts`), healed and delivered,
    /// with the page's budget and timeline threaded through.
    async fn check_page(
        &self,
        states: &[RecordState],
        deadline: Instant,
        report: &mut RunReport,
        calls: &mut BatchReport,
    ) -> Result<(), Stop> {
        let now_ms = self.clock.now_ms();
        let mut timeline = Vec::new();
        // Every type the mapping maps, declared ones included; links have no fields to compare.
        for object in self.mapping.kinds() {
            let Some(mapping) = self.mapping.object(object) else {
                continue;
            };
            // A record held by an identity conflict shares its CRM record with another app record,
            // whose values the CRM holds: healing it would write one app record over the other.
            let group: Vec<&RecordState> = states
                .iter()
                .filter(|s| {
                    s.record.object == object
                        && s.crm_id.is_some()
                        && s.status == SyncStatus::Synced
                        && s.identity_conflict.is_none()
                        && s.erased_at_ms.is_none()
                })
                .collect();
            if group.is_empty() {
                continue;
            }
            let properties: Vec<String> = mapping
                .fields
                .values()
                .map(|rule| rule.crm_property.clone())
                .collect();
            let kinds = self.kinds(&mapping.crm_object, deadline, calls).await;
            for chunk in group.chunks(self.crm.max_batch().max(1)) {
                let ids: Vec<String> = chunk.iter().filter_map(|s| s.crm_id.clone()).collect();
                // What the CRM held at this time: a change after it is newer than the drift.
                let read_at_ms = self.clock.now_ms();
                let read = match self
                    .worker
                    .call(deadline, calls, || {
                        self.crm.read(&mapping.crm_object, &ids, &properties)
                    })
                    .await
                {
                    Ok(read) => read,
                    Err(CallFailure::Throttled { .. }) => return Err(Stop::Budget),
                    Err(CallFailure::Transient(reason) | CallFailure::Rejected(reason)) => {
                        tracing::warn!(%reason, records = chunk.len(), "could not read records to check");
                        report.errors += chunk.len() as u64;
                        continue;
                    }
                };
                let mut heal: Vec<(&RecordState, BTreeMap<String, String>)> = Vec::new();
                let mut deliver: Vec<(&RecordState, Drifted)> = Vec::new();
                for (state, values) in chunk.iter().zip(read.records) {
                    report.checked += 1;
                    let Some(mut values) = values else {
                        report.flagged += 1;
                        timeline.push(drift_entry(
                            state,
                            now_ms,
                            TimelineKind::Drift,
                            "the record is gone from the CRM".into(),
                        ));
                        continue;
                    };
                    self.crm
                        .align_read(&mapping.crm_object, &mut values, &state.written);
                    let mut restore = BTreeMap::new();
                    let mut drifted = BTreeMap::new();
                    for drift in field_drifts(mapping, state, &values, &kinds) {
                        match drift {
                            FieldDrift::Heal {
                                crm_property,
                                written,
                            } => {
                                restore.insert(crm_property, written);
                            }
                            FieldDrift::Flag {
                                field,
                                in_crm,
                                written,
                            } => {
                                report.flagged += 1;
                                timeline.push(drift_entry(
                                    state,
                                    now_ms,
                                    TimelineKind::Drift,
                                    format!("{field} is {in_crm:?} in the CRM; crm-sync wrote {written:?} (flagged, not healed)"),
                                ));
                            }
                            FieldDrift::Missed {
                                field,
                                crm_property,
                                in_crm,
                                received,
                            } => {
                                report.crm_drift += 1;
                                timeline.push(drift_entry(
                                    state,
                                    now_ms,
                                    TimelineKind::Drift,
                                    match received {
                                        Some(received) => format!(
                                            "{field} is {in_crm:?} in the CRM; the app last received {received:?}"
                                        ),
                                        None => format!("{field} is {in_crm:?} in the CRM; the app never received it"),
                                    },
                                ));
                                drifted.insert(crm_property, (field, in_crm));
                            }
                        }
                    }
                    if !restore.is_empty() {
                        heal.push((state, restore));
                    }
                    if !drifted.is_empty() {
                        deliver.push((state, drifted));
                    }
                }
                self.heal(mapping, &heal, deadline, report, calls, &mut timeline, now_ms)
                    .await;
                self.deliver(&deliver, read_at_ms, report, &mut timeline, now_ms)
                    .await;
            }
        }
        self.history
            .append_timeline(&timeline)
            .await
            .map_err(Stop::Store)?;
        Ok(())
    }

    /// Writes crm-sync's values back, each record under its lease so that a live change is
    /// never overwritten by an older value.
    #[allow(clippy::too_many_arguments)]
    async fn heal(
        &self,
        mapping: &crate::domain::mapping::ObjectMapping,
        heal: &[(&RecordState, BTreeMap<String, String>)],
        deadline: Instant,
        report: &mut RunReport,
        calls: &mut BatchReport,
        timeline: &mut Vec<TimelineEntry>,
        now_ms: i64,
    ) {
        if heal.is_empty() {
            return;
        }
        let token = uuid::Uuid::new_v4().to_string();
        let mut leased = Vec::new();
        for (state, restore) in heal {
            // Leased as of now: the page's earlier chunks and calls took time.
            let leased_at = self.clock.now_ms();
            match self
                .leases
                .lease(&state.record, &token, leased_at, leased_at + 120_000)
                .await
            {
                // Healed only if nothing was written since the page was read.
                Ok(LeaseOutcome::Leased(current)) if current.written == state.written => {
                    leased.push((*state, current, restore))
                }
                Ok(LeaseOutcome::Leased(current)) => {
                    skip(report, SKIP_CHANGED);
                    self.release(&current, &token, now_ms).await;
                }
                Ok(LeaseOutcome::Busy) => skip(report, SKIP_LEASED),
                Err(_) => skip(report, SKIP_UNAVAILABLE),
            }
        }
        if leased.is_empty() {
            return;
        }
        let inputs: Vec<UpdateInput> = leased
            .iter()
            .map(|(state, _, restore)| UpdateInput {
                crm_id: state.crm_id.clone().unwrap_or_default(),
                properties: (*restore).clone(),
                written_before: state.written.clone(),
            })
            .collect();
        // Before the write: what it resolves conflicts up to.
        let write_at = self.clock.now_ms();
        let result = self
            .worker
            .call(deadline, calls, || self.crm.update(&mapping.crm_object, &inputs))
            .await;
        let mut healed = vec![false; leased.len()];
        match result {
            Ok(batch) => {
                for (index, ((state, _, restore), outcome)) in leased.iter().zip(batch.outcomes).enumerate() {
                    if let crate::domain::crm::InputOutcome::Done { .. } = outcome {
                        healed[index] = true;
                        report.healed += restore.len() as u64;
                        let fields: Vec<String> =
                            restore.iter().map(|(p, v)| format!("{p} = {v:?}")).collect();
                        timeline.push(drift_entry(
                            state,
                            now_ms,
                            TimelineKind::Healed,
                            format!("drift healed: wrote back {}", fields.join(", ")),
                        ));
                    } else {
                        report.errors += 1;
                    }
                }
            }
            Err(_) => report.errors += leased.len() as u64,
        }
        for ((_, current, restore), healed) in leased.iter().zip(healed) {
            // Written back: the app's values are in the CRM again, which resolves the conflicts
            // open on them.
            let mut update = InboundUpdate::unchanged(current);
            if healed {
                update.conflict_marks.reassert(restore.keys(), write_at);
            }
            if let Err(error) = self
                .leases
                .settle_inbound(&current.record, &token, now_ms, &update)
                .await
            {
                tracing::warn!(record = %current.record, error = ?anyhow::Error::from(error), "could not release a lease; it runs out");
            }
        }
    }

    /// Sends CRM-owned drift to the app inbox, each record under its lease, and records it as
    /// received, so that it is delivered once. The message is dated when the CRM was read: a
    /// change made after that is newer, for crm-sync and for the app.
    ///
    /// Long on purpose: each drift's send, and the recording that makes it once, under one lease.
    async fn deliver(
        &self,
        deliveries: &[(&RecordState, Drifted)],
        read_at_ms: i64,
        report: &mut RunReport,
        timeline: &mut Vec<TimelineEntry>,
        now_ms: i64,
    ) {
        let Some(app_inbox) = &self.app_inbox else {
            return;
        };
        let token = uuid::Uuid::new_v4().to_string();
        for (state, drifted) in deliveries {
            let leased_at = self.clock.now_ms();
            let current = match self
                .leases
                .lease(&state.record, &token, leased_at, leased_at + 120_000)
                .await
            {
                Ok(LeaseOutcome::Leased(current)) => *current,
                Ok(LeaseOutcome::Busy) => {
                    skip(report, SKIP_LEASED);
                    continue;
                }
                Err(_) => {
                    skip(report, SKIP_UNAVAILABLE);
                    continue;
                }
            };
            // A webhook acted on since the page was read knows better.
            let moved_on = drifted.keys().any(|property| {
                current.received.get(property) != state.received.get(property)
                    || current.inbound_at.get(property) != state.inbound_at.get(property)
            });
            if moved_on {
                skip(report, SKIP_CHANGED);
                self.release(&current, &token, now_ms).await;
                continue;
            }
            let changes: BTreeMap<String, String> = drifted
                .values()
                .map(|(field, value)| (field.clone(), value.clone()))
                .collect();
            let sequence = current.inbox_sequence + 1;
            let event_key = format!(
                "reconcile:{}:{}",
                crate::domain::clock::rfc3339(read_at_ms),
                state.record
            );
            let message = crate::domain::inbound::app_inbox_message(
                &state.record,
                sequence,
                self.crm.name(),
                state.crm_id.as_deref().unwrap_or_default(),
                &changes,
                read_at_ms,
                "RECONCILIATION",
                &event_key,
            );
            if !app_inbox
                .send(&[OutgoingMessage::new(event_key.clone(), message)])
                .await
                .is_empty()
            {
                skip(report, SKIP_INBOX);
                self.release(&current, &token, now_ms).await;
                continue;
            }
            let mut update = InboundUpdate::unchanged(&current);
            // `inbound_at` stays: a rep's edit just after the read, in the CRM's own time, is
            // newer than the drift and must still apply.
            for (property, (_, value)) in drifted {
                update.received.insert(property.clone(), value.clone());
            }
            update.inbox_sequence = sequence;
            if let Err(error) = self
                .leases
                .settle_inbound(&state.record, &token, now_ms, &update)
                .await
            {
                // The app has the message; the next run finds the drift again and sends it once more.
                tracing::warn!(record = %state.record, error = ?anyhow::Error::from(error), "could not record a delivered drift");
            }
            report.delivered += 1;
            let fields: Vec<String> = changes.iter().map(|(f, v)| format!("{f} = {v:?}")).collect();
            timeline.push(drift_entry(
                state,
                now_ms,
                TimelineKind::Received,
                format!("drift delivered to the app: {}", fields.join(", ")),
            ));
        }
    }

    async fn release(&self, state: &RecordState, token: &str, now_ms: i64) {
        let untouched = InboundUpdate::unchanged(state);
        if let Err(error) = self
            .leases
            .settle_inbound(&state.record, token, now_ms, &untouched)
            .await
        {
            tracing::warn!(record = %state.record, error = ?anyhow::Error::from(error), "could not release a lease; it runs out");
        }
    }
}

fn skip(report: &mut RunReport, reason: &str) {
    *report.skipped.entry(reason.to_string()).or_default() += 1;
}

fn drift_entry(state: &RecordState, at_ms: i64, kind: TimelineKind, detail: String) -> TimelineEntry {
    TimelineEntry {
        record: state.record.clone(),
        at_ms,
        kind,
        idempotency_id: None,
        detail,
        call: None,
    }
}

/// One CloudWatch embedded-metric-format line with the run's counts.
fn emit_metrics(report: &RunReport) {
    emit(
        "reconcile",
        report.started_at_ms,
        &[
            ("ReconcileChecked", report.checked),
            ("ReconcileHealed", report.healed),
            ("ReconcileFlagged", report.flagged),
            ("ReconcileCrmDrift", report.crm_drift),
            ("ReconcileDelivered", report.delivered),
            ("ReconcileSkipped", report.skipped.values().sum()),
            ("ReconcileRequeued", report.requeued),
            ("ReconcileMergesRead", report.merges_read),
            ("ReconcileErrors", report.errors),
            ("ReconcileApiCalls", report.api_calls),
        ],
    );
}

/// One CloudWatch embedded-metric line (namespace `crm-sync`, dimension `function`).
fn emit(function: &str, at_ms: i64, metrics: &[(&str, u64)]) {
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": "crm-sync",
                "Dimensions": [["function"]],
                "Metrics": metrics.iter().map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        },
        "function": function,
    });
    for (name, value) in metrics {
        line[*name] = serde_json::json!(value);
    }
    println!("{line}");
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod use_case_tests;
