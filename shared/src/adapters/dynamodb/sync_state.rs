//! Sync state in DynamoDB. One partition per app record, `pk = REC#{object}#{record id}`:
//! - `sk = "~state"`: the record's state (sorts after every timeline entry, so one descending
//!   query returns the state, then the newest timeline entries);
//! - `sk = "T#{epoch ms, 13 digits}#{random}"`: timeline entries, expiring by TTL.
//!
//! Index `by_status` (`status`, `status_at`) lists records by status, most recently changed
//! first; index `by_crm_id` (`crm_key` = `{object}#{crm id}`) finds the app record of a CRM id;
//! index `by_email` (`email_key`, lower-cased) finds contacts by email; sparse index
//! `by_conflict` (`conflict_flag`, `conflict_at`) lists records with conflicts nobody dismissed.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, Select};
use aws_sdk_dynamodb::Client;
use base64::Engine as _;

use super::{condition_failed, n, number, s, text, unavailable, written_or_not};
use crate::domain::contract::{Change, ObjectKind, RecordRef};
use crate::domain::inbound::ConflictEntry;
use crate::domain::sync::{
    freshness, value_fingerprint, Freshness, RecordFilter, RecordState, SyncStatus, Tally, TimelineEntry,
    TimelineKind,
};
use crate::ports::state::*;
use crate::ports::{InboundUpdate, LeaseOutcome, ListError, RecordClaim, Settlement, StoreUnavailable};

const STATE_SK: &str = "~state";
/// `pk = CRMOWNER#{object}#{crm id}`: the app record that took over an existing CRM record.
const OWNER_SK: &str = "~owner";
const MERGED_SK: &str = "~merged";
pub const BY_STATUS: &str = "by_status";
pub const BY_CRM_ID: &str = "by_crm_id";
pub const BY_EMAIL: &str = "by_email";
pub const BY_CONFLICT: &str = "by_conflict";
const CONFLICT_OPEN: &str = "open";

use super::Item;

/// The per-record sync store's three roles ([`crate::ports::RecordLeases`],
/// [`crate::ports::RecordJournal`], [`crate::ports::RecordQueries`]) over a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbSyncState {
    client: Client,
    table: String,
    timeline_retention_ms: i64,
}

impl DynamoDbSyncState {
    pub fn new(client: Client, table: impl Into<String>, timeline_retention_ms: i64) -> Self {
        Self {
            client,
            table: table.into(),
            timeline_retention_ms,
        }
    }

    /// An update of a record's state item.
    fn update_state(
        &self,
        record: &RecordRef,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(record_pk(record)))
            .key("sk", s(STATE_SK))
    }

    /// An operator's mark on an existing record's state (`expression` may use `:now`); a record
    /// with no state is left alone.
    async fn mark_state(
        &self,
        record: &RecordRef,
        expression: &str,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        let result = self
            .update_state(record)
            .update_expression(expression)
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        written_or_not(result)?;
        Ok(())
    }

    /// The states of the records whose keys an index (projecting keys only) returned, in order.
    async fn states_of_keys(&self, keys: &[Item]) -> Result<Vec<RecordState>, StoreUnavailable> {
        let records: Vec<RecordRef> = keys.iter().filter_map(record_of).collect();
        let mut states = self.states(&records).await?;
        Ok(records
            .iter()
            .filter_map(|record| states.remove(record))
            .collect())
    }

    /// Writes items 25 a call, retrying what DynamoDB leaves unprocessed. Items are built a
    /// call's worth at a time: a 10,000-message batch would otherwise hold its whole timeline
    /// as DynamoDB items at once, the largest allocation of the batch.
    async fn put_all<T: Sync>(
        &self,
        entries: &[T],
        item: impl Fn(&T) -> Item + Sync,
    ) -> Result<(), StoreUnavailable> {
        for chunk in entries.chunks(25) {
            super::batch_put(&self.client, &self.table, chunk.iter().map(&item).collect()).await?;
        }
        Ok(())
    }
}

/// `pk = MERGED#{object}#{crm id}`: where the CRM merged a record to.
fn merged_pk(object: ObjectKind, crm_id: &str) -> String {
    format!("MERGED#{object}#{crm_id}")
}

/// The parts of a state update an identity event adds (see [`crate::ports::IdentityUpdate`]).
fn identity_update(
    mut request: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    record: &RecordRef,
    identity: &crate::ports::IdentityUpdate,
    now_ms: i64,
    set: &mut String,
    remove: &mut String,
) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
    if let Some(crm_id) = &identity.crm_id {
        set.push_str(
            ", crm_id = :crm_id, crm_key = :crm_key, follow_crm_id = :follow, previous_crm_ids = :previous",
        );
        request = request
            .expression_attribute_values(":crm_id", s(crm_id))
            .expression_attribute_values(":crm_key", s(format!("{}#{crm_id}", record.object)))
            .expression_attribute_values(":follow", AttributeValue::Bool(true))
            .expression_attribute_values(
                ":previous",
                AttributeValue::L(identity.previous_crm_ids.iter().map(s).collect()),
            );
    }
    if let Some(reason) = &identity.identity_conflict {
        set.push_str(", identity_conflict = :identity");
        request = request.expression_attribute_values(":identity", s(clip(reason)));
    }
    if let Some(at_ms) = identity.erased_at_ms {
        set.push_str(", erased_at = :erased");
        request = request.expression_attribute_values(":erased", n(at_ms));
        // What may hold the person's data; `received` and `inbound_at` are emptied by the caller.
        remove.push_str(
            ", written, recent_writes, claimed_writes, pending_change, last_change, last_error, \
             retryable, email_key, conflict_flag, conflict_at, conflict_props, reasserted, pending_since",
        );
    }
    if let Some(status) = identity.status {
        set.push_str(", #status = :status, status_at = :status_at");
        request = request
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":status_at", s(status_at(now_ms, record)));
    }
    request
}

pub fn record_pk(record: &RecordRef) -> String {
    format!("REC#{}#{}", record.object, record.record_id)
}

/// The time-ordered sort key of the listing indexes. The record id only keeps equal times
/// apart, so it is cut to fit DynamoDB's 1,024-byte sort key: a 256-character id can take
/// 1,024 bytes on its own.
fn status_at(now_ms: i64, record: &RecordRef) -> String {
    const MAX_ID_BYTES: usize = 960;
    let mut end = record.record_id.len().min(MAX_ID_BYTES);
    while !record.record_id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{now_ms:013}#{}#{}", record.object, &record.record_id[..end])
}

