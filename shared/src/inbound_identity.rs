//! Identity events in the inbound use case: a merge re-points the app records of the merged-away
//! CRM ids to the survivor, a restore re-links, a privacy deletion erases. Each is rare, so each
//! is carried out on its own: its records leased together, the app told, then each record settled.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{InboundService, Tally};
use crate::domain::contract::RecordRef;
use crate::domain::identity::{
    merged_message, plan_merge, record_message, Holder, IdentityChange, IdentityKind, IdentityUpdate,
    MergePlan, ERASED_MARK, MAX_HOLDERS,
};
use crate::domain::inbound::{ConflictEntry, InboundMessage};
use crate::domain::sync::{RecordState, SyncStatus, TimelineEntry, TimelineKind};
use crate::ports::{EventOutcome, InboundUpdate, LeaseOutcome, OutgoingMessage};
use crate::worker::Disposition;

/// An identity event waiting in a batch.
pub(super) struct IdentityWork {
    pub message_id: String,
    pub attempts: u32,
    pub message: InboundMessage,
    pub change: IdentityChange,
}

/// What carrying out the batch's identity events left to record.
#[derive(Default)]
pub(super) struct IdentityEffects {
    pub timeline: Vec<TimelineEntry>,
}

/// How one identity event ended, before its outcome is recorded.
enum Ended {
    Done(EventOutcome, String),
    /// Not now: the event is delivered again (`None`: at once, `Some`: after a delay), no
    /// attempt counted.
    Again(Option<Duration>),
    /// No app record yet: the event comes back once more after a while, an attempt counted.
    Wait(String),
}

/// How many times an identity event that finds no app record comes back before it is ignored:
/// the CRM's events arrive in any order, and the event of the merge that brings a record onto
/// this CRM id may come after this one.
const WAITS_FOR_A_RECORD: u32 = 3;

impl InboundService {
    /// Carries out the batch's identity events, oldest first.
    pub(super) async fn apply_identities(
        &self,
        mut work: Vec<IdentityWork>,
        batch: &mut Tally,
        deadline: tokio::time::Instant,
    ) -> IdentityEffects {
        work.sort_by(|a, b| {
            (a.change.occurred_at_ms, &a.message.event_key)
                .cmp(&(b.change.occurred_at_ms, &b.message.event_key))
        });
        let mut effects = IdentityEffects::default();
        for item in work {
            let ended = self
                .apply_identity(&item, batch.now_ms, deadline, &mut batch.report, &mut effects)
                .await;
            let disposition = match ended {
                Ended::Done(outcome, detail) => {
                    match outcome {
                        EventOutcome::Applied => batch.report.applied += 1,
                        _ => batch.report.skipped += 1,
                    }
                    batch.outcomes.push((item.message.clone(), outcome, detail));
                    Disposition::Done
                }
                Ended::Wait(reason) => self.retry(item.attempts, &reason),
                Ended::Again(None) => Disposition::Redeliver,
                Ended::Again(Some(delay)) => Disposition::Retry {
                    delay,
                    attempts: item.attempts,
                },
            };
            batch.dispositions.insert(item.message_id.clone(), disposition);
        }
        effects
    }

