//! A local Salesforce for tests: sObject Collections (upsert by an external id field, update,
//! delete, retrieve; 200 records a call, `allOrNone`), per-record SaveResults in input order,
//! `Sforce-Limit-Info` on every response and `REQUEST_LIMIT_EXCEEDED` once the day's API
//! requests are spent, and OAuth: an expired access token is refused with `INVALID_SESSION_ID`
//! and a refresh token buys a new one.
//!
//! Not yet: Outbound Messages (SOAP notifications) on edits, injected 5xx and timeouts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};

type Reply = hyper::Response<Full<Bytes>>;

/// The API version the sandbox serves.
pub const API_PATH: &str = "/services/data/v60.0";

/// Counters for tests.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub calls: u64,
    pub refreshed: u64,
    pub refused_sessions: u64,
}

struct State {
    access_token: String,
    refresh_token: String,
    tokens_issued: u64,
    daily_limit: u64,
    used: u64,
    stats: Stats,
    /// SObject → id → record (fields by API name).
    records: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
    next_id: u64,
}

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    server: sandbox_server::Server,
    state: Arc<Mutex<State>>,
}

impl Sandbox {
    /// Starts with a valid `access_token`, a `refresh_token` that renews it, and `daily_limit`
    /// API requests for the day.
    pub async fn start(
        addr: &str,
        access_token: &str,
        refresh_token: &str,
        daily_limit: u64,
    ) -> anyhow::Result<Sandbox> {
        let state = Arc::new(Mutex::new(State {
            access_token: access_token.to_string(),
            refresh_token: refresh_token.to_string(),
            tokens_issued: 0,
            daily_limit,
            used: 0,
            stats: Stats::default(),
            records: BTreeMap::new(),
            next_id: 1,
        }));
        let shared = state.clone();
        let server = sandbox_server::start(addr, move |request| handle(shared.clone(), request)).await?;
        Ok(Sandbox { server, state })
    }

    /// The instance URL (`https://{domain}.my.salesforce.com` for a real org).
    pub fn instance_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/services/oauth2/token", self.server.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Ends the current access token's session, as Salesforce does after its timeout.
    pub fn expire_session(&self) {
        self.state.lock().unwrap().access_token = "expired".into();
    }

    /// The records of `sobject` as stored.
    pub fn records(&self, sobject: &str) -> Vec<Map<String, Value>> {
        let state = self.state.lock().unwrap();
        state
            .records
            .get(sobject)
            .map(|records| records.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn reply(status: u16, body: &Value, state: &State) -> Reply {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=UTF-8")
        .header(
            "Sforce-Limit-Info",
            format!("api-usage={}/{}", state.used, state.daily_limit),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Reply, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut state = state.lock().unwrap();
    state.stats.calls += 1;
    let path = parts.uri.path().to_string();
    if path == "/services/oauth2/token" {
        let fields = form(&body);
        if fields.get("grant_type").map(String::as_str) != Some("refresh_token")
            || fields.get("refresh_token") != Some(&state.refresh_token)
        {
            let body = json!({"error": "invalid_grant", "error_description": "expired access/refresh token"});
            return Ok(reply(400, &body, &state));
        }
        state.tokens_issued += 1;
        state.stats.refreshed += 1;
        state.access_token = format!("access-{}", state.tokens_issued);
        let body = json!({
            "access_token": state.access_token,
            "instance_url": format!("http://{}", parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default()),
            "token_type": "Bearer",
        });
        return Ok(reply(200, &body, &state));
    }
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if bearer != Some(state.access_token.as_str()) {
        state.stats.refused_sessions += 1;
        let body = json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]);
        return Ok(reply(401, &body, &state));
    }
    if state.used >= state.daily_limit {
        let body =
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]);
        return Ok(reply(403, &body, &state));
    }
    state.used += 1;
    let Some(rest) = path.strip_prefix(&format!("{API_PATH}/composite/sobjects")) else {
        let body = json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]);
        return Ok(reply(404, &body, &state));
    };
    let segments: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let query = form(parts.uri.query().unwrap_or_default().as_bytes());
    let (status, body) = match (parts.method.as_str(), segments.as_slice()) {
        ("PATCH", [sobject, external_id]) => collection(&mut state, &body, |state, record| {
            upsert(state, sobject, external_id, record)
        }),
        ("PATCH", []) => collection(&mut state, &body, update),
        ("POST", []) => collection(&mut state, &body, |state, record| {
            let sobject = record
                .get("attributes")
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            create(state, &sobject, record)
        }),
        ("DELETE", []) => {
            let ids = query.get("ids").cloned().unwrap_or_default();
            let results: Vec<Value> = ids
                .split(',')
                .map(|id| {
                    let found = state.records.values_mut().any(|records| records.remove(id).is_some());
                    if found {
                        json!({"id": id, "success": true, "errors": []})
                    } else {
                        json!({"success": false, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]})
                    }
                })
                .collect();
            (200, Value::Array(results))
        }
        ("GET", [sobject]) => {
            let ids = query.get("ids").cloned().unwrap_or_default();
            let records = state.records.get(sobject.as_str());
            let results: Vec<Value> = ids
                .split(',')
                .map(|id| {
                    records
                        .and_then(|records| records.get(id))
                        .map(|record| Value::Object(record.clone()))
                        .unwrap_or(Value::Null)
                })
                .collect();
            (200, Value::Array(results))
        }
        _ => (
            404,
            json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
        ),
    };
    Ok(reply(status, &body, &state))
}

