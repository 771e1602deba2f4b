//! Salesforce's Outbound Messages: SOAP `notifications` posted by a workflow rule or flow, each
//! holding up to 100 `Notification`s with the record's selected fields.
//!
//! They carry no signature. A request is accepted when the endpoint URL's `token` parameter
//! matches the configured secret (compared in constant time) and the body's `OrganizationId` is
//! the configured org's. Salesforce resends a message until it reads `Ack` = `true`.

use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::contract::ObjectKind;
use crate::domain::crm::MergeSeen;
use crate::domain::identity::{IdentityChange, MERGE_SEEN_ACTION};
use crate::domain::inbound::{event_subject, CrmChange, InboundMessage, Interpretation};
use crate::domain::webhook::check_identifier;
use crate::domain::{Acknowledgement, AuthError, InboundEvent, ParseError, ProviderId, WebhookRequest};
use crate::ports::{CrmEvents, WebhookProvider};

pub const PROVIDER: ProviderId = "salesforce";

/// The query parameter of the endpoint URL that carries the shared secret.
pub const TOKEN_PARAMETER: &str = "token";

/// Salesforce puts at most 100 notifications in one message.
pub const MAX_NOTIFICATIONS: usize = 100;

/// The deepest element nesting a message may have. An Outbound Message nests seven levels
/// (Envelope, Body, notifications, Notification, sObject, a field, a compound field's part);
/// roxmltree parses nested elements by recursion, so a deeper document is refused before it is
/// parsed: a few kilobytes of `<a><a>…` would otherwise overflow the stack.
pub const MAX_XML_DEPTH: usize = 32;

const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The SOAP answer that tells Salesforce the message is delivered.
pub const ACK: Acknowledgement = Acknowledgement {
    content_type: "text/xml; charset=utf-8",
    body: concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
        r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
        r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
    ),
};

/// Fields every record has that say nothing about the data; they never become changes.
const SYSTEM_FIELDS: [&str; 7] = [
    "Id",
    "CreatedById",
    "CreatedDate",
    "LastModifiedById",
    "LastModifiedDate",
    "SystemModstamp",
    "IsDeleted",
];

/// The org the messages must come from and the secret in the endpoint URL.
#[derive(Debug, Clone)]
pub struct SalesforceWebhookSettings {
    pub organization_id: String,
    pub token: SecretString,
}

/// [`WebhookProvider`] for Outbound Messages.
pub struct SalesforceOutboundMessages {
    organization_id: String,
    /// SHA-256 of the token: equal-length digests keep the comparison's time independent of the
    /// secret's length.
    expected: [u8; 32],
}

impl SalesforceOutboundMessages {
    pub fn new(settings: &SalesforceWebhookSettings) -> Self {
        Self {
            organization_id: settings.organization_id.clone(),
            expected: Sha256::digest(settings.token.expose_secret().as_bytes()).into(),
        }
    }
}

impl WebhookProvider for SalesforceOutboundMessages {
    fn id(&self) -> ProviderId {
        PROVIDER
    }

    fn authenticate(&self, request: &WebhookRequest, _now_ms: i64) -> Result<(), AuthError> {
        let query = request
            .public_url
            .split_once('?')
            .map(|(_, query)| query)
            .unwrap_or("");
        let token = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == TOKEN_PARAMETER)
            .map(|(_, value)| value)
            .ok_or(AuthError::MissingParameter(TOKEN_PARAMETER))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !bool::from(digest.ct_eq(&self.expected)) {
            return Err(AuthError::BadCredentials);
        }
        // A body that cannot be read names no org; `parse` rejects it with the reason.
        match std::str::from_utf8(&request.body)
            .ok()
            .and_then(|text| parse_document(text).ok())
            .and_then(|document| {
                notifications(&document)
                    .ok()
                    .and_then(|n| child_text(n, "OrganizationId"))
            }) {
            Some(organization) if !same_id(&organization, &self.organization_id) => {
                Err(AuthError::ForeignOrganization)
            }
            _ => Ok(()),
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
        parse_notifications(body)
    }

    fn acknowledgement(&self) -> Option<Acknowledgement> {
        Some(ACK)
    }
}

