//! Ports: what the use cases need from the outside world. Each contract says what an adapter
//! MUST do; the use cases rely on nothing more.

use async_trait::async_trait;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::domain::contract::{Change, ObjectKind, RecordRef};
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, CrmLink, FindResult, LinkInput, MergeLookup, MergePage,
    PropertyKinds, RateInfo, ReadResult, ThrottlePolicy, UpdateInput, UpsertInput,
};
pub use crate::domain::identity::IdentityUpdate;
use crate::domain::inbound::{ConflictEntry, InboundMessage, Interpretation};
use crate::domain::sync::{RecordFilter, RecordState, SyncStatus, Tally, TimelineEntry};
use crate::domain::{
    Acknowledgement, AuthError, Delivery, InboundEvent, ParseError, ProviderId, WebhookRequest,
};

/// A CRM's webhook dialect: how its requests are authenticated and how its bodies are read.
pub trait WebhookProvider: Send + Sync {
    /// The provider's short name; the route is `POST /webhooks/{id}`.
    fn id(&self) -> ProviderId;

    /// MUST return `Ok` only if the request provably comes from the CRM (signature, credentials,
    /// replay window), comparing secrets in constant time. MUST NOT read the body as data; it
    /// may read only the proof a CRM puts there (Salesforce's `OrganizationId`).
    fn authenticate(&self, request: &WebhookRequest, now_ms: i64) -> Result<(), AuthError>;

    /// Reads an authenticated body into events. MUST reject the whole body if any event is
    /// malformed, so that a delivery is either stored whole or not at all.
    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError>;

    /// What an accepted delivery is answered with; `None` is a JSON summary of what was stored.
    fn acknowledgement(&self) -> Option<Acknowledgement> {
        None
    }
}

/// A storage failure (of any store); the caller tries again later.
#[derive(Debug, thiserror::Error)]
#[error("storage is unavailable")]
pub struct StoreUnavailable(#[source] pub anyhow::Error);

/// Durable storage of raw deliveries, as received.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a raw delivery. MUST succeed without change when the same delivery is stored already
    /// (a CRM's retry keeps the first copy and its first arrival time).
    async fn put_delivery(&self, delivery: &Delivery, expires_at_ms: i64) -> Result<(), StoreUnavailable>;
}

/// One message to put on a queue; `id` is unique within one `send` call.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: String,
    /// Seconds before the message becomes visible (at most 900).
    pub delay_secs: u32,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
}

impl OutgoingMessage {
    pub fn new(id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            ..Self::default()
        }
    }
}

/// A message that the queue did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub id: String,
    pub reason: String,
}

/// A message queue.
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Sends every message, in as few calls as the queue allows. MUST return one failure for
    /// every message that is not durably on the queue, and none for a message that is.
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure>;
}

/// A CRM's record API, in batches. Every method MUST return one outcome per input, in input
/// order, or an error for the whole call; errors MUST say whether a retry can help.
#[async_trait]
pub trait Crm: Send + Sync {
    /// The CRM's name (`hubspot`).
    fn name(&self) -> &'static str;

    /// The most inputs one call takes.
    fn max_batch(&self) -> usize;

    /// Creates or updates records by the unique property `id_property`.
    async fn upsert(
        &self,
        object: &str,
        id_property: &str,
        inputs: &[UpsertInput],
    ) -> Result<BatchResult, CrmError>;

    /// Updates records by CRM id.
    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError>;

    /// Archives records by CRM id.
    async fn archive(&self, object: &str, crm_ids: &[String]) -> Result<BatchResult, CrmError>;

    /// Erases one record for privacy: for good, with nothing kept that a restore could bring
    /// back where the CRM offers that (HubSpot's GDPR delete); elsewhere its delete. A record
    /// that is not there any more is erased already: `Done`.
    async fn erase(&self, object: &str, crm_id: &str) -> Result<BatchResult, CrmError> {
        self.archive(object, &[crm_id.to_string()]).await
    }

    /// Where the CRM says a record id it no longer has went: the survivor, for a CRM that reads a
    /// merged-away id as its survivor (HubSpot); `None` where it cannot tell (a deleted record,
    /// or a CRM that answers a merged id as missing).
    async fn survivor(&self, object: &str, crm_id: &str) -> Result<MergeLookup, CrmError> {
        let _ = (object, crm_id);
        Ok(MergeLookup {
            survivor: None,
            rate: RateInfo::default(),
            call: "no CRM call: the CRM does not read merged ids".into(),
        })
    }

