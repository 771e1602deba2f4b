//! Writes by CRM id, following the CRM's merges: a record the CRM knows is written by its id,
//! never re-created by the app's id, and a record whose CRM id was merged away is written to
//! the survivor. A record whose CRM id is gone and that no merge names waits one retry for the
//! CRM's merge event, then is created anew.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;

use super::{Outcome, SyncService, Work};
use crate::domain::contract::ObjectKind;
use crate::domain::crm::{BatchResult, CrmError, FailureKind, UpdateInput, UpsertInput};
use crate::domain::identity::{MAX_HOLDERS, MAX_MERGE_HOPS};
use crate::domain::mapping::ObjectMapping;
use crate::domain::sync::SyncStatus;
use crate::worker::BatchReport;

/// A CRM call in flight, as the `Crm` port's methods return it.
pub(super) type CrmFuture<'s> = Pin<Box<dyn Future<Output = Result<BatchResult, CrmError>> + Send + 's>>;

/// What an error of a write by id says when the record is not in the CRM any more.
pub(super) const GONE: &str = "is gone from the CRM";

/// How a record is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// By the app's id; `forget_crm_id` when the CRM id crm-sync knew is gone for good.
    Upsert { forget_crm_id: bool },
    /// By CRM id; `with_app_id` writes the app's id property too (not on a survivor of a merge,
    /// whose id property may be another app record's).
    ById { crm_id: String, with_app_id: bool },
}

/// Whether a write by id failed because the record is not there (deleted or merged away).
fn gone(outcome: &Outcome) -> bool {
    const CODES: [&str; 3] = ["OBJECT_NOT_FOUND:", "NOT_FOUND:", "ENTITY_IS_DELETED:"];
    matches!(outcome, Outcome::Failed { error, .. } if CODES.iter().any(|code| error.starts_with(code)))
}

