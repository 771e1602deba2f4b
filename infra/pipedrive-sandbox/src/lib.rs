//! A local Pipedrive for tests: persons and deals over API v2 (create, update, get, list,
//! delete, exact search by a custom field, the field lists) and notes over API v1 (content and a
//! person, deal, org or lead required), as Pipedrive's official client models shape them; token
//! auth; the per-token burst window (2 s) and the company's daily token budget with each
//! endpoint's token cost, reported in Pipedrive's headers and enforced with 429; webhooks v2
//! (HTTP Basic credentials) for every create and change, by the API (`change_source: api`) or by
//! a person (`app`, through [`Sandbox::edit`]).
//!
//! It validates requests as API v2 does: a field the request model does not have, a value of
//! the wrong type (text for a number) or an unknown custom field is a 400. Search, as
//! Pipedrive's, sees a write only after [`Limits::search_lag`].
//!
//! `set_faults` injects 500s (not applied) and late answers (applied, answered after the client
//! gave up). `GET /_sandbox/requests` lists the last 500 requests as received (method, path,
//! query, body), so that a test can hold what a client sent against the official models.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
pub use sandbox_server::Faults;
use sandbox_server::{Fault, FaultDice};
use serde_json::{json, Map, Value};

type Reply = hyper::Response<Full<Bytes>>;

/// Limits as a Pipedrive plan sets them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per token in each burst window (plans: 20 to 120 per 2 s).
    pub burst_limit: u64,
    pub burst_window: Duration,
    /// Tokens left today, company-wide (30,000 x plan multiplier x seats a day).
    pub daily_tokens: u64,
    /// How long a write takes to reach the search index.
    pub search_lag: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            burst_limit: 20,
            burst_window: Duration::from_secs(2),
            daily_tokens: 30_000,
            search_lag: Duration::ZERO,
        }
    }
}

/// Counters for tests.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub calls: u64,
    pub throttled: u64,
    pub unauthorized: u64,
    /// Calls answered 500 by injection, and calls applied but answered late.
    pub injected_errors: u64,
    pub injected_timeouts: u64,
    /// Tokens spent from the daily budget.
    pub tokens: u64,
    /// Requests refused with 400 for not matching the API's request model.
    pub invalid: u64,
}

/// A field of a person or a deal, as `GET /api/v2/personFields` lists it.
#[derive(Debug, Clone)]
pub struct Field {
    pub code: String,
    pub field_type: &'static str,
    pub custom: bool,
}

