//! Adoption day: bringing an existing app and an existing CRM together. The plan reads the app's
//! records and asks the CRM, in batches, which records already carry the app's id and which hold
//! a record's email; it writes nothing, and says record by record what the backfill would do
//! (see [`crate::domain::adoption`]). Memory stays flat: records are planned a batch at a time
//! and every decision goes straight to the sink.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use crate::domain::adoption::{
    decide, match_key, Action, BackfillPhase, BackfillProgress, Found, PlanCounts, PlanItem, SharedEmail,
    MATCH_FIELD,
};
use crate::domain::contract::{parse_change, Change, ObjectKind, Operation};
use crate::domain::crm::ValueKind;
use crate::domain::mapping::{Mapping, ObjectMapping};
use crate::ports::Crm;
use crate::worker::{BatchReport, CallFailure, Worker};

/// One line of the app's records: an outbound-change message, or why the line is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    Message {
        line: u64,
        body: String,
    },
    Invalid {
        line: u64,
        reason: String,
    },
    /// The input cannot be read on from here: the plan stops rather than miss what follows.
    Unreadable {
        line: u64,
        reason: String,
    },
}

/// Where a plan goes, item by item.
pub trait PlanSink: Send {
    fn item(&mut self, item: &PlanItem) -> anyhow::Result<()>;
    fn invalid(&mut self, line: u64, reason: &str) -> anyhow::Result<()>;
}

/// Plans adoption against one CRM.
pub struct Planner {
    mapping: Arc<Mapping>,
    crm: Arc<dyn Crm>,
    worker: Worker,
}

/// One plan's running state: what is counted and read once, and where decisions go.
struct PlanRun<'a> {
    shared: &'a HashMap<u64, Vec<String>>,
    kinds: HashMap<ObjectKind, BTreeMap<String, ValueKind>>,
    sink: &'a mut dyn PlanSink,
    counts: PlanCounts,
    calls: BatchReport,
    deadline: Instant,
}

impl PlanRun<'_> {
    fn invalid(&mut self, line: u64, reason: &str) -> Result<(), AdoptionError> {
        self.counts.invalid += 1;
        self.sink.invalid(line, reason).map_err(AdoptionError::Sink)
    }
}

/// A record waiting in its object's batch.
struct Pending {
    line: u64,
    body: String,
    change: Change,
}

impl Planner {
    pub fn new(mapping: Arc<Mapping>, crm: Arc<dyn Crm>, worker: Worker) -> Self {
        Self { mapping, crm, worker }
    }

    /// Plans every record of `input`; `shared` names, by line, the other app records with the
    /// same email (found beforehand, see `adapters::plan_files`). Returns what the plan holds.
    pub async fn plan(
        &self,
        input: impl Iterator<Item = InputLine>,
        shared: &HashMap<u64, Vec<String>>,
        sink: &mut dyn PlanSink,
        deadline: Instant,
    ) -> Result<PlanCounts, AdoptionError> {
        let mut run = PlanRun {
            shared,
            kinds: HashMap::new(),
            sink,
            counts: PlanCounts::default(),
            calls: BatchReport::default(),
            deadline,
        };
        let mut pending: BTreeMap<ObjectKind, Vec<Pending>> = BTreeMap::new();
        let batch = self.crm.max_find().min(self.crm.max_batch()).max(1);
        for line in input {
            let (line, body) = match line {
                InputLine::Message { line, body } => (line, body),
                InputLine::Invalid { line, reason } => {
                    run.invalid(line, &reason)?;
                    continue;
                }
                InputLine::Unreadable { line, reason } => {
                    return Err(AdoptionError::Input(format!("line {line}: {reason}")))
                }
            };
            let change = match self.plannable(&body) {
                Ok(change) => change,
                Err(reason) => {
                    run.invalid(line, &reason)?;
                    continue;
                }
            };
            let object = change.object;
            let queue = pending.entry(object).or_default();
            queue.push(Pending { line, body, change });
            if queue.len() >= batch {
                let records = std::mem::take(queue);
                self.plan_batch(object, records, &mut run).await?;
            }
        }
        for (object, records) in std::mem::take(&mut pending) {
            if !records.is_empty() {
                self.plan_batch(object, records, &mut run).await?;
            }
        }
        let mut counts = run.counts;
        counts.plan_calls = run.calls.crm_calls as u64;
        counts.daily_remaining = run.calls.daily_remaining;
        Ok(counts)
    }

