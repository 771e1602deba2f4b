//! Who a CRM record is, as people change it in the CRM: two records merged into one, a deleted
//! record restored, a contact erased for privacy. Pure: the inbound use case finds the app records
//! involved and carries out what these rules decide.

use serde_json::json;

use super::contract::{ObjectKind, RecordRef};
use super::crm::MergeSeen;
use super::sync::{RecordState, SyncStatus};
use super::webhook::{Delivery, InboundEvent, ProviderId};

/// Version of the app-inbox messages about identity (`shared/schemas/app-inbox.v2.json`); a
/// change of CRM-owned fields stays a version 1 message, as consumers of version 1 read it.
pub const APP_INBOX_IDENTITY_VERSION: u32 = 2;

/// How many app records one CRM id is looked up for: more than one is already an identity
/// conflict, and a handful names it well enough.
pub const MAX_HOLDERS: usize = 10;

/// The most records one merge event may name as merged away (HubSpot merges two at a time):
/// a longer list is refused when the delivery arrives.
pub const MAX_MERGED_IDS: usize = 16;

/// What an erased CRM id is recorded as merged into: nothing a write may follow.
pub const ERASED_MARK: &str = "~erased";

/// How many merges crm-sync follows from one CRM id to its survivor (a merged into b, b into c):
/// a longer chain, or a loop, is refused rather than followed forever.
pub const MAX_MERGE_HOPS: usize = 16;

/// The action of an inbound event that carries a [`MergeSeen`] read from the CRM.
pub const MERGE_SEEN_ACTION: &str = "merged";

/// The inbound-queue message (contract v1) for a merge read from the CRM rather than announced by
/// it: kind `{crm_object}.merged`, about the merged record. Its key names the merged record and
/// its survivor, which stay what they are however often the merge is read (reads overlap) or its
/// record touched later, so one merge is one event.
pub fn merge_seen_message(
    provider: ProviderId,
    crm_object: &str,
    seen: &MergeSeen,
    read_at_ms: i64,
) -> String {
    let raw = serde_json::value::to_raw_value(seen).expect("a merge always serializes");
    let delivery = Delivery::new(provider, raw.get().as_bytes().to_vec(), read_at_ms, 1);
    InboundEvent {
        provider,
        key: format!(
            "{provider}:{crm_object}:{}:{MERGE_SEEN_ACTION}:{}",
            seen.merged, seen.survivor
        ),
        kind: format!("{crm_object}.{MERGE_SEEN_ACTION}"),
        object_type: Some(crm_object.to_string()),
        object_id: Some(seen.merged.clone()),
        occurred_at_ms: seen.at_ms,
        raw,
    }
    .queue_message(&delivery)
}

/// What happened to a CRM record's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKind {
    /// The records `merged` are gone into the survivor (the change's `crm_id`). `primary` is
    /// the record the person merged into, when the CRM made a new record of the merge (HubSpot's
    /// contacts): its app record stays the survivor's owner.
    Merged {
        merged: Vec<String>,
        primary: Option<String>,
    },
    /// A deleted record is back, under its old id.
    Restored,
    /// A person's data was deleted for privacy (GDPR): nothing of it may be kept.
    Erased,
}

impl IdentityKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentityKind::Merged { .. } => "merged",
            IdentityKind::Restored => "restored",
            IdentityKind::Erased => "erased",
        }
    }
}

/// An identity event from the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    pub object: ObjectKind,
    /// The record the event is about; for a merge, the survivor.
    pub crm_id: String,
    pub kind: IdentityKind,
    pub occurred_at_ms: i64,
    /// The CRM's name for who made the change.
    pub source: String,
}