struct State {
    token: String,
    limits: Limits,
    daily_token_limit: u64,
    window: VecDeque<Instant>,
    stats: Stats,
    /// Entity (`persons`, `deals`) → id → record.
    records: BTreeMap<&'static str, BTreeMap<u64, Map<String, Value>>>,
    /// When each record's last write reaches the search index.
    indexed_at: BTreeMap<(&'static str, u64), Instant>,
    /// Custom fields of persons and deals.
    custom_fields: BTreeMap<&'static str, Vec<Field>>,
    next_id: u64,
    webhook: Option<Webhook>,
    /// Webhooks carry `meta.timestamp` as epoch seconds instead of RFC 3339 text.
    epoch_timestamps: bool,
    next_event: u64,
    pending_webhooks: Arc<std::sync::atomic::AtomicU64>,
    dice: FaultDice,
    /// The last requests to the API (method, path, JSON body), newest last, for
    /// `GET /_sandbox/requests`: what a client really sent.
    requests: VecDeque<Value>,
}

/// How many requests `GET /_sandbox/requests` keeps.
const REQUEST_LOG: usize = 500;

/// Where webhooks go and the credentials they carry.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl State {
    fn field_type(&self, entity: &str, code: &str) -> Option<&'static str> {
        self.custom_fields
            .iter()
            .find(|(name, _)| **name == entity)
            .and_then(|(_, fields)| fields.iter().find(|field| field.code == code))
            .map(|field| field.field_type)
    }

    /// `custom_fields` as webhooks v2 carry them: `{type, value}`, or `{type, id}` for option
    /// and link fields.
    fn wrapped(&self, entity: &str, record: &Map<String, Value>) -> Map<String, Value> {
        let mut record = record.clone();
        if let Some(Value::Object(custom)) = record.get_mut("custom_fields") {
            for (code, value) in custom.iter_mut() {
                if value.is_null() {
                    continue;
                }
                let kind = self.field_type(entity, code).unwrap_or("varchar");
                *value = match kind {
                    "enum" | "user" | "org" | "people" => json!({"type": kind, "id": value}),
                    _ => json!({"type": kind, "value": value}),
                };
            }
        }
        record
    }

    /// Queues a v2 webhook for a create (no `previous`) or a change of `entity`'s record.
    fn emit(
        &mut self,
        entity: &str,
        record: &Map<String, Value>,
        previous: Option<Map<String, Value>>,
        source: &str,
    ) {
        // The webhooks crm-sync registers are for persons and deals only.
        let Some(webhook) = self.webhook.clone().filter(|_| entity != "notes") else {
            return;
        };
        self.next_event += 1;
        let now = time::OffsetDateTime::now_utc();
        let timestamp = if self.epoch_timestamps {
            json!(now.unix_timestamp())
        } else {
            json!(now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default())
        };
        let singular = entity.trim_end_matches('s');
        let id = record.get("id").and_then(Value::as_u64).unwrap_or_default();
        let body = json!({
            "meta": {
                "action": if previous.is_some() { "change" } else { "create" },
                "entity": singular,
                "entity_id": id.to_string(),
                "id": format!("00000000-0000-4000-8000-{:012x}", self.next_event),
                "correlation_id": format!("00000000-0000-4000-9000-{:012x}", self.next_event),
                "timestamp": timestamp,
                "attempt": 1,
                "change_source": source,
                "version": "2.0",
                "company_id": "1",
                "user_id": "1",
                "host": "sandbox.pipedrive.com",
                "is_bulk_edit": false,
                "permitted_user_ids": ["1"],
                "type": "general",
                "webhook_id": "1",
                "webhook_owner_id": "1",
            },
            "data": self.wrapped(entity, record),
            "previous": previous.map(|previous| self.wrapped(entity, &previous)),
        });
        let pending = self.pending_webhooks.clone();
        pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            // Pipedrive retries after 3, 30 and 150 s; the sandbox after 0.2, 0.4 and 0.8 s.
            for attempt in 1..=4u64 {
                let mut body = body.clone();
                body["meta"]["attempt"] = json!(attempt);
                let sent = client
                    .post(&webhook.url)
                    .basic_auth(&webhook.user, Some(&webhook.password))
                    .json(&body)
                    .send()
                    .await;
                if sent.is_ok_and(|response| response.status().is_success()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 << (attempt - 1))).await;
            }
            pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

