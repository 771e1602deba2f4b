//! CRM → app: what a stored webhook event means for an app record, field by field, under the
//! ownership rules. Pure: the inbound use case feeds it the event, the record's state and the
//! mapping, and carries out the decisions.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::contract::{ContractError, ObjectKind, RecordRef};
use super::mapping::{ObjectMapping, Owner};
use super::sync::RecordState;

/// Version of the app-inbox message contract (`shared/schemas/app-inbox.v1.json`).
pub const APP_INBOX_CONTRACT_VERSION: u32 = 1;

/// An inbound-queue message (contract v1, written by the webhook function).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub provider: String,
    pub event_key: String,
    /// The delivery that carried it, and when that arrived (kept with the event's outcome).
    pub delivery_id: Option<String>,
    pub received_at_ms: Option<i64>,
    pub kind: String,
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    pub occurred_at_ms: i64,
    pub event: Value,
}

/// Reads an inbound-queue message.
pub fn parse_inbound(body: &str) -> Result<InboundMessage, ContractError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|_| ContractError("the inbound message is not valid JSON".into()))?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
    if value.get("version").and_then(Value::as_u64)
        != Some(u64::from(super::webhook::INBOUND_CONTRACT_VERSION))
    {
        return Err(ContractError("the inbound message is not version 1".into()));
    }
    Ok(InboundMessage {
        provider: text("provider").ok_or_else(|| ContractError("`provider` is required".into()))?,
        event_key: text("event_key").ok_or_else(|| ContractError("`event_key` is required".into()))?,
        delivery_id: text("delivery_id"),
        received_at_ms: value.get("received_at_ms").and_then(Value::as_i64),
        kind: text("kind").ok_or_else(|| ContractError("`kind` is required".into()))?,
        object_type: text("object_type"),
        object_id: text("object_id"),
        occurred_at_ms: value
            .get("occurred_at_ms")
            .and_then(Value::as_i64)
            .ok_or_else(|| ContractError("`occurred_at_ms` is required".into()))?,
        event: value.get("event").cloned().unwrap_or(Value::Null),
    })
}

/// A change the CRM reports about one of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmChange {
    pub object: ObjectKind,
    pub crm_id: String,
    pub occurred_at_ms: i64,
    /// The CRM's name for who made the change (`CRM_UI`, `INTEGRATION`, ...).
    pub source: String,
    /// The CRM says the change came through an API integration (possibly crm-sync itself).
    pub from_integration: bool,
    /// The event reports the record's creation.
    pub created: bool,
    /// CRM property → new value; `None` when the event carries no values (a creation) or hides
    /// them, and they must be read from the CRM.
    pub properties: Option<BTreeMap<String, String>>,
}

/// Which record an object event is about: its kind split at the dot, the app object the CRM's
/// type maps to, and the CRM id.
#[derive(Debug)]
pub struct EventSubject<'a> {
    pub prefix: &'a str,
    pub action: &'a str,
    pub object: ObjectKind,
    pub crm_id: String,
}

/// Reads `{type}.{action}` and the object id of an event; `object_of` names the CRM types that are
/// synced. Anything else is an [`Interpretation::Ignore`] with its reason.
pub fn event_subject(
    message: &InboundMessage,
    object_of: impl Fn(&str) -> Option<ObjectKind>,
) -> Result<EventSubject<'_>, Interpretation> {
    let Some((prefix, action)) = message.kind.split_once('.') else {
        return Err(Interpretation::Ignore(format!(
            "`{}` is not an object event",
            message.kind
        )));
    };
    let Some(object) = object_of(prefix) else {
        return Err(Interpretation::Ignore(
            match message.object_type.as_deref().filter(|_| prefix == "object") {
                // A generic event names its type by id: say which, so that a mapping that names a
                // custom object otherwise can be told why its events are not read.
                Some(type_id) => format!("{prefix} events of objectTypeId {type_id} are not synced"),
                None => format!("{prefix} events are not synced"),
            },
        ));
    };
    let Some(crm_id) = message.object_id.clone() else {
        return Err(Interpretation::Ignore("the event names no object".into()));
    };
    Ok(EventSubject {
        prefix,
        action,
        object,
        crm_id,
    })
}

