//! The message contract v1: what the app puts on the outbound queue for crm-sync
//! (`shared/schemas/outbound-change.v1.json`). Parsing is strict and every error says what is
//! wrong without echoing field values, which may be personal data.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Version of the outbound message contract.
pub const OUTBOUND_CONTRACT_VERSION: u64 = 1;

/// The outbound contract's version 2: a change of an object type the mapping declares
/// (`object.upsert`, `object.delete` with `object_type`); version 1 messages are unchanged.
pub const OBJECT_CONTRACT_VERSION: u64 = 2;

/// The longest identifier (`record_id`, `idempotency_id`, `contact_record_id`) and field name,
/// in characters (Unicode code points, as JSON Schema's `maxLength` counts).
pub const MAX_ID_CHARS: usize = 256;

/// The longest text value of a field, in characters: HubSpot's limit for a property value.
pub const MAX_VALUE_CHARS: usize = 65_536;

/// The largest message, in bytes of UTF-8. A record's state keeps the pending and the last
/// applied message and the values written, in one DynamoDB item of at most 400 KB.
pub const MAX_MESSAGE_BYTES: usize = 100 * 1024;

/// The longest email that is indexed for the dashboard's search (RFC 5321's limit for a path,
/// lower-cased): a longer one is no address.
const MAX_SEARCH_EMAIL_BYTES: usize = 254;

/// An object type of the app: the three crm-sync knows from the start (contacts, deals,
/// activities) and any the mapping declares ([`ObjectKind::declare`]). A name, interned once,
/// so that a kind is copied freely and compared cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKind(&'static str);

/// Object types the mapping declared, beyond the built-in ones; they live as long as the process.
static DECLARED: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

/// The longest name of a declared object type.
pub const MAX_OBJECT_NAME_CHARS: usize = 40;

// The built-in kinds keep the names they had as an enum's variants, so that they read as before
// wherever they are compared or matched.
#[allow(non_upper_case_globals)]
impl ObjectKind {
    pub const Contact: ObjectKind = ObjectKind("contact");
    pub const Deal: ObjectKind = ObjectKind("deal");
    pub const Activity: ObjectKind = ObjectKind("activity");
    /// An association between two records (a version 2 `association.*` change): a record of its
    /// own, so that it is ordered, retried and shown like any other. Not a table of the mapping.
    pub const Link: ObjectKind = ObjectKind("link");

    /// The built-in kinds, in the order their records depend on each other.
    pub const ALL: [ObjectKind; 3] = [ObjectKind::Contact, ObjectKind::Deal, ObjectKind::Activity];

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// A built-in kind or one the mapping declared.
    pub fn parse(text: &str) -> Option<ObjectKind> {
        if let Some(kind) = ObjectKind::ALL.into_iter().find(|kind| kind.as_str() == text) {
            return Some(kind);
        }
        if text == ObjectKind::Link.as_str() {
            return Some(ObjectKind::Link);
        }
        let declared = DECLARED.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        declared
            .iter()
            .find(|name| **name == text)
            .map(|name| ObjectKind(name))
    }

    /// Declares an object type by its name (lower-case letters, digits and `_`, starting with a
    /// letter, at most [`MAX_OBJECT_NAME_CHARS`]); declaring it again, or a built-in, gives the
    /// same kind.
    pub fn declare(name: &str) -> Result<ObjectKind, String> {
        if name == ObjectKind::Link.as_str() {
            return Err("`link` is reserved: it names the associations between records".into());
        }
        // Every stored record's kind comes through here: a known one costs no check.
        if let Some(kind) = ObjectKind::parse(name) {
            return Ok(kind);
        }
        let valid = !name.is_empty()
            && name.chars().count() <= MAX_OBJECT_NAME_CHARS
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(format!(
                "`{name}` is no object type name: lower-case letters, digits and _, starting with a letter, at most {MAX_OBJECT_NAME_CHARS}"
            ));
        }
        let mut declared = DECLARED
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = declared.iter().find(|known| **known == name) {
            return Ok(ObjectKind(name));
        }
        let interned: &'static str = Box::leak(name.to_string().into_boxed_str());
        declared.push(interned);
        Ok(ObjectKind(interned))
    }

    /// A kind read back from crm-sync's own storage: any known one, links included, else
    /// declared now (written under a mapping that declared it).
    pub fn stored(name: &str) -> Option<ObjectKind> {
        ObjectKind::parse(name).or_else(|| ObjectKind::declare(name).ok())
    }

    /// The built-in kinds, then those declared so far in this process, then links.
    pub fn known() -> Vec<ObjectKind> {
        let declared = DECLARED.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        ObjectKind::ALL
            .into_iter()
            .chain(declared.iter().map(|name| ObjectKind(name)))
            .chain([ObjectKind::Link])
            .collect()
    }

    /// Whether the mapping declared this kind (neither built in nor a link).
    pub fn is_declared(self) -> bool {
        !self.is_built_in() && self != ObjectKind::Link
    }

    /// Whether crm-sync knows this kind from the start (not declared by the mapping).
    pub fn is_built_in(self) -> bool {
        ObjectKind::ALL.contains(&self)
    }

    /// The built-in kinds first, in their order, then the declared ones by name.
    fn rank(self) -> (usize, &'static str) {
        let built_in = ObjectKind::ALL.iter().position(|kind| *kind == self);
        let declared = if self == ObjectKind::Link { 1 } else { 0 };
        (built_in.unwrap_or(ObjectKind::ALL.len() + declared), self.0)
    }
}

