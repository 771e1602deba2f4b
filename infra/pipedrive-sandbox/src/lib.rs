//! A local Pipedrive for tests: persons and deals over API v2 (create, update, get, delete,
//! exact search by a custom field) and notes over API v1 (content and a person, deal, org or lead
//! required), token auth, the per-token burst window (2 s) and the daily budget, each reported in
//! Pipedrive's headers and enforced with 429; webhooks v2 (HTTP Basic
//! credentials) for every create and change, by the API (`change_source: api`) or by a person
//! (`app`, through [`Sandbox::edit`]).
//!
//! `set_faults` injects 500s (not applied) and late answers (applied, answered after the client
//! gave up).

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
    /// Requests left today, company-wide.
    pub daily_left: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            burst_limit: 20,
            burst_window: Duration::from_secs(2),
            daily_left: 10_000,
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
}

struct State {
    token: String,
    limits: Limits,
    window: VecDeque<Instant>,
    stats: Stats,
    /// Entity (`persons`, `deals`) → id → record.
    records: BTreeMap<&'static str, BTreeMap<u64, Map<String, Value>>>,
    next_id: u64,
    webhook: Option<Webhook>,
    next_event: u64,
    pending_webhooks: Arc<std::sync::atomic::AtomicU64>,
    dice: FaultDice,
}

/// Where webhooks go and the credentials they carry.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl State {
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
        let timestamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let singular = entity.trim_end_matches('s');
        let body = json!({
            "meta": {
                "action": if previous.is_some() { "change" } else { "create" },
                "entity": singular,
                "entity_id": record.get("id").map(Value::to_string).unwrap_or_default(),
                "id": format!("00000000-0000-4000-8000-{:012x}", self.next_event),
                "timestamp": timestamp,
                "attempt": 1,
                "change_source": source,
                "version": "2.0",
                "company_id": "1",
                "user_id": "1",
            },
            "data": record,
            "previous": previous,
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

impl Sandbox {
    pub async fn start(addr: &str, token: &str, limits: Limits) -> anyhow::Result<Sandbox> {
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            limits,
            window: VecDeque::new(),
            stats: Stats::default(),
            records: BTreeMap::new(),
            next_id: 1,
            webhook: None,
            next_event: 0,
            pending_webhooks: Arc::default(),
            dice: FaultDice::default(),
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
        let record = state
            .records
            .entry(entity)
            .or_default()
            .get_mut(&id)
            .expect("the record exists");
        let previous = previous_of(record, &fields);
        merge(record, fields);
        let record = record.clone();
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

fn error(status: u16, message: &str, code: &str, headers: &[(String, String)]) -> Reply {
    reply(
        status,
        &json!({"success": false, "error": message, "errorCode": code}),
        headers,
    )
}

/// Pipedrive's rate headers for the current window.
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
            "x-daily-requests-left".into(),
            state.limits.daily_left.to_string(),
        ),
    ]
}

/// The answer, and how long to hold it back (an injected timeout).
fn respond(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
) -> (Reply, Option<Duration>) {
    let mut state = state.lock().unwrap();
    state.stats.calls += 1;
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
        });
    if token.as_deref() != Some(state.token.as_str()) {
        state.stats.unauthorized += 1;
        return (error(401, "Unauthorized", "unauthorized", &[]), None);
    }
    let now = Instant::now();
    let window = state.limits.burst_window;
    while state
        .window
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        state.window.pop_front();
    }
    if state.limits.daily_left == 0 || state.window.len() as u64 >= state.limits.burst_limit {
        state.stats.throttled += 1;
        let headers = rate_headers(&state);
        return (error(429, "Request over limit", "rate_limit", &headers), None);
    }
    state.window.push_back(now);
    state.limits.daily_left -= 1;
    let headers = rate_headers(&state);
    let late = match state.dice.roll() {
        Fault::Error => {
            return (
                error(500, "Internal server error", "internal_server_error", &headers),
                None,
            )
        }
        Fault::Late(hold) => Some(hold),
        Fault::None => None,
    };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    // Notes exist only in API v1; persons and deals are served from v2.
    let (version, rest) = match (path.strip_prefix("/api/v2/"), path.strip_prefix("/v1/")) {
        (Some(rest), _) => (2, rest),
        (_, Some(rest)) => (1, rest),
        _ => (0, path.as_str()),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if (version == 1) != (segments.first() == Some(&"notes")) {
        let body = json!({"success": false, "error": "Not found", "errorCode": "not_found"});
        return (reply(404, &body, &headers), late);
    }
    let (status, body) = serve(&mut state, parts.method.as_str(), &segments, &query, body);
    (reply(status, &body, &headers), late)
}

