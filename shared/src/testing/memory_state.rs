//! The sync state contract kept in memory: for the use cases' fast tests, and for the benchmark
//! of the handler against the CRM ceiling (moto serializes DynamoDB writes in Python, a few
//! hundred a second here, so with moto the state store would be what that benchmark measured).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::contract::{Change, ObjectKind, RecordRef};
use crate::domain::inbound::ConflictEntry;
use crate::domain::sync::{
    freshness, Freshness, RecordFilter, RecordState, SyncStatus, Tally, TimelineEntry,
};
use crate::ports::state::*;
use crate::ports::{InboundUpdate, LeaseOutcome, ListError, RecordClaim, Settlement, StoreUnavailable};
use async_trait::async_trait;

#[derive(Default)]
struct Row {
    state: Option<RecordState>,
    lease: Option<(String, i64)>,
    timeline: Vec<TimelineEntry>,
    conflicts: Vec<ConflictEntry>,
}

#[derive(Default)]
pub struct MemorySyncState {
    rows: Mutex<HashMap<RecordRef, Row>>,
    crm_owners: Mutex<HashMap<(ObjectKind, String), String>>,
    /// Merged-away CRM id → the id it was merged into.
    merges: Mutex<HashMap<(ObjectKind, String), String>>,
    /// The reconciliation's checkpoint and its reports, oldest first.
    reconcile: Mutex<(
        Option<crate::domain::reconcile::Checkpoint>,
        Vec<crate::domain::reconcile::RunReport>,
    )>,
    /// Backfills' progress, by plan.
    backfills: Mutex<HashMap<String, (crate::domain::adoption::BackfillProgress, i64)>>,
    /// Plans' summaries, by plan.
    plans: Mutex<HashMap<String, crate::domain::adoption::PlanSummary>>,
    /// CRM object → how far its merges were read.
    merges_read: Mutex<HashMap<String, crate::domain::reconcile::MergeMark>>,
    /// Outbound outcomes per hour: hour → (synced, failed).
    outcomes: Mutex<std::collections::BTreeMap<i64, (u64, u64)>>,
}

impl MemorySyncState {
    /// Changes an existing record's state; a record with no state is left alone.
    fn mark_state(&self, record: &RecordRef, mark: impl FnOnce(&mut RecordState)) {
        if let Some(state) = self
            .rows
            .lock()
            .unwrap()
            .get_mut(record)
            .and_then(|row| row.state.as_mut())
        {
            mark(state);
        }
    }
}

fn held_by(row: &Row, token: &str) -> bool {
    row.lease.as_ref().map(|(held, _)| held.as_str()) == Some(token)
}

/// The row `token` leases, with the lease released; `None` when the lease was lost.
fn release<'a>(
    rows: &'a mut HashMap<RecordRef, Row>,
    record: &RecordRef,
    token: &str,
) -> Option<&'a mut Row> {
    let row = rows.get_mut(record).filter(|row| held_by(row, token))?;
    row.lease = None;
    Some(row)
}

fn leased_elsewhere(row: &Row, now_ms: i64) -> bool {
    row.lease.as_ref().is_some_and(|(_, until)| *until >= now_ms)
}

