//! Pipedrive's webhook dialect (webhooks v2): HTTP Basic credentials prove a request, and a
//! delivery body is one event, `{"meta": {...}, "data": {...}, "previous": {...}}`.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::contract::ObjectKind;
use crate::domain::identity::IdentityChange;
use crate::domain::inbound::{event_subject, CrmChange, InboundMessage, Interpretation};
use crate::domain::webhook::check_identifier;
use crate::domain::{AuthError, InboundEvent, ParseError, ProviderId, WebhookRequest};
use crate::ports::{CrmEvents, WebhookProvider};

pub const PROVIDER: ProviderId = "pipedrive";

const AUTHORIZATION: &str = "authorization";

/// The credentials set on the webhook when it was created in Pipedrive.
#[derive(Debug, Clone)]
pub struct PipedriveWebhookSettings {
    pub username: String,
    pub password: SecretString,
}

/// [`WebhookProvider`] for Pipedrive.
pub struct PipedriveWebhooks {
    /// SHA-256 of `username:password`: comparing digests keeps the comparison's time independent
    /// of both the secret's length and where a guess first goes wrong.
    expected: [u8; 32],
}

impl PipedriveWebhooks {
    pub fn new(settings: &PipedriveWebhookSettings) -> Self {
        let credentials = format!("{}:{}", settings.username, settings.password.expose_secret());
        Self {
            expected: Sha256::digest(credentials.as_bytes()).into(),
        }
    }
}

impl WebhookProvider for PipedriveWebhooks {
    fn id(&self) -> ProviderId {
        PROVIDER
    }

    fn authenticate(&self, request: &WebhookRequest, _now_ms: i64) -> Result<(), AuthError> {
        let header = request
            .header(AUTHORIZATION)
            .ok_or(AuthError::MissingHeader(AUTHORIZATION))?;
        let (scheme, encoded) = header
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedHeader(AUTHORIZATION))?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::MalformedHeader(AUTHORIZATION));
        }
        let given = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| AuthError::MalformedHeader(AUTHORIZATION))?;
        let digest: [u8; 32] = Sha256::digest(&given).into();
        if bool::from(digest.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
        parse_event(body).map(|event| vec![event])
    }
}

/// Reads a Pipedrive v2 delivery, which holds exactly one event.
pub fn parse_event(body: &[u8]) -> Result<InboundEvent, ParseError> {
    let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|error| ParseError::InvalidJson {
        line: error.line(),
        column: error.column(),
    })?;
    let bad = |problem: String| ParseError::BadEvent { index: 0, problem };
    let fields: Map<String, Value> =
        serde_json::from_str(raw.get()).map_err(|_| bad("an event must be a JSON object".into()))?;
    let meta = fields
        .get("meta")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("`meta` is missing or not an object".into()))?;
    let text = |name: &str| -> Result<String, ParseError> {
        let text = match meta.get(name) {
            Some(Value::String(text)) if !text.is_empty() => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => return Err(bad(format!("`meta.{name}` is missing or not a string"))),
        };
        // Each of these goes into the event's key or the stored item: refused here, by name.
        check_identifier(&format!("meta.{name}"), &text).map_err(bad)?;
        Ok(text)
    };
    let version = text("version")?;
    if !version.starts_with("2.") {
        return Err(bad(format!(
            "`meta.version` {} is not a v2 webhook",
            version.chars().take(16).collect::<String>()
        )));
    }
    let id = text("id")?;
    let action = text("action")?;
    let entity = text("entity")?;
    let entity_id = text("entity_id")?;
    let timestamp = text("timestamp")?;
    let occurred_at_ms = timestamp_ms(&timestamp).ok_or_else(|| {
        bad("`meta.timestamp` is neither an RFC 3339 time nor epoch seconds or milliseconds".into())
    })?;
    // A merge's survivor is an id like the others.
    match meta.get("merged_to_id") {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(Value::String(id)) => check_identifier("meta.merged_to_id", id).map_err(bad)?,
        Some(_) => return Err(bad("`meta.merged_to_id` must be an id".into())),
    }
    if action != "delete" && !fields.get("data").is_some_and(Value::is_object) {
        return Err(bad("`data` is missing or not an object".into()));
    }
    // `meta.id` names the event and stays the same on each retry (only `attempt` changes).
    let key = format!("{entity}:{entity_id}:{id}");
    Ok(InboundEvent {
        provider: PROVIDER,
        key,
        kind: format!("{entity}.{action}"),
        object_type: Some(entity),
        object_id: Some(entity_id),
        occurred_at_ms,
        raw,
    })
}