/// What an event is, for crm-sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpretation {
    Change(CrmChange),
    /// Who a record is changed: a merge, a restore, a privacy deletion.
    Identity(super::identity::IdentityChange),
    /// A deal's link to a contact added or removed in the CRM.
    Link(LinkChange),
    /// Not something crm-sync acts on, and why.
    Ignore(String),
}

/// A deal's association with a contact, added or removed in the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    /// The deal's CRM id.
    pub crm_id: String,
    pub contact_crm_id: String,
    pub removed: bool,
    pub occurred_at_ms: i64,
    pub source: String,
    /// The CRM says an API integration made it (crm-sync links each deal to its contact).
    pub from_integration: bool,
}

/// The app-inbox message (version 2) for a deal's link to a contact changed in the CRM, when
/// the mapping gives the CRM that link (`contact_link = "crm"`).
#[allow(clippy::too_many_arguments)]
pub fn link_message(
    record: &RecordRef,
    sequence: u64,
    crm: &str,
    link: &LinkChange,
    contact_record_id: Option<&str>,
    event_key: &str,
) -> String {
    json!({
        "version": super::identity::APP_INBOX_IDENTITY_VERSION,
        "type": "crm.link",
        "object": record.object.as_str(),
        "record_id": record.record_id,
        "link": "contact",
        "linked_record_id": contact_record_id,
        "crm": crm,
        "crm_id": link.crm_id,
        "linked_crm_id": link.contact_crm_id,
        "removed": link.removed,
        "occurred_at": super::clock::rfc3339(link.occurred_at_ms),
        "occurred_at_ms": link.occurred_at_ms,
        "source": link.source,
        "event_key": event_key,
        "sequence": sequence,
    })
    .to_string()
}

/// What to do with one property of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldDecision {
    /// A CRM-owned field changed: tell the app.
    Deliver { field: String, value: String },
    /// An app-owned field changed in the CRM: journal it, do not apply it.
    Conflict {
        field: String,
        app_value: Option<String>,
        crm_value: String,
    },
    /// crm-sync's own write coming back.
    Echo,
    /// An older change than one already applied for this field.
    Stale,
    /// Nothing to act on: the mapping does not know the property, or the CRM reports empty a field
    /// the other side never held a value for.
    Unmapped,
}

/// Decides one property change of `record` under the mapping's ownership rules.
pub fn decide(
    mapping: &ObjectMapping,
    state: &RecordState,
    change: &CrmChange,
    property: &str,
    value: &str,
) -> FieldDecision {
    if property == mapping.id_property {
        // crm-sync writes the id property with every upsert.
        return if value == state.record.record_id {
            FieldDecision::Echo
        } else {
            FieldDecision::Unmapped
        };
    }
    let Some((field, rule)) = mapping
        .fields
        .iter()
        .find(|(_, rule)| rule.crm_property == property)
    else {
        return FieldDecision::Unmapped;
    };
    let written = state.written.get(property);
    // Strictly older only: a creation and its property changes share one time.
    if state
        .inbound_at
        .get(property)
        .is_some_and(|at| *at > change.occurred_at_ms)
    {
        // A person's edit of an app-owned field is a conflict even when a newer value has
        // replaced it since (webhooks arrive in any order); a late report from an integration is
        // most likely one of crm-sync's own earlier writes, so it is only dropped.
        let rival_edit = rule.owner == Owner::App
            && !change.from_integration
            && written.map_or(!value.is_empty(), |w| !same_value(w, value));
        return if rival_edit {
            FieldDecision::Conflict {
                field: field.clone(),
                app_value: written.cloned(),
                crm_value: value.to_string(),
            }
        } else {
            FieldDecision::Stale
        };
    }
    // A value crm-sync wrote, last or lately, reported back as an integration's change: our own
    // echo, however late or out of order it arrives.
    if change.from_integration && state.wrote_recently(property, value) {
        return FieldDecision::Echo;
    }
    match rule.owner {
        Owner::Crm => {
            if state.received.get(property).is_some_and(|r| same_value(r, value)) {
                return FieldDecision::Echo;
            }
            // Still empty, as far as the app was ever told: nothing to deliver.
            if value.is_empty() && !state.received.contains_key(property) {
                return FieldDecision::Unmapped;
            }
            FieldDecision::Deliver {
                field: field.clone(),
                value: value.to_string(),
            }
        }
        // The CRM now says what the app says: nothing to resolve.
        Owner::App if written.is_some_and(|w| same_value(w, value)) => FieldDecision::Echo,
        // An empty field the app never wrote: a CRM that reports every field (Salesforce)
        // says so of each one it does not hold, and there is nothing to disagree with.
        Owner::App if written.is_none() && value.is_empty() => FieldDecision::Unmapped,
        Owner::App => FieldDecision::Conflict {
            field: field.clone(),
            app_value: written.cloned(),
            crm_value: value.to_string(),
        },
    }
}