#[async_trait]
impl RecordLeases for MemorySyncState {
    async fn claim(
        &self,
        change: &Change,
        body: &str,
        writes: &std::collections::BTreeMap<String, String>,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<RecordClaim, StoreUnavailable> {
        let record = change.record();
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(record.clone()).or_default();
        let old = row.state.clone().unwrap_or_else(|| RecordState::new(record));
        match freshness(change, &old) {
            Freshness::Stale => return Ok(RecordClaim::Stale(old)),
            Freshness::Duplicate => return Ok(RecordClaim::Duplicate),
            Freshness::Newer if leased_elsewhere(row, now_ms) => return Ok(RecordClaim::Busy),
            Freshness::Newer => {}
        }
        let mut state = old.clone();
        state.status = SyncStatus::Pending;
        state.last_attempt_at_ms = Some(now_ms);
        state.pending_since_ms.get_or_insert(now_ms);
        state.pending_change = Some(body.to_string());
        for (property, value) in writes {
            state
                .claimed_writes
                .entry(property.clone())
                .or_default()
                .push(crate::domain::sync::value_fingerprint(value));
        }
        row.state = Some(state);
        row.lease = Some((token.to_string(), lease_until_ms));
        Ok(RecordClaim::Claimed(old))
    }

    async fn settle(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        settlement: &Settlement,
    ) -> Result<bool, StoreUnavailable> {
        let mut rows = self.rows.lock().unwrap();
        let Some(row) = release(&mut rows, record, token) else {
            return Ok(false);
        };
        let state = row.state.get_or_insert_with(|| RecordState::new(record.clone()));
        match settlement {
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
                if let Some(marks) = conflicts {
                    state.conflict_marks = marks.clone();
                    state.open_conflicts &= !marks.open.is_empty();
                }
                if let Some(previous) = previous_crm_ids {
                    state.previous_crm_ids = previous.clone();
                    state.follow_crm_id = true;
                }
                state.status = *status;
                state.recent_writes = recent_writes.clone();
                state.claimed_writes.clear();
                state.last_synced_at_ms = Some(now_ms);
                state.attempts = 0;
                state.applied_version_ms = Some(*version_ms);
                state.applied_idempotency_id = Some(idempotency_id.clone());
                state.written = written.clone();
                state.last_change = state.pending_change.take();
                state.pending_since_ms = None;
                state.last_error = None;
                state.identity_conflict = None;
                if crm_id.is_some() {
                    state.crm_id = crm_id.clone();
                }
            }
            Settlement::Failed {
                error,
                status,
                retryable,
                recent_writes,
            } => {
                state.status = *status;
                if *status != SyncStatus::Pending {
                    state.pending_since_ms = None;
                }
                state.last_error = Some(error.clone());
                state.attempts += 1;
                state.retryable = *retryable;
                state.recent_writes = recent_writes.clone();
                state.claimed_writes.clear();
            }
            Settlement::Erased {
                version_ms,
                idempotency_id,
            } => {
                state.apply_identity(&crate::ports::IdentityUpdate {
                    erased_at_ms: Some(now_ms),
                    status: Some(SyncStatus::Deleted),
                    ..Default::default()
                });
                state.applied_version_ms = Some(*version_ms);
                state.applied_idempotency_id = Some(idempotency_id.clone());
                state.last_synced_at_ms = Some(now_ms);
            }
            Settlement::Dropped { error } => {
                state.status = SyncStatus::Deleted;
                state.last_error = Some(error.clone());
                state.pending_change = None;
                state.pending_since_ms = None;
                state.claimed_writes.clear();
            }
            Settlement::Released { recent_writes } => {
                state.recent_writes = recent_writes.clone();
                state.claimed_writes.clear();
            }
        }
        Ok(true)
    }

    async fn lease(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<LeaseOutcome, StoreUnavailable> {
        let mut rows = self.rows.lock().unwrap();
        let Some(row) = rows.get_mut(record).filter(|row| row.state.is_some()) else {
            return Ok(LeaseOutcome::Busy);
        };
        if leased_elsewhere(row, now_ms) {
            return Ok(LeaseOutcome::Busy);
        }
        row.lease = Some((token.to_string(), lease_until_ms));
        Ok(LeaseOutcome::Leased(Box::new(
            row.state.clone().expect("checked"),
        )))
    }

    async fn settle_inbound(
        &self,
        record: &RecordRef,
        token: &str,
        _now_ms: i64,
        update: &InboundUpdate,
    ) -> Result<bool, StoreUnavailable> {
        let mut rows = self.rows.lock().unwrap();
        let Some(row) = release(&mut rows, record, token) else {
            return Ok(false);
        };
        if let Some(state) = row.state.as_mut() {
            state.inbound_at = update.inbound_at.clone();
            state.received = update.received.clone();
            if let Some(written) = &update.written {
                state.written = written.clone();
            }
            state.conflicts += update.new_conflicts;
            state.inbox_sequence = update.inbox_sequence;
            state.recent_events = update.recent_events.clone();
            state.conflict_marks = update.conflict_marks.clone();
            if update.flag_conflicts {
                state.open_conflicts = true;
            } else if state.conflict_marks.open.is_empty() {
                state.open_conflicts = false;
            }
            if let Some(identity) = &update.identity {
                state.apply_identity(identity);
            }
        }
        Ok(true)
    }

    async fn claim_crm_record(
        &self,
        object: ObjectKind,
        crm_id: &str,
        record_id: &str,
    ) -> Result<Option<String>, StoreUnavailable> {
        let mut owners = self.crm_owners.lock().unwrap();
        let owner = owners
            .entry((object, crm_id.to_string()))
            .or_insert_with(|| record_id.to_string());
        Ok((owner != record_id).then(|| owner.clone()))
    }

    async fn record_merge(
        &self,
        object: ObjectKind,
        merged: &[String],
        survivor: &str,
        _at_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        let mut merges = self.merges.lock().unwrap();
        for crm_id in merged {
            merges.insert((object, crm_id.clone()), survivor.to_string());
        }
        Ok(())
    }
}

#[async_trait]
impl RecordJournal for MemorySyncState {
    async fn append_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreUnavailable> {
        let mut rows = self.rows.lock().unwrap();
        for entry in entries {
            rows.entry(entry.record.clone())
                .or_default()
                .timeline
                .push(entry.clone());
        }
        Ok(())
    }