/// Remembered writes as stored: property → space-separated fingerprints.
fn recent_value(recent_writes: &BTreeMap<String, Vec<String>>) -> AttributeValue {
    AttributeValue::M(
        recent_writes
            .iter()
            .map(|(property, fingerprints)| (property.clone(), s(fingerprints.join(" "))))
            .collect(),
    )
}

/// A CRM's error text (which may quote a rejected value) cut to what a state or timeline item
/// can always hold; the dead letter keeps its own copy of the reason.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 2_000;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Whether a write failed because the item would exceed DynamoDB's 400 KB: retrying cannot help.
fn item_too_large<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    error.as_service_error().is_some_and(|e| {
        e.code() == Some("ValidationException")
            && e.message().is_some_and(|m| m.contains("maximum allowed size"))
    })
}

/// Reads a state item; `None` for an item that is not one. An object type the item names is
/// taken as declared: crm-sync wrote it under a mapping that declared it, and a function that
/// does not read the mapping (the dashboard) still shows the record.
pub fn state_from_item(item: &Item) -> Option<RecordState> {
    let object = ObjectKind::stored(&text(item, "object")?)?;
    let record = RecordRef {
        object,
        record_id: text(item, "record_id")?,
    };
    let written = string_map(item, "written");
    let inbound_at = number_map(item, "inbound_at");
    let received = string_map(item, "received");
    let recent_writes = string_map(item, "recent_writes")
        .into_iter()
        .map(|(property, fingerprints)| {
            (
                property,
                fingerprints.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect();
    let mut claimed_writes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in item
        .get("claimed_writes")
        .and_then(|value| value.as_l().ok())
        .into_iter()
        .flatten()
    {
        if let Some((fingerprint, property)) = entry.as_s().ok().and_then(|entry| entry.split_once(' ')) {
            claimed_writes
                .entry(property.to_string())
                .or_default()
                .push(fingerprint.to_string());
        }
    }
    Some(RecordState {
        record,
        crm_id: text(item, "crm_id"),
        status: text(item, "status")
            .and_then(|s| SyncStatus::parse(&s))
            .unwrap_or(SyncStatus::Pending),
        last_synced_at_ms: number(item, "last_synced_at"),
        last_attempt_at_ms: number(item, "last_attempt_at"),
        attempts: number(item, "attempts").unwrap_or(0).max(0) as u32,
        last_error: text(item, "last_error"),
        applied_version_ms: number(item, "applied_version"),
        applied_idempotency_id: text(item, "applied_idempotency_id"),
        written,
        recent_writes,
        claimed_writes,
        inbound_at,
        received,
        conflicts: number(item, "conflicts").unwrap_or(0).max(0) as u32,
        inbox_sequence: number(item, "inbox_sequence").unwrap_or(0).max(0) as u64,
        pending_change: text(item, "pending_change"),
        last_change: text(item, "last_change").filter(|body| !body.is_empty()),
        open_conflicts: item.contains_key("conflict_flag"),
        recent_events: item
            .get("recent_events")
            .and_then(|value| value.as_l().ok())
            .map(|list| list.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        retryable: item
            .get("retryable")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        follow_crm_id: item
            .get("follow_crm_id")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        identity_conflict: text(item, "identity_conflict"),
        erased_at_ms: number(item, "erased_at"),
        previous_crm_ids: item
            .get("previous_crm_ids")
            .and_then(|value| value.as_l().ok())
            .map(|list| list.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        conflict_marks: crate::domain::inbound::ConflictMarks {
            open: if item.contains_key("conflict_flag") && !item.contains_key("conflict_props") {
                // Flagged before conflicts had marks: open until dismissed, whatever is
                // written, since which property it was on is not known.
                let at = text(item, "conflict_at")
                    .and_then(|at| at.get(..13)?.parse().ok())
                    .unwrap_or(0);
                [(crate::domain::inbound::BEFORE_MARKS.to_string(), at)].into()
            } else {
                number_map(item, "conflict_props")
            },
            reasserted: number_map(item, "reasserted"),
        },
        conflicts_dismissed_at_ms: number(item, "conflicts_dismissed_at"),
        pending_since_ms: number(item, "pending_since"),
    })
}

/// A map of numbers (property → ms).
fn number_map(item: &Item, name: &str) -> BTreeMap<String, i64> {
    item.get(name)
        .and_then(|value| value.as_m().ok())
        .map(|map| {
            map.iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_n().ok()?.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn number_map_value(map: &BTreeMap<String, i64>) -> AttributeValue {
    AttributeValue::M(map.iter().map(|(name, at)| (name.clone(), n(at))).collect())
}

fn string_map(item: &Item, name: &str) -> BTreeMap<String, String> {
    item.get(name)
        .and_then(|value| value.as_m().ok())
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_s().ok()?.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn map_value(map: &BTreeMap<String, String>) -> AttributeValue {
    AttributeValue::M(map.iter().map(|(name, value)| (name.clone(), s(value))).collect())
}

/// The record a key belongs to (`pk = REC#{object}#{record id}`).
fn record_of(item: &Item) -> Option<RecordRef> {
    record_in(&text(item, "pk")?)
}

/// A timeline entry's item, `sk = T#{at, 13 digits}#{random}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct TimelineItem {
    pk: String,
    sk: String,
    kind: String,
    at: i64,
    #[serde(default)]
    detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call: Option<String>,
    /// TTL, in epoch seconds.
    #[serde(default)]
    expires_at: i64,
}

/// A conflict entry's item, `sk = C#{at, 13 digits}#{event and property}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConflictItem {
    pk: String,
    sk: String,
    at: i64,
    /// 0 in entries journaled before it was kept: `at` stands in.
    #[serde(default)]
    noted_at: i64,
    field: String,
    crm_property: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_value: Option<String>,
    #[serde(default)]
    crm_value: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    event_key: String,
    #[serde(default)]
    resolution: String,
}

/// Plain strings and numbers always make an item.
fn to_item(value: impl serde::Serialize) -> Item {
    serde_dynamo::to_item(value).expect("an item of strings and numbers")
}

fn record_in(pk: &str) -> Option<RecordRef> {
    let mut parts = pk.splitn(3, '#').skip(1);
    Some(RecordRef {
        object: ObjectKind::stored(parts.next()?)?,
        record_id: parts.next()?.to_string(),
    })
}

fn conflict_from_item(item: &Item) -> Option<ConflictEntry> {
    let item: ConflictItem = serde_dynamo::from_item(item.clone()).ok()?;
    Some(ConflictEntry {
        record: record_in(&item.pk)?,
        at_ms: item.at,
        field: item.field,
        crm_property: item.crm_property,
        app_value: item.app_value,
        crm_value: item.crm_value,
        source: item.source,
        event_key: item.event_key,
        resolution: item.resolution,
        noted_at_ms: if item.noted_at > 0 { item.noted_at } else { item.at },
    })
}

fn timeline_from_item(item: &Item) -> Option<TimelineEntry> {
    let item: TimelineItem = serde_dynamo::from_item(item.clone()).ok()?;
    Some(TimelineEntry {
        record: record_in(&item.pk)?,
        at_ms: item.at,
        kind: TimelineKind::parse(&item.kind)?,
        idempotency_id: item.idempotency_id,
        detail: item.detail,
        call: item.call,
    })
}

#[async_trait]
impl RecordLeases for DynamoDbSyncState {
    /// Long on purpose: the one conditional write that claims a record, and the reading of its
    /// answer, belong together.
    async fn claim(
        &self,
        change: &Change,
        body: &str,
        writes: &BTreeMap<String, String>,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<RecordClaim, StoreUnavailable> {
        let record = change.record();
        // The message first: it is what can overflow the item. DynamoDB applies an update whole
        // or not at all; moto applies it action by action, and stopping at the first leaves the
        // item as it was there too.
        let mut set = "SET pending_change = :body, #object = :object, record_id = :record_id, #status = :pending, \
                       status_at = :status_at, last_attempt_at = :now, lease_token = :token, lease_until = :until, \
                       updated_at = :now, pending_since = if_not_exists(pending_since, :now)"
            .to_string();
        let email = change.search_email();
        if email.is_some() {
            set.push_str(", email_key = :email");
        }
        let mut values: HashMap<String, AttributeValue> = HashMap::new();
        if let Some(email) = email {
            values.insert(":email".into(), s(email));
        }
        if !writes.is_empty() {
            // Each entry `{fingerprint} {property}`; folded into `recent_writes` when a change settles.
            set.push_str(
                ", claimed_writes = list_append(if_not_exists(claimed_writes, :no_writes), :writes)",
            );
            values.insert(":no_writes".into(), AttributeValue::L(Vec::new()));
            values.insert(
                ":writes".into(),
                AttributeValue::L(
                    writes
                        .iter()
                        .map(|(property, value)| s(format!("{} {property}", value_fingerprint(value))))
                        .collect(),
                ),
            );
        }
        let result = self
            .update_state(&record)
            .update_expression(set)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .condition_expression(
                "(attribute_not_exists(lease_until) OR lease_until < :now) AND \
                 (attribute_not_exists(applied_version) OR applied_version < :version OR \
                  (applied_version = :version AND applied_idempotency_id <> :idempotency))",
            )
            .expression_attribute_names("#object", "object")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":object", s(record.object.as_str()))
            .expression_attribute_values(":record_id", s(&record.record_id))
            .expression_attribute_values(":pending", s(SyncStatus::Pending.as_str()))
            .expression_attribute_values(":status_at", s(status_at(now_ms, &record)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":version", n(change.changed_at_ms))
            .expression_attribute_values(":idempotency", s(&change.idempotency_id))
            .expression_attribute_values(":body", s(body))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(RecordClaim::Claimed(
                output
                    .attributes()
                    .and_then(state_from_item)
                    .unwrap_or_else(|| RecordState::new(record)),
            )),
            Err(error) if item_too_large(&error) => Ok(RecordClaim::Refused(format!(
                "the record's sync state cannot take this {}-byte change: with what it holds \
                 already it would exceed DynamoDB's 400 KB item limit; shorten the record's largest fields",
                body.len()
            ))),
            Err(error) if condition_failed(&error) => {
                let old = match error.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(check)) => check.item().cloned(),
                    _ => None,
                };
                let Some(old) = old else {
                    return Ok(RecordClaim::Busy);
                };
                let state = state_from_item(&old).unwrap_or_else(|| RecordState::new(record));
                // A stale or repeated change is settled whatever lease is live.
                Ok(match freshness(change, &state) {
                    Freshness::Stale => RecordClaim::Stale(state),
                    Freshness::Duplicate => RecordClaim::Duplicate,
                    Freshness::Newer => RecordClaim::Busy,
                })
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn settle(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        settlement: &Settlement,
    ) -> Result<bool, StoreUnavailable> {
        let request = self
            .update_state(record)
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":token", s(token));
        let request = match settlement {
            Settlement::Applied {
                crm_id,
                version_ms,
                idempotency_id,
                written,
                recent_writes,
                status,
                previous_crm_ids,
                conflicts,
            } => {
                let mut request = request
                    .expression_attribute_values(":recent", recent_value(recent_writes))
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()))
                    .expression_attribute_values(":status_at", s(status_at(now_ms, record)))
                    .expression_attribute_values(":now", n(now_ms))
                    .expression_attribute_values(":zero", n(0))
                    .expression_attribute_values(":version", n(*version_ms))
                    .expression_attribute_values(":idempotency", s(idempotency_id))
                    .expression_attribute_values(":written", map_value(written))
                    .expression_attribute_values(":no_change", s(""));
                // The applied change is kept: a re-sync from the dashboard sends it again.
                let mut set = "#status = :status, status_at = :status_at, last_synced_at = :now, attempts = :zero, \
                               applied_version = :version, applied_idempotency_id = :idempotency, written = :written, \
                               recent_writes = :recent, updated_at = :now, last_change = if_not_exists(pending_change, :no_change)"
                    .to_string();
                if let Some(crm_id) = crm_id {
                    set.push_str(", crm_id = :crm_id, crm_key = :crm_key");
                    request = request
                        .expression_attribute_values(":crm_id", s(crm_id))
                        .expression_attribute_values(":crm_key", s(format!("{}#{crm_id}", record.object)));
                }
                if let Some(previous) = previous_crm_ids {
                    set.push_str(", previous_crm_ids = :previous, follow_crm_id = :follow");
                    request = request
                        .expression_attribute_values(":previous", AttributeValue::L(previous.iter().map(s).collect()))
                        .expression_attribute_values(":follow", AttributeValue::Bool(true));
                }
                let mut remove = "last_error, lease_token, lease_until, pending_change, retryable, claimed_writes, \
                                  identity_conflict, pending_since"
                    .to_string();
                if let Some(marks) = conflicts {
                    set.push_str(", conflict_props = :open_props, reasserted = :reasserted");
                    request = request
                        .expression_attribute_values(":open_props", number_map_value(&marks.open))
                        .expression_attribute_values(":reasserted", number_map_value(&marks.reasserted));
                    if marks.open.is_empty() {
                        // Every conflict resolved: off the open listing.
                        remove.push_str(", conflict_flag, conflict_at");
                    }
                }
                request.update_expression(format!("SET {set} REMOVE {remove}"))
            }
            Settlement::Failed {
                error,
                status,
                retryable,
                recent_writes,
            } => request
                // A change given up waits no more; one to be retried still does.
                .update_expression(if *status == SyncStatus::Pending {
                    "SET #status = :status, status_at = :status_at, last_error = :error, \
                     attempts = if_not_exists(attempts, :zero) + :one, updated_at = :now, retryable = :retryable, \
                     recent_writes = :recent \
                     REMOVE lease_token, lease_until, claimed_writes"
                } else {
                    "SET #status = :status, status_at = :status_at, last_error = :error, \
                     attempts = if_not_exists(attempts, :zero) + :one, updated_at = :now, retryable = :retryable, \
                     recent_writes = :recent \
                     REMOVE lease_token, lease_until, claimed_writes, pending_since"
                })
                .expression_attribute_values(":recent", recent_value(recent_writes))
                .expression_attribute_values(":retryable", AttributeValue::Bool(*retryable))
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status.as_str()))
                .expression_attribute_values(":status_at", s(status_at(now_ms, record)))
                .expression_attribute_values(":error", s(clip(error)))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(now_ms)),
            Settlement::Erased {
                version_ms,
                idempotency_id,
            } => request
                .update_expression(
                    "SET #status = :status, status_at = :status_at, erased_at = :now, last_synced_at = :now, \
                     applied_version = :version, applied_idempotency_id = :idempotency, updated_at = :now, \
                     attempts = :zero, inbound_at = :empty, received = :empty \
                     REMOVE lease_token, lease_until, written, recent_writes, claimed_writes, pending_change, \
                     last_change, last_error, retryable, email_key, conflict_flag, conflict_at, conflict_props, \
                     reasserted, pending_since",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(SyncStatus::Deleted.as_str()))
                .expression_attribute_values(":status_at", s(status_at(now_ms, record)))
                .expression_attribute_values(":version", n(*version_ms))
                .expression_attribute_values(":idempotency", s(idempotency_id))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":empty", AttributeValue::M(HashMap::new()))
                .expression_attribute_values(":now", n(now_ms)),
            Settlement::Dropped { error } => request
                .update_expression(
                    "SET #status = :status, status_at = :status_at, last_error = :error, updated_at = :now \
                     REMOVE lease_token, lease_until, claimed_writes, pending_change, email_key, pending_since",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(SyncStatus::Deleted.as_str()))
                .expression_attribute_values(":status_at", s(status_at(now_ms, record)))
                .expression_attribute_values(":error", s(clip(error)))
                .expression_attribute_values(":now", n(now_ms)),
            Settlement::Released { recent_writes } => request
                .update_expression("SET recent_writes = :recent REMOVE lease_token, lease_until, claimed_writes")
                .expression_attribute_values(":recent", recent_value(recent_writes)),
        };
        let recorded = written_or_not(request.send().await)?;
        if !recorded {
            tracing::warn!(record = %record, "lease lost before settling; the newer attempt decides");
        }
        Ok(recorded)
    }

    async fn lease(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<LeaseOutcome, StoreUnavailable> {
        let result = self
            .update_state(record)
            .update_expression("SET lease_token = :token, lease_until = :until")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            )
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(output
                .attributes()
                .and_then(state_from_item)
                .map(|state| LeaseOutcome::Leased(Box::new(state)))
                .unwrap_or(LeaseOutcome::Busy)),
            Err(error) if condition_failed(&error) => Ok(LeaseOutcome::Busy),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn settle_inbound(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        update: &InboundUpdate,
    ) -> Result<bool, StoreUnavailable> {
        let mut set = "inbound_at = :inbound_at, received = :received, updated_at = :now, \
                       conflicts = if_not_exists(conflicts, :zero) + :new_conflicts, inbox_sequence = :sequence, \
                       recent_events = :events"
            .to_string();
        let mut request = self
            .update_state(record)
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":inbound_at", number_map_value(&update.inbound_at))
            .expression_attribute_values(":received", map_value(&update.received))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":new_conflicts", n(update.new_conflicts))
            .expression_attribute_values(":sequence", n(update.inbox_sequence))
            .expression_attribute_values(
                ":events",
                AttributeValue::L(update.recent_events.iter().map(s).collect()),
            );
        // A privacy erasure removes the marks (they name properties the person's values were in).
        let erasing = update
            .identity
            .as_ref()
            .is_some_and(|identity| identity.erased_at_ms.is_some());
        if !erasing {
            set.push_str(", conflict_props = :open_props, reasserted = :reasserted");
            request = request
                .expression_attribute_values(":open_props", number_map_value(&update.conflict_marks.open))
                .expression_attribute_values(
                    ":reasserted",
                    number_map_value(&update.conflict_marks.reasserted),
                );
        }
        if update.flag_conflicts {
            set.push_str(", last_conflict_at = :now, conflict_flag = :open, conflict_at = :conflict_at");
            request = request
                .expression_attribute_values(":open", s(CONFLICT_OPEN))
                .expression_attribute_values(":conflict_at", s(status_at(now_ms, record)));
        }
        if let Some(written) = &update.written {
            set.push_str(", written = :written");
            request = request.expression_attribute_values(":written", map_value(written));
        }
        let mut remove = "lease_token, lease_until".to_string();
        if !update.flag_conflicts && !erasing && update.conflict_marks.open.is_empty() {
            // Every conflict resolved (a re-assertion that went through): off the open listing.
            remove.push_str(", conflict_flag, conflict_at");
        }
        if let Some(identity) = &update.identity {
            request = identity_update(request, record, identity, now_ms, &mut set, &mut remove);
        }
        let result = request
            .update_expression(format!("SET {set} REMOVE {remove}"))
            .send()
            .await;
        let recorded = written_or_not(result)?;
        if !recorded {
            tracing::warn!(record = %record, "lease lost before settling inbound work");
        }
        Ok(recorded)
    }

    async fn record_merge(
        &self,
        object: ObjectKind,
        merged: &[String],
        survivor: &str,
        at_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        // A merge recorded before for one of these ids (HubSpot's read named a chain's end, the
        // event now names the next record) leaves no entry under the old survivor.
        let known = self.merged_into(object, merged).await?;
        let stale: Vec<Item> = known
            .iter()
            .filter(|(_, into)| into.as_str() != survivor)
            .map(|(crm_id, into)| {
                HashMap::from([
                    ("pk".to_string(), s(format!("MERGEDINTO#{object}#{into}"))),
                    ("sk".to_string(), s(crm_id)),
                ])
            })
            .collect();
        for chunk in stale.chunks(25) {
            super::batch_delete(&self.client, &self.table, chunk.to_vec()).await?;
        }
        // Each merge both ways: from the merged-away id, and under the survivor.
        let items: Vec<(String, String)> = merged
            .iter()
            .flat_map(|crm_id| {
                [
                    (merged_pk(object, crm_id), MERGED_SK.to_string()),
                    (format!("MERGEDINTO#{object}#{survivor}"), crm_id.clone()),
                ]
            })
            .collect();
        self.put_all(&items, |(pk, sk): &(String, String)| {
            HashMap::from([
                ("pk".to_string(), s(pk)),
                ("sk".to_string(), s(sk)),
                ("into".to_string(), s(survivor)),
                ("at".to_string(), n(at_ms)),
            ])
        })
        .await
    }

    async fn claim_crm_record(
        &self,
        object: ObjectKind,
        crm_id: &str,
        record_id: &str,
    ) -> Result<Option<String>, StoreUnavailable> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("CRMOWNER#{object}#{crm_id}")))
            .item("sk", s(OWNER_SK))
            .item("owner", s(record_id))
            .condition_expression("attribute_not_exists(pk) OR #owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(record_id))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(error) if condition_failed(&error) => Ok(match error.as_service_error() {
                Some(
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                        check,
                    ),
                ) => Some(
                    check
                        .item()
                        .and_then(|item| text(item, "owner"))
                        .unwrap_or_default(),
                ),
                _ => Some(String::new()),
            }),
            Err(error) => Err(unavailable(error)),
        }
    }
}

