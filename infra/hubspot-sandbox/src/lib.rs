//! A local HubSpot for crm-sync's tests, benchmarks and local stack. It speaks the subset of the
//! CRM v3 object API (and v4 batch associations) crm-sync uses, with HubSpot's paths, JSON shapes
//! and status codes (200/201/204/207/400/401/404/409/429), its rate-limit headers, a rolling
//! burst window and a daily budget; and a control API under `/_sandbox` to inject faults and to
//! look at what it holds.
//!
//! Every other path is a CRM call, whatever its method: it is counted and goes through the limits
//! and faults even where no endpoint serves it (then 404 `OBJECT_NOT_FOUND`). Slashes around a CRM
//! path and at the end of a control path are ignored.
//!
//! Control API:
//! - `POST /_sandbox/faults` with any of `error_rate`, `error_status`, `latency_ms`,
//!   `timeout_rate`, `timeout_ms`, `throttle_next` (the next N calls get 429), `burst_limit`,
//!   `burst_window_ms`, `daily_limit`, `daily_used`, `day_ms` (a short day, for tests), `seed`,
//!   `schemas_scope_missing` (property definitions answer 403, as for a token without the scope);
//!   `GET` shows them; `GET /_sandbox/health` answers while the sandbox runs;
//! - `GET /_sandbox/objects/{type}` lists live records; `GET /_sandbox/stats` counts calls;
//! - `POST` / `DELETE /_sandbox/properties/{type}/{name}` adds or removes a property, as an admin;
//! - `POST /_sandbox/webhooks` sets where and how events are delivered (`target_url`,
//!   `client_secret`, `batch_window_ms`, `max_events`, `max_retries`, `retry_base_ms`,
//!   `timeout_ms`, `duplicate_rate`, `reorder_ms`); `GET` shows the settings (without the secret) and counts;
//! - `POST /_sandbox/objects/{type}` creates and `POST /_sandbox/objects/{type}/{id}` edits a
//!   record as a sales rep would (JSON of properties): webhooks report it with `CRM_UI`, while
//!   writes through the CRM API are reported with `INTEGRATION`;
//! - `POST /_sandbox/reset` forgets records, faults and counts.
//!
//! Any other control path or method answers 404 `unknown control endpoint`.

mod associations;
mod store;
mod webhooks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{self, DefaultBodyLimit, Path, RawQuery, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub use store::{InputFailure, Record, Store, DEAL_STAGES};
pub use webhooks::{WebhookSettings, WebhookStats};

/// Static settings of a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The bearer token every CRM call must carry.
    pub token: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            token: "sandbox-token".to_string(),
        }
    }
}

/// Limits and injected faults; all of it can be changed while running.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of calls answered with `error_status` instead of being served (0..1).
    pub error_rate: f64,
    pub error_status: u16,
    /// Added to every call.
    pub latency_ms: u64,
    /// Share of calls that hang for `timeout_ms` and then fail.
    pub timeout_rate: f64,
    pub timeout_ms: u64,
    /// The next N calls are refused with 429 TEN_SECONDLY_ROLLING (a storm).
    pub throttle_next: u64,
    /// Calls allowed in any rolling `burst_window_ms` (HubSpot Pro: 190 per 10 s).
    pub burst_limit: u64,
    pub burst_window_ms: u64,
    /// Calls allowed per day, and how many are used already.
    pub daily_limit: u64,
    pub daily_used: u64,
    /// How long the sandbox's day lasts: `daily_used` goes back to 0 when it turns, and a DAILY
    /// 429 says when (`Retry-After`). 0, the default: the day never turns.
    pub day_ms: u64,
    /// Seeds the fault dice, for repeatable runs.
    pub seed: Option<u64>,
    /// The token lacks the `crm.schemas.*.read` scopes: property definitions answer 403.
    pub schemas_scope_missing: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            latency_ms: 0,
            timeout_rate: 0.0,
            timeout_ms: 30_000,
            throttle_next: 0,
            burst_limit: 190,
            burst_window_ms: 10_000,
            daily_limit: 625_000,
            daily_used: 0,
            day_ms: 0,
            seed: None,
            schemas_scope_missing: false,
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Calls to the CRM API, by `METHOD path-pattern`.
    pub calls: BTreeMap<String, u64>,
    pub total_calls: u64,
    pub throttled_burst: u64,
    pub throttled_daily: u64,
    pub injected_errors: u64,
    pub injected_timeouts: u64,
    pub unauthorized: u64,
    /// Inputs received by batch endpoints.
    pub batch_inputs: u64,
    /// When the first and the latest API call arrived, in ms since the sandbox started: the
    /// span over which a client's pace can be judged without its start-up.
    pub first_call_ms: Option<u64>,
    pub last_call_ms: Option<u64>,
}

struct State {
    config: SandboxConfig,
    store: Store,
    faults: Faults,
    stats: Stats,
    window: VecDeque<Instant>,
    day_started: Instant,
    started: Instant,
    dice: fastrand::Rng,
    webhooks: WebhookSettings,
    webhook_stats: WebhookStats,
    outbox: Vec<Value>,
    next_event_id: u64,
    notify: Arc<tokio::sync::Notify>,
}

impl State {
    fn set_faults(&mut self, faults: Faults) {
        // A new seed restarts the dice; the same one leaves them rolling.
        if let Some(seed) = faults.seed.filter(|seed| Some(*seed) != self.faults.seed) {
            self.dice = fastrand::Rng::with_seed(seed);
        }
        // A new day length or a new count for today starts the day now.
        if faults.day_ms != self.faults.day_ms || faults.daily_used != self.faults.daily_used {
            self.day_started = Instant::now();
        }
        self.faults = faults;
    }

    /// Turns the store's recent changes into webhook events from `source`.
    fn emit(&mut self, source: &str) {
        let changes = std::mem::take(&mut self.store.changes);
        if self.webhooks.target_url.is_none() || changes.is_empty() {
            return;
        }
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let events = webhooks::events_for(changes, &self.webhooks, source, &mut self.next_event_id, now_ms);
        self.webhook_stats.events += events.len() as u64;
        self.outbox.extend(events);
        self.notify.notify_one();
    }
}