    /// Long on purpose: one identity event from its merge record to its settled records, the
    /// ways it can wait (busy records, no record yet) in the order they are met.
    async fn apply_identity(
        &self,
        item: &IdentityWork,
        now_ms: i64,
        deadline: tokio::time::Instant,
        report: &mut crate::worker::BatchReport,
        effects: &mut IdentityEffects,
    ) -> Ended {
        let change = &item.change;
        // First, so that a write naming a merged-away id follows it even if no app record moves
        // now (the merge may reach crm-sync before the record's first write settles); and an
        // erased id is recorded as merged into nothing, so that a record a late merge brings
        // there is erased too, and no write follows it back into the CRM.
        let recorded = match &change.kind {
            IdentityKind::Merged { merged, .. } => Some((merged.clone(), change.crm_id.clone())),
            IdentityKind::Erased => Some((vec![change.crm_id.clone()], ERASED_MARK.to_string())),
            IdentityKind::Restored => None,
        };
        if let Some((from, into)) = recorded {
            if let Err(error) = self
                .leases
                .record_merge(change.object, &from, &into, change.occurred_at_ms)
                .await
            {
                tracing::error!(error = ?anyhow::Error::from(error), "could not record a merge");
                return Ended::Again(None);
            }
        }
        // A merge concerns the ids it names, and any other id recorded as merged into its
        // survivor (a write that asked the CRM where a gone id went, before this event came).
        let (ids, merged_ids): (Vec<String>, Vec<String>) = match &change.kind {
            IdentityKind::Merged { merged, .. } => {
                let mut merged = merged.clone();
                match self.queries.merged_from(change.object, &change.crm_id).await {
                    Ok(more) => merged.extend(more),
                    Err(error) => {
                        tracing::error!(error = ?anyhow::Error::from(error), "could not read the merges into a record");
                        return Ended::Again(None);
                    }
                }
                merged.sort();
                merged.dedup();
                let ids = merged.iter().chain([&change.crm_id]).cloned().collect();
                (ids, merged)
            }
            _ => (vec![change.crm_id.clone()], Vec::new()),
        };
        // Where the survivor went since (a later merge whose event came first): the records
        // move straight there.
        let destination = crate::merges::survivors(
            self.queries.as_ref(),
            change.object,
            std::slice::from_ref(&change.crm_id),
        )
        .await
        .remove(&change.crm_id)
        .unwrap_or_else(|| change.crm_id.clone());
        let mut holders = Vec::new();
        // The ids each record was on before (a write that followed this merge moved it already).
        let mut previous: HashMap<RecordRef, Vec<String>> = HashMap::new();
        for crm_id in &ids {
            match self.queries.holders(change.object, crm_id, MAX_HOLDERS).await {
                // A record the app deleted neither moves nor owns; an erasure takes it too.
                Ok(found) => holders.extend(
                    found
                        .into_iter()
                        .filter(|state| {
                            change.kind == IdentityKind::Erased || state.status != SyncStatus::Deleted
                        })
                        .map(|state| {
                            previous.insert(state.record.clone(), state.previous_crm_ids.clone());
                            Holder {
                                held: state.identity_conflict.is_some(),
                                record: state.record,
                                crm_id: crm_id.clone(),
                            }
                        }),
                ),
                Err(error) => {
                    tracing::error!(error = ?anyhow::Error::from(error), "could not find the app records of a CRM id");
                    return Ended::Again(None);
                }
            }
        }
        let plan = match &change.kind {
            IdentityKind::Merged { primary, .. } => {
                plan_merge(&change.crm_id, primary.as_deref(), &merged_ids, &holders)
            }
            _ => MergePlan {
                owners: holders.iter().map(|h| h.record.clone()).collect(),
                moved: Vec::new(),
            },
        };
        let mut plan = plan;
        // A record on the survivor that was on one of the merged ids moved by a write that
        // followed this merge: it moved all the same, and the app hears so.
        for owner in plan.owners.clone() {
            let from = previous
                .get(&owner)
                .and_then(|ids| ids.iter().find(|id| merged_ids.contains(id)));
            if let Some(from) = from {
                if !plan.moved.iter().any(|(r, _)| *r == owner) {
                    plan.moved.push((owner.clone(), from.clone()));
                }
            }
        }
        if destination != change.crm_id {
            // A later merge's event came first: the records on its survivor own what this merge
            // moves there, and those it moved on from this merge's ids are this merge's too.
            match self
                .queries
                .holders(change.object, &destination, MAX_HOLDERS)
                .await
            {
                Ok(found) => {
                    let empty = plan.records().is_empty();
                    for state in found.into_iter().filter(|s| s.status != SyncStatus::Deleted) {
                        let from = state.previous_crm_ids.iter().find(|id| merged_ids.contains(id));
                        if let (true, Some(from)) = (empty, from) {
                            plan.moved.push((state.record.clone(), from.clone()));
                        }
                        if state.identity_conflict.is_none() && !plan.owners.contains(&state.record) {
                            plan.owners.push(state.record.clone());
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(error = ?anyhow::Error::from(error), "could not find the app records of a CRM id");
                    return Ended::Again(None);
                }
            }
        }
        if plan.records().is_empty() && change.kind == IdentityKind::Restored {
            // A restored record whose app record is on an id merged into it (its merge's event
            // not come yet): found by the app's id the CRM record carries.
            let key = (change.object, change.crm_id.clone());
            let (mut found, mut throttled, mut waiting) = (HashMap::new(), HashMap::new(), HashMap::new());
            self.resolve_by_app_id(
                std::slice::from_ref(&key),
                &mut found,
                deadline,
                report,
                &mut throttled,
                &mut waiting,
            )
            .await;
            plan.owners.extend(found.remove(&key));
        }
        let records = plan.records();
        if records.is_empty() && item.attempts < WAITS_FOR_A_RECORD {
            return Ended::Wait(format!(
                "no app record on {} CRM id {} yet",
                change.object,
                ids.join(" or ")
            ));
        }
        if records.is_empty() {
            return Ended::Done(
                EventOutcome::Ignored,
                format!("no app record has {} CRM id {}", change.object, ids.join(" or ")),
            );
        }
        let token = uuid::Uuid::new_v4().to_string();
        let Some(states) = self.lease_all(&records, &token, now_ms).await else {
            return Ended::Again(Some(self.settings.busy_delay));
        };
        if change.kind == IdentityKind::Erased && states.iter().all(|state| state.erased_at_ms.is_some()) {
            // The app's own erasure coming back: nothing left to forget, nothing to tell.
            self.release_all(&states, &token, now_ms).await;
            return Ended::Done(EventOutcome::Echo, "the record is erased already".into());
        }
        if states.iter().all(|state| state.acted_on(&item.message.event_key)) {
            self.release_all(&states, &token, now_ms).await;
            return Ended::Done(
                EventOutcome::Ignored,
                "a copy of an event already acted on for this record".into(),
            );
        }
        // A merge into a record the CRM erased since: the records it brings there are erased too.
        let erased_since;
        let item = if destination == ERASED_MARK && matches!(change.kind, IdentityKind::Merged { .. }) {
            erased_since = IdentityWork {
                message_id: item.message_id.clone(),
                attempts: item.attempts,
                message: item.message.clone(),
                change: IdentityChange {
                    kind: IdentityKind::Erased,
                    ..change.clone()
                },
            };
            &erased_since
        } else {
            item
        };
        let messages = self.identity_messages(item, &plan, &states);
        if !self.app_inbox.send(&messages).await.is_empty() {
            self.release_all(&states, &token, now_ms).await;
            return Ended::Again(None);
        }
        let detail = self
            .settle_identity(item, &plan, &destination, &states, &token, now_ms, effects)
            .await;
        match detail {
            Some(detail) => Ended::Done(EventOutcome::Applied, detail),
            None => Ended::Again(None),
        }
    }

    /// Leases every record, or none: a record leased elsewhere makes the event wait.
    pub(super) async fn lease_all(
        &self,
        records: &[RecordRef],
        token: &str,
        now_ms: i64,
    ) -> Option<Vec<RecordState>> {
        let until = now_ms + i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut states = Vec::new();
        for record in records {
            match self.leases.lease(record, token, now_ms, until).await {
                Ok(LeaseOutcome::Leased(state)) => states.push(*state),
                Ok(LeaseOutcome::Busy) | Err(_) => {
                    self.release_all(&states, token, now_ms).await;
                    return None;
                }
            }
        }
        Some(states)
    }

    pub(super) async fn release_all(&self, states: &[RecordState], token: &str, now_ms: i64) {
        for state in states {
            if let Err(error) = self
                .leases
                .settle_inbound(&state.record, token, now_ms, &InboundUpdate::unchanged(state))
                .await
            {
                tracing::warn!(record = %state.record, error = ?anyhow::Error::from(error), "could not release a lease; it runs out");
            }
        }
    }

    /// The app-inbox messages an identity event makes: one for a merge, one per record otherwise.
    fn identity_messages(
        &self,
        item: &IdentityWork,
        plan: &MergePlan,
        states: &[RecordState],
    ) -> Vec<OutgoingMessage> {
        let change = &item.change;
        let message = &item.message;
        match &change.kind {
            IdentityKind::Merged { merged, .. } => vec![OutgoingMessage::new(
                item.message_id.clone(),
                merged_message(
                    change.object,
                    &message.provider,
                    &change.crm_id,
                    merged,
                    plan,
                    change.occurred_at_ms,
                    &change.source,
                    &message.event_key,
                ),
            )],
            kind => states
                .iter()
                .enumerate()
                .map(|(index, state)| {
                    OutgoingMessage::new(
                        format!("{}-{index}", item.message_id),
                        record_message(
                            kind,
                            &state.record,
                            state.inbox_sequence + 1,
                            &message.provider,
                            &change.crm_id,
                            change.occurred_at_ms,
                            &change.source,
                            &message.event_key,
                        ),
                    )
                })
                .collect(),
        }
    }

    /// Each record's update under its lease, with its timeline entry (and, for two app records
    /// on one CRM record, a conflict each). Returns the event's outcome detail, `None` when a
    /// record could not be settled (the event is acted on again; what settled stays settled).
    #[allow(clippy::too_many_arguments)]
    async fn settle_identity(
        &self,
        item: &IdentityWork,
        plan: &MergePlan,
        destination: &str,
        states: &[RecordState],
        token: &str,
        now_ms: i64,
        effects: &mut IdentityEffects,
    ) -> Option<String> {
        let change = &item.change;
        let conflict = plan.is_identity_conflict();
        let mut all_settled = true;
        for state in states {
            let record = &state.record;
            if state.acted_on(&item.message.event_key) {
                // Settled by an earlier delivery of this event: nothing more to record.
                self.release_all(std::slice::from_ref(state), token, now_ms).await;
                continue;
            }
            let moved_from = plan
                .moved
                .iter()
                .find(|(r, _)| r == record)
                .map(|(_, from)| from.clone());
            let mut update = InboundUpdate::unchanged(state);
            update.acted_on(&item.message.event_key);
            let mut identity = IdentityUpdate::default();
            let detail = match (&change.kind, &moved_from) {
                (IdentityKind::Merged { .. }, Some(from)) => {
                    identity.crm_id = Some(destination.to_string());
                    identity.previous_crm_ids = state.moved_to(destination);
                    identity.identity_conflict = plan.conflict_reason(record, &change.crm_id);
                    format!(
                        "merged in the CRM ({}): CRM record {from} into CRM record {}, which this record \
                         follows from now on{}{}",
                        change.source,
                        change.crm_id,
                        if destination == change.crm_id {
                            String::new()
                        } else {
                            format!(" (merged on into CRM record {destination} since)")
                        },
                        identity
                            .identity_conflict
                            .as_ref()
                            .map(|reason| format!("; {reason}"))
                            .unwrap_or_default()
                    )
                }
                (IdentityKind::Merged { merged, .. }, None) => {
                    if state.crm_id.as_deref() != Some(destination) {
                        identity.crm_id = Some(destination.to_string());
                        identity.previous_crm_ids = state.moved_to(destination);
                    }
                    format!(
                        "merged in the CRM ({}): CRM record{} {} merged into this record's CRM record {}{}",
                        change.source,
                        if merged.len() == 1 { "" } else { "s" },
                        merged.join(", "),
                        change.crm_id,
                        if conflict {
                            let others: Vec<String> = plan
                                .records()
                                .into_iter()
                                .filter(|r| r != record)
                                .map(|r| r.record_id)
                                .collect();
                            format!(
                                "; app record {} now points here too (an identity conflict)",
                                others.join(", ")
                            )
                        } else {
                            String::new()
                        }
                    )
                }
                (IdentityKind::Restored, _) => {
                    update.inbox_sequence += 1;
                    format!(
                        "restored in the CRM ({}): CRM record {} is back and still this record's",
                        change.source, change.crm_id
                    )
                }
                (IdentityKind::Erased, _) => {
                    update.inbox_sequence += 1;
                    update.inbound_at = BTreeMap::new();
                    update.received = BTreeMap::new();
                    identity.erased_at_ms = Some(change.occurred_at_ms);
                    identity.status = Some(SyncStatus::Deleted);
                    if let Err(error) = self.history.forget(record).await {
                        tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not forget an erased record's history");
                        all_settled = false;
                        self.release_all(std::slice::from_ref(state), token, now_ms).await;
                        continue;
                    }
                    format!(
                        "erased in the CRM by a privacy deletion ({}): crm-sync forgot the record's values \
                         and history and refuses its changes",
                        change.source
                    )
                }
            };
            if conflict && matches!(change.kind, IdentityKind::Merged { .. }) {
                update.conflict("(merge)", change.occurred_at_ms, now_ms);
                let entry = ConflictEntry {
                    record: record.clone(),
                    at_ms: change.occurred_at_ms,
                    field: "(identity)".into(),
                    crm_property: "(merge)".into(),
                    app_value: Some(record.record_id.clone()),
                    crm_value: format!(
                        "CRM record {} is app records {}",
                        change.crm_id,
                        plan.records()
                            .iter()
                            .map(|r| r.record_id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    source: change.source.clone(),
                    event_key: item.message.event_key.clone(),
                    resolution: "the moved records' writes wait for the app or an operator".into(),
                    noted_at_ms: now_ms,
                };
                if let Err(error) = self.history.append_conflicts(&[entry]).await {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not journal an identity conflict");
                    all_settled = false;
                    self.release_all(std::slice::from_ref(state), token, now_ms).await;
                    continue;
                }
            }
            update.identity = Some(identity);
            match self.leases.settle_inbound(record, token, now_ms, &update).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(record = %record, "lease lost before settling an identity event");
                    all_settled = false;
                    continue;
                }
                Err(error) => {
                    tracing::error!(record = %record, error = ?anyhow::Error::from(error), "could not settle an identity event");
                    all_settled = false;
                    continue;
                }
            }
            effects.timeline.push(TimelineEntry {
                record: record.clone(),
                at_ms: change.occurred_at_ms,
                kind: TimelineKind::Identity,
                idempotency_id: Some(item.message.event_key.clone()),
                detail,
                call: None,
            });
        }
        all_settled.then(|| {
            let names: Vec<&str> = states.iter().map(|s| s.record.record_id.as_str()).collect();
            format!(
                "{}: app record{} {}",
                change.kind.as_str(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            )
        })
    }
}
