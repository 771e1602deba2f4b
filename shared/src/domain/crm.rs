//! What crm-sync asks of a CRM and what it gets back, independent of any one CRM's wire format.

use std::collections::BTreeMap;
use std::time::Duration;

/// Create-or-update of one record by its unique key property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertInput {
    /// Value of the id property (the app's record id).
    pub key: String,
    pub properties: BTreeMap<String, String>,
    /// The CRM id crm-sync recorded for this record, if any: a CRM that cannot find a record by
    /// the app's id (Pipedrive notes) updates this one.
    pub crm_id: Option<String>,
    /// The CRM id of the contact a deal or activity belongs to, when it is known before the
    /// write: a CRM that must create such a record attached (Pipedrive notes) uses it.
    pub parent_crm_id: Option<String>,
    /// An earlier attempt of this change may have created the record without crm-sync learning
    /// its id (a lost answer, a crash): a CRM whose lookup by the app's id lags behind its writes
    /// (Pipedrive's search) looks harder before creating.
    pub may_exist: bool,
    /// What crm-sync last wrote to this record, by CRM property: a CRM that writes several app
    /// fields as one (Pipedrive's `name`, of a first and a last name) completes a change to one
    /// of them from it.
    pub written_before: BTreeMap<String, String>,
}

impl UpsertInput {
    /// An input known by the app's id only.
    pub fn new(key: impl Into<String>, properties: BTreeMap<String, String>) -> Self {
        Self {
            key: key.into(),
            properties,
            crm_id: None,
            parent_crm_id: None,
            may_exist: false,
            written_before: BTreeMap::new(),
        }
    }
}

/// Update of one record by CRM id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateInput {
    pub crm_id: String,
    pub properties: BTreeMap<String, String>,
    /// What crm-sync last wrote to the record (see [`UpsertInput::written_before`]).
    pub written_before: BTreeMap<String, String>,
}

impl UpdateInput {
    pub fn new(crm_id: impl Into<String>, properties: BTreeMap<String, String>) -> Self {
        Self {
            crm_id: crm_id.into(),
            properties,
            written_before: BTreeMap::new(),
        }
    }
}

/// A link from one CRM record to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociationInput {
    pub from_id: String,
    pub to_id: String,
}

/// An association the mapping declares, in the CRM's terms: the two CRM objects and how the
/// CRM holds the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmLink {
    pub from_object: String,
    pub to_object: String,
    pub via: crate::domain::mapping::LinkVia,
}

/// One pair to link or unlink: the two CRM records, the labels the pair is to carry, and the
/// labels crm-sync put on it before that are to come off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInput {
    pub from_id: String,
    pub to_id: String,
    pub labels: Vec<String>,
    pub drop_labels: Vec<String>,
}

impl AssociationInput {
    /// This pair linked as asked.
    pub fn done(&self) -> InputOutcome {
        InputOutcome::Done {
            crm_id: self.from_id.clone(),
            created: false,
        }
    }
}

impl LinkInput {
    /// This pair linked (or unlinked) as asked.
    pub fn done(&self) -> InputOutcome {
        InputOutcome::Done {
            crm_id: self.from_id.clone(),
            created: false,
        }
    }
}

impl BatchResult {
    /// A result whose inputs were each decided, in input order.
    pub fn decided(outcomes: Vec<Option<InputOutcome>>, rate: RateInfo, call: String) -> Self {
        BatchResult {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.expect("every input is decided"))
                .collect(),
            rate,
            call,
        }
    }
}

/// How one input of a batch call fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputOutcome {
    Done { crm_id: String, created: bool },
    Failed(InputError),
}

/// The id of the existing record a CRM's conflict message names (`... Existing ID: 123`, as
/// HubSpot words it), if it names one.
pub fn existing_id(message: &str) -> Option<String> {
    let id: String = message
        .split("Existing ID: ")
        .nth(1)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Why one input failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub kind: FailureKind,
    /// The CRM's own error code (`INVALID_EMAIL`, `CONFLICT`, ...).
    pub code: String,
    /// The CRM's own message.
    pub message: String,
    /// For a conflict with an existing record: its CRM id.
    pub existing_id: Option<String>,
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Will fail the same way until someone fixes the data or the configuration.
    Permanent,
    /// Another record already holds a unique value (e.g. a contact's email).
    Conflict,
    /// May succeed later.
    Transient,
}

/// The CRM's rate-limit state, as its response headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateInfo {
    pub burst_max: Option<u32>,
    pub burst_remaining: Option<u32>,
    pub burst_interval_ms: Option<u64>,
    pub daily_max: Option<u64>,
    pub daily_remaining: Option<u64>,
}

/// The result of a batch call, input by input and in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub outcomes: Vec<InputOutcome>,
    pub rate: RateInfo,
    /// `METHOD path -> status`, for the record's timeline.
    pub call: String,
}

/// Records read by CRM id, in input order (`None`: no such record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<Option<BTreeMap<String, String>>>,
    pub rate: RateInfo,
    pub call: String,
}

/// Records found by a property's values, in input order: every record holding each value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindResult {
    pub matches: Vec<Vec<crate::domain::adoption::Found>>,
    pub rate: RateInfo,
    pub call: String,
}

/// Where a CRM says one of its record ids went: the record a read of that id returns, when it is
/// another (HubSpot reads a merged-away id as the merge's survivor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeLookup {
    pub survivor: Option<String>,
    pub rate: RateInfo,
    pub call: String,
}

/// A merge a CRM reports only when asked: Salesforce keeps each record a merge deleted, with
/// its `MasterRecordId`, and fires no message for it. The reconciliation reads them and hands
/// each to the identity step as an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeSeen {
    /// The record the merge deleted.
    pub merged: String,
    /// The record it was merged into (itself possibly merged away since).
    pub survivor: String,
    /// When the CRM recorded the deletion.
    pub at_ms: i64,
    /// The CRM user who merged, when the CRM says.
    #[serde(default)]
    pub by: Option<String>,
}

/// One page of merges read from a CRM, oldest first; `next` reads the following page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePage {
    pub merges: Vec<MergeSeen>,
    pub next: Option<String>,
    pub rate: RateInfo,
    pub call: String,
}

/// How a CRM types a property, as far as comparing values goes: what crm-sync wrote and what the
/// CRM reads back may differ in form (epoch ms written, ISO text read; `1200` and `1200.0`)
/// while meaning the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    #[default]
    Text,
    Number,
    Bool,
    /// A calendar day.
    Date,
    /// An instant.
    DateTime,
}

/// A CRM object's property kinds, by property name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyKinds {
    pub kinds: BTreeMap<String, ValueKind>,
    pub rate: RateInfo,
}

/// Which limit a throttle came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottlePolicy {
    /// The short rolling window (HubSpot: TEN_SECONDLY_ROLLING).
    Burst,
    /// The daily budget.
    Daily,
}

/// A whole call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    #[error("throttled by the CRM ({policy:?}): {message}")]
    Throttled {
        policy: ThrottlePolicy,
        retry_after: Option<Duration>,
        message: String,
        rate: RateInfo,
    },
    #[error("the CRM failed transiently ({call}): {message}")]
    Transient { call: String, message: String },
    #[error("the CRM refused the call ({call}): {message}")]
    Rejected {
        call: String,
        status: u16,
        message: String,
    },
}

impl CrmError {
    pub fn is_throttle(&self) -> bool {
        matches!(self, CrmError::Throttled { .. })
    }
}
