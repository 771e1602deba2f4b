//! Pipedrive's API v2 (persons and deals) as a [`Crm`], over HTTPS with reqwest.
//!
//! Pipedrive has no bulk write and no upsert: each record is one call. A record whose Pipedrive
//! id crm-sync knows is written by id; otherwise an upsert is an exact search by the custom
//! field holding the app's id, then a PATCH or a POST. `max_batch` is 1, so the sync's batching
//! sends one record a call and reports it so.
//!
//! Pipedrive's limit is a daily token budget per company, with a cost per endpoint
//! ([`token_cost`]); the client reads the budget from `x-daily-ratelimit-token-*`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use super::webhook::flatten;
use crate::adapters::crm_http;
use crate::domain::adoption::Found;
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, CrmLink, FailureKind, FindResult, InputError, InputOutcome,
    LinkInput, PropertyKinds, RateInfo, ReadResult, ThrottlePolicy, UpdateInput, UpsertInput, ValueKind,
};
use crate::domain::mapping::LinkVia;
use crate::ports::{unsupported_link, Crm};

/// Pipedrive's public API v2.
pub const DEFAULT_BASE_URL: &str = "https://api.pipedrive.com/api/v2";

/// Fields Pipedrive keeps at the top level of a person or a deal (API v2 request models); any
/// other property is a custom field, named by its hash key. A person's `first_name` and
/// `last_name` are read back but not written: v2 takes `name`, which the client makes of them.
const TOP_LEVEL: [&str; 12] = [
    "name",
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

/// An object's field kinds and when they were read.
type KindsRead = (std::time::Instant, BTreeMap<String, ValueKind>);

/// How long field kinds read from Pipedrive are used.
const KINDS_TTL: Duration = Duration::from_secs(60 * 60);

/// Top-level fields the v2 models type as integers, and as numbers.
const INTEGER_FIELDS: [&str; 6] = [
    "owner_id",
    "org_id",
    "visible_to",
    "stage_id",
    "pipeline_id",
    "person_id",
];
const NUMBER_FIELDS: [&str; 1] = ["value"];

/// The parts of a person's name the app may own; written together as `name`.
const NAME_PARTS: [&str; 2] = ["first_name", "last_name"];

/// Tokens each endpoint crm-sync calls costs from the company's daily budget (Pipedrive's API
/// reference, `x-token-cost`).
pub mod token_cost {
    pub const SEARCH: u32 = 20;
    pub const CREATE: u32 = 5;
    pub const UPDATE: u32 = 5;
    pub const GET: u32 = 1;
    pub const DELETE: u32 = 3;
    pub const LIST: u32 = 10;
    pub const FIELDS: u32 = 10;
    pub const NOTE_WRITE: u32 = 10;
    pub const NOTE_GET: u32 = 2;
    pub const NOTES_LIST: u32 = 20;
    /// What the limiter reserves for one granted call: an upsert of a record crm-sync has not
    /// written yet, looked for past the lagging search too (a search, the newest records, a
    /// check of the hit, a write). A note's worst case (60) and the field list (10, hourly) can
    /// exceed it: the reserve absorbs that, and the budget headers correct the count after each
    /// answer.
    pub const PER_CALL: u32 = SEARCH + LIST + GET + CREATE + 4;
}

/// A Pipedrive company, reached with an API token.
#[derive(Clone)]
pub struct PipedriveClient {
    http: reqwest::Client,
    base_url: String,
    /// API v1's root, for notes: v2 has none.
    v1_url: String,
    token: SecretString,
    /// App ids whose creation may have happened without the answer arriving: the next upsert
    /// of each looks past the search index, which lags behind writes.
    uncertain: Arc<Mutex<HashSet<String>>>,
    /// Each object's field kinds (`personFields`, `dealFields`) and when they were read: read
    /// again after [`KINDS_TTL`], so that a field an admin adds is typed within the hour.
    kinds: Arc<Mutex<HashMap<String, KindsRead>>>,
    burst: Arc<Mutex<BurstWindow>>,
}

/// Pipedrive's burst window: requests per token in any rolling 2 s.
const BURST_WINDOW: Duration = Duration::from_secs(2);

/// Keeps this instance's requests inside Pipedrive's rolling burst window.
///
/// The shared limiter grants calls, but one upsert is a search and then a write, and the write
/// leaves when the search's answer arrives: a slow answer pushes it into the next call's window.
/// So each request also waits here for a free place among this instance's own recent requests,
/// and for the window's reset once Pipedrive has answered that none is left (others' requests
/// count there too).
#[derive(Debug, Default)]
struct BurstWindow {
    /// When this instance's recent requests left, oldest first.
    sent: std::collections::VecDeque<std::time::Instant>,
    /// The token's limit, from `x-ratelimit-limit`; unknown until the first answer.
    limit: Option<usize>,
    /// Pipedrive answered that the window is full: no request before this.
    closed_until: Option<std::time::Instant>,
}

impl BurstWindow {
    /// How long the next request must wait; none means it may leave now, and it is counted.
    fn take(&mut self, now: std::time::Instant) -> Option<Duration> {
        while self
            .sent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= BURST_WINDOW)
        {
            self.sent.pop_front();
        }
        let full = self
            .limit
            .filter(|limit| *limit > 0 && self.sent.len() >= *limit)
            .map(|limit| self.sent[self.sent.len() - limit] + BURST_WINDOW);
        let until = full.max(self.closed_until).filter(|until| *until > now);
        match until {
            Some(until) => Some(until - now),
            None => {
                self.sent.push_back(now);
                None
            }
        }
    }

    /// Learns from an answer's headers.
    fn answered(&mut self, rate: &RateInfo, reset: Option<Duration>, now: std::time::Instant) {
        if let Some(limit) = rate.burst_max {
            self.limit = usize::try_from(limit).ok();
        }
        if rate.burst_remaining == Some(0) {
            let wait = reset
                .unwrap_or(BURST_WINDOW)
                .clamp(Duration::from_millis(100), BURST_WINDOW);
            self.closed_until = Some(now + wait);
        }
    }
}