impl SyncService {
    /// How each record of the group is written: by the app's id when the CRM id is unknown (or
    /// gone for good), else by the CRM id, the survivor's when the CRM merged it.
    pub(super) async fn targets(&self, object: ObjectKind, group: &[&Work]) -> Vec<Target> {
        let known: Vec<String> = group.iter().filter_map(|w| w.prior.crm_id.clone()).collect();
        let survivors = self.survivors(object, &known).await;
        group
            .iter()
            .map(|w| {
                let Some(crm_id) = &w.prior.crm_id else {
                    return Target::Upsert { forget_crm_id: false };
                };
                match survivors.get(crm_id) {
                    Some(survivor) => Target::ById {
                        crm_id: survivor.clone(),
                        with_app_id: false,
                    },
                    // Gone at the last try and no merge has named it since: deleted in the CRM.
                    None if w.queued.attempts > 0
                        && w.prior.last_error.as_deref().is_some_and(|e| e.contains(GONE)) =>
                    {
                        Target::Upsert { forget_crm_id: true }
                    }
                    None => Target::ById {
                        crm_id: crm_id.clone(),
                        with_app_id: !w.prior.follow_crm_id,
                    },
                }
            })
            .collect()
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
                targets.push(Err(Outcome::Applied {
                    crm_id: None,
                    created: false,
                    call: "no CRM call: never synced".into(),
                }));
                continue;
            };
            let target = survivors.get(crm_id).unwrap_or(crm_id).clone();
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
                outcomes.push(Outcome::Applied {
                    crm_id: None,
                    created: false,
                    call: "no CRM call: never synced".into(),
                });
                continue;
            };
            let target = survivors.get(crm_id).unwrap_or(crm_id);
            let result = self
                .worker
                .call(deadline, report, || self.crm.erase(&mapping.crm_object, target))
                .await;
            outcomes.extend(super::per_input(result, 1));
        }
        outcomes
    }

    /// The survivor of each CRM id the CRM merged away (following chains of merges); ids never
    /// merged are absent. A store that cannot answer, or a loop, leaves an id as it is: its write
    /// then meets the dead id and waits.
    async fn survivors(&self, object: ObjectKind, crm_ids: &[String]) -> HashMap<String, String> {
        let mut current: HashMap<String, String> = HashMap::new();
        let mut asking: Vec<String> = crm_ids.to_vec();
        asking.sort();
        asking.dedup();
        for _ in 0..MAX_MERGE_HOPS {
            if asking.is_empty() {
                break;
            }
            let hops = match self.queries.merged_into(object, &asking).await {
                Ok(hops) => hops,
                Err(error) => {
                    tracing::warn!(error = ?anyhow::Error::from(error), "could not read the CRM's merges");
                    break;
                }
            };
            let mut next = Vec::new();
            for id in &asking {
                let Some(into) = hops.get(id) else { continue };
                // Every original id that had reached `id` moves on to `into`.
                let starts: Vec<String> = crm_ids
                    .iter()
                    .filter(|start| current.get(*start).unwrap_or(*start) == id)
                    .cloned()
                    .collect();
                for start in starts {
                    if start != *into {
                        current.insert(start, into.clone());
                    } else {
                        current.remove(&start);
                    }
                }
                next.push(into.clone());
            }
            next.sort();
            next.dedup();
            asking = next;
        }
        current.retain(|from, into| from != into);
        current
    }

    /// Writes the records targeted by id, in bulk; a record found gone is looked up among the
    /// CRM's merges once more (the merge may have arrived meanwhile) and written to the survivor,
    /// else it fails for a retry that waits for the merge.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_by_id(
        &self,
        object: ObjectKind,
        mapping: &ObjectMapping,
        inputs: &[UpsertInput],
        targets: &[Target],
        outcomes: &mut [Option<Outcome>],
        deadline: Instant,
        report: &mut BatchReport,
    ) {
        let mut pending: Vec<(usize, String, bool)> = targets
            .iter()
            .enumerate()
            .filter_map(|(index, target)| match target {
                Target::ById { crm_id, with_app_id } => Some((index, crm_id.clone(), *with_app_id)),
                Target::Upsert { .. } => None,
            })
            .collect();
        // Twice at most: the ids as known, then the survivors of those found gone.
        for round in 0..2 {
            if pending.is_empty() {
                break;
            }
            let updates: Vec<UpdateInput> = pending
                .iter()
                .map(|(index, crm_id, with_app_id)| {
                    let input = &inputs[*index];
                    let mut properties = input.properties.clone();
                    if *with_app_id {
                        properties.insert(mapping.id_property.clone(), input.key.clone());
                    }
                    UpdateInput {
                        crm_id: crm_id.clone(),
                        properties,
                        written_before: input.written_before.clone(),
                    }
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
            for ((index, crm_id, _), outcome) in pending.iter().zip(written) {
                if gone(&outcome) {
                    gone_ids.push((*index, crm_id.clone(), outcome));
                } else {
                    outcomes[*index] = Some(outcome);
                }
            }
            let survivors = if round == 0 && !gone_ids.is_empty() {
                let ids: Vec<String> = gone_ids.iter().map(|(_, id, _)| id.clone()).collect();
                self.survivors(object, &ids).await
            } else {
                HashMap::new()
            };
            pending = Vec::new();
            for (index, crm_id, outcome) in gone_ids {
                match survivors.get(&crm_id) {
                    Some(survivor) => pending.push((index, survivor.clone(), false)),
                    None => {
                        let call = match &outcome {
                            Outcome::Failed { call, .. } => call.clone(),
                            _ => None,
                        };
                        outcomes[index] = Some(Outcome::Failed {
                            kind: FailureKind::Transient,
                            error: format!(
                                "CRM record {crm_id} {GONE} (merged or deleted there): the retry waits for \
                                 the CRM's merge event, and creates the record anew if none names it"
                            ),
                            call,
                        });
                    }
                }
            }
        }
        for (index, _, _) in pending {
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
        assert!(!gone(&failed("INVALID_EMAIL: not an email")));
    }
}
