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
//!
//! Routing is an axum router (`router`): API v2 at `/api/v2`, notes at `/v1`, each endpoint a
//! route. Pipedrive's gate is a layer over all of them, in order: the request log, the token,
//! the daily budget and the burst window, injected faults. A path or method Pipedrive lacks is
//! a JSON 404 behind the same gate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{self, DefaultBodyLimit, Path, RawQuery, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, MethodRouter};
use axum::Router;
pub use sandbox_server::Faults;
use sandbox_server::{Fault, FaultDice};
use serde_json::{json, Map, Value};

type Shared = Arc<Mutex<State>>;
/// The store, as the gate and the handlers extract it.
type Store = extract::State<Shared>;
/// A record's id from the path. Kept as text: one that is not a number (or, percent-decoded,
/// not UTF-8) is a 404, as Pipedrive answers it, not axum's 400.
type Id = Result<Path<String>, PathRejection>;

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
        let action = if previous.is_some() { "change" } else { "create" };
        self.emit_event(entity, record, action, previous, Map::new(), source);
    }

    /// Queues the v2 webhook of a record merged away: a delete carrying `meta.merged_to_id`, with
    /// the record in `previous` and no `data`.
    fn emit_merged_away(&mut self, entity: &str, record: &Map<String, Value>, into: u64, source: &str) {
        let meta = Map::from_iter([("merged_to_id".to_string(), json!(into.to_string()))]);
        self.emit_event(entity, record, "delete", Some(record.clone()), meta, source);
    }

    fn emit_event(
        &mut self,
        entity: &str,
        record: &Map<String, Value>,
        action: &str,
        previous: Option<Map<String, Value>>,
        extra_meta: Map<String, Value>,
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
        let mut body = json!({
            "meta": {
                "action": action,
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
            "data": if action == "delete" { Value::Null } else { Value::Object(self.wrapped(entity, record)) },
            "previous": previous.map(|previous| self.wrapped(entity, &previous)),
        });
        for (name, value) in extra_meta {
            body["meta"][name] = value;
        }
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
    state: Shared,
}

/// The custom field every sandbox has on persons, deals and organizations: where crm-sync keeps the app's id
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
            custom_fields: [
                ("persons", app_id(())),
                ("deals", app_id(())),
                ("organizations", app_id(())),
            ]
            .into(),
            next_id: 1,
            webhook: None,
            epoch_timestamps: false,
            next_event: 0,
            pending_webhooks: Arc::default(),
            dice: FaultDice::default(),
            requests: VecDeque::new(),
        }));
        let server = sandbox_server::start(addr, router(state.clone())).await?;
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
        let entity = entity_name(entity).expect("persons, deals or organizations");
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

    /// Creates a record as a person in Pipedrive would (`change_source: app`); returns its id.
    pub fn create(&self, entity: &str, fields: Value) -> u64 {
        let mut state = self.state.lock().unwrap();
        let entity = entity_name(entity).expect("persons or deals");
        let (status, answer) = create_record_by(&mut state, entity, fields.to_string().as_bytes(), "app");
        assert_eq!(status, 201, "{answer}");
        answer["data"]["id"].as_u64().expect("an id")
    }

    /// Merges `loser` into `survivor` as a person in Pipedrive would (`PUT /v1/{entity}/{id}/merge`
    /// does the same for an API client): the survivor's values win, its empty ones are filled
    /// from the loser, which is deleted. Webhooks: the loser's delete with `merged_to_id`, then
    /// the survivor's change.
    pub fn merge(&self, entity: &str, loser: u64, survivor: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        let entity = entity_name(entity).expect("persons or deals");
        merge_records(&mut state, entity, loser, survivor, "app").0 == 200
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
        "organizations" => Some("organizations"),
        "notes" => Some("notes"),
        _ => None,
    }
}