/// Salesforce ids come in a case-sensitive 15-character form and an 18-character form that adds
/// a checksum; both name the same record.
pub fn same_id(a: &str, b: &str) -> bool {
    match (a.len(), b.len()) {
        (15 | 18, 15 | 18) => a.get(..15) == b.get(..15),
        _ => a == b,
    }
}

fn notifications<'a, 'input>(
    document: &'a roxmltree::Document<'input>,
) -> Result<roxmltree::Node<'a, 'input>, ParseError> {
    let envelope = document.root_element();
    if !envelope.has_tag_name((SOAP_NS, "Envelope")) {
        return Err(ParseError::NotSoap(
            "the root element is not a SOAP 1.1 Envelope".into(),
        ));
    }
    envelope
        .children()
        .find(|node| node.has_tag_name((SOAP_NS, "Body")))
        .and_then(|body| {
            body.children()
                .find(|node| node.has_tag_name((OUTBOUND_NS, "notifications")))
        })
        .ok_or_else(|| ParseError::NotSoap("the Body holds no outbound `notifications`".into()))
}

/// Parses a body as XML once its nesting is known to be shallow. roxmltree refuses DTDs by
/// default, so entity expansion cannot be used against us either.
fn parse_document(text: &str) -> Result<roxmltree::Document<'_>, ParseError> {
    if let Some(depth) = nesting_beyond(text, MAX_XML_DEPTH) {
        return Err(ParseError::NotSoap(format!(
            "elements are nested {depth} deep, deeper than the {MAX_XML_DEPTH} allowed"
        )));
    }
    roxmltree::Document::parse(text).map_err(|error| ParseError::NotSoap(error.to_string()))
}