    /// A message the backfill can send: an upsert or an activity of a mapped object.
    fn plannable(&self, body: &str) -> Result<Change, String> {
        let change = parse_change(body).map_err(|error| error.0)?;
        // A link needs both records in the CRM first: the app sends its links after the backfill.
        if change.association.is_some() {
            return Err(
                "a link is not adopted: send it after the backfill, once both records are in the CRM"
                    .to_string(),
            );
        }
        if !matches!(change.operation, Operation::Upsert | Operation::Log) {
            return Err(format!(
                "a {} is not adopted: only upserts and activities are",
                change.type_name()
            ));
        }
        let mapping = self
            .mapping
            .object(change.object)
            .ok_or_else(|| format!("the mapping has no [{}] section", change.object))?;
        mapping.outbound(&change).map_err(|error| error.0)?;
        Ok(change)
    }

    /// Long on purpose: one batch's two lookups (by the app's id, then by email for the records
    /// the first did not find) and its decisions, in input order.
    async fn plan_batch(
        &self,
        object: ObjectKind,
        records: Vec<Pending>,
        run: &mut PlanRun<'_>,
    ) -> Result<(), AdoptionError> {
        let PlanRun {
            shared,
            kinds,
            sink,
            counts,
            calls,
            deadline,
        } = run;
        let (shared, deadline) = (*shared, *deadline);
        let mapping = self.mapping.object(object).expect("checked when read");
        if let std::collections::hash_map::Entry::Vacant(entry) = kinds.entry(object) {
            let read = self
                .worker
                .call(deadline, calls, || self.crm.property_kinds(&mapping.crm_object))
                .await
                .map(|read| read.kinds)
                // The CRM cannot say: values compare as text.
                .unwrap_or_default();
            entry.insert(read);
        }
        let properties = properties(mapping);
        let ids: Vec<String> = records.iter().map(|r| r.change.record_id.clone()).collect();
        let by_id = self
            .worker
            .call(deadline, calls, || {
                self.crm
                    .find(&mapping.crm_object, &mapping.id_property, &ids, &properties)
            })
            .await?
            .matches;
        // Records the CRM does not know by the app's id are matched by email, where they have one.
        let email_property = mapping
            .fields
            .get(MATCH_FIELD)
            .map(|rule| rule.crm_property.clone());
        let unknown: Vec<(usize, String)> = records
            .iter()
            .enumerate()
            .filter(|(index, _)| by_id.get(*index).is_none_or(Vec::is_empty))
            .filter_map(|(index, record)| Some((index, match_key(&record.change)?)))
            .collect();
        let mut by_email: HashMap<usize, Vec<Found>> = HashMap::new();
        if let (Some(property), false) = (&email_property, unknown.is_empty()) {
            let emails: Vec<String> = unknown.iter().map(|(_, email)| email.clone()).collect();
            let found = self
                .worker
                .call(deadline, calls, || {
                    self.crm.find(&mapping.crm_object, property, &emails, &properties)
                })
                .await?
                .matches;
            for ((index, _), matches) in unknown.iter().zip(found) {
                by_email.insert(*index, matches);
            }
        }
        let kinds = &kinds[&object];
        for (index, record) in records.into_iter().enumerate() {
            let shared = shared.get(&record.line).map(|others| SharedEmail {
                others: others.clone(),
            });
            let (action, crm_owned) = decide(
                mapping,
                &record.change,
                by_id.get(index).map(Vec::as_slice).unwrap_or_default(),
                by_email.get(&index).map(Vec::as_slice).unwrap_or_default(),
                shared.as_ref(),
                kinds,
            );
            let item = PlanItem {
                line: record.line,
                plan_line: 0,
                object,
                record_id: record.change.record_id.clone(),
                action,
                crm_owned,
                message: record.body,
            };
            counts.add(&item);
            sink.item(&item).map_err(AdoptionError::Sink)?;
        }
        Ok(())
    }
}

/// Why a plan or a backfill stopped before it was done; a backfill goes on from its saved
/// progress when run again.
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    #[error("the CRM's budget is spent (the live reserve is kept); run it again later")]
    Budget,
    #[error("the plan could not be written: {0:#}")]
    Sink(anyhow::Error),
    #[error("another backfill of this plan is running; it goes on, this one stopped")]
    Busy,
    #[error("the input cannot be read on: {0}; fix it and plan again")]
    Input(String),
    #[error("the CRM could not answer: {0}")]
    Crm(String),
    #[error("the backfill lane did not take {0} message(s)")]
    Lane(usize),
    #[error("storage is unavailable: {:#}", .0.0)]
    Store(#[from] crate::ports::StoreUnavailable),
    #[error("the plan could not be read: {0:#}")]
    Plan(anyhow::Error),
    #[error("{0} links refused: too many for one backfill; plan again")]
    TooManyRefused(usize),
    #[error("stopped: {0}")]
    Deadline(String),
}

