//! The sync dashboard's use cases: find records by status or by what a support request names
//! (app id, email, CRM id), show one record's whole story, re-sync records, look into and redrive
//! the dead-letter queues, and show the latest reconciliation. Rendering is in [`html`], sign-in
//! in [`session`]; the HTTP wiring is `entrypoints::dashboard_http`.

pub mod html;
pub mod oidc;
pub mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::domain::clock::Clock;
use crate::domain::contract::{with_idempotency_id, ObjectKind, RecordRef};
use crate::domain::failures::{cause_of, Cause};
use crate::domain::health::HealthFacts;
use crate::domain::inbound::ConflictEntry;
use crate::domain::sync::{RecordFilter, RecordState, SyncStatus, Tally, TimelineEntry, TimelineKind};
use crate::ports::state::*;
use crate::ports::{
    DeadLetterQueue, DeadLetterSummary, ListError, MessageQueue, OutgoingMessage, QueueUnavailable,
    RedriveOutcome, StoreUnavailable,
};
use crate::reconcile::{ReconcileStore, RunReport};

/// Marks a message the dashboard sent, for the logs and the timeline.
pub const RESYNC_ATTRIBUTE: &str = "crm_sync_resync";

/// The timeline's note of a re-sync asked for on the dashboard.
pub const RESYNC_NOTE: &str = "re-sync requested from the dashboard";

/// How long a record's page follows a re-sync it queued, reloading itself.
pub const FOLLOW_MS: i64 = 120_000;

/// Builds a record's URL in the CRM from its object type and CRM id.
pub type CrmRecordUrl = Arc<dyn Fn(ObjectKind, &str) -> Option<String> + Send + Sync>;

/// Tunables of the dashboard.
#[derive(Clone)]
pub struct DashboardSettings {
    pub page_size: usize,
    /// Index pages read per status count before it shows as "N+".
    pub count_pages: usize,
    pub timeline_entries: usize,
    pub conflict_entries: usize,
    /// Messages one Redrive click moves at most (it must finish within the API's 30 s).
    pub redrive_max: usize,
    /// Where a record lives in the CRM (`None`: no links).
    pub crm_record_url: Option<CrmRecordUrl>,
    /// The object types a listing may be narrowed to: the mapping's, then links.
    pub types: Vec<ObjectKind>,
    /// Each type's display properties (the mapping's `display`): how a record is named to a
    /// person in lists.
    pub display: HashMap<ObjectKind, Vec<(String, String)>>,
    /// Pages of failed records read to group failures by cause (the newest first).
    pub failure_pages: usize,
    /// Records one "Re-sync these" click of a cause queues at most.
    pub cause_resync_max: usize,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            page_size: 50,
            count_pages: 5,
            timeline_entries: 50,
            conflict_entries: 50,
            redrive_max: 500,
            crm_record_url: None,
            types: ObjectKind::ALL.into_iter().chain([ObjectKind::Link]).collect(),
            display: HashMap::new(),
            failure_pages: 10,
            cause_resync_max: 500,
        }
    }
}

/// A dead-letter queue as the dashboard shows it.
pub struct Lane {
    /// Short name used in forms (`outbound`, `inbound`, `app-inbox`).
    pub name: &'static str,
    pub description: &'static str,
    pub queue: Arc<dyn DeadLetterQueue>,
}