/// What `fields` change in `record`, as Pipedrive's `previous` tells it: the old values.
fn previous_of(record: &Map<String, Value>, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut previous = Map::new();
    for (name, value) in fields {
        if name == "custom_fields" {
            let old = record.get("custom_fields").and_then(Value::as_object);
            let changed: Map<String, Value> = value
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(hash, new)| old.and_then(|old| old.get(*hash)) != Some(*new))
                .map(|(hash, _)| {
                    (
                        hash.clone(),
                        old.and_then(|old| old.get(hash)).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            if !changed.is_empty() {
                previous.insert(name.clone(), Value::Object(changed));
            }
        } else if record.get(name) != Some(value) {
            previous.insert(name.clone(), record.get(name).cloned().unwrap_or(Value::Null));
        }
    }
    previous
}

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    server: sandbox_server::Server,
    state: Arc<Mutex<State>>,
}

/// The custom field every sandbox has on persons and deals: where crm-sync keeps the app's id
/// (the name `mapping.pipedrive.toml` gives it).
pub const APP_ID_FIELD: &str = "crm_sync_app_id";

impl Sandbox {
    pub async fn start(addr: &str, token: &str, limits: Limits) -> anyhow::Result<Sandbox> {
        let app_id = |_| {
            vec![Field {
                code: APP_ID_FIELD.to_string(),
                field_type: "varchar",
                custom: true,
            }]
        };
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            daily_token_limit: limits.daily_tokens,
            limits,
            window: VecDeque::new(),
            stats: Stats::default(),
            records: BTreeMap::new(),
            indexed_at: BTreeMap::new(),
            custom_fields: [("persons", app_id(())), ("deals", app_id(()))].into(),
            next_id: 1,
            webhook: None,
            epoch_timestamps: false,
            next_event: 0,
            pending_webhooks: Arc::default(),
            dice: FaultDice::default(),
            requests: VecDeque::new(),
        }));
        let shared = state.clone();
        let server =
            sandbox_server::start_responding(addr, move |parts, body| respond(&shared, parts, body)).await?;
        Ok(Sandbox { server, state })
    }

    /// The API base, as `https://api.pipedrive.com/api/v2` is for the real one.
    pub fn url(&self) -> String {
        format!("http://{}/api/v2", self.server.addr)
    }

    pub fn stats(&self) -> Stats {
        let state = self.state.lock().unwrap();
        Stats {
            injected_errors: state.dice.errors,
            injected_timeouts: state.dice.timeouts,
            ..state.stats.clone()
        }
    }

    /// Adds a custom field to persons or deals, as an admin would (`varchar`, `double`,
    /// `monetary`, `enum`, `date`, ...).
    pub fn add_custom_field(&self, entity: &str, code: &str, field_type: &'static str) {
        let mut state = self.state.lock().unwrap();
        let entity = entity_name(entity).expect("persons or deals");
        state.custom_fields.entry(entity).or_default().push(Field {
            code: code.to_string(),
            field_type,
            custom: true,
        });
    }

    /// Webhooks from now on carry `meta.timestamp` as a 10-digit epoch number, as some of
    /// Pipedrive's own examples show it.
    pub fn set_epoch_timestamps(&self, epoch: bool) {
        self.state.lock().unwrap().epoch_timestamps = epoch;
    }

    /// Injects failures into API calls from now on, with seeded dice.
    pub fn set_faults(&self, faults: Faults, seed: u64) {
        self.state.lock().unwrap().dice = FaultDice::new(faults, seed);
    }

    /// The records of `entity` (`persons`, `deals`) as stored.
    pub fn records(&self, entity: &str) -> Vec<Map<String, Value>> {
        let state = self.state.lock().unwrap();
        state
            .records
            .iter()
            .find(|(name, _)| **name == entity)
            .map(|(_, records)| records.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Edits a record as a person in Pipedrive would; a webhook says so (`change_source: app`).
    pub fn edit(&self, entity: &str, id: u64, fields: Value) {
        let mut state = self.state.lock().unwrap();
        let entity = entity_name(entity).expect("persons or deals");
        let fields = fields.as_object().cloned().unwrap_or_default();
        let lag = state.limits.search_lag;
        let record = state
            .records
            .entry(entity)
            .or_default()
            .get_mut(&id)
            .expect("the record exists");
        let previous = previous_of(record, &fields);
        merge(record, fields);
        touched(entity, record);
        let record = record.clone();
        state.indexed_at.insert((entity, id), Instant::now() + lag);
        state.emit(entity, &record, Some(previous), "app");
    }

    /// Posts a webhook for every create and change from now on.
    pub fn set_webhook(&self, webhook: Webhook) {
        self.state.lock().unwrap().webhook = Some(webhook);
    }

    /// Webhooks not yet delivered (or given up on).
    pub fn pending_webhooks(&self) -> u64 {
        self.state
            .lock()
            .unwrap()
            .pending_webhooks
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn entity_name(segment: &str) -> Option<&'static str> {
    match segment {
        "persons" => Some("persons"),
        "deals" => Some("deals"),
        "notes" => Some("notes"),
        _ => None,
    }
}

fn reply(status: u16, body: &Value, headers: &[(String, String)]) -> Reply {
    let mut builder = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// An error body: `errorCode` is the status, a number, as the official client's only model of
/// it (`UnathorizedResponse`) and Pipedrive's daily-budget 429 have it.
fn error(status: u16, message: &str, headers: &[(String, String)]) -> Reply {
    reply(
        status,
        &json!({"success": false, "error": message, "errorCode": status}),
        headers,
    )
}

/// API v2's answer to a request its model does not take.
fn invalid(detail: &str) -> (u16, Value) {
    (
        400,
        json!({
            "success": false,
            "error": format!("Validation failed: {detail}"),
            "code": "ERR_SCHEMA_VALIDATION_FAILED",
            "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.",
            "data": null,
            "additional_data": null,
        }),
    )
}

/// Pipedrive's rate headers: the token's burst window and the company's daily token budget.
fn rate_headers(state: &State) -> Vec<(String, String)> {
    let reset = state
        .window
        .front()
        .map(|first| state.limits.burst_window.saturating_sub(first.elapsed()))
        .unwrap_or_default();
    vec![
        ("x-ratelimit-limit".into(), state.limits.burst_limit.to_string()),
        (
            "x-ratelimit-remaining".into(),
            state
                .limits
                .burst_limit
                .saturating_sub(state.window.len() as u64)
                .to_string(),
        ),
        ("x-ratelimit-reset".into(), reset.as_secs().max(1).to_string()),
        (
            "x-daily-ratelimit-token-limit".into(),
            state.daily_token_limit.to_string(),
        ),
        (
            "x-daily-ratelimit-token-remaining".into(),
            state.limits.daily_tokens.to_string(),
        ),
    ]
}

/// Tokens a request costs (Pipedrive's API reference, `x-token-cost`): v1 costs more than v2.
fn token_cost(method: &str, version: u8, segments: &[&str]) -> u64 {
    let (one, list) = (segments.len() >= 2, segments.len() == 1);
    match (version, method) {
        (2, _) if segments.get(1) == Some(&"search") => 20,
        (2, "GET") if segments.first().is_some_and(|s| s.ends_with("Fields")) => 10,
        (2, "GET") if one => 1,
        (2, "GET") if list => 10,
        (2, "POST" | "PATCH") => 5,
        (2, "DELETE") => 3,
        (1, "GET") if one => 2,
        (1, "GET") => 20,
        (1, "POST" | "PUT") => 10,
        (1, "DELETE") => 6,
        _ => 1,
    }
}

/// Seconds until the sandbox's day turns (midnight UTC).
fn seconds_to_midnight() -> u64 {
    let now = time::OffsetDateTime::now_utc();
    let midnight = (now.date() + time::Duration::days(1)).midnight().assume_utc();
    (midnight - now).whole_seconds().max(1) as u64
}

/// The answer, and how long to hold it back (an injected timeout).
fn respond(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
) -> (Reply, Option<Duration>) {
    let mut state = state.lock().unwrap();
    if parts.uri.path() == "/_sandbox/requests" {
        let log: Vec<Value> = state.requests.iter().cloned().collect();
        return (reply(200, &Value::Array(log), &[]), None);
    }
    state.stats.calls += 1;
    if state.requests.len() == REQUEST_LOG {
        state.requests.pop_front();
    }
    state.requests.push_back(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or_default(),
        "body": serde_json::from_slice::<Value>(body).unwrap_or(Value::Null),
    }));
    let token = parts
        .headers
        .get("x-api-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            parts
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .or_else(|| {
            // The official client may send the token as the `api_token` query parameter.
            parts.uri.query().and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "api_token")
                    .map(|(_, value)| value.into_owned())
            })
        });
    if token.as_deref() != Some(state.token.as_str()) {
        state.stats.unauthorized += 1;
        return (error(401, "Unauthorized", &[]), None);
    }
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    // Notes exist only in API v1; persons and deals are served from v2.
    let (version, rest) = match (path.strip_prefix("/api/v2/"), path.strip_prefix("/v1/")) {
        (Some(rest), _) => (2, rest),
        (_, Some(rest)) => (1, rest),
        _ => (0, path.as_str()),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let cost = token_cost(parts.method.as_str(), version, &segments);
    let now = Instant::now();
    let window = state.limits.burst_window;
    while state
        .window
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        state.window.pop_front();
    }
    if state.limits.daily_tokens < cost {
        state.stats.throttled += 1;
        let mut headers = rate_headers(&state);
        headers.push(("retry-after".into(), seconds_to_midnight().to_string()));
        return (
            reply(
                429,
                &json!({"success": false, "error": "daily request budget exceeded", "errorCode": 429}),
                &headers,
            ),
            None,
        );
    }
    if state.window.len() as u64 >= state.limits.burst_limit {
        state.stats.throttled += 1;
        let headers = rate_headers(&state);
        return (error(429, "Request over limit", &headers), None);
    }
    state.window.push_back(now);
    state.limits.daily_tokens -= cost;
    state.stats.tokens += cost;
    let headers = rate_headers(&state);
    let late = match state.dice.roll() {
        Fault::Error => return (error(500, "Internal server error", &headers), None),
        Fault::Late(hold) => Some(hold),
        Fault::None => None,
    };
    let fields_list = segments
        .first()
        .is_some_and(|s| *s == "personFields" || *s == "dealFields");
    if !fields_list && (version == 1) != (segments.first() == Some(&"notes")) {
        let body = json!({"success": false, "error": "Not found", "errorCode": 404});
        return (reply(404, &body, &headers), late);
    }
    let (status, body) = serve(&mut state, parts.method.as_str(), &segments, &query, body);
    if status == 400 {
        state.stats.invalid += 1;
    }
    (reply(status, &body, &headers), late)
}