impl IdentityChange {
    /// A merge of `ids` (the records a CRM's event names, in any order, the survivor possibly
    /// among them) into `survivor`; `None` when nothing but the survivor is named.
    pub fn merge(
        object: ObjectKind,
        survivor: String,
        primary: Option<String>,
        ids: impl IntoIterator<Item = String>,
        occurred_at_ms: i64,
        source: String,
    ) -> Option<Self> {
        let mut merged: Vec<String> = ids
            .into_iter()
            .filter(|id| !id.is_empty() && *id != survivor)
            .collect();
        merged.sort();
        merged.dedup();
        if merged.is_empty() || survivor.is_empty() {
            return None;
        }
        let primary = primary.filter(|primary| *primary != survivor);
        Some(Self {
            object,
            crm_id: survivor,
            kind: IdentityKind::Merged { merged, primary },
            occurred_at_ms,
            source,
        })
    }
}

/// What an identity event changes in a record's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityUpdate {
    /// The CRM id the record moves to (a merge's survivor); it is written by id from now on.
    pub crm_id: Option<String>,
    /// With `crm_id`: the ids it was on, its current one included ([`RecordState::moved_to`]).
    pub previous_crm_ids: Vec<String>,
    /// Sets the record's identity conflict (see [`RecordState::identity_conflict`]).
    pub identity_conflict: Option<String>,
    /// The record's new status (an erased record is deleted).
    pub status: Option<SyncStatus>,
    /// Erased for privacy at this time: every value the state holds is forgotten (written,
    /// received, pending and last change, error, email index), the status becomes deleted.
    pub erased_at_ms: Option<i64>,
}

impl RecordState {
    /// The record's previous CRM ids once it moves to `crm_id`: its current one added (each once,
    /// the oldest dropped past [`MAX_MERGE_HOPS`]).
    pub fn moved_to(&self, crm_id: &str) -> Vec<String> {
        let mut previous = self.previous_crm_ids.clone();
        if let Some(current) = self.crm_id.as_ref().filter(|current| *current != crm_id) {
            previous.retain(|known| known != current);
            previous.push(current.clone());
        }
        let excess = previous.len().saturating_sub(MAX_MERGE_HOPS);
        previous.drain(..excess);
        previous
    }

    /// The state after an identity event (see [`IdentityUpdate`]); an erasure keeps the record's
    /// ids, its sequence and when it happened, and nothing else it held.
    pub fn apply_identity(&mut self, update: &IdentityUpdate) {
        if let Some(crm_id) = &update.crm_id {
            self.previous_crm_ids = self.moved_to(crm_id);
            self.crm_id = Some(crm_id.clone());
            self.follow_crm_id = true;
        }
        if let Some(reason) = &update.identity_conflict {
            self.identity_conflict = Some(reason.clone());
        }
        if let Some(status) = update.status {
            self.status = status;
        }
        if let Some(at_ms) = update.erased_at_ms {
            self.erased_at_ms = Some(at_ms);
            self.status = SyncStatus::Deleted;
            self.written.clear();
            self.received.clear();
            self.recent_writes.clear();
            self.claimed_writes.clear();
            self.inbound_at.clear();
            self.pending_change = None;
            self.last_change = None;
            self.last_error = None;
            self.retryable = false;
            self.open_conflicts = false;
            self.conflict_marks = Default::default();
            self.pending_since_ms = None;
        }
    }
}

/// An app record found on a CRM id, as a merge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub record: RecordRef,
    /// The CRM id it is linked to now.
    pub crm_id: String,
    /// Held by an earlier identity conflict: it owns nothing a merge makes while another can.
    pub held: bool,
}

/// What a merge does to the app records linked to its CRM ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergePlan {
    /// Records linked to a merged-away id, re-pointed to the survivor, with the id they had.
    pub moved: Vec<(RecordRef, String)>,
    /// Records that own the survivor: linked to it already, or to the record merged into.
    pub owners: Vec<RecordRef>,
}