/// `meta.timestamp` in milliseconds: Pipedrive's examples show RFC 3339 text for some entities and
/// a 10-digit epoch number (seconds) for others; 13 digits are read as milliseconds.
fn timestamp_ms(timestamp: &str) -> Option<i64> {
    if !timestamp.is_empty() && timestamp.bytes().all(|b| b.is_ascii_digit()) {
        let number: i64 = timestamp.parse().ok()?;
        return match timestamp.len() {
            ..=11 => number.checked_mul(1000),
            12..=14 => Some(number),
            _ => None,
        };
    }
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Pipedrive's stored webhook events, read as CRM changes.
#[derive(Debug, Clone, Default)]
pub struct PipedriveEvents {
    /// The object types the mapping declares, by their CRM object (`organizations`).
    declared: std::collections::HashMap<String, ObjectKind>,
}

impl PipedriveEvents {
    /// Events of persons and deals, and of each type `mapping` declares.
    pub fn new(mapping: &crate::domain::mapping::Mapping) -> Self {
        Self {
            declared: mapping.declared_by_crm_object(),
        }
    }
}

impl CrmEvents for PipedriveEvents {
    fn interpret(&self, message: &InboundMessage) -> Interpretation {
        interpret_with(self, message)
    }

    fn align(
        &self,
        object: ObjectKind,
        values: &mut std::collections::BTreeMap<String, String>,
        written: &std::collections::BTreeMap<String, String>,
    ) {
        if object == ObjectKind::Contact {
            align_name_parts(values, written);
        }
    }
}

/// A person's name parts as crm-sync wrote them, when Pipedrive's `name` is still the name they
/// make: Pipedrive keeps only `name` and splits it at its first space, so `Mary Ann` + `Smith`
/// reads back as `Mary` + `Ann Smith`, which is no change and must not count as one.
pub fn align_name_parts(
    values: &mut std::collections::BTreeMap<String, String>,
    written: &std::collections::BTreeMap<String, String>,
) {
    const PARTS: [&str; 2] = ["first_name", "last_name"];
    let Some(name) = values.get("name") else {
        return;
    };
    if !PARTS.iter().any(|part| written.contains_key(*part)) {
        return;
    }
    let part = |name: &str| written.get(name).map(|v| v.trim()).unwrap_or_default();
    let composed = format!("{} {}", part("first_name"), part("last_name"));
    if name.trim() != composed.trim() {
        return;
    }
    // Every part, as written: a part crm-sync never wrote is empty, whatever Pipedrive's split
    // made of the name (`Rep` alone reads back as first name `Rep`).
    for name in PARTS {
        values.insert(name.to_string(), written.get(name).cloned().unwrap_or_default());
    }
}

/// Reads a stored Pipedrive event as a change of a person (contact) or a deal.
///
/// Properties are Pipedrive's field keys, flattened: the primary entry of `emails` and `phones`
/// becomes `email` and `phone`, each custom field is its hash key, other scalars keep their key.
/// A change carries only the fields `previous` names, with their new values from `data`.
pub fn interpret(message: &InboundMessage) -> Interpretation {
    interpret_with(&PipedriveEvents::default(), message)
}

/// The CRM object of a webhook entity: `organization` → `organizations`, `activity` →
/// `activities`.
fn plural(entity: &str) -> String {
    match entity.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{entity}s"),
    }
}

