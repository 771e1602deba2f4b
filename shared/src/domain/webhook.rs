//! What a CRM sends us, once it is off the wire: a verified request, its raw delivery, and the
//! events inside it.

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Version of the inbound-queue message contract (`shared/schemas/inbound-event.v1.json`).
pub const INBOUND_CONTRACT_VERSION: u32 = 1;

/// A CRM's short name as it appears in URLs, keys and messages (`hubspot`, `pipedrive`, ...).
pub type ProviderId = &'static str;

/// An HTTP request as a provider needs it to authenticate and parse a webhook.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// Upper-case HTTP method.
    pub method: String,
    /// The URL the CRM called, as it called it (scheme, host, raw path, raw query).
    pub public_url: String,
    /// Header names in lower case; repeated headers joined by commas.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received (after any transport base64 has been undone).
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// The value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why a webhook request was not accepted as coming from the CRM. Messages are safe to return
/// to the caller: they never contain a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request carries no {0} header")]
    MissingHeader(&'static str),
    #[error("the {0} header is malformed")]
    MalformedHeader(&'static str),
    #[error("the signature does not match the request")]
    SignatureMismatch,
    #[error("the request timestamp is outside the {window_secs}-second replay window")]
    StaleTimestamp { window_secs: u64 },
    #[error("signature version {0} is not accepted")]
    UnsupportedVersion(String),
    #[error("the credentials do not match")]
    BadCredentials,
    #[error("the request URL carries no `{0}` parameter")]
    MissingParameter(&'static str),
    #[error("the notification comes from another organization than the configured one")]
    ForeignOrganization,
}

/// Why an authenticated body could not be read as the provider's events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid JSON (line {line}, column {column})")]
    InvalidJson { line: usize, column: usize },
    #[error("the body must be a JSON array of events")]
    NotAnArray,
    #[error("the delivery holds no events")]
    Empty,
    #[error("the delivery holds {count} events, more than the {max} allowed")]
    TooManyEvents { count: usize, max: usize },
    #[error("event {index}: {problem}")]
    BadEvent { index: usize, problem: String },
    #[error("the body is not a SOAP notification: {0}")]
    NotSoap(String),
}

/// The longest identifier a provider takes from an event (ids, names, types) into its key:
/// event keys become DynamoDB partition keys, which hold at most 2,048 bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// The longest event key; with its `EVENT#{provider}#` prefix it stays well inside DynamoDB's
/// 2,048-byte partition key.
pub const MAX_EVENT_KEY_BYTES: usize = 1024;

/// The deepest nesting of arrays and objects an event may have. serde_json stops reading at 128
/// levels, and an event travels one level down in its queue message: an event any deeper would be
/// stored and then be unreadable by the consumer.
pub const MAX_EVENT_DEPTH: usize = 64;

/// How deep arrays and objects nest in a JSON text, counted without recursion (brackets inside
/// strings do not count).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Refuses an identifier longer than [`MAX_IDENTIFIER_BYTES`], naming the field (never its value).
pub fn check_identifier(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_IDENTIFIER_BYTES {
        Err(format!(
            "`{name}` is {} bytes long, more than the {MAX_IDENTIFIER_BYTES} allowed",
            value.len()
        ))
    } else {
        Ok(())
    }
}

impl ParseError {
    /// A delivery holds from 1 to `max` events.
    pub fn check_count(count: usize, max: usize) -> Result<(), ParseError> {
        match count {
            0 => Err(ParseError::Empty),
            count if count > max => Err(ParseError::TooManyEvents { count, max }),
            _ => Ok(()),
        }
    }
}

/// The answer to an accepted delivery when the CRM expects a particular one (Salesforce resends
/// an Outbound Message until it reads its SOAP `Ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledgement {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// One webhook request body as received, kept verbatim for audit and replay.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: ProviderId,
    /// Hex SHA-256 of the body: an identical re-post is the same delivery.
    pub id: String,
    pub received_at_ms: i64,
    pub body: Vec<u8>,
    pub event_count: usize,
}

impl Delivery {
    pub fn new(provider: ProviderId, body: Vec<u8>, received_at_ms: i64, event_count: usize) -> Self {
        Self {
            provider,
            id: sha256_hex(&body),
            received_at_ms,
            body,
            event_count,
        }
    }
}