/// Whether two renderings are the same value: equal text, or equal numbers (Salesforce reports
/// a currency field written as `100` as `100.0`).
/// Only plain decimals compare as numbers, and only when one has a fraction: `0123` and `123`
/// stay different (a phone number, a code).
pub fn same_value(a: &str, b: &str) -> bool {
    let decimal = |text: &str| {
        let digits = text.strip_prefix('-').unwrap_or(text);
        !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.chars().filter(|c| *c == '.').count() <= 1
    };
    a == b
        || (decimal(a)
            && decimal(b)
            && (a.contains('.') || b.contains('.'))
            && a.parse::<f64>().ok() == b.parse::<f64>().ok()
            && a.parse::<f64>().is_ok())
}

/// One entry of a record's conflict journal: both values, where the CRM's came from, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictEntry {
    pub record: RecordRef,
    /// When the CRM-side change happened.
    pub at_ms: i64,
    pub field: String,
    pub crm_property: String,
    pub app_value: Option<String>,
    pub crm_value: String,
    pub source: String,
    pub event_key: String,
    /// `not applied: the app keeps its value, the CRM the person's until crm-sync writes the field again` or `re-asserted the app's value in the CRM`.
    pub resolution: String,
    /// When crm-sync journaled it, by its own clock and under the record's lease: what a later
    /// write or dismissal of the record is compared with.
    pub noted_at_ms: i64,
}

/// Where a record's conflicts stand, per CRM property: when the newest still open one was
/// journaled, and when crm-sync last wrote the app's value of a conflicted property to the CRM
/// again (which resolves its conflicts journaled up to then). Both by crm-sync's clock, under
/// the record's lease, so that their order is the order things happened to the record. Kept on
/// the record's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictMarks {
    pub open: BTreeMap<String, i64>,
    pub reasserted: BTreeMap<String, i64>,
}

impl ConflictMarks {
    /// A conflict on `property` happened at `at_ms`.
    pub fn open(&mut self, property: &str, at_ms: i64) {
        let at = self.open.entry(property.to_string()).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// The app's values of `written` are in the CRM again at `now_ms`: the conflicts open on
    /// them are resolved. Returns the properties resolved (none when none was open on them).
    pub fn reassert<'a>(
        &mut self,
        written: impl IntoIterator<Item = &'a String>,
        now_ms: i64,
    ) -> Vec<String> {
        let mut resolved = Vec::new();
        for property in written {
            // Every write is remembered, conflict or not: a late event of an edit it overwrote
            // must open nothing. A mark read under the lease was noted before this write.
            let at = match self.open.remove(property) {
                Some(open_at) => {
                    resolved.push(property.clone());
                    now_ms.max(open_at)
                }
                None => now_ms,
            };
            let known = self.reasserted.entry(property.clone()).or_insert(at);
            *known = (*known).max(at);
        }
        resolved
    }
}

/// The mark of a record flagged before conflicts had marks: which property it was on is not
/// known, so no write resolves it; a dismissal does.
pub const BEFORE_MARKS: &str = "(before marks)";

/// Where one journaled conflict stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictStatus {
    /// The CRM holds the person's value; the app keeps its own.
    Open,
    /// The app's value was written to the CRM again at this time.
    Resolved(i64),
    /// An operator dismissed it at this time.
    Dismissed(i64),
    /// Off the open listing by an older rule (before conflicts had a lifecycle).
    Closed,
}