fn now_text() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// API v1's time form: `YYYY-MM-DD HH:MM:SS`, UTC.
fn v1_time() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

/// Fields of each v2 request model crm-sync's writes go through, and their JSON types.
fn model_field(entity: &str, name: &str) -> Option<&'static str> {
    let person = [
        ("name", "string"),
        ("owner_id", "integer"),
        ("org_id", "integer"),
        ("emails", "array"),
        ("phones", "array"),
        ("visible_to", "integer"),
        ("label_ids", "array"),
        ("marketing_status", "string"),
        ("add_time", "string"),
        ("custom_fields", "object"),
    ];
    let deal = [
        ("title", "string"),
        ("owner_id", "integer"),
        ("person_id", "integer"),
        ("org_id", "integer"),
        ("pipeline_id", "integer"),
        ("stage_id", "integer"),
        ("value", "number"),
        ("currency", "string"),
        ("add_time", "string"),
        ("status", "string"),
        ("probability", "number"),
        ("lost_reason", "string"),
        ("visible_to", "integer"),
        ("expected_close_date", "string"),
        ("label_ids", "array"),
        ("custom_fields", "object"),
    ];
    let fields: &[(&str, &'static str)] = match entity {
        "persons" => &person,
        "deals" => &deal,
        _ => return None,
    };
    fields
        .iter()
        .find(|(field, _)| *field == name)
        .map(|(_, kind)| *kind)
}

