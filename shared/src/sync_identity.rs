//! Writes by CRM id, following the CRM's merges: a record the CRM knows is written by its id,
//! never re-created by the app's id, and a record whose CRM id was merged away is written to
//! the survivor. A record whose CRM id is gone and that no merge names waits two tries for the
//! CRM's merge event, then is created anew.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;

use super::{Outcome, SyncService, Work};
use crate::domain::contract::ObjectKind;
use crate::domain::crm::{BatchResult, CrmError, FailureKind, UpdateInput, UpsertInput};
use crate::domain::identity::MAX_HOLDERS;
use crate::domain::mapping::ObjectMapping;
use crate::domain::sync::SyncStatus;
use crate::worker::BatchReport;

/// A CRM call in flight, as the `Crm` port's methods return it.
pub(super) type CrmFuture<'s> = Pin<Box<dyn Future<Output = Result<BatchResult, CrmError>> + Send + 's>>;

/// What an error of a write by id says when the record is not in the CRM any more.
pub(super) const GONE: &str = "is gone from the CRM";

/// How a record is written.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// By the app's id; `forget_crm_id` when the CRM id crm-sync knew is gone for good.
    Upsert { forget_crm_id: bool },
    /// By CRM id. The app's id property is left as the CRM has it: written at creation (or
    /// adoption), it may be another app record's on a survivor of a merge.
    ById { crm_id: String },
    /// Not written: the outcome is known before any call.
    Decided(Outcome),
}

/// Whether a write by id failed because the record is not there (deleted or merged away): an
/// input's not-found error, or a whole call answered 404.
fn gone(outcome: &Outcome) -> bool {
    const CODES: [&str; 3] = ["OBJECT_NOT_FOUND:", "NOT_FOUND:", "ENTITY_IS_DELETED:"];
    matches!(outcome, Outcome::Failed { error, .. }
        if CODES.iter().any(|code| error.starts_with(code)) || error.contains(" -> 404)"))
}

/// How many tries find a record gone, with no merge naming it, before it is created anew: the
/// CRM's merge event may be seconds behind the write that met the dead id.
const GONE_TRIES: u32 = 2;

/// A write's outcome decided without a CRM call, `why` saying so on the timeline.
fn without_call(why: &str) -> Outcome {
    Outcome::Applied {
        crm_id: None,
        created: false,
        call: format!("no CRM call: {why}"),
        followed: None,
    }
}

/// The wait of a write whose CRM id went, by merges, into a record the CRM erased for privacy.
fn into_erased(crm_id: &str) -> Outcome {
    Outcome::Failed {
        kind: FailureKind::Transient,
        error: format!(
            "the CRM record CRM record {crm_id} went into was erased for privacy: waiting for the merge's \
             event, which erases this record too"
        ),
        call: None,
    }
}

/// The error a write by id leaves when its CRM record is gone; the retry reads it back.
fn gone_error(crm_id: &str) -> String {
    format!(
        "CRM record {crm_id} {GONE} (merged or deleted there): the retry waits for the CRM's merge \
         event, and creates the record anew if none names it"
    )
}