/// Where `entry` stands by its record's marks, dismissal and open flag.
pub fn conflict_status(
    entry: &ConflictEntry,
    marks: &ConflictMarks,
    dismissed_at_ms: Option<i64>,
    flagged: bool,
) -> ConflictStatus {
    if let Some(at) = marks
        .reasserted
        .get(&entry.crm_property)
        .filter(|at| **at >= entry.noted_at_ms)
    {
        return ConflictStatus::Resolved(*at);
    }
    if let Some(at) = dismissed_at_ms.filter(|at| *at >= entry.noted_at_ms) {
        return ConflictStatus::Dismissed(at);
    }
    // Open while its property's mark is (or, for a record flagged before marks, the flag).
    let marked =
        marks.open.contains_key(&entry.crm_property) || (flagged && marks.open.contains_key(BEFORE_MARKS));
    if marked && entry.resolution != OVERWRITTEN {
        return ConflictStatus::Open;
    }
    match marks.reasserted.get(&entry.crm_property) {
        // Journaled after a write that had overwritten it already.
        Some(at) if entry.resolution == OVERWRITTEN => ConflictStatus::Resolved(*at),
        _ => ConflictStatus::Closed,
    }
}

/// The resolution of a CRM change dated before crm-sync's last write of the field, which had
/// overwritten it already.
pub const OVERWRITTEN: &str =
    "not applied, and already overwritten: crm-sync wrote the app's value to the CRM after this change";