    /// Whether merges of `object` are read from the CRM ([`Crm::merges_since`]) because it keeps
    /// them to be read rather than announcing them (Salesforce).
    fn merges_are_read(&self, object: &str) -> bool {
        let _ = object;
        false
    }

    /// Merges of `object` the CRM recorded after `since_ms`, oldest first, where
    /// [`Crm::merges_are_read`]; `next` continues a page's read.
    async fn merges_since(
        &self,
        object: &str,
        since_ms: i64,
        next: Option<&str>,
    ) -> Result<MergePage, CrmError> {
        let _ = (object, since_ms, next);
        Ok(MergePage {
            merges: Vec::new(),
            next: None,
            rate: RateInfo::default(),
            call: "no CRM call: the CRM announces its merges".into(),
        })
    }

    /// Reads records by CRM id, with the named properties; a record that does not exist reads as
    /// `None`.
    async fn read(
        &self,
        object: &str,
        crm_ids: &[String],
        properties: &[String],
    ) -> Result<ReadResult, CrmError>;

    /// Finds the records of `object` holding each of `values` in `property` (the app's id
    /// property, or the email property of contacts), with `properties` read; a value may match
    /// none or several. At most [`Crm::max_find`] values a call. A CRM that cannot look records up
    /// this way refuses (`Rejected`).
    async fn find(
        &self,
        object: &str,
        property: &str,
        values: &[String],
        properties: &[String],
    ) -> Result<FindResult, CrmError> {
        let _ = (values, properties);
        Err(CrmError::Rejected {
            call: format!("find {object} by {property}"),
            status: 501,
            message: format!("{} cannot look {object} up by {property} yet", self.name()),
        })
    }

    /// The most values one [`Crm::find`] call takes.
    fn max_find(&self) -> usize {
        self.max_batch()
    }

    /// Links records of `from` to records of `to` with the default association.
    async fn associate(
        &self,
        from: &str,
        to: &str,
        pairs: &[AssociationInput],
    ) -> Result<BatchResult, CrmError>;

    /// Whether the CRM can hold links the way `via` says; the text says how it holds them
    /// instead. Checked for every link of the mapping at cold start.
    fn holds_links(&self, via: &crate::domain::mapping::LinkVia) -> Result<(), String> {
        Err(format!("{} holds no links of its own ({via:?})", self.name()))
    }

    /// Links each pair as `link.via` says, with its labels, taking off its `drop_labels`; a pair
    /// linked already keeps its link (the call is safe to repeat). A CRM that cannot hold links
    /// that way refuses (`Rejected`).
    async fn link(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        let _ = pairs;
        Err(unsupported_link(self.name(), link))
    }

    /// Removes each pair's link (every label with it); a pair not linked is done already.
    async fn unlink(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        let _ = pairs;
        Err(unsupported_link(self.name(), link))
    }

    /// How the CRM types each property of `object`, for comparing values by meaning; a property
    /// it does not report compares as text. Read once per run, not per record.
    async fn property_kinds(&self, object: &str) -> Result<PropertyKinds, CrmError> {
        let _ = object;
        Ok(PropertyKinds::default())
    }

    /// Brings a record's values as read into the form crm-sync wrote them in (see
    /// [`CrmEvents::align`]); `object` is the CRM object.
    fn align_read(
        &self,
        object: &str,
        values: &mut std::collections::BTreeMap<String, String>,
        written: &std::collections::BTreeMap<String, String>,
    ) {
        let _ = (object, values, written);
    }
}

/// What claiming a record for a sync attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordClaim {
    /// The caller holds the record's lease; the state is as it was before the claim.
    Claimed(RecordState),
    /// A newer change is applied already.
    Stale(RecordState),
    /// This very change is applied already.
    Duplicate,
    /// Another attempt holds a live lease on the record.
    Busy,
    /// The store cannot hold the change (the record's state would exceed its item limit); the
    /// state is unchanged and the text says why.
    Refused(String),
}

