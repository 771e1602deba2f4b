//! A deal's link to a contact changed in the CRM: delivered to the app when the mapping gives the
//! CRM that link (`contact_link = "crm"`), journaled as a conflict when the app owns it (the
//! default: the app sets it with `contact_record_id`), dropped as an echo when an integration
//! (crm-sync linking each deal to its contact) made it.

use super::identity::IdentityEffects;
use super::{InboundService, Tally, WAITS_FOR_A_MERGE};
use crate::domain::contract::{parse_change, ObjectKind};
use crate::domain::inbound::{link_message, ConflictEntry, InboundMessage, LinkChange};
use crate::domain::mapping::Owner;
use crate::domain::sync::{RecordState, TimelineEntry, TimelineKind};
use crate::ports::{EventOutcome, InboundUpdate, OutgoingMessage};
use crate::worker::Disposition;

/// A link change waiting in a batch.
pub(super) struct LinkWork {
    pub message_id: String,
    pub attempts: u32,
    pub message: InboundMessage,
    pub change: LinkChange,
}

/// What a link change became.
enum Decided {
    Deliver,
    Conflict { app_contact: Option<String> },
    Echo,
    Stale,
}

/// Why a link change is not done now.
enum Later {
    /// No app record yet, or the like: an attempt counted.
    Wait(String),
    /// The deal is busy: back after a moment, no attempt counted.
    Busy,
    /// A store or the inbox failed: delivered again.
    Again,
}

impl InboundService {
    /// Carries out the batch's link changes, oldest first; their timeline lines go to `effects`.
    pub(super) async fn apply_links(
        &self,
        mut work: Vec<LinkWork>,
        batch: &mut Tally,
        effects: &mut IdentityEffects,
    ) {
        work.sort_by(|a, b| {
            (a.change.occurred_at_ms, &a.message.event_key)
                .cmp(&(b.change.occurred_at_ms, &b.message.event_key))
        });
        for item in work {
            let disposition = match self.apply_link(&item, batch.now_ms, effects).await {
                Ok((outcome, detail)) => {
                    match outcome {
                        EventOutcome::Applied => batch.report.applied += 1,
                        _ => batch.report.skipped += 1,
                    }
                    batch.outcomes.push((item.message.clone(), outcome, detail));
                    Disposition::Done
                }
                Err(Later::Wait(reason)) => self.retry(item.attempts, &reason),
                Err(Later::Busy) => Disposition::Retry {
                    delay: self.settings.busy_delay,
                    attempts: item.attempts,
                },
                Err(Later::Again) => Disposition::Redeliver,
            };
            batch.dispositions.insert(item.message_id.clone(), disposition);
        }
    }

