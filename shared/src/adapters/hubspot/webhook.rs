//! HubSpot's webhook dialect: which signature headers prove a request, and how a delivery body
//! (a JSON array of events) becomes [`InboundEvent`]s.

use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{signature, STANDARD_OBJECTS};
use crate::domain::contract::ObjectKind;
use crate::domain::identity::{IdentityChange, IdentityKind, MAX_MERGED_IDS};
use crate::domain::inbound::{event_subject, CrmChange, InboundMessage, Interpretation, LinkChange};
use crate::domain::webhook::check_identifier;
use crate::domain::{AuthError, InboundEvent, ParseError, ProviderId, WebhookRequest};
use crate::ports::{CrmEvents, WebhookProvider};

pub const PROVIDER: ProviderId = "hubspot";

const V3_SIGNATURE: &str = "X-HubSpot-Signature-v3";
const V3_TIMESTAMP: &str = "X-HubSpot-Request-Timestamp";
const LEGACY_SIGNATURE: &str = "X-HubSpot-Signature";
const LEGACY_VERSION: &str = "X-HubSpot-Signature-Version";

/// How HubSpot webhooks are checked.
#[derive(Debug, Clone)]
pub struct HubSpotWebhookSettings {
    /// The app's client secret, the key of every signature version.
    pub client_secret: SecretString,
    /// Accept v1/v2 signatures (older subscriptions). They carry no timestamp, so no replay window.
    pub accept_legacy_signatures: bool,
    /// How far a v3 timestamp may be from now, either way (HubSpot's SDKs use 300 s).
    pub replay_window_secs: u64,
    /// The most events one delivery may hold (HubSpot sends fewer than 100).
    pub max_events: usize,
}

impl HubSpotWebhookSettings {
    pub fn new(client_secret: SecretString) -> Self {
        Self {
            client_secret,
            accept_legacy_signatures: true,
            replay_window_secs: 300,
            max_events: 100,
        }
    }
}

/// HubSpot as a [`WebhookProvider`].
#[derive(Debug, Clone)]
pub struct HubSpotWebhooks {
    settings: HubSpotWebhookSettings,
}

impl HubSpotWebhooks {
    pub fn new(settings: HubSpotWebhookSettings) -> Self {
        Self { settings }
    }

    fn secret(&self) -> &[u8] {
        self.settings.client_secret.expose_secret().as_bytes()
    }

    fn authenticate_v3(
        &self,
        request: &WebhookRequest,
        signature: &str,
        now_ms: i64,
    ) -> Result<(), AuthError> {
        let timestamp = request
            .header(V3_TIMESTAMP)
            .ok_or(AuthError::MissingHeader(V3_TIMESTAMP))?
            .trim();
        let sent_at_ms: i64 = timestamp
            .parse()
            .map_err(|_| AuthError::MalformedHeader(V3_TIMESTAMP))?;
        let window_ms =
            i64::try_from(self.settings.replay_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now_ms.abs_diff(sent_at_ms) > window_ms.unsigned_abs() {
            return Err(AuthError::StaleTimestamp {
                window_secs: self.settings.replay_window_secs,
            });
        }
        let valid = signature::verify_v3(
            self.secret(),
            &request.method,
            &request.public_url,
            &request.body,
            timestamp,
            signature,
        );
        valid.then_some(()).ok_or(AuthError::SignatureMismatch)
    }

    fn authenticate_legacy(&self, request: &WebhookRequest, signature: &str) -> Result<(), AuthError> {
        let version = request.header(LEGACY_VERSION).unwrap_or("v1").trim();
        if !self.settings.accept_legacy_signatures {
            return Err(AuthError::UnsupportedVersion(short(version)));
        }
        let valid = match version {
            "v1" => signature::verify_v1(self.secret(), &request.body, signature),
            "v2" => signature::verify_v2(
                self.secret(),
                &request.method,
                &request.public_url,
                &request.body,
                signature,
            ),
            other => return Err(AuthError::UnsupportedVersion(short(other))),
        };
        valid.then_some(()).ok_or(AuthError::SignatureMismatch)
    }
}

/// Caps a caller-supplied value before it goes into an error message.
fn short(value: &str) -> String {
    value.chars().take(16).collect()
}

impl WebhookProvider for HubSpotWebhooks {
    fn id(&self) -> ProviderId {
        PROVIDER
    }