/// The depth at which `text`'s elements first nest deeper than `max`, read without recursion:
/// comments, CDATA, processing instructions and declarations are skipped, quoted attribute
/// values may hold `>`. Malformed input is left for the parser to refuse.
fn nesting_beyond(text: &str, max: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let find = |from: usize, needle: &[u8]| -> usize {
        bytes[from.min(bytes.len())..]
            .windows(needle.len())
            .position(|window| window == needle)
            .map_or(bytes.len(), |at| from + at + needle.len())
    };
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'<' {
            at += 1;
            continue;
        }
        let rest = &bytes[at..];
        if rest.starts_with(b"<!--") {
            at = find(at + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            at = find(at + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            at = find(at + 2, b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            at = find(at + 2, b">");
        } else if rest.starts_with(b"<!") {
            at = find(at + 2, b">");
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut quote = None;
            let mut end = at + 1;
            while end < bytes.len() {
                match (quote, bytes[end]) {
                    (None, b'"' | b'\'') => quote = Some(bytes[end]),
                    (Some(open), byte) if byte == open => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                end += 1;
            }
            if end >= bytes.len() || bytes[end - 1] != b'/' {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            at = end + 1;
        }
    }
    None
}

fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, name: &str) -> Option<roxmltree::Node<'a, 'input>> {
    node.children()
        .find(|child| child.is_element() && child.tag_name().name() == name)
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|child| child.text())
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
}

/// Reads an Outbound Message into one event per `Notification`.
///
/// Each event is the notification as JSON: `{organization_id, action_id, notification_id,
/// sobject, fields}`, a field set to nil being `null`. Its key is
/// `{OrganizationId}:{Notification Id}`, which Salesforce keeps across resends. Its time is the
/// record's `LastModifiedDate`, which the outbound message must therefore include.
///
/// Long on purpose: the SOAP envelope read element by element, each with its own refusal.
pub fn parse_notifications(body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotSoap("the body is not UTF-8".into()))?;
    let document = parse_document(text)?;
    let notifications = notifications(&document)?;
    let organization = child_text(notifications, "OrganizationId")
        .ok_or_else(|| ParseError::NotSoap("`OrganizationId` is missing".into()))?;
    let action = child_text(notifications, "ActionId").unwrap_or_default();
    check_identifier("OrganizationId", &organization).map_err(ParseError::NotSoap)?;
    check_identifier("ActionId", &action).map_err(ParseError::NotSoap)?;
    let list: Vec<_> = notifications
        .children()
        .filter(|node| node.has_tag_name((OUTBOUND_NS, "Notification")))
        .collect();
    ParseError::check_count(list.len(), MAX_NOTIFICATIONS)?;
    list.into_iter()
        .enumerate()
        .map(|(index, notification)| {
            let bad = |problem: &str| ParseError::BadEvent {
                index,
                problem: problem.to_string(),
            };
            let id = child_text(notification, "Id").ok_or_else(|| bad("the notification has no `Id`"))?;
            check_identifier("Notification/Id", &id).map_err(|problem| bad(&problem))?;
            let record =
                child(notification, "sObject").ok_or_else(|| bad("the notification has no `sObject`"))?;
            let sobject = record
                .attribute((XSI_NS, "type"))
                .map(|kind| kind.rsplit(':').next().unwrap_or(kind).to_string())
                .filter(|kind| !kind.is_empty())
                .ok_or_else(|| bad("the sObject has no `xsi:type`"))?;
            check_identifier("sObject/@xsi:type", &sobject).map_err(|problem| bad(&problem))?;
            let mut fields = Map::new();
            for field in record.children().filter(roxmltree::Node::is_element) {
                // Compound fields (an address) arrive as nested elements; crm-sync maps none.
                if field.children().any(|node| node.is_element()) {
                    continue;
                }
                let value = if field.attribute((XSI_NS, "nil")) == Some("true") {
                    Value::Null
                } else {
                    Value::String(field.text().unwrap_or_default().to_string())
                };
                fields.insert(field.tag_name().name().to_string(), value);
            }
            let record_id = fields
                .get("Id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad("the sObject has no `Id`"))?
                .to_string();
            check_identifier("sObject/Id", &record_id).map_err(|problem| bad(&problem))?;
            let modified = fields
                .get("LastModifiedDate")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad("the sObject has no `LastModifiedDate`: add it to the outbound message's fields")
                })?;
            let occurred_at_ms =
                time::OffsetDateTime::parse(modified, &time::format_description::well_known::Rfc3339)
                    .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
                    .map_err(|_| bad("`LastModifiedDate` is not an xsd:dateTime"))?;
            let created = fields.get("CreatedDate").and_then(Value::as_str) == Some(modified);
            let event = json!({
                "organization_id": organization,
                "action_id": action,
                "notification_id": id,
                "sobject": sobject,
                "fields": fields,
            });
            Ok(InboundEvent {
                provider: PROVIDER,
                key: format!("{organization}:{id}"),
                kind: format!("{sobject}.{}", if created { "created" } else { "updated" }),
                object_type: Some(sobject),
                object_id: Some(record_id),
                occurred_at_ms,
                raw: RawValue::from_string(event.to_string()).expect("serde_json writes valid JSON"),
            })
        })
        .collect()
}

/// Salesforce's stored notifications, read as CRM changes.
#[derive(Debug, Clone, Default)]
pub struct SalesforceEvents {
    /// The user crm-sync's API calls run as: a record it modified last is crm-sync's own write.
    pub integration_user_id: Option<String>,
    /// The object types the mapping declares, by their sObject (lower-cased: `account`).
    pub declared: std::collections::HashMap<String, ObjectKind>,
}

impl SalesforceEvents {
    /// A merge the reconciliation read (Salesforce sends no message for one): the merged record
    /// into its master, which keeps its own values.
    fn merge_seen(&self, object: ObjectKind, message: &InboundMessage) -> Interpretation {
        let Ok(seen) = serde_json::from_value::<MergeSeen>(message.event.clone()) else {
            return Interpretation::Ignore("the merge names no merged record and master".into());
        };
        let source = match seen.by.as_deref() {
            Some(by)
                if self
                    .integration_user_id
                    .as_deref()
                    .is_some_and(|user| same_id(user, by)) =>
            {
                "integration".to_string()
            }
            Some(by) => format!("user {by}"),
            None => "unknown".to_string(),
        };
        match IdentityChange::merge(object, seen.survivor, None, [seen.merged], seen.at_ms, source) {
            Some(change) => Interpretation::Identity(change),
            None => Interpretation::Ignore("the merge names the same record twice".into()),
        }
    }
}