impl PartialOrd for ObjectKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl fmt::Debug for ObjectKind {
    /// As the enum's variants printed: `Contact`, `Deal`, `Activity`; a declared kind by name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        match (self.is_built_in(), chars.next()) {
            (true, Some(first)) => write!(f, "{}{}", first.to_ascii_uppercase(), chars.as_str()),
            _ => f.write_str(self.0),
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ObjectKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ObjectKind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown object type `{name}`")))
    }
}

/// What the app asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Upsert,
    /// Archive the record in the CRM.
    Delete,
    /// Log an activity (a note on a contact).
    Log,
    /// Erase a contact for privacy: in the CRM (HubSpot's GDPR delete; the other CRMs' delete)
    /// and in crm-sync's state and history.
    Erase,
}

/// A field value as the app sends it; the CRM receives its text form.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    /// Clears the CRM property.
    Null,
}

impl FieldValue {
    /// The value as a CRM property string; an empty string clears the property.
    pub fn to_crm_string(&self) -> String {
        match self {
            FieldValue::Text(text) => text.clone(),
            FieldValue::Number(number) => number.to_string(),
            FieldValue::Bool(flag) => flag.to_string(),
            FieldValue::Null => String::new(),
        }
    }
}

/// One change from the app, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub object: ObjectKind,
    pub operation: Operation,
    pub record_id: String,
    pub idempotency_id: String,
    /// When the change happened in the app: the record's version.
    pub changed_at_ms: i64,
    pub data: BTreeMap<String, FieldValue>,
    /// The app contact a deal or an activity belongs to.
    pub contact_record_id: Option<String>,
    /// For an association change (`object` is [`ObjectKind::Link`]): the two records and labels.
    pub association: Option<Association>,
}

/// An association the app sets or removes between two of its records: `from` and `to` as the
/// app names them, and on a set, the labels the pair carries (the CRM's association labels or
/// roles). The set is whole: labels crm-sync wrote before and not named again come off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    pub from: RecordRef,
    pub to: RecordRef,
    pub labels: Vec<String>,
}

/// The most labels one association carries.
pub const MAX_LABELS: usize = 20;

/// The longest label, in characters (HubSpot's limit for a label's name).
pub const MAX_LABEL_CHARS: usize = 100;

/// The longest id of an association's record (both ids with their types), in bytes: its state's
/// key must stay within DynamoDB's 2,048-byte partition key.
pub const MAX_LINK_ID_BYTES: usize = 1_024;

impl Association {
    /// The id of the association's own record: `{from type}:{from id}|{to type}:{to id}`, with `%`
    /// and `|` of the app's ids escaped, so that two pairs never share one.
    pub fn record_id(&self) -> String {
        format!(
            "{}:{}|{}:{}",
            self.from.object,
            escape_link_id(&self.from.record_id),
            self.to.object,
            escape_link_id(&self.to.record_id)
        )
    }

    /// The id of the record of a link the CRM holds in one field of the `from` record (a
    /// contact's `AccountId`): `{from type}:{from id}|{to type}`, one record whichever record
    /// it names, so that the newest change wins the field.
    pub fn field_record_id(&self) -> String {
        format!(
            "{}:{}|{}",
            self.from.object,
            escape_link_id(&self.from.record_id),
            self.to.object
        )
    }
}

fn escape_link_id(id: &str) -> String {
    id.replace('%', "%25").replace('|', "%7C")
}

impl Change {
    pub fn record(&self) -> RecordRef {
        RecordRef {
            object: self.object,
            record_id: self.record_id.clone(),
        }
    }

    /// The message type as written in the contract.
    pub fn type_name(&self) -> &'static str {
        if self.association.is_some() {
            return match self.operation {
                Operation::Delete => "association.delete",
                _ => "association.upsert",
            };
        }
        if !self.object.is_built_in() {
            return match self.operation {
                Operation::Delete => "object.delete",
                _ => "object.upsert",
            };
        }
        TYPES
            .iter()
            .find(|(_, object, operation)| *object == self.object && *operation == self.operation)
            .map_or("activity.log", |(name, _, _)| name)
    }

    /// A contact's `email`, lower-cased: what the dashboard's search finds it by.
    pub fn search_email(&self) -> Option<String> {
        if self.object != ObjectKind::Contact {
            return None;
        }
        match self.data.get("email") {
            Some(FieldValue::Text(email)) => Some(email.trim().to_lowercase())
                .filter(|email| !email.is_empty() && email.len() <= MAX_SEARCH_EMAIL_BYTES),
            _ => None,
        }
    }
}