    fn authenticate(&self, request: &WebhookRequest, now_ms: i64) -> Result<(), AuthError> {
        // v3 wins when both are present: it is the only version with a replay window.
        if let Some(signature) = request.header(V3_SIGNATURE) {
            return self.authenticate_v3(request, signature, now_ms);
        }
        if let Some(signature) = request.header(LEGACY_SIGNATURE) {
            return self.authenticate_legacy(request, signature);
        }
        Err(AuthError::MissingHeader(V3_SIGNATURE))
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
        parse_events(body, self.settings.max_events)
    }
}

/// HubSpot's `changeSource` values that mean "written through the API by an app".
const INTEGRATION_SOURCES: [&str; 2] = ["INTEGRATION", "API"];

/// HubSpot's stored webhook events, read as CRM changes.
#[derive(Debug, Clone, Default)]
pub struct HubSpotEvents {
    /// The object types the mapping declares, by each name HubSpot gives their CRM object in
    /// events: `companies` is `company.*` and objectTypeId `0-2`; a custom object is its
    /// objectTypeId (`2-…`), as the mapping names it.
    declared: HashMap<String, ObjectKind>,
}

impl HubSpotEvents {
    /// Events of the built-in types, and of each type `mapping` declares.
    pub fn new(mapping: &crate::domain::mapping::Mapping) -> Self {
        let mut declared = HashMap::new();
        for (crm_object, kind) in mapping.declared_by_crm_object() {
            if let Some((prefix, type_id)) = STANDARD_OBJECTS.iter().find_map(|(plural, prefix, type_id)| {
                (*plural == crm_object || *type_id == crm_object).then_some((*prefix, *type_id))
            }) {
                declared.insert(prefix.to_string(), kind);
                declared.insert(type_id.to_string(), kind);
            }
            declared.insert(crm_object, kind);
        }
        Self { declared }
    }