fn of_type(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// Checks a v2 person or deal body against the request model; `creating` also requires the
/// record's name (`name`, `title`).
fn validate(state: &State, entity: &str, fields: &Map<String, Value>, creating: bool) -> Result<(), String> {
    for (name, value) in fields {
        let Some(kind) = model_field(entity, name) else {
            return Err(format!("{name}: Parameter is not allowed for this request"));
        };
        if value.is_null() && name != "name" && name != "title" {
            continue;
        }
        if !of_type(value, kind) {
            return Err(format!("{name}: Parameter must be of type {kind}, not {value}"));
        }
        if name == "emails" || name == "phones" {
            let entries = value.as_array().map(Vec::as_slice).unwrap_or_default();
            if entries
                .iter()
                .any(|entry| !entry.get("value").is_some_and(Value::is_string))
            {
                return Err(format!("{name}: each entry needs a `value` string"));
            }
        }
        if name == "expected_close_date" {
            let text = value.as_str().unwrap_or_default();
            let format = time::macros::format_description!("[year]-[month]-[day]");
            if time::Date::parse(text, &format).is_err() {
                return Err(format!("expected_close_date: {text} is not a YYYY-MM-DD date"));
            }
        }
    }
    for (code, value) in fields
        .get("custom_fields")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(field_type) = state.field_type(entity, code) else {
            return Err(format!("custom_fields.{code}: no such custom field"));
        };
        let fits = match field_type {
            _ if value.is_null() => true,
            "double" | "monetary" | "int" => value.is_number(),
            "enum" | "user" | "org" | "people" => value.is_u64(),
            _ => value.is_string(),
        };
        if !fits {
            return Err(format!(
                "custom_fields.{code}: a {field_type} field does not take {value}"
            ));
        }
    }
    let required = if entity == "persons" { "name" } else { "title" };
    let named = fields
        .get(required)
        .and_then(Value::as_str)
        .is_some_and(|v| !v.trim().is_empty());
    if creating && !named {
        return Err(format!("{required}: Parameter is required"));
    }
    Ok(())
}