impl MergePlan {
    /// Every app record now on the survivor, owners first, each once.
    pub fn records(&self) -> Vec<RecordRef> {
        let mut all: Vec<RecordRef> = self.owners.clone();
        for (record, _) in &self.moved {
            if !all.contains(record) {
                all.push(record.clone());
            }
        }
        all
    }

    /// Two app records or more on one CRM record: the app holds duplicates of one person (or a
    /// rep merged two people); an operator or the app decides.
    pub fn is_identity_conflict(&self) -> bool {
        self.records().len() > 1
    }

    /// Why a moved record's writes wait: the other app records on the survivor. An owner's
    /// writes never wait.
    pub fn conflict_reason(&self, record: &RecordRef, survivor: &str) -> Option<String> {
        if self.owners.contains(record) {
            return None;
        }
        let others: Vec<String> = self
            .records()
            .into_iter()
            .filter(|other| other != record)
            .map(|other| other.record_id)
            .collect();
        (!others.is_empty()).then(|| {
            format!(
                "identity conflict: merged in the CRM into {} CRM record {survivor}, which app record{} {} \
                 also hold{}; the app merges its records (a delete of {} unlinks it, leaving the CRM record \
                 alone), or an operator lets both share the CRM record",
                record.object,
                if others.len() == 1 { "" } else { "s" },
                others.join(", "),
                if others.len() == 1 { "s" } else { "" },
                record.record_id,
            )
        })
    }
}

/// Decides a merge: `holders` are the app records found on the survivor and on each merged-away
/// id. A record on a merged-away id moves; one on the survivor or on `primary` owns the result.
pub fn plan_merge(survivor: &str, primary: Option<&str>, merged: &[String], holders: &[Holder]) -> MergePlan {
    let mut plan = MergePlan::default();
    for holder in holders {
        let owner = holder.crm_id == survivor || Some(holder.crm_id.as_str()) == primary;
        if owner && !plan.owners.contains(&holder.record) {
            plan.owners.push(holder.record.clone());
        }
        if holder.crm_id != survivor
            && merged.contains(&holder.crm_id)
            && !plan.moved.iter().any(|(r, _)| *r == holder.record)
        {
            plan.moved.push((holder.record.clone(), holder.crm_id.clone()));
        }
    }
    plan.owners.sort();
    plan.moved.sort();
    // No app record was on the survivor or the primary: one of the moved ones owns the result,
    // the same one whichever delivery decides (one not held already, if there is one), so that
    // some record keeps writing.
    if plan.owners.is_empty() && plan.moved.len() > 1 {
        let held = |record: &RecordRef| holders.iter().any(|h| h.record == *record && h.held);
        let owner = plan
            .moved
            .iter()
            .find(|(record, _)| !held(record))
            .unwrap_or(&plan.moved[0])
            .0
            .clone();
        plan.owners.push(owner);
    }
    plan
}

/// Follows recorded merges from `crm_id` to the record that survives them all. `merged_into`
/// answers one hop; a chain longer than [`MAX_MERGE_HOPS`] or a loop is an error.
pub fn survivor_of(crm_id: &str, merged_into: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut current = crm_id.to_string();
    let mut seen = vec![current.clone()];
    for _ in 0..MAX_MERGE_HOPS {
        match merged_into(&current) {
            None => return Ok(current),
            Some(next) if seen.contains(&next) => {
                return Err(format!("the CRM's merges of record {crm_id} loop back to {next}"))
            }
            Some(next) => {
                seen.push(next.clone());
                current = next;
            }
        }
    }
    Err(format!(
        "CRM record {crm_id} was merged more than {MAX_MERGE_HOPS} times over"
    ))
}