    /// The type of an event's object: by its `{type}.` prefix, or for a generic `object.*`
    /// event, by its objectTypeId.
    fn object_of(&self, prefix: &str, object_type: Option<&str>) -> Option<ObjectKind> {
        match (prefix, object_type) {
            ("contact", _) | ("object", Some("0-1")) => Some(ObjectKind::Contact),
            ("deal", _) | ("object", Some("0-3")) => Some(ObjectKind::Deal),
            ("object", Some(type_id)) => self.declared.get(&type_id.to_ascii_lowercase()).copied(),
            (prefix, _) => self.declared.get(prefix).copied(),
        }
    }
}

impl CrmEvents for HubSpotEvents {
    fn interpret(&self, message: &InboundMessage) -> Interpretation {
        interpret_with(self, message)
    }
}

/// Reads a stored HubSpot event of a built-in type (see [`interpret_with`]).
pub fn interpret(message: &InboundMessage) -> Interpretation {
    interpret_with(&HubSpotEvents::default(), message)
}

/// Reads a stored HubSpot event as a change of a record: `contact.propertyChange`,
/// `company.propertyChange` for a type the mapping declares on companies, and from HubSpot's
/// generic subscriptions, `object.propertyChange` with the type's objectTypeId.
pub fn interpret_with(events: &HubSpotEvents, message: &InboundMessage) -> Interpretation {
    if message.kind.ends_with(".associationChange") {
        return link(message);
    }
    let subject = match event_subject(message, |prefix| {
        events.object_of(prefix, message.object_type.as_deref())
    }) {
        Ok(subject) => subject,
        Err(ignored) => return ignored,
    };
    let action = subject.action;
    let event = &message.event;
    let source = event
        .get("changeSource")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
        .to_string();
    let from_integration = INTEGRATION_SOURCES.contains(&source.as_str());
    let properties = match action {
        "propertyChange" => {
            let Some(property) = event.get("propertyName").and_then(Value::as_str) else {
                return Interpretation::Ignore("a property change without a property".into());
            };
            match event.get("propertyValue") {
                // Sensitive values arrive redacted: read them from the CRM instead.
                Some(Value::String(value)) if value == "REDACTED" => None,
                Some(Value::String(value)) => Some([(property.to_string(), value.clone())].into()),
                Some(Value::Null) | None => Some([(property.to_string(), String::new())].into()),
                Some(other) => Some([(property.to_string(), other.to_string())].into()),
            }
        }
        "creation" => None,
        // A privacy deletion is a contact's; restores of declared types are not followed yet.
        "privacyDeletion" | "restore" if subject.object.is_declared() => {
            return Interpretation::Ignore(format!(
                "{}.{action} events are not followed for declared object types",
                subject.object
            ))
        }
        "merge" | "restore" | "privacyDeletion" => {
            return identity(message, subject.object, subject.crm_id, action, source)
        }
        other => {
            return Interpretation::Ignore(format!(
                "{}.{other} events are not synced",
                subject.object.as_str()
            ))
        }
    };
    Interpretation::Change(CrmChange {
        object: subject.object,
        crm_id: subject.crm_id,
        occurred_at_ms: message.occurred_at_ms,
        source,
        from_integration,
        created: action == "creation",
        properties,
    })
}

/// An association change: only a deal's side of its link to a contact is read (HubSpot sends
/// one event for each side).
fn link(message: &InboundMessage) -> Interpretation {
    let event = &message.event;
    let text = |name: &str| match event.get(name) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    // HubSpot's own deal-to-contact link (type 3), not a label a person defined.
    let deal_to_contact = text("associationType").as_deref() == Some("DEAL_TO_CONTACT")
        || (text("fromObjectTypeId").as_deref() == Some("0-3")
            && text("toObjectTypeId").as_deref() == Some("0-1")
            && text("associationTypeId").is_none_or(|id| id == "3"));
    if !deal_to_contact {
        return Interpretation::Ignore(format!(
            "only a deal's link to its contact is synced, not {}",
            text("associationType").unwrap_or_else(|| "this association".into())
        ));
    }
    let (Some(crm_id), Some(contact_crm_id)) = (text("fromObjectId"), text("toObjectId")) else {
        return Interpretation::Ignore("an association change that names no records".into());
    };
    let source = text("changeSource").unwrap_or_else(|| "UNKNOWN".into());
    Interpretation::Link(LinkChange {
        crm_id,
        contact_crm_id,
        removed: event
            .get("associationRemoved")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        occurred_at_ms: message.occurred_at_ms,
        from_integration: INTEGRATION_SOURCES.contains(&source.as_str()),
        source,
    })
}

/// A merge, restore or privacy deletion. A merge names the survivor `newObjectId` when HubSpot
/// made a new record of the merge (contacts and companies), else `primaryObjectId`; every other id
/// it names (the primary's included, when a new record replaced it) is merged away.
fn identity(
    message: &InboundMessage,
    object: ObjectKind,
    crm_id: String,
    action: &str,
    source: String,
) -> Interpretation {
    let event = &message.event;
    let id = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let kind = match action {
        "restore" => IdentityKind::Restored,
        "privacyDeletion" => IdentityKind::Erased,
        _ => {
            let named = |name: &str| event.get(name).and_then(id);
            let survivor = named("newObjectId")
                .or_else(|| named("primaryObjectId"))
                .unwrap_or_else(|| crm_id.clone());
            let merged = event
                .get("mergedObjectIds")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(id)
                .chain(named("primaryObjectId"))
                .chain(Some(crm_id));
            return match IdentityChange::merge(
                object,
                survivor,
                named("primaryObjectId"),
                merged,
                message.occurred_at_ms,
                source,
            ) {
                Some(change) => Interpretation::Identity(change),
                None => Interpretation::Ignore("a merge that names no record merged away".into()),
            };
        }
    };
    Interpretation::Identity(IdentityChange {
        object,
        crm_id,
        kind,
        occurred_at_ms: message.occurred_at_ms,
        source,
    })
}

/// Reads a HubSpot delivery: a JSON array of 1..=`max_events` event objects.
pub fn parse_events(body: &[u8], max_events: usize) -> Result<Vec<InboundEvent>, ParseError> {
    let items: Vec<Box<RawValue>> = serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ParseError::NotAnArray,
        _ => ParseError::InvalidJson {
            line: error.line(),
            column: error.column(),
        },
    })?;
    ParseError::check_count(items.len(), max_events)?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| parse_event(raw).map_err(|problem| ParseError::BadEvent { index, problem }))
        .collect()
}