/// Keeps what Pipedrive derives after a write: a person's name parts, the update time.
fn touched(entity: &str, record: &mut Map<String, Value>) {
    if entity == "persons" {
        let name = record
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
        record.insert("first_name".into(), json!(first));
        record.insert(
            "last_name".into(),
            if last.is_empty() { Value::Null } else { json!(last) },
        );
    }
    let now = if entity == "notes" { v1_time() } else { now_text() };
    record.insert("update_time".into(), json!(now));
}

/// A new record with what Pipedrive fills in.
fn created(entity: &str, id: u64) -> Map<String, Value> {
    let now = if entity == "notes" { v1_time() } else { now_text() };
    let mut record = Map::from_iter([
        ("id".to_string(), json!(id)),
        ("add_time".to_string(), json!(now)),
        ("update_time".to_string(), json!(now)),
    ]);
    let defaults = match entity {
        "persons" => json!({"owner_id": 1, "org_id": null, "emails": [], "phones": [], "visible_to": 3,
                             "label_ids": [], "is_deleted": false, "custom_fields": {}}),
        "deals" => json!({"owner_id": 1, "person_id": null, "org_id": null, "pipeline_id": 1, "stage_id": 1,
                           "value": 0, "currency": "USD", "status": "open", "visible_to": 3,
                           "is_deleted": false, "expected_close_date": null, "custom_fields": {}}),
        _ => json!({"user_id": 1, "active_flag": true, "pinned_to_person_flag": false,
                    "pinned_to_deal_flag": false, "deal_id": null, "person_id": null, "org_id": null,
                    "lead_id": null}),
    };
    record.extend(defaults.as_object().cloned().unwrap_or_default());
    record
}

/// A record as API v2 answers it: fields without a value are left out.
fn shown(record: &Map<String, Value>) -> Value {
    Value::Object(
        record
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
    )
}

/// A search hit as `GET /api/v2/{persons|deals}/search` shapes it: custom field values as a
/// list without their keys, emails and phones as text.
fn search_item(entity: &str, record: &Map<String, Value>) -> Value {
    let custom: Vec<Value> = record
        .get("custom_fields")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, value)| !value.is_null())
        .map(|(_, value)| match value {
            Value::String(_) => value.clone(),
            other => Value::String(other.to_string()),
        })
        .collect();
    let texts = |name: &str| -> Vec<Value> {
        record
            .get(name)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("value").cloned())
            .collect()
    };
    let owner = json!({"id": record.get("owner_id").cloned().unwrap_or(json!(1))});
    if entity == "persons" {
        json!({
            "id": record["id"], "type": "person", "name": record.get("name"),
            "phones": texts("phones"), "emails": texts("emails"),
            "visible_to": record.get("visible_to"), "owner": owner,
            "custom_fields": custom, "notes": [],
        })
    } else {
        json!({
            "id": record["id"], "type": "deal", "title": record.get("title"),
            "value": record.get("value"), "currency": record.get("currency"), "status": record.get("status"),
            "visible_to": record.get("visible_to"), "owner": owner,
            "stage": {"id": record.get("stage_id"), "name": "Qualified"},
            "person": record.get("person_id").filter(|p| !p.is_null()).map(|id| json!({"id": id, "name": ""})),
            "custom_fields": custom, "notes": [],
        })
    }
}

