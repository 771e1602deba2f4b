//! Pipedrive's API v2 (persons and deals) as a [`Crm`], over HTTPS with reqwest.
//!
//! Pipedrive has no bulk write and no upsert: each record is one call, and an upsert is an exact
//! search by the custom field holding the app's id, then a PATCH or a POST. `max_batch` is 1, so
//! the sync's batching sends one record a call and reports it so.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use super::webhook::flatten;
use crate::adapters::crm_http;
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, FailureKind, InputError, InputOutcome, RateInfo, ReadResult,
    ThrottlePolicy, UpdateInput, UpsertInput,
};
use crate::ports::Crm;

/// Pipedrive's public API v2.
pub const DEFAULT_BASE_URL: &str = "https://api.pipedrive.com/api/v2";

/// Fields Pipedrive keeps at the top level of a person or a deal; any other property is a custom
/// field, named by its hash key.
const TOP_LEVEL: [&str; 14] = [
    "name",
    "first_name",
    "last_name",
    "owner_id",
    "org_id",
    "visible_to",
    "title",
    "value",
    "currency",
    "stage_id",
    "pipeline_id",
    "status",
    "person_id",
    "expected_close_date",
];

/// A Pipedrive company, reached with an API token.
#[derive(Clone)]
pub struct PipedriveClient {
    http: reqwest::Client,
    base_url: String,
    /// API v1's root, for notes: v2 has none.
    v1_url: String,
    token: SecretString,
}

/// The object activities are written as: notes on their person (API v1).
pub const NOTES: &str = "notes";

/// Pipedrive's rate state from its headers: `x-ratelimit-*` for the token's burst window,
/// `x-daily-requests-left` for the company's day.
pub fn rate_info(headers: &HeaderMap) -> RateInfo {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    RateInfo {
        burst_max: number("x-ratelimit-limit").and_then(|n| u32::try_from(n).ok()),
        burst_remaining: number("x-ratelimit-remaining").and_then(|n| u32::try_from(n).ok()),
        burst_interval_ms: None,
        daily_max: None,
        daily_remaining: number("x-daily-requests-left"),
    }
}