    async fn append_conflicts(&self, entries: &[ConflictEntry]) -> Result<(), StoreUnavailable> {
        let mut rows = self.rows.lock().unwrap();
        for entry in entries {
            let conflicts = &mut rows.entry(entry.record.clone()).or_default().conflicts;
            // One entry per event and property, as the DynamoDB store keys them.
            conflicts.retain(|c| (&c.event_key, &c.crm_property) != (&entry.event_key, &entry.crm_property));
            conflicts.push(entry.clone());
        }
        Ok(())
    }

    async fn conflicts(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .get(record)
            .map(|row| row.conflicts.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn dismiss_conflicts(&self, record: &RecordRef, now_ms: i64) -> Result<bool, StoreUnavailable> {
        let held = self
            .rows
            .lock()
            .unwrap()
            .get(record)
            .and_then(|row| row.lease.as_ref())
            .is_some_and(|(_, until)| *until >= now_ms);
        if held {
            return Ok(false);
        }
        self.mark_state(record, |state| {
            state.open_conflicts = false;
            state.conflict_marks.open.clear();
            state.conflicts_dismissed_at_ms = Some(now_ms);
        });
        Ok(true)
    }

    async fn share_crm_record(&self, record: &RecordRef, _now_ms: i64) -> Result<(), StoreUnavailable> {
        self.mark_state(record, |state| state.identity_conflict = None);
        Ok(())
    }

    async fn forget(&self, record: &RecordRef) -> Result<(), StoreUnavailable> {
        if let Some(row) = self.rows.lock().unwrap().get_mut(record) {
            row.timeline.clear();
            row.conflicts.clear();
        }
        Ok(())
    }

    async fn count_outcomes(&self, hour_ms: i64, synced: u64, failed: u64) -> Result<(), StoreUnavailable> {
        let mut outcomes = self.outcomes.lock().unwrap();
        let hour = outcomes.entry(hour_ms).or_default();
        hour.0 += synced;
        hour.1 += failed;
        Ok(())
    }
}

#[async_trait]
impl RecordQueries for MemorySyncState {
    async fn states(
        &self,
        records: &[RecordRef],
    ) -> Result<HashMap<RecordRef, RecordState>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        Ok(records
            .iter()
            .filter_map(|record| Some((record.clone(), rows.get(record)?.state.clone()?)))
            .collect())
    }

    async fn record(
        &self,
        record: &RecordRef,
        limit: usize,
    ) -> Result<Option<(RecordState, Vec<TimelineEntry>)>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        Ok(rows.get(record).and_then(|row| {
            let timeline = row.timeline.iter().rev().take(limit).cloned().collect();
            Some((row.state.clone()?, timeline))
        }))
    }

    async fn holders(
        &self,
        object: ObjectKind,
        crm_id: &str,
        limit: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter_map(|row| row.state.clone())
            .filter(|state| state.record.object == object && state.crm_id.as_deref() == Some(crm_id))
            .take(limit)
            .collect())
    }

    async fn merged_from(&self, object: ObjectKind, survivor: &str) -> Result<Vec<String>, StoreUnavailable> {
        let merges = self.merges.lock().unwrap();
        Ok(merges
            .iter()
            .filter(|((kind, _), into)| *kind == object && *into == survivor)
            .map(|((_, from), _)| from.clone())
            .collect())
    }