/// Sends what collects in the outbox, a batch at a time, each delivery on its own task.
async fn emit_webhooks(state: Arc<Mutex<State>>, notify: Arc<tokio::sync::Notify>) {
    let http = reqwest::Client::new();
    loop {
        notify.notified().await;
        let window = state.lock().unwrap().webhooks.batch_window_ms;
        tokio::time::sleep(std::time::Duration::from_millis(window)).await;
        loop {
            let (batch, settings) = {
                let mut state = state.lock().unwrap();
                if state.outbox.is_empty() {
                    break;
                }
                let take = state.webhooks.max_events.clamp(1, state.outbox.len());
                let batch: Vec<Value> = state.outbox.drain(..take).collect();
                state.webhook_stats.deliveries += 1;
                state.webhook_stats.in_flight += 1;
                (batch, state.webhooks.clone())
            };
            let (state, http) = (state.clone(), http.clone());
            tokio::spawn(async move {
                let (failed, duplicated) = webhooks::deliver(&http, &settings, batch).await;
                let mut state = state.lock().unwrap();
                state.webhook_stats.failed_attempts += failed;
                state.webhook_stats.duplicates_sent += u64::from(duplicated);
                state.webhook_stats.in_flight -= 1;
            });
        }
    }
}

/// A running sandbox; dropping it stops the server.
pub struct Sandbox {
    server: sandbox_server::Server,
    state: Shared,
    emitter: JoinHandle<()>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.emitter.abort();
    }
}