/// The body Pipedrive takes for `properties`: top-level fields, `email`/`phone` as the primary
/// entry of `emails`/`phones`, the rest under `custom_fields`.
pub fn body_of(properties: &BTreeMap<String, String>) -> Value {
    let mut body = Map::new();
    let mut custom = Map::new();
    for (name, value) in properties {
        match name.as_str() {
            "email" | "phone" => {
                body.insert(
                    format!("{name}s"),
                    json!([{"value": value, "primary": true, "label": "work"}]),
                );
            }
            top if TOP_LEVEL.contains(&top) => {
                body.insert(name.clone(), Value::String(value.clone()));
            }
            _ => {
                custom.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    if !custom.is_empty() {
        body.insert("custom_fields".into(), Value::Object(custom));
    }
    Value::Object(body)
}

/// A successful call's `data` and rate state.
struct Answer {
    data: Value,
    rate: RateInfo,
    call: String,
}

impl PipedriveClient {
    pub fn new(base_url: &str, token: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let http = crm_http::client(timeout)?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let v1_url = match base_url.strip_suffix("/api/v2") {
            Some(root) => format!("{root}/v1"),
            None => format!("{base_url}/v1"),
        };
        Ok(Self {
            http,
            base_url,
            v1_url,
            token,
        })
    }

    /// One call; `Ok(None)` for a 404, which callers read as "no such record".
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Answer>, CrmError> {
        let call = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let base = if path.starts_with("/notes") {
            &self.v1_url
        } else {
            &self.base_url
        };
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .header("x-api-token", self.token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| crm_http::unreached(&call, "Pipedrive", error))?;
        let status = response.status().as_u16();
        let rate = rate_info(response.headers());
        let reset = crm_http::seconds(response.headers(), "x-ratelimit-reset");
        let call = format!("{call} -> {status}");
        let text = crm_http::text(&call, response).await?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = json
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        match status {
            200..=299 => Ok(Some(Answer {
                data: json.get("data").cloned().unwrap_or(Value::Null),
                rate,
                call,
            })),
            404 => Ok(None),
            429 => Err(CrmError::Throttled {
                // Out of the day's budget, or out of the window: the headers tell which.
                policy: if rate.daily_remaining == Some(0) {
                    ThrottlePolicy::Daily
                } else {
                    ThrottlePolicy::Burst
                },
                retry_after: reset,
                message,
                rate,
            }),
            500..=599 => Err(CrmError::Transient { call, message }),
            // A revoked token may be replaced: retried like an outage, so that messages reach
            // the dead-letter queue only after the retry budget.
            401 | 403 => Err(CrmError::Transient {
                call,
                message: format!("authentication failed: {message}"),
            }),
            code => Err(CrmError::Rejected {
                call,
                status: code,
                message,
            }),
        }
    }

    fn single(answer: Answer, created: bool) -> BatchResult {
        let outcome = match answer.data.get("id").map(id_text) {
            Some(crm_id) if !crm_id.is_empty() => InputOutcome::Done { crm_id, created },
            _ => InputOutcome::Failed(InputError {
                kind: FailureKind::Transient,
                code: "NO_ID".into(),
                message: "Pipedrive answered without the record's id".into(),
                existing_id: None,
            }),
        };
        BatchResult {
            outcomes: vec![outcome],
            rate: answer.rate,
            call: answer.call,
        }
    }

    /// A note is written on its person: updated in place when crm-sync knows its id, else
    /// created on the person. Notes have no custom field to find one by the app's id, so each
    /// note ends with a line naming the app's id, and a creation first looks for it among the
    /// person's newest notes: a retry after a lost answer finds the note instead of creating a
    /// second one. Like a person's upsert, a creation is two requests.
    async fn upsert_note(&self, input: &UpsertInput) -> Result<BatchResult, CrmError> {
        let mut body: Map<String, Value> = input
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        let content = body.get("content").and_then(Value::as_str).unwrap_or_default();
        let marked = format!("{content}\n{}", note_marker(&input.key));
        body.insert("content".into(), Value::String(marked));
        if let Some(person) = &input.parent_crm_id {
            body.insert("person_id".into(), numeric(person));
        }
        let body = Value::Object(body);
        if let Some(id) = &input.crm_id {
            if let Some(answer) = self.put_note(id, &body).await? {
                return Ok(Self::single(answer, false));
            }
            // Deleted in Pipedrive since: written anew.
        }
        let Some(person) = &input.parent_crm_id else {
            return Ok(BatchResult {
                outcomes: vec![InputOutcome::Failed(InputError {
                    kind: FailureKind::Transient,
                    code: "NO_PERSON".into(),
                    message: "a note is created on its person, who is not in Pipedrive yet".into(),
                    existing_id: None,
                })],
                rate: RateInfo::default(),
                call: "-".into(),
            });
        };
        // An earlier try may have created it and lost the answer (a retry within the same
        // invocation, or a later one): found by its last line, and brought up to date.
        if let Some(id) = self.marked_note(person, &note_marker(&input.key)).await? {
            if let Some(answer) = self.put_note(&id, &body).await? {
                return Ok(Self::single(answer, true));
            }
        }
        match self.call(Method::POST, &format!("/{NOTES}"), Some(body)).await? {
            Some(answer) => Ok(Self::single(answer, true)),
            None => Ok(Self::missing(format!("POST /{NOTES} -> 404"))),
        }
    }

    async fn put_note(&self, id: &str, body: &Value) -> Result<Option<Answer>, CrmError> {
        self.call(Method::PUT, &format!("/{NOTES}/{id}"), Some(body.clone()))
            .await
    }

    /// The newest notes of `person` (100, newest first) holding `marker`: one an earlier attempt
    /// created.
    async fn marked_note(&self, person: &str, marker: &str) -> Result<Option<String>, CrmError> {
        let person: String = form_urlencoded::byte_serialize(person.as_bytes()).collect();
        let path = format!("/{NOTES}?person_id={person}&sort=id%20DESC&limit=100");
        let Some(answer) = self.call(Method::GET, &path, None).await? else {
            return Ok(None);
        };
        Ok(answer
            .data
            .as_array()
            .into_iter()
            .flatten()
            .find(|note| {
                note.get("content")
                    .and_then(Value::as_str)
                    .is_some_and(|content| content.contains(marker))
            })
            .and_then(|note| note.get("id"))
            .map(id_text))
    }

    fn missing(call: String) -> BatchResult {
        BatchResult {
            outcomes: vec![InputOutcome::Failed(InputError {
                kind: FailureKind::Permanent,
                code: "NOT_FOUND".into(),
                message: "no such record in Pipedrive".into(),
                existing_id: None,
            })],
            rate: RateInfo::default(),
            call,
        }
    }
}

/// Pipedrive requires a person's `name` (and a deal's `title`) on creation: when the app's
/// fields do not give one, it is made from the first and last name, else the email.
fn with_name(object: &str, mut body: Value) -> Value {
    let required = match object {
        "persons" => "name",
        "deals" => "title",
        _ => return body,
    };
    if body.get(required).is_some() {
        return body;
    }
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let full = format!("{} {}", text("first_name"), text("last_name"))
        .trim()
        .to_string();
    let name = if !full.is_empty() {
        full
    } else {
        body.pointer("/emails/0/value")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| "(unnamed)".to_string())
    };
    body[required] = Value::String(name);
    body
}

/// The last line of every note crm-sync writes: plain text, which survives Pipedrive's HTML
/// sanitizing, and tells a person in Pipedrive where the note came from.
fn note_marker(key: &str) -> String {
    format!("[crm-sync:{key}]")
}

/// A note's content as the app wrote it: without the marker line.
fn unmarked(content: &str) -> &str {
    match content.rsplit_once("\n[crm-sync:") {
        Some((text, rest)) if rest.ends_with(']') && !rest.contains('\n') => text,
        _ => content,
    }
}

/// Pipedrive's ids are numbers; anything else is sent as given, for Pipedrive to refuse.
fn numeric(id: &str) -> Value {
    id.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(id.to_string()))
}

fn id_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => String::new(),
    }
}