    async fn merged_into(
        &self,
        object: ObjectKind,
        crm_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreUnavailable> {
        let merges = self.merges.lock().unwrap();
        Ok(crm_ids
            .iter()
            .filter_map(|id| Some((id.clone(), merges.get(&(object, id.clone()))?.clone())))
            .collect())
    }

    async fn list_of(
        &self,
        filter: RecordFilter,
        object: Option<ObjectKind>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<RecordState>, Option<String>), ListError> {
        let skip: usize = match cursor {
            None => 0,
            Some(cursor) => cursor.parse().map_err(|_| ListError::BadCursor)?,
        };
        let rows = self.rows.lock().unwrap();
        let mut selected: Vec<RecordState> = rows
            .values()
            .filter_map(|row| row.state.clone())
            .filter(|state| match filter {
                RecordFilter::Status(status) => state.status == status,
                RecordFilter::OpenConflicts => state.open_conflicts,
            })
            .filter(|state| object.is_none_or(|object| state.record.object == object))
            .collect();
        selected.sort_by_key(|state| std::cmp::Reverse(state.last_attempt_at_ms));
        let page: Vec<RecordState> = selected.iter().skip(skip).take(limit).cloned().collect();
        let next = (skip + page.len() < selected.len()).then(|| (skip + page.len()).to_string());
        Ok((page, next))
    }

    async fn count(&self, filter: RecordFilter, _max_pages: usize) -> Result<Tally, StoreUnavailable> {
        let (all, _) = self
            .list(filter, usize::MAX, None)
            .await
            .map_err(|_| StoreUnavailable(anyhow::anyhow!("listing failed")))?;
        Ok(Tally {
            count: all.len() as u64,
            complete: true,
        })
    }

    async fn find_by_email(&self, _email: &str, _limit: usize) -> Result<Vec<RecordState>, StoreUnavailable> {
        // The benchmark never searches; the state keeps no email here.
        Ok(Vec::new())
    }

    async fn oldest_waiting_since(&self) -> Result<Option<i64>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter_map(|row| row.state.as_ref())
            .filter(|state| state.status == SyncStatus::Pending)
            .filter_map(|state| state.pending_since_ms.or(state.last_attempt_at_ms))
            .min())
    }

    async fn outcome_hours(
        &self,
        from_hour_ms: i64,
    ) -> Result<Vec<crate::domain::health::HourCount>, StoreUnavailable> {
        Ok(self
            .outcomes
            .lock()
            .unwrap()
            .range(from_hour_ms..)
            .map(|(hour_ms, (synced, failed))| crate::domain::health::HourCount {
                hour_ms: *hour_ms,
                synced: *synced,
                failed: *failed,
            })
            .collect())
    }
}

/// A record's place in the scan: its object and id, as text that sorts.
fn scan_key(record: &RecordRef) -> String {
    format!("{}#{}", record.object.as_str(), record.record_id)
}

#[async_trait]
impl crate::ports::ReconcileStore for MemorySyncState {
    async fn checkpoint(&self) -> Result<Option<crate::domain::reconcile::Checkpoint>, StoreUnavailable> {
        Ok(self.reconcile.lock().unwrap().0.clone())
    }

    async fn save(&self, checkpoint: &crate::domain::reconcile::Checkpoint) -> Result<(), StoreUnavailable> {
        let mut reconcile = self.reconcile.lock().unwrap();
        reconcile.0 = Some(checkpoint.clone());
        let reports = &mut reconcile.1;
        reports.retain(|report| report.started_at_ms != checkpoint.report.started_at_ms);
        reports.push(checkpoint.report.clone());
        Ok(())
    }

    async fn merge_mark(
        &self,
        object: &str,
    ) -> Result<crate::domain::reconcile::MergeMark, StoreUnavailable> {
        Ok(self
            .merges_read
            .lock()
            .unwrap()
            .get(object)
            .copied()
            .unwrap_or_default())
    }

    async fn save_merge_mark(
        &self,
        object: &str,
        mark: &crate::domain::reconcile::MergeMark,
    ) -> Result<(), StoreUnavailable> {
        let mut marks = self.merges_read.lock().unwrap();
        let saved = marks.entry(object.to_string()).or_default();
        if saved.read_to_ms <= mark.read_to_ms {
            *saved = *mark;
        }
        Ok(())
    }