#[async_trait]
impl RecordJournal for DynamoDbSyncState {
    async fn append_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreUnavailable> {
        self.put_all(entries, |entry: &TimelineEntry| {
            to_item(TimelineItem {
                pk: record_pk(&entry.record),
                sk: format!("T#{:013}#{:08x}", entry.at_ms, fastrand::u32(..)),
                kind: entry.kind.as_str().to_string(),
                at: entry.at_ms,
                detail: clip(&entry.detail),
                idempotency_id: entry.idempotency_id.clone(),
                call: entry.call.clone(),
                expires_at: (entry.at_ms + self.timeline_retention_ms) / 1000,
            })
        })
        .await
    }

    async fn append_conflicts(&self, entries: &[ConflictEntry]) -> Result<(), StoreUnavailable> {
        self.put_all(entries, |entry: &ConflictEntry| {
            // Named by the event and the property, so that an event acted on again (its outcome
            // not recorded before a crash) journals the same entry, not a second one.
            let named = crate::domain::webhook::sha256_hex(
                format!("{}\n{}", entry.event_key, entry.crm_property).as_bytes(),
            );
            to_item(ConflictItem {
                pk: record_pk(&entry.record),
                sk: format!("C#{:013}#{}", entry.at_ms, &named[..16]),
                at: entry.at_ms,
                field: entry.field.clone(),
                crm_property: entry.crm_property.clone(),
                app_value: entry.app_value.clone(),
                crm_value: entry.crm_value.clone(),
                source: entry.source.clone(),
                event_key: entry.event_key.clone(),
                resolution: entry.resolution.clone(),
                noted_at: entry.noted_at_ms,
            })
        })
        .await
    }