fn serve(state: &mut State, method: &str, segments: &[&str], query: &str, body: &[u8]) -> (u16, Value) {
    let not_found = (
        404,
        json!({"success": false, "error": "Not found", "errorCode": 404}),
    );
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if let Some(fields_of) = segments.first().and_then(|first| match *first {
        "personFields" => Some("persons"),
        "dealFields" => Some("deals"),
        _ => None,
    }) {
        if method != "GET" || segments.len() > 1 {
            return not_found;
        }
        return (200, field_list(state, fields_of));
    }
    let Some(entity) = segments.first().and_then(|segment| entity_name(segment)) else {
        return not_found;
    };
    let fields = || -> Result<Map<String, Value>, (u16, Value)> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(fields),
            _ => Err((
                400,
                json!({"success": false, "error": "Invalid JSON body", "errorCode": 400}),
            )),
        }
    };
    let lag = state.limits.search_lag;
    match (method, segments.get(1).copied()) {
        ("POST", None) => {
            let fields = match fields() {
                Ok(fields) => fields,
                Err(reply) => return reply,
            };
            if entity == "notes" {
                if fields
                    .get("content")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    || !["person_id", "deal_id", "org_id", "lead_id"]
                        .iter()
                        .any(|link| fields.get(*link).is_some_and(|v| !v.is_null()))
                {
                    return (
                        400,
                        json!({"success": false, "error": "Content and one of deal_id, person_id, org_id or lead_id are required", "errorCode": 400}),
                    );
                }
                if let Some(problem) = note_problem(&fields) {
                    return (400, json!({"success": false, "error": problem, "errorCode": 400}));
                }
            } else if let Err(detail) = validate(state, entity, &fields, true) {
                return invalid(&detail);
            }
            let id = state.next_id;
            state.next_id += 1;
            let mut record = created(entity, id);
            merge(&mut record, fields);
            touched(entity, &mut record);
            state
                .records
                .entry(entity)
                .or_default()
                .insert(id, record.clone());
            state.indexed_at.insert((entity, id), Instant::now() + lag);
            state.emit(entity, &record, None, "api");
            (201, json!({"success": true, "data": shown(&record)}))
        }
        // API v1's list of notes: by person, newest first (`sort=id DESC`), `limit` of them.
        ("GET", None) if entity == "notes" => {
            let person = params.get("person_id").cloned();
            let limit = params
                .get("limit")
                .and_then(|limit| limit.parse::<usize>().ok())
                .unwrap_or(100)
                .min(500);
            let start = params
                .get("start")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            let newest_first = params.get("sort").is_some_and(|sort| sort == "id DESC");
            let mut notes: Vec<Value> = state
                .records
                .get(entity)
                .into_iter()
                .flat_map(|records| records.values())
                .filter(|note| {
                    person
                        .as_ref()
                        .is_none_or(|p| note.get("person_id").map(Value::to_string).as_ref() == Some(p))
                })
                .map(|note| Value::Object(note.clone()))
                .collect();
            if newest_first {
                notes.reverse();
            }
            let total = notes.len();
            let page: Vec<Value> = notes.into_iter().skip(start).take(limit).collect();
            let more = start + page.len() < total;
            (
                200,
                json!({"success": true, "data": page, "additional_data": {"pagination": if more {
                    json!({"start": start, "limit": limit, "more_items_in_collection": true, "next_start": start + limit})
                } else {
                    json!({"start": start, "limit": limit, "more_items_in_collection": false})
                }}}),
            )
        }
        // API v2's list, newest first when asked (`sort_by=add_time&sort_direction=desc`).
        ("GET", None) => {
            let limit = params
                .get("limit")
                .and_then(|limit| limit.parse::<usize>().ok())
                .unwrap_or(100)
                .min(500);
            let mut records: Vec<Map<String, Value>> = state
                .records
                .get(entity)
                .into_iter()
                .flat_map(|records| records.values().cloned())
                .collect();
            if params.get("sort_direction").is_some_and(|d| d == "desc") {
                records.reverse();
            }
            records.truncate(limit);
            let records: Vec<Value> = records.iter().map(shown).collect();
            (
                200,
                // No `next_cursor`: there is no next page.
                json!({"success": true, "data": records, "additional_data": {}}),
            )
        }
        ("GET", Some("search")) => {
            let term = params.get("term").cloned().unwrap_or_default().to_lowercase();
            let now = Instant::now();
            let items: Vec<Value> = state
                .records
                .get(entity)
                .into_iter()
                .flat_map(|records| records.values())
                .filter(|record| {
                    let id = record.get("id").and_then(Value::as_u64).unwrap_or_default();
                    state.indexed_at.get(&(entity, id)).is_none_or(|at| *at <= now)
                })
                // Exact match ignores case, as Pipedrive documents it.
                .filter(|record| {
                    record
                        .get("custom_fields")
                        .and_then(Value::as_object)
                        .is_some_and(|custom| {
                            custom
                                .values()
                                .any(|value| value.as_str().is_some_and(|v| v.to_lowercase() == term))
                        })
                })
                .map(|record| json!({"result_score": 1.0, "item": search_item(entity, record)}))
                .collect();
            (
                200,
                json!({"success": true, "data": {"items": items}, "additional_data": {}}),
            )
        }
        (method, Some(id)) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found;
            };
            // v2 updates with PATCH, v1 (notes) with PUT; each only its own.
            let update = if entity == "notes" { "PUT" } else { "PATCH" };
            if method == "PATCH" || method == "PUT" {
                if method != update {
                    return not_found;
                }
                let fields = match fields() {
                    Ok(fields) => fields,
                    Err(reply) => return reply,
                };
                if entity == "notes" {
                    if let Some(problem) = note_problem(&fields) {
                        return (400, json!({"success": false, "error": problem, "errorCode": 400}));
                    }
                } else if let Err(detail) = validate(state, entity, &fields, false) {
                    return invalid(&detail);
                }
                let records = state.records.entry(entity).or_default();
                return match records.get_mut(&id) {
                    Some(record) => {
                        let previous = previous_of(record, &fields);
                        merge(record, fields);
                        touched(entity, record);
                        let record = record.clone();
                        state.indexed_at.insert((entity, id), Instant::now() + lag);
                        if !previous.is_empty() {
                            state.emit(entity, &record, Some(previous), "api");
                        }
                        (200, json!({"success": true, "data": shown(&record)}))
                    }
                    None => not_found,
                };
            }
            let records = state.records.entry(entity).or_default();
            match method {
                "GET" => match records.get(&id) {
                    Some(record) => (200, json!({"success": true, "data": shown(record)})),
                    None => not_found,
                },
                "DELETE" => match records.remove(&id) {
                    // v2 answers the id, v1 `true`.
                    Some(_) if entity == "notes" => (200, json!({"success": true, "data": true})),
                    Some(_) => (200, json!({"success": true, "data": {"id": id}})),
                    None => not_found,
                },
                _ => not_found,
            }
        }
        _ => not_found,
    }
}