/// The app-inbox message (version 2) telling the app that CRM records merged: which app records
/// are now the one CRM record, and which of them moved.
#[allow(clippy::too_many_arguments)]
pub fn merged_message(
    object: ObjectKind,
    crm: &str,
    survivor: &str,
    merged: &[String],
    plan: &MergePlan,
    occurred_at_ms: i64,
    source: &str,
    event_key: &str,
) -> String {
    let ids = |records: Vec<&RecordRef>| {
        records
            .into_iter()
            .map(|r| r.record_id.clone())
            .collect::<Vec<_>>()
    };
    json!({
        "version": APP_INBOX_IDENTITY_VERSION,
        "type": "crm.merged",
        "object": object.as_str(),
        "crm": crm,
        "crm_id": survivor,
        "merged_crm_ids": merged,
        "record_ids": ids(plan.records().iter().collect()),
        "moved_record_ids": ids(plan.moved.iter().map(|(r, _)| r).collect()),
        "identity_conflict": plan.is_identity_conflict(),
        "occurred_at": super::clock::rfc3339(occurred_at_ms),
        "occurred_at_ms": occurred_at_ms,
        "source": source,
        "event_key": event_key,
    })
    .to_string()
}

/// The app-inbox message (version 2) for a record restored or erased in the CRM.
#[allow(clippy::too_many_arguments)]
pub fn record_message(
    kind: &IdentityKind,
    record: &RecordRef,
    sequence: u64,
    crm: &str,
    crm_id: &str,
    occurred_at_ms: i64,
    source: &str,
    event_key: &str,
) -> String {
    json!({
        "version": APP_INBOX_IDENTITY_VERSION,
        "type": format!("crm.{}", kind.as_str()),
        "object": record.object.as_str(),
        "record_id": record.record_id,
        "crm": crm,
        "crm_id": crm_id,
        "occurred_at": super::clock::rfc3339(occurred_at_ms),
        "occurred_at_ms": occurred_at_ms,
        "source": source,
        "event_key": event_key,
        "sequence": sequence,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn contact(id: &str) -> RecordRef {
        RecordRef {
            object: ObjectKind::Contact,
            record_id: id.into(),
        }
    }

    fn holder(id: &str, crm_id: &str) -> Holder {
        Holder {
            record: contact(id),
            crm_id: crm_id.into(),
            held: false,
        }
    }

    #[test]
    fn a_merge_names_only_the_records_other_than_the_survivor_each_once() {
        let change = IdentityChange::merge(
            ObjectKind::Contact,
            "9".into(),
            None,
            ["5", "9", "5", "", "6"].map(String::from),
            1,
            "CRM_UI".into(),
        )
        .unwrap();
        assert_eq!(
            change.kind,
            IdentityKind::Merged {
                merged: vec!["5".into(), "6".into()],
                primary: None
            }
        );
        assert!(
            IdentityChange::merge(ObjectKind::Contact, "9".into(), None, ["9".into()], 1, "x".into())
                .is_none()
        );
    }

    #[test]
    fn a_record_on_a_merged_away_id_moves_and_one_on_the_survivor_stays() {
        let plan = plan_merge(
            "9",
            None,
            &["5".into()],
            &[holder("a", "9"), holder("b", "5"), holder("c", "77")],
        );
        assert_eq!(plan.owners, vec![contact("a")]);
        assert_eq!(plan.moved, vec![(contact("b"), "5".to_string())]);
        assert!(plan.is_identity_conflict());
        let reason = plan.conflict_reason(&contact("b"), "9").unwrap();
        assert!(reason.contains("app record a also holds"), "{reason}");
        assert!(reason.contains("CRM record 9"), "{reason}");
    }

    #[test]
    fn one_app_record_moved_alone_is_no_identity_conflict() {
        let plan = plan_merge("9", None, &["5".into()], &[holder("b", "5")]);
        assert!(!plan.is_identity_conflict());
        assert_eq!(plan.conflict_reason(&contact("b"), "9"), None);
        // Found twice (on two ids of one event) is still one record.
        let plan = plan_merge(
            "9",
            None,
            &["5".into(), "6".into()],
            &[holder("b", "5"), holder("b", "5")],
        );
        assert_eq!(plan.moved.len(), 1);
    }

    #[test]
    fn when_a_merge_makes_a_new_record_the_primarys_app_record_owns_it_and_only_the_others_wait() {
        // HubSpot merged contact 5 into 4 and made contact 9 of them.
        let plan = plan_merge(
            "9",
            Some("4"),
            &["4".into(), "5".into()],
            &[holder("a", "4"), holder("b", "5")],
        );
        assert_eq!(plan.owners, vec![contact("a")]);
        assert_eq!(plan.moved.len(), 2, "both move to the new record");
        assert_eq!(plan.conflict_reason(&contact("a"), "9"), None);
        assert!(plan.conflict_reason(&contact("b"), "9").is_some());
        assert_eq!(plan.records(), vec![contact("a"), contact("b")]);
    }

    #[test]
    fn a_merge_of_two_app_records_onto_a_record_of_neither_makes_the_first_of_them_the_owner() {
        let plan = plan_merge(
            "9",
            None,
            &["5".into(), "6".into()],
            &[holder("c", "6"), holder("b", "5")],
        );
        assert_eq!(plan.owners, vec![contact("b")]);
        assert_eq!(plan.conflict_reason(&contact("b"), "9"), None);
        assert!(plan.conflict_reason(&contact("c"), "9").is_some());
    }

    #[test]
    fn a_held_record_merged_on_with_its_owner_does_not_become_the_owner() {
        // a owns 9 and b is held on it; the CRM merges 9 into 12 (a new record).
        let mut b = holder("b", "9");
        b.held = true;
        let plan = plan_merge("12", None, &["9".into()], &[b, holder("c", "9")]);
        assert_eq!(plan.owners, vec![contact("c")]);
        assert!(plan.conflict_reason(&contact("b"), "12").is_some());
    }

    #[test]
    fn merges_are_followed_along_a_chain_and_a_loop_or_an_endless_chain_is_refused() {
        let hops = |id: &str| match id {
            "a" => Some("b".to_string()),
            "b" => Some("c".to_string()),
            _ => None,
        };
        assert_eq!(survivor_of("a", hops).unwrap(), "c");
        assert_eq!(survivor_of("c", hops).unwrap(), "c");
        let looped = |id: &str| Some(if id == "a" { "b" } else { "a" }.to_string());
        assert!(survivor_of("a", looped).unwrap_err().contains("loop"));
        let endless = |id: &str| Some(format!("{id}x"));
        assert!(survivor_of("a", endless).unwrap_err().contains("more than 16"));
    }

    fn schema_of(kind: &str) -> Value {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/app-inbox.v2.json")).unwrap();
        schema["$defs"][kind].clone()
    }

    fn keys(value: &Value) -> std::collections::BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn identity_messages_have_exactly_the_fields_their_published_schema_declares() {
        let plan = plan_merge("9", None, &["5".into()], &[holder("a", "9"), holder("b", "5")]);
        let merged: Value = serde_json::from_str(&merged_message(
            ObjectKind::Contact,
            "hubspot",
            "9",
            &["5".into()],
            &plan,
            1_795_774_800_000,
            "CRM_UI",
            "k",
        ))
        .unwrap();
        assert_eq!(keys(&merged), keys(&schema_of("merged")["properties"]));
        assert_eq!(merged["record_ids"], json!(["a", "b"]));
        assert_eq!(merged["moved_record_ids"], json!(["b"]));
        assert_eq!(merged["identity_conflict"], true);
        for kind in [IdentityKind::Restored, IdentityKind::Erased] {
            let message: Value = serde_json::from_str(&record_message(
                &kind,
                &contact("a"),
                4,
                "hubspot",
                "9",
                1,
                "CRM_UI",
                "k",
            ))
            .unwrap();
            assert_eq!(keys(&message), keys(&schema_of("record")["properties"]));
            assert_eq!(message["type"], format!("crm.{}", kind.as_str()));
        }
    }
}