    async fn reports(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::reconcile::RunReport>, StoreUnavailable> {
        let reconcile = self.reconcile.lock().unwrap();
        Ok(reconcile.1.iter().rev().take(limit).cloned().collect())
    }

    async fn synced_page(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<RecordState>, Option<String>), StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        // Segments by a stable digest of the key, as DynamoDB's parallel scan splits by hash.
        let in_segment = |key: &str| {
            let digest = key
                .bytes()
                .fold(0u32, |sum, b| sum.wrapping_mul(31).wrapping_add(u32::from(b)));
            digest % segments.max(1) == segment
        };
        let mut page: Vec<(String, RecordState)> = rows
            .iter()
            .filter_map(|(record, row)| Some((scan_key(record), row.state.clone()?)))
            .filter(|(key, state)| {
                state.status == SyncStatus::Synced
                    && state.crm_id.is_some()
                    && in_segment(key)
                    && cursor.as_ref().is_none_or(|cursor| key > cursor)
            })
            .collect();
        page.sort_by(|a, b| a.0.cmp(&b.0));
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(|(key, _)| key.clone())).flatten();
        Ok((page.into_iter().map(|(_, state)| state).collect(), next))
    }

    async fn needing_requeue(
        &self,
        stuck_before_ms: i64,
        cap: usize,
    ) -> Result<Vec<RecordState>, StoreUnavailable> {
        let rows = self.rows.lock().unwrap();
        let mut found: Vec<RecordState> = rows
            .values()
            .filter_map(|row| row.state.clone())
            .filter(|state| {
                state.pending_change.is_some()
                    && match state.status {
                        SyncStatus::Failed => state.retryable,
                        SyncStatus::Pending => state.last_attempt_at_ms.is_none_or(|at| at < stuck_before_ms),
                        _ => false,
                    }
            })
            .collect();
        found.sort_by_key(|state| scan_key(&state.record));
        found.truncate(cap);
        Ok(found)
    }
}

#[async_trait]
impl crate::ports::AdoptionStore for MemorySyncState {
    async fn backfill(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::BackfillProgress>, StoreUnavailable> {
        Ok(self.backfills.lock().unwrap().get(plan_id).map(|(progress, _)| {
            crate::domain::adoption::BackfillProgress {
                run_token: String::new(),
                ..progress.clone()
            }
        }))
    }

    async fn save_backfill(
        &self,
        progress: &crate::domain::adoption::BackfillProgress,
        now_ms: i64,
        held_until_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        let mut backfills = self.backfills.lock().unwrap();
        if let Some((held, until)) = backfills.get(&progress.plan_id) {
            if *until >= now_ms && held.run_token != progress.run_token {
                return Ok(false);
            }
        }
        backfills.insert(progress.plan_id.clone(), (progress.clone(), held_until_ms));
        Ok(true)
    }

    async fn backfills(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::BackfillProgress>, StoreUnavailable> {
        let mut all: Vec<_> = self
            .backfills
            .lock()
            .unwrap()
            .values()
            .map(|(progress, _)| progress.clone())
            .collect();
        all.sort_by_key(|progress| std::cmp::Reverse(progress.started_at_ms));
        all.truncate(limit);
        Ok(all)
    }

    async fn save_plan(
        &self,
        summary: &crate::domain::adoption::PlanSummary,
    ) -> Result<(), StoreUnavailable> {
        self.plans
            .lock()
            .unwrap()
            .insert(summary.plan_id.clone(), summary.clone());
        Ok(())
    }

    async fn plan(
        &self,
        plan_id: &str,
    ) -> Result<Option<crate::domain::adoption::PlanSummary>, StoreUnavailable> {
        Ok(self.plans.lock().unwrap().get(plan_id).cloned())
    }

    async fn plans(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::adoption::PlanSummary>, StoreUnavailable> {
        let mut all: Vec<_> = self.plans.lock().unwrap().values().cloned().collect();
        all.sort_by(|a, b| b.planned_at.cmp(&a.planned_at));
        all.truncate(limit);
        Ok(all)
    }
}