/// What API v1 refuses in a note: a link that is not a number, `add_time` not in its form.
fn note_problem(fields: &Map<String, Value>) -> Option<String> {
    for link in ["person_id", "deal_id", "org_id"] {
        if fields.get(link).is_some_and(|v| !v.is_null() && !v.is_u64()) {
            return Some(format!("{link} must be an integer"));
        }
    }
    let add_time = fields.get("add_time").and_then(Value::as_str)?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(add_time, &format)
        .is_err()
        .then(|| format!("add_time {add_time} is not YYYY-MM-DD HH:MM:SS"))
}

/// `GET /api/v2/{personFields|dealFields}`: the standard fields crm-sync may map, and the
/// custom ones an admin added.
fn field_list(state: &State, entity: &'static str) -> Value {
    let standard: &[(&str, &str)] = match entity {
        "persons" => &[
            ("name", "varchar"),
            ("first_name", "varchar"),
            ("last_name", "varchar"),
            ("email", "varchar"),
            ("phone", "phone"),
            ("owner_id", "user"),
            ("org_id", "org"),
            ("add_time", "date"),
            ("update_time", "date"),
        ],
        _ => &[
            ("title", "varchar"),
            ("value", "monetary"),
            ("expected_close_date", "date"),
            ("stage_id", "stage"),
            ("pipeline_id", "int"),
            ("person_id", "people"),
            ("owner_id", "user"),
            ("status", "status"),
        ],
    };
    let mut fields: Vec<Value> = standard
        .iter()
        .map(|(code, kind)| {
            json!({"field_code": code, "field_name": code, "field_type": kind,
                                  "is_custom_field": false, "options": null, "subfields": null,
                                  "is_optional_response_field": false})
        })
        .collect();
    for field in state.custom_fields.get(entity).into_iter().flatten() {
        fields.push(
            json!({"field_code": field.code, "field_name": field.code, "field_type": field.field_type,
                           "is_custom_field": field.custom, "options": null, "subfields": null,
                           "is_optional_response_field": false}),
        );
    }
    json!({"success": true, "data": fields, "additional_data": {}})
}

/// Sets each field; `custom_fields` merge key by key, as Pipedrive's PATCH does.
fn merge(record: &mut Map<String, Value>, fields: Map<String, Value>) {
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("custom_fields", Value::Object(custom)) => {
                let slot = record
                    .entry("custom_fields")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(existing) = slot {
                    existing.extend(custom);
                }
            }
            ("id", _) => {}
            (_, value) => {
                record.insert(name, value);
            }
        }
    }
}
