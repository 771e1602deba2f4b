//! Field mapping and ownership: which CRM property each app field becomes, and which side owns it.
//! Loaded once at start; any error names the entry at fault, so a bad file never starts a sync.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::contract::{Change, ContractError, FieldValue, ObjectKind};

/// The mapping shipped with crm-sync (`shared/config/mapping.toml`).
pub const DEFAULT_MAPPING: &str = include_str!("../../config/mapping.toml");
/// The built-in mapping when the CRM is Pipedrive.
pub const PIPEDRIVE_MAPPING: &str = include_str!("../../config/mapping.pipedrive.toml");
/// The built-in mapping when the CRM is Salesforce.
pub const SALESFORCE_MAPPING: &str = include_str!("../../config/mapping.salesforce.toml");

/// Which side is the source of truth for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    App,
    Crm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub crm_property: String,
    pub owner: Owner,
    /// What the nightly reconciliation does when the CRM's value differs from what crm-sync
    /// wrote (app-owned fields only).
    pub on_drift: DriftPolicy,
    /// How a time the app sends is written; `None` writes the value as it is.
    pub format: Option<ValueFormat>,
}

/// How a time the app sends (RFC 3339 text or epoch milliseconds) is written to the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// Epoch milliseconds (HubSpot's datetimes and dates).
    EpochMs,
    /// `YYYY-MM-DD`, in UTC (Salesforce's date fields, such as a Task's `ActivityDate`).
    Date,
    /// `YYYY-MM-DD HH:MM:SS`, in UTC (Pipedrive's `add_time`).
    UtcDateTime,
}

/// The reconciliation's answer to drift of an app-owned field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftPolicy {
    /// Write crm-sync's value back.
    Heal,
    /// Report it and leave the CRM as it is.
    Flag,
}

/// How one app object type maps onto the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMapping {
    /// The CRM's object type (`contacts`, `deals`, `notes`).
    pub crm_object: String,
    /// The unique CRM property holding the app's record id: the upsert key.
    pub id_property: String,
    /// App field name → rule.
    pub fields: BTreeMap<String, FieldRule>,
    /// Who owns a deal's link to its contact: the app (its `contact_record_id`, the default) or
    /// the CRM (a person's change of it reaches the app). Deals only.
    pub contact_link: Owner,
    /// The fields that name a record to a person, in order (`display`): (app field, CRM property).
    pub display: Vec<(String, String)>,
}

/// A mapping error, naming the entry (`deal.fields.amount`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping: {entry}: {problem}")]
pub struct MappingError {
    pub entry: String,
    pub problem: String,
}

fn mapping_error(entry: impl Into<String>, problem: impl Into<String>) -> MappingError {
    MappingError {
        entry: entry.into(),
        problem: problem.into(),
    }
}

/// The file: one table an object type, named as the app names it. `contact`, `deal` and
/// `activity` are built in; any other name declares an object type of its own.
type RawFile = BTreeMap<String, RawObject>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    crm_object: String,
    id_property: String,
    contact_link: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
    /// `[<type>.links.<other type>]`: the associations this type's records make.
    #[serde(default)]
    links: BTreeMap<String, RawLink>,
    /// The fields that name a record to a person (the dashboard shows them).
    #[serde(default)]
    display: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    field: Option<String>,
    junction: Option<String>,
    from_field: Option<String>,
    to_field: Option<String>,
    labels_field: Option<String>,
}

/// How the CRM holds an association the mapping declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkVia {
    /// An association of its own between the two records, with labels (HubSpot).
    Association,
    /// A lookup field on the `from` record holding the `to` record's CRM id (Salesforce's
    /// `AccountId`, Pipedrive's `org_id`); it takes no labels.
    Field(String),
    /// A junction object with a record per pair (Salesforce's `AccountContactRelation`): its
    /// fields naming the two records, and a multi-select field taking the labels.
    Junction {
        object: String,
        from_field: String,
        to_field: String,
        labels_field: Option<String>,
    },
}