fn one(inputs: usize) -> Result<(), CrmError> {
    if inputs == 1 {
        Ok(())
    } else {
        Err(CrmError::Rejected {
            call: "-".into(),
            status: 400,
            message: format!("Pipedrive takes one record a call, not {inputs}"),
        })
    }
}

#[async_trait]
impl Crm for PipedriveClient {
    fn name(&self) -> &'static str {
        "pipedrive"
    }

    fn max_batch(&self) -> usize {
        1
    }

    async fn upsert(
        &self,
        object: &str,
        id_property: &str,
        inputs: &[UpsertInput],
    ) -> Result<BatchResult, CrmError> {
        one(inputs.len())?;
        let input = &inputs[0];
        if object == NOTES {
            return self.upsert_note(input).await;
        }
        let key: String = form_urlencoded::byte_serialize(input.key.as_bytes()).collect();
        let found = self
            .call(
                Method::GET,
                &format!("/{object}/search?term={key}&fields=custom_fields&exact_match=true"),
                None,
            )
            .await?;
        let existing = found.as_ref().and_then(|answer| {
            answer
                .data
                .get("items")
                .and_then(Value::as_array)
                .and_then(|items| items.first())
                .and_then(|item| item.pointer("/item/id"))
                .map(id_text)
        });
        let mut properties = input.properties.clone();
        properties.insert(id_property.to_string(), input.key.clone());
        let body = body_of(&properties);
        match existing {
            Some(id) => match self
                .call(Method::PATCH, &format!("/{object}/{id}"), Some(body))
                .await?
            {
                Some(answer) => Ok(Self::single(answer, false)),
                None => Ok(Self::missing(format!("PATCH /{object}/{{id}} -> 404"))),
            },
            None => match self
                .call(Method::POST, &format!("/{object}"), Some(with_name(object, body)))
                .await?
            {
                Some(answer) => Ok(Self::single(answer, true)),
                None => Ok(Self::missing(format!("POST /{object} -> 404"))),
            },
        }
    }

    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError> {
        one(inputs.len())?;
        let input = &inputs[0];
        let path = format!("/{object}/{}", input.crm_id);
        match self
            .call(Method::PATCH, &path, Some(body_of(&input.properties)))
            .await?
        {
            Some(answer) => Ok(Self::single(answer, false)),
            None => Ok(Self::missing(format!("PATCH /{object}/{{id}} -> 404"))),
        }
    }

    async fn archive(&self, object: &str, crm_ids: &[String]) -> Result<BatchResult, CrmError> {
        one(crm_ids.len())?;
        let path = format!("/{object}/{}", crm_ids[0]);
        match self.call(Method::DELETE, &path, None).await? {
            Some(answer) => Ok(BatchResult {
                outcomes: vec![InputOutcome::Done {
                    crm_id: crm_ids[0].clone(),
                    created: false,
                }],
                rate: answer.rate,
                call: answer.call,
            }),
            // Deleted already: what an archive wants.
            None => Ok(BatchResult {
                outcomes: vec![InputOutcome::Done {
                    crm_id: crm_ids[0].clone(),
                    created: false,
                }],
                rate: RateInfo::default(),
                call: format!("DELETE /{object}/{{id}} -> 404"),
            }),
        }
    }

    async fn read(
        &self,
        object: &str,
        crm_ids: &[String],
        properties: &[String],
    ) -> Result<ReadResult, CrmError> {
        let mut records = Vec::with_capacity(crm_ids.len());
        let mut rate = RateInfo::default();
        let mut call = format!("GET /{object}/{{id}}");
        for id in crm_ids {
            match self.call(Method::GET, &format!("/{object}/{id}"), None).await? {
                Some(answer) => {
                    rate = answer.rate;
                    call = answer.call;
                    let data = answer.data.as_object().cloned().unwrap_or_default();
                    let mut flat = flatten(&data, None);
                    if object == NOTES {
                        if let Some(content) = flat.get_mut("content") {
                            *content = unmarked(content).to_string();
                        }
                    }
                    records.push(Some(
                        flat.into_iter()
                            .filter(|(name, _)| properties.is_empty() || properties.contains(name))
                            .collect(),
                    ));
                }
                None => records.push(None),
            }
        }
        Ok(ReadResult { records, rate, call })
    }

    async fn associate(
        &self,
        from: &str,
        to: &str,
        pairs: &[AssociationInput],
    ) -> Result<BatchResult, CrmError> {
        one(pairs.len())?;
        // A note was written on its person already (see `upsert_note`).
        if (from, to) == (NOTES, "persons") {
            return Ok(BatchResult {
                outcomes: vec![InputOutcome::Done {
                    crm_id: pairs[0].from_id.clone(),
                    created: false,
                }],
                rate: RateInfo::default(),
                call: "-".into(),
            });
        }
        // A deal names its person; other links are not in Pipedrive's model.
        if (from, to) != ("deals", "persons") {
            return Err(CrmError::Rejected {
                call: "-".into(),
                status: 400,
                message: format!("Pipedrive links {from} to {to} by no field crm-sync knows"),
            });
        }
        let pair = &pairs[0];
        let person = numeric(&pair.to_id);
        match self
            .call(
                Method::PATCH,
                &format!("/deals/{}", pair.from_id),
                Some(json!({ "person_id": person })),
            )
            .await?
        {
            Some(answer) => Ok(Self::single(answer, false)),
            None => Ok(Self::missing("PATCH /deals/{id} -> 404".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notes_content_reads_back_without_its_marker_line_only() {
        assert_eq!(unmarked("Call\n[crm-sync:act-1]"), "Call");
        assert_eq!(unmarked("Line\nCall\n[crm-sync:a]"), "Line\nCall");
        assert_eq!(
            unmarked("[crm-sync:a] is written by the app"),
            "[crm-sync:a] is written by the app"
        );
        assert_eq!(unmarked("Call\n[crm-sync:a]\nmore"), "Call\n[crm-sync:a]\nmore");
        assert_eq!(note_marker("act-1"), "[crm-sync:act-1]");
    }
    use reqwest::header::HeaderValue;

    #[test]
    fn a_new_person_without_a_name_is_named_from_its_names_or_email() {
        let named = with_name("persons", json!({"first_name": "Ada", "last_name": "Lovelace"}));
        assert_eq!(named["name"], "Ada Lovelace");
        let by_email = with_name("persons", json!({"emails": [{"value": "ada@example.com"}]}));
        assert_eq!(by_email["name"], "ada@example.com");
        let given = with_name("persons", json!({"name": "Countess"}));
        assert_eq!(given["name"], "Countess");
        assert_eq!(with_name("deals", json!({}))["title"], "(unnamed)");
    }

    #[test]
    fn the_rate_headers_fill_the_burst_and_daily_state() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("40"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("7"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("2"));
        headers.insert("x-daily-requests-left", HeaderValue::from_static("9120"));
        let rate = rate_info(&headers);
        assert_eq!(rate.burst_max, Some(40));
        assert_eq!(rate.burst_remaining, Some(7));
        assert_eq!(rate.daily_remaining, Some(9120));
        assert_eq!(rate_info(&HeaderMap::new()), RateInfo::default());
    }

    #[test]
    fn email_and_phone_become_primary_entries_and_unknown_names_custom_fields() {
        let properties: BTreeMap<String, String> = [
            ("email", "ada@example.com"),
            ("phone", "+44 20 7946 0000"),
            ("name", "Ada Lovelace"),
            ("a1b2c3", "app-7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let body = body_of(&properties);
        assert_eq!(body["emails"][0]["value"], "ada@example.com");
        assert_eq!(body["emails"][0]["primary"], true);
        assert_eq!(body["phones"][0]["value"], "+44 20 7946 0000");
        assert_eq!(body["name"], "Ada Lovelace");
        assert_eq!(body["custom_fields"]["a1b2c3"], "app-7");
        // What goes out reads back the same through the webhook's flattening.
        let back = flatten(body.as_object().unwrap(), None);
        assert_eq!(back, properties);
    }
}