impl Sandbox {
    /// Serves a sandbox on `addr` (`127.0.0.1:0` for any free port).
    pub async fn start(addr: &str, config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let notify = Arc::new(tokio::sync::Notify::new());
        let state = Arc::new(Mutex::new(State {
            config,
            store: Store::default(),
            faults: Faults::default(),
            stats: Stats::default(),
            window: VecDeque::new(),
            day_started: Instant::now(),
            started: Instant::now(),
            dice: fastrand::Rng::new(),
            webhooks: WebhookSettings::default(),
            webhook_stats: WebhookStats::default(),
            outbox: Vec::new(),
            next_event_id: 1_000,
            notify: notify.clone(),
        }));
        let server = sandbox_server::start(addr, router(state.clone())).await?;
        let emitter = tokio::spawn(emit_webhooks(state.clone(), notify));
        Ok(Sandbox {
            server,
            state,
            emitter,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn token(&self) -> String {
        self.state.lock().unwrap().config.token.clone()
    }

    /// Replaces the limits and faults.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.state.lock().unwrap().faults.clone()
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Live records of an object type.
    pub fn records(&self, object: &str) -> Vec<Record> {
        let state = self.state.lock().unwrap();
        state
            .store
            .records(object)
            .filter(|record| !record.archived)
            .cloned()
            .collect()
    }

    /// Every record of an object type, archived ones included.
    pub fn all_records(&self, object: &str) -> Vec<Record> {
        self.state
            .lock()
            .unwrap()
            .store
            .records(object)
            .cloned()
            .collect()
    }

    /// The live record whose unique `property` is `value`.
    pub fn find(&self, object: &str, property: &str, value: &str) -> Option<Record> {
        let state = self.state.lock().unwrap();
        let id = state.store.find_by(object, property, value)?;
        state.store.get(object, id).cloned()
    }

    /// What a record is associated with: (object type, id).
    pub fn associations(&self, object: &str, id: u64) -> Vec<(String, u64)> {
        self.state.lock().unwrap().store.associations_of(object, id)
    }

    /// Defines a custom object type from an `ObjectSchemaEgg`, as an admin does in HubSpot's
    /// settings; its `ObjectSchema` (with its `objectTypeId`), or why it is refused.
    pub fn define_object(&self, egg: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut state = self.state.lock().unwrap();
        let portal = state.webhooks.portal_id;
        state.store.define_object(egg, portal)
    }

    /// Defines an association label and its inverse, as an admin does in HubSpot's settings.
    pub fn define_label(&self, from: &str, to: &str, label: &str, inverse: &str) {
        self.state
            .lock()
            .unwrap()
            .store
            .define_label(from, to, label, inverse);
    }

    /// How many links there are from records of `from` to records of `to`.
    pub fn association_count(&self, from: &str, to: &str) -> usize {
        self.state.lock().unwrap().store.association_count(from, to)
    }

    /// How many links from `from` to `to` carry a label.
    pub fn labelled_count(&self, from: &str, to: &str) -> usize {
        self.state.lock().unwrap().store.labelled_count(from, to)
    }

    /// The labels a linked pair carries, in this direction, sorted.
    pub fn labels_of(&self, from: &str, from_id: u64, to: &str, to_id: u64) -> Vec<String> {
        let mut labels = self
            .state
            .lock()
            .unwrap()
            .store
            .labels_of(from, from_id, to, to_id);
        labels.sort();
        labels
    }

    /// Writes a record as a sales rep would in HubSpot's UI (webhooks say `CRM_UI`).
    pub fn edit(
        &self,
        object: &str,
        id: u64,
        properties: BTreeMap<String, String>,
    ) -> Result<Record, InputFailure> {
        let mut state = self.state.lock().unwrap();
        let result = state.store.update(object, id, properties);
        state.emit("CRM_UI");
        result
    }

    /// Adds a property to an object type, as a HubSpot admin would.
    pub fn add_property(&self, object: &str, name: &str) {
        self.state.lock().unwrap().store.add_property(object, name);
    }

    /// Removes a property from an object type.
    pub fn remove_property(&self, object: &str, name: &str) {
        self.state.lock().unwrap().store.remove_property(object, name);
    }

    /// Sets where and how webhooks are delivered.
    pub fn set_webhooks(&self, settings: WebhookSettings) {
        self.state.lock().unwrap().webhooks = settings;
    }

    pub fn webhooks(&self) -> WebhookSettings {
        self.state.lock().unwrap().webhooks.clone()
    }

    pub fn webhook_stats(&self) -> WebhookStats {
        self.state.lock().unwrap().webhook_stats.clone()
    }
    /// Webhook events not yet delivered: waiting in the outbox or in a delivery under way.
    pub fn pending_webhooks(&self) -> u64 {
        let state = self.state.lock().unwrap();
        state.outbox.len() as u64 + state.webhook_stats.in_flight
    }

    /// Creates a record as a sales rep would (webhooks say `CRM_UI`).
    pub fn create(&self, object: &str, properties: BTreeMap<String, String>) -> Result<Record, InputFailure> {
        let mut state = self.state.lock().unwrap();
        let result = state.store.create(object, properties);
        state.emit("CRM_UI");
        result
    }

    /// Merges `secondary` into `primary` as a sales rep would in HubSpot's UI; returns the
    /// surviving record (a new one, for contacts).
    pub fn merge(&self, object: &str, primary: u64, secondary: u64) -> Result<Record, InputFailure> {
        let mut state = self.state.lock().unwrap();
        let result = state.store.merge(object, primary, secondary);
        state.emit("CRM_UI");
        result
    }

    /// Links a deal to a contact, or removes the link, as a sales rep would; `false` when there
    /// was nothing to change.
    pub fn link_as_rep(&self, deal: u64, contact: u64, remove: bool) -> bool {
        let mut state = self.state.lock().unwrap();
        let changed = if remove {
            state.store.disassociate("deals", deal, "contacts", contact)
        } else {
            let before = state
                .store
                .associations_of("deals", deal)
                .contains(&("contacts".to_string(), contact));
            state.store.associate("deals", deal, "contacts", contact).is_ok() && !before
        };
        state.emit("CRM_UI");
        changed
    }

    /// Archives a record as a sales rep would (no webhook: the app subscribes to none for it).
    pub fn archive(&self, object: &str, id: u64) {
        self.state.lock().unwrap().store.archive(object, id);
    }

    /// Restores an archived record as a sales rep would; `false` when there is none to restore.
    pub fn restore(&self, object: &str, id: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        let restored = state.store.restore(object, id);
        state.emit("CRM_UI");
        restored
    }

    /// Deletes a contact for privacy (GDPR) as a sales rep would; `false` when there is none.
    pub fn privacy_delete(&self, object: &str, id: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        let deleted = state.store.privacy_delete(object, id);
        state.emit("CRM_UI");
        deleted
    }
}

/// The state every handler and the gate share.
type Shared = Arc<Mutex<State>>;

fn reply(status: u16, body: &Value, headers: &[(String, String)]) -> Response {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    if !bytes.is_empty() {
        builder = builder.header("content-type", "application/json;charset=utf-8");
    }
    builder.body(Body::from(bytes)).expect("a valid response")
}

/// `response` with `headers` put before its own, where [`reply`] puts them.
fn headed(mut response: Response, headers: &[(String, String)]) -> Response {
    let own = std::mem::take(response.headers_mut());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response.headers_mut().extend(own);
    response
}

fn hubspot_error(category: &str, message: &str) -> Value {
    json!({
        "status": "error",
        "message": message,
        "correlationId": uuid_like(),
        "category": category,
    })
}

fn uuid_like() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(..0x1000),
        fastrand::u64(..1 << 48)
    )
}

/// Every endpoint of the CRM API (behind the gate) and of the control API (under `/_sandbox`).
fn router(state: Shared) -> Router {
    // The legacy family (v3 objects and properties, v4 associations) and each dated release
    // (`/crm/objects/2026-03/…`) take the same bodies, so they share handlers.
    let mut families = vec![(
        "/crm/v3/objects".to_string(),
        "/crm/v4/associations".to_string(),
        "/crm/v3/properties".to_string(),
    )];
    families.extend(API_VERSIONS.iter().map(|version| {
        (
            format!("/crm/objects/{version}"),
            format!("/crm/associations/{version}"),
            format!("/crm/properties/{version}"),
        )
    }));
    let mut crm: Router<Shared> = Router::new();
    for (objects, associations, definitions) in families {
        // axum answers HEAD with the GET handler; the sandbox never served HEAD.
        crm = crm
            .route(
                &format!("{objects}/{{object}}/batch/{{action}}"),
                post(batch_call),
            )
            .route(
                &format!("{objects}/{{object}}/{{id}}"),
                get(get_one_call).head(not_served),
            )
            .route(&format!("{objects}/{{object}}/merge"), post(merge_call))
            .route(&format!("{objects}/contacts/gdpr-delete"), post(gdpr_delete_call))
            .route(
                &format!("{associations}/{{from}}/{{to}}/batch/associate/default"),
                post(associate_call),
            )
            .route(
                &format!("{associations}/{{from}}/{{to}}/batch/{{action}}"),
                post(labelled_call),
            )
            .route(
                &format!("{associations}/{{from}}/{{to}}/batch/labels/archive"),
                post(unlabel_call),
            )
            .route(
                &format!("{associations}/{{from}}/{{to}}/labels"),
                get(labels_call).post(define_label_call).head(not_served),
            )
            .route(
                &format!("{definitions}/{{object}}"),
                get(properties_call).head(not_served),
            );
    }
    // Custom object types (the schemas API has one path family).
    crm = crm
        .route(
            "/crm-object-schemas/v3/schemas",
            post(define_object_call).get(list_objects_call),
        )
        .route(
            "/crm-object-schemas/v3/schemas/{object}",
            get(object_schema_call).head(not_served),
        );
    // A CRM call no endpoint serves still counts against the limits, as at HubSpot; so the gate
    // wraps the fallbacks too, and the fallbacks are set before it.
    let crm = crm
        .fallback(not_served)
        .method_not_allowed_fallback(not_served)
        .layer(middleware::from_fn_with_state(state.clone(), gate_calls));

    let control: Router<Shared> = Router::new()
        .route("/health", get(health).head(unknown_control))
        .route("/faults", get(show_faults).head(unknown_control).post(set_faults))
        .route("/stats", get(show_stats).head(unknown_control))
        .route("/reset", post(reset))
        // `{*path}`: the type, then the name with any slashes in it, as before.
        .route(
            "/properties/{*path}",
            post(change_property).delete(change_property),
        )
        .route(
            "/webhooks",
            get(show_webhooks).head(unknown_control).post(set_webhooks),
        )
        .route(
            "/objects/{*path}",
            get(list_records).head(unknown_control).post(write_record),
        )
        .route("/merge/{object}", post(merge_as_rep))
        .route("/{action}/{object}/{id}", post(identity_as_rep))
        .fallback(unknown_control)
        .method_not_allowed_fallback(unknown_control);

    let routes = crm.nest("/_sandbox", control).with_state(state);
    // Rewriting the path has to happen before routing, which a layer on `routes` runs after; so
    // `routes` is served as the fallback of a router whose only work is this layer.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(prepare))
}

/// What the hand-written matcher before axum did to every request, kept for clients: the body is
/// read whole up front (a body that breaks off counts as empty; no size limit), the path is
/// normalized as that matcher read it, and no `Allow` header is added to a wrong method's answer.
async fn prepare(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    if let Some(uri) = routed_uri(&parts.uri) {
        parts.uri = uri;
    }
    let mut request = Request::from_parts(parts, Body::from(body));
    // The body is in memory already; axum's 2 MB default would refuse what was accepted before.
    DefaultBodyLimit::disable().apply(&mut request);
    let mut response = next.run(request).await;
    response.headers_mut().remove(http::header::ALLOW);
    response
}

fn routed_uri(uri: &http::Uri) -> Option<http::Uri> {
    let path = routed_path(uri.path());
    if path == uri.path() {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// The path the router matches for `path`, so that every path reaches the endpoint it reached
/// before axum: anything starting with `/_sandbox` went to the control API, with slashes at its
/// end ignored; a CRM path was read with the slashes around it ignored.
fn routed_path(path: &str) -> String {
    match path.strip_prefix("/_sandbox") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!("/_sandbox{}", rest.trim_end_matches('/'))
        }
        // `/_sandboxes`: a control path that names no endpoint.
        Some(_) => "/_sandbox".to_string(),
        None => {
            let trimmed = path.trim_matches('/');
            if trimmed.starts_with("_sandbox") {
                // `//_sandbox/…` was a CRM path no endpoint serves; trimmed, it would be a control one.
                path.to_string()
            } else {
                format!("/{trimmed}")
            }
        }
    }
}

/// Every CRM call: counted under its `METHOD pattern`, then refused (401, 429, an injected error
/// or timeout) or served, after the injected latency; either way with the rate-limit headers.
async fn gate_calls(extract::State(state): extract::State<Shared>, request: Request, next: Next) -> Response {
    let pattern = {
        let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
        endpoint_pattern(request.method().as_str(), &segments)
    };
    let decision = {
        let mut state = state.lock().unwrap();
        state.stats.total_calls += 1;
        let at = u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.stats.first_call_ms.get_or_insert(at);
        state.stats.last_call_ms = Some(at);
        *state.stats.calls.entry(pattern).or_default() += 1;
        gate(&mut state, request.headers())
    };
    let delay = match &decision {
        Gate::Serve { delay } | Gate::Refuse { delay, .. } => *delay,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // As the state stands when the call is answered, before the endpoint's own work.
    let headers = {
        let state = state.lock().unwrap();
        rate_headers(&state)
    };
    match decision {
        Gate::Refuse { status, body, .. } => reply(status, &body, &headers),
        Gate::Serve { .. } => headed(next.run(request).await, &headers),
    }
}

/// Serves one CRM call on the state, and reports its writes to webhooks as the integration's
/// under the same lock, so that a sales rep's edit in between is not taken for it.
fn served(state: &Shared, call: impl FnOnce(&mut State) -> (u16, Value)) -> Response {
    let mut state = state.lock().unwrap();
    let (status, body) = call(&mut state);
    state.emit("INTEGRATION");
    reply(status, &body, &[])
}

async fn batch_call(
    extract::State(state): extract::State<Shared>,
    Path((object, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    served(&state, |state| {
        let object = state.store.canonical(&object).to_string();
        batch(state, &object, &action, &body)
    })
}

/// `POST /crm/objects/{version}/{type}/merge` `{primaryObjectId, objectIdToMerge}`: the
/// surviving record.
async fn merge_call(
    extract::State(state): extract::State<Shared>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    served(&state, |state| match merge_ids(&body) {
        Ok((primary, secondary)) => match state.store.merge(&object, primary, secondary) {
            Ok(record) => (200, record.to_json(None)),
            Err(failure) => (failure.status, failure.to_json(None, None)),
        },
        Err(message) => (400, hubspot_error("VALIDATION_ERROR", &message)),
    })
}

/// The two ids of a merge request; HubSpot's model types them as strings.
fn merge_ids(body: &[u8]) -> Result<(u64, u64), String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "expected a JSON object".to_string())?;
    let id = |name: &str| {
        value
            .get(name)
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| format!("`{name}` is missing or not a record id"))
    };
    Ok((id("primaryObjectId")?, id("objectIdToMerge")?))
}

/// `POST /crm/objects/{version}/contacts/gdpr-delete` `{objectId}`: 204, the contact gone for good.
async fn gdpr_delete_call(extract::State(state): extract::State<Shared>, body: Bytes) -> Response {
    served(&state, |state| {
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("objectId").cloned())
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .and_then(|text| text.parse::<u64>().ok());
        match id {
            Some(id) if state.store.privacy_delete("contacts", id) => (204, Value::Null),
            Some(_) => (404, hubspot_error("OBJECT_NOT_FOUND", "Object not found")),
            None => (400, hubspot_error("VALIDATION_ERROR", "`objectId` is missing")),
        }
    })
}