    /// One link change: `Ok` with its outcome, or why it is done later.
    async fn apply_link(
        &self,
        item: &LinkWork,
        now_ms: i64,
        effects: &mut IdentityEffects,
    ) -> Result<(EventOutcome, String), Later> {
        let change = &item.change;
        let deal = self
            .queries
            .find_by_crm_id(ObjectKind::Deal, &change.crm_id)
            .await
            .map_err(|_| Later::Again)?;
        let Some(deal) = deal else {
            // The deal's first write may not have settled yet.
            let reason = format!("no app record has deal CRM id {}", change.crm_id);
            return if item.attempts < WAITS_FOR_A_MERGE {
                Err(Later::Wait(reason))
            } else {
                Ok((EventOutcome::Ignored, reason))
            };
        };
        let contact = self
            .queries
            .find_by_crm_id(ObjectKind::Contact, &change.contact_crm_id)
            .await
            .map_err(|_| Later::Again)?
            .map(|state| state.record.record_id);
        let owner = self
            .mapping
            .object(ObjectKind::Deal)
            .map_or(Owner::App, |mapping| mapping.contact_link);
        let app_contact = app_contact_of(&deal);
        let decided = match owner {
            // crm-sync links each deal to its contact through the API: its own link coming back.
            _ if change.from_integration => Decided::Echo,
            Owner::Crm => Decided::Deliver,
            Owner::App if !change.removed && app_contact.is_some() && app_contact == contact => Decided::Echo,
            // A link the app does not hold (one it moved away from) going away is no conflict.
            Owner::App if change.removed && app_contact != contact => Decided::Stale,
            Owner::App => Decided::Conflict { app_contact },
        };
        match decided {
            Decided::Echo => return Ok((EventOutcome::Echo, "crm-sync's own link".into())),
            Decided::Stale => {
                return Ok((
                    EventOutcome::Ignored,
                    "the unlinked contact is not the one the app links the deal to".into(),
                ))
            }
            _ => {}
        }
        let token = uuid::Uuid::new_v4().to_string();
        let record = deal.record.clone();
        let Some(states) = self
            .lease_all(std::slice::from_ref(&record), &token, now_ms)
            .await
        else {
            return Err(Later::Busy);
        };
        let state = &states[0];
        if state.acted_on(&item.message.event_key) {
            self.release_all(&states, &token, now_ms).await;
            return Ok((
                EventOutcome::Ignored,
                "a copy of an event already acted on for this record".into(),
            ));
        }
        let mut update = InboundUpdate::unchanged(state);
        update.acted_on(&item.message.event_key);
        let what = format!(
            "contact {} {} in the CRM ({})",
            contact
                .clone()
                .unwrap_or_else(|| format!("CRM record {}", change.contact_crm_id)),
            if change.removed { "unlinked" } else { "linked" },
            change.source
        );
        let (outcome, kind, detail) = match decided {
            Decided::Deliver => {
                update.inbox_sequence += 1;
                let message = link_message(
                    &record,
                    update.inbox_sequence,
                    &item.message.provider,
                    change,
                    contact.as_deref(),
                    &item.message.event_key,
                );
                if !self
                    .app_inbox
                    .send(&[OutgoingMessage::new(item.message_id.clone(), message)])
                    .await
                    .is_empty()
                {
                    self.release_all(&states, &token, now_ms).await;
                    return Err(Later::Again);
                }
                (
                    EventOutcome::Applied,
                    TimelineKind::Received,
                    format!("{what}: delivered to the app"),
                )
            }
            Decided::Conflict { app_contact } => {
                let open = update.conflict("(association)", change.occurred_at_ms, now_ms);
                let entry = ConflictEntry {
                    record: record.clone(),
                    at_ms: change.occurred_at_ms,
                    field: "(link) contact".into(),
                    crm_property: "(association)".into(),
                    app_value: app_contact.clone(),
                    crm_value: what.clone(),
                    source: change.source.clone(),
                    event_key: item.message.event_key.clone(),
                    resolution: if open {
                        "the app's link stands: the deal's next change links it again".into()
                    } else {
                        crate::inbound::OVERWRITTEN.into()
                    },
                    noted_at_ms: now_ms,
                };
                if self.history.append_conflicts(&[entry]).await.is_err() {
                    self.release_all(&states, &token, now_ms).await;
                    return Err(Later::Again);
                }
                (
                    EventOutcome::Conflict,
                    TimelineKind::Conflict,
                    format!(
                        "{what}; the app owns the deal's contact link ({:?}): the deal's next change links it again",
                        app_contact.unwrap_or_default()
                    ),
                )
            }
            Decided::Echo | Decided::Stale => unreachable!("returned above"),
        };
        match self.leases.settle_inbound(&record, &token, now_ms, &update).await {
            Ok(true) => {}
            _ => return Err(Later::Again),
        }
        effects.timeline.push(TimelineEntry {
            record,
            at_ms: change.occurred_at_ms,
            kind,
            idempotency_id: Some(item.message.event_key.clone()),
            detail: detail.clone(),
            call: None,
        });
        Ok((outcome, detail))
    }
}

/// The contact the app last linked the deal to: its newest change's `contact_record_id`.
fn app_contact_of(deal: &RecordState) -> Option<String> {
    deal.pending_change
        .as_deref()
        .or(deal.last_change.as_deref())
        .and_then(|body| parse_change(body).ok())
        .and_then(|change| change.contact_record_id)
}