/// A failure the dashboard reports on the page.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(transparent)]
    Store(#[from] StoreUnavailable),
    #[error(transparent)]
    Queue(#[from] QueueUnavailable),
    #[error("the listing cursor is not valid; start again from the first page")]
    BadCursor,
    #[error("there is no queue named `{0}`")]
    UnknownLane(String),
}

impl From<ListError> for DashboardError {
    fn from(error: ListError) -> Self {
        match error {
            ListError::BadCursor => DashboardError::BadCursor,
            ListError::Unavailable(error) => DashboardError::Store(error),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<RecordState>,
    pub next: Option<String>,
}

/// One record with its story.
#[derive(Debug, Clone)]
pub struct RecordView {
    pub state: RecordState,
    pub timeline: Vec<TimelineEntry>,
    pub conflicts: Vec<ConflictEntry>,
}

/// Failed records of one cause.
#[derive(Debug, Clone)]
pub struct FailureGroup {
    pub cause: Cause,
    pub count: usize,
    /// The object types among them.
    pub objects: BTreeSet<ObjectKind>,
    /// A few of them, the most recently failed first, with their names for a person.
    pub examples: Vec<(RecordRef, Option<String>)>,
    /// When the most recent of them failed.
    pub newest_ms: Option<i64>,
}

/// Failed records grouped by cause, largest group first.
#[derive(Debug, Clone)]
pub struct FailureGroups {
    pub groups: Vec<FailureGroup>,
    /// Records one "Re-sync" click of a cause queues at most.
    pub per_click: usize,
    /// Failed records read.
    pub read: usize,
    /// Whether every failed record was read (else the groups count the newest `read`).
    pub complete: bool,
}

/// Examples shown per cause.
const CAUSE_EXAMPLES: usize = 3;

impl RecordView {
    /// When a re-sync was asked for, within [`QUEUED_SHOWN_MS`], that has no outcome yet: the
    /// record has not been attempted since its note, or its attempt is still being written (the
    /// state is `pending`; the timeline is written before the state is settled, so it is the
    /// state that says when an attempt ended).
    pub fn resync_queued_at(&self, now_ms: i64) -> Option<i64> {
        let note = self
            .timeline
            .iter()
            .find(|entry| entry.kind == TimelineKind::Note && entry.detail.starts_with(RESYNC_NOTE))?;
        let attempted_since = self.state.last_attempt_at_ms.is_some_and(|at| at >= note.at_ms);
        let waiting = !attempted_since || self.state.status == SyncStatus::Pending;
        (waiting && now_ms - note.at_ms < QUEUED_SHOWN_MS).then_some(note.at_ms)
    }
}

/// How long a re-sync with no outcome shows as queued: a re-sync the sync finds applied already
/// (a redrive took the same change first) leaves no attempt behind.
pub const QUEUED_SHOWN_MS: i64 = 10 * 60 * 1000;

/// Where a journaled dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterStanding {
    /// In the dead-letter queue, its record not synced since.
    Waiting,
    /// Its record synced after it was dead-lettered (by a re-sync, a newer change or a redrive).
    Fixed { synced_at_ms: i64 },
    /// A redrive moved it back to its queue.
    Redriven { at_ms: i64 },
}

/// Where `letter` stands, by its record's state.
pub fn letter_standing(letter: &crate::ports::LetterEntry, state: Option<&RecordState>) -> LetterStanding {
    let synced = state
        .filter(|state| matches!(state.status, SyncStatus::Synced | SyncStatus::Deleted))
        .and_then(|state| state.last_synced_at_ms)
        .filter(|at| *at > letter.at_ms);
    match (synced, letter.redriven_at_ms) {
        (Some(synced_at_ms), _) => LetterStanding::Fixed { synced_at_ms },
        (None, Some(at_ms)) => LetterStanding::Redriven { at_ms },
        (None, None) => LetterStanding::Waiting,
    }
}

/// A page of journaled dead letters: each with where it stands and its record's name.
#[derive(Debug, Clone, Default)]
pub struct LetterPage {
    pub letters: Vec<(crate::ports::LetterEntry, LetterStanding, Option<String>)>,
    pub next: Option<String>,
}

/// What the health page shows: the facts, the dead-letter queues, the last reconciliation.
pub struct Health {
    pub facts: HealthFacts,
    pub lanes: Vec<LaneView>,
    pub report: Result<Option<RunReport>, String>,
}

/// Why a record was not re-synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    NoSuchRecord,
    NothingStored,
    Unsendable(String),
    QueueRefused(String),
}

impl SkipReason {
    /// A short code for links (a notice never carries free text).
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::NoSuchRecord => "unknown",
            SkipReason::NothingStored => "nothing",
            SkipReason::Unsendable(_) => "unsendable",
            SkipReason::QueueRefused(_) => "refused",
        }
    }

    /// The sentence for a code.
    pub fn describe(code: &str) -> Option<&'static str> {
        Some(match code {
            "unknown" => "crm-sync has no such record",
            "nothing" => "no change of the record is stored, so the app must send one",
            "unsendable" => "the stored change could not be sent again",
            "refused" => "the re-sync queue refused it; try again",
            _ => return None,
        })
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let summary = SkipReason::describe(self.code()).unwrap_or("skipped");
        match self {
            SkipReason::Unsendable(detail) | SkipReason::QueueRefused(detail) => {
                write!(f, "{summary}: {detail}")
            }
            _ => f.write_str(summary),
        }
    }
}