fn reply(status: u16, body: &Value, headers: &[(String, String)]) -> Response {
    let mut builder = axum::http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// An error body: `errorCode` is the status, a number, as the official client's only model of
/// it (`UnathorizedResponse`) and Pipedrive's daily-budget 429 have it.
fn error_body(status: u16, message: &str) -> Value {
    json!({"success": false, "error": message, "errorCode": status})
}

/// What Pipedrive answers for a path, method or record it does not have.
fn not_found() -> (u16, Value) {
    (404, error_body(404, "Not found"))
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

/// Pipedrive's API as the sandbox serves it. Every API call, to a path or with a method Pipedrive
/// lacks too, passes the gate first: a miss is a call that was logged, authenticated and paid
/// for, then answered 404. The control API is routed after the gate is layered, so it is free and
/// unlogged.
fn router(shared: Shared) -> Router {
    let mut api = Router::new()
        .route(
            "/api/v2/personFields",
            methods().get(|store: Store| fields(store, "persons")),
        )
        .route(
            "/api/v2/dealFields",
            methods().get(|store: Store| fields(store, "deals")),
        )
        .route(
            "/api/v2/organizationFields",
            methods().get(|store: Store| fields(store, "organizations")),
        );
    // Persons, deals and organizations exist in API v2 only, notes in API v1 only.
    for entity in ["persons", "deals", "organizations"] {
        api = api
            .route(
                &format!("/api/v2/{entity}"),
                methods()
                    .get(move |store: Store, query: RawQuery| list(store, query, entity))
                    .post(move |store: Store, body: Bytes| create(store, body, entity)),
            )
            .route(
                &format!("/api/v2/{entity}/search"),
                methods().get(move |store: Store, query: RawQuery| search(store, query, entity)),
            )
            .route(
                &format!("/api/v2/{entity}/{{id}}"),
                methods()
                    .get(move |store: Store, id: Id| read(store, id, entity))
                    .patch(move |store: Store, id: Id, body: Bytes| update(store, id, body, entity))
                    .delete(move |store: Store, id: Id| delete(store, id, entity)),
            );
    }
    for entity in ["persons", "deals"] {
        // Merging exists in API v1 only.
        api = api.route(
            &format!("/v1/{entity}/{{id}}/merge"),
            methods().put(move |store: Store, id: Id, body: Bytes| merge_call(store, id, body, entity)),
        );
    }
    api.route(
        "/v1/notes",
        methods()
            .get(list_notes)
            .post(|store: Store, body: Bytes| create(store, body, "notes")),
    )
    .route(
        "/v1/notes/{id}",
        methods()
            .get(|store: Store, id: Id| read(store, id, "notes"))
            .put(|store: Store, id: Id, body: Bytes| update(store, id, body, "notes"))
            .delete(|store: Store, id: Id| delete(store, id, "notes")),
    )
    .fallback(missing)
    .layer(middleware::from_fn_with_state(shared.clone(), gate))
    // The API takes bodies of any size; axum's extractors would refuse one over 2 MB.
    .layer(DefaultBodyLimit::disable())
    .route("/_sandbox/requests", any(requests))
    .with_state(shared)
}

/// A path's method router, before its methods are added: any other method, HEAD included (axum
/// would answer it with the GET handler), is answered as a path Pipedrive lacks. Starting from
/// `any` rather than `method_not_allowed_fallback` also keeps axum from adding an `Allow` header.
fn methods() -> MethodRouter<Shared> {
    any(missing).head(missing)
}

/// The gate's word on a call.
enum Verdict {
    /// Answered here: status, body, headers.
    Refused(u16, Value, Vec<(String, String)>),
    /// Goes on to its handler: the rate headers its answer carries, and how long to hold that
    /// answer back (an injected late answer: applied, answered after the client gave up).
    Admitted(Vec<(String, String)>, Option<Duration>),
}

/// Every API call passes here before its handler; see [`admit`].
async fn gate(extract::State(shared): Store, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // Read whole for the request log; the handler gets the same bytes.
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let (headers, late) = match admit(&shared, &parts, &body) {
        Verdict::Refused(status, body, headers) => return reply(status, &body, &headers),
        Verdict::Admitted(headers, late) => (headers, late),
    };
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    if let Some(late) = late {
        tokio::time::sleep(late).await;
    }
    response
}

/// Pipedrive's gate, in order: the request log (every call, refused ones too), the token, the
/// daily token budget and the burst window (a call is priced by its path and method, whether the
/// path exists or not), then the injected faults.
fn admit(shared: &Shared, parts: &Parts, body: &[u8]) -> Verdict {
    let mut state = shared.lock().unwrap();
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
        return Verdict::Refused(401, error_body(401, "Unauthorized"), Vec::new());
    }
    // The version prices the call (v1 costs more); which paths exist is the router's business.
    let path = parts.uri.path().trim_end_matches('/');
    let (version, rest) = match (path.strip_prefix("/api/v2/"), path.strip_prefix("/v1/")) {
        (Some(rest), _) => (2, rest),
        (_, Some(rest)) => (1, rest),
        _ => (0, path),
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
        return Verdict::Refused(
            429,
            json!({"success": false, "error": "daily request budget exceeded", "errorCode": 429}),
            headers,
        );
    }
    if state.window.len() as u64 >= state.limits.burst_limit {
        state.stats.throttled += 1;
        return Verdict::Refused(429, error_body(429, "Request over limit"), rate_headers(&state));
    }
    state.window.push_back(now);
    state.limits.daily_tokens -= cost;
    state.stats.tokens += cost;
    let headers = rate_headers(&state);
    match state.dice.roll() {
        Fault::Error => Verdict::Refused(500, error_body(500, "Internal server error"), headers),
        Fault::Late(hold) => Verdict::Admitted(headers, Some(hold)),
        Fault::None => Verdict::Admitted(headers, None),
    }
}

/// Runs one endpoint on the store and answers its JSON; a 400 is a request the API's model
/// refused.
fn answer(shared: &Shared, endpoint: impl FnOnce(&mut State) -> (u16, Value)) -> Response {
    let mut state = shared.lock().unwrap();
    let (status, body) = endpoint(&mut state);
    if status == 400 {
        state.stats.invalid += 1;
    }
    reply(status, &body, &[])
}

/// A query's parameters, decoded.
fn params(query: Option<String>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The id in the path as text; the endpoint answers 404 when it is not a number.
fn path_id(id: Id) -> String {
    id.map(|Path(id)| id).unwrap_or_default()
}

// The handlers: `entity` is fixed by the route.

async fn missing() -> Response {
    let (status, body) = not_found();
    reply(status, &body, &[])
}

async fn fields(extract::State(shared): Store, entity: &'static str) -> Response {
    answer(&shared, |state| (200, field_list(state, entity)))
}

async fn list(extract::State(shared): Store, RawQuery(query): RawQuery, entity: &'static str) -> Response {
    answer(&shared, |state| list_records(state, entity, &params(query)))
}

async fn list_notes(extract::State(shared): Store, RawQuery(query): RawQuery) -> Response {
    answer(&shared, |state| list_notes_of(state, &params(query)))
}

async fn search(extract::State(shared): Store, RawQuery(query): RawQuery, entity: &'static str) -> Response {
    answer(&shared, |state| search_records(state, entity, &params(query)))
}

async fn create(extract::State(shared): Store, body: Bytes, entity: &'static str) -> Response {
    answer(&shared, |state| create_record(state, entity, &body))
}

async fn read(extract::State(shared): Store, id: Id, entity: &'static str) -> Response {
    answer(&shared, |state| read_record(state, entity, &path_id(id)))
}

async fn update(extract::State(shared): Store, id: Id, body: Bytes, entity: &'static str) -> Response {
    answer(&shared, |state| update_record(state, entity, &path_id(id), &body))
}

async fn delete(extract::State(shared): Store, id: Id, entity: &'static str) -> Response {
    answer(&shared, |state| delete_record(state, entity, &path_id(id)))
}

/// `PUT /v1/{persons|deals}/{id}/merge` `{"merge_with_id"}`: the record of the path is merged
/// into `merge_with_id`, which survives.
async fn merge_call(extract::State(shared): Store, id: Id, body: Bytes, entity: &'static str) -> Response {
    answer(&shared, |state| {
        let Ok(loser) = path_id(id).parse::<u64>() else {
            return not_found();
        };
        let survivor = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("merge_with_id").and_then(Value::as_u64));
        match survivor {
            Some(survivor) => merge_records(state, entity, loser, survivor, "api"),
            None => invalid("merge_with_id is required and must be a number"),
        }
    })
}

/// Merges `loser` into `survivor`; see [`Sandbox::merge`].
fn merge_records(
    state: &mut State,
    entity: &'static str,
    loser: u64,
    survivor: u64,
    source: &str,
) -> (u16, Value) {
    let records = state.records.entry(entity).or_default();
    if loser == survivor || !records.contains_key(&survivor) {
        return not_found();
    }
    let Some(gone) = records.remove(&loser) else {
        return not_found();
    };
    let kept = records.get_mut(&survivor).expect("checked");
    let before = kept.clone();
    let empty = |value: Option<&Value>| match value {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        _ => false,
    };
    let mut filled = Map::new();
    for (name, value) in &gone {
        if name == "custom_fields" {
            let mine = kept
                .get("custom_fields")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let theirs: Map<String, Value> = value
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(code, v)| empty(mine.get(*code)) && !v.is_null())
                .map(|(code, v)| (code.clone(), v.clone()))
                .collect();
            if !theirs.is_empty() {
                filled.insert(name.clone(), Value::Object(theirs));
            }
        } else if !matches!(name.as_str(), "id" | "add_time" | "update_time")
            && empty(kept.get(name))
            && !empty(Some(value))
        {
            filled.insert(name.clone(), value.clone());
        }
    }
    let previous = previous_of(&before, &filled);
    merge(kept, filled);
    touched(entity, kept);
    let kept = kept.clone();
    let lag = state.limits.search_lag;
    state.indexed_at.insert((entity, survivor), Instant::now() + lag);
    state.indexed_at.remove(&(entity, loser));
    state.emit_merged_away(entity, &gone, survivor, source);
    state.emit(entity, &kept, Some(previous), source);
    let mut data = shown(&kept);
    data["merge_what_id"] = json!(loser);
    (200, json!({"success": true, "data": data}))
}