/// How a claimed attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The change is in the CRM (or, for a delete, the record is archived).
    Applied {
        crm_id: Option<String>,
        version_ms: i64,
        idempotency_id: String,
        /// The merged map of what crm-sync has written to the CRM.
        written: BTreeMap<String, String>,
        /// What crm-sync wrote lately, this write included (see `RecordState::recent_writes`).
        recent_writes: BTreeMap<String, Vec<String>>,
        status: SyncStatus,
        /// The record moved to `crm_id` from another CRM id (a write that followed the CRM's
        /// merge): the ids it was on, its old one included (`RecordState::previous_crm_ids`).
        previous_crm_ids: Option<Vec<String>>,
        /// The record's conflict marks, when the write resolved conflicts (it wrote the app's
        /// value of a conflicted property); none left open takes it off the open listing.
        conflicts: Option<crate::domain::inbound::ConflictMarks>,
    },
    /// The attempt failed; `status` is `Pending` when it will be retried, `Failed` when not;
    /// `retryable` when a later try may pass.
    Failed {
        error: String,
        status: SyncStatus,
        retryable: bool,
        /// What crm-sync may have written lately, the claimed writes folded in (which the
        /// settle clears, so that they never pile up on a record that keeps failing).
        recent_writes: BTreeMap<String, Vec<String>>,
    },
    /// The change is refused and kept nowhere (the record was erased for privacy): the pending
    /// change, the claimed writes and the email index the claim added are removed, the record stays
    /// deleted, `error` says why.
    Dropped { error: String },
    /// The record was erased for privacy (in the CRM, at the app's request): its ids, status
    /// (`deleted`), version and `erased_at` stay; every value, the last and pending change, the
    /// error, the email index and the fingerprints of values go.
    Erased { version_ms: i64, idempotency_id: String },
    /// Nothing was tried (throttled before the call): give the lease back, folding the claimed
    /// writes into `recent_writes` as `Failed` does.
    Released {
        recent_writes: BTreeMap<String, Vec<String>>,
    },
}

/// What leasing a record for inbound work found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Leased(Box<RecordState>),
    Busy,
}

/// What inbound work changes in a record's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundUpdate {
    /// The merged per-property times of the CRM changes acted on.
    pub inbound_at: BTreeMap<String, i64>,
    /// The merged values delivered to the app.
    pub received: BTreeMap<String, String>,
    /// The merged map of what crm-sync has written, when it re-asserted app values.
    pub written: Option<BTreeMap<String, String>>,
    pub new_conflicts: u32,
    /// The `sequence` of the last app-inbox message sent for the record.
    pub inbox_sequence: u64,
    /// The record's event fingerprints with those acted on now (see
    /// [`RecordState::recent_events`]).
    pub recent_events: Vec<String>,
    /// What an identity event (a merge, restore or privacy deletion) changes in the record.
    pub identity: Option<IdentityUpdate>,
    /// The record's conflict marks after this update.
    pub conflict_marks: crate::domain::inbound::ConflictMarks,
    /// A conflict opened now is still open: the record joins the open-conflicts listing.
    pub flag_conflicts: bool,
}

impl InboundUpdate {
    /// What leaves the record's inbound state as it is (and gives its lease back).
    pub fn unchanged(state: &RecordState) -> Self {
        Self {
            inbound_at: state.inbound_at.clone(),
            received: state.received.clone(),
            written: None,
            new_conflicts: 0,
            inbox_sequence: state.inbox_sequence,
            recent_events: state.recent_events.clone(),
            identity: None,
            conflict_marks: state.conflict_marks.clone(),
            flag_conflicts: false,
        }
    }

    /// A conflict on `property` (a CRM property, or a pseudo-property such as `(merge)`) that
    /// happened at `occurred_at_ms` (the CRM's clock), journaled at `noted_at_ms` (crm-sync's).
    /// Returns whether it is open: not when crm-sync wrote the app's value after the change
    /// happened (a late event of an edit the write overwrote already; within clock skew).
    pub fn conflict(&mut self, property: &str, occurred_at_ms: i64, noted_at_ms: i64) -> bool {
        self.new_conflicts += 1;
        let overwritten = self
            .conflict_marks
            .reasserted
            .get(property)
            .is_some_and(|written| *written > occurred_at_ms);
        if overwritten {
            return false;
        }
        self.conflict_marks.open(property, noted_at_ms);
        self.flag_conflicts = true;
        true
    }

    /// Adds an event acted on now, keeping the newest [`crate::domain::sync::RECENT_EVENTS`].
    pub fn acted_on(&mut self, event_key: &str) {
        let fingerprint = crate::domain::sync::event_fingerprint(event_key);
        if !self.recent_events.contains(&fingerprint) {
            self.recent_events.push(fingerprint);
        }
        let excess = self
            .recent_events
            .len()
            .saturating_sub(crate::domain::sync::RECENT_EVENTS);
        self.recent_events.drain(..excess);
    }
}