    async fn conflicts(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :conflict)")
            .expression_attribute_values(":pk", s(record_pk(record)))
            .expression_attribute_values(":conflict", s("C#"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.items().iter().filter_map(conflict_from_item).collect())
    }

    async fn dismiss_conflicts(&self, record: &RecordRef, now_ms: i64) -> Result<bool, StoreUnavailable> {
        // Not while a sync holds the record: its settle would write the marks it read back.
        let result = self
            .update_state(record)
            .update_expression(
                "SET conflicts_dismissed_at = :now REMOVE conflict_flag, conflict_at, conflict_props, lease_token",
            )
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            )
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        written_or_not(result)
    }

    async fn share_crm_record(&self, record: &RecordRef, now_ms: i64) -> Result<(), StoreUnavailable> {
        self.mark_state(record, "SET updated_at = :now REMOVE identity_conflict", now_ms)
            .await
    }

    async fn forget(&self, record: &RecordRef) -> Result<(), StoreUnavailable> {
        // Timeline, conflicts, and the record's dead letters (by their pointers) hold values.
        for prefix in ["T#", "C#", super::dead_letter_journal::POINTER_PREFIX] {
            let found = self
                .query_all(
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                        .expression_attribute_values(":pk", s(record_pk(record)))
                        .expression_attribute_values(":prefix", s(prefix))
                        .projection_expression("pk, sk")
                        // A line written a moment before must be seen, and forgotten, too.
                        .consistent_read(true),
                )
                .await?;
            let letters: Vec<Item> = found
                .iter()
                .filter_map(|pointer| super::dead_letter_journal::letter_of_pointer(&text(pointer, "sk")?))
                .collect();
            // The letters before their pointers: a failure in between is found again by a retry.
            for chunk in letters.chunks(25).chain(found.chunks(25)) {
                super::batch_delete(&self.client, &self.table, chunk.to_vec()).await?;
            }
        }
        Ok(())
    }

    async fn count_outcomes(&self, hour_ms: i64, synced: u64, failed: u64) -> Result<(), StoreUnavailable> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(OUTCOMES_PK))
            .key("sk", s(format!("{hour_ms:013}")))
            .update_expression("ADD synced :synced, failed :failed SET expires_at = :expires")
            .expression_attribute_values(":synced", n(synced))
            .expression_attribute_values(":failed", n(failed))
            .expression_attribute_values(":expires", n((hour_ms + OUTCOME_RETENTION_MS) / 1000))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Pages (of 100) of pending records the health page reads for the longest wait.