impl From<CallFailure> for AdoptionError {
    fn from(failure: CallFailure) -> Self {
        match failure {
            CallFailure::Throttled { .. } => AdoptionError::Budget,
            CallFailure::Transient(reason) | CallFailure::Rejected(reason) => AdoptionError::Crm(reason),
        }
    }
}

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct BackfillSettings {
    /// Messages sent to the lane between two saves of the progress.
    pub send_batch: usize,
    /// How often the lane's depth is looked at while its writes finish.
    pub settle_poll: std::time::Duration,
    /// How long a run holds its plan after each save: a run that dies (killed, its machine
    /// gone) lets another start after this; one stopped on purpose lets go at once.
    pub run_hold: std::time::Duration,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        Self {
            send_batch: 100,
            settle_poll: std::time::Duration::from_secs(2),
            run_hold: std::time::Duration::from_secs(300),
        }
    }
}

/// How many readings in a row of an empty lane count as settled.
const SETTLED_READINGS: u32 = 3;

/// How many times the initial pull asks for a record busy with live work.
const PULL_LEASE_ROUNDS: usize = 5;

/// The most links one backfill may have refused, and the room their keys may take: they are
/// kept in its progress, one DynamoDB item (400 KB at most), and a record id may be 1 KB.
const MAX_REFUSED: usize = 5_000;
const MAX_REFUSED_BYTES: usize = 200_000;

/// Whether refused links no longer fit a backfill's saved progress.
pub(crate) fn too_many_refused(refused: &[String]) -> bool {
    // Each key is saved as a JSON string: quotes and a comma.
    let bytes: usize = refused.iter().map(|key| key.len() + 3).sum();
    refused.len() > MAX_REFUSED || bytes > MAX_REFUSED_BYTES
}

/// A plan, read from the start each time a phase walks it.
pub type PlanReader<'a> =
    dyn Fn() -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<PlanItem>> + Send>> + Sync + 'a;

/// Runs a plan: links first (the app's id written onto the CRM records matched by email), then
/// every record to write through the backfill lane, which the sync function drains with the
/// budget live changes leave; then the initial pull. Progress is saved after every batch, so a
/// backfill stopped anywhere goes on where it stopped, and writes no record twice.
pub struct Backfill {
    mapping: Arc<Mapping>,
    crm: Arc<dyn Crm>,
    worker: Worker,
    lane: Arc<dyn crate::ports::MessageQueue>,
    lane_depth: Arc<dyn crate::ports::QueueDepth>,
    app_inbox: Option<Arc<dyn crate::ports::MessageQueue>>,
    leases: Arc<dyn crate::ports::RecordLeases>,
    store: Arc<dyn crate::ports::AdoptionStore>,
    clock: Arc<dyn crate::domain::Clock>,
    settings: BackfillSettings,
    /// Set to stop the run at its next step, saved and letting go of the plan.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Backfill {
    /// What stops a run cleanly at its next step (an operator's Ctrl-C).
    pub fn stopper(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stop.clone()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mapping: Arc<Mapping>,
        crm: Arc<dyn Crm>,
        worker: Worker,
        lane: Arc<dyn crate::ports::MessageQueue>,
        lane_depth: Arc<dyn crate::ports::QueueDepth>,
        app_inbox: Option<Arc<dyn crate::ports::MessageQueue>>,
        leases: Arc<dyn crate::ports::RecordLeases>,
        store: Arc<dyn crate::ports::AdoptionStore>,
        clock: Arc<dyn crate::domain::Clock>,
        settings: BackfillSettings,
    ) -> Self {
        Self {
            mapping,
            crm,
            worker,
            lane,
            lane_depth,
            app_inbox,
            leases,
            store,
            clock,
            settings,
            stop: Arc::default(),
        }
    }

    /// Runs (or goes on with) the backfill of plan `plan_id` until it is done or `deadline`;
    /// `progress` hears of every saved step.
    pub async fn run(
        &self,
        plan_id: &str,
        counts: &PlanCounts,
        plan: &PlanReader<'_>,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
    ) -> Result<BackfillProgress, AdoptionError> {
        let now_ms = self.clock.now_ms();
        let mut state = match self.store.backfill(plan_id).await? {
            Some(saved) => saved,
            None => BackfillProgress::new(plan_id, counts, now_ms),
        };
        state.stopped = None;
        state.runs += 1;
        state.run_token = uuid::Uuid::new_v4().to_string();
        // One run of a plan at a time: this run holds it while it saves, a little longer each step.
        if !self.save(&state, false).await? {
            return Err(AdoptionError::Busy);
        }
        let mut calls = BatchReport::default();
        let result = self
            .phases(&mut state, plan, deadline, progress, &mut calls)
            .await;
        state.crm_calls += calls.crm_calls as u64;
        state.updated_at_ms = self.clock.now_ms();
        // A stop asked for ends this run only.
        self.stop.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Err(AdoptionError::Busy) = &result {
            // Another run holds the plan: its progress is the one to keep.
            return Err(AdoptionError::Busy);
        }
        if let Err(error) = &result {
            state.stopped = Some(error.to_string());
        }
        // Saved and let go: the next run may start at once.
        self.save(&state, true).await?;
        progress(&state);
        result.map(|()| state)
    }