/// `/_sandbox/requests`, any method: the request log, newest last.
async fn requests(extract::State(shared): Store) -> Response {
    let log: Vec<Value> = shared.lock().unwrap().requests.iter().cloned().collect();
    reply(200, &Value::Array(log), &[])
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
    // AddOrganizationRequest / UpdateOrganizationRequest.
    let organization = [
        ("name", "string"),
        ("owner_id", "integer"),
        ("add_time", "string"),
        ("visible_to", "integer"),
        ("label_ids", "array"),
        ("address", "object"),
        ("website", "string"),
        ("linkedin", "string"),
        ("industry", "integer"),
        ("annual_revenue", "number"),
        ("employee_count", "integer"),
        ("custom_fields", "object"),
    ];
    let fields: &[(&str, &'static str)] = match entity {
        "persons" => &person,
        "deals" => &deal,
        "organizations" => &organization,
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
        // The v2 models type a person's org_id as a number only; a deal's may be null.
        let nullable = name != "name" && name != "title" && !(entity == "persons" && name == "org_id");
        if value.is_null() && nullable {
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
    let required = if entity == "deals" { "title" } else { "name" };
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
        "organizations" => json!({"owner_id": 1, "visible_to": 3, "label_ids": [], "is_deleted": false,
                                   "custom_fields": {}}),
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
    } else if entity == "organizations" {
        json!({
            "id": record["id"], "type": "organization", "name": record.get("name"),
            "address": record.get("address").and_then(|address| address.get("value")).cloned(),
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

/// A request body as the JSON object every write takes.
fn body_fields(body: &[u8]) -> Result<Map<String, Value>, (u16, Value)> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err((
            400,
            json!({"success": false, "error": "Invalid JSON body", "errorCode": 400}),
        )),
    }
}

/// `POST /api/v2/{persons|deals}`, `POST /v1/notes`.
fn create_record(state: &mut State, entity: &'static str, body: &[u8]) -> (u16, Value) {
    create_record_by(state, entity, body, "api")
}

/// Creates a record; its webhook names `source` (`api` for a client, `app` for a person).
fn create_record_by(state: &mut State, entity: &'static str, body: &[u8], source: &str) -> (u16, Value) {
    let fields = match body_fields(body) {
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
    let lag = state.limits.search_lag;
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
    state.emit(entity, &record, None, source);
    (201, json!({"success": true, "data": shown(&record)}))
}

/// `GET /v1/notes`: by person, newest first (`sort=id DESC`), `limit` of them.
fn list_notes_of(state: &State, params: &BTreeMap<String, String>) -> (u16, Value) {
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
        .get("notes")
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

/// `GET /api/v2/{persons|deals}`, newest first when asked (`sort_by=add_time&sort_direction=desc`).
fn list_records(state: &State, entity: &str, params: &BTreeMap<String, String>) -> (u16, Value) {
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

/// `GET /api/v2/{persons|deals}/search`: an exact match on a custom field's value, or on a
/// person's email (`fields=email`), among the records the search index has caught up with.
fn search_records(state: &State, entity: &'static str, params: &BTreeMap<String, String>) -> (u16, Value) {
    let term = params.get("term").cloned().unwrap_or_default().to_lowercase();
    let fields = params.get("fields").map_or("custom_fields", String::as_str);
    let (by_custom, by_email) = (
        fields.split(',').any(|f| f == "custom_fields"),
        entity == "persons" && fields.split(',').any(|f| f == "email"),
    );
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
            let custom = by_custom
                && record
                    .get("custom_fields")
                    .and_then(Value::as_object)
                    .is_some_and(|custom| {
                        custom
                            .values()
                            .any(|value| value.as_str().is_some_and(|v| v.to_lowercase() == term))
                    });
            let email = by_email
                && record
                    .get("emails")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| entry.get("value").and_then(Value::as_str))
                    .any(|value| value.to_lowercase() == term);
            custom || email
        })
        .map(|record| json!({"result_score": 1.0, "item": search_item(entity, record)}))
        .collect();
    (
        200,
        json!({"success": true, "data": {"items": items}, "additional_data": {}}),
    )
}

/// `PATCH /api/v2/{persons|deals}/{id}`, `PUT /v1/notes/{id}`: v2 updates with PATCH, v1 with
/// PUT, each only its own (the router's business).
fn update_record(state: &mut State, entity: &'static str, id: &str, body: &[u8]) -> (u16, Value) {
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    let fields = match body_fields(body) {
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
    let lag = state.limits.search_lag;
    let records = state.records.entry(entity).or_default();
    match records.get_mut(&id) {
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
        None => not_found(),
    }
}

/// `GET /api/v2/{persons|deals}/{id}`, `GET /v1/notes/{id}`.
fn read_record(state: &mut State, entity: &'static str, id: &str) -> (u16, Value) {
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    match state.records.entry(entity).or_default().get(&id) {
        Some(record) => (200, json!({"success": true, "data": shown(record)})),
        None => not_found(),
    }
}

/// `DELETE /api/v2/{persons|deals}/{id}`, `DELETE /v1/notes/{id}`.
fn delete_record(state: &mut State, entity: &'static str, id: &str) -> (u16, Value) {
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    match state.records.entry(entity).or_default().remove(&id) {
        // v2 answers the id, v1 `true`.
        Some(_) if entity == "notes" => (200, json!({"success": true, "data": true})),
        Some(_) => (200, json!({"success": true, "data": {"id": id}})),
        None => not_found(),
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
        "organizations" => &[
            ("name", "varchar"),
            ("owner_id", "user"),
            ("address", "address"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Method;

    const TOKEN: &str = "sandbox-token";

    async fn call(sandbox: &Sandbox, method: Method, path: &str, body: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .request(method, format!("http://{}{path}", sandbox.server.addr))
            .header("x-api-token", TOKEN);
        if let Some(body) = body {
            // No content-type, on purpose: the sandbox reads a body as JSON whatever it is labelled.
            request = request.body(body.to_string());
        }
        request.send().await.expect("the sandbox answers")
    }

    #[tokio::test]
    async fn each_endpoint_family_is_served_priced_and_rate_headed() {
        let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, Limits::default())
            .await
            .unwrap();
        let created = call(
            &sandbox,
            Method::POST,
            "/api/v2/persons",
            Some(r#"{"name":"Ada Lovelace"}"#),
        )
        .await;
        assert_eq!(created.status(), 201);
        assert_eq!(created.headers()["x-ratelimit-limit"], "20");
        assert!(created
            .headers()
            .contains_key("x-daily-ratelimit-token-remaining"));
        let id = created.json::<Value>().await.unwrap()["data"]["id"]
            .as_u64()
            .unwrap();
        let read = call(&sandbox, Method::GET, &format!("/api/v2/persons/{id}"), None).await;
        assert_eq!(
            read.json::<Value>().await.unwrap()["data"]["name"],
            "Ada Lovelace"
        );
        let note = format!(r#"{{"content":"Met at the lab","person_id":{id}}}"#);
        assert_eq!(
            call(&sandbox, Method::POST, "/v1/notes", Some(&note))
                .await
                .status(),
            201
        );
        let notes = call(
            &sandbox,
            Method::GET,
            &format!("/v1/notes?person_id={id}&sort=id%20DESC"),
            None,
        )
        .await;
        assert_eq!(
            notes.json::<Value>().await.unwrap()["data"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let search = "/api/v2/persons/search?term=none&fields=custom_fields&exact_match=true";
        assert_eq!(call(&sandbox, Method::GET, search, None).await.status(), 200);
        assert_eq!(
            call(&sandbox, Method::GET, "/api/v2/dealFields", None)
                .await
                .status(),
            200
        );
        // v2 create 5, v2 get 1, v1 create 10, v1 list 20, search 20, field list 10.
        assert_eq!(sandbox.stats().tokens, 66);
    }

    #[tokio::test]
    async fn misses_and_wrong_methods_are_gated_json_404s_and_the_log_is_not_gated() {
        let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, Limits::default())
            .await
            .unwrap();
        let misses = [
            (Method::PATCH, "/v1/notes/1"),
            (Method::PUT, "/api/v2/persons/1"),
            (Method::GET, "/v1/persons"),
            (Method::GET, "/api/v2/notes"),
            (Method::GET, "/api/v2/persons/x"),
            (Method::POST, "/api/v2/persons/search"),
            (Method::GET, "/nowhere"),
        ];
        for (method, path) in &misses {
            let answer = call(&sandbox, method.clone(), path, None).await;
            assert_eq!(answer.status(), 404, "{method} {path}");
            assert!(answer.headers().get("allow").is_none(), "{method} {path}");
            assert!(
                answer.headers().contains_key("x-ratelimit-remaining"),
                "{method} {path}"
            );
            let body: Value = answer.json().await.unwrap();
            assert_eq!(
                body,
                json!({"success": false, "error": "Not found", "errorCode": 404})
            );
        }
        // HEAD is not GET here.
        assert_eq!(
            call(&sandbox, Method::HEAD, "/api/v2/persons", None)
                .await
                .status(),
            404
        );
        let root = format!("http://{}", sandbox.server.addr);
        let unauthorized = reqwest::get(format!("{root}/api/v2/persons")).await.unwrap();
        assert_eq!(unauthorized.status(), 401);
        assert!(!unauthorized.headers().contains_key("x-ratelimit-limit"));

        let log: Value = reqwest::get(format!("{root}/_sandbox/requests"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let calls = misses.len() + 2;
        assert_eq!(log.as_array().map(Vec::len), Some(calls));
        assert_eq!(
            log[0],
            json!({"method": "PATCH", "path": "/v1/notes/1", "query": "", "body": null})
        );
        assert_eq!(sandbox.stats().calls, calls as u64);
        assert_eq!(sandbox.stats().unauthorized, 1);
    }
}