const WAITING_PAGES: usize = 3;

/// Outbound outcomes per hour: one item an hour (`sk` = the hour's start, 13 digits).
const OUTCOMES_PK: &str = "STATS#outcomes";
/// Kept a day longer than the health page's week.
const OUTCOME_RETENTION_MS: i64 = 8 * 24 * 60 * 60 * 1000;

#[async_trait]
impl RecordQueries for DynamoDbSyncState {
    async fn states(
        &self,
        records: &[RecordRef],
    ) -> Result<HashMap<RecordRef, RecordState>, StoreUnavailable> {
        let mut keys: Vec<Item> = records
            .iter()
            .map(|record| {
                HashMap::from([
                    ("pk".to_string(), s(record_pk(record))),
                    ("sk".to_string(), s(STATE_SK)),
                ])
            })
            .collect();
        keys.sort_by(|a, b| a["pk"].as_s().ok().cmp(&b["pk"].as_s().ok()));
        keys.dedup();
        let found = super::batch_get(&self.client, &self.table, keys, None)
            .await?
            .iter()
            .filter_map(state_from_item)
            .map(|state| (state.record.clone(), state))
            .collect();
        Ok(found)
    }

    async fn holders(
        &self,
        object: ObjectKind,
        crm_id: &str,
        limit: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_CRM_ID)
            .key_condition_expression("crm_key = :key")
            .expression_attribute_values(":key", s(format!("{object}#{crm_id}")))
            // Read past index entries the states moved on from, which the filter below drops.
            .limit(i32::try_from(limit.saturating_mul(2)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        // The index is eventually consistent: a state read since moved on is no holder.
        let found = self.states_of_keys(output.items()).await?;
        Ok(found
            .into_iter()
            .filter(|state| state.crm_id.as_deref() == Some(crm_id))
            .take(limit)
            .collect())
    }

    async fn merged_from(&self, object: ObjectKind, survivor: &str) -> Result<Vec<String>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("MERGEDINTO#{object}#{survivor}")))
            .limit(i32::try_from(crate::domain::identity::MAX_MERGED_IDS * 4).unwrap_or(64))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| text(item, "sk"))
            .collect())
    }

    async fn merged_into(
        &self,
        object: ObjectKind,
        crm_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreUnavailable> {
        let mut keys: Vec<Item> = crm_ids
            .iter()
            .map(|crm_id| {
                HashMap::from([
                    ("pk".to_string(), s(merged_pk(object, crm_id))),
                    ("sk".to_string(), s(MERGED_SK)),
                ])
            })
            .collect();
        keys.sort_by(|a, b| a["pk"].as_s().ok().cmp(&b["pk"].as_s().ok()));
        keys.dedup();
        let prefix = merged_pk(object, "");
        Ok(super::batch_get(&self.client, &self.table, keys, None)
            .await?
            .iter()
            .filter_map(|item| {
                let from = text(item, "pk")?.strip_prefix(&prefix)?.to_string();
                Some((from, text(item, "into")?))
            })
            .collect())
    }

    async fn record(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Option<(RecordState, Vec<TimelineEntry>)>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(record_pk(record)))
            .scan_index_forward(false)
            // A record's page follows a re-sync: it must see the state it reloads for.
            .consistent_read(true)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        let items = output.items();
        let Some(state) = items
            .first()
            .filter(|item| text(item, "sk").as_deref() == Some(STATE_SK))
            .and_then(state_from_item)
        else {
            return Ok(None);
        };
        let timeline = items.iter().skip(1).filter_map(timeline_from_item).collect();
        Ok(Some((state, timeline)))
    }

    /// One type's records are the index's, filtered by `object`: DynamoDB filters after it
    /// reads a page, so a few pages are read to fill one (at most [`TYPE_PAGES`]).
    async fn list_of(
        &self,
        filter: RecordFilter,
        object: Option<ObjectKind>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<RecordState>, Option<String>), ListError> {
        let mut start = match cursor.as_deref() {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor, filter).ok_or(ListError::BadCursor)?),
        };
        let mut states: Vec<RecordState> = Vec::new();
        for _ in 0..TYPE_PAGES {
            let mut query = listing_query(self.client.query().table_name(&self.table), filter)
                .scan_index_forward(false)
                .limit(i32::try_from(limit - states.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if let Some(object) = object {
                query = query
                    .filter_expression("#object = :object")
                    .expression_attribute_names("#object", "object")
                    .expression_attribute_values(":object", s(object.as_str()));
            }
            let output = query
                .send()
                .await
                .map_err(|error| ListError::Unavailable(unavailable(error)))?;
            states.extend(output.items().iter().filter_map(state_from_item));
            start = output.last_evaluated_key().cloned();
            if start.is_none() || states.len() >= limit {
                break;
            }
        }
        Ok((states, start.as_ref().map(encode_cursor)))
    }

    async fn count(&self, filter: RecordFilter, max_pages: usize) -> Result<Tally, StoreUnavailable> {
        let mut count = 0u64;
        let mut start = None;
        for _ in 0..max_pages.max(1) {
            let output = listing_query(self.client.query().table_name(&self.table), filter)
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            count += u64::try_from(output.count()).unwrap_or(0);
            match output.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => {
                    return Ok(Tally {
                        count,
                        complete: true,
                    })
                }
            }
        }
        Ok(Tally {
            count,
            complete: false,
        })
    }

    async fn find_by_email(&self, email: &str, limit: usize) -> Result<Vec<RecordState>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_EMAIL)
            .key_condition_expression("email_key = :email")
            .expression_attribute_values(":email", s(email.trim().to_lowercase()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        self.states_of_keys(output.items()).await
    }

    async fn oldest_waiting_since(&self) -> Result<Option<i64>, StoreUnavailable> {
        self.waiting_since().await
    }

    async fn outcome_hours(
        &self,
        from_hour_ms: i64,
    ) -> Result<Vec<crate::domain::health::HourCount>, StoreUnavailable> {
        self.hours_from(from_hour_ms).await
    }
}