fn serve(state: &mut State, method: &str, segments: &[&str], query: &str, body: &[u8]) -> (u16, Value) {
    let not_found = (
        404,
        json!({"success": false, "error": "Not found", "errorCode": "not_found"}),
    );
    let Some(entity) = segments.first().and_then(|segment| entity_name(segment)) else {
        return not_found;
    };
    let fields = || -> Result<Map<String, Value>, (u16, Value)> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(fields),
            _ => Err((
                400,
                json!({"success": false, "error": "Invalid JSON body", "errorCode": "bad_request"}),
            )),
        }
    };
    match (method, segments.get(1).copied()) {
        ("POST", None) => {
            let fields = match fields() {
                Ok(fields) => fields,
                Err(reply) => return reply,
            };
            if entity == "notes"
                && (fields
                    .get("content")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    || !["person_id", "deal_id", "org_id", "lead_id"]
                        .iter()
                        .any(|link| fields.get(*link).is_some_and(|v| !v.is_null())))
            {
                return (
                    400,
                    json!({"success": false, "error": "Content and one of deal_id, person_id, org_id or lead_id are required", "errorCode": "bad_request"}),
                );
            }
            let id = state.next_id;
            state.next_id += 1;
            let mut record = Map::from_iter([("id".to_string(), json!(id))]);
            merge(&mut record, fields);
            state
                .records
                .entry(entity)
                .or_default()
                .insert(id, record.clone());
            state.emit(entity, &record, None, "api");
            (201, json!({"success": true, "data": record}))
        }
        // API v1's list of notes: by person, newest first (`sort=id DESC`), `limit` of them.
        ("GET", None) if entity == "notes" => {
            let params: BTreeMap<String, String> =
                form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let person = params.get("person_id").cloned();
            let limit = params
                .get("limit")
                .and_then(|limit| limit.parse::<usize>().ok())
                .unwrap_or(100);
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
            notes.truncate(limit);
            (200, json!({"success": true, "data": notes}))
        }
        ("GET", Some("search")) => {
            let params: BTreeMap<String, String> =
                form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let term = params.get("term").cloned().unwrap_or_default();
            let items: Vec<Value> = state
                .records
                .get(entity)
                .into_iter()
                .flat_map(|records| records.values())
                .filter(|record| {
                    record
                        .get("custom_fields")
                        .and_then(Value::as_object)
                        .is_some_and(|custom| {
                            custom.values().any(|value| value.as_str() == Some(term.as_str()))
                        })
                })
                .map(|record| json!({"result_score": 1.0, "item": record}))
                .collect();
            (200, json!({"success": true, "data": {"items": items}}))
        }
        (method, Some(id)) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found;
            };
            let records = state.records.entry(entity).or_default();
            match method {
                "GET" => match records.get(&id) {
                    Some(record) => (200, json!({"success": true, "data": record})),
                    None => not_found,
                },
                // v2 updates with PATCH, v1 (notes) with PUT.
                "PATCH" | "PUT" => {
                    let fields = match fields() {
                        Ok(fields) => fields,
                        Err(reply) => return reply,
                    };
                    match records.get_mut(&id) {
                        Some(record) => {
                            let previous = previous_of(record, &fields);
                            merge(record, fields);
                            let record = record.clone();
                            if !previous.is_empty() {
                                state.emit(entity, &record, Some(previous), "api");
                            }
                            (200, json!({"success": true, "data": record}))
                        }
                        None => not_found,
                    }
                }
                "DELETE" => match records.remove(&id) {
                    Some(_) => (200, json!({"success": true, "data": {"id": id}})),
                    None => not_found,
                },
                _ => not_found,
            }
        }
        _ => not_found,
    }
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