/// [`interpret`], with the object types the mapping declares: an event's entity is the
/// singular of its CRM object (`organization` for `organizations`).
pub fn interpret_with(events: &PipedriveEvents, message: &InboundMessage) -> Interpretation {
    let subject = match event_subject(message, |entity| match entity {
        "person" => Some(ObjectKind::Contact),
        "deal" => Some(ObjectKind::Deal),
        entity => events.declared.get(&plural(entity)).copied(),
    }) {
        Ok(subject) => subject,
        Err(ignored) => return ignored,
    };
    let (entity, action) = (subject.prefix, subject.action);
    let event = &message.event;
    let source = event
        .pointer("/meta/change_source")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let data = event.get("data").and_then(Value::as_object);
    let properties = match (action, data) {
        ("create", Some(data)) => flatten(data, None),
        ("change", Some(data)) => {
            let previous = event.get("previous").and_then(Value::as_object);
            let changed = flatten(data, previous);
            if changed.is_empty() {
                return Interpretation::Ignore("a change that names no changed field".into());
            }
            changed
        }
        ("create" | "change", None) => return Interpretation::Ignore("the event carries no data".into()),
        // A merge: the loser is deleted with the survivor's id in `meta.merged_to_id` (the
        // survivor's own `change` follows as a separate event).
        ("delete", _) => {
            let survivor = match event.pointer("/meta/merged_to_id") {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(id)) => id.to_string(),
                _ => return Interpretation::Ignore(format!("{entity}.delete events are not synced")),
            };
            return match IdentityChange::merge(
                subject.object,
                survivor,
                None,
                [subject.crm_id],
                message.occurred_at_ms,
                source,
            ) {
                Some(change) => Interpretation::Identity(change),
                None => Interpretation::Ignore("a merge of a record into itself".into()),
            };
        }
        (other, _) => return Interpretation::Ignore(format!("{entity}.{other} events are not synced")),
    };
    Interpretation::Change(CrmChange {
        object: subject.object,
        crm_id: subject.crm_id,
        occurred_at_ms: message.occurred_at_ms,
        from_integration: source == "api",
        source,
        created: action == "create",
        properties: Some(properties),
    })
}

/// The record's fields as flat properties; only those `previous` names, when it is given.
pub(crate) fn flatten(
    data: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
) -> std::collections::BTreeMap<String, String> {
    let wanted = |key: &str| previous.is_none_or(|previous| previous.contains_key(key));
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in data {
        match (key.as_str(), value) {
            ("emails" | "phones", _) if wanted(key) => {
                let name = if key == "emails" { "email" } else { "phone" };
                out.insert(name.to_string(), primary(value));
            }
            ("custom_fields", Value::Object(custom)) => {
                let changed = previous
                    .and_then(|previous| previous.get("custom_fields"))
                    .and_then(Value::as_object);
                for (hash, value) in custom {
                    if previous.is_none() || changed.is_some_and(|changed| changed.contains_key(hash)) {
                        out.insert(hash.clone(), scalar(value));
                    }
                }
            }
            (_, Value::Object(_) | Value::Array(_)) => {}
            _ if wanted(key) => {
                out.insert(key.clone(), scalar(value));
            }
            _ => {}
        }
    }
    out
}

/// The primary entry's value of Pipedrive's `[{value, primary, label}]`, else the first one's.
fn primary(entries: &Value) -> String {
    let list = entries.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter()
        .find(|entry| entry.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| list.first())
        .and_then(|entry| entry.get("value"))
        .map(scalar)
        .unwrap_or_default()
}