/// The per-record sync state's leases: one attempt at a time writes a record to the CRM or acts
/// on its CRM events, and records how that ended.
#[async_trait]
pub trait RecordLeases: Send + Sync {
    /// Leases the record to `token` for an attempt at `change`, unless the change is stale, a
    /// duplicate, or another live lease holds the record. MUST be atomic.
    /// `writes` are the CRM values the attempt is about to write: a claim MUST add their
    /// fingerprints to the record's `claimed_writes`, so that their echoes are known for crm-sync's
    /// own even if the attempt never settles.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        change: &Change,
        body: &str,
        writes: &BTreeMap<String, String>,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<RecordClaim, StoreUnavailable>;

    /// Records how the attempt ended and releases the lease; returns `true`. An applied
    /// settlement's `recent_writes` include the record's `claimed_writes`, which it clears. MUST NOT touch the
    /// record when the lease has passed to another token, and then returns `false`: another
    /// attempt decides the record, and this one's outcome is not recorded.
    async fn settle(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        settlement: &Settlement,
    ) -> Result<bool, StoreUnavailable>;

    /// Leases an existing record to `token` for inbound work, whatever its version. MUST be atomic
    /// with outbound claims: a record is leased to one attempt at a time.
    async fn lease(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<LeaseOutcome, StoreUnavailable>;

    /// Records what inbound work did and releases the lease; returns `false`, touching nothing,
    /// when the lease has passed to another token (see `settle`).
    async fn settle_inbound(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        update: &InboundUpdate,
    ) -> Result<bool, StoreUnavailable>;

    /// Records `record_id` as the one app record that took over the existing CRM record
    /// `crm_id`, unless another app record did so first. MUST be atomic: of concurrent callers
    /// for one CRM record, exactly one wins. Returns `None` when `record_id` holds it (now or
    /// already), or the app record id that holds it.
    async fn claim_crm_record(
        &self,
        object: ObjectKind,
        crm_id: &str,
        record_id: &str,
    ) -> Result<Option<String>, StoreUnavailable>;

    /// Records that the CRM merged the records `merged` into `survivor`, so that a write or an
    /// event naming a merged-away id finds the survivor. Idempotent.
    async fn record_merge(
        &self,
        object: ObjectKind,
        merged: &[String],
        survivor: &str,
        at_ms: i64,
    ) -> Result<(), StoreUnavailable>;
}

/// Each record's history: its timeline and its conflict journal.
#[async_trait]
pub trait RecordJournal: Send + Sync {
    /// Appends to the records' timelines.
    async fn append_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreUnavailable>;

    /// Appends to the records' conflict journals.
    async fn append_conflicts(&self, entries: &[ConflictEntry]) -> Result<(), StoreUnavailable>;

    /// A record's newest `limit` conflicts, newest first.
    async fn conflicts(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>, StoreUnavailable>;

    /// Marks the record's conflicts as seen: it leaves the open-conflicts listing until a new one.
    /// Returns `false`, changing nothing, while a sync holds the record (its lease is live).
    async fn dismiss_conflicts(&self, record: &RecordRef, now_ms: i64) -> Result<bool, StoreUnavailable>;

    /// Lets a record in an identity conflict write its CRM record, shared with the other app
    /// records on it (an operator's decision); its writes leave the CRM's id property alone.
    async fn share_crm_record(&self, record: &RecordRef, now_ms: i64) -> Result<(), StoreUnavailable>;

    /// Deletes the record's timeline and conflict journal, which hold values (a privacy
    /// deletion); the state item stays.
    async fn forget(&self, record: &RecordRef) -> Result<(), StoreUnavailable>;

    /// Adds a batch's outbound outcomes to the counts of the hour starting at `hour_ms`.
    async fn count_outcomes(&self, hour_ms: i64, synced: u64, failed: u64) -> Result<(), StoreUnavailable>;
}

/// Reading records' states: by record, by CRM id, by email, by status.
#[async_trait]
pub trait RecordQueries: Send + Sync {
    /// Current states of some records (missing records are absent from the map).
    async fn states(
        &self,
        records: &[RecordRef],
    ) -> Result<HashMap<RecordRef, RecordState>, StoreUnavailable>;