/// One event from a delivery, with the identity used to store and enqueue it exactly once.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    pub provider: ProviderId,
    /// Dedupe key: the same for every redelivery of this event and different for any other event.
    /// Each provider documents how it derives it.
    pub key: String,
    /// The provider's name for what happened (`contact.propertyChange`, ...).
    pub kind: String,
    /// CRM object type (`contact`, `deal`, ...), when the event is about one object.
    pub object_type: Option<String>,
    /// CRM object id, when the event is about one object.
    pub object_id: Option<String>,
    pub occurred_at_ms: i64,
    /// The event exactly as the CRM sent it.
    pub raw: Box<RawValue>,
}

/// The inbound-queue message for one event (contract v1).
#[derive(Serialize)]
struct InboundMessage<'a> {
    version: u32,
    provider: &'a str,
    event_key: &'a str,
    delivery_id: &'a str,
    received_at_ms: i64,
    kind: &'a str,
    object_type: Option<&'a str>,
    object_id: Option<&'a str>,
    occurred_at_ms: i64,
    event: &'a RawValue,
}

impl InboundEvent {
    /// The JSON body of this event's inbound-queue message.
    pub fn queue_message(&self, delivery: &Delivery) -> String {
        let message = InboundMessage {
            version: INBOUND_CONTRACT_VERSION,
            provider: self.provider,
            event_key: &self.key,
            delivery_id: &delivery.id,
            received_at_ms: delivery.received_at_ms,
            kind: &self.kind,
            object_type: self.object_type.as_deref(),
            object_id: self.object_id.as_deref(),
            occurred_at_ms: self.occurred_at_ms,
            event: &self.raw,
        };
        serde_json::to_string(&message).expect("an inbound message always serializes")
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_but_not_brackets_in_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":"[[[{"}]}"#), 3);
        assert_eq!(json_depth(r#"["\"[[", {}]"#), 2);
        let deep = format!("{}{}", "[".repeat(MAX_EVENT_DEPTH), "]".repeat(MAX_EVENT_DEPTH));
        assert_eq!(json_depth(&deep), MAX_EVENT_DEPTH);
    }

    #[test]
    fn header_lookup_ignores_case() {
        let request = WebhookRequest {
            method: "POST".into(),
            public_url: "https://example.com/".into(),
            headers: vec![("x-hubspot-signature-v3".into(), "abc".into())],
            body: vec![],
        };
        assert_eq!(request.header("X-HubSpot-Signature-v3"), Some("abc"));
        assert_eq!(request.header("x-other"), None);
    }

    #[test]
    fn a_delivery_is_identified_by_the_hash_of_its_body() {
        let first = Delivery::new("hubspot", b"[1]".to_vec(), 1, 1);
        let again = Delivery::new("hubspot", b"[1]".to_vec(), 2, 1);
        let other = Delivery::new("hubspot", b"[2]".to_vec(), 1, 1);
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, other.id);
        assert_eq!(first.id.len(), 64);
    }

    #[test]
    fn the_queue_message_carries_the_event_verbatim_and_its_identity() {
        let delivery = Delivery::new("hubspot", b"[]".to_vec(), 7, 1);
        let event = InboundEvent {
            provider: "hubspot",
            key: "k1".into(),
            kind: "contact.creation".into(),
            object_type: Some("contact".into()),
            object_id: Some("42".into()),
            occurred_at_ms: 5,
            raw: RawValue::from_string(r#"{"objectId": 42}"#.into()).unwrap(),
        };
        let message: serde_json::Value = serde_json::from_str(&event.queue_message(&delivery)).unwrap();
        assert_eq!(message["version"], 1);
        assert_eq!(message["event_key"], "k1");
        assert_eq!(message["delivery_id"], delivery.id.as_str());
        assert_eq!(message["object_id"], "42");
        assert_eq!(message["event"]["objectId"], 42);
    }

    #[test]
    fn the_queue_message_has_exactly_the_fields_its_published_schema_declares() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/inbound-event.v1.json")).unwrap();
        let delivery = Delivery::new("hubspot", b"[]".to_vec(), 7, 1);
        let event = InboundEvent {
            provider: "hubspot",
            key: "k".into(),
            kind: "contact.creation".into(),
            object_type: None,
            object_id: None,
            occurred_at_ms: 5,
            raw: RawValue::from_string("{}".into()).unwrap(),
        };
        let message: serde_json::Value = serde_json::from_str(&event.queue_message(&delivery)).unwrap();
        let produced: std::collections::BTreeSet<_> = message.as_object().unwrap().keys().cloned().collect();
        let declared: std::collections::BTreeSet<_> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(produced, declared);
        for required in schema["required"].as_array().unwrap() {
            assert!(
                !message[required.as_str().unwrap()].is_null(),
                "{required} is required"
            );
        }
        assert_eq!(message["version"], schema["properties"]["version"]["const"]);
    }
}