/// The app-inbox message for CRM-owned fields of one record that changed: contract v1 for the
/// built-in types, version 2 (the same shape) for a type the mapping declares, so that a
/// consumer of version 1 never meets an object it does not know.
/// `sequence` numbers the record's messages in the order crm-sync decided them: it orders two
/// changes that happened in the same millisecond.
#[allow(clippy::too_many_arguments)]
pub fn app_inbox_message(
    record: &RecordRef,
    sequence: u64,
    crm: &str,
    crm_id: &str,
    changes: &BTreeMap<String, String>,
    occurred_at_ms: i64,
    source: &str,
    event_key: &str,
) -> String {
    let version = if record.object.is_built_in() {
        APP_INBOX_CONTRACT_VERSION
    } else {
        super::identity::APP_INBOX_IDENTITY_VERSION
    };
    json!({
        "version": version,
        "type": "crm.change",
        "object": record.object.as_str(),
        "record_id": record.record_id,
        "crm": crm,
        "crm_id": crm_id,
        "changes": changes,
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

    fn journaled(property: &str, at_ms: i64) -> ConflictEntry {
        ConflictEntry {
            record: crate::domain::contract::RecordRef {
                object: crate::domain::contract::ObjectKind::Contact,
                record_id: "u-1".into(),
            },
            at_ms,
            field: property.into(),
            crm_property: property.into(),
            app_value: Some("app".into()),
            crm_value: "crm".into(),
            source: "CRM_UI".into(),
            event_key: "e".into(),
            resolution: String::new(),
            noted_at_ms: at_ms,
        }
    }

    #[test]
    fn a_late_event_of_an_edit_made_before_crm_syncs_write_is_journaled_but_not_opened() {
        let mut update = crate::ports::InboundUpdate::unchanged(&crate::domain::sync::RecordState::new(
            journaled("email", 0).record,
        ));
        // A write of email with no conflict open on it: remembered all the same.
        update.conflict_marks.reassert(&["email".to_string()], 100);
        assert_eq!(update.conflict_marks.reasserted["email"], 100);
        assert!(
            !update.conflict("email", 95, 120),
            "the write at 100 overwrote the edit at 95"
        );
        assert!(update.conflict_marks.open.is_empty() && !update.flag_conflicts);
        assert!(
            update.conflict("email", 105, 120),
            "an edit after the write stands"
        );
        assert_eq!(
            update.conflict_marks.open["email"], 120,
            "marked when noted, by crm-sync's clock"
        );
        assert!(update.flag_conflicts);
        assert_eq!(update.new_conflicts, 2, "both are journaled");
    }

    #[test]
    fn a_conflicts_status_compares_crm_syncs_own_times_never_the_crms() {
        let mut entry = journaled("email", 500);
        // Noted at 120 by crm-sync though the CRM dated it 500 (its clock ahead).
        entry.noted_at_ms = 120;
        let mut marks = ConflictMarks {
            open: Default::default(),
            reasserted: [("email".to_string(), 130)].into(),
        };
        assert_eq!(
            conflict_status(&entry, &marks, None, false),
            ConflictStatus::Resolved(130)
        );
        entry.noted_at_ms = 140;
        marks.open("email", 140);
        assert_eq!(conflict_status(&entry, &marks, None, true), ConflictStatus::Open);
        // Journaled as already overwritten: never open, whatever else keeps the record flagged.
        let mut late = journaled("email", 90);
        late.resolution = OVERWRITTEN.to_string();
        late.noted_at_ms = 150;
        assert_eq!(
            conflict_status(&late, &marks, None, true),
            ConflictStatus::Resolved(130)
        );
    }

    #[test]
    fn a_write_of_a_conflicted_property_resolves_its_conflicts_up_to_then_and_only_those() {
        let mut marks = ConflictMarks::default();
        marks.open("email", 100);
        marks.open("email", 90);
        marks.open("phone", 120);
        assert_eq!(marks.open["email"], 100, "the newest conflict's time");
        let resolved = marks.reassert(&["email".to_string(), "name".to_string()], 200);
        assert_eq!(resolved, ["email"]);
        assert_eq!(marks.open.keys().collect::<Vec<_>>(), ["phone"]);
        let email = journaled("email", 100);
        assert_eq!(
            conflict_status(&email, &marks, None, true),
            ConflictStatus::Resolved(200)
        );
        assert_eq!(
            conflict_status(&journaled("phone", 120), &marks, None, true),
            ConflictStatus::Open
        );
        // A conflict after the write is open again.
        marks.open("email", 300);
        assert_eq!(
            conflict_status(&journaled("email", 300), &marks, None, true),
            ConflictStatus::Open
        );
        assert_eq!(
            conflict_status(&journaled("phone", 120), &marks, Some(150), false),
            ConflictStatus::Dismissed(150)
        );
        assert_eq!(
            conflict_status(&journaled("x", 1), &marks, None, false),
            ConflictStatus::Closed
        );
        assert!(
            marks.reassert(&["name".to_string()], 300).is_empty(),
            "nothing was open on it"
        );
        assert_eq!(marks.reasserted["name"], 300, "but the write is remembered");
        // A write claimed before a mark it read was noted resolves as of the mark.
        let mut marks = ConflictMarks::default();
        marks.open("phone", 500);
        marks.reassert(&["phone".to_string()], 450);
        assert_eq!(marks.reasserted["phone"], 500);
    }
    use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};

    fn change(properties: &[(&str, &str)], at: i64, from_integration: bool) -> CrmChange {
        CrmChange {
            object: ObjectKind::Deal,
            crm_id: "7".into(),
            occurred_at_ms: at,
            source: if from_integration { "INTEGRATION" } else { "CRM_UI" }.into(),
            from_integration,
            created: false,
            properties: Some(
                properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    fn state() -> RecordState {
        let mut state = RecordState::new(RecordRef {
            object: ObjectKind::Deal,
            record_id: "d".into(),
        });
        state.written.insert("dealname".into(), "Pro plan".into());
        state
    }

    fn deals() -> ObjectMapping {
        Mapping::parse(DEFAULT_MAPPING)
            .unwrap()
            .object(ObjectKind::Deal)
            .unwrap()
            .clone()
    }

    #[test]
    fn an_integrations_report_of_any_recent_write_is_an_echo_and_a_persons_is_a_conflict() {
        let mut state = state();
        let mut earlier = BTreeMap::new();
        earlier.insert("dealname".to_string(), "Starter plan".to_string());
        crate::domain::sync::remember_writes(&mut state.recent_writes, &earlier);
        crate::domain::sync::remember_writes(&mut state.recent_writes, &state.written.clone());
        let late = change(&[], 10, true);
        assert_eq!(
            decide(&deals(), &state, &late, "dealname", "Starter plan"),
            FieldDecision::Echo
        );
        assert!(matches!(
            decide(
                &deals(),
                &state,
                &change(&[], 10, false),
                "dealname",
                "Starter plan"
            ),
            FieldDecision::Conflict { .. }
        ));
        assert!(matches!(
            decide(&deals(), &state, &late, "dealname", "Never written"),
            FieldDecision::Conflict { .. }
        ));
    }

    #[test]
    fn a_crm_owned_field_is_delivered_under_its_app_name() {
        let decision = decide(
            &deals(),
            &state(),
            &change(&[], 10, false),
            "dealstage",
            "closedwon",
        );
        assert_eq!(
            decision,
            FieldDecision::Deliver {
                field: "stage".into(),
                value: "closedwon".into()
            }
        );
    }

    #[test]
    fn an_app_owned_field_changed_in_the_crm_is_a_conflict_with_both_values() {
        let decision = decide(
            &deals(),
            &state(),
            &change(&[], 10, false),
            "dealname",
            "Rep's name",
        );
        assert_eq!(
            decision,
            FieldDecision::Conflict {
                field: "name".into(),
                app_value: Some("Pro plan".into()),
                crm_value: "Rep's name".into()
            }
        );
    }

    #[test]
    fn our_own_write_coming_back_is_an_echo_not_a_conflict() {
        assert_eq!(
            decide(&deals(), &state(), &change(&[], 10, true), "dealname", "Pro plan"),
            FieldDecision::Echo
        );
        // A different value from an integration is still a conflict: someone else's integration.
        assert!(matches!(
            decide(&deals(), &state(), &change(&[], 10, true), "dealname", "Other"),
            FieldDecision::Conflict { .. }
        ));
    }

    #[test]
    fn a_number_the_crm_renders_with_a_fraction_is_the_value_the_app_wrote() {
        let mut state = state();
        state.written.insert("amount".into(), "100".into());
        assert_eq!(
            decide(&deals(), &state, &change(&[], 10, false), "amount", "100.0"),
            FieldDecision::Echo
        );
        assert!(matches!(
            decide(&deals(), &state, &change(&[], 10, false), "amount", "100.5"),
            FieldDecision::Conflict { .. }
        ));
        assert!(same_value("-1.50", "-1.5"));
        assert!(
            !same_value("0123", "123"),
            "codes and phone numbers keep their zeros"
        );
        assert!(!same_value("1e2", "100.0"));
        assert!(!same_value("NaN", "NaN.0"));
    }

    #[test]
    fn an_empty_crm_field_the_app_never_wrote_is_no_conflict_but_a_filled_one_is() {
        assert_eq!(
            decide(&deals(), &state(), &change(&[], 10, false), "amount", ""),
            FieldDecision::Unmapped
        );
        // Likewise a CRM-owned field never delivered, until it is cleared after a delivery.
        assert_eq!(
            decide(&deals(), &state(), &change(&[], 10, false), "dealstage", ""),
            FieldDecision::Unmapped
        );
        let mut delivered = state();
        delivered.received.insert("dealstage".into(), "won".into());
        assert!(matches!(
            decide(&deals(), &delivered, &change(&[], 10, false), "dealstage", ""),
            FieldDecision::Deliver { .. }
        ));
        assert!(matches!(
            decide(&deals(), &state(), &change(&[], 10, false), "amount", "5"),
            FieldDecision::Conflict { app_value: None, .. }
        ));
    }

    #[test]
    fn an_older_change_than_the_last_applied_one_for_the_field_is_stale() {
        let mut state = state();
        state.inbound_at.insert("dealstage".into(), 20);
        assert_eq!(
            decide(&deals(), &state, &change(&[], 19, false), "dealstage", "x"),
            FieldDecision::Stale
        );
        // The same time is not older: a creation and its property changes share one.
        assert!(matches!(
            decide(&deals(), &state, &change(&[], 20, false), "dealstage", "x"),
            FieldDecision::Deliver { .. }
        ));
        assert!(matches!(
            decide(&deals(), &state, &change(&[], 21, false), "dealstage", "x"),
            FieldDecision::Deliver { .. }
        ));
    }

    #[test]
    fn a_reps_edit_of_an_app_owned_field_reported_late_is_still_a_conflict() {
        let mut state = state();
        state.inbound_at.insert("dealname".into(), 20);
        assert_eq!(
            decide(
                &deals(),
                &state,
                &change(&[], 19, false),
                "dealname",
                "Rep's name"
            ),
            FieldDecision::Conflict {
                field: "name".into(),
                app_value: Some("Pro plan".into()),
                crm_value: "Rep's name".into()
            }
        );
        // A late report from an integration is most likely our own earlier write.
        assert_eq!(
            decide(&deals(), &state, &change(&[], 19, true), "dealname", "Older plan"),
            FieldDecision::Stale
        );
    }

    #[test]
    fn the_id_property_crm_sync_wrote_is_an_echo() {
        assert_eq!(
            decide(&deals(), &state(), &change(&[], 1, true), "crm_sync_app_id", "d"),
            FieldDecision::Echo
        );
        assert_eq!(
            decide(&deals(), &state(), &change(&[], 1, false), "crm_sync_app_id", "x"),
            FieldDecision::Unmapped
        );
    }

    #[test]
    fn an_unmapped_property_is_left_alone() {
        assert_eq!(
            decide(
                &deals(),
                &state(),
                &change(&[], 1, false),
                "hs_lastmodifieddate",
                "1"
            ),
            FieldDecision::Unmapped
        );
    }

    /// A HubSpot change message of `record`, read back as JSON.
    fn message_of(
        record: &RecordRef,
        sequence: u64,
        crm_id: &str,
        changes: &BTreeMap<String, String>,
    ) -> Value {
        serde_json::from_str(&app_inbox_message(
            record,
            sequence,
            "hubspot",
            crm_id,
            changes,
            1_795_774_800_000,
            "CRM_UI",
            "k",
        ))
        .unwrap()
    }

    #[test]
    fn the_app_inbox_message_has_exactly_the_fields_its_published_schema_declares() {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/app-inbox.v1.json")).unwrap();
        let record = RecordRef {
            object: ObjectKind::Deal,
            record_id: "order-7".into(),
        };
        let changes: BTreeMap<String, String> = [("stage".to_string(), "closedwon".to_string())].into();
        let message: Value = message_of(&record, 3, "18237", &changes);
        let produced: std::collections::BTreeSet<&String> = message.as_object().unwrap().keys().collect();
        let declared: std::collections::BTreeSet<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(produced, declared);
        let example = &schema["examples"][0];
        for field in [
            "version",
            "type",
            "object",
            "record_id",
            "crm",
            "crm_id",
            "changes",
            "occurred_at",
            "occurred_at_ms",
            "source",
        ] {
            assert_eq!(message[field], example[field], "{field}");
        }
    }

    #[test]
    fn a_declared_types_change_is_a_version_2_message_with_the_fields_of_version_1() {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/app-inbox.v2.json")).unwrap();
        let company = RecordRef {
            object: ObjectKind::declare("company").unwrap(),
            record_id: "account-17".into(),
        };
        let changes: BTreeMap<String, String> = [("industry".to_string(), "AEROSPACE".to_string())].into();
        let message: Value = message_of(&company, 2, "101", &changes);
        assert_eq!(
            (message["version"].as_u64(), message["object"].as_str()),
            (Some(2), Some("company"))
        );
        let produced: std::collections::BTreeSet<&String> = message.as_object().unwrap().keys().collect();
        let declared: std::collections::BTreeSet<&String> = schema["$defs"]["change"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(produced, declared);
        let contact = RecordRef {
            object: ObjectKind::Contact,
            record_id: "u".into(),
        };
        let message: Value = message_of(&contact, 2, "101", &changes);
        assert_eq!(message["version"], 1, "the built-in types keep version 1");
    }

    #[test]
    fn the_link_message_has_exactly_the_fields_its_published_schema_declares() {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/app-inbox.v2.json")).unwrap();
        let record = RecordRef {
            object: ObjectKind::Deal,
            record_id: "order-7".into(),
        };
        let link = LinkChange {
            crm_id: "18237".into(),
            contact_crm_id: "51".into(),
            removed: false,
            occurred_at_ms: 1_795_774_800_000,
            source: "CRM_UI".into(),
            from_integration: false,
        };
        let message: Value =
            serde_json::from_str(&link_message(&record, 4, "hubspot", &link, Some("user-9"), "k")).unwrap();
        let produced: std::collections::BTreeSet<&String> = message.as_object().unwrap().keys().collect();
        let declared: std::collections::BTreeSet<&String> = schema["$defs"]["link"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(produced, declared);
        assert_eq!(message["type"], "crm.link");
        assert_eq!(message["linked_record_id"], "user-9");
    }

    #[test]
    fn inbound_messages_parse_and_bad_ones_say_why() {
        let body = r#"{"version":1,"provider":"hubspot","event_key":"k","delivery_id":"d","received_at_ms":1,"kind":"deal.propertyChange","object_type":"deal","object_id":"7","occurred_at_ms":5,"event":{"a":1}}"#;
        let message = parse_inbound(body).unwrap();
        assert_eq!(message.object_id.as_deref(), Some("7"));
        assert_eq!(message.event["a"], 1);
        assert_eq!(
            parse_inbound("{").unwrap_err().0,
            "the inbound message is not valid JSON"
        );
        assert_eq!(
            parse_inbound(&body.replace("\"version\":1", "\"version\":2"))
                .unwrap_err()
                .0,
            "the inbound message is not version 1"
        );
    }
}