/// What a re-sync request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncOutcome {
    pub queued: Vec<RecordRef>,
    /// Records not queued, with why.
    pub skipped: Vec<(RecordRef, SkipReason)>,
}

/// A dead-letter queue's state, or why it could not be read.
pub struct LaneView {
    pub name: &'static str,
    pub description: &'static str,
    pub summary: Result<DeadLetterSummary, String>,
}

/// What a re-sync of one record sends: the change not yet applied as it is; otherwise the last
/// applied change under a new idempotency id, so that it is written again (a newer change still
/// wins over it, as any change's version does).
pub fn resync_message(state: &RecordState, now_ms: i64) -> Result<String, SkipReason> {
    if let Some(pending) = &state.pending_change {
        return Ok(pending.clone());
    }
    match &state.last_change {
        Some(applied) => with_idempotency_id(applied, &format!("resync-{now_ms}"))
            .map_err(|error| SkipReason::Unsendable(error.to_string())),
        None => Err(SkipReason::NothingStored),
    }
}

pub struct DashboardService {
    history: Arc<dyn RecordJournal>,
    queries: Arc<dyn RecordQueries>,
    reports: Arc<dyn ReconcileStore>,
    lanes: Vec<Lane>,
    resync_lane: Arc<dyn MessageQueue>,
    clock: Arc<dyn Clock>,
    settings: DashboardSettings,
    /// Where adoption backfills keep their progress (`None`: not shown).
    adoptions: Option<Arc<dyn crate::ports::AdoptionStore>>,
    /// The CRM day's budget (`None`: not shown).
    budget: Option<Arc<dyn crate::ports::BudgetReader>>,
    /// The journal of dead letters (`None`: no list of them).
    letters: Option<Arc<dyn crate::ports::DeadLetterJournal>>,
}

impl DashboardService {
    pub fn new(
        state: Arc<impl RecordJournal + RecordQueries + 'static>,
        reports: Arc<dyn ReconcileStore>,
        lanes: Vec<Lane>,
        resync_lane: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
        settings: DashboardSettings,
    ) -> Self {
        Self {
            history: state.clone(),
            queries: state,
            reports,
            lanes,
            resync_lane,
            clock,
            settings,
            adoptions: None,
            budget: None,
            letters: None,
        }
    }

    /// Lists every dead letter crm-sync journaled.
    pub fn with_letters(mut self, journal: Arc<dyn crate::ports::DeadLetterJournal>) -> Self {
        self.letters = Some(journal);
        self
    }

    /// A page of a dead-letter queue's journaled letters, newest first, each with where it
    /// stands; with `query`, those whose reason, record or body contains it.
    pub async fn letters(
        &self,
        lane: &str,
        query: Option<&str>,
        cursor: Option<String>,
    ) -> Result<LetterPage, DashboardError> {
        let lane = self
            .lanes
            .iter()
            .find(|candidate| candidate.name == lane)
            .ok_or_else(|| DashboardError::UnknownLane(lane.to_string()))?;
        let Some(journal) = &self.letters else {
            return Ok(LetterPage::default());
        };
        let (letters, next) = journal
            .letters(lane.name, query, self.settings.page_size, cursor)
            .await?;
        let records: Vec<RecordRef> = letters
            .iter()
            .filter_map(|letter| letter.record.clone())
            .collect();
        let states = self.queries.states(&records).await?;
        let letters = letters
            .into_iter()
            .map(|letter| {
                let state = letter.record.as_ref().and_then(|record| states.get(record));
                let standing = letter_standing(&letter, state);
                let name = state.and_then(|state| self.display_name(state));
                (letter, standing, name)
            })
            .collect();
        Ok(LetterPage { letters, next })
    }