/// `POST /_sandbox/merge/{type}` `{primaryObjectId, objectIdToMerge}`: a sales rep's merge.
async fn merge_as_rep(
    extract::State(state): extract::State<Shared>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let result = merge_ids(&body).map(|(primary, secondary)| state.store.merge(&object, primary, secondary));
    state.emit("CRM_UI");
    match result {
        Ok(Ok(record)) => reply(200, &record.to_json(None), &[]),
        Ok(Err(failure)) => reply(failure.status, &failure.to_json(None, None), &[]),
        Err(message) => reply(400, &json!({ "message": message }), &[]),
    }
}

/// `POST /_sandbox/restore/{type}/{id}`, `POST /_sandbox/privacy-delete/{type}/{id}`: a sales
/// rep restores an archived record, or deletes a contact for privacy.
async fn identity_as_rep(
    extract::State(state): extract::State<Shared>,
    Path((action, object, id)): Path<(String, String, u64)>,
) -> Response {
    let mut state = state.lock().unwrap();
    let done = match action.as_str() {
        "restore" => state.store.restore(&object, id),
        "privacy-delete" => state.store.privacy_delete(&object, id),
        _ => return reply(404, &json!({ "message": "no such control endpoint" }), &[]),
    };
    state.emit("CRM_UI");
    if done {
        reply(204, &Value::Null, &[])
    } else {
        reply(404, &json!({ "message": format!("no record to {action}") }), &[])
    }
}

async fn get_one_call(
    extract::State(state): extract::State<Shared>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    served(&state, |state| {
        let object = state.store.canonical(&object).to_string();
        get_one(state, &object, &id, query.as_deref().unwrap_or_default())
    })
}

async fn associate_call(
    extract::State(state): extract::State<Shared>,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    served(&state, |state| associate(state, &from, &to, &body))
}