    /// A record's state and its newest `limit` timeline entries, newest first, in one query.
    async fn record(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Option<(RecordState, Vec<TimelineEntry>)>, StoreUnavailable>;

    /// The app records linked to a CRM id, at most `limit`: more than one after the CRM merged
    /// records of several app records into one.
    async fn holders(
        &self,
        object: ObjectKind,
        crm_id: &str,
        limit: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable>;

    /// The app record a CRM id belongs to: of several, one the app did not delete, that is not
    /// waiting on an identity conflict, and that was not moved there by a merge, in that order.
    async fn find_by_crm_id(
        &self,
        object: ObjectKind,
        crm_id: &str,
    ) -> Result<Option<RecordState>, StoreUnavailable> {
        let mut holders = self
            .holders(object, crm_id, crate::domain::identity::MAX_HOLDERS)
            .await?;
        holders.sort_by_key(|state| {
            (
                state.status == SyncStatus::Deleted,
                state.identity_conflict.is_some(),
                state.follow_crm_id,
                state.record.record_id.clone(),
            )
        });
        Ok(holders.into_iter().next())
    }

    /// The CRM ids the CRM merged straight into `survivor` (one merge back).
    async fn merged_from(&self, object: ObjectKind, survivor: &str) -> Result<Vec<String>, StoreUnavailable>;

    /// Where the CRM merged each of `crm_ids` to, one merge on: ids never merged are absent.
    async fn merged_into(
        &self,
        object: ObjectKind,
        crm_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreUnavailable>;

    /// Records the filter selects, most recently changed first; `cursor` continues a listing. A
    /// cursor MUST be opaque to callers; one that this store did not hand out is `BadCursor`.
    async fn list(
        &self,
        filter: RecordFilter,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<RecordState>, Option<String>), ListError> {
        self.list_of(filter, None, limit, cursor).await
    }

    /// [`RecordQueries::list`], of one object type when `object` names one. A page MAY hold
    /// fewer than `limit` records while a cursor continues the listing.
    async fn list_of(
        &self,
        filter: RecordFilter,
        object: Option<ObjectKind>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<RecordState>, Option<String>), ListError>;

    /// How many records the filter selects, reading at most `max_pages` index pages: a large set
    /// reads as an incomplete tally rather than as an unbounded scan.
    async fn count(&self, filter: RecordFilter, max_pages: usize) -> Result<Tally, StoreUnavailable>;

    /// Contacts whose email is `email` (compared lower-cased).
    async fn find_by_email(&self, email: &str, limit: usize) -> Result<Vec<RecordState>, StoreUnavailable>;

    /// Since when the longest-waiting change has waited (its record's `pending_since`), among
    /// the pending records least recently tried (a bounded read).
    async fn oldest_waiting_since(&self) -> Result<Option<i64>, StoreUnavailable>;

    /// The outbound outcomes counted per hour, of the hours from `from_hour_ms` on.
    async fn outcome_hours(
        &self,
        from_hour_ms: i64,
    ) -> Result<Vec<crate::domain::health::HourCount>, StoreUnavailable>;
}

/// The CRM day's budget, as the shared limiter holds it.
#[async_trait]
pub trait BudgetReader: Send + Sync {
    async fn today(&self, now_ms: i64) -> Result<crate::domain::health::DayBudget, StoreUnavailable>;
}

/// The three roles the per-record sync store plays (leases, timeline and conflict journal,
/// queries), for `use crate::ports::state::*`: calling a role's method needs its trait in scope.
/// Each use case holds only the roles it uses; a store adapter implements all three.
pub mod state {
    pub use super::{RecordJournal, RecordLeases, RecordQueries};
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("the listing cursor is not valid")]
    BadCursor,
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
}

/// The answer to a request for one CRM call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call at `at_ms` (now, or a moment later: wait until then).
    Granted { at_ms: i64 },
    /// No call before `until_ms`.
    Denied { until_ms: i64, policy: ThrottlePolicy },
}

/// The CRM call budget, shared by every concurrent instance.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Reserves the next call slot. MUST never grant more calls in any rolling window than the
    /// configured burst limit, nor dip into the daily reserve.
    async fn acquire(&self, now_ms: i64) -> Result<Permit, StoreUnavailable>;

    /// Like `acquire`, for low-priority work: a slot free now or the very next one, never
    /// further ahead, and never one a live call may take first.
    async fn acquire_idle(&self, now_ms: i64) -> Result<Permit, StoreUnavailable>;

    /// Takes in what the CRM said of its limits on a response.
    async fn observe(&self, rate: &RateInfo, now_ms: i64) -> Result<(), StoreUnavailable>;

    /// The CRM said no: hold every instance back for `wait`.
    async fn throttled(
        &self,
        policy: ThrottlePolicy,
        wait: Duration,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable>;
}

/// What became of one webhook event, recorded on its stored item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// CRM-owned changes went to the app.
    Applied,
    /// An app-owned field changed in the CRM; journaled, not applied.
    Conflict,
    /// crm-sync's own write coming back.
    Echo,
    /// Nothing for crm-sync to do (unmapped, stale, not an app record, ...).
    Ignored,
    /// Dead-lettered.
    Failed,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Conflict => "conflict",
            EventOutcome::Echo => "echo",
            EventOutcome::Ignored => "ignored",
            EventOutcome::Failed => "failed",
        }
    }
}