/// The object activities are written as: notes on their person (API v1).
pub const NOTES: &str = "notes";

/// Pipedrive's rate state from its headers: `x-ratelimit-*` for the token's burst window,
/// `x-daily-ratelimit-token-*` for the company's daily token budget (missing now and then after
/// a long idle spell, so optional).
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
        daily_max: number("x-daily-ratelimit-token-limit"),
        daily_remaining: number("x-daily-ratelimit-token-remaining"),
    }
}

/// A value as the v2 models type it: numbers as JSON numbers for number fields, `null` to clear.
fn typed(name: &str, value: &str, kind: ValueKind) -> Value {
    if value.is_empty() {
        return Value::Null;
    }
    let number = |value: &str| value.trim().parse::<f64>().ok().filter(|n| n.is_finite());
    if INTEGER_FIELDS.contains(&name) {
        if let Ok(integer) = value.trim().parse::<i64>() {
            return Value::from(integer);
        }
    } else if NUMBER_FIELDS.contains(&name) || kind == ValueKind::Number {
        if let Some(number) = number(value) {
            // Whole numbers as integers: `1200`, not `1200.0`.
            return if number.fract() == 0.0 && number.abs() < 9e15 {
                Value::from(number as i64)
            } else {
                json!(number)
            };
        }
    } else if kind == ValueKind::Bool {
        match value {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    // Sent as given: Pipedrive refuses what its model does not take, and says why.
    Value::String(value.to_string())
}

/// The body Pipedrive's v2 models take for `properties`: top-level fields typed, `email`/`phone`
/// as the primary entry of `emails`/`phones`, the rest under `custom_fields`, typed by `kinds`.
/// A person's name parts are left out (see [`person_name`]).
pub fn body_of(properties: &BTreeMap<String, String>, kinds: &BTreeMap<String, ValueKind>) -> Value {
    let mut body = Map::new();
    let mut custom = Map::new();
    for (name, value) in properties {
        let kind = kinds.get(name).copied().unwrap_or_default();
        match name.as_str() {
            "email" | "phone" => {
                body.insert(
                    format!("{name}s"),
                    json!([{"value": value, "primary": true, "label": "work"}]),
                );
            }
            part if NAME_PARTS.contains(&part) => {}
            top if TOP_LEVEL.contains(&top) => {
                body.insert(name.clone(), typed(name, value, kind));
            }
            _ => {
                custom.insert(name.clone(), typed(name, value, kind));
            }
        }
    }
    if !custom.is_empty() {
        body.insert("custom_fields".into(), Value::Object(custom));
    }
    Value::Object(body)
}

/// The `name` a person's name parts make: the app's new parts over the current ones. `None` when
/// the change names neither part.
fn person_name(properties: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Option<String> {
    if !NAME_PARTS.iter().any(|part| properties.contains_key(*part)) {
        return None;
    }
    let part = |name: &str| {
        properties
            .get(name)
            .or_else(|| current.get(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Some(
        format!("{} {}", part("first_name"), part("last_name"))
            .trim()
            .to_string(),
    )
}

/// Whether a record (a search item's or a list's) carries `key` in the custom field
/// `id_property`, exactly: Pipedrive's exact search ignores case. Search items list custom field
/// values without their keys.
fn carries_key(record: &Value, id_property: &str, key: &str) -> bool {
    match record.get("custom_fields") {
        Some(Value::Array(values)) => values.iter().any(|value| value.as_str() == Some(key)),
        Some(Value::Object(fields)) => fields.get(id_property).is_some_and(|value| {
            value.as_str() == Some(key) || value.pointer("/value").and_then(Value::as_str) == Some(key)
        }),
        _ => false,
    }
}

/// A successful call's `data` and rate state.
struct Answer {
    data: Value,
    /// `additional_data` (pagination).
    additional: Value,
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
            uncertain: Arc::default(),
            kinds: Arc::default(),
            burst: Arc::default(),
        })
    }

    /// The cached kinds of `object`, while fresh.
    fn cached_kinds(&self, object: &str) -> Option<BTreeMap<String, ValueKind>> {
        let kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kinds
            .get(object)
            .filter(|(at, _)| at.elapsed() < KINDS_TTL)
            .map(|(_, kinds)| kinds.clone())
    }

    /// Kinds of `object`'s fields: Pipedrive's field list (`GET /{personFields|dealFields}`),
    /// kept for [`KINDS_TTL`]; the standard fields' kinds are known.
    async fn field_kinds(&self, object: &str) -> Result<(BTreeMap<String, ValueKind>, RateInfo), CrmError> {
        if let Some(kinds) = self.cached_kinds(object) {
            return Ok((kinds, RateInfo::default()));
        }
        let mut kinds: BTreeMap<String, ValueKind> = match object {
            "deals" => [
                ("value", ValueKind::Number),
                ("expected_close_date", ValueKind::Date),
            ]
            .into(),
            NOTES => [("add_time", ValueKind::DateTime)].into(),
            _ => BTreeMap::new(),
        }
        .into_iter()
        .map(|(name, kind)| (name.to_string(), kind))
        .collect();
        let fields = match object {
            "persons" => Some("personFields"),
            "deals" => Some("dealFields"),
            "organizations" => Some("organizationFields"),
            _ => None,
        };
        let mut rate = RateInfo::default();
        if let Some(fields) = fields {
            let mut cursor: Option<String> = None;
            // Pages of 500; a company has a few hundred fields at most.
            for _ in 0..20 {
                let path = match &cursor {
                    Some(cursor) => format!("/{fields}?limit=500&cursor={cursor}"),
                    None => format!("/{fields}?limit=500"),
                };
                let Some(answer) = self.call(Method::GET, &path, None).await? else {
                    break;
                };
                rate = answer.rate;
                for field in answer.data.as_array().into_iter().flatten() {
                    let (Some(code), Some(kind)) = (
                        field.get("field_code").and_then(Value::as_str),
                        field.get("field_type").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let kind = match kind {
                        // Option and link fields take their id, a number.
                        "int" | "double" | "monetary" | "enum" | "user" | "org" | "people" => {
                            ValueKind::Number
                        }
                        "boolean" => ValueKind::Bool,
                        "date" => ValueKind::Date,
                        _ => ValueKind::Text,
                    };
                    kinds.entry(code.to_string()).or_insert(kind);
                }
                cursor = answer
                    .additional
                    .pointer("/next_cursor")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if cursor.is_none() {
                    break;
                }
            }
        }
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(object.to_string(), (std::time::Instant::now(), kinds.clone()));
        Ok((kinds, rate))
    }

    /// Field kinds for typing a write's custom fields. Only a value that could be a number or a
    /// boolean needs its field's kind, so only then are the fields read (10 tokens an hour): a
    /// write of text fields costs no extra request against the burst window. A failed read fails
    /// the write the same way (a throttle waits, an outage retries): sent as text, a number would
    /// be refused for good.
    async fn write_kinds(
        &self,
        object: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, ValueKind>, CrmError> {
        if let Some(kinds) = self.cached_kinds(object) {
            return Ok(kinds);
        }
        let needs_kinds = properties.iter().any(|(name, value)| {
            !TOP_LEVEL.contains(&name.as_str())
                && !NAME_PARTS.contains(&name.as_str())
                && !matches!(name.as_str(), "email" | "phone")
                && (value.trim().parse::<f64>().is_ok() || value == "true" || value == "false")
        });
        if !needs_kinds {
            return Ok(BTreeMap::new());
        }
        Ok(self.field_kinds(object).await?.0)
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
        loop {
            let wait = self
                .burst
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(std::time::Instant::now());
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => break,
            }
        }
        let response = request
            .send()
            .await
            .map_err(|error| crm_http::unreached(&call, "Pipedrive", error))?;
        let status = response.status().as_u16();
        let rate = rate_info(response.headers());
        let reset = crm_http::seconds(response.headers(), "x-ratelimit-reset");
        self.burst
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .answered(&rate, reset, std::time::Instant::now());
        let retry_after = crm_http::seconds(response.headers(), "retry-after");
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
                additional: json.get("additional_data").cloned().unwrap_or(Value::Null),
                rate,
                call,
            })),
            404 => Ok(None),
            429 => {
                // Out of the day's token budget, or out of the window: the headers and the
                // message tell which. The day's 429 carries `retry-after` until the reset.
                let daily = rate.daily_remaining == Some(0) || message.to_ascii_lowercase().contains("daily");
                Err(CrmError::Throttled {
                    policy: if daily {
                        ThrottlePolicy::Daily
                    } else {
                        ThrottlePolicy::Burst
                    },
                    retry_after: if daily { retry_after.or(reset) } else { reset },
                    message,
                    rate,
                })
            }
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

    /// One record's lookup field set (or cleared with `null`) over API v2.
    async fn set_link_field(
        &self,
        object: &str,
        field: &str,
        id: &str,
        value: Value,
    ) -> Result<BatchResult, CrmError> {
        if object == NOTES {
            return Err(CrmError::Rejected {
                call: "-".into(),
                status: 400,
                message: format!(
                    "Pipedrive notes are written on their person; a note's `{field}` is not linked"
                ),
            });
        }
        let mut body = serde_json::Map::new();
        body.insert(field.to_string(), value);
        match self
            .call(
                Method::PATCH,
                &format!("/{object}/{id}"),
                Some(Value::Object(body)),
            )
            .await?
        {
            Some(answer) => Ok(Self::single(answer, false)),
            None => Ok(Self::missing(format!("PATCH /{object}/{{id}} -> 404"))),
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

    /// PATCHes a record by its Pipedrive id; `None` when Pipedrive has no such record. A change
    /// to one of a person's name parts is completed with the other as crm-sync last wrote it,
    /// else as Pipedrive reads it back (one token), since v2 writes only the whole `name`.
    async fn write_by_id(
        &self,
        object: &str,
        id: &str,
        properties: &BTreeMap<String, String>,
        written_before: &BTreeMap<String, String>,
    ) -> Result<Option<BatchResult>, CrmError> {
        let kinds = self.write_kinds(object, properties).await?;
        let mut body = body_of(properties, &kinds);
        let parts_given = NAME_PARTS
            .iter()
            .filter(|part| properties.contains_key(**part))
            .count();
        let parts_known = NAME_PARTS
            .iter()
            .filter(|part| properties.contains_key(**part) || written_before.contains_key(**part))
            .count();
        if object == "persons" && parts_given > 0 {
            // What crm-sync wrote last is the app's own split; Pipedrive's read-back splits
            // `name` at its first space, which a two-word first name does not survive.
            let current = if parts_known == NAME_PARTS.len() {
                written_before.clone()
            } else if parts_given < NAME_PARTS.len() {
                match self.call(Method::GET, &format!("/{object}/{id}"), None).await? {
                    // Pipedrive's own split, unless the name is the email a nameless person was
                    // given at creation (`with_name`): that is no part of a name.
                    Some(answer) => answer
                        .data
                        .as_object()
                        .map(|data| flatten(data, None))
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(name, value)| NAME_PARTS.contains(&name.as_str()) && !value.contains('@'))
                        .collect(),
                    None => return Ok(None),
                }
            } else {
                BTreeMap::new()
            };
            if let Some(name) = person_name(properties, &current).filter(|name| !name.is_empty()) {
                body["name"] = Value::String(name);
            }
        }
        Ok(self
            .call(Method::PATCH, &format!("/{object}/{id}"), Some(body))
            .await?
            .map(|answer| Self::single(answer, false)))
    }

    /// The Pipedrive id of the record carrying `key` in `id_property`: an exact search (20 tokens),
    /// whose index lags behind writes; when an earlier attempt may have created the record, also
    /// the newest records themselves (10 tokens), which do not lag.
    async fn find(
        &self,
        object: &str,
        id_property: &str,
        key: &str,
        may_exist: bool,
    ) -> Result<Option<String>, CrmError> {
        let term: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        let found = self
            .call(
                Method::GET,
                &format!("/{object}/search?term={term}&fields=custom_fields&exact_match=true&limit=10"),
                None,
            )
            .await?;
        // A search item lists custom field values without their keys, so another field holding
        // the same text (a "referred by" field) would match too: each candidate is read (one
        // token) and taken only if the id field itself holds the key.
        let candidates: Vec<String> = found
            .as_ref()
            .map(|answer| {
                answer
                    .data
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|item| item.get("item"))
                    .filter(|item| carries_key(item, id_property, key))
                    .filter_map(|item| item.get("id"))
                    .map(id_text)
                    .take(3)
                    .collect()
            })
            .unwrap_or_default();
        for candidate in candidates {
            let Some(answer) = self
                .call(Method::GET, &format!("/{object}/{candidate}"), None)
                .await?
            else {
                continue;
            };
            if answer
                .data
                .pointer(&format!("/custom_fields/{}", pointer_escape(id_property)))
                .and_then(Value::as_str)
                == Some(key)
            {
                return Ok(Some(candidate));
            }
        }
        if !may_exist {
            return Ok(None);
        }
        let field: String = form_urlencoded::byte_serialize(id_property.as_bytes()).collect();
        let newest = self
            .call(
                Method::GET,
                &format!("/{object}?sort_by=add_time&sort_direction=desc&limit=100&custom_fields={field}"),
                None,
            )
            .await?;
        Ok(newest.and_then(|answer| {
            answer
                .data
                .as_array()
                .into_iter()
                .flatten()
                .find(|record| carries_key(record, id_property, key))
                .and_then(|record| record.get("id"))
                .map(id_text)
        }))
    }

    /// A note rewritten by its id (the reconciliation's heal): `PUT` as API v1 takes it, its
    /// marker line kept so that the note is still found by the app's id.
    async fn update_note(&self, input: &UpdateInput) -> Result<BatchResult, CrmError> {
        let Some(current) = self
            .call(Method::GET, &format!("/{NOTES}/{}", input.crm_id), None)
            .await?
        else {
            return Ok(Self::missing(format!("GET /{NOTES}/{{id}} -> 404")));
        };
        let mut body: Map<String, Value> = input
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        if let Some(content) = body.get("content").and_then(Value::as_str) {
            let old = current
                .data
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let marker = old.len() - unmarked(old).len();
            let content = format!("{content}{}", &old[old.len() - marker..]);
            body.insert("content".into(), Value::String(content));
        }
        Ok(self
            .put_note(&input.crm_id, &Value::Object(body))
            .await?
            .map(|answer| Self::single(answer, false))
            .unwrap_or_else(|| Self::missing(format!("PUT /{NOTES}/{{id}} -> 404"))))
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

/// A JSON pointer segment for `name` (`~` and `/` escaped).
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
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
        let mut properties = input.properties.clone();
        properties.insert(id_property.to_string(), input.key.clone());
        if let Some(id) = &input.crm_id {
            if let Some(result) = self
                .write_by_id(object, id, &properties, &input.written_before)
                .await?
            {
                return Ok(result);
            }
            // Deleted in Pipedrive since: found again by the app's id, or written anew.
        }
        let may_exist = input.may_exist
            || self
                .uncertain
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&input.key);
        if let Some(id) = self.find(object, id_property, &input.key, may_exist).await? {
            self.uncertain
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&input.key);
            return Ok(self
                .write_by_id(object, &id, &properties, &input.written_before)
                .await?
                .unwrap_or_else(|| Self::missing(format!("PATCH /{object}/{{id}} -> 404"))));
        }
        let kinds = self.write_kinds(object, &properties).await?;
        let mut body = body_of(&properties, &kinds);
        if let Some(name) = person_name(&properties, &BTreeMap::new()).filter(|name| !name.is_empty()) {
            body["name"] = Value::String(name);
        }
        match self
            .call(Method::POST, &format!("/{object}"), Some(with_name(object, body)))
            .await
        {
            Ok(Some(answer)) => {
                self.uncertain
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&input.key);
                Ok(Self::single(answer, true))
            }
            Ok(None) => Ok(Self::missing(format!("POST /{object} -> 404"))),
            Err(error) => {
                // The person may exist now without the answer having arrived: the next try looks
                // past the search index before creating again.
                if matches!(error, CrmError::Transient { .. }) {
                    self.uncertain
                        .lock()
                        .expect("not poisoned")
                        .insert(input.key.clone());
                }
                Err(error)
            }
        }
    }

    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError> {
        one(inputs.len())?;
        let input = &inputs[0];
        if object == NOTES {
            return self.update_note(input).await;
        }
        Ok(self
            .write_by_id(object, &input.crm_id, &input.properties, &input.written_before)
            .await?
            .unwrap_or_else(|| Self::missing(format!("PATCH /{object}/{{id}} -> 404"))))
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
                    // A person's `name` comes along: it tells whether the parts Pipedrive split
                    // it into are still the ones crm-sync wrote (`align_read`).
                    let keep = |name: &str| {
                        properties.is_empty()
                            || properties.iter().any(|p| p == name)
                            || (object == "persons" && name == "name")
                    };
                    records.push(Some(flat.into_iter().filter(|(name, _)| keep(name)).collect()));
                }
                None => records.push(None),
            }
        }
        Ok(ReadResult { records, rate, call })
    }

    /// One value a call (`max_find`): an exact search, by the app's id field or a person's
    /// email (20 tokens), then the one record found, read whole (1 token; by id, kept only if
    /// its id field holds the value). Two or more found are named without being read: the plan leaves such a
    /// value to a person whatever they hold. Notes cannot be searched.
    async fn find(
        &self,
        object: &str,
        property: &str,
        values: &[String],
        properties: &[String],
    ) -> Result<FindResult, CrmError> {
        let by_email = property == "email";
        if object == NOTES || (by_email && object != "persons") {
            return Err(CrmError::Rejected {
                call: format!("find {object} by {property}"),
                status: 501,
                message: format!("pipedrive cannot search {object} by {property}"),
            });
        }
        let mut found = FindResult {
            matches: Vec::with_capacity(values.len()),
            rate: RateInfo::default(),
            call: format!("GET /{object}/search"),
        };
        for value in values {
            let term: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let fields = if by_email { "email" } else { "custom_fields" };
            let Some(answer) = self
                .call(
                    Method::GET,
                    &format!("/{object}/search?term={term}&fields={fields}&exact_match=true&limit=10"),
                    None,
                )
                .await?
            else {
                found.matches.push(Vec::new());
                continue;
            };
            found.rate = answer.rate;
            let ids: Vec<String> = answer
                .data
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|item| item.get("item"))
                // A search item lists custom values without their keys: another field holding
                // the id's text matches too, and the read below tells them apart.
                .filter(|item| by_email || carries_key(item, property, value))
                .filter_map(|item| item.get("id"))
                .map(id_text)
                .collect();
            let matches = if by_email && ids.len() > 1 {
                // Two persons share it: the plan leaves it to a person whatever they hold.
                ids.into_iter()
                    .map(|crm_id| Found {
                        crm_id,
                        values: BTreeMap::new(),
                    })
                    .collect()
            } else {
                // A search item lists custom values without their keys: a candidate by the
                // app's id is taken only if its id field holds it (the upsert's rule, up to 3).
                let mut matches = Vec::new();
                for id in ids.into_iter().take(3) {
                    let read = self.read(object, std::slice::from_ref(&id), &[]).await?;
                    for record in read.records.into_iter().flatten() {
                        if by_email || record.get(property) == Some(value) {
                            matches.push(Found {
                                crm_id: id.clone(),
                                values: record
                                    .into_iter()
                                    .filter(|(name, _)| name == property || properties.contains(name))
                                    .collect(),
                            });
                        }
                    }
                }
                matches
            };
            found.matches.push(matches);
        }
        Ok(found)
    }

    async fn property_kinds(&self, object: &str) -> Result<PropertyKinds, CrmError> {
        let (kinds, rate) = self.field_kinds(object).await?;
        Ok(PropertyKinds { kinds, rate })
    }

    fn align_read(
        &self,
        object: &str,
        values: &mut BTreeMap<String, String>,
        written: &BTreeMap<String, String>,
    ) {
        if object == "persons" {
            super::webhook::align_name_parts(values, written);
        }
    }

    fn holds_links(&self, via: &LinkVia) -> Result<(), String> {
        match via {
            LinkVia::Field(_) => Ok(()),
            _ => Err(
                "Pipedrive links records by a field of the record (`field = \"org_id\"`), without labels"
                    .into(),
            ),
        }
    }

    /// Sets the lookup field (`org_id`, `person_id`) of the `from` record to the `to` record's id.
    async fn link(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        one(pairs.len())?;
        let LinkVia::Field(field) = &link.via else {
            return Err(unsupported_link(self.name(), link));
        };
        self.set_link_field(
            &link.from_object,
            field,
            &pairs[0].from_id,
            numeric(&pairs[0].to_id),
        )
        .await
    }

    /// Clears the lookup field, if it still names the `to` record.
    async fn unlink(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        one(pairs.len())?;
        let LinkVia::Field(field) = &link.via else {
            return Err(unsupported_link(self.name(), link));
        };
        let pair = &pairs[0];
        // Pipedrive's v2 person model takes a number for org_id, never null (a deal's may be).
        if link.from_object == "persons" && field == "org_id" {
            return Ok(BatchResult {
                outcomes: vec![InputOutcome::Failed(InputError {
                    kind: FailureKind::Permanent,
                    code: "NOT_CLEARABLE".into(),
                    message: "Pipedrive's API v2 cannot clear a person's org_id (it takes an organization's id, not \
                              null): unlink the person in Pipedrive, or link it to another organization"
                        .into(),
                    existing_id: None,
                })],
                rate: RateInfo::default(),
                call: "no Pipedrive call: a person's org_id cannot be cleared over API v2".into(),
            });
        }
        // A person may have moved the record to another organization since: that link is theirs.
        let read = self
            .read(
                &link.from_object,
                std::slice::from_ref(&pair.from_id),
                std::slice::from_ref(field),
            )
            .await?;
        let holds = read
            .records
            .first()
            .and_then(Option::as_ref)
            .and_then(|values| values.get(field))
            .is_some_and(|value| *value == pair.to_id);
        if !holds {
            return Ok(BatchResult {
                outcomes: vec![pair.done()],
                rate: read.rate,
                call: format!("no Pipedrive write: {field} no longer names {}", pair.to_id),
            });
        }
        self.set_link_field(&link.from_object, field, &pair.from_id, Value::Null)
            .await
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
                outcomes: vec![pairs[0].done()],
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

    fn rate(max: u32, remaining: u32) -> RateInfo {
        RateInfo {
            burst_max: Some(max),
            burst_remaining: Some(remaining),
            ..RateInfo::default()
        }
    }

    #[test]
    fn a_request_waits_until_the_oldest_of_the_last_limit_requests_leaves_the_window() {
        let start = std::time::Instant::now();
        let mut window = BurstWindow::default();
        window.answered(&rate(3, 2), None, start);
        for offset in [0, 300, 600] {
            assert_eq!(window.take(start + Duration::from_millis(offset)), None);
        }
        assert_eq!(
            window.take(start + Duration::from_millis(700)),
            Some(Duration::from_millis(1300)),
            "the fourth request waits for the first to age out"
        );
        assert_eq!(window.take(start + Duration::from_millis(2000)), None);
        assert_eq!(
            window.take(start + Duration::from_millis(2100)),
            Some(Duration::from_millis(200)),
            "the window rolls: the second request leaves it at 2.3 s"
        );
    }

    #[test]
    fn before_the_first_answer_nothing_is_held_back() {
        let start = std::time::Instant::now();
        let mut window = BurstWindow::default();
        for offset in 0..50 {
            assert_eq!(window.take(start + Duration::from_millis(offset)), None);
        }
    }

    #[test]
    fn an_answer_with_none_left_closes_the_window_until_its_reset() {
        let start = std::time::Instant::now();
        let mut window = BurstWindow::default();
        window.answered(&rate(80, 0), Some(Duration::from_secs(1)), start);
        assert_eq!(
            window.take(start + Duration::from_millis(250)),
            Some(Duration::from_millis(750)),
            "others spent the window: wait for its reset"
        );
        assert_eq!(window.take(start + Duration::from_secs(1)), None);
        window.answered(&rate(80, 0), Some(Duration::from_secs(3600)), start);
        assert_eq!(
            window.take(start),
            Some(BURST_WINDOW),
            "a reset past the window is no longer than the window"
        );
    }

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
    fn the_rate_headers_fill_the_burst_window_and_the_daily_token_budget() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("40"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("7"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("2"));
        headers.insert(
            "x-daily-ratelimit-token-limit",
            HeaderValue::from_static("150000"),
        );
        headers.insert(
            "x-daily-ratelimit-token-remaining",
            HeaderValue::from_static("127320"),
        );
        headers.insert("x-daily-requests-left", HeaderValue::from_static("9120"));
        let rate = rate_info(&headers);
        assert_eq!(rate.burst_max, Some(40));
        assert_eq!(rate.burst_remaining, Some(7));
        assert_eq!(rate.daily_max, Some(150_000));
        assert_eq!(
            rate.daily_remaining,
            Some(127_320),
            "tokens, not the old request counter"
        );
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
        let body = body_of(&properties, &BTreeMap::new());
        assert_eq!(body["emails"][0]["value"], "ada@example.com");
        assert_eq!(body["emails"][0]["primary"], true);
        assert_eq!(body["phones"][0]["value"], "+44 20 7946 0000");
        assert_eq!(body["name"], "Ada Lovelace");
        assert_eq!(body["custom_fields"]["a1b2c3"], "app-7");
        // What goes out reads back the same through the webhook's flattening.
        let back = flatten(body.as_object().unwrap(), None);
        assert_eq!(back, properties);
    }

    #[test]
    fn numbers_go_out_as_numbers_and_an_empty_value_clears_the_field() {
        let properties: BTreeMap<String, String> = [
            ("value", "1200"),
            ("stage_id", "3"),
            ("title", "Plan"),
            ("d1e2", "12.50"),
            ("f3g4", "1200"),
            ("expected_close_date", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kinds = BTreeMap::from([("d1e2".to_string(), ValueKind::Number)]);
        let body = body_of(&properties, &kinds);
        assert_eq!(body["value"], json!(1200));
        assert_eq!(body["stage_id"], json!(3));
        assert_eq!(body["title"], json!("Plan"));
        assert_eq!(body["custom_fields"]["d1e2"], json!(12.5));
        assert_eq!(
            body["custom_fields"]["f3g4"],
            json!("1200"),
            "a text field stays text"
        );
        assert_eq!(body["expected_close_date"], Value::Null);
        assert_eq!(
            body_of(&[("value".to_string(), "lots".to_string())].into(), &kinds)["value"],
            "lots"
        );
    }

    #[test]
    fn a_persons_name_is_made_of_the_new_parts_over_the_current_ones() {
        let given = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let current = given(&[("first_name", "Grace"), ("last_name", "Hopper")]);
        assert_eq!(
            person_name(&given(&[("first_name", "Amazing Grace")]), &current).as_deref(),
            Some("Amazing Grace Hopper")
        );
        assert_eq!(
            person_name(&given(&[("last_name", "")]), &current).as_deref(),
            Some("Grace")
        );
        assert_eq!(person_name(&given(&[("email", "g@example.com")]), &current), None);
        let body = body_of(
            &given(&[("first_name", "Ada"), ("last_name", "L")]),
            &BTreeMap::new(),
        );
        assert!(
            body.get("first_name").is_none() && body.get("last_name").is_none(),
            "{body}"
        );
    }

    #[test]
    fn a_search_hit_counts_only_when_it_carries_the_key_exactly() {
        let item = json!({"id": 7, "custom_fields": ["App-1", "other"]});
        assert!(carries_key(&item, "abc", "App-1"));
        assert!(
            !carries_key(&item, "abc", "app-1"),
            "exact search ignores case; we do not"
        );
        let listed = json!({"id": 7, "custom_fields": {"abc": "app-1"}});
        assert!(carries_key(&listed, "abc", "app-1"));
        assert!(!carries_key(&listed, "xyz", "app-1"));
    }
}