/// `POST …/{from}/{to}/batch/create|read|archive` of the v4 associations API (labels).
async fn labelled_call(
    extract::State(state): extract::State<Shared>,
    Path((from, to, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    served(&state, |state| {
        let (from, to) = (
            state.store.canonical(&from).to_string(),
            state.store.canonical(&to).to_string(),
        );
        match action.as_str() {
            "create" => associations::create(state, &from, &to, &body),
            "read" => associations::read(state, &from, &to, &body),
            "archive" => associations::archive(state, &from, &to, &body),
            _ => (
                404,
                hubspot_error("OBJECT_NOT_FOUND", "The sandbox does not serve this endpoint"),
            ),
        }
    })
}

/// `POST /crm-object-schemas/v3/schemas`: a custom object type (201 `ObjectSchema`).
async fn define_object_call(extract::State(state): extract::State<Shared>, body: Bytes) -> Response {
    served(&state, |state| {
        let egg: Value = match serde_json::from_slice(&body) {
            Ok(egg) => egg,
            Err(error) => {
                return (
                    400,
                    hubspot_error("VALIDATION_ERROR", &format!("Invalid input JSON: {error}")),
                )
            }
        };
        let portal = state.webhooks.portal_id;
        match state.store.define_object(&egg, portal) {
            Ok(schema) => (201, schema),
            Err(reason) => (400, hubspot_error("VALIDATION_ERROR", &reason)),
        }
    })
}

/// `GET /crm-object-schemas/v3/schemas`: the custom object types.
async fn list_objects_call(extract::State(state): extract::State<Shared>) -> Response {
    served(&state, |state| {
        (200, json!({"results": state.store.object_schemas()}))
    })
}

/// `GET /crm-object-schemas/v3/schemas/{objectType}`: one custom object type, by any name.
async fn object_schema_call(
    extract::State(state): extract::State<Shared>,
    Path(object): Path<String>,
) -> Response {
    served(&state, |state| match state.store.object_schema(&object) {
        Some(schema) => (200, schema.clone()),
        None => (
            404,
            hubspot_error(
                "OBJECT_NOT_FOUND",
                &format!("Unable to infer object type from: {object}"),
            ),
        ),
    })
}

async fn unlabel_call(
    extract::State(state): extract::State<Shared>,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    served(&state, |state| {
        associations::remove_labels(state, &from, &to, &body)
    })
}

async fn labels_call(
    extract::State(state): extract::State<Shared>,
    Path((from, to)): Path<(String, String)>,
) -> Response {
    served(&state, |state| associations::labels(state, &from, &to))
}

async fn define_label_call(
    extract::State(state): extract::State<Shared>,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    served(&state, |state| associations::define(state, &from, &to, &body))
}

async fn properties_call(
    extract::State(state): extract::State<Shared>,
    Path(object): Path<String>,
) -> Response {
    served(&state, |state| {
        let object = state.store.canonical(&object).to_string();
        properties(state, &object)
    })
}

async fn not_served(extract::State(state): extract::State<Shared>) -> Response {
    served(&state, |_| {
        (
            404,
            hubspot_error("OBJECT_NOT_FOUND", "The sandbox does not serve this endpoint"),
        )
    })
}

async fn unknown_control() -> Response {
    reply(404, &json!({"message": "unknown control endpoint"}), &[])
}

async fn health() -> Response {
    reply(200, &json!({"status": "ok"}), &[])
}

async fn show_faults(extract::State(state): extract::State<Shared>) -> Response {
    let state = state.lock().unwrap();
    reply(200, &serde_json::to_value(&state.faults).unwrap(), &[])
}

async fn set_faults(extract::State(state): extract::State<Shared>, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    match merged(&state.faults, &body) {
        Ok(faults) => {
            state.set_faults(faults);
            reply(200, &serde_json::to_value(&state.faults).unwrap(), &[])
        }
        Err(error) => reply(400, &json!({"message": error}), &[]),
    }
}

async fn show_stats(extract::State(state): extract::State<Shared>) -> Response {
    let state = state.lock().unwrap();
    reply(200, &serde_json::to_value(&state.stats).unwrap(), &[])
}

async fn reset(extract::State(state): extract::State<Shared>) -> Response {
    let mut state = state.lock().unwrap();
    state.store = Store::default();
    state.faults = Faults::default();
    state.stats = Stats::default();
    state.window.clear();
    state.outbox.clear();
    state.webhook_stats = WebhookStats::default();
    reply(204, &Value::Null, &[])
}

/// `POST` / `DELETE /_sandbox/properties/{type}/{name}`.
async fn change_property(
    extract::State(state): extract::State<Shared>,
    method: http::Method,
    Path(path): Path<String>,
) -> Response {
    let mut state = state.lock().unwrap();
    let Some((object, name)) = path.split_once('/') else {
        return reply(
            400,
            &json!({"message": "use /_sandbox/properties/{object}/{name}"}),
            &[],
        );
    };
    let known = if method == http::Method::POST {
        state.store.add_property(object, name)
    } else {
        state.store.remove_property(object, name)
    };
    if known {
        reply(204, &Value::Null, &[])
    } else {
        reply(404, &json!({"message": format!("no object type {object}")}), &[])
    }
}

async fn show_webhooks(extract::State(state): extract::State<Shared>) -> Response {
    let state = state.lock().unwrap();
    let mut settings = serde_json::to_value(&state.webhooks).unwrap();
    settings["client_secret"] = json!(if state.webhooks.client_secret.is_empty() {
        ""
    } else {
        "(set)"
    });
    reply(
        200,
        &json!({"settings": settings, "stats": serde_json::to_value(&state.webhook_stats).unwrap()}),
        &[],
    )
}

async fn set_webhooks(extract::State(state): extract::State<Shared>, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    match merged(&state.webhooks, &body) {
        Ok(settings) => {
            state.webhooks = settings;
            reply(204, &Value::Null, &[])
        }
        Err(error) => reply(400, &json!({"message": error}), &[]),
    }
}

/// `GET /_sandbox/objects/{type}`: everything after `objects/` is the type.
async fn list_records(extract::State(state): extract::State<Shared>, Path(object): Path<String>) -> Response {
    let state = state.lock().unwrap();
    let results: Vec<Value> = state
        .store
        .records(&object)
        .filter(|record| !record.archived)
        .map(|record| record.to_json(None))
        .collect();
    reply(200, &json!({ "results": results }), &[])
}

/// `POST /_sandbox/objects/{type}[/{id}]`: a sales rep's create or edit.
async fn write_record(
    extract::State(state): extract::State<Shared>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let properties = match serde_json::from_slice::<Value>(&body)
        .ok()
        .as_ref()
        .map(|v| string_map(Some(v)))
    {
        Some(Ok(properties)) => properties,
        _ => {
            return reply(
                400,
                &json!({"message": "expected a JSON object of properties"}),
                &[],
            )
        }
    };
    let path: Vec<&str> = path.split('/').collect();
    let result = match path.as_slice() {
        [object] => state.store.create(object, properties),
        [object, id] => match id.parse() {
            Ok(id) => state.store.update(object, id, properties),
            Err(_) => return reply(400, &json!({"message": "the id must be a number"}), &[]),
        },
        _ => {
            return reply(
                404,
                &json!({"message": "use /_sandbox/objects/{type}[/{id}]"}),
                &[],
            )
        }
    };
    state.emit("CRM_UI");
    match result {
        Ok(record) => reply(200, &record.to_json(None), &[]),
        Err(failure) => reply(failure.status, &failure.to_json(None, None), &[]),
    }
}

/// `current` with the fields a control request names changed; the rest stay as they are.
fn merged<T: Serialize + serde::de::DeserializeOwned>(current: &T, body: &[u8]) -> Result<T, String> {
    let mut value = serde_json::to_value(current).map_err(|e| e.to_string())?;
    let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(body) else {
        return Err("expected a JSON object of settings".to_string());
    };
    for (name, change) in changes {
        value[name] = change;
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// What the limits and faults decide for one call, before it is served.
enum Gate {
    Serve {
        delay: Duration,
    },
    Refuse {
        delay: Duration,
        status: u16,
        body: Value,
    },
}

fn rate_headers(state: &State) -> Vec<(String, String)> {
    let faults = &state.faults;
    let used = state.window.len() as u64;
    let mut headers = Vec::new();
    if faults.day_ms > 0 && faults.daily_used >= faults.daily_limit {
        let left = Duration::from_millis(faults.day_ms).saturating_sub(state.day_started.elapsed());
        headers.push(("Retry-After".into(), left.as_secs().max(1).to_string()));
    }
    headers.extend([
        ("X-HubSpot-RateLimit-Max".into(), faults.burst_limit.to_string()),
        (
            "X-HubSpot-RateLimit-Remaining".into(),
            faults.burst_limit.saturating_sub(used).to_string(),
        ),
        (
            "X-HubSpot-RateLimit-Interval-Milliseconds".into(),
            faults.burst_window_ms.to_string(),
        ),
        ("X-HubSpot-RateLimit-Daily".into(), faults.daily_limit.to_string()),
        (
            "X-HubSpot-RateLimit-Daily-Remaining".into(),
            faults.daily_limit.saturating_sub(faults.daily_used).to_string(),
        ),
    ]);
    headers
}

fn gate(state: &mut State, headers: &http::HeaderMap) -> Gate {
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bearer {}", state.config.token));
    if !authorized {
        state.stats.unauthorized += 1;
        return Gate::Refuse {
            delay: Duration::ZERO,
            status: 401,
            body: hubspot_error(
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
            ),
        };
    }
    let now = Instant::now();
    let window = Duration::from_millis(state.faults.burst_window_ms);
    while state
        .window
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        state.window.pop_front();
    }
    let delay = Duration::from_millis(state.faults.latency_ms);
    let throttle = |policy: &str, message: &str| {
        json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": uuid_like(),
            "policyName": policy,
            "requestId": uuid_like(),
        })
    };
    if state.faults.day_ms > 0
        && now.duration_since(state.day_started).as_millis() >= u128::from(state.faults.day_ms)
    {
        state.faults.daily_used = 0;
        state.day_started = now;
    }
    if state.faults.daily_used >= state.faults.daily_limit {
        state.stats.throttled_daily += 1;
        return Gate::Refuse {
            delay,
            status: 429,
            body: throttle("DAILY", "You have reached your daily limit."),
        };
    }
    if state.faults.throttle_next > 0 || state.window.len() as u64 >= state.faults.burst_limit {
        state.faults.throttle_next = state.faults.throttle_next.saturating_sub(1);
        state.stats.throttled_burst += 1;
        return Gate::Refuse {
            delay,
            status: 429,
            body: throttle(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
            ),
        };
    }
    state.window.push_back(now);
    state.faults.daily_used += 1;
    let roll = state.dice.f64();
    if roll < state.faults.timeout_rate {
        state.stats.injected_timeouts += 1;
        return Gate::Refuse {
            delay: delay + Duration::from_millis(state.faults.timeout_ms),
            status: 504,
            body: hubspot_error("GATEWAY_TIMEOUT", "The request timed out."),
        };
    }
    if roll < state.faults.timeout_rate + state.faults.error_rate {
        state.stats.injected_errors += 1;
        return Gate::Refuse {
            delay,
            status: state.faults.error_status,
            body: hubspot_error("INTERNAL_ERROR", "An internal error occurred."),
        };
    }
    Gate::Serve { delay }
}

fn endpoint_pattern(method: &str, segments: &[&str]) -> String {
    let path: Vec<&str> = segments
        .iter()
        .map(|segment| {
            if segment.chars().all(|c| c.is_ascii_digit()) {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} /{}", path.join("/"))
}

#[derive(Deserialize)]
struct BatchBody {
    inputs: Vec<Value>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(rename = "idProperty")]
    id_property: Option<String>,
}

fn string_map(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let object = value.as_object().ok_or("properties must be an object")?;
    object
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Null => String::new(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => return Err(format!("property {name} must be a scalar")),
            };
            Ok((name.clone(), text))
        })
        .collect()
}