impl LinkVia {
    /// Why the labels cannot be written this way, if they cannot.
    pub fn refuses_labels(&self) -> Option<String> {
        match self {
            LinkVia::Association => None,
            LinkVia::Junction {
                labels_field: Some(_),
                ..
            } => None,
            LinkVia::Field(field) => Some(format!(
                "the link is the lookup field `{field}`, which takes no labels"
            )),
            LinkVia::Junction { object, .. } => Some(format!(
                "the link is a `{object}` record and the mapping names no `labels_field` for its labels"
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    crm: String,
    owner: String,
    on_drift: Option<String>,
    format: Option<String>,
}

/// The name under which an association's state keeps the labels crm-sync wrote (one a line).
pub const LABELS: &str = "labels";

/// What an outbound change writes to the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboundProperties {
    /// CRM property → value: app-owned fields only.
    pub properties: BTreeMap<String, String>,
    /// App fields left out because the CRM owns them.
    pub crm_owned: Vec<String>,
}

/// The whole mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    objects: HashMap<ObjectKind, ObjectMapping>,
    /// (from, to) → how the CRM holds the association.
    links: HashMap<(ObjectKind, ObjectKind), LinkVia>,
}

/// Whether `a` is one edit from `b`: a letter added, missing, changed, or two neighbours swapped.
fn one_slip(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    match (a.len(), b.len()) {
        (x, y) if x == y + 1 => a[1..] == *b,
        (x, y) if y == x + 1 => b[1..] == *a,
        (x, y) if x == y && x >= 1 => {
            a[1..] == b[1..] || (x >= 2 && a[0] == b[1] && a[1] == b[0] && a[2..] == b[2..])
        }
        _ => false,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Mapping {
    /// Parses and checks a mapping file.
    pub fn parse(text: &str) -> Result<Mapping, MappingError> {
        let raw: RawFile = toml::from_str(text).map_err(|error| {
            let span = error.span().map(|span| line_of(text, span.start)).unwrap_or(0);
            mapping_error(format!("line {span}"), error.message().trim().to_string())
        })?;
        let mut objects = HashMap::new();
        let mut crm_objects: HashMap<String, String> = HashMap::new();
        let mut raw_links: Vec<(ObjectKind, String, RawLink)> = Vec::new();
        for (name, mut object) in raw {
            // A name one slip from a built-in one (a plural, a swapped or missing letter) is a
            // typo, not a type of its own: as one, it would leave the built-in type unmapped.
            if let Some(meant) = ObjectKind::ALL.into_iter().find(|kind| {
                name != kind.as_str()
                    && (one_slip(&name, kind.as_str())
                        || (name == "activities" && *kind == ObjectKind::Activity))
            }) {
                return Err(mapping_error(name, format!("did you mean [{meant}]?")));
            }
            // Two tables on one CRM object would write, archive and claim each other's records.
            if let Some(other) = crm_objects.insert(object.crm_object.to_lowercase(), name.clone()) {
                return Err(mapping_error(
                    format!("{name}.crm_object"),
                    format!("`{}` is mapped by [{other}] already", object.crm_object),
                ));
            }
            let kind = ObjectKind::declare(&name).map_err(|problem| mapping_error(name.clone(), problem))?;
            raw_links.extend(
                std::mem::take(&mut object.links)
                    .into_iter()
                    .map(|(to, link)| (kind, to, link)),
            );
            objects.insert(kind, Self::check_object(kind, object)?);
        }
        let mut links = HashMap::new();
        for (from, to, raw) in raw_links {
            let entry = format!("{from}.links.{to}");
            let to = ObjectKind::parse(&to)
                .filter(|kind| objects.contains_key(kind))
                .ok_or_else(|| mapping_error(&entry, format!("`{to}` is no object type of this mapping")))?;
            links.insert((from, to), Self::check_link(&entry, raw)?);
        }
        if objects.is_empty() {
            return Err(mapping_error(
                "(file)",
                "maps no object type; expected [contact], [deal], [activity] or one of the app's own",
            ));
        }
        Ok(Mapping { objects, links })
    }

    fn check_link(entry: &str, raw: RawLink) -> Result<LinkVia, MappingError> {
        let name = |value: Option<String>, what: &str| -> Result<Option<String>, MappingError> {
            match value {
                Some(value) if !valid_name(&value) => Err(mapping_error(
                    format!("{entry}.{what}"),
                    "must be a CRM field or object name",
                )),
                value => Ok(value),
            }
        };
        let field = name(raw.field, "field")?;
        let junction = name(raw.junction, "junction")?;
        let from_field = name(raw.from_field, "from_field")?;
        let to_field = name(raw.to_field, "to_field")?;
        let labels_field = name(raw.labels_field, "labels_field")?;
        match (field, junction) {
            (Some(_), Some(_)) => Err(mapping_error(
                entry,
                "a link is a lookup `field` or a `junction` object, not both",
            )),
            (Some(field), None) => {
                if from_field.is_some() || to_field.is_some() || labels_field.is_some() {
                    return Err(mapping_error(
                        entry,
                        "`from_field`, `to_field` and `labels_field` belong to a `junction`",
                    ));
                }
                Ok(LinkVia::Field(field))
            }
            (None, Some(object)) => match (from_field, to_field) {
                (Some(from_field), Some(to_field)) => Ok(LinkVia::Junction {
                    object,
                    from_field,
                    to_field,
                    labels_field,
                }),
                _ => Err(mapping_error(
                    entry,
                    "a `junction` needs `from_field` and `to_field`, its fields naming the two records",
                )),
            },
            (None, None) if from_field.is_some() || to_field.is_some() || labels_field.is_some() => {
                Err(mapping_error(
                    entry,
                    "`from_field`, `to_field` and `labels_field` belong to a `junction`",
                ))
            }
            (None, None) => Ok(LinkVia::Association),
        }
    }

    /// How the CRM holds associations from `from` records to `to` records, if the mapping
    /// declares them.
    pub fn link(&self, from: ObjectKind, to: ObjectKind) -> Option<&LinkVia> {
        self.links.get(&(from, to))
    }

    /// A validated change with its record's final id: a link the CRM holds in one field of the
    /// `from` record is one record whichever record it names (see
    /// [`super::contract::Association::field_record_id`]), so that the newest change wins the
    /// field.
    pub fn keyed(&self, mut change: Change) -> Change {
        if let Some(association) = &change.association {
            if let Some(LinkVia::Field(_)) = self.link(association.from.object, association.to.object) {
                change.record_id = association.field_record_id();
            }
        }
        change
    }

    /// The object types the mapping declares, by their CRM object (lower-cased): how a CRM's
    /// events name them, once each adapter has turned its own name into that one.
    pub fn declared_by_crm_object(&self) -> HashMap<String, ObjectKind> {
        self.objects
            .iter()
            .filter(|(kind, _)| kind.is_declared())
            .map(|(kind, object)| (object.crm_object.to_ascii_lowercase(), *kind))
            .collect()
    }

    /// Every association the mapping declares: (from, to, how).
    pub fn links(&self) -> Vec<(ObjectKind, ObjectKind, &LinkVia)> {
        let mut links: Vec<_> = self
            .links
            .iter()
            .map(|((from, to), via)| (*from, *to, via))
            .collect();
        links.sort_by_key(|(from, to, _)| (*from, *to));
        links
    }

    /// Long on purpose: each mapping rule's check, in the order the file's entries read.
    fn check_object(kind: ObjectKind, raw: RawObject) -> Result<ObjectMapping, MappingError> {
        let entry = kind.as_str();
        if !valid_name(&raw.crm_object) {
            return Err(mapping_error(
                format!("{entry}.crm_object"),
                "must be a CRM object name like `contacts`",
            ));
        }
        if !valid_name(&raw.id_property) {
            return Err(mapping_error(
                format!("{entry}.id_property"),
                "must be a CRM property name",
            ));
        }
        let mut fields = BTreeMap::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (field, rule) in raw.fields {
            let at = format!("{entry}.fields.{field}");
            if !valid_name(&field) {
                return Err(mapping_error(at, "field names use letters, digits, `_` and `-`"));
            }
            if !valid_name(&rule.crm) {
                return Err(mapping_error(at, "`crm` must be a CRM property name"));
            }
            if rule.crm == raw.id_property {
                return Err(mapping_error(
                    at,
                    format!("`{}` is the id property; crm-sync writes it", rule.crm),
                ));
            }
            if let Some(other) = seen.insert(rule.crm.clone(), field.clone()) {
                return Err(mapping_error(
                    at,
                    format!("CRM property `{}` is mapped by `{other}` already", rule.crm),
                ));
            }
            let owner = match rule.owner.as_str() {
                "app" => Owner::App,
                "crm" => Owner::Crm,
                other => {
                    return Err(mapping_error(
                        at,
                        format!("owner `{other}` must be `app` or `crm`"),
                    ))
                }
            };
            let on_drift = match (rule.on_drift.as_deref(), owner) {
                (None | Some("heal"), _) => DriftPolicy::Heal,
                (Some("flag"), _) => DriftPolicy::Flag,
                (Some(other), _) => {
                    return Err(mapping_error(
                        at,
                        format!("on_drift `{other}` must be `heal` or `flag`"),
                    ))
                }
            };
            let format = match rule.format.as_deref() {
                Some("epoch_ms") => Some(ValueFormat::EpochMs),
                Some("date") => Some(ValueFormat::Date),
                Some("utc_datetime") => Some(ValueFormat::UtcDateTime),
                // HubSpot's two time properties were converted before `format` existed.
                None if rule.crm == "hs_timestamp" || rule.crm == "closedate" => Some(ValueFormat::EpochMs),
                None => None,
                Some(other) => {
                    return Err(mapping_error(
                        at,
                        format!("format `{other}` must be `epoch_ms`, `date` or `utc_datetime`"),
                    ))
                }
            };
            fields.insert(
                field,
                FieldRule {
                    crm_property: rule.crm,
                    owner,
                    on_drift,
                    format,
                },
            );
        }
        let contact_link = match (kind, raw.contact_link.as_deref()) {
            (_, None) | (ObjectKind::Deal, Some("app")) => Owner::App,
            (ObjectKind::Deal, Some("crm")) => Owner::Crm,
            (ObjectKind::Deal, Some(other)) => {
                return Err(mapping_error(
                    format!("{entry}.contact_link"),
                    format!("`{other}` must be `app` or `crm`"),
                ))
            }
            (_, Some(_)) => {
                return Err(mapping_error(
                    format!("{entry}.contact_link"),
                    "only a deal's link to its contact has an owner",
                ))
            }
        };
        let mut display = Vec::new();
        for field in &raw.display {
            let rule = fields.get(field).ok_or_else(|| {
                mapping_error(
                    format!("{entry}.display"),
                    format!("`{field}` is not a field of [{entry}.fields]"),
                )
            })?;
            display.push((field.clone(), rule.crm_property.clone()));
        }
        Ok(ObjectMapping {
            crm_object: raw.crm_object,
            id_property: raw.id_property,
            fields,
            contact_link,
            display,
        })
    }

    /// The mapping of an object type, if the file maps it.
    pub fn object(&self, kind: ObjectKind) -> Option<&ObjectMapping> {
        self.objects.get(&kind)
    }

    /// The object types the file maps: the built-in ones first, then those it declares.
    pub fn kinds(&self) -> Vec<ObjectKind> {
        let mut kinds: Vec<ObjectKind> = self.objects.keys().copied().collect();
        kinds.sort();
        kinds
    }

    /// The CRM properties an outbound change writes: app-owned fields only. Refuses fields the
    /// mapping does not know, and object types it does not map.
    pub fn outbound(&self, change: &Change) -> Result<OutboundProperties, ContractError> {
        if let Some(association) = &change.association {
            let (from, to) = (association.from.object, association.to.object);
            let via = self.link(from, to).ok_or_else(|| {
                ContractError(format!(
                    "the mapping declares no link from {from} to {to} (a [{from}.links.{to}] table)"
                ))
            })?;
            if let Some(why) = via.refuses_labels().filter(|_| !association.labels.is_empty()) {
                return Err(ContractError(format!("labels from {from} to {to}: {why}")));
            }
            // The labels are what an association writes: kept in its state as written, so that
            // the next change knows which labels crm-sync put on the pair.
            return Ok(OutboundProperties {
                properties: [(LABELS.to_string(), association.labels.join("\n"))].into(),
                crm_owned: Vec::new(),
            });
        }
        self.object(change.object)
            .ok_or_else(|| ContractError(format!("the mapping has no [{}] section", change.object)))?
            .outbound(change)
    }
}

impl ObjectMapping {
    /// The CRM properties a change of this object writes: app-owned fields only. Refuses fields
    /// the mapping does not know.
    pub fn outbound(&self, change: &Change) -> Result<OutboundProperties, ContractError> {
        let object = self;
        let mut out = OutboundProperties::default();
        for (field, value) in &change.data {
            let rule = object.fields.get(field).ok_or_else(|| {
                ContractError(format!(
                    "`data.{field}` is not a mapped {} field (shared/config/mapping.toml)",
                    change.object
                ))
            })?;
            match rule.owner {
                Owner::App => {
                    out.properties
                        .insert(rule.crm_property.clone(), crm_value(rule, value));
                }
                Owner::Crm => out.crm_owned.push(field.clone()),
            }
        }
        Ok(out)
    }
}

/// A time in the field's `format`; anything that is not a time is written as it is, for the CRM
/// to accept or refuse.
fn crm_value(rule: &FieldRule, value: &FieldValue) -> String {
    let as_json = match value {
        FieldValue::Text(text) => serde_json::Value::String(text.clone()),
        FieldValue::Number(number) => serde_json::Value::Number(number.clone()),
        _ => return value.to_crm_string(),
    };
    let ms = super::contract::parse_timestamp_ms(&as_json);
    match (rule.format, ms) {
        (Some(ValueFormat::EpochMs), Some(ms)) => ms.to_string(),
        (Some(format @ (ValueFormat::Date | ValueFormat::UtcDateTime)), Some(ms)) => {
            let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
                return value.to_crm_string();
            };
            match format {
                ValueFormat::Date => at.date().to_string(),
                _ => {
                    let (hour, minute, second) = at.time().as_hms();
                    format!("{} {hour:02}:{minute:02}:{second:02}", at.date())
                }
            }
        }
        _ => value.to_crm_string(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::parse_change;

    #[test]
    fn the_built_in_salesforce_mapping_maps_contacts_and_opportunities() {
        let mapping = Mapping::parse(SALESFORCE_MAPPING).unwrap();
        assert_eq!(mapping.object(ObjectKind::Contact).unwrap().crm_object, "Contact");
        assert_eq!(
            mapping.object(ObjectKind::Deal).unwrap().crm_object,
            "Opportunity"
        );
    }

    #[test]
    fn the_built_in_pipedrive_mapping_maps_persons_deals_and_activities_as_notes() {
        let mapping = Mapping::parse(PIPEDRIVE_MAPPING).unwrap();
        assert_eq!(mapping.object(ObjectKind::Contact).unwrap().crm_object, "persons");
        assert_eq!(mapping.object(ObjectKind::Deal).unwrap().crm_object, "deals");
        assert_eq!(mapping.object(ObjectKind::Activity).unwrap().crm_object, "notes");
    }

    #[test]
    fn the_shipped_mapping_is_valid_and_maps_every_object_type() {
        let mapping = Mapping::parse(DEFAULT_MAPPING).unwrap();
        for kind in ObjectKind::ALL {
            assert!(mapping.object(kind).is_some(), "{kind}");
        }
        assert_eq!(
            mapping.object(ObjectKind::Contact).unwrap().fields["email"].owner,
            Owner::App
        );
        assert_eq!(
            mapping.object(ObjectKind::Deal).unwrap().fields["stage"].owner,
            Owner::Crm
        );
    }

    #[test]
    fn outbound_writes_only_app_owned_fields_under_their_crm_names() {
        let mapping = Mapping::parse(DEFAULT_MAPPING).unwrap();
        let change = parse_change(r#"{"version":1,"type":"deal.upsert","record_id":"d","idempotency_id":"i","changed_at":5,"data":{"name":"Pro plan","amount":1200,"stage":"closedwon"}}"#).unwrap();
        let out = mapping.outbound(&change).unwrap();
        assert_eq!(
            out.properties.get("dealname").map(String::as_str),
            Some("Pro plan")
        );
        assert_eq!(out.properties.get("amount").map(String::as_str), Some("1200"));
        assert!(!out.properties.contains_key("dealstage"));
        assert_eq!(out.crm_owned, vec!["stage".to_string()]);
    }

    #[test]
    fn an_unmapped_field_is_refused_by_name() {
        let mapping = Mapping::parse(DEFAULT_MAPPING).unwrap();
        let change = parse_change(r#"{"version":1,"type":"contact.upsert","record_id":"c","idempotency_id":"i","changed_at":5,"data":{"shoe_size":44}}"#).unwrap();
        assert_eq!(
            mapping.outbound(&change).unwrap_err().0,
            "`data.shoe_size` is not a mapped contact field (shared/config/mapping.toml)"
        );
    }

    #[test]
    fn rfc3339_times_become_epoch_milliseconds_for_datetime_properties() {
        let mapping = Mapping::parse(DEFAULT_MAPPING).unwrap();
        let change = parse_change(r#"{"version":1,"type":"activity.log","record_id":"a","idempotency_id":"i","changed_at":5,"contact_record_id":"c","data":{"body":"hi","occurred_at":"2026-01-01T00:00:00Z"}}"#).unwrap();
        let out = mapping.outbound(&change).unwrap();
        assert_eq!(out.properties["hs_timestamp"], "1767225600000");
    }

    #[test]
    fn a_date_format_writes_the_utc_day_of_a_time_given_as_text_or_milliseconds() {
        let mapping = Mapping::parse(SALESFORCE_MAPPING).unwrap();
        for occurred_at in [r#""2026-01-01T23:30:00-02:00""#, "1767317400000"] {
            let change = parse_change(&format!(
                r#"{{"version":1,"type":"activity.log","record_id":"a","idempotency_id":"i","changed_at":5,"contact_record_id":"c","data":{{"body":"hi","occurred_at":{occurred_at}}}}}"#
            ))
            .unwrap();
            let out = mapping.outbound(&change).unwrap();
            assert_eq!(out.properties["ActivityDate"], "2026-01-02", "{occurred_at}");
            let out = Mapping::parse(PIPEDRIVE_MAPPING)
                .unwrap()
                .outbound(&change)
                .unwrap();
            assert_eq!(out.properties["add_time"], "2026-01-02 01:30:00", "{occurred_at}");
        }
        let error = Mapping::parse(
            "[activity]\ncrm_object = \"Task\"\nid_property = \"x\"\n[activity.fields]\nat = { crm = \"D\", owner = \"app\", format = \"unix\" }\n",
        )
        .unwrap_err();
        assert_eq!(error.entry, "activity.fields.at");
        assert!(error.problem.contains("`date` or `utc_datetime`"), "{error}");
    }

    #[test]
    fn each_bad_entry_is_named() {
        let cases = [
            ("[contact]\ncrm_object = \"contacts\"\nid_property = \"x\"\n[contact.fields]\nemail = { crm = \"email\", owner = \"both\" }\n", "contact.fields.email", "owner `both` must be `app` or `crm`"),
            ("[deal]\ncrm_object = \"deals\"\nid_property = \"x\"\n[deal.fields]\na = { crm = \"amount\", owner = \"app\" }\nb = { crm = \"amount\", owner = \"app\" }\n", "deal.fields.b", "CRM property `amount` is mapped by `a` already"),
            ("[deal]\ncrm_object = \"deals\"\nid_property = \"x\"\n[deal.fields]\na = { crm = \"x\", owner = \"app\" }\n", "deal.fields.a", "`x` is the id property; crm-sync writes it"),
            ("[deal]\ncrm_object = \"\"\nid_property = \"x\"\n", "deal.crm_object", "must be a CRM object name like `contacts`"),
            ("", "(file)", "maps no object type; expected [contact], [deal], [activity] or one of the app's own"),
            ("[contacts]\ncrm_object = \"contacts\"\nid_property = \"x\"\n", "contacts", "did you mean [contact]?"),
            ("[contcat]\ncrm_object = \"contacts\"\nid_property = \"x\"\n", "contcat", "did you mean [contact]?"),
            ("[dael]\ncrm_object = \"deals\"\nid_property = \"x\"\n", "dael", "did you mean [deal]?"),
            ("[contact]\ncrm_object = \"contacts\"\nid_property = \"x\"\n[lead]\ncrm_object = \"Contacts\"\nid_property = \"x\"\n", "lead.crm_object", "`Contacts` is mapped by [contact] already"),
            ("[activities]\ncrm_object = \"notes\"\nid_property = \"x\"\n", "activities", "did you mean [activity]?"),
            ("[Company]\ncrm_object = \"companies\"\nid_property = \"x\"\n", "Company", "`Company` is no object type name: lower-case letters, digits and _, starting with a letter, at most 40"),
            ("[company]\ncrm_object = \"companies\"\nid_property = \"x\"\ncontact_link = \"crm\"\n", "company.contact_link", "only a deal's link to its contact has an owner"),
        ];
        for (text, entry, problem) in cases {
            let error = Mapping::parse(text).unwrap_err();
            assert_eq!(
                (error.entry.as_str(), error.problem.as_str()),
                (entry, problem),
                "{text}"
            );
        }
    }

    #[test]
    fn a_syntax_error_or_unknown_key_names_its_line() {
        let error = Mapping::parse("[contact]\ncrm_object = \"contacts\"\nid_property = \"x\"\ncolour = 1\n")
            .unwrap_err();
        assert_eq!(error.entry, "line 4");
        assert!(error.problem.contains("colour"), "{}", error.problem);
    }

    #[test]
    fn any_other_table_declares_an_object_type_of_the_app_with_its_fields_and_owners() {
        let mapping = Mapping::parse(
            "[contact]\ncrm_object = \"contacts\"\nid_property = \"crm_sync_app_id\"\n\
             [company]\ncrm_object = \"companies\"\nid_property = \"crm_sync_app_id\"\n\
             [company.fields]\nname = { crm = \"name\", owner = \"app\" }\nindustry = { crm = \"industry\", owner = \"crm\" }\n",
        )
        .unwrap();
        let company = ObjectKind::parse("company").expect("declared by the mapping");
        assert_eq!(mapping.kinds(), vec![ObjectKind::Contact, company]);
        let object = mapping.object(company).unwrap();
        assert_eq!(object.crm_object, "companies");
        assert_eq!(object.fields["name"].owner, Owner::App);
        assert_eq!(object.fields["industry"].owner, Owner::Crm);
    }

    #[test]
    fn a_links_table_declares_how_the_crm_holds_the_association_and_which_labels_it_takes() {
        let base = "[contact]\ncrm_object = \"Contact\"\nid_property = \"X__c\"\n\
                    [company]\ncrm_object = \"Account\"\nid_property = \"X__c\"\n";
        let parse = |links: &str| Mapping::parse(&format!("{base}{links}"));
        let company = ObjectKind::parse("company").unwrap_or_else(|| ObjectKind::declare("company").unwrap());
        let mapping = parse("[contact.links.company]\n").unwrap();
        assert_eq!(
            mapping.link(ObjectKind::Contact, company),
            Some(&LinkVia::Association)
        );
        assert_eq!(
            mapping.link(company, ObjectKind::Contact),
            None,
            "a link has a direction"
        );
        let mapping = parse("[contact.links.company]\nfield = \"AccountId\"\n").unwrap();
        let via = mapping.link(ObjectKind::Contact, company).unwrap();
        assert_eq!(via, &LinkVia::Field("AccountId".into()));
        assert!(via.refuses_labels().unwrap().contains("AccountId"));
        let mapping = parse(
            "[contact.links.company]\njunction = \"AccountContactRelation\"\nfrom_field = \"ContactId\"\n\
             to_field = \"AccountId\"\nlabels_field = \"Roles\"\n",
        )
        .unwrap();
        assert_eq!(
            mapping
                .link(ObjectKind::Contact, company)
                .unwrap()
                .refuses_labels(),
            None
        );
        for (links, entry, problem) in [
            (
                "[contact.links.ship]\n",
                "contact.links.ship",
                "`ship` is no object type of this mapping",
            ),
            (
                "[contact.links.deal]\n",
                "contact.links.deal",
                "`deal` is no object type of this mapping",
            ),
            (
                "[contact.links.company]\nfield = \"a\"\njunction = \"b\"\n",
                "contact.links.company",
                "not both",
            ),
            (
                "[contact.links.company]\njunction = \"b\"\nfrom_field = \"c\"\n",
                "contact.links.company",
                "needs `from_field` and `to_field`",
            ),
            (
                "[contact.links.company]\nfield = \"a\"\nlabels_field = \"r\"\n",
                "contact.links.company",
                "belong to a `junction`",
            ),
            (
                "[contact.links.company]\nlabels_field = \"r\"\n",
                "contact.links.company",
                "belong to a `junction`",
            ),
            (
                "[contact.links.company]\nfield = \"a b\"\n",
                "contact.links.company.field",
                "must be a CRM field",
            ),
        ] {
            let error = parse(links).unwrap_err();
            assert_eq!(error.entry, entry, "{links}");
            assert!(error.problem.contains(problem), "{links}: {}", error.problem);
        }
        assert!(
            parse("[contact.links.company]\ncolour = \"red\"\n").is_err(),
            "unknown keys are refused"
        );
        assert!(
            Mapping::parse("[link]\ncrm_object = \"x\"\nid_property = \"y\"\n")
                .unwrap_err()
                .problem
                .contains("reserved"),
            "`link` names the associations' own records"
        );
    }

    #[test]
    fn display_names_fields_of_the_table_and_reads_as_their_crm_properties() {
        let base = "[contact]\ncrm_object = \"contacts\"\nid_property = \"x\"\n";
        let mapping = Mapping::parse(&format!(
            "{base}display = [\"last_name\", \"email\"]\n[contact.fields]\nemail = {{ crm = \"email\", owner = \"app\" }}\nlast_name = {{ crm = \"lastname\", owner = \"app\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            mapping.object(ObjectKind::Contact).unwrap().display,
            [
                ("last_name".to_string(), "lastname".to_string()),
                ("email".to_string(), "email".to_string())
            ]
        );
        let error = Mapping::parse(&format!("{base}display = [\"shoe_size\"]\n")).unwrap_err();
        assert_eq!(error.entry, "contact.display");
        assert!(
            error.problem.contains("`shoe_size` is not a field"),
            "{}",
            error.problem
        );
        for text in [DEFAULT_MAPPING, PIPEDRIVE_MAPPING, SALESFORCE_MAPPING] {
            assert_eq!(
                Mapping::parse(text)
                    .unwrap()
                    .object(ObjectKind::Contact)
                    .unwrap()
                    .display
                    .len(),
                3
            );
        }
    }

    #[test]
    fn every_built_in_mapping_ships_companies_and_links_to_them_that_its_crm_holds() {
        for (text, contact_link) in [
            (DEFAULT_MAPPING, LinkVia::Association),
            (PIPEDRIVE_MAPPING, LinkVia::Field("org_id".into())),
            (
                SALESFORCE_MAPPING,
                LinkVia::Junction {
                    object: "AccountContactRelation".into(),
                    from_field: "ContactId".into(),
                    to_field: "AccountId".into(),
                    labels_field: Some("Roles".into()),
                },
            ),
        ] {
            let mapping = Mapping::parse(text).unwrap();
            let company = ObjectKind::parse("company").unwrap();
            assert!(mapping.object(company).unwrap().fields["name"].owner == Owner::App);
            assert_eq!(mapping.link(ObjectKind::Contact, company), Some(&contact_link));
            assert!(mapping.link(ObjectKind::Deal, company).is_some());
        }
    }

    #[test]
    fn a_name_one_slip_from_a_built_in_is_a_typo_and_others_are_types_of_their_own() {
        for typo in [
            "contacts", "contac", "contcat", "xontact", "deals", "dael", "activty",
        ] {
            assert!(
                ObjectKind::ALL.iter().any(|kind| one_slip(typo, kind.as_str())),
                "{typo}"
            );
        }
        for name in ["lead", "company", "contact", "person", "ticket", "deal_stage"] {
            assert!(
                !ObjectKind::ALL
                    .iter()
                    .any(|kind| name != kind.as_str() && one_slip(name, kind.as_str())),
                "{name}"
            );
        }
    }
}