/// The same change under a new idempotency id, so that it is written again even though it is
/// applied already; any newer change still wins over it. `body` must be a valid message.
pub fn with_idempotency_id(body: &str, idempotency_id: &str) -> Result<String, ContractError> {
    let mut value: Value =
        serde_json::from_str(body).map_err(|_| invalid("the stored message is not valid JSON"))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(invalid("the stored message is not a JSON object"));
    };
    fields.insert("idempotency_id".into(), Value::String(idempotency_id.into()));
    let rewritten = value.to_string();
    parse_change(&rewritten)?;
    Ok(rewritten)
}

/// An app record: object type and the app's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    pub object: ObjectKind,
    pub record_id: String,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.object, self.record_id)
    }
}

/// Why a message does not follow the contract. The text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ContractError(pub String);

fn invalid(message: impl Into<String>) -> ContractError {
    ContractError(message.into())
}

/// A version 2 message's object type and operation: `object.upsert` or `object.delete` of a
/// type the mapping declares, or `association.upsert` / `association.delete` from a record of
/// any mapped type (the last element says which).
fn object_type(
    fields: &Map<String, Value>,
    type_name: &str,
) -> Result<(ObjectKind, Operation, bool), ContractError> {
    let (operation, association) = match type_name {
        "object.upsert" => (Operation::Upsert, false),
        "object.delete" => (Operation::Delete, false),
        "association.upsert" => (Operation::Upsert, true),
        "association.delete" => (Operation::Delete, true),
        other => {
            return Err(invalid(format!(
            "type `{}` is not one of object.upsert, object.delete, association.upsert, association.delete \
                 (version 2)",
            truncate(other)
        )))
        }
    };
    let kind = named_kind(fields, "object_type")?;
    if kind.is_built_in() && !association {
        let name = kind.as_str();
        return Err(invalid(format!(
            "`{name}` changes are version 1 messages ({name}.upsert, …)"
        )));
    }
    Ok((kind, operation, association))
}

/// The object type a field names: built in or declared by the mapping.
fn named_kind(fields: &Map<String, Value>, field: &str) -> Result<ObjectKind, ContractError> {
    let name = match fields.get(field) {
        Some(Value::String(name)) => name,
        Some(_) => return Err(invalid(format!("`{field}` must be a string"))),
        None => return Err(invalid(format!("`{field}` is required in version 2"))),
    };
    ObjectKind::parse(name)
        .filter(|kind| *kind != ObjectKind::Link)
        .ok_or_else(|| {
            invalid(format!(
                "{field} `{}` is not an object type the mapping declares",
                truncate(name)
            ))
        })
}

/// An association change's other end and labels; `from` is the message's own record.
fn association(
    fields: &Map<String, Value>,
    from: RecordRef,
    operation: Operation,
) -> Result<Association, ContractError> {
    if fields.contains_key("data") {
        return Err(invalid(
            "an association change carries no `data`; a pair's labels are its `labels`",
        ));
    }
    let to = RecordRef {
        object: named_kind(fields, "to_object_type")?,
        record_id: required_identifier(fields, "to_record_id")?,
    };
    let labels = match (operation, fields.get("labels")) {
        (_, None | Some(Value::Null)) => Vec::new(),
        (Operation::Delete, Some(_)) => return Err(invalid("an association.delete carries no `labels`")),
        (_, Some(Value::Array(items))) => {
            if items.len() > MAX_LABELS {
                return Err(invalid(format!(
                    "`labels` names {} labels, more than the {MAX_LABELS} allowed",
                    items.len()
                )));
            }
            let mut labels: Vec<String> = Vec::new();
            for item in items {
                let Value::String(label) = item else {
                    return Err(invalid("`labels` must be an array of strings"));
                };
                if label.trim() != label
                    || label.is_empty()
                    || label.chars().count() > MAX_LABEL_CHARS
                    || label.chars().any(char::is_control)
                {
                    return Err(invalid(format!(
                        "a label must be 1 to {MAX_LABEL_CHARS} characters, without control characters or spaces at either end"
                    )));
                }
                if labels.contains(label) {
                    return Err(invalid(format!("label `{}` is named twice", truncate(label))));
                }
                labels.push(label.clone());
            }
            labels
        }
        (_, Some(_)) => return Err(invalid("`labels` must be an array of strings")),
    };
    if from == to {
        return Err(invalid("an association links two different records"));
    }
    let association = Association { from, to, labels };
    let bytes = association.record_id().len();
    if bytes > MAX_LINK_ID_BYTES {
        return Err(invalid(format!(
            "the two records' types and ids are {bytes} bytes together, more than the {MAX_LINK_ID_BYTES} an \
             association allows"
        )));
    }
    Ok(association)
}

const TYPES: [(&str, ObjectKind, Operation); 6] = [
    ("contact.upsert", ObjectKind::Contact, Operation::Upsert),
    ("contact.delete", ObjectKind::Contact, Operation::Delete),
    ("contact.erase", ObjectKind::Contact, Operation::Erase),
    ("deal.upsert", ObjectKind::Deal, Operation::Upsert),
    ("deal.delete", ObjectKind::Deal, Operation::Delete),
    ("activity.log", ObjectKind::Activity, Operation::Log),
];

const FIELDS: [&str; 11] = [
    "version",
    "type",
    "object_type",
    "record_id",
    "idempotency_id",
    "changed_at",
    "data",
    "contact_record_id",
    "to_object_type",
    "to_record_id",
    "labels",
];