/// The date-versioned API releases the sandbox serves, besides the legacy v3/v4 paths.
pub const API_VERSIONS: [&str; 2] = ["2026-03", "2026-09"];

/// `GET /crm/properties/{version}/{object}`: each property's name, type and field type.
fn properties(state: &State, object: &str) -> (u16, Value) {
    if state.faults.schemas_scope_missing {
        let mut body = hubspot_error(
            "MISSING_SCOPES",
            "This app hasn't been granted all required scopes to make this call.",
        );
        body["errors"] = json!([{
            "message": "One or more of the following scopes are required.",
            "context": {"requiredGranularScopes": [format!("crm.schemas.{object}.read")]},
        }]);
        return (403, body);
    }
    let Some((names, unique)) = state.store.schema(object) else {
        return (
            404,
            hubspot_error(
                "OBJECT_NOT_FOUND",
                &format!("Unable to infer object type from: {object}"),
            ),
        );
    };
    let results: Vec<Value> = names
        .iter()
        .map(|name| {
            let kind = state.store.property_type_of(object, name);
            let kind = kind.as_str();
            let field_type = match kind {
                "number" => "number",
                "datetime" | "date" => "date",
                "enumeration" => "select",
                "phone_number" => "phonenumber",
                _ => "text",
            };
            json!({
                "name": name,
                "label": name,
                "type": kind,
                "fieldType": field_type,
                "groupName": format!("{}information", object.trim_end_matches('s')),
                "description": "",
                "options": [],
                "hasUniqueValue": unique.contains(name),
                "hidden": false,
                "formField": true,
                "calculated": false,
                "externalOptions": false,
                "displayOrder": -1,
                "createdAt": "2026-01-01T00:00:00.000Z",
                "updatedAt": "2026-01-01T00:00:00.000Z",
                "archived": false,
                "modificationMetadata": {"archivable": true, "readOnlyDefinition": false, "readOnlyValue": false},
            })
        })
        .collect();
    (200, json!({ "results": results }))
}