/// The stored webhook events, as the inbound processor sees them.
#[async_trait]
pub trait EventJournal: Send + Sync {
    /// Event keys (of `provider`) whose outcome is recorded already (a `failed` one is not: a
    /// redrive may process it after all).
    async fn processed(
        &self,
        provider: &str,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreUnavailable>;

    /// Records an event's outcome, with the event. MUST record it once, atomically: of any
    /// number of calls for the same event (a CRM's retry enqueues an event again, and two copies
    /// may be processed at once), one records it and returns `true`; the others change nothing
    /// and return `false`. A `failed` outcome is the exception: a later one replaces it.
    async fn record_outcome(
        &self,
        event: &InboundMessage,
        outcome: EventOutcome,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreUnavailable>;
}

/// A CRM's webhook events, read as changes.
pub trait CrmEvents: Send + Sync {
    fn interpret(&self, message: &InboundMessage) -> Interpretation;

    /// Brings an event's values of a record into the form crm-sync wrote them in, where the CRM
    /// stores several app fields as one (Pipedrive's `name`, split again at its first space):
    /// `written` is what crm-sync last wrote to the record.
    fn align(
        &self,
        object: crate::domain::contract::ObjectKind,
        values: &mut std::collections::BTreeMap<String, String>,
        written: &std::collections::BTreeMap<String, String>,
    ) {
        let _ = (object, values, written);
    }
}

/// A queue failure; the caller reports it and may try again.
#[derive(Debug, thiserror::Error)]
#[error("the queue is unavailable")]
pub struct QueueUnavailable(#[source] pub anyhow::Error);

/// The oldest of the dead letters looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub sent_at_ms: i64,
    /// Why it was dead-lettered, as recorded with it, if it was.
    pub reason: Option<String>,
    pub body: String,
}

/// A dead-letter queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// Messages waiting (approximate, as the queue reports it).
    pub waiting: u64,
    /// Messages someone is looking at or moving right now.
    pub in_flight: u64,
    pub oldest: Option<DeadLetter>,
    /// Messages waiting, visible, on the queue it redrives to (its consumer's backlog), when
    /// that could be read.
    pub source_waiting: Option<u64>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveOutcome {
    pub moved: u64,
    /// The journal keys of the moved letters crm-sync had journaled (their `crm_sync_letter`).
    pub letters: Vec<String>,
    /// Messages the source queue refused; they stay in the dead-letter queue.
    pub failed: u64,
    /// The redrive stopped at its limit with messages left: run it again.
    pub more: bool,
}

/// A dead-letter queue and the queue its messages came from.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// Depth and the oldest message of a sample. MUST NOT remove or hide any message.
    async fn summary(&self) -> Result<DeadLetterSummary, QueueUnavailable>;

    /// Moves up to `max_messages` back to the source queue, body and attributes unchanged. MUST
    /// delete a message only once the source queue holds it: an interrupted or repeated redrive
    /// may duplicate a message (consumers are idempotent), never lose one.
    async fn redrive(&self, max_messages: usize) -> Result<RedriveOutcome, QueueUnavailable>;
}

/// One message crm-sync dead-lettered, as its journal keeps it for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterEntry {
    /// The dead-letter queue's short name (`outbound`, `inbound`).
    pub lane: String,
    /// `{at, 13 digits}#{message id}`: unique in the lane, in time order. The dead letter carries
    /// it as its `crm_sync_letter` attribute, so that a redrive can mark it.
    pub key: String,
    pub at_ms: i64,
    pub reason: String,
    /// The app record the message is about, when its body names one.
    pub record: Option<RecordRef>,
    /// What else names it (`CRM contact 1001` for a webhook event), when there is no record.
    pub subject: Option<String>,
    /// The message body, clipped to [`LETTER_BODY_BYTES`].
    pub body: String,
    /// When a redrive moved it back to its queue, and who redrove it.
    pub redriven_at_ms: Option<i64>,
    pub redriven_by: Option<String>,
}

/// The part of a dead letter's body its journal keeps (and search reads).
pub const LETTER_BODY_BYTES: usize = 16 * 1024;