/// A field's value as text. Webhooks wrap custom fields as `{type, value}`, or `{type, id}` for
/// enum, people, org and user fields, and `{type, values: [{id}]}` for sets (ids joined by
/// commas, as Pipedrive's API takes them); the REST API gives bare values.
fn scalar(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Object(object) => {
            if let Some(value) = object.get("value") {
                scalar(value)
            } else if let Some(id) = object.get("id") {
                scalar(id)
            } else if let Some(Value::Array(values)) = object.get("values") {
                values
                    .iter()
                    .map(|entry| entry.get("id").map(scalar).unwrap_or_else(|| scalar(entry)))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                String::new()
            }
        }
        Value::Array(values) => values.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_entity_names_the_crm_object_of_its_plural() {
        assert_eq!(plural("organization"), "organizations");
        assert_eq!(plural("activity"), "activities");
        assert_eq!(plural("lead"), "leads");
    }

    const USER: &str = "crm-sync";
    const PASSWORD: &str = "correct horse battery staple";

    fn provider() -> PipedriveWebhooks {
        PipedriveWebhooks::new(&PipedriveWebhookSettings {
            username: USER.into(),
            password: SecretString::from(PASSWORD),
        })
    }

    fn request(authorization: Option<String>) -> WebhookRequest {
        WebhookRequest {
            method: "POST".into(),
            public_url: "https://hooks.example.com/webhooks/pipedrive".into(),
            headers: authorization
                .map(|value| vec![("authorization".to_string(), value)])
                .unwrap_or_default(),
            body: br#"{"meta":{}}"#.to_vec(),
        }
    }

    fn basic(credentials: &str) -> Option<String> {
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }

    #[test]
    fn the_webhooks_own_basic_credentials_are_authentic() {
        assert_eq!(
            provider().authenticate(&request(basic(&format!("{USER}:{PASSWORD}"))), 0),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_password_or_user_is_refused() {
        let provider = provider();
        for credentials in [
            format!("{USER}:{PASSWORD}x"),
            format!("{USER}:"),
            format!("other:{PASSWORD}"),
            ":".to_string(),
        ] {
            assert_eq!(
                provider.authenticate(&request(basic(&credentials)), 0),
                Err(AuthError::BadCredentials),
                "{credentials}"
            );
        }
    }

    #[test]
    fn a_missing_or_malformed_authorization_header_is_refused() {
        let provider = provider();
        assert_eq!(
            provider.authenticate(&request(None), 0),
            Err(AuthError::MissingHeader("authorization"))
        );
        for header in ["Bearer abc", "Basic", "Basic not*base64"] {
            assert_eq!(
                provider.authenticate(&request(Some(header.into())), 0),
                Err(AuthError::MalformedHeader("authorization")),
                "{header}"
            );
        }
    }

    const CHANGE: &str = r#"{
        "meta": {"action":"change","entity":"person","entity_id":"42","id":"8f2b7c1e-2f0a-4c1b-9d55-0c4c6b1a9e10",
                 "timestamp":"2026-11-27T10:00:00.250Z","attempt":1,"change_source":"app","version":"2.0",
                 "company_id":"7","user_id":"9","is_bulk_edit":false,"correlation_id":"c-1","type":"general"},
        "data": {"id":42,"name":"Ada Lovelace","first_name":"Ada","last_name":"Lovelace",
                 "emails":[{"value":"old@example.com","primary":false,"label":"home"},{"value":"ada@example.com","primary":true,"label":"work"}],
                 "phones":[{"value":"+44 20 7946 0000","primary":true,"label":"work"}],
                 "custom_fields":{"a1b2c3":"gold","d4e5f6":{"value":12,"currency":"EUR"}},
                 "owner_id":9,"label_ids":[]},
        "previous": {"emails":[{"value":"old@example.com","primary":true,"label":"home"}],"custom_fields":{"a1b2c3":"silver"}}
    }"#;

    #[test]
    fn an_event_parses_with_a_key_that_ignores_the_attempt_number() {
        let event = parse_event(CHANGE.as_bytes()).expect("valid");
        assert_eq!(event.kind, "person.change");
        assert_eq!(event.object_type.as_deref(), Some("person"));
        assert_eq!(event.object_id.as_deref(), Some("42"));
        assert_eq!(event.occurred_at_ms, 1_795_773_600_250);
        let retried = CHANGE.replace(r#""attempt":1"#, r#""attempt":2"#);
        assert_eq!(parse_event(retried.as_bytes()).expect("valid").key, event.key);
        let other = CHANGE.replace("8f2b7c1e", "0000aaaa");
        assert_ne!(parse_event(other.as_bytes()).expect("valid").key, event.key);
    }

    #[test]
    fn each_key_field_is_taken_at_its_length_limit_and_refused_by_name_one_byte_past_it() {
        let limit = crate::domain::webhook::MAX_IDENTIFIER_BYTES;
        let mut event: Value = serde_json::from_str(CHANGE).unwrap();
        for (field, at_limit) in [
            ("id", "7".repeat(limit)),
            ("entity", format!("person{}", " ".repeat(limit - 6))),
            ("entity_id", "7".repeat(limit)),
            ("action", format!("change{}", " ".repeat(limit - 6))),
            ("version", format!("2.{}", "0".repeat(limit - 2))),
            ("timestamp", "1".repeat(limit)),
            ("merged_to_id", "7".repeat(limit)),
        ] {
            let original = event["meta"][field].clone();
            event["meta"][field] = Value::String(at_limit.clone());
            let error = parse_event(event.to_string().as_bytes())
                .err()
                .map(|e| e.to_string());
            assert!(
                !error.as_deref().unwrap_or_default().contains("bytes long"),
                "meta.{field} at the limit: {error:?}"
            );
            event["meta"][field] = Value::String(format!("{at_limit}7"));
            assert_eq!(
                parse_event(event.to_string().as_bytes()).unwrap_err().to_string(),
                format!("event 0: `meta.{field}` is 257 bytes long, more than the 256 allowed")
            );
            event["meta"][field] = original;
        }
    }

    #[test]
    fn malformed_deliveries_are_rejected_with_a_reason() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[]", "must be a JSON object"),
            (r#"{"data":{}}"#, "`meta` is missing"),
            (
                &CHANGE.replace(r#""version":"2.0""#, r#""version":"1.0""#),
                "not a v2 webhook",
            ),
            (
                &CHANGE.replace(
                    r#""timestamp":"2026-11-27T10:00:00.250Z""#,
                    r#""timestamp":"yesterday""#,
                ),
                "RFC 3339",
            ),
            (
                &CHANGE.replace(r#""entity_id":"42""#, r#""entity_id":"""#),
                "`meta.entity_id`",
            ),
        ];
        for (body, reason) in cases {
            let error = parse_event(body.as_bytes()).expect_err(body).to_string();
            assert!(error.contains(reason), "{body}: {error}");
        }
    }

    fn message(body: &str) -> InboundMessage {
        let event = parse_event(body.as_bytes()).expect("valid");
        InboundMessage {
            provider: PROVIDER.into(),
            event_key: event.key,
            delivery_id: None,
            received_at_ms: None,
            kind: event.kind,
            object_type: event.object_type,
            object_id: event.object_id,
            occurred_at_ms: event.occurred_at_ms,
            event: serde_json::from_str(event.raw.get()).expect("json"),
        }
    }

    #[test]
    fn a_change_carries_only_the_fields_previous_names_with_their_new_values() {
        let Interpretation::Change(change) = interpret(&message(CHANGE)) else {
            panic!("a person change is a change");
        };
        assert_eq!(change.object, ObjectKind::Contact);
        assert_eq!(change.crm_id, "42");
        assert!(!change.created);
        assert_eq!(
            change.properties,
            Some(
                [
                    ("a1b2c3".to_string(), "gold".to_string()),
                    ("email".into(), "ada@example.com".into())
                ]
                .into()
            )
        );
    }

    #[test]
    fn the_api_as_change_source_marks_an_integration_write() {
        let Interpretation::Change(by_person) = interpret(&message(CHANGE)) else {
            panic!("change");
        };
        assert!(!by_person.from_integration);
        assert_eq!(by_person.source, "app");
        let by_api = CHANGE.replace(r#""change_source":"app""#, r#""change_source":"api""#);
        let Interpretation::Change(by_api) = interpret(&message(&by_api)) else {
            panic!("change");
        };
        assert!(by_api.from_integration);
    }

    #[test]
    fn a_creation_carries_every_field_and_custom_values_unwrap() {
        let created = CHANGE
            .replace(r#""action":"change""#, r#""action":"create""#)
            .replace(r#""entity":"person""#, r#""entity":"deal""#);
        let Interpretation::Change(change) = interpret(&message(&created)) else {
            panic!("a deal creation is a change");
        };
        assert_eq!(change.object, ObjectKind::Deal);
        assert!(change.created);
        let properties = change.properties.expect("values");
        assert_eq!(properties["phone"], "+44 20 7946 0000");
        assert_eq!(properties["d4e5f6"], "12");
        assert_eq!(properties["name"], "Ada Lovelace");
        assert!(!properties.contains_key("label_ids"));
    }

    #[test]
    fn deletions_and_other_entities_are_ignored_with_a_reason() {
        let deleted = CHANGE.replace(r#""action":"change""#, r#""action":"delete""#);
        assert!(
            matches!(interpret(&message(&deleted)), Interpretation::Ignore(reason) if reason.contains("delete"))
        );
        let organization = CHANGE.replace(r#""entity":"person""#, r#""entity":"organization""#);
        assert!(
            matches!(interpret(&message(&organization)), Interpretation::Ignore(reason) if reason.contains("organization"))
        );
    }

    #[test]
    fn a_delete_carrying_merged_to_id_is_a_merge_into_that_record() {
        let merged = CHANGE
            .replace(r#""action":"change""#, r#""action":"delete""#)
            .replace(r#""version":"2.0""#, r#""version":"2.0","merged_to_id":"4410""#);
        let Interpretation::Identity(change) = interpret(&message(&merged)) else {
            panic!("a merge is an identity change");
        };
        assert_eq!(change.crm_id, "4410");
        let crate::domain::identity::IdentityKind::Merged { merged, .. } = change.kind else {
            panic!("a merge");
        };
        assert_eq!(merged, vec![message(CHANGE).object_id.unwrap()]);
    }

    #[test]
    fn name_parts_read_back_as_written_while_the_name_is_the_one_they_make() {
        let written: std::collections::BTreeMap<String, String> =
            [("first_name", "Mary Ann"), ("last_name", "Smith")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let read = |name: &str, first: &str, last: &str| -> std::collections::BTreeMap<String, String> {
            [("name", name), ("first_name", first), ("last_name", last)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut same = read("Mary Ann Smith", "Mary", "Ann Smith");
        align_name_parts(&mut same, &written);
        assert_eq!(
            (same["first_name"].as_str(), same["last_name"].as_str()),
            ("Mary Ann", "Smith")
        );
        // Renamed in Pipedrive: the CRM's parts stand, and differ.
        let mut renamed = read("Mary Ann Jones", "Mary", "Ann Jones");
        align_name_parts(&mut renamed, &written);
        assert_eq!(renamed["last_name"], "Ann Jones");
        // Only a last name written: Pipedrive's first name is its split, not the app's.
        let last_only: std::collections::BTreeMap<String, String> =
            [("last_name".to_string(), "Rep".to_string())].into();
        let mut split = read("Rep", "Rep", "");
        align_name_parts(&mut split, &last_only);
        assert_eq!(
            (split["first_name"].as_str(), split["last_name"].as_str()),
            ("", "Rep")
        );
        // Nothing written: nothing to align with.
        let mut untouched = read("Mary Ann Smith", "Mary", "Ann Smith");
        align_name_parts(&mut untouched, &Default::default());
        assert_eq!(untouched["first_name"], "Mary");
    }

    #[test]
    fn a_timestamp_may_be_rfc_3339_text_or_epoch_seconds_or_milliseconds() {
        assert_eq!(timestamp_ms("2026-11-27T10:15:00Z"), Some(1_795_774_500_000));
        assert_eq!(timestamp_ms("1795774500"), Some(1_795_774_500_000));
        assert_eq!(timestamp_ms("1795774500123"), Some(1_795_774_500_123));
        assert_eq!(timestamp_ms("17957745001234567"), None);
        assert_eq!(timestamp_ms("yesterday"), None);
    }

    #[test]
    fn a_numeric_timestamp_in_meta_is_read_as_epoch_seconds() {
        let body = serde_json::json!({
            "meta": {"action": "change", "entity": "person", "entity_id": "7", "id": "e-1",
                     "timestamp": 1795774500, "version": "2.0", "change_source": "app"},
            "data": {"id": 7, "name": "Ada"}, "previous": {"name": "Ad"}
        });
        let event = parse_event(body.to_string().as_bytes()).unwrap();
        assert_eq!(event.occurred_at_ms, 1_795_774_500_000);
    }

    #[test]
    fn custom_fields_of_every_type_read_as_their_value_or_ids() {
        let data = serde_json::json!({
            "id": 7,
            "custom_fields": {
                "text": {"type": "varchar", "value": "app-7"},
                "amount": {"type": "double", "value": 12.5},
                "tier": {"type": "enum", "id": 17},
                "tags": {"type": "set", "values": [{"id": 13}, {"id": 14}]},
                "manager": {"type": "user", "id": 3},
                "bare": "plain",
                "empty": null
            }
        });
        let flat = flatten(data.as_object().unwrap(), None);
        assert_eq!(flat["text"], "app-7");
        assert_eq!(flat["amount"], "12.5");
        assert_eq!(flat["tier"], "17");
        assert_eq!(flat["tags"], "13,14");
        assert_eq!(flat["manager"], "3");
        assert_eq!(flat["bare"], "plain");
        assert_eq!(flat["empty"], "");
    }
}