    /// Shows the CRM day's budget on the health page.
    pub fn with_budget(mut self, budget: Arc<dyn crate::ports::BudgetReader>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// What the health page shows: each part read at once, and named when it cannot be read.
    pub async fn health(&self) -> Health {
        use crate::domain::health::{hour_of, HOUR_MS, WEEK_HOURS};
        let now_ms = self.clock.now_ms();
        let from_hour = hour_of(now_ms) - HOUR_MS * (WEEK_HOURS as i64 - 1);
        let budget = async {
            match &self.budget {
                Some(budget) => Some(budget.today(now_ms).await),
                None => None,
            }
        };
        let (synced, pending, hours, budget, lanes, report) = futures::join!(
            self.queries
                .list_of(RecordFilter::Status(SyncStatus::Synced), None, 1, None),
            self.queries.oldest_waiting_since(),
            self.queries.outcome_hours(from_hour),
            budget,
            self.lanes(),
            self.latest_report(),
        );
        let mut unreadable = Vec::new();
        let mut note = |what: &str, error: &dyn std::fmt::Display| {
            tracing::warn!(error = %error, what, "health: could not read");
            unreadable.push(what.to_string());
        };
        let last_synced_ms = match synced {
            Ok((states, _)) => states.first().and_then(|state| state.last_synced_at_ms),
            Err(error) => {
                note("the last sync", &DashboardError::from(error));
                None
            }
        };
        let oldest_pending_ms = pending.unwrap_or_else(|error| {
            note("the waiting changes", &error);
            None
        });
        let hours = hours.unwrap_or_else(|error| {
            note("the hourly counts", &error);
            Vec::new()
        });
        let budget = match budget {
            Some(Ok(budget)) => Some(budget),
            Some(Err(error)) => {
                note("the CRM's daily budget", &error);
                None
            }
            None => None,
        };
        let last_reconcile = match &report {
            Ok(report) => report
                .as_ref()
                .map(|report| (report.started_at_ms, report.errors)),
            Err(error) => {
                note("the last reconciliation", error);
                None
            }
        };
        let dead_letters = lanes
            .iter()
            .filter_map(|lane| match &lane.summary {
                Ok(summary) => Some((lane.name.to_string(), summary.waiting)),
                Err(_) => None,
            })
            .collect();
        let backlog = lanes
            .iter()
            .find(|lane| lane.name == "outbound")
            .and_then(|lane| lane.summary.as_ref().ok())
            .and_then(|summary| summary.source_waiting);
        for lane in lanes.iter().filter(|lane| lane.summary.is_err()) {
            unreadable.push(format!("the {} dead-letter queue", lane.name));
        }
        let facts = HealthFacts {
            now_ms,
            last_synced_ms,
            oldest_pending_ms,
            backlog,
            hours: crate::domain::health::last_hours(&hours, now_ms, WEEK_HOURS),
            budget,
            dead_letters,
            last_reconcile,
            unreadable,
        };
        Health {
            facts,
            lanes,
            report: report.map_err(|error| error.to_string()),
        }
    }

    /// Shows adoption plans and their backfills' progress.
    pub fn with_adoptions(mut self, adoptions: Arc<dyn crate::ports::AdoptionStore>) -> Self {
        self.adoptions = Some(adoptions);
        self
    }

    /// The newest adoption backfills, newest first.
    pub async fn backfills(&self) -> Result<Vec<crate::domain::adoption::BackfillProgress>, DashboardError> {
        match &self.adoptions {
            Some(store) => Ok(store.backfills(10).await?),
            None => Ok(Vec::new()),
        }
    }

    /// The newest adoption plans, newest first.
    pub async fn plans(&self) -> Result<Vec<crate::domain::adoption::PlanSummary>, DashboardError> {
        match &self.adoptions {
            Some(store) => Ok(store.plans(10).await?),
            None => Ok(Vec::new()),
        }
    }

    /// One plan and its backfill, if one has started.
    pub async fn plan(
        &self,
        plan_id: &str,
    ) -> Result<
        Option<(
            crate::domain::adoption::PlanSummary,
            Option<crate::domain::adoption::BackfillProgress>,
        )>,
        DashboardError,
    > {
        let Some(store) = &self.adoptions else {
            return Ok(None);
        };
        let (plan, backfill) = futures::future::join(store.plan(plan_id), store.backfill(plan_id)).await;
        Ok(match plan? {
            Some(plan) => Some((plan, backfill?)),
            None => None,
        })
    }

    pub fn settings(&self) -> &DashboardSettings {
        &self.settings
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The record's page in the CRM, where its URL is known.
    pub fn crm_url(&self, state: &RecordState) -> Option<String> {
        let url = self.settings.crm_record_url.as_ref()?;
        url(state.record.object, state.crm_id.as_ref()?)
    }

    /// Records per filter, each count bounded (see `DashboardSettings::count_pages`).
    pub async fn counts(&self) -> Result<Vec<(RecordFilter, Tally)>, DashboardError> {
        let counts = futures::future::join_all(
            RecordFilter::ALL
                .iter()
                .map(|filter| self.queries.count(*filter, self.settings.count_pages)),
        )
        .await;
        RecordFilter::ALL
            .into_iter()
            .zip(counts)
            .map(|(filter, tally)| Ok((filter, tally?)))
            .collect()
    }

    /// How a record is named to a person: its display fields' values as crm-sync last wrote or
    /// received them, else as the change waiting to be applied has them (a record that never
    /// synced), joined (`Ada Lovelace ada@example.com`), if it has any.
    pub fn display_name(&self, state: &RecordState) -> Option<String> {
        let fields = self.settings.display.get(&state.record.object)?;
        // Read only when a field is found neither written nor received.
        let pending = std::cell::OnceCell::new();
        let pending = || {
            pending
                .get_or_init(|| {
                    state
                        .pending_change
                        .as_deref()
                        .and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok())
                })
                .as_ref()
        };
        let parts: Vec<String> = fields
            .iter()
            .filter_map(|(field, property)| {
                state
                    .written
                    .get(property)
                    .or_else(|| state.received.get(property))
                    .cloned()
                    .or_else(|| pending()?.get("data")?.get(field)?.as_str().map(str::to_string))
            })
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// [`Self::display_name`] of each record, in order.
    pub fn display_names(&self, states: &[RecordState]) -> Vec<Option<String>> {
        states.iter().map(|state| self.display_name(state)).collect()
    }

    /// The object types a listing may be narrowed to.
    pub fn types(&self) -> &[ObjectKind] {
        &self.settings.types
    }

    pub async fn list(
        &self,
        filter: RecordFilter,
        object: Option<ObjectKind>,
        cursor: Option<String>,
    ) -> Result<Page, DashboardError> {
        let (records, next) = self
            .queries
            .list_of(filter, object, self.settings.page_size, cursor)
            .await?;
        Ok(Page { records, next })
    }

    /// The failed records, newest failure first, as many as `failure_pages` pages hold; and
    /// whether that is all of them.
    async fn failed_records(&self) -> Result<(Vec<RecordState>, bool), DashboardError> {
        let mut records = Vec::new();
        let mut cursor = None;
        for _ in 0..self.settings.failure_pages.max(1) {
            let page = self
                .list(RecordFilter::Status(SyncStatus::Failed), None, cursor)
                .await?;
            records.extend(page.records);
            cursor = page.next;
            if cursor.is_none() {
                return Ok((records, true));
            }
        }
        Ok((records, false))
    }

    /// Failed records grouped by the cause of their last error, largest group first.
    pub async fn failure_groups(&self) -> Result<FailureGroups, DashboardError> {
        let (records, complete) = self.failed_records().await?;
        let mut groups: BTreeMap<Cause, FailureGroup> = BTreeMap::new();
        for state in &records {
            let cause = cause_of(state.last_error.as_deref().unwrap_or_default());
            let group = groups.entry(cause.clone()).or_insert_with(|| FailureGroup {
                cause,
                count: 0,
                objects: BTreeSet::new(),
                examples: Vec::new(),
                newest_ms: None,
            });
            group.count += 1;
            group.objects.insert(state.record.object);
            if group.examples.len() < CAUSE_EXAMPLES {
                group
                    .examples
                    .push((state.record.clone(), self.display_name(state)));
            }
            group.newest_ms = group.newest_ms.max(state.last_attempt_at_ms);
        }
        let mut groups: Vec<FailureGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
        Ok(FailureGroups {
            groups,
            per_click: self.settings.cause_resync_max.max(1),
            read: records.len(),
            complete,
        })
    }

    /// The failed records of one cause (by [`Cause::key`]), among those read; and whether every
    /// failed record was read.
    pub async fn failed_with_cause(&self, key: &str) -> Result<(Vec<RecordState>, bool), DashboardError> {
        let (records, complete) = self.failed_records().await?;
        let records = records
            .into_iter()
            .filter(|state| cause_of(state.last_error.as_deref().unwrap_or_default()).key() == key)
            .collect();
        Ok((records, complete))
    }

    /// Re-syncs the failed records of one cause, the newest `cause_resync_max` of them; returns
    /// what was done and whether more of that cause are left (those queued stay failed until
    /// the sync takes them up, so a click at once would queue the same ones again).
    pub async fn resync_cause(&self, key: &str, by: &str) -> Result<(ResyncOutcome, bool), DashboardError> {
        let (records, _) = self.failed_with_cause(key).await?;
        let max = self.settings.cause_resync_max.max(1);
        let refs: Vec<RecordRef> = records
            .iter()
            .take(max)
            .map(|state| state.record.clone())
            .collect();
        let outcome = self.resync(&refs, by).await?;
        tracing::info!(
            cause = key,
            queued = outcome.queued.len(),
            skipped = outcome.skipped.len(),
            "re-sync of a cause"
        );
        Ok((outcome, records.len() > max))
    }

    /// Records a support request may name: an email finds contacts; anything else is tried as an
    /// app record id and as a CRM id, of every object type.
    pub async fn search(&self, query: &str) -> Result<Vec<RecordState>, DashboardError> {
        let query = query.trim();
        // Longer than any record id, email or CRM id crm-sync keeps: nothing to find, and too
        // long for a DynamoDB key.
        if query.is_empty() || query.len() > crate::domain::contract::MAX_LINK_ID_BYTES {
            return Ok(Vec::new());
        }
        // A link's id (two records' types and ids) may be longer than a record's.
        let link_only = query.chars().count() > crate::domain::contract::MAX_ID_CHARS;
        if query.contains('@') && !link_only {
            return Ok(self.queries.find_by_email(query, self.settings.page_size).await?);
        }
        let refs: Vec<RecordRef> = ObjectKind::known()
            .into_iter()
            .filter(|object| !link_only || *object == ObjectKind::Link)
            .map(|object| RecordRef {
                object,
                record_id: query.to_string(),
            })
            .collect();
        let by_app_id = self.queries.states(&refs).await?;
        let by_crm_id = futures::future::join_all(
            ObjectKind::known()
                .into_iter()
                .filter(|_| !link_only)
                .map(|object| self.queries.find_by_crm_id(object, query)),
        )
        .await;
        let mut found: BTreeMap<RecordRef, RecordState> = BTreeMap::new();
        for state in by_app_id.into_values() {
            found.insert(state.record.clone(), state);
        }
        for state in by_crm_id {
            if let Some(state) = state? {
                found.insert(state.record.clone(), state);
            }
        }
        Ok(found.into_values().collect())
    }

    pub async fn record(&self, record: &RecordRef) -> Result<Option<RecordView>, DashboardError> {
        let (found, conflicts) = futures::future::join(
            self.queries.record(record, self.settings.timeline_entries),
            self.history.conflicts(record, self.settings.conflict_entries),
        )
        .await;
        Ok(found?.map(|(state, timeline)| RecordView {
            state,
            timeline,
            conflicts: conflicts.unwrap_or_default(),
        }))
    }

    /// Queues each record's change on the re-sync lane, ahead of the outbound backlog; `by` names
    /// the operator on each record's timeline.
    pub async fn resync(&self, records: &[RecordRef], by: &str) -> Result<ResyncOutcome, DashboardError> {
        let now_ms = self.clock.now_ms();
        let states: HashMap<RecordRef, RecordState> = self.queries.states(records).await?;
        let mut outcome = ResyncOutcome::default();
        let mut messages = Vec::new();
        let mut queued_refs: HashMap<String, RecordRef> = HashMap::new();
        for (position, record) in records.iter().enumerate() {
            let Some(state) = states.get(record) else {
                outcome.skipped.push((record.clone(), SkipReason::NoSuchRecord));
                continue;
            };
            match resync_message(state, now_ms) {
                Ok(body) => {
                    let id = position.to_string();
                    queued_refs.insert(id.clone(), record.clone());
                    messages.push(OutgoingMessage {
                        id,
                        body,
                        delay_secs: 0,
                        attributes: vec![(RESYNC_ATTRIBUTE.to_string(), "dashboard".to_string())],
                    });
                }
                Err(reason) => outcome.skipped.push((record.clone(), reason)),
            }
        }
        for failure in self.resync_lane.send(&messages).await {
            if let Some(record) = queued_refs.remove(&failure.id) {
                outcome
                    .skipped
                    .push((record, SkipReason::QueueRefused(failure.reason)));
            }
        }
        let mut queued: Vec<(usize, RecordRef)> = queued_refs
            .into_iter()
            .map(|(id, record)| (id.parse().unwrap_or(0), record))
            .collect();
        queued.sort();
        outcome.queued = queued.into_iter().map(|(_, record)| record).collect();
        // The re-syncs are queued whether or not their note is written.
        self.note(&outcome.queued, &format!("{RESYNC_NOTE} by {by}"))
            .await;
        Ok(outcome)
    }

    /// Notes an operator's action on records' timelines; the action is done whether or not the
    /// note is written.
    async fn note(&self, records: &[RecordRef], detail: &str) {
        let now_ms = self.clock.now_ms();
        let notes: Vec<TimelineEntry> = records
            .iter()
            .map(|record| TimelineEntry {
                record: record.clone(),
                at_ms: now_ms,
                kind: TimelineKind::Note,
                idempotency_id: None,
                detail: detail.to_string(),
                call: None,
            })
            .collect();
        if let Err(error) = self.history.append_timeline(&notes).await {
            // Not the note itself: it names the operator.
            tracing::warn!(error = %error, records = records.len(), "could not note an operator's action on the timelines");
        }
    }

    /// Dismisses the record's conflicts; `false` while a sync holds the record.
    pub async fn dismiss_conflicts(&self, record: &RecordRef, by: &str) -> Result<bool, DashboardError> {
        let dismissed = self
            .history
            .dismiss_conflicts(record, self.clock.now_ms())
            .await?;
        if dismissed {
            tracing::info!(record = %record, "conflicts dismissed");
            self.note(
                std::slice::from_ref(record),
                &format!("conflicts dismissed by {by}"),
            )
            .await;
        }
        Ok(dismissed)
    }

    /// An operator's decision on an identity conflict: the record writes the CRM record it shares.
    pub async fn share_crm_record(&self, record: &RecordRef, by: &str) -> Result<(), DashboardError> {
        self.history.share_crm_record(record, self.clock.now_ms()).await?;
        tracing::info!(record = %record, "sharing of a CRM record allowed");
        self.note(
            std::slice::from_ref(record),
            &format!("sharing its CRM record allowed by {by}"),
        )
        .await;
        Ok(())
    }

    pub async fn lanes(&self) -> Vec<LaneView> {
        let summaries = futures::future::join_all(self.lanes.iter().map(|lane| lane.queue.summary())).await;
        self.lanes
            .iter()
            .zip(summaries)
            .map(|(lane, summary)| LaneView {
                name: lane.name,
                description: lane.description,
                summary: summary.map_err(|error| format!("{error}: {:#}", error.0)),
            })
            .collect()
    }

    pub async fn redrive(&self, lane: &str, by: &str) -> Result<RedriveOutcome, DashboardError> {
        let lane = self
            .lanes
            .iter()
            .find(|candidate| candidate.name == lane)
            .ok_or_else(|| DashboardError::UnknownLane(lane.to_string()))?;
        let outcome = lane.queue.redrive(self.settings.redrive_max).await?;
        if let Some(journal) = &self.letters {
            match journal
                .mark_redriven(lane.name, &outcome.letters, self.clock.now_ms(), by)
                .await
            {
                Ok(records) => {
                    self.note(&records, &format!("dead letter redriven by {by}"))
                        .await;
                }
                // Moved all the same; only the list still shows them as waiting.
                Err(error) => {
                    tracing::warn!(error = %error, lane = lane.name, "could not mark redriven letters")
                }
            }
        }
        tracing::info!(
            lane = lane.name,
            moved = outcome.moved,
            failed = outcome.failed,
            more = outcome.more,
            "redrive"
        );
        Ok(outcome)
    }

    pub async fn latest_report(&self) -> Result<Option<RunReport>, DashboardError> {
        Ok(self.reports.reports(1).await?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::parse_change;

    const BODY: &str = r#"{"version":1,"type":"contact.upsert","record_id":"u-1","idempotency_id":"i-1","changed_at":5,"data":{"email":"a@example.com"}}"#;

    fn state() -> RecordState {
        RecordState::new(RecordRef {
            object: ObjectKind::Contact,
            record_id: "u-1".into(),
        })
    }

    #[test]
    fn a_change_not_yet_applied_is_re_sent_as_it_is() {
        let mut state = state();
        state.pending_change = Some(BODY.into());
        state.last_change = Some("older".into());
        assert_eq!(resync_message(&state, 9).unwrap(), BODY);
    }

    #[test]
    fn an_applied_change_is_re_sent_under_a_new_idempotency_id_with_its_own_version() {
        let mut state = state();
        state.last_change = Some(BODY.into());
        let change = parse_change(&resync_message(&state, 9).unwrap()).unwrap();
        assert_eq!(change.idempotency_id, "resync-9");
        assert_eq!(change.changed_at_ms, 5);
    }

    #[test]
    fn a_re_sync_shows_as_queued_until_an_attempt_since_it_has_settled_and_for_ten_minutes_at_most() {
        let note = TimelineEntry {
            record: state().record,
            at_ms: 1_000,
            kind: TimelineKind::Note,
            idempotency_id: None,
            detail: RESYNC_NOTE.into(),
            call: None,
        };
        let view = |last_attempt: i64, status: SyncStatus, newer: Option<TimelineKind>| {
            let mut state = state();
            state.last_attempt_at_ms = Some(last_attempt);
            state.status = status;
            let mut timeline: Vec<TimelineEntry> = newer
                .map(|kind| TimelineEntry {
                    at_ms: 1_100,
                    kind,
                    detail: "outcome".into(),
                    ..note.clone()
                })
                .into_iter()
                .collect();
            timeline.push(note.clone());
            RecordView {
                state,
                timeline,
                conflicts: Vec::new(),
            }
        };
        let queued = view(900, SyncStatus::Failed, None);
        assert_eq!(queued.resync_queued_at(2_000), Some(1_000));
        assert_eq!(
            queued.resync_queued_at(1_000 + QUEUED_SHOWN_MS),
            None,
            "not forever"
        );
        // The outcome's line is in, the state not yet settled: still followed.
        let writing = view(1_100, SyncStatus::Pending, Some(TimelineKind::Synced));
        assert_eq!(writing.resync_queued_at(2_000), Some(1_000));
        let settled = view(1_100, SyncStatus::Synced, Some(TimelineKind::Synced));
        assert_eq!(settled.resync_queued_at(2_000), None);
        let failed = view(1_100, SyncStatus::Failed, Some(TimelineKind::Failed));
        assert_eq!(failed.resync_queued_at(2_000), None);
    }

    #[test]
    fn a_record_with_no_stored_change_cannot_be_re_synced() {
        assert_eq!(resync_message(&state(), 9), Err(SkipReason::NothingStored));
    }
}