impl CrmEvents for SalesforceEvents {
    fn interpret(&self, message: &InboundMessage) -> Interpretation {
        let subject = match event_subject(message, |sobject| match sobject {
            "Contact" => Some(ObjectKind::Contact),
            "Opportunity" => Some(ObjectKind::Deal),
            sobject => self.declared.get(&sobject.to_ascii_lowercase()).copied(),
        }) {
            Ok(subject) => subject,
            Err(ignored) => return ignored,
        };
        if subject.action == MERGE_SEEN_ACTION {
            return self.merge_seen(subject.object, message);
        }
        let Some(fields) = message.event.get("fields").and_then(Value::as_object) else {
            return Interpretation::Ignore("the notification carries no fields".into());
        };
        let modified_by = fields
            .get("LastModifiedById")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let from_integration = !modified_by.is_empty()
            && self
                .integration_user_id
                .as_deref()
                .is_some_and(|user| same_id(user, modified_by));
        // A notification holds the record's selected fields, changed or not; the ownership
        // rules tell an unchanged field from a change by what crm-sync last wrote and delivered.
        let properties: std::collections::BTreeMap<String, String> = fields
            .iter()
            .filter(|(name, _)| !SYSTEM_FIELDS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_string()))
            .collect();
        if properties.is_empty() {
            return Interpretation::Ignore("the notification selects no data fields".into());
        }
        Interpretation::Change(CrmChange {
            object: subject.object,
            crm_id: subject.crm_id,
            occurred_at_ms: message.occurred_at_ms,
            from_integration,
            source: if from_integration {
                "integration".to_string()
            } else if modified_by.is_empty() {
                "unknown".to_string()
            } else {
                format!("user {modified_by}")
            },
            created: subject.action == "created",
            properties: Some(properties),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "00D000000000062EAA";
    const TOKEN: &str = "a long random token";

    fn provider() -> SalesforceOutboundMessages {
        SalesforceOutboundMessages::new(&SalesforceWebhookSettings {
            organization_id: ORG.into(),
            token: SecretString::from(TOKEN),
        })
    }

    fn message(organization: &str, notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{organization}</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/60.0/00D000000000062</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/60.0/00D000000000062</PartnerUrl>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    fn contact(notification: &str, id: &str, email: &str, by: &str) -> String {
        format!(
            r#"<Notification>
     <Id>{notification}</Id>
     <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
      <sf:Id>{id}</sf:Id>
      <sf:CreatedDate>2026-11-20T09:00:00.000Z</sf:CreatedDate>
      <sf:Email>{email}</sf:Email>
      <sf:LastModifiedById>{by}</sf:LastModifiedById>
      <sf:LastModifiedDate>2026-11-27T14:21:20.000Z</sf:LastModifiedDate>
      <sf:Phone xsi:nil="true"/>
     </sObject>
    </Notification>"#
        )
    }

    fn request(url: &str, body: &str) -> WebhookRequest {
        WebhookRequest {
            method: "POST".into(),
            public_url: url.into(),
            headers: vec![("content-type".into(), "text/xml; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    const URL: &str = "https://hooks.example.com/webhooks/salesforce?token=a%20long%20random%20token";

    /// A contact notification whose `sObject` holds a compound field nested `levels` deep.
    fn nested(levels: usize) -> String {
        let open = "<a>".repeat(levels);
        let close = "</a>".repeat(levels);
        let field = format!("<sf:MailingAddress>{open}x{close}</sf:MailingAddress>");
        message(ORG, &contact("04l1", "003A", "a@b.c", "005U")).replace(
            "<sf:Phone xsi:nil=\"true\"/>",
            &format!("<sf:Phone xsi:nil=\"true\"/>{field}"),
        )
    }

    #[test]
    fn elements_nested_to_the_limit_are_read_and_one_level_more_is_refused_unparsed() {
        // Envelope, Body, notifications, Notification, sObject, MailingAddress: 6 levels above.
        let at_limit = nested(MAX_XML_DEPTH - 6);
        assert_eq!(nesting_beyond(&at_limit, MAX_XML_DEPTH), None);
        assert_eq!(parse_notifications(at_limit.as_bytes()).unwrap().len(), 1);
        let past = nested(MAX_XML_DEPTH - 5);
        assert_eq!(nesting_beyond(&past, MAX_XML_DEPTH), Some(MAX_XML_DEPTH + 1));
        assert!(matches!(
            parse_notifications(past.as_bytes()),
            Err(ParseError::NotSoap(reason)) if reason.contains("nested")
        ));
    }

    #[test]
    fn a_body_nested_far_deeper_than_any_stack_allows_is_refused_without_a_crash() {
        // 30,000 levels in 210 KB: parsed by recursion this overflows a thread's stack.
        let deep = nested(30_000);
        assert!(deep.len() < 256 * 1024);
        assert!(parse_notifications(deep.as_bytes()).is_err());
        assert_eq!(
            provider().authenticate(&request(URL, &deep), 0),
            Ok(()),
            "an unreadable body names no org; parse refuses it"
        );
    }

    #[test]
    fn quoted_brackets_comments_and_cdata_do_not_confuse_the_depth_count() {
        let text = r#"<a x="<b>" y='>'><!-- <c><c><c> --><![CDATA[<d><d>]]><?pi <e>?><f/><g></g></a>"#;
        assert_eq!(nesting_beyond(text, 2), None);
        assert_eq!(nesting_beyond(text, 1), Some(2));
        assert_eq!(nesting_beyond("<a><b><c/></b></a>", 1), Some(2));
    }

    #[test]
    fn over_long_identifiers_are_refused_by_name() {
        let long = "0".repeat(crate::domain::webhook::MAX_IDENTIFIER_BYTES + 1);
        let at_limit = "0".repeat(crate::domain::webhook::MAX_IDENTIFIER_BYTES);
        let ok = message(ORG, &contact(&at_limit, "003A", "a@b.c", "005U"));
        assert_eq!(parse_notifications(ok.as_bytes()).unwrap().len(), 1);
        let cases = [
            (
                message(ORG, &contact(&long, "003A", "a@b.c", "005U")),
                "Notification/Id",
            ),
            (
                message(ORG, &contact("04l1", &long, "a@b.c", "005U")),
                "sObject/Id",
            ),
            (
                message(ORG, &contact("04l1", "003A", "a@b.c", "005U"))
                    .replace("sf:Contact", &format!("sf:{long}")),
                "xsi:type",
            ),
            (
                message(&long, &contact("04l1", "003A", "a@b.c", "005U")),
                "OrganizationId",
            ),
        ];
        for (body, field) in cases {
            let error = parse_notifications(body.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn a_message_with_the_right_token_and_organization_is_authentic() {
        let body = message(ORG, &contact("04l1", "003A", "ada@example.com", "005U"));
        assert_eq!(provider().authenticate(&request(URL, &body), 0), Ok(()));
        // The 15-character form of the same org id.
        let short = message(&ORG[..15], &contact("04l1", "003A", "a@b.c", "005U"));
        assert_eq!(provider().authenticate(&request(URL, &short), 0), Ok(()));
    }

    #[test]
    fn a_wrong_or_missing_token_is_refused_before_the_body_is_read() {
        let body = message(ORG, &contact("04l1", "003A", "a@b.c", "005U"));
        let wrong = "https://hooks.example.com/webhooks/salesforce?token=guess";
        assert_eq!(
            provider().authenticate(&request(wrong, &body), 0),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            provider().authenticate(
                &request("https://hooks.example.com/webhooks/salesforce", &body),
                0
            ),
            Err(AuthError::MissingParameter("token"))
        );
    }

    #[test]
    fn a_message_from_another_org_is_refused_even_with_the_token() {
        let body = message("00D000000000099EAA", &contact("04l1", "003A", "a@b.c", "005U"));
        assert_eq!(
            provider().authenticate(&request(URL, &body), 0),
            Err(AuthError::ForeignOrganization)
        );
    }

    #[test]
    fn each_notification_is_an_event_keyed_by_org_and_notification_id() {
        let body = message(
            ORG,
            &format!(
                "{}{}",
                contact("04l1", "003A", "ada@example.com", "005U"),
                contact("04l2", "003B", "grace@example.com", "005U")
            ),
        );
        let events = parse_notifications(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].key, format!("{ORG}:04l1"));
        assert_eq!(events[0].kind, "Contact.updated");
        assert_eq!(events[0].object_id.as_deref(), Some("003A"));
        assert_eq!(events[1].object_id.as_deref(), Some("003B"));
        let at = time::macros::datetime!(2026-11-27 14:21:20 UTC);
        assert_eq!(events[0].occurred_at_ms, (at.unix_timestamp() * 1000));
        let event: Value = serde_json::from_str(events[0].raw.get()).unwrap();
        assert_eq!(event["fields"]["Email"], "ada@example.com");
        assert_eq!(event["fields"]["Phone"], Value::Null, "nil is null");
        assert_eq!(event["sobject"], "Contact");
        assert_eq!(event["organization_id"], ORG);
    }

    #[test]
    fn text_is_unescaped_and_a_creation_is_told_by_equal_dates() {
        let body = message(
            ORG,
            r#"<Notification><Id>04l9</Id>
              <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                <sf:Id>006A</sf:Id><sf:Name>Smith &amp; Sons &lt;EU&gt;</sf:Name>
                <sf:CreatedDate>2026-11-27T14:21:20.000Z</sf:CreatedDate>
                <sf:LastModifiedDate>2026-11-27T14:21:20.000Z</sf:LastModifiedDate>
              </sObject></Notification>"#,
        );
        let events = parse_notifications(body.as_bytes()).unwrap();
        assert_eq!(events[0].kind, "Opportunity.created");
        let event: Value = serde_json::from_str(events[0].raw.get()).unwrap();
        assert_eq!(event["fields"]["Name"], "Smith & Sons <EU>");
    }

    #[test]
    fn bodies_that_are_not_outbound_messages_are_refused_with_the_reason() {
        let cases: [(&str, &str); 5] = [
            ("{\"json\": true}", "not a SOAP"),
            ("<a><b></a>", "not a SOAP"),
            ("<Envelope/>", "SOAP 1.1 Envelope"),
            (
                r#"<!DOCTYPE x [<!ENTITY a "aaaa">]><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"/>"#,
                "not a SOAP",
            ),
            (
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/></soapenv:Envelope>"#,
                "no outbound `notifications`",
            ),
        ];
        for (body, reason) in cases {
            let error = parse_notifications(body.as_bytes()).unwrap_err();
            assert!(error.to_string().contains(reason), "{body}: {error}");
        }
        assert_eq!(
            parse_notifications(message(ORG, "").as_bytes()).unwrap_err(),
            ParseError::Empty
        );
    }

    #[test]
    fn a_notification_without_its_modification_date_rejects_the_whole_message() {
        let without = r#"<Notification><Id>04l3</Id>
              <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                <sf:Id>003C</sf:Id><sf:Email>c@example.com</sf:Email>
              </sObject></Notification>"#;
        let body = message(
            ORG,
            &format!("{}{without}", contact("04l1", "003A", "a@b.c", "005U")),
        );
        let error = parse_notifications(body.as_bytes()).unwrap_err();
        assert!(
            matches!(&error, ParseError::BadEvent { index: 1, problem } if problem.contains("LastModifiedDate")),
            "{error}"
        );
    }

    #[test]
    fn more_than_a_hundred_notifications_are_refused() {
        let many: String = (0..101)
            .map(|i| contact(&format!("04l{i}"), &format!("003{i}"), "a@b.c", "005U"))
            .collect();
        assert_eq!(
            parse_notifications(message(ORG, &many).as_bytes()).unwrap_err(),
            ParseError::TooManyEvents { count: 101, max: 100 }
        );
    }

    fn inbound(by: &str) -> InboundMessage {
        let event =
            &parse_notifications(message(ORG, &contact("04l1", "003A", "ada@example.com", by)).as_bytes())
                .unwrap()[0];
        InboundMessage {
            provider: PROVIDER.into(),
            event_key: event.key.clone(),
            delivery_id: None,
            received_at_ms: None,
            kind: event.kind.clone(),
            object_type: event.object_type.clone(),
            object_id: event.object_id.clone(),
            occurred_at_ms: event.occurred_at_ms,
            event: serde_json::from_str(event.raw.get()).unwrap(),
        }
    }

    #[test]
    fn a_notification_reads_as_every_data_field_and_names_who_changed_it() {
        let events = SalesforceEvents {
            integration_user_id: Some("005000000000001AAA".into()),
            ..SalesforceEvents::default()
        };
        let Interpretation::Change(change) = events.interpret(&inbound("005000000000002AAA")) else {
            panic!("a change");
        };
        assert_eq!(change.object, ObjectKind::Contact);
        assert_eq!(change.crm_id, "003A");
        assert!(!change.from_integration);
        assert_eq!(change.source, "user 005000000000002AAA");
        let properties = change.properties.unwrap();
        assert_eq!(
            properties.keys().map(String::as_str).collect::<Vec<_>>(),
            ["Email", "Phone"],
            "system fields are left out"
        );
        assert_eq!(properties["Phone"], "", "nil reads as cleared");
    }

    #[test]
    fn a_record_last_modified_by_the_integration_user_is_crm_syncs_own_write() {
        let events = SalesforceEvents {
            integration_user_id: Some("005000000000001".into()),
            ..SalesforceEvents::default()
        };
        let Interpretation::Change(change) = events.interpret(&inbound("005000000000001AAA")) else {
            panic!("a change");
        };
        assert!(
            change.from_integration,
            "15- and 18-character ids are the same user"
        );
        assert_eq!(change.source, "integration");
        // Without a configured integration user nothing is taken for an echo by its author.
        let Interpretation::Change(change) =
            SalesforceEvents::default().interpret(&inbound("005000000000001AAA"))
        else {
            panic!("a change");
        };
        assert!(!change.from_integration);
    }

    #[test]
    fn objects_other_than_contacts_and_opportunities_are_ignored() {
        let mut message = inbound("005U");
        message.kind = "Lead.updated".into();
        assert!(matches!(
            SalesforceEvents::default().interpret(&message),
            Interpretation::Ignore(reason) if reason.contains("Lead")
        ));
    }

    #[test]
    fn a_merge_the_merge_scan_read_is_an_identity_change_into_the_master() {
        use crate::domain::identity::{merge_seen_message, IdentityKind};
        let seen = MergeSeen {
            merged: "003B".into(),
            survivor: "003A".into(),
            at_ms: 1_796_000_000_000,
            by: Some("005000000000002AAA".into()),
        };
        let message = crate::domain::inbound::parse_inbound(&merge_seen_message(
            PROVIDER,
            "Contact",
            &seen,
            1_796_000_100_000,
        ))
        .unwrap();
        assert_eq!(message.kind, "Contact.merged");
        let again = crate::domain::inbound::parse_inbound(&merge_seen_message(
            PROVIDER,
            "Contact",
            &seen,
            1_796_000_900_000,
        ))
        .unwrap();
        assert_eq!(message.event_key, again.event_key, "read twice, one event");
        let events = SalesforceEvents {
            integration_user_id: Some("005000000000001AAA".into()),
            ..SalesforceEvents::default()
        };
        let Interpretation::Identity(change) = events.interpret(&message) else {
            panic!("an identity change");
        };
        assert_eq!(change.crm_id, "003A", "the master survives");
        assert_eq!(
            change.kind,
            IdentityKind::Merged {
                merged: vec!["003B".into()],
                primary: None
            }
        );
        assert_eq!(change.source, "user 005000000000002AAA");
        assert_eq!(change.occurred_at_ms, 1_796_000_000_000);

        let mut broken = message.clone();
        broken.event = json!({"merged": "003B"});
        assert!(matches!(events.interpret(&broken), Interpretation::Ignore(_)));
        let mut itself = message;
        itself.event = json!({"merged": "003A", "survivor": "003A", "at_ms": 1});
        assert!(matches!(events.interpret(&itself), Interpretation::Ignore(_)));
    }
}