/// How many index pages one listing of a single type reads at most to fill its page.
const TYPE_PAGES: usize = 5;

/// `oldest` and `outcome_hours` (their own `impl` block: the trait's is long already).
impl DynamoDbSyncState {
    /// The index orders pending records by their last try, and a retry moves a record on: the
    /// least recently tried pages are read (each item's wait start only), and the earliest
    /// `pending_since` among them taken.
    async fn waiting_since(&self) -> Result<Option<i64>, StoreUnavailable> {
        let mut earliest: Option<i64> = None;
        let mut start: Option<Item> = None;
        for _ in 0..WAITING_PAGES {
            let output = listing_query(
                self.client.query().table_name(&self.table),
                RecordFilter::Status(SyncStatus::Pending),
            )
            .scan_index_forward(true)
            .projection_expression("pending_since, last_attempt_at")
            .limit(100)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(unavailable)?;
            for item in output.items() {
                if let Some(since) = number(item, "pending_since").or_else(|| number(item, "last_attempt_at"))
                {
                    earliest = Some(earliest.map_or(since, |known| known.min(since)));
                }
            }
            start = output.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(earliest)
    }

    async fn hours_from(
        &self,
        from_hour_ms: i64,
    ) -> Result<Vec<crate::domain::health::HourCount>, StoreUnavailable> {
        let items = self
            .query_all(
                self.client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND sk >= :from")
                    .expression_attribute_values(":pk", s(OUTCOMES_PK))
                    .expression_attribute_values(":from", s(format!("{:013}", from_hour_ms.max(0)))),
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let count = |name: &str| number(item, name).unwrap_or(0).max(0) as u64;
                Some(crate::domain::health::HourCount {
                    hour_ms: text(item, "sk")?.parse().ok()?,
                    synced: count("synced"),
                    failed: count("failed"),
                })
            })
            .collect())
    }

    /// Every item a query finds, page after page.
    async fn query_all(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<Item>, StoreUnavailable> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let output = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(output.items().iter().cloned());
            start = output.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}