/// Applies `each` to every record of a collection request, in order.
fn collection(
    state: &mut State,
    body: &[u8],
    each: impl Fn(&mut State, &Map<String, Value>) -> Value,
) -> (u16, Value) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (
            400,
            json!([{"message": "JSON parser error", "errorCode": "JSON_PARSER_ERROR"}]),
        );
    };
    let records = request
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if records.len() > 200 {
        return (
            400,
            json!([{"message": "Maximum number of records allowed is 200", "errorCode": "EXCEEDED_ID_LIMIT"}]),
        );
    }
    let results = records
        .iter()
        .map(|record| each(state, record.as_object().unwrap_or(&Map::new())))
        .collect();
    (200, Value::Array(results))
}

fn failure(code: &str, message: &str, field: &str) -> Value {
    json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": [field]}]})
}

/// Salesforce's own checks on the fields crm-sync writes.
fn invalid(record: &Map<String, Value>) -> Option<Value> {
    let email = record.get("Email").and_then(Value::as_str)?;
    (!email.contains('@')).then(|| failure("INVALID_EMAIL_ADDRESS", "Email: invalid email address", "Email"))
}

fn fields_of(record: &Map<String, Value>) -> Map<String, Value> {
    record
        .iter()
        .filter(|(name, _)| *name != "attributes" && *name != "id" && *name != "Id")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn create(state: &mut State, sobject: &str, record: &Map<String, Value>) -> Value {
    if let Some(problem) = invalid(record) {
        return problem;
    }
    let prefix = match sobject {
        "Contact" => "003",
        "Opportunity" => "006",
        _ => "a00",
    };
    let id = format!("{prefix}{:012}AAA", state.next_id);
    state.next_id += 1;
    let mut stored = fields_of(record);
    stored.insert("Id".into(), json!(id));
    stored.insert("attributes".into(), json!({"type": sobject}));
    state
        .records
        .entry(sobject.to_string())
        .or_default()
        .insert(id.clone(), stored);
    json!({"id": id, "success": true, "errors": [], "created": true})
}

fn upsert(state: &mut State, sobject: &str, external_id: &str, record: &Map<String, Value>) -> Value {
    let Some(key) = record.get(external_id).cloned() else {
        return failure(
            "MISSING_ARGUMENT",
            &format!("{external_id} not specified"),
            external_id,
        );
    };
    let existing = state.records.get(sobject).and_then(|records| {
        records
            .iter()
            .find(|(_, stored)| stored.get(external_id) == Some(&key))
            .map(|(id, _)| id.clone())
    });
    match existing {
        None => create(state, sobject, record),
        Some(id) => {
            if let Some(problem) = invalid(record) {
                return problem;
            }
            let stored = state
                .records
                .get_mut(sobject)
                .and_then(|records| records.get_mut(&id))
                .expect("found");
            stored.extend(fields_of(record));
            json!({"id": id, "success": true, "errors": [], "created": false})
        }
    }
}

fn update(state: &mut State, record: &Map<String, Value>) -> Value {
    let Some(id) = record
        .get("id")
        .or_else(|| record.get("Id"))
        .and_then(Value::as_str)
    else {
        return failure("MISSING_ARGUMENT", "Id not specified", "Id");
    };
    if let Some(problem) = invalid(record) {
        return problem;
    }
    match state.records.values_mut().find_map(|records| records.get_mut(id)) {
        Some(stored) => {
            stored.extend(fields_of(record));
            json!({"id": id, "success": true, "errors": []})
        }
        None => failure("ENTITY_IS_DELETED", "entity is deleted", "Id"),
    }
}