fn get_one(state: &State, object: &str, id: &str, query: &str) -> (u16, Value) {
    let params: HashMap<&str, &str> = query.split('&').filter_map(|pair| pair.split_once('=')).collect();
    let found = match params.get("idProperty") {
        Some(property) => state.store.find_by(object, property, id),
        None => id.parse().ok().map(|id| state.store.resolve(object, id)),
    };
    match found.and_then(|id| state.store.get(object, id)) {
        Some(record) => {
            let only: Option<Vec<String>> = params
                .get("properties")
                .map(|p| p.split(',').map(str::to_string).collect());
            (200, record.to_json(only.as_deref()))
        }
        None => (404, hubspot_error("OBJECT_NOT_FOUND", "Object not found")),
    }
}

fn batch_reply(results: Vec<Value>, errors: Vec<Value>, created_status: u16) -> (u16, Value) {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": store_now(),
        "completedAt": store_now(),
    });
    if errors.is_empty() {
        (created_status, body)
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        (207, body)
    }
}

fn store_now() -> String {
    store::now_rfc3339()
}

fn batch(state: &mut State, object: &str, action: &str, body: &[u8]) -> (u16, Value) {
    let Some((_, unique)) = state.store.schema(object).map(|(p, u)| (p.to_vec(), u.to_vec())) else {
        return (
            404,
            hubspot_error(
                "OBJECT_NOT_FOUND",
                &format!("Unable to infer object type from: {object}"),
            ),
        );
    };
    let request: BatchBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return (
                400,
                hubspot_error("VALIDATION_ERROR", &format!("Invalid input JSON: {error}")),
            )
        }
    };
    if request.inputs.len() > 100 {
        return (
            400,
            hubspot_error(
                "VALIDATION_ERROR",
                "Batch input limit exceeded: at most 100 inputs per call",
            ),
        );
    }
    state.stats.batch_inputs += request.inputs.len() as u64;
    // Multi-status needs an `objectWriteTraceId` on every input; without one, the first failing
    // input fails the whole call with its own status (400 for an invalid value).
    let traced = request
        .inputs
        .iter()
        .all(|input| input.get("objectWriteTraceId").and_then(Value::as_str).is_some());
    let mut results = Vec::new();
    let mut errors = Vec::new();
    match action {
        "upsert" => {
            // A unique value another record holds (an email) refuses the whole call with 409,
            // before any input is applied; so does a value two inputs of the batch share.
            let mut claimed: HashMap<(String, String), String> = HashMap::new();
            for input in &request.inputs {
                let id_property = input
                    .get("idProperty")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let key = input.get("id").and_then(Value::as_str).unwrap_or_default();
                let Ok(properties) = string_map(input.get("properties")) else {
                    continue;
                };
                if let Some(conflict) = state.store.upsert_conflict(object, id_property, key, &properties) {
                    return (409, conflict.to_whole_call_json());
                }
                for property in &unique {
                    let value = if property == id_property {
                        Some(key.to_string())
                    } else {
                        properties.get(property).filter(|v| !v.is_empty()).cloned()
                    };
                    if let Some(value) = value {
                        if let Some(other) =
                            claimed.insert((property.clone(), value.clone()), key.to_string())
                        {
                            if other != key || property == id_property {
                                return (
                                    400,
                                    hubspot_error(
                                        "VALIDATION_ERROR",
                                        &format!("Duplicate IDs found in batch input: [{value}]. IDs must be unique"),
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            for input in &request.inputs {
                let trace = input.get("objectWriteTraceId").and_then(Value::as_str);
                let id_property = input
                    .get("idProperty")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !unique.iter().any(|u| u == id_property) {
                    return (
                        400,
                        hubspot_error(
                            "VALIDATION_ERROR",
                            &format!("idProperty {id_property} is not a unique property of {object}"),
                        ),
                    );
                }
                let key = input.get("id").and_then(Value::as_str).unwrap_or_default();
                let properties = match string_map(input.get("properties")) {
                    Ok(properties) => properties,
                    Err(message) => return (400, hubspot_error("VALIDATION_ERROR", &message)),
                };
                match state.store.upsert(object, id_property, key, properties) {
                    Ok((record, new)) => {
                        let mut json = record.to_json(None);
                        json["new"] = json!(new);
                        if let Some(trace) = trace {
                            json["objectWriteTraceId"] = json!(trace);
                        }
                        results.push(json);
                    }
                    Err(failure) if !traced => return (failure.status, failure.to_whole_call_json()),
                    Err(failure) => errors.push(failure.to_json(trace, None)),
                }
            }
            batch_reply(results, errors, 200)
        }
        "create" | "update" => {
            for input in &request.inputs {
                let trace = input.get("objectWriteTraceId").and_then(Value::as_str);
                let properties = match string_map(input.get("properties")) {
                    Ok(properties) => properties,
                    Err(message) => return (400, hubspot_error("VALIDATION_ERROR", &message)),
                };
                let outcome = if action == "create" {
                    state.store.create(object, properties)
                } else {
                    let id = input
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|id| id.parse().ok())
                        .unwrap_or(0);
                    state.store.update(object, id, properties)
                };
                match outcome {
                    Ok(record) => {
                        let mut json = record.to_json(None);
                        if let Some(trace) = trace {
                            json["objectWriteTraceId"] = json!(trace);
                        }
                        results.push(json);
                    }
                    Err(failure) if !traced => return (failure.status, failure.to_whole_call_json()),
                    Err(failure) => errors.push(failure.to_json(trace, None)),
                }
            }
            batch_reply(results, errors, if action == "create" { 201 } else { 200 })
        }
        "archive" => {
            for input in &request.inputs {
                if let Some(id) = input
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| id.parse().ok())
                {
                    state.store.archive(object, id);
                }
            }
            (204, Value::Null)
        }
        "read" => {
            for input in &request.inputs {
                let id = input.get("id").and_then(Value::as_str).unwrap_or_default();
                let found = match &request.id_property {
                    Some(property) => state.store.find_by(object, property, id),
                    // A merged-away id reads as the record that survived it.
                    None => id.parse().ok().map(|id| state.store.resolve(object, id)),
                };
                match found.and_then(|found| state.store.get(object, found)) {
                    Some(record) => {
                        let only = (!request.properties.is_empty()).then_some(request.properties.as_slice());
                        results.push(record.to_json(only));
                    }
                    None => errors.push(json!({
                        "status": "error",
                        "category": "OBJECT_NOT_FOUND",
                        "message": "Could not get some objects, they may be deleted or not exist.",
                        "context": { "ids": [id] },
                        "errors": [],
                        "links": {},
                    })),
                }
            }
            // None of the ids found: the whole call is a 404, as integrators report of HubSpot.
            if results.is_empty() && !errors.is_empty() {
                let ids: Vec<Value> = errors
                    .iter()
                    .filter_map(|e| e.pointer("/context/ids/0").cloned())
                    .collect();
                return (
                    404,
                    json!({
                        "status": "error",
                        "category": "OBJECT_NOT_FOUND",
                        "message": "Could not get some objects, they may be deleted or not exist.",
                        "context": { "ids": ids },
                        "correlationId": "00000000-0000-0000-0000-000000000000",
                    }),
                );
            }
            batch_reply(results, errors, 200)
        }
        other => (
            404,
            hubspot_error("OBJECT_NOT_FOUND", &format!("No batch action {other}")),
        ),
    }
}

fn associate(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let request: BatchBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return (
                400,
                hubspot_error("VALIDATION_ERROR", &format!("Invalid input JSON: {error}")),
            )
        }
    };
    state.stats.batch_inputs += request.inputs.len() as u64;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &request.inputs {
        let id = |side: &str| -> u64 {
            input
                .pointer(&format!("/{side}/id"))
                .and_then(Value::as_str)
                .and_then(|id| id.parse().ok())
                .unwrap_or(0)
        };
        let (from_id, to_id) = (id("from"), id("to"));
        match state.store.associate(from, from_id, to, to_id) {
            Ok(()) => results.push(json!({
                "from": { "id": from_id.to_string() },
                "to": { "id": to_id.to_string() },
                "associationSpec": {
                    "associationCategory": "HUBSPOT_DEFINED",
                    "associationTypeId": store::default_association_type(from, to),
                },
            })),
            Err(failure) => errors.push(json!({
                "status": "error",
                "category": failure.category,
                "message": failure.message,
                "context": { "ids": [from_id.to_string(), to_id.to_string()] },
                "errors": [],
                "links": {},
            })),
        }
    }
    // The SDK maps only a 200 here (`BatchResponsePublicDefaultAssociation`, which carries
    // `numErrors` and `errors`): failed pairs are reported in it, not by a 207.
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": store_now(),
        "completedAt": store_now(),
    });
    if !errors.is_empty() {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
    }
    (200, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed_as_the_hand_written_matcher_read_them() {
        assert_eq!(
            routed_path("/crm/v3/objects/contacts/batch/read/"),
            "/crm/v3/objects/contacts/batch/read"
        );
        assert_eq!(
            routed_path("//crm/v3/properties/contacts"),
            "/crm/v3/properties/contacts"
        );
        assert_eq!(routed_path("/_sandbox/faults//"), "/_sandbox/faults");
        assert_eq!(routed_path("/_sandbox/"), "/_sandbox");
        assert_eq!(routed_path("/_sandboxes"), "/_sandbox");
        assert_eq!(routed_path("//_sandbox/faults"), "//_sandbox/faults");
        assert_eq!(routed_path("/"), "/");
    }

    #[tokio::test]
    async fn calls_outside_the_endpoints_get_the_answers_they_got_before_axum() {
        let sandbox = Sandbox::start("127.0.0.1:0", SandboxConfig::default())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let (url, token) = (sandbox.url(), sandbox.token());
        let call = |method: reqwest::Method, path: &str| {
            http.request(method, format!("{url}{path}")).bearer_auth(&token)
        };

        // A wrong method on an endpoint is a CRM call no endpoint serves: gated, counted, 404.
        let wrong = call(reqwest::Method::GET, "/crm/v3/objects/contacts/batch/read")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 404);
        assert!(wrong.headers().get("allow").is_none());
        assert_eq!(wrong.headers()["x-hubspot-ratelimit-max"], "190");
        assert_eq!(wrong.headers()["content-type"], "application/json;charset=utf-8");
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["message"], "The sandbox does not serve this endpoint");

        let head = call(reqwest::Method::HEAD, "/crm/v3/properties/contacts")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404, "HEAD was never served");

        // A trailing slash, and a body without a content type.
        let read = call(reqwest::Method::POST, "/crm/objects/2026-03/contacts/batch/read/")
            .body(r#"{"inputs": []}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);

        let anonymous = http.get(format!("{url}/nowhere/42")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "the token is checked before the path");

        let stats = sandbox.stats();
        assert_eq!(stats.calls["GET /crm/v3/objects/contacts/batch/read"], 1);
        assert_eq!(stats.calls["HEAD /crm/v3/properties/contacts"], 1);
        assert_eq!(stats.calls["POST /crm/objects/2026-03/contacts/batch/read"], 1);
        assert_eq!(stats.calls["GET /nowhere/{id}"], 1);
        assert_eq!(stats.unauthorized, 1);

        let faults = http.get(format!("{url}/_sandbox/faults/")).send().await.unwrap();
        assert_eq!(faults.status(), 200);
        for (method, path) in [
            (reqwest::Method::PUT, "/_sandbox/faults"),
            (reqwest::Method::GET, "/_sandbox/reset"),
            (reqwest::Method::GET, "/_sandbox"),
            (reqwest::Method::GET, "/_sandboxes"),
        ] {
            let unknown = http.request(method, format!("{url}{path}")).send().await.unwrap();
            assert_eq!(unknown.status(), 404, "{path}");
            assert!(unknown.headers().get("allow").is_none(), "{path}");
            let body: Value = unknown.json().await.unwrap();
            assert_eq!(body["message"], "unknown control endpoint", "{path}");
        }
        let nameless = http
            .post(format!("{url}/_sandbox/properties/contacts/"))
            .send()
            .await
            .unwrap();
        assert_eq!(nameless.status(), 400);
        assert_eq!(sandbox.stats().total_calls, 4, "control calls are no CRM calls");
    }
}