/// The index query behind a listing.
fn listing_query(
    query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    filter: RecordFilter,
) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
    match filter {
        RecordFilter::Status(status) => query
            .index_name(BY_STATUS)
            .key_condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str())),
        RecordFilter::OpenConflicts => query
            .index_name(BY_CONFLICT)
            .key_condition_expression("conflict_flag = :open")
            .expression_attribute_values(":open", s(CONFLICT_OPEN)),
    }
}

/// Listing cursors are the last key, as URL-safe base64 JSON of its string attributes.
fn encode_cursor(key: &Item) -> String {
    let map: BTreeMap<&String, &String> = key
        .iter()
        .filter_map(|(name, value)| Some((name, value.as_s().ok()?)))
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&map).unwrap_or_default())
}

/// Reads a cursor back, accepting only a key of the filter's own index: a cursor edited by hand
/// is refused here rather than by DynamoDB.
fn decode_cursor(cursor: &str, filter: RecordFilter) -> Option<Item> {
    let map = decode_map(cursor)?;
    let (partition, sort, value) = match filter {
        RecordFilter::Status(status) => ("status", "status_at", status.as_str()),
        RecordFilter::OpenConflicts => ("conflict_flag", "conflict_at", CONFLICT_OPEN),
    };
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let mut expected = vec!["pk", "sk", partition, sort];
    expected.sort_unstable();
    if names != expected || map.get(partition).map(String::as_str) != Some(value) || map["sk"] != STATE_SK {
        return None;
    }
    Some(into_key(map))
}

fn decode_map(cursor: &str) -> Option<BTreeMap<String, String>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn into_key(map: BTreeMap<String, String>) -> Item {
    map.into_iter()
        .map(|(name, value)| (name, AttributeValue::S(value)))
        .collect()
}

/// Reads back a cursor this store made for itself (the reconciliation's checkpoint).
fn decode_key(cursor: &str) -> Option<Item> {
    decode_map(cursor).map(into_key)
}

const ADOPTION_PK: &str = "ADOPTION";

impl DynamoDbSyncState {
    /// One of the table's control items (the reconciliation's, adoption's), read consistently.
    async fn control_item(&self, pk: &str, sk: impl Into<String>) -> Result<Option<Item>, StoreUnavailable> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.item)
    }
}

#[async_trait]
impl crate::ports::AdoptionStore for DynamoDbSyncState {
    async fn backfill(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::BackfillProgress>, StoreUnavailable> {
        let item = self
            .control_item(ADOPTION_PK, format!("backfill#{plan_id}"))
            .await?;
        // Progress that does not read is an error, never "not started": a fresh run would redo it all.
        item.and_then(|item| text(&item, "json"))
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreUnavailable(e.into())))
            .transpose()
    }

    async fn save_backfill(
        &self,
        progress: &crate::domain::adoption::BackfillProgress,
        now_ms: i64,
        held_until_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        let json = serde_json::to_string(progress).map_err(|e| StoreUnavailable(e.into()))?;
        let saved = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(ADOPTION_PK))
            .key("sk", s(format!("backfill#{}", progress.plan_id)))
            .update_expression("SET json = :json, run_token = :token, run_until = :until")
            .condition_expression("attribute_not_exists(run_until) OR run_until < :now OR run_token = :token")
            .expression_attribute_values(":json", s(json))
            .expression_attribute_values(":token", s(&progress.run_token))
            .expression_attribute_values(":until", n(held_until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        written_or_not(saved)
    }

    async fn backfills(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::BackfillProgress>, StoreUnavailable> {
        let mut all: Vec<crate::domain::adoption::BackfillProgress> =
            self.adoption_items("backfill#", limit).await?;
        all.sort_by_key(|progress| std::cmp::Reverse(progress.started_at_ms));
        all.truncate(limit);
        Ok(all)
    }

    async fn save_plan(
        &self,
        summary: &crate::domain::adoption::PlanSummary,
    ) -> Result<(), StoreUnavailable> {
        let json = serde_json::to_string(summary).map_err(|e| StoreUnavailable(e.into()))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(ADOPTION_PK))
            .item("sk", s(format!("plan#{}", summary.plan_id)))
            .item("json", s(json))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn plan(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::PlanSummary>, StoreUnavailable> {
        let item = self.control_item(ADOPTION_PK, format!("plan#{plan_id}")).await?;
        item.and_then(|item| text(&item, "json"))
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreUnavailable(e.into())))
            .transpose()
    }

    async fn plans(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::PlanSummary>, StoreUnavailable> {
        let mut all: Vec<crate::domain::adoption::PlanSummary> = self.adoption_items("plan#", limit).await?;
        all.sort_by(|a, b| b.planned_at.cmp(&a.planned_at));
        all.truncate(limit);
        Ok(all)
    }
}

impl DynamoDbSyncState {
    /// The newest `limit` adoption items under `prefix` (plans or backfills): plan ids begin
    /// with the time they were made, so the sort key's order is theirs, and the newest are read
    /// first, one page. Items that do not read (written by another version) are left out.
    async fn adoption_items<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(ADOPTION_PK))
            .expression_attribute_values(":prefix", s(prefix))
            .scan_index_forward(false)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| text(item, "json"))
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }
}

const RECONCILE_PK: &str = "RECONCILE";