/// The fields only an association change carries.
const ASSOCIATION_FIELDS: [&str; 3] = ["to_object_type", "to_record_id", "labels"];

fn identifier(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, ContractError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.is_empty() || text.chars().count() > MAX_ID_CHARS || text.chars().any(char::is_control) {
                Err(invalid(format!(
                    "`{name}` must be 1 to {MAX_ID_CHARS} characters without control characters"
                )))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
    }
}

fn required_identifier(fields: &Map<String, Value>, name: &str) -> Result<String, ContractError> {
    identifier(fields, name)?.ok_or_else(|| invalid(format!("`{name}` is required")))
}

/// Reads a timestamp given as RFC 3339 text or as epoch milliseconds.
pub fn parse_timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().filter(|ms| *ms > 0),
        Value::String(text) => {
            let parsed =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
            i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
        }
        _ => None,
    }
}

/// Parses and validates one message body.
pub fn parse_change(body: &str) -> Result<Change, ContractError> {
    // Checked before parsing, so that an oversized message costs no parse.
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "the message is {} bytes, more than the {MAX_MESSAGE_BYTES} allowed",
            body.len()
        )));
    }
    let value: Value = serde_json::from_str(body).map_err(|error| {
        invalid(format!(
            "the message is not valid JSON (line {}, column {})",
            error.line(),
            error.column()
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(invalid("the message must be a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(invalid(format!("unknown field `{}`", truncate(unknown))));
    }
    let version = match fields.get("version").and_then(Value::as_u64) {
        Some(version @ (OUTBOUND_CONTRACT_VERSION | OBJECT_CONTRACT_VERSION)) => version,
        Some(other) => {
            return Err(invalid(format!(
                "version {other} is not supported (versions 1 and 2 are)"
            )))
        }
        None => return Err(invalid("`version` is required and must be 1 or 2")),
    };
    let type_name = fields
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`type` is required"))?;
    let (object, operation, is_association) = if version == OBJECT_CONTRACT_VERSION {
        object_type(&fields, type_name)?
    } else {
        if fields.contains_key("object_type") {
            return Err(invalid("`object_type` belongs to version 2 messages"));
        }
        TYPES
            .iter()
            .find(|(name, _, _)| *name == type_name)
            .map(|(_, object, operation)| (*object, *operation, false))
            .ok_or_else(|| {
                invalid(format!(
                    "type `{}` is not one of contact.upsert, contact.delete, contact.erase, deal.upsert, deal.delete, \
                     activity.log",
                    truncate(type_name)
                ))
            })?
    };
    let record_id = required_identifier(&fields, "record_id")?;
    let idempotency_id = required_identifier(&fields, "idempotency_id")?;
    let changed_at_ms = fields
        .get("changed_at")
        .ok_or_else(|| invalid("`changed_at` is required"))
        .and_then(|value| {
            parse_timestamp_ms(value)
                .ok_or_else(|| invalid("`changed_at` must be an RFC 3339 time or epoch milliseconds"))
        })?;
    if !is_association {
        if let Some(field) = ASSOCIATION_FIELDS
            .iter()
            .find(|field| fields.contains_key(**field))
        {
            return Err(invalid(format!(
                "`{field}` belongs to association changes (association.upsert, association.delete)"
            )));
        }
    }
    let contact_record_id = identifier(&fields, "contact_record_id")?;
    if operation == Operation::Log && contact_record_id.is_none() {
        return Err(invalid(
            "activity.log needs `contact_record_id`, the contact it is logged on",
        ));
    }
    if (object == ObjectKind::Contact || !object.is_built_in()) && contact_record_id.is_some() {
        return Err(invalid(
            "`contact_record_id` belongs on deals and activities only",
        ));
    }
    if is_association {
        if contact_record_id.is_some() {
            return Err(invalid(
                "`contact_record_id` belongs on deals and activities only",
            ));
        }
        let from = RecordRef { object, record_id };
        let association = association(&fields, from, operation)?;
        return Ok(Change {
            object: ObjectKind::Link,
            operation,
            record_id: association.record_id(),
            idempotency_id,
            changed_at_ms,
            data: BTreeMap::new(),
            contact_record_id: None,
            association: Some(association),
        });
    }
    let data = match (operation, fields.get("data")) {
        (Operation::Delete | Operation::Erase, None | Some(Value::Null)) => BTreeMap::new(),
        (Operation::Delete | Operation::Erase, Some(_)) => {
            return Err(invalid("a delete or an erasure carries no `data`"))
        }
        (_, Some(Value::Object(data))) => parse_data(data)?,
        (_, _) => return Err(invalid("`data` is required and must be an object")),
    };
    Ok(Change {
        object,
        operation,
        record_id,
        idempotency_id,
        changed_at_ms,
        data,
        contact_record_id,
        association: None,
    })
}

fn parse_data(data: &Map<String, Value>) -> Result<BTreeMap<String, FieldValue>, ContractError> {
    data.iter()
        .map(|(name, value)| {
            if name.is_empty() || name.chars().count() > MAX_ID_CHARS {
                return Err(invalid(format!(
                    "a `data` field name must be 1 to {MAX_ID_CHARS} characters"
                )));
            }
            let value = match value {
                Value::String(text) if text.chars().count() > MAX_VALUE_CHARS => {
                    return Err(invalid(format!(
                        "`data.{}` is {} characters, more than the {MAX_VALUE_CHARS} allowed",
                        truncate(name),
                        text.chars().count()
                    )))
                }
                Value::String(text) => FieldValue::Text(text.clone()),
                Value::Number(number) => FieldValue::Number(number.clone()),
                Value::Bool(flag) => FieldValue::Bool(*flag),
                Value::Null => FieldValue::Null,
                _ => {
                    return Err(invalid(format!(
                        "`data.{}` must be a string, number, boolean or null",
                        truncate(name)
                    )))
                }
            };
            Ok((name.clone(), value))
        })
        .collect()
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACT: &str = r#"{"version":1,"type":"contact.upsert","record_id":"user-42","idempotency_id":"i-1","changed_at":"2026-11-27T10:15:00.123Z","data":{"email":"ada@example.com","age":36,"vip":true,"phone":null}}"#;

    #[test]
    fn a_re_sync_keeps_the_change_and_only_replaces_its_idempotency_id() {
        let rewritten = with_idempotency_id(CONTACT, "resync-1").unwrap();
        let original = parse_change(CONTACT).unwrap();
        let again = parse_change(&rewritten).unwrap();
        assert_eq!(again.idempotency_id, "resync-1");
        assert_eq!(
            Change {
                idempotency_id: original.idempotency_id.clone(),
                ..again
            },
            original
        );
        assert!(with_idempotency_id("[1]", "x").is_err());
        assert!(with_idempotency_id(CONTACT, "").is_err());
    }

    #[test]
    fn only_a_contact_has_a_search_email_and_it_is_lower_cased() {
        let contact = parse_change(&CONTACT.replace("ada@example.com", " Ada@Example.COM ")).unwrap();
        assert_eq!(contact.search_email().as_deref(), Some("ada@example.com"));
        let deal = r#"{"version":1,"type":"deal.upsert","record_id":"d","idempotency_id":"i","changed_at":5,"data":{"name":"x"}}"#;
        assert_eq!(parse_change(deal).unwrap().search_email(), None);
    }

    #[test]
    fn a_contact_upsert_parses_with_its_version_in_milliseconds() {
        let change = parse_change(CONTACT).unwrap();
        assert_eq!(change.object, ObjectKind::Contact);
        assert_eq!(change.operation, Operation::Upsert);
        assert_eq!(change.record_id, "user-42");
        assert_eq!(change.changed_at_ms, 1_795_774_500_123);
        assert_eq!(change.data["age"].to_crm_string(), "36");
        assert_eq!(change.data["vip"].to_crm_string(), "true");
        assert_eq!(change.data["phone"].to_crm_string(), "");
    }

    #[test]
    fn changed_at_may_be_epoch_milliseconds() {
        let body = CONTACT.replace(r#""2026-11-27T10:15:00.123Z""#, "1795774500123");
        assert_eq!(parse_change(&body).unwrap().changed_at_ms, 1_795_774_500_123);
    }

    #[test]
    fn a_delete_needs_no_data_and_may_not_carry_any() {
        let delete =
            r#"{"version":1,"type":"contact.delete","record_id":"u","idempotency_id":"i","changed_at":5}"#;
        assert_eq!(parse_change(delete).unwrap().operation, Operation::Delete);
        let with_data = delete.replace("\"changed_at\":5", "\"changed_at\":5,\"data\":{}");
        assert_eq!(
            parse_change(&with_data).unwrap_err().0,
            "a delete or an erasure carries no `data`"
        );
    }

    /// A published schema's top-level fields, sorted.
    fn schema_fields(schema: &Value) -> Vec<&str> {
        let mut fields: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn the_published_schema_declares_exactly_the_fields_and_types_the_parser_takes() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/outbound-change.v1.json")).unwrap();
        let declared = schema_fields(&schema);
        // Version 2's own fields are not version 1's.
        let mut fields: Vec<&str> = FIELDS
            .iter()
            .copied()
            .filter(|f| *f != "object_type" && !ASSOCIATION_FIELDS.contains(f))
            .collect();
        fields.sort();
        assert_eq!(declared, fields);
        let types: Vec<&str> = schema["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(types, TYPES.iter().map(|(name, _, _)| *name).collect::<Vec<_>>());
    }

    #[test]
    fn every_example_in_the_published_schema_parses() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/outbound-change.v1.json")).unwrap();
        let examples = schema["examples"].as_array().unwrap();
        assert_eq!(examples.len(), 4);
        for example in examples {
            let change = parse_change(&example.to_string()).unwrap_or_else(|e| panic!("{example}: {e}"));
            assert_eq!(change.type_name(), example["type"]);
        }
    }

    #[test]
    fn an_activity_must_name_its_contact() {
        let activity = r#"{"version":1,"type":"activity.log","record_id":"a","idempotency_id":"i","changed_at":5,"data":{"body":"hi"}}"#;
        assert!(parse_change(activity)
            .unwrap_err()
            .0
            .contains("contact_record_id"));
    }

    fn contact_with(record_id: &str, first_name: &str) -> String {
        serde_json::json!({
            "version": 1, "type": "contact.upsert", "record_id": record_id, "idempotency_id": "i",
            "changed_at": 5, "data": {"first_name": first_name}
        })
        .to_string()
    }

    #[test]
    fn identifiers_are_counted_in_characters_as_the_schema_counts_them() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/outbound-change.v1.json")).unwrap();
        for name in ["record_id", "idempotency_id", "contact_record_id"] {
            assert_eq!(schema["properties"][name]["maxLength"], MAX_ID_CHARS);
        }
        // 256 four-byte characters: valid under the schema's maxLength, so valid here.
        let wide = "\u{1F600}".repeat(MAX_ID_CHARS);
        assert_eq!(parse_change(&contact_with(&wide, "Ada")).unwrap().record_id, wide);
        assert!(parse_change(&contact_with(&"é".repeat(200), "Ada")).is_ok());
        let error = parse_change(&contact_with(&format!("{wide}x"), "Ada")).unwrap_err();
        assert!(
            error.0.contains("`record_id` must be 1 to 256 characters"),
            "{error}"
        );
    }

    #[test]
    fn a_field_value_is_taken_at_its_character_limit_and_refused_one_past_it() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/outbound-change.v1.json")).unwrap();
        assert_eq!(
            schema["properties"]["data"]["additionalProperties"]["maxLength"],
            MAX_VALUE_CHARS
        );
        let at_limit = "x".repeat(MAX_VALUE_CHARS);
        assert!(parse_change(&contact_with("u", &at_limit)).is_ok());
        let error = parse_change(&contact_with("u", &format!("{at_limit}x"))).unwrap_err();
        assert_eq!(
            error.0,
            "`data.first_name` is 65537 characters, more than the 65536 allowed"
        );
    }

    #[test]
    fn a_message_is_taken_at_its_byte_limit_and_refused_one_byte_past_it() {
        let empty = contact_with("u", "").len();
        let at_limit = contact_with("u", &"a".repeat(MAX_MESSAGE_BYTES - empty));
        assert_eq!(at_limit.len(), MAX_MESSAGE_BYTES);
        // Past the value limit, so the byte limit is what answers.
        let past = contact_with("u", &"a".repeat(MAX_MESSAGE_BYTES - empty + 1));
        assert!(parse_change(&at_limit).unwrap_err().0.contains("characters"));
        assert_eq!(
            parse_change(&past).unwrap_err().0,
            format!(
                "the message is {} bytes, more than the {MAX_MESSAGE_BYTES} allowed",
                MAX_MESSAGE_BYTES + 1
            )
        );
        let mut fields = serde_json::Map::new();
        for i in 0..2 {
            fields.insert(format!("f{i}"), Value::String("a".repeat(40_000)));
        }
        let two_fields = serde_json::json!({
            "version": 1, "type": "contact.upsert", "record_id": "u", "idempotency_id": "i",
            "changed_at": 5, "data": fields
        })
        .to_string();
        assert!(two_fields.len() <= MAX_MESSAGE_BYTES);
        assert!(parse_change(&two_fields).is_ok());
    }

    #[test]
    fn an_email_too_long_to_be_an_address_is_not_indexed_for_search() {
        let body = CONTACT.replace("ada@example.com", &format!("{}@example.com", "a".repeat(242)));
        assert_eq!(parse_change(&body).unwrap().search_email().unwrap().len(), 254);
        let body = CONTACT.replace("ada@example.com", &format!("{}@example.com", "a".repeat(243)));
        assert_eq!(parse_change(&body).unwrap().search_email(), None);
    }

    #[test]
    fn each_contract_violation_has_a_reason_that_does_not_echo_values() {
        let cases = [
            ("not json", "the message is not valid JSON (line 1, column 2)"),
            ("[1]", "the message must be a JSON object"),
            (&CONTACT.replace("\"version\":1", "\"version\":3"), "version 3 is not supported (versions 1 and 2 are)"),
            (&CONTACT.replace("\"version\":1", "\"version\":2"), "type `contact.upsert` is not one of object.upsert, object.delete, association.upsert, association.delete (version 2)"),
            (&CONTACT.replace("contact.upsert", "contact.merge"), "type `contact.merge` is not one of contact.upsert, contact.delete, contact.erase, deal.upsert, deal.delete, activity.log"),
            (&CONTACT.replace("\"record_id\":\"user-42\"", "\"record_id\":\"\""), "`record_id` must be 1 to 256 characters without control characters"),
            (&CONTACT.replace("\"idempotency_id\":\"i-1\",", ""), "`idempotency_id` is required"),
            (&CONTACT.replace("2026-11-27T10:15:00.123Z", "yesterday"), "`changed_at` must be an RFC 3339 time or epoch milliseconds"),
            (&CONTACT.replace("\"age\":36", "\"age\":[36]"), "`data.age` must be a string, number, boolean or null"),
            (&CONTACT.replace("\"version\":1", "\"version\":1,\"extra\":1"), "unknown field `extra`"),
        ];
        for (body, reason) in cases {
            let error = parse_change(body).unwrap_err();
            assert_eq!(error.0, reason, "for {body}");
            assert!(!error.0.contains("ada@example.com"));
        }
    }

    #[test]
    fn a_declared_object_type_is_one_name_sorted_after_the_built_in_ones_and_read_back_by_serde() {
        let company = ObjectKind::declare("company").unwrap();
        assert_eq!(ObjectKind::declare("company").unwrap(), company, "declared once");
        assert_eq!(ObjectKind::declare("contact").unwrap(), ObjectKind::Contact);
        assert_eq!(ObjectKind::parse("company"), Some(company));
        assert_eq!(ObjectKind::parse("never_declared"), None);
        assert!(!company.is_built_in() && ObjectKind::Deal.is_built_in());
        let mut kinds = vec![
            company,
            ObjectKind::Activity,
            ObjectKind::Contact,
            ObjectKind::Deal,
        ];
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                ObjectKind::Contact,
                ObjectKind::Deal,
                ObjectKind::Activity,
                company
            ]
        );
        assert_eq!(
            format!("{:?} {company:?} {company}", ObjectKind::Contact),
            "Contact company company"
        );
        let json = serde_json::to_string(&(company, ObjectKind::Deal)).unwrap();
        assert_eq!(json, r#"["company","deal"]"#);
        let back: (ObjectKind, ObjectKind) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (company, ObjectKind::Deal));
        assert!(serde_json::from_str::<ObjectKind>(r#""never_declared""#).is_err());
        for bad in [
            "",
            "Company",
            "9lives",
            "com-pany",
            &"x".repeat(MAX_OBJECT_NAME_CHARS + 1),
        ] {
            assert!(ObjectKind::declare(bad).is_err(), "{bad:?}");
        }
        assert!(
            ObjectKind::declare(&"x".repeat(MAX_OBJECT_NAME_CHARS)).is_ok(),
            "at the limit"
        );
    }

    #[test]
    fn a_version_2_message_changes_an_object_type_the_mapping_declares() {
        let project = ObjectKind::declare("project").unwrap();
        let upsert = r#"{"version":2,"type":"object.upsert","object_type":"project","record_id":"p-1","idempotency_id":"i-1","changed_at":5,"data":{"name":"Engine"}}"#;
        let change = parse_change(upsert).unwrap();
        assert_eq!(
            (change.object, change.operation, change.type_name()),
            (project, Operation::Upsert, "object.upsert")
        );
        let delete = r#"{"version":2,"type":"object.delete","object_type":"project","record_id":"p-1","idempotency_id":"i-2","changed_at":6}"#;
        assert_eq!(parse_change(delete).unwrap().type_name(), "object.delete");
        for (body, reason) in [
            (
                upsert.replace("\"project\"", "\"spaceship\""),
                "object_type `spaceship` is not an object type the mapping declares",
            ),
            (
                upsert.replace("\"project\"", "\"contact\""),
                "`contact` changes are version 1 messages (contact.upsert, …)",
            ),
            (
                upsert.replace(",\"object_type\":\"project\"", ""),
                "`object_type` is required in version 2",
            ),
            (
                upsert.replace("object.upsert", "object.erase"),
                "type `object.erase` is not one of object.upsert, object.delete, association.upsert, association.delete (version 2)",
            ),
            (
                upsert.replace("\"version\":2", "\"version\":1"),
                "`object_type` belongs to version 2 messages",
            ),
            (
                upsert.replace("\"data\"", "\"contact_record_id\":\"u-1\",\"data\""),
                "`contact_record_id` belongs on deals and activities only",
            ),
        ] {
            assert_eq!(parse_change(&body).unwrap_err().0, reason, "{body}");
        }
    }

    #[test]
    fn the_published_version_2_schema_declares_the_parsers_fields_and_its_examples_parse() {
        ObjectKind::declare("company").unwrap();
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/outbound-change.v2.json")).unwrap();
        let declared = schema_fields(&schema);
        let mut fields: Vec<&str> = FIELDS
            .iter()
            .copied()
            .filter(|f| *f != "contact_record_id")
            .collect();
        fields.sort();
        assert_eq!(declared, fields);
        let examples = schema["examples"].as_array().unwrap();
        assert_eq!(examples.len(), 4);
        for example in examples {
            let change = parse_change(&example.to_string()).unwrap_or_else(|e| panic!("{example}: {e}"));
            assert_eq!(change.type_name(), example["type"]);
            let from = change
                .association
                .as_ref()
                .map_or(change.object, |a| a.from.object);
            assert_eq!(from.as_str(), example["object_type"]);
        }
    }

    const LINK: &str = r#"{"version":2,"type":"association.upsert","object_type":"contact","record_id":"u-1","to_object_type":"company","to_record_id":"acme","labels":["Billing contact","Decision maker"],"idempotency_id":"l-1","changed_at":5}"#;

    #[test]
    fn an_association_change_is_a_record_of_its_own_named_by_both_ends() {
        ObjectKind::declare("company").unwrap();
        let change = parse_change(LINK).unwrap();
        assert_eq!(change.object, ObjectKind::Link);
        assert_eq!(change.record_id, "contact:u-1|company:acme");
        assert_eq!(change.type_name(), "association.upsert");
        let association = change.association.unwrap();
        assert_eq!(association.from.record_id, "u-1");
        assert_eq!(association.to.object.as_str(), "company");
        assert_eq!(association.labels, ["Billing contact", "Decision maker"]);
        let delete = LINK
            .replace("association.upsert", "association.delete")
            .replace(r#""labels":["Billing contact","Decision maker"],"#, "");
        let delete = parse_change(&delete).unwrap();
        assert_eq!(delete.operation, Operation::Delete);
        assert_eq!(
            delete.record_id, "contact:u-1|company:acme",
            "one record for both operations"
        );
        // Ids holding the separators cannot make two pairs share a record.
        let tricky = LINK
            .replace(r#""u-1""#, r#""a|company:b""#)
            .replace(r#""acme""#, r#""c""#);
        let plain = LINK
            .replace(r#""u-1""#, r#""a""#)
            .replace(r#""acme""#, r#""b|company:c""#);
        assert_ne!(
            parse_change(&tricky).unwrap().record_id,
            parse_change(&plain).unwrap().record_id
        );
    }

    #[test]
    fn an_association_change_is_refused_past_each_of_its_limits() {
        ObjectKind::declare("company").unwrap();
        let with_labels = |labels: Vec<String>| {
            LINK.replace(
                r#"["Billing contact","Decision maker"]"#,
                &serde_json::to_string(&labels).unwrap(),
            )
        };
        let twenty: Vec<String> = (0..MAX_LABELS).map(|n| format!("label {n}")).collect();
        assert_eq!(
            parse_change(&with_labels(twenty.clone()))
                .unwrap()
                .association
                .unwrap()
                .labels
                .len(),
            20
        );
        let mut twenty_one = twenty;
        twenty_one.push("one more".into());
        let long = "é".repeat(MAX_LABEL_CHARS);
        assert!(
            parse_change(&with_labels(vec![long.clone()])).is_ok(),
            "100 characters of 2 bytes each"
        );
        // The record id at DynamoDB's bound for it, and one byte past.
        let fits = format!("{}ab", "𝄞".repeat(251));
        assert_eq!(format!("contact:{fits}|company:a").len(), MAX_LINK_ID_BYTES);
        let at_limit = LINK
            .replace(r#""u-1""#, &format!("\"{fits}\""))
            .replace(r#""acme""#, r#""a""#);
        assert_eq!(
            parse_change(&at_limit).unwrap().record_id.len(),
            MAX_LINK_ID_BYTES
        );
        let past = LINK
            .replace(r#""u-1""#, &format!("\"{fits}c\""))
            .replace(r#""acme""#, r#""a""#);
        for (body, reason) in [
            (with_labels(twenty_one), "`labels` names 21 labels, more than the 20 allowed".to_string()),
            (
                with_labels(vec![format!("{long}x")]),
                "a label must be 1 to 100 characters, without control characters or spaces at either end".into(),
            ),
            (with_labels(vec![" ".into()]), "a label must be 1 to 100 characters, without control characters or spaces at either end".into()),
            (with_labels(vec!["a\nb".into()]), "a label must be 1 to 100 characters, without control characters or spaces at either end".into()),
            (with_labels(vec!["Owner".into(), "Owner".into()]), "label `Owner` is named twice".into()),
            (
                with_labels(vec!["Owner ".into()]),
                "a label must be 1 to 100 characters, without control characters or spaces at either end".into(),
            ),
            (
                LINK.replace(r#""company""#, r#""contact""#).replace(r#""acme""#, r#""u-1""#),
                "an association links two different records".into(),
            ),
            (LINK.replace(r#"["Billing contact","Decision maker"]"#, r#""Owner""#), "`labels` must be an array of strings".into()),
            (LINK.replace(r#""Decision maker""#, "7"), "`labels` must be an array of strings".into()),
            (
                past,
                "the two records' types and ids are 1025 bytes together, more than the 1024 an association allows".into(),
            ),
            (LINK.replace("association.upsert", "association.delete"), "an association.delete carries no `labels`".into()),
            (LINK.replace(r#""changed_at":5"#, r#""changed_at":5,"data":{}"#), "an association change carries no `data`; a pair's labels are its `labels`".into()),
            (LINK.replace(r#""to_object_type":"company","#, ""), "`to_object_type` is required in version 2".into()),
            (LINK.replace(r#""to_record_id":"acme","#, ""), "`to_record_id` is required".into()),
            (LINK.replace(r#""company""#, r#""link""#), "to_object_type `link` is not an object type the mapping declares".into()),
            (LINK.replace(r#""company""#, r#""ship""#), "to_object_type `ship` is not an object type the mapping declares".into()),
            (
                LINK.replace("association.upsert", "object.upsert"),
                "`contact` changes are version 1 messages (contact.upsert, …)".into(),
            ),
            (
                LINK.replace("association.upsert", "contact.upsert").replace(r#""version":2"#, r#""version":1"#).replace(r#""object_type":"contact","#, ""),
                "`to_object_type` belongs to association changes (association.upsert, association.delete)".into(),
            ),
        ] {
            assert_eq!(parse_change(&body).unwrap_err().0, reason, "{body}");
        }
    }
}