impl SyncService {
    /// How each record of the group is written: by the app's id when the CRM id is unknown (or
    /// gone for good), else by the CRM id, the survivor's when the CRM merged it.
    pub(super) async fn targets(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        group: &[&Work],
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Vec<Target> {
        let known: Vec<String> = group.iter().filter_map(|w| w.prior.crm_id.clone()).collect();
        let survivors = self.survivors(object, &known).await;
        let mut targets = Vec::with_capacity(group.len());
        for w in group {
            let Some(crm_id) = &w.prior.crm_id else {
                targets.push(Target::Upsert { forget_crm_id: false });
                continue;
            };
            let target = match survivors.get(crm_id) {
                // Merged into a record the CRM erased since: never written back into the CRM.
                Some(survivor) if survivor == crate::domain::identity::ERASED_MARK => {
                    Target::Decided(into_erased(crm_id))
                }
                Some(survivor) => {
                    self.follow(object, mapping, w, crm_id, survivor, deadline, report)
                        .await
                }
                // Gone at the last tries and no merge has named it since: deleted in the CRM.
                None if w.queued.attempts > 0
                    && w.prior.attempts >= GONE_TRIES
                    && w.prior.last_error.as_deref() == Some(gone_error(crm_id).as_str()) =>
                {
                    Target::Upsert { forget_crm_id: true }
                }
                None => Target::ById {
                    crm_id: crm_id.clone(),
                },
            };
            targets.push(target);
        }
        targets
    }

    /// A record whose CRM id was merged into `survivor` before the merge moved the record (its
    /// event not acted on yet, or acted on before the record had that id): written to the
    /// survivor, unless another app record holds it, which makes the identity conflict the merge
    /// would have made.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        w: &Work,
        from: &str,
        survivor: &str,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Target {
        // The survivor's holders, and those of every record merged into it that its merge has not
        // moved yet: the merge's own event decides who owns it, never a write that came first.
        match crate::merges::holders_of_merge(self.queries.as_ref(), object, survivor).await {
            Ok(holders) => {
                let others: Vec<String> = holders
                    .into_iter()
                    .filter(|h| h.record != w.prior.record && h.status != SyncStatus::Deleted)
                    .map(|h| h.record.record_id)
                    .collect();
                if others.is_empty() || self.owns(mapping, w, survivor, deadline, report).await {
                    Target::ById {
                        crm_id: survivor.to_string(),
                    }
                } else {
                    // The merge's event decides who owns the survivor (and holds the others):
                    // until it has, the write waits.
                    Target::Decided(Outcome::Failed {
                        kind: FailureKind::Transient,
                        error: format!(
                            "the CRM merged CRM record {from} into {survivor}, which app record {} is on \
                             too: waiting for the merge's event to decide which app record owns it",
                            others.join(", ")
                        ),
                        call: None,
                    })
                }
            }
            Err(error) => Target::Decided(Outcome::Failed {
                kind: FailureKind::Transient,
                error: format!(
                    "could not look up who holds CRM record {survivor}: {:#}",
                    anyhow::Error::from(error)
                ),
                call: None,
            }),
        }
    }

    /// Whether the survivor carries this record's app id: the merge kept this record's values
    /// (HubSpot keeps the primary's, Pipedrive the survivor's own), so this record owns it,
    /// whatever the merge's event, when it comes, moves there besides.
    async fn owns(
        &self,
        mapping: &ObjectMapping,
        w: &Work,
        survivor: &str,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> bool {
        let ids = [survivor.to_string()];
        let read = self
            .worker
            .call(deadline, report, || {
                self.crm.read(
                    &mapping.crm_object,
                    &ids,
                    std::slice::from_ref(&mapping.id_property),
                )
            })
            .await;
        read.ok()
            .and_then(|read| read.records.into_iter().next().flatten())
            .and_then(|values| values.get(&mapping.id_property).cloned())
            .is_some_and(|id| id == w.prior.record.record_id)
    }

    /// Whether another live app record still holds the CRM record of `state` (a record held by
    /// an identity conflict); when that cannot be read, it counts as held.
    pub(super) async fn still_shared(&self, state: &crate::domain::sync::RecordState) -> bool {
        let Some(crm_id) = &state.crm_id else {
            return false;
        };
        match self
            .queries
            .holders(state.record.object, crm_id, MAX_HOLDERS)
            .await
        {
            Ok(holders) => holders
                .iter()
                .any(|h| h.record != state.record && h.status != SyncStatus::Deleted),
            Err(_) => true,
        }
    }

    /// Asks the CRM where a gone record went (HubSpot reads a merged id as its survivor), and
    /// records the merge it names, so that the next write and the merge's own event find it.
    async fn ask_survivor(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        crm_id: &str,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Result<Option<String>, String> {
        let lookup = self
            .worker
            .call(deadline, report, || {
                self.crm.survivor(&mapping.crm_object, crm_id)
            })
            .await
            .map_err(|failure| match failure {
                crate::worker::CallFailure::Throttled { .. } => "throttled".to_string(),
                crate::worker::CallFailure::Transient(reason)
                | crate::worker::CallFailure::Rejected(reason) => reason,
            })?;
        let Some(survivor) = lookup.survivor else {
            return Ok(None);
        };
        let now_ms = self.clock.now_ms();
        if let Err(error) = self
            .leases
            .record_merge(object, &[crm_id.to_string()], &survivor, now_ms)
            .await
        {
            tracing::warn!(error = ?anyhow::Error::from(error), "could not record a merge the CRM reported");
        }
        Ok(Some(survivor))
    }

    /// Which CRM record each delete archives: the record's own, or the survivor of its merge;
    /// or an outcome without a CRM call: unlinked when another app record is linked to that CRM
    /// record too (it stays in the CRM), or a transient failure when that cannot be known now.
    pub(super) async fn delete_targets(
        &self,
        object: ObjectKind,
        group: &[&Work],
    ) -> Vec<Result<String, Outcome>> {
        let known: Vec<String> = group.iter().filter_map(|w| w.prior.crm_id.clone()).collect();
        let survivors = self.survivors(object, &known).await;
        let mut targets = Vec::with_capacity(group.len());
        for w in group {
            let Some(crm_id) = &w.prior.crm_id else {
                targets.push(Err(without_call("never synced")));
                continue;
            };
            let target = survivors.get(crm_id).unwrap_or(crm_id).clone();
            if target == crate::domain::identity::ERASED_MARK {
                targets.push(Err(without_call(
                    "nothing to archive, the CRM erased the record for privacy",
                )));
                continue;
            }
            let others: Vec<String> = match self.queries.holders(object, &target, MAX_HOLDERS).await {
                Ok(holders) => holders
                    .into_iter()
                    .filter(|h| h.record != w.prior.record && h.status != SyncStatus::Deleted)
                    .map(|h| h.record.record_id)
                    .collect(),
                Err(error) => {
                    // Archiving a record another app record shares cannot be undone: not now.
                    tracing::warn!(error = ?anyhow::Error::from(error), "could not look up who else holds a CRM record");
                    targets.push(Err(Outcome::Failed {
                        kind: FailureKind::Transient,
                        error: format!("could not check whether CRM record {target} is shared"),
                        call: None,
                    }));
                    continue;
                }
            };
            targets.push(if others.is_empty() {
                Ok(target)
            } else {
                Err(Outcome::Applied {
                    crm_id: None,
                    created: false,
                    call: format!(
                        "no CRM call: unlinked: CRM record {target} stays in the CRM, linked to app record {} as well",
                        others.join(", ")
                    ),
                    followed: None,
                })
            });
        }
        targets
    }

    /// Erases each record in the CRM, one call each (HubSpot's GDPR delete takes one record; an
    /// erasure is rare): the survivor when the CRM merged the record away.
    pub(super) async fn erase_group(
        &self,
        mapping: &ObjectMapping,
        group: &[&Work],
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Vec<Outcome> {
        let object = group
            .first()
            .map_or(ObjectKind::Contact, |w| w.queued.change.object);
        let known: Vec<String> = group.iter().filter_map(|w| w.prior.crm_id.clone()).collect();
        let survivors = self.survivors(object, &known).await;
        let mut outcomes = Vec::with_capacity(group.len());
        for w in group {
            let Some(crm_id) = &w.prior.crm_id else {
                outcomes.push(without_call("never synced"));
                continue;
            };
            let target = survivors.get(crm_id).unwrap_or(crm_id);
            if target == crate::domain::identity::ERASED_MARK {
                outcomes.push(without_call("the CRM erased the record already"));
                continue;
            }
            // A CRM record another app record holds too is that record's as well: the erasure
            // forgets this record in crm-sync and leaves the CRM record to an operator.
            let mut shared = w.prior.clone();
            shared.crm_id = Some(target.clone());
            if self.still_shared(&shared).await {
                outcomes.push(without_call(&format!(
                    "CRM record {target} is another app record's too, so it is not erased in the CRM"
                )));
                continue;
            }
            let result = self
                .worker
                .call(deadline, report, || self.crm.erase(&mapping.crm_object, target))
                .await;
            outcomes.extend(super::per_input(result, 1));
        }
        outcomes
    }

    async fn survivors(&self, object: ObjectKind, crm_ids: &[String]) -> HashMap<String, String> {
        crate::merges::survivors(self.queries.as_ref(), object, crm_ids).await
    }

    /// Writes the records targeted by id, in bulk, and sets the outcomes decided without a call;
    /// a record found gone is looked up among the CRM's merges once more (the merge may have
    /// arrived meanwhile) and written to the survivor, else it fails for a retry that waits for
    /// the merge.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_by_id(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        group: &[&Work],
        inputs: &[UpsertInput],
        targets: &[Target],
        outcomes: &mut [Option<Outcome>],
        deadline: Instant,
        report: &mut BatchReport,
    ) {
        let mut pending: Vec<(usize, String)> = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            match target {
                Target::ById { crm_id } => pending.push((index, crm_id.clone())),
                Target::Decided(outcome) => outcomes[index] = Some(outcome.clone()),
                Target::Upsert { .. } => {}
            }
        }
        // Twice at most: the ids as known, then the survivors of those found gone.
        for round in 0..2 {
            if pending.is_empty() {
                break;
            }
            let updates: Vec<UpdateInput> = pending
                .iter()
                .map(|(index, crm_id)| UpdateInput {
                    crm_id: crm_id.clone(),
                    properties: inputs[*index].properties.clone(),
                    written_before: inputs[*index].written_before.clone(),
                })
                .collect();
            let max = self.crm.max_batch().max(1);
            let mut written = Vec::with_capacity(updates.len());
            for chunk in updates.chunks(max) {
                written.extend(
                    self.isolating(chunk, deadline, report, |slice| {
                        self.crm.update(&mapping.crm_object, slice)
                    })
                    .await,
                );
            }
            let mut gone_ids = Vec::new();
            let mut unasked: Vec<(String, String)> = Vec::new();
            for ((index, crm_id), outcome) in pending.iter().zip(written) {
                if gone(&outcome) {
                    gone_ids.push((*index, crm_id.clone(), outcome));
                    continue;
                }
                // Written to a survivor of the record's own CRM id: say so, for the settlement.
                let own = group[*index].prior.crm_id.clone().filter(|own| own != crm_id);
                outcomes[*index] = Some(match outcome {
                    Outcome::Applied {
                        crm_id,
                        created,
                        call,
                        ..
                    } => Outcome::Applied {
                        crm_id,
                        created,
                        call,
                        followed: own,
                    },
                    other => other,
                });
            }
            let survivors = if round == 0 && !gone_ids.is_empty() {
                let ids: Vec<String> = gone_ids.iter().map(|(_, id, _)| id.clone()).collect();
                let mut survivors = self.survivors(object, &ids).await;
                let unknown: Vec<&String> = ids.iter().filter(|id| !survivors.contains_key(*id)).collect();
                for id in unknown {
                    match self.ask_survivor(object, mapping, id, deadline, report).await {
                        Ok(Some(survivor)) => {
                            survivors.insert(id.clone(), survivor);
                        }
                        Ok(None) => {}
                        // Not knowing is no answer: the try does not count towards creating anew.
                        Err(reason) => unasked.push((id.clone(), reason)),
                    }
                }
                survivors
            } else {
                HashMap::new()
            };
            pending = Vec::new();
            for (index, crm_id, outcome) in gone_ids {
                match survivors.get(&crm_id) {
                    Some(survivor) if survivor == crate::domain::identity::ERASED_MARK => {
                        outcomes[index] = Some(into_erased(&crm_id));
                    }
                    Some(survivor) => match self
                        .follow(object, mapping, group[index], &crm_id, survivor, deadline, report)
                        .await
                    {
                        Target::ById { crm_id } => pending.push((index, crm_id)),
                        Target::Decided(outcome) => outcomes[index] = Some(outcome),
                        Target::Upsert { .. } => unreachable!("a merge is followed by id"),
                    },
                    None => {
                        let call = match &outcome {
                            Outcome::Failed { call, .. } => call.clone(),
                            _ => None,
                        };
                        let error = match unasked.iter().find(|(id, _)| *id == crm_id) {
                            Some((_, reason)) => format!(
                                "CRM record {crm_id} {GONE}, and where it went could not be asked: {reason}"
                            ),
                            None => gone_error(&crm_id),
                        };
                        outcomes[index] = Some(Outcome::Failed {
                            kind: FailureKind::Transient,
                            error,
                            call,
                        });
                    }
                }
            }
        }
        for (index, _) in pending {
            outcomes[index] = Some(Outcome::Failed {
                kind: FailureKind::Transient,
                error: format!("the CRM record a merge named as survivor {GONE} as well"),
                call: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_not_found_or_deleted_error_means_gone() {
        let failed = |error: &str| Outcome::Failed {
            kind: FailureKind::Permanent,
            error: error.into(),
            call: None,
        };
        assert!(gone(&failed("OBJECT_NOT_FOUND: Object not found")));
        assert!(gone(&failed("NOT_FOUND: no such record in Pipedrive")));
        assert!(gone(&failed("ENTITY_IS_DELETED: entity is deleted")));
        assert!(gone(&failed(
            "the CRM refused the call (POST /crm/objects/2026-03/contacts/batch/update -> 404): gone"
        )));
        assert!(!gone(&failed("INVALID_EMAIL: not an email")));
        assert!(!gone(&failed(
            "the CRM refused the call (POST /crm/objects/2026-03/contacts/batch/update -> 400): bad"
        )));
    }
}