#[async_trait]
impl crate::reconcile::ReconcileStore for DynamoDbSyncState {
    async fn checkpoint(&self) -> Result<Option<crate::reconcile::Checkpoint>, StoreUnavailable> {
        let item = self.control_item(RECONCILE_PK, "checkpoint").await?;
        Ok(item
            .and_then(|item| text(&item, "json"))
            .and_then(|json| serde_json::from_str(&json).ok()))
    }

    async fn save(&self, checkpoint: &crate::reconcile::Checkpoint) -> Result<(), StoreUnavailable> {
        let json = serde_json::to_string(checkpoint).map_err(|e| StoreUnavailable(e.into()))?;
        let report = serde_json::to_string(&checkpoint.report).map_err(|e| StoreUnavailable(e.into()))?;
        for (sk, body) in [
            ("checkpoint".to_string(), json),
            (format!("report#{:013}", checkpoint.report.started_at_ms), report),
        ] {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(RECONCILE_PK))
                .item("sk", s(sk))
                .item("json", s(body))
                .send()
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn merge_mark(
        &self,
        object: &str,
    ) -> Result<crate::domain::reconcile::MergeMark, StoreUnavailable> {
        let item = self
            .control_item(RECONCILE_PK, format!("merges#{object}"))
            .await?;
        let number = |name: &str| {
            item.as_ref()
                .and_then(|item| item.get(name))
                .and_then(|value| value.as_n().ok())
                .and_then(|ms| ms.parse().ok())
        };
        Ok(crate::domain::reconcile::MergeMark {
            read_to_ms: number("read_to"),
            resume_from_ms: number("resume_from"),
        })
    }

    async fn save_merge_mark(
        &self,
        object: &str,
        mark: &crate::domain::reconcile::MergeMark,
    ) -> Result<(), StoreUnavailable> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(RECONCILE_PK))
            .item("sk", s(format!("merges#{object}")));
        // Never backwards: a late save (a retried invocation) must not undo a later read's mark.
        put = match mark.read_to_ms {
            Some(read_to) => put
                .item("read_to", n(read_to))
                .condition_expression("attribute_not_exists(read_to) OR read_to <= :at")
                .expression_attribute_values(":at", n(read_to)),
            None => put.condition_expression("attribute_not_exists(read_to)"),
        };
        if let Some(resume) = mark.resume_from_ms {
            put = put.item("resume_from", n(resume));
        }
        written_or_not(put.send().await).map(|_| ())
    }

    async fn reports(&self, limit: usize) -> Result<Vec<crate::reconcile::RunReport>, StoreUnavailable> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :report)")
            .expression_attribute_values(":pk", s(RECONCILE_PK))
            .expression_attribute_values(":report", s("report#"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| serde_json::from_str(&text(item, "json")?).ok())
            .collect())
    }

    async fn synced_page(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<RecordState>, Option<String>), StoreUnavailable> {
        let output = self
            .client
            .scan()
            .table_name(&self.table)
            .segment(i32::try_from(segment).unwrap_or(0))
            .total_segments(i32::try_from(segments.max(1)).unwrap_or(1))
            .filter_expression("sk = :state AND #status = :synced AND attribute_exists(crm_id)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":state", s(STATE_SK))
            .expression_attribute_values(":synced", s(SyncStatus::Synced.as_str()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(cursor.as_deref().and_then(decode_key))
            .send()
            .await
            .map_err(unavailable)?;
        let states = output.items().iter().filter_map(state_from_item).collect();
        Ok((states, output.last_evaluated_key().map(encode_cursor)))
    }

    async fn needing_requeue(
        &self,
        stuck_before_ms: i64,
        cap: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable> {
        let mut found = Vec::new();
        for (status, before) in [
            (SyncStatus::Failed, None),
            (SyncStatus::Pending, Some(stuck_before_ms)),
        ] {
            let mut start = None;
            loop {
                let mut query = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(BY_STATUS)
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()))
                    .set_exclusive_start_key(start);
                query = match before {
                    Some(before) => query
                        .key_condition_expression("#status = :status AND status_at < :before")
                        .expression_attribute_values(":before", s(format!("{before:013}"))),
                    None => query.key_condition_expression("#status = :status"),
                };
                let output = query.send().await.map_err(unavailable)?;
                for state in output.items().iter().filter_map(state_from_item) {
                    let wanted = state.pending_change.is_some()
                        && (state.status == SyncStatus::Pending || state.retryable);
                    if wanted {
                        found.push(state);
                    }
                }
                start = output.last_evaluated_key().cloned();
                if start.is_none() || found.len() >= cap {
                    break;
                }
            }
        }
        found.truncate(cap);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_entry_reads_back_from_its_item_as_written() {
        let entry = TimelineEntry {
            record: RecordRef {
                object: ObjectKind::Contact,
                record_id: "a#b/c".into(),
            },
            at_ms: 1_764_000_000_123,
            kind: TimelineKind::Synced,
            idempotency_id: None,
            detail: "created".into(),
            call: Some("POST /crm/objects/2026-03/contacts/batch/upsert -> 200".into()),
        };
        let item = to_item(TimelineItem {
            pk: record_pk(&entry.record),
            sk: "T#1".into(),
            kind: entry.kind.as_str().into(),
            at: entry.at_ms,
            detail: entry.detail.clone(),
            idempotency_id: None,
            call: entry.call.clone(),
            expires_at: 1,
        });
        assert!(
            matches!(item.get("at"), Some(AttributeValue::N(_))),
            "a number, for the TTL and sorting"
        );
        assert!(
            !item.contains_key("idempotency_id"),
            "an absent value is no attribute"
        );
        assert_eq!(timeline_from_item(&item), Some(entry));
    }

    #[test]
    fn a_conflict_item_without_the_optional_attributes_still_reads() {
        let item: Item = HashMap::from([
            ("pk".to_string(), s("REC#deal#9")),
            ("sk".to_string(), s("C#1")),
            ("at".to_string(), n(5)),
            ("field".to_string(), s("stage")),
            ("crm_property".to_string(), s("dealstage")),
        ]);
        let entry = conflict_from_item(&item).expect("an entry");
        assert_eq!((entry.record.record_id.as_str(), entry.at_ms), ("9", 5));
        assert_eq!((entry.app_value, entry.crm_value), (None, String::new()));
    }

    #[test]
    fn error_text_is_clipped_at_two_thousand_characters() {
        assert_eq!(super::clip(&"é".repeat(2_000)), "é".repeat(2_000));
        assert_eq!(super::clip(&"é".repeat(2_001)), format!("{}…", "é".repeat(2_000)));
    }
}