    /// Saves the progress, holding the plan for this run (or letting it go); `false` when
    /// another run holds it.
    async fn save(&self, state: &BackfillProgress, release: bool) -> Result<bool, AdoptionError> {
        let now_ms = self.clock.now_ms();
        let hold_ms = i64::try_from(self.settings.run_hold.as_millis()).unwrap_or(i64::MAX / 2);
        // Let go: held until the epoch, whatever another machine's clock says.
        let until_ms = if release { 0 } else { now_ms + hold_ms };
        Ok(self.store.save_backfill(state, now_ms, until_ms).await?)
    }

    async fn phases(
        &self,
        state: &mut BackfillProgress,
        plan: &PlanReader<'_>,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        loop {
            match state.phase {
                BackfillPhase::Links => self.links(state, plan, deadline, progress, calls).await?,
                BackfillPhase::Writes => self.writes(state, plan, deadline, progress).await?,
                BackfillPhase::Settle => self.settle(state, deadline, progress).await?,
                BackfillPhase::Pull => self.pull(state, plan, deadline, progress, calls).await?,
                BackfillPhase::Done => return Ok(()),
            }
        }
    }

    /// Saves the progress after a step and tells the caller.
    async fn step(
        &self,
        state: &mut BackfillProgress,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
    ) -> Result<(), AdoptionError> {
        state.updated_at_ms = self.clock.now_ms();
        if !self.save(state, false).await? {
            return Err(AdoptionError::Busy);
        }
        progress(state);
        Ok(())
    }

    fn next_phase(&self, state: &mut BackfillProgress, phase: BackfillPhase) {
        state.phase = phase;
        state.line = 0;
        if phase == BackfillPhase::Done {
            state.finished_at_ms = Some(self.clock.now_ms());
        }
    }

    /// The plan's items after the phase's saved line.
    fn remaining(
        &self,
        state: &BackfillProgress,
        plan: &PlanReader<'_>,
    ) -> Result<impl Iterator<Item = anyhow::Result<PlanItem>>, AdoptionError> {
        let after = state.line;
        Ok(plan()
            .map_err(AdoptionError::Plan)?
            .enumerate()
            .map(|(index, item)| {
                item.map(|mut item| {
                    item.plan_line = index as u64 + 1;
                    item
                })
            })
            .filter(move |item| item.as_ref().map_or(true, |item| item.plan_line > after)))
    }

    fn check_deadline(&self, deadline: Instant) -> Result<(), AdoptionError> {
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AdoptionError::Deadline(
                "stopped by the operator; run it again to go on".into(),
            ));
        }
        if Instant::now() >= deadline {
            return Err(AdoptionError::Deadline(
                "this run's time ran out; run again, it goes on from here (in the adoption function, its next slice does)".into(),
            ));
        }
        Ok(())
    }

    /// Counts the calls made since the last count into the progress.
    fn count_calls(state: &mut BackfillProgress, calls: &mut BatchReport) {
        state.crm_calls += calls.crm_calls as u64;
        calls.crm_calls = 0;
    }

    async fn links(
        &self,
        state: &mut BackfillProgress,
        plan: &PlanReader<'_>,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        let links = self.selected(state, plan, |item| matches!(item.action, Action::Link { .. }))?;
        for batch in Batches::new(links, self.crm.max_batch()) {
            let batch = batch?;
            self.check_deadline(deadline)?;
            self.link_batch(batch.object, &batch.items, state, deadline, calls)
                .await?;
            self.batch_done(state, batch.resume_line, calls, progress).await?;
        }
        self.next_phase(state, BackfillPhase::Writes);
        self.step(state, progress).await
    }

    /// The phase's items after its saved line that `select` keeps.
    fn selected(
        &self,
        state: &BackfillProgress,
        plan: &PlanReader<'_>,
        select: impl Fn(&PlanItem) -> bool,
    ) -> Result<impl Iterator<Item = anyhow::Result<PlanItem>>, AdoptionError> {
        Ok(self
            .remaining(state, plan)?
            .filter(move |item| item.as_ref().map_or(true, &select)))
    }

    /// Counts a batch's calls, moves the saved line when nothing before it is still waiting, and
    /// saves.
    async fn batch_done(
        &self,
        state: &mut BackfillProgress,
        resume_line: Option<u64>,
        calls: &mut BatchReport,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
    ) -> Result<(), AdoptionError> {
        Self::count_calls(state, calls);
        if let Some(line) = resume_line {
            state.line = line;
        }
        self.step(state, progress).await
    }

    /// Links one batch: each CRM record is read again (a plan may be old: a record that carries
    /// an app id now is not taken), claimed for its app record (another app record may have
    /// taken it meanwhile), and given the app's id.
    async fn link_batch(
        &self,
        object: ObjectKind,
        items: &[PlanItem],
        state: &mut BackfillProgress,
        deadline: Instant,
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        let mapping = self.mapping_of(object)?;
        // One CRM record once a call (HubSpot refuses a batch naming an id twice): a record twice
        // in the input is linked by its first line.
        let mut seen = std::collections::HashSet::new();
        let links: Vec<(String, String)> = items
            .iter()
            .filter_map(|item| Some((item.record_id.clone(), item.action.crm_id()?.to_string())))
            .filter(|(_, crm_id)| seen.insert(crm_id.clone()))
            .collect();
        let id_property = [mapping.id_property.clone()];
        let crm_ids: Vec<String> = links.iter().map(|(_, crm_id)| crm_id.clone()).collect();
        let read = self
            .worker
            .call(deadline, calls, || {
                self.crm.read(&mapping.crm_object, &crm_ids, &id_property)
            })
            .await?;
        let mut inputs = Vec::new();
        for ((record_id, crm_id), now) in links.iter().zip(read.records) {
            let holder = now
                .as_ref()
                .and_then(|values| values.get(&mapping.id_property))
                .filter(|held| !held.trim().is_empty());
            let free = match (&now, holder) {
                (None, _) => false,
                (Some(_), Some(held)) => held == record_id,
                (Some(_), None) => true,
            };
            if !free {
                self.refuse(state, object, record_id)?;
                continue;
            }
            if self
                .leases
                .claim_crm_record(object, crm_id, record_id)
                .await?
                .is_some()
            {
                self.refuse(state, object, record_id)?;
                continue;
            }
            inputs.push(crate::domain::crm::UpdateInput::new(
                crm_id.clone(),
                BTreeMap::from([(mapping.id_property.clone(), record_id.clone())]),
            ));
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let written = self
            .worker
            .call(deadline, calls, || self.crm.update(&mapping.crm_object, &inputs))
            .await?;
        for (input, outcome) in inputs.iter().zip(written.outcomes) {
            match outcome {
                crate::domain::crm::InputOutcome::Done { .. } => state.linked += 1,
                crate::domain::crm::InputOutcome::Failed(error) => {
                    tracing::warn!(crm_id = %input.crm_id, code = %error.code, "a link was refused");
                    let record_id = input.properties[&mapping.id_property].clone();
                    self.refuse(state, object, &record_id)?;
                }
            }
        }
        Ok(())
    }

    fn refuse(
        &self,
        state: &mut BackfillProgress,
        object: ObjectKind,
        record_id: &str,
    ) -> Result<(), AdoptionError> {
        let key = refusal_key(object, record_id);
        if !state.refused.contains(&key) {
            state.refused.push(key);
        }
        if too_many_refused(&state.refused) {
            return Err(AdoptionError::TooManyRefused(state.refused.len()));
        }
        Ok(())
    }

    /// Sends every record to write to the backfill lane, `send_batch` at a time.
    async fn writes(
        &self,
        state: &mut BackfillProgress,
        plan: &PlanReader<'_>,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
    ) -> Result<(), AdoptionError> {
        let refused: std::collections::HashSet<String> = state.refused.iter().cloned().collect();
        let waiting = self.contacts_waiting(plan, &refused)?;
        let mut messages: Vec<crate::ports::OutgoingMessage> = Vec::new();
        let mut items = self.remaining(state, plan)?.peekable();
        let mut waiting_unsaved = 0;
        while let Some(item) = items.next() {
            let item = item.map_err(AdoptionError::Plan)?;
            let last_line = item.plan_line;
            let writes = match &item.action {
                Action::Conflict { .. } => false,
                Action::Link { .. } => !refused.contains(&refusal_key(item.object, &item.record_id)),
                _ => true,
            };
            // A deal or an activity of a contact that waits for a person would only wait for its
            // contact on the lane and end dead-lettered: it waits here with its contact.
            let waits_on_contact = writes && contact_waits(&item, &waiting);
            // Counted with the batch it belongs to, so that a run stopped before sending it does
            // not count it twice.
            if waits_on_contact {
                waiting_unsaved += 1;
            }
            let writes = writes && !waits_on_contact;
            if writes {
                messages.push(crate::ports::OutgoingMessage::new(
                    messages.len().to_string(),
                    item.message,
                ));
            }
            if messages.len() >= self.settings.send_batch || (items.peek().is_none() && !messages.is_empty())
            {
                self.check_deadline(deadline)?;
                let failures = self.lane.send(&messages).await;
                if !failures.is_empty() {
                    return Err(AdoptionError::Lane(failures.len()));
                }
                state.sent += messages.len() as u64;
                state.waiting_on_contact += std::mem::take(&mut waiting_unsaved);
                state.line = last_line;
                messages.clear();
                self.step(state, progress).await?;
            }
        }
        state.waiting_on_contact += waiting_unsaved;
        self.next_phase(state, BackfillPhase::Settle);
        self.step(state, progress).await
    }

    /// The contacts the backfill does not write: identity conflicts and refused links (a few, as
    /// a plan goes; read from the whole plan, as a deal may come before its contact).
    fn contacts_waiting(
        &self,
        plan: &PlanReader<'_>,
        refused: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashSet<String>, AdoptionError> {
        let mut waiting = std::collections::HashSet::new();
        for item in plan().map_err(AdoptionError::Plan)? {
            let item = item.map_err(AdoptionError::Plan)?;
            let refused_link = refused.contains(&refusal_key(item.object, &item.record_id));
            if item.object == ObjectKind::Contact
                && (matches!(item.action, Action::Conflict { .. }) || refused_link)
            {
                waiting.insert(item.record_id);
            }
        }
        Ok(waiting)
    }

    /// Waits until the lane is empty: the sync function has written (or dead-lettered) every
    /// record sent.
    async fn settle(
        &self,
        state: &mut BackfillProgress,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
    ) -> Result<(), AdoptionError> {
        // SQS's counts are estimates that may read 0 a moment early: three readings in a row.
        let mut empty = 0;
        loop {
            match self.lane_depth.depth().await {
                Ok(0) => {
                    empty += 1;
                    if empty >= SETTLED_READINGS {
                        break;
                    }
                }
                Ok(_) => empty = 0,
                // A busy queue service answers late now and then: look again (from the start, so
                // that the deadline is heeded while the lane cannot be read).
                Err(error) => {
                    empty = 0;
                    tracing::warn!(error = ?error.0, "could not read the backfill lane's depth")
                }
            }
            // Once the lane reads empty, the readings are finished (two more polls) before the
            // deadline is heeded: a run shorter than them would otherwise never settle.
            if empty == 0 {
                self.check_deadline(deadline)?;
            }
            // Waiting is this run's work too: it keeps the plan held.
            if !self.save(state, false).await? {
                return Err(AdoptionError::Busy);
            }
            progress(state);
            tokio::time::sleep(self.settings.settle_poll).await;
        }
        let next = if self.app_inbox.is_some() {
            BackfillPhase::Pull
        } else {
            BackfillPhase::Done
        };
        self.next_phase(state, next);
        self.step(state, progress).await
    }

    /// Delivers the CRM-owned values of the matched records to the app inbox, once: read fresh
    /// from the CRM, sent under each record's lease, and recorded as received (a value the app
    /// has received already is not sent again).
    async fn pull(
        &self,
        state: &mut BackfillProgress,
        plan: &PlanReader<'_>,
        deadline: Instant,
        progress: &(dyn Fn(&BackfillProgress) + Sync),
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        let refused: std::collections::HashSet<String> = state.refused.iter().cloned().collect();
        // Records not written (waiting with their contact) have nothing to lease.
        let waiting = self.contacts_waiting(plan, &refused)?;
        let matched = self.selected(state, plan, |item| {
            let waits = item.object == ObjectKind::Contact && waiting.contains(&item.record_id)
                || contact_waits(item, &waiting);
            !waits
                && matches!(
                    item.action,
                    Action::Update { .. } | Action::Unchanged { .. } | Action::Link { .. }
                )
                && !refused.contains(&refusal_key(item.object, &item.record_id))
                && !item.crm_owned.is_empty()
        })?;
        for batch in Batches::new(matched, self.crm.max_batch()) {
            let batch = batch?;
            self.check_deadline(deadline)?;
            let records: Vec<String> = batch.items.iter().map(|item| item.record_id.clone()).collect();
            self.pull_batch(batch.object, &records, state, deadline, calls)
                .await?;
            self.batch_done(state, batch.resume_line, calls, progress).await?;
        }
        self.next_phase(state, BackfillPhase::Done);
        self.step(state, progress).await
    }

    async fn pull_batch(
        &self,
        object: ObjectKind,
        record_ids: &[String],
        state: &mut BackfillProgress,
        deadline: Instant,
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        let mut waiting: Vec<String> = record_ids.to_vec();
        waiting.sort();
        waiting.dedup();
        // A record busy with live work (its link's echo, a change) is asked again a few times;
        // one still busy, or not written, is left to the reconciliation, which finds the values
        // the app never received. Leases are held only while a round reads and delivers.
        for round in 0..PULL_LEASE_ROUNDS {
            let token = uuid::Uuid::new_v4().to_string();
            let (leased, busy) = self.lease_for_pull(object, &waiting, &token, state).await?;
            self.deliver_pulled(object, &leased, &token, state, deadline, calls)
                .await?;
            waiting = busy;
            if waiting.is_empty() || round + 1 == PULL_LEASE_ROUNDS {
                break;
            }
            self.check_deadline(deadline)?;
            tokio::time::sleep(self.settings.settle_poll).await;
        }
        state.pull_deferred += waiting.len() as u64;
        Ok(())
    }

    /// Leases what it can of `record_ids`: the records leased (written ones: with a CRM id) and
    /// those busy. A store failure gives back every lease taken.
    async fn lease_for_pull(
        &self,
        object: ObjectKind,
        record_ids: &[String],
        token: &str,
        state: &mut BackfillProgress,
    ) -> Result<(Vec<crate::domain::sync::RecordState>, Vec<String>), AdoptionError> {
        let (mut leased, mut busy) = (Vec::new(), Vec::new());
        for record_id in record_ids {
            let record = crate::domain::contract::RecordRef {
                object,
                record_id: record_id.clone(),
            };
            let now_ms = self.clock.now_ms();
            match self.leases.lease(&record, token, now_ms, now_ms + 120_000).await {
                Ok(crate::ports::LeaseOutcome::Leased(current)) if current.crm_id.is_some() => {
                    leased.push(*current)
                }
                Ok(crate::ports::LeaseOutcome::Leased(current)) => {
                    // Not written (it failed, or waits for its contact): nothing to pull yet.
                    self.release(&current, token).await;
                    state.pull_deferred += 1;
                }
                Ok(crate::ports::LeaseOutcome::Busy) => busy.push(record_id.clone()),
                Err(error) => {
                    self.release_all(&leased, token).await;
                    return Err(error.into());
                }
            }
        }
        Ok((leased, busy))
    }

    /// Reads the leased records' CRM-owned values and delivers those the app has not received,
    /// settling each lease; on a failure, every lease not settled yet is given back.
    async fn deliver_pulled(
        &self,
        object: ObjectKind,
        leased: &[crate::domain::sync::RecordState],
        token: &str,
        state: &mut BackfillProgress,
        deadline: Instant,
        calls: &mut BatchReport,
    ) -> Result<(), AdoptionError> {
        let (Some(app_inbox), false) = (&self.app_inbox, leased.is_empty()) else {
            self.release_all(leased, token).await;
            return Ok(());
        };
        let mapping = match self.mapping_of(object) {
            Ok(mapping) => mapping,
            Err(error) => {
                self.release_all(leased, token).await;
                return Err(error);
            }
        };
        let owned: Vec<(&String, &String)> = mapping
            .fields
            .iter()
            .filter(|(_, rule)| rule.owner == crate::domain::mapping::Owner::Crm)
            .map(|(field, rule)| (field, &rule.crm_property))
            .collect();
        let properties: Vec<String> = owned.iter().map(|(_, property)| (*property).clone()).collect();
        let crm_ids: Vec<String> = leased.iter().filter_map(|s| s.crm_id.clone()).collect();
        let read = match self
            .worker
            .call(deadline, calls, || {
                self.crm.read(&mapping.crm_object, &crm_ids, &properties)
            })
            .await
        {
            Ok(read) => read,
            Err(error) => {
                self.release_all(leased, token).await;
                return Err(error.into());
            }
        };
        let now_ms = self.clock.now_ms();
        for (index, (current, values)) in leased.iter().zip(read.records).enumerate() {
            let mut changes = BTreeMap::new();
            let mut update = crate::ports::InboundUpdate::unchanged(current);
            for (field, property) in &owned {
                let Some(value) = values.as_ref().and_then(|v| v.get(*property)) else {
                    continue;
                };
                if value.trim().is_empty() || current.received.get(*property) == Some(value) {
                    continue;
                }
                changes.insert((*field).clone(), value.clone());
                update.received.insert((*property).clone(), value.clone());
            }
            if changes.is_empty() {
                self.release(current, token).await;
                continue;
            }
            let sequence = current.inbox_sequence + 1;
            let event_key = format!("adoption:{}:{}", state.plan_id, current.record);
            let message = crate::domain::inbound::app_inbox_message(
                &current.record,
                sequence,
                self.crm.name(),
                current.crm_id.as_deref().unwrap_or_default(),
                &changes,
                now_ms,
                "ADOPTION",
                &event_key,
            );
            if !app_inbox
                .send(&[crate::ports::OutgoingMessage::new(event_key.clone(), message)])
                .await
                .is_empty()
            {
                self.release_all(&leased[index..], token).await;
                return Err(AdoptionError::Lane(1));
            }
            update.inbox_sequence = sequence;
            match self
                .leases
                .settle_inbound(&current.record, token, self.clock.now_ms(), &update)
                .await
            {
                Ok(true) => state.pulled += 1,
                // The lease ran out meanwhile and live work took the record: the message is sent
                // but not recorded, so the reconciliation sends the value once more.
                Ok(false) => state.pull_deferred += 1,
                Err(error) => {
                    // The app has the message; the reconciliation finds the value unrecorded
                    // and sends it once more.
                    self.release_all(&leased[index + 1..], token).await;
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }

    /// A planned object's mapping; one the mapping no longer has (changed since the plan) stops
    /// the backfill rather than guessing.
    fn mapping_of(&self, object: ObjectKind) -> Result<&ObjectMapping, AdoptionError> {
        self.mapping.object(object).ok_or_else(|| {
            AdoptionError::Plan(anyhow::anyhow!(
                "the mapping has no [{object}] section any more; plan again with the mapping in use"
            ))
        })
    }

    async fn release_all(&self, states: &[crate::domain::sync::RecordState], token: &str) {
        for state in states {
            self.release(state, token).await;
        }
    }

    async fn release(&self, state: &crate::domain::sync::RecordState, token: &str) {
        let untouched = crate::ports::InboundUpdate::unchanged(state);
        if let Err(error) = self
            .leases
            .settle_inbound(&state.record, token, self.clock.now_ms(), &untouched)
            .await
        {
            tracing::warn!(record = %state.record, error = ?anyhow::Error::from(error), "could not release a lease; it runs out");
        }
    }
}

/// A phase's items of one object, `size` at a time, in plan order.
struct Batch {
    object: ObjectKind,
    items: Vec<PlanItem>,
    /// The line a stopped phase may go on after: before the first item of any object still
    /// waiting for its batch.
    resume_line: Option<u64>,
}

/// Groups items into batches per object, as a CRM call takes one object's records.
struct Batches<I> {
    items: I,
    size: usize,
    pending: BTreeMap<ObjectKind, Vec<PlanItem>>,
    read_all: bool,
}

impl<I> Batches<I> {
    fn new(items: I, size: usize) -> Self {
        Self {
            items,
            size: size.max(1),
            pending: BTreeMap::new(),
            read_all: false,
        }
    }
}

impl<I: Iterator<Item = anyhow::Result<PlanItem>>> Iterator for Batches<I> {
    type Item = Result<Batch, AdoptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.read_all {
            match self.items.next() {
                Some(Ok(item)) => {
                    let (object, line) = (item.object, item.plan_line);
                    let queue = self.pending.entry(object).or_default();
                    queue.push(item);
                    if queue.len() >= self.size {
                        let items = std::mem::take(queue);
                        // Everything before the first item still waiting (of any object) is done.
                        let resume_line = Some(
                            self.pending
                                .values()
                                .filter_map(|waiting| waiting.first())
                                .map(|first| first.plan_line - 1)
                                .min()
                                .unwrap_or(line),
                        );
                        return Some(Ok(Batch {
                            object,
                            items,
                            resume_line,
                        }));
                    }
                }
                Some(Err(error)) => return Some(Err(AdoptionError::Plan(error))),
                None => self.read_all = true,
            }
        }
        // The last, partial batches: the phase ends after them.
        let object = *self.pending.iter().find(|(_, items)| !items.is_empty())?.0;
        let items = std::mem::take(self.pending.get_mut(&object)?);
        Some(Ok(Batch {
            object,
            items,
            resume_line: None,
        }))
    }
}

/// Whether a deal or an activity belongs to a contact that is not written (`waiting`).
fn contact_waits(item: &PlanItem, waiting: &std::collections::HashSet<String>) -> bool {
    crate::domain::contract::parse_change(&item.message)
        .ok()
        .and_then(|change| change.contact_record_id)
        .is_some_and(|contact| waiting.contains(&contact))
}

/// How a refused link is kept in the progress: the object and the app record.
fn refusal_key(object: ObjectKind, record_id: &str) -> String {
    format!("{object}/{record_id}")
}

/// The CRM properties a plan reads: the app's id property and every mapped field.
fn properties(mapping: &ObjectMapping) -> Vec<String> {
    let mut properties: Vec<String> = mapping
        .fields
        .values()
        .map(|rule| rule.crm_property.clone())
        .chain([mapping.id_property.clone()])
        .collect();
    properties.sort();
    properties.dedup();
    properties
}

#[cfg(test)]
#[path = "adoption_tests.rs"]
mod use_case_tests;