/// `text` cut to at most `max_bytes`, at a character boundary.
pub fn clip_bytes(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The journal of the messages crm-sync dead-lettered: every one listed, paged, searchable.
#[async_trait]
pub trait DeadLetterJournal: Send + Sync {
    async fn record_letters(&self, entries: &[LetterEntry]) -> Result<(), StoreUnavailable>;

    /// A lane's letters, newest first; with `query`, those whose reason or body contains it
    /// (reading at most a few pages to fill one). `cursor` continues a listing.
    async fn letters(
        &self,
        lane: &str,
        query: Option<&str>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<LetterEntry>, Option<String>), ListError>;

    /// The letters a redrive by `by` moved back to their queue; returns the records they name.
    async fn mark_redriven(
        &self,
        lane: &str,
        keys: &[String],
        at_ms: i64,
        by: &str,
    ) -> Result<Vec<RecordRef>, StoreUnavailable>;
}

/// A dashboard session as stored. It is found by a digest of its cookie, never by the cookie
/// itself, so that whoever reads the store cannot sign in with what they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The version of the password it was signed in with (not derived from the password), or
    /// the identity provider's issuer.
    pub password_version: String,
    /// Who signed in: the name every action of the session is recorded under on timelines.
    pub operator: String,
    /// Their stable id at the provider (`sub`), which the logs carry instead of the name.
    pub subject: String,
}

/// A sign-in through the identity provider, between sending the browser there and its return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// The ID token must carry it back.
    pub nonce: String,
    /// The PKCE verifier the code is redeemed with.
    pub verifier: String,
    /// A digest of the cookie that binds the sign-in to the browser that began it.
    pub browser: String,
    /// The redirect URI the provider was given; the code is redeemed with the same.
    pub redirect_uri: String,
    /// The dashboard page to return to.
    pub next: String,
    pub expires_at_ms: i64,
}

/// Sign-ins under way, shared by every instance of the dashboard.
#[async_trait]
pub trait PendingLogins: Send + Sync {
    async fn put(&self, key: &str, login: &PendingLogin) -> Result<(), StoreUnavailable>;

    /// Removes and returns the sign-in stored under `key`: of concurrent takes, one at most gets
    /// it, so that a redirect replayed does not sign in twice.
    async fn take(&self, key: &str) -> Result<Option<PendingLogin>, StoreUnavailable>;
}

/// The claims of a verified ID token that name an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorClaims {
    /// `sub`: stable at the provider.
    pub subject: String,
    /// `email`, only when the token says it is verified (`email_verified`).
    pub email: Option<String>,
    /// `cognito:username`: an id the provider assigns, which the user cannot choose.
    pub username: Option<String>,
    /// `cognito:groups`, or else `groups`.
    pub groups: Vec<String>,
}

/// Why the identity provider did not name an operator.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached, or answered out of protocol: try again later.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the code, or its ID token did not verify: this sign-in is over.
    #[error("the sign-in was refused: {0}")]
    Refused(String),
}

/// An OpenID Connect provider, through its authorization-code flow with PKCE.
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// Where to send the browser to sign in.
    async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, ProviderError>;

    /// Redeems an authorization code and verifies the ID token it brings: signature (the
    /// provider's JWKS), issuer, audience, expiry and `nonce`.
    async fn redeem(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<OperatorClaims, ProviderError>;

    /// Where to send the browser to end its session at the provider too, and come back to
    /// `return_to`; `None` when the provider offers no such address.
    async fn logout_url(&self, return_to: &str) -> Option<String>;
}

/// The dashboard's sessions, shared by every instance of the dashboard.
#[async_trait]
pub trait DashboardSessions: Send + Sync {
    /// Stores a session under `key`. MUST keep it until at least `session.expires_at_ms` unless it
    /// is ended, and MUST NOT replace a session stored under the same key (that is an error).
    async fn create(&self, key: &str, session: &StoredSession) -> Result<(), StoreUnavailable>;

    /// The session stored under `key`, if any. MUST see every `create` and `end` that returned
    /// before the call, on any instance (a strongly consistent read). MAY return a session past
    /// its expiry: the caller checks the expiry.
    async fn find(&self, key: &str) -> Result<Option<StoredSession>, StoreUnavailable>;

    /// Ends the session: once this returns, `find` MUST NOT find it, on any instance. Ending a
    /// session that is not stored succeeds.
    async fn end(&self, key: &str) -> Result<(), StoreUnavailable>;
}