fn parse_event(raw: Box<RawValue>) -> Result<InboundEvent, String> {
    let fields: Map<String, Value> =
        serde_json::from_str(raw.get()).map_err(|_| "an event must be a JSON object".to_string())?;
    let integer = |name: &str| -> Result<i64, String> {
        fields
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("`{name}` is missing or not an integer"))
    };
    let optional_text = |name: &str| -> Result<Option<String>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(format!("`{name}` must be a string or a number")),
        }
    };

    let event_id = integer("eventId")?;
    let subscription_id = integer("subscriptionId")?;
    let portal_id = integer("portalId")?;
    let occurred_at_ms = integer("occurredAt")?;
    let kind = fields
        .get("subscriptionType")
        .and_then(Value::as_str)
        .filter(|kind| !kind.is_empty())
        .ok_or_else(|| "`subscriptionType` is missing or not a string".to_string())?
        .to_string();
    // An association change names its records as `fromObjectId` and `toObjectId` (and may carry
    // no `objectId`): they, and whether the link went, tell one such event from another.
    let association = kind.ends_with(".associationChange");
    let object_id = match optional_text("objectId")? {
        None if association => optional_text("fromObjectId")?,
        id => id,
    };
    let property = if association {
        Some(format!(
            "{}>{}:{}",
            optional_text("fromObjectId")?.unwrap_or_default(),
            optional_text("toObjectId")?.unwrap_or_default(),
            if fields.get("associationRemoved").and_then(Value::as_bool) == Some(true) {
                "removed"
            } else {
                "added"
            }
        ))
    } else {
        optional_text("propertyName")?
    };
    let object_type = match kind.split_once('.') {
        // Generic subscriptions name the type by id (0-1 contact, 0-3 deal, ...).
        Some(("object", _)) => optional_text("objectTypeId")?,
        Some((prefix, _)) => Some(prefix.to_string()),
        None => None,
    };
    // A merge names its records: a bounded list of ids, each an identifier.
    if let Some(merged) = fields.get("mergedObjectIds") {
        let ids = merged
            .as_array()
            .ok_or_else(|| "`mergedObjectIds` must be an array".to_string())?;
        if ids.len() > MAX_MERGED_IDS {
            return Err(format!(
                "`mergedObjectIds` names {} records, more than the {MAX_MERGED_IDS} allowed",
                ids.len()
            ));
        }
        for id in ids {
            match id {
                Value::String(text) => check_identifier("mergedObjectIds", text)?,
                Value::Number(_) => {}
                _ => return Err("`mergedObjectIds` must hold ids (strings or numbers)".to_string()),
            }
        }
    }
    for name in ["primaryObjectId", "newObjectId"] {
        check_identifier(name, optional_text(name)?.as_deref().unwrap_or_default())?;
    }
    // These make up the event's key: refused here, with the field's name, rather than by
    // DynamoDB after the delivery is stored.
    check_identifier("subscriptionType", &kind)?;
    for (name, value) in [
        ("objectId", &object_id),
        ("propertyName", &property),
        ("objectTypeId", &object_type),
    ] {
        check_identifier(name, value.as_deref().unwrap_or_default())?;
    }

    // eventId alone is not unique, and attemptNumber changes on each retry: the key is what stays
    // the same across redeliveries of one notification and differs between notifications.
    let key = format!(
        "{portal_id}:{subscription_id}:{kind}:{}:{}:{event_id}:{occurred_at_ms}",
        object_id.as_deref().unwrap_or("-"),
        property.as_deref().unwrap_or("-"),
    );
    Ok(InboundEvent {
        provider: PROVIDER,
        key,
        kind,
        object_type,
        object_id,
        occurred_at_ms,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-client-secret";
    const URL: &str = "https://hooks.example.com/webhooks/hubspot";
    const NOW_MS: i64 = 1_700_000_000_000;
    const EVENT: &str = r#"{"objectId":1246965,"propertyName":"lifecyclestage","propertyValue":"subscriber","changeSource":"ACADEMY","eventId":3816279340,"subscriptionId":25,"portalId":33,"appId":1160452,"occurredAt":1462216307945,"subscriptionType":"contact.propertyChange","attemptNumber":0}"#;

    fn provider() -> HubSpotWebhooks {
        HubSpotWebhooks::new(HubSpotWebhookSettings::new(SECRET.to_string().into()))
    }

    fn v3_request(body: &str, timestamp_ms: i64) -> WebhookRequest {
        let timestamp = timestamp_ms.to_string();
        let signature = signature::sign_v3(SECRET.as_bytes(), "POST", URL, body.as_bytes(), &timestamp);
        WebhookRequest {
            method: "POST".into(),
            public_url: URL.into(),
            headers: vec![
                ("x-hubspot-signature-v3".into(), signature),
                ("x-hubspot-request-timestamp".into(), timestamp),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_fresh_v3_signed_request_is_authentic() {
        assert_eq!(
            provider().authenticate(&v3_request("[]", NOW_MS - 1_000), NOW_MS),
            Ok(())
        );
    }

    #[test]
    fn a_v3_request_older_than_five_minutes_is_stale() {
        for at_limit in [NOW_MS - 300_000, NOW_MS + 300_000] {
            assert_eq!(
                provider().authenticate(&v3_request("[]", at_limit), NOW_MS),
                Ok(())
            );
        }
        let request = v3_request("[]", NOW_MS - 300_001);
        assert_eq!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::StaleTimestamp { window_secs: 300 })
        );
    }

    #[test]
    fn a_v3_request_dated_beyond_the_window_in_the_future_is_stale() {
        let request = v3_request("[]", NOW_MS + 300_001);
        assert!(matches!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn a_v3_request_for_another_url_does_not_match() {
        let mut request = v3_request("[]", NOW_MS);
        request.public_url = "https://hooks.example.com/webhooks/other".into();
        assert_eq!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn a_v3_request_without_a_timestamp_is_rejected() {
        let mut request = v3_request("[]", NOW_MS);
        request
            .headers
            .retain(|(name, _)| name != "x-hubspot-request-timestamp");
        assert_eq!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::MissingHeader(V3_TIMESTAMP))
        );
    }

    #[test]
    fn a_request_without_any_signature_is_rejected() {
        let mut request = v3_request("[]", NOW_MS);
        request.headers.clear();
        assert_eq!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::MissingHeader(V3_SIGNATURE))
        );
    }

    #[test]
    fn legacy_v1_and_v2_signatures_are_accepted_unless_disabled() {
        let body = b"[]".to_vec();
        let v1 = WebhookRequest {
            method: "POST".into(),
            public_url: URL.into(),
            headers: vec![(
                "x-hubspot-signature".into(),
                signature::sign_v1(SECRET.as_bytes(), &body),
            )],
            body: body.clone(),
        };
        let v2 = WebhookRequest {
            headers: vec![
                (
                    "x-hubspot-signature".into(),
                    signature::sign_v2(SECRET.as_bytes(), "POST", URL, &body),
                ),
                ("x-hubspot-signature-version".into(), "v2".into()),
            ],
            ..v1.clone()
        };
        assert_eq!(provider().authenticate(&v1, NOW_MS), Ok(()));
        assert_eq!(provider().authenticate(&v2, NOW_MS), Ok(()));

        let mut strict = HubSpotWebhookSettings::new(SECRET.to_string().into());
        strict.accept_legacy_signatures = false;
        let strict = HubSpotWebhooks::new(strict);
        assert_eq!(
            strict.authenticate(&v1, NOW_MS),
            Err(AuthError::UnsupportedVersion("v1".into()))
        );
    }

    #[test]
    fn an_unknown_legacy_version_is_rejected() {
        let request = WebhookRequest {
            method: "POST".into(),
            public_url: URL.into(),
            headers: vec![
                ("x-hubspot-signature".into(), "00".into()),
                ("x-hubspot-signature-version".into(), "v9".into()),
            ],
            body: vec![],
        };
        assert_eq!(
            provider().authenticate(&request, NOW_MS),
            Err(AuthError::UnsupportedVersion("v9".into()))
        );
    }

    #[test]
    fn events_parse_with_a_key_that_ignores_the_attempt_number() {
        let first = parse_events(format!("[{EVENT}]").as_bytes(), 100).unwrap();
        let retry = EVENT.replace(r#""attemptNumber":0"#, r#""attemptNumber":3"#);
        let second = parse_events(format!("[{retry}]").as_bytes(), 100).unwrap();
        assert_eq!(first[0].key, second[0].key);
        assert_eq!(
            first[0].key,
            "33:25:contact.propertyChange:1246965:lifecyclestage:3816279340:1462216307945"
        );
        assert_eq!(first[0].object_type.as_deref(), Some("contact"));
        assert_eq!(first[0].object_id.as_deref(), Some("1246965"));
        assert_eq!(first[0].occurred_at_ms, 1_462_216_307_945);
        assert_eq!(first[0].raw.get(), EVENT);
    }

    #[test]
    fn events_that_differ_only_in_occurred_at_get_different_keys() {
        let later = EVENT.replace("1462216307945", "1462216307946");
        let events = parse_events(format!("[{EVENT},{later}]").as_bytes(), 100).unwrap();
        assert_ne!(events[0].key, events[1].key);
    }

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        assert!(matches!(
            parse_events(b"[{", 100),
            Err(ParseError::InvalidJson { .. })
        ));
        assert_eq!(
            parse_events(br#"{"a":1}"#, 100).unwrap_err(),
            ParseError::NotAnArray
        );
        assert_eq!(parse_events(b"[]", 100).unwrap_err(), ParseError::Empty);
        assert_eq!(
            parse_events(b"[1]", 100).unwrap_err().to_string(),
            "event 0: an event must be a JSON object"
        );
        let missing = EVENT.replace(r#""occurredAt":1462216307945,"#, "");
        assert_eq!(
            parse_events(format!("[{EVENT},{missing}]").as_bytes(), 100)
                .unwrap_err()
                .to_string(),
            "event 1: `occurredAt` is missing or not an integer"
        );
    }

    #[test]
    fn a_delivery_over_the_event_limit_is_rejected() {
        assert_eq!(
            parse_events(format!("[{EVENT},{EVENT}]").as_bytes(), 2)
                .unwrap()
                .len(),
            2
        );
        let body = format!("[{EVENT},{EVENT},{EVENT}]");
        assert_eq!(
            parse_events(body.as_bytes(), 2).unwrap_err(),
            ParseError::TooManyEvents { count: 3, max: 2 }
        );
    }

    fn inbound(kind: &str, event: serde_json::Value) -> InboundMessage {
        InboundMessage {
            provider: "hubspot".into(),
            event_key: "k".into(),
            delivery_id: None,
            received_at_ms: None,
            kind: kind.into(),
            object_type: kind.split('.').next().map(str::to_string),
            object_id: Some("7".into()),
            occurred_at_ms: 5,
            event,
        }
    }

    #[test]
    fn a_property_change_is_read_as_a_change_of_that_property() {
        let message = inbound(
            "deal.propertyChange",
            serde_json::json!({"propertyName": "dealstage", "propertyValue": "closedwon", "changeSource": "CRM_UI"}),
        );
        match interpret(&message) {
            Interpretation::Change(change) => {
                assert_eq!(change.object, ObjectKind::Deal);
                assert_eq!(change.crm_id, "7");
                assert!(!change.from_integration);
                assert_eq!(change.properties.unwrap()["dealstage"], "closedwon");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn creations_and_redacted_values_are_read_from_the_crm() {
        let creation = inbound(
            "contact.creation",
            serde_json::json!({"changeSource": "INTEGRATION"}),
        );
        assert!(matches!(
            interpret(&creation),
            Interpretation::Change(CrmChange {
                properties: None,
                from_integration: true,
                ..
            })
        ));
        let redacted = inbound(
            "contact.propertyChange",
            serde_json::json!({"propertyName": "email", "propertyValue": "REDACTED", "changeSource": "CRM_UI"}),
        );
        assert!(matches!(
            interpret(&redacted),
            Interpretation::Change(CrmChange { properties: None, .. })
        ));
    }

    #[test]
    fn a_merge_names_the_new_record_as_survivor_and_every_other_id_as_merged_away() {
        let event = serde_json::json!({
            "objectId": 7, "primaryObjectId": 7, "mergedObjectIds": [102, 103],
            "newObjectId": 200, "numberOfPropertiesMoved": 4, "changeSource": "CRM_UI"
        });
        let Interpretation::Identity(change) = interpret(&inbound("contact.merge", event)) else {
            panic!("a merge is an identity change");
        };
        assert_eq!(change.crm_id, "200");
        assert_eq!(
            change.kind,
            IdentityKind::Merged {
                merged: vec!["102".into(), "103".into(), "7".into()],
                primary: Some("7".into())
            }
        );
        // Deals keep the primary's id: it survives.
        let event = serde_json::json!({"objectId": 7, "primaryObjectId": 7, "mergedObjectIds": [8]});
        let Interpretation::Identity(change) = interpret(&inbound("deal.merge", event)) else {
            panic!("a deal merge is an identity change");
        };
        assert_eq!((change.object, change.crm_id.as_str()), (ObjectKind::Deal, "7"));
        assert_eq!(
            change.kind,
            IdentityKind::Merged {
                merged: vec!["8".into()],
                primary: None
            }
        );
    }

    #[test]
    fn a_merge_naming_more_records_than_allowed_or_not_ids_is_refused_by_name_at_the_limit_it_passes() {
        let merge = |ids: Value| {
            let event = serde_json::json!({"eventId": 1, "subscriptionId": 2, "portalId": 3,
                "occurredAt": 4, "subscriptionType": "contact.merge", "objectId": 9,
                "primaryObjectId": 9, "mergedObjectIds": ids});
            parse_events(serde_json::json!([event]).to_string().as_bytes(), 100)
        };
        let at_limit: Vec<u64> = (0..MAX_MERGED_IDS as u64).collect();
        assert!(merge(serde_json::json!(at_limit)).is_ok());
        let past: Vec<u64> = (0..=MAX_MERGED_IDS as u64).collect();
        let error = merge(serde_json::json!(past)).unwrap_err().to_string();
        assert!(
            error.contains("mergedObjectIds") && error.contains("17"),
            "{error}"
        );
        let error = merge(serde_json::json!([{"id": 1}])).unwrap_err().to_string();
        assert!(error.contains("mergedObjectIds"), "{error}");
        let error = merge(serde_json::json!(["x".repeat(257)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("257 bytes"), "{error}");
    }

    #[test]
    fn a_deals_side_of_a_contact_association_is_a_link_change_and_the_other_side_is_ignored() {
        let event = serde_json::json!({"associationType": "DEAL_TO_CONTACT", "fromObjectId": 7,
            "toObjectId": 9, "associationRemoved": true, "changeSource": "CRM_UI"});
        let Interpretation::Link(link) = interpret(&inbound("deal.associationChange", event)) else {
            panic!("a deal's association is a link change");
        };
        assert_eq!((link.crm_id.as_str(), link.contact_crm_id.as_str()), ("7", "9"));
        assert!(link.removed && !link.from_integration);
        let other =
            serde_json::json!({"associationType": "CONTACT_TO_DEAL", "fromObjectId": 9, "toObjectId": 7});
        assert!(matches!(
            interpret(&inbound("contact.associationChange", other)),
            Interpretation::Ignore(reason) if reason.contains("CONTACT_TO_DEAL")
        ));
    }

    #[test]
    fn association_events_without_an_object_id_are_told_apart_by_their_records_and_direction() {
        let event = |removed: bool| {
            serde_json::json!({"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": 4,
                "subscriptionType": "deal.associationChange", "associationType": "DEAL_TO_CONTACT",
                "fromObjectId": 7, "toObjectId": 9, "associationRemoved": removed, "changeSource": "USER"})
        };
        let parsed = parse_events(
            serde_json::json!([event(false), event(true)])
                .to_string()
                .as_bytes(),
            100,
        )
        .unwrap();
        assert_ne!(parsed[0].key, parsed[1].key);
        assert_eq!(parsed[0].object_id.as_deref(), Some("7"));
    }

    #[test]
    fn restores_and_privacy_deletions_are_identity_changes_and_a_bare_deletion_is_not() {
        for (kind, expected) in [
            ("contact.restore", IdentityKind::Restored),
            ("contact.privacyDeletion", IdentityKind::Erased),
        ] {
            let Interpretation::Identity(change) = interpret(&inbound(kind, serde_json::json!({}))) else {
                panic!("{kind} is an identity change");
            };
            assert_eq!(change.kind, expected);
        }
        assert!(matches!(
            interpret(&inbound("contact.deletion", serde_json::json!({}))),
            Interpretation::Ignore(_)
        ));
    }

    #[test]
    fn a_company_event_is_read_as_the_change_of_the_type_the_mapping_declares_on_companies() {
        let mapping =
            crate::domain::mapping::Mapping::parse(crate::domain::mapping::DEFAULT_MAPPING).unwrap();
        let events = HubSpotEvents::new(&mapping);
        let company = ObjectKind::parse("company").unwrap();
        let change = serde_json::json!({"propertyName": "industry", "propertyValue": "AEROSPACE", "changeSource": "CRM_UI"});
        for message in [
            inbound("company.propertyChange", change.clone()),
            InboundMessage {
                kind: "object.propertyChange".into(),
                object_type: Some("0-2".into()),
                ..inbound("object.propertyChange", change.clone())
            },
        ] {
            let Interpretation::Change(read) = events.interpret(&message) else {
                panic!("{message:?}");
            };
            assert_eq!(read.object, company);
            assert_eq!(read.properties.unwrap()["industry"], "AEROSPACE");
        }
        assert_eq!(
            events.interpret(&inbound("ticket.propertyChange", change)),
            Interpretation::Ignore("ticket events are not synced".into()),
            "a type the mapping does not declare"
        );
        assert!(
            matches!(
                events.interpret(&inbound(
                    "company.merge",
                    serde_json::json!({"primaryObjectId": 1, "mergedObjectIds": [2]})
                )),
                Interpretation::Identity(change) if change.object == company
            ),
            "a company's merge is followed"
        );
        let custom = InboundMessage {
            kind: "object.propertyChange".into(),
            object_type: Some("2-999".into()),
            ..inbound("object.propertyChange", serde_json::json!({"propertyName": "x"}))
        };
        assert_eq!(
            events.interpret(&custom),
            Interpretation::Ignore("object events of objectTypeId 2-999 are not synced".into()),
            "a custom object the mapping does not name by its objectTypeId"
        );
    }

    #[test]
    fn other_events_are_ignored_with_a_reason() {
        assert_eq!(
            interpret(&inbound("company.creation", serde_json::json!({}))),
            Interpretation::Ignore("company events are not synced".into())
        );
        assert_eq!(
            interpret(&inbound("contact.deletion", serde_json::json!({}))),
            Interpretation::Ignore("contact.deletion events are not synced".into())
        );
    }

    #[test]
    fn a_generic_object_event_is_read_as_the_change_of_the_type_its_object_type_id_names() {
        let event = |type_id: &str| InboundMessage {
            kind: "object.propertyChange".into(),
            object_type: Some(type_id.into()),
            ..inbound(
                "object.propertyChange",
                serde_json::json!({"objectTypeId": type_id, "propertyName": "dealstage", "propertyValue": "closedwon", "changeSource": "CRM_UI"}),
            )
        };
        match interpret(&event("0-3")) {
            Interpretation::Change(change) => {
                assert_eq!(change.object, ObjectKind::Deal);
                assert_eq!(change.crm_id, "7");
                assert_eq!(
                    change.properties,
                    Some([("dealstage".to_string(), "closedwon".to_string())].into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(interpret(&event("0-1")), Interpretation::Change(c) if c.object == ObjectKind::Contact)
        );
        let creation = InboundMessage {
            kind: "object.creation".into(),
            ..event("0-1")
        };
        assert!(
            matches!(interpret(&creation), Interpretation::Change(c) if c.created && c.properties.is_none())
        );
        assert!(matches!(interpret(&event("0-2")), Interpretation::Ignore(_)));
        assert!(matches!(interpret(&event("2-123")), Interpretation::Ignore(_)));
    }

    #[test]
    fn generic_object_subscriptions_take_the_type_from_object_type_id() {
        let event = r#"{"eventId":1,"subscriptionId":2,"portalId":3,"occurredAt":4,"subscriptionType":"object.creation","objectTypeId":"0-3","objectId":99}"#;
        let events = parse_events(format!("[{event}]").as_bytes(), 100).unwrap();
        assert_eq!(events[0].object_type.as_deref(), Some("0-3"));
    }
}