/// Counts of sign-in attempts in fixed time windows, shared by every instance of the dashboard.
#[async_trait]
pub trait SignInCounters: Send + Sync {
    /// Counts one attempt on `counter` in the window numbered `window`, unless `limit` attempts
    /// are counted there already: then it counts nothing and returns `None`. Otherwise returns the
    /// count with this attempt. MUST be atomic across instances: of any number of concurrent
    /// calls, no more than `limit` attempts in all are ever counted in one window. MUST keep the
    /// count until at least `keep_until_ms`.
    async fn count(
        &self,
        counter: &str,
        window: i64,
        limit: u32,
        keep_until_ms: i64,
    ) -> Result<Option<u32>, StoreUnavailable>;

    /// Takes back one attempt that `count` counted (the sign-in turned out right). MUST NOT take
    /// a count below zero.
    async fn uncount(&self, counter: &str, window: i64) -> Result<(), StoreUnavailable>;
}

/// Where plans are kept for backfills that run inside AWS, by plan id.
#[async_trait]
pub trait PlanArchive: Send + Sync {
    /// Keeps the plan file of the plan directory `dir` under `plan_id`, replacing any earlier one.
    async fn put(&self, plan_id: &str, dir: &std::path::Path) -> anyhow::Result<()>;
    /// The kept plan's decisions, readable from the start as often as a backfill walks them;
    /// `None` when no plan is kept under `plan_id` (never put, or expired). MAY fetch once and
    /// reuse while the kept file is unchanged; MUST NOT read a partly fetched file.
    async fn fetch(&self, plan_id: &str) -> anyhow::Result<Option<Box<KeptPlan>>>;
}

/// A kept plan: each call reads its decisions from the first.
pub type KeptPlan = dyn Fn() -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<crate::domain::adoption::PlanItem>> + Send>>
    + Send
    + Sync;

/// Where backfills keep their progress.
#[async_trait]
pub trait AdoptionStore: Send + Sync {
    async fn backfill(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::BackfillProgress>, StoreUnavailable>;
    /// Saves a run's progress and holds the plan for that run (`progress.run_token`) until
    /// `held_until_ms`. MUST NOT save, and returns `false`, while another run holds the plan.
    async fn save_backfill(
        &self,
        progress: &crate::domain::adoption::BackfillProgress,
        now_ms: i64,
        held_until_ms: i64,
    ) -> Result<bool, StoreUnavailable>;
    /// The newest backfills, newest first.
    async fn backfills(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::BackfillProgress>, StoreUnavailable>;
    /// Keeps a plan's summary, for the dashboard; planning the same id again replaces it.
    async fn save_plan(&self, summary: &crate::domain::adoption::PlanSummary)
        -> Result<(), StoreUnavailable>;
    /// A plan's summary.
    async fn plan(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::PlanSummary>, StoreUnavailable>;
    /// The newest plans' summaries, newest first.
    async fn plans(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::PlanSummary>, StoreUnavailable>;
}

/// How many messages a queue holds (waiting or being handled), as the queue estimates it.
#[async_trait]
pub trait QueueDepth: Send + Sync {
    async fn depth(&self) -> Result<u64, QueueUnavailable>;
}

/// Where runs keep their checkpoint and reports, and how they walk the records.
#[async_trait]
pub trait ReconcileStore: Send + Sync {
    async fn checkpoint(&self) -> Result<Option<crate::domain::reconcile::Checkpoint>, StoreUnavailable>;
    /// Saves the checkpoint and the run's report.
    async fn save(&self, checkpoint: &crate::domain::reconcile::Checkpoint) -> Result<(), StoreUnavailable>;
    /// The newest reports, newest first.
    async fn reports(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::reconcile::RunReport>, StoreUnavailable>;
    /// One page of synced records (with a CRM id) of scan segment `segment` of `segments`.
    async fn synced_page(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<RecordState>, Option<String>), StoreUnavailable>;
    /// How far the merges of the CRM object `object` have been read and handed on.
    async fn merge_mark(&self, object: &str)
        -> Result<crate::domain::reconcile::MergeMark, StoreUnavailable>;
    /// Saves it. MUST NOT move `read_to_ms` backwards.
    async fn save_merge_mark(
        &self,
        object: &str,
        mark: &crate::domain::reconcile::MergeMark,
    ) -> Result<(), StoreUnavailable>;
    /// Records whose change failed retryably, or has been pending since before `stuck_before_ms`.
    async fn needing_requeue(
        &self,
        stuck_before_ms: i64,
        cap: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable>;
}

/// The refusal of a CRM that cannot hold a link the way the mapping says.
pub fn unsupported_link(crm: &str, link: &CrmLink) -> CrmError {
    CrmError::Rejected {
        call: format!("link {} to {}", link.from_object, link.to_object),
        status: 501,
        message: format!("{crm} cannot hold a link {:?}", link.via),
    }
}
