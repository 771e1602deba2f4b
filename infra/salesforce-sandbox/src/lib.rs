//! A local Salesforce for tests: sObject Collections (upsert by an external id field, update,
//! delete, retrieve; 200 records a call, `allOrNone`), per-record SaveResults in input order,
//! `Sforce-Limit-Info` on every response and `REQUEST_LIMIT_EXCEEDED` once the day's API
//! requests are spent, and OAuth: an expired access token is refused with `INVALID_SESSION_ID`
//! and a refresh token buys a new one. Outbound Messages: once configured, every write (by the
//! API as the integration user, or by [`Sandbox::edit`] as a person) posts a SOAP
//! `notifications` message with the record's selected fields, resent until it is acknowledged.
//!
//! It knows each sObject's fields and their types, as `describe` lists them
//! (`GET /sobjects/{type}/describe`): a write or a read naming a field the sObject does not have
//! is refused with `INVALID_FIELD`, a malformed id with `MALFORMED_ID`. Retrieval takes the
//! documented `POST /composite/sobjects/{type}` (`{ids, fields}`) and the `GET` form, and
//! answers only the fields asked for, each record with `attributes: {type, url}` and datetimes
//! as the REST API writes them (`2026-11-27T10:15:00.000+0000`). Deleted records stay in a
//! recycle bin, which `queryAll` reads (a small SOQL subset, in `soql.rs`, answered in batches
//! with `nextRecordsUrl`); [`Sandbox::merge`] merges as a person, leaving each loser deleted
//! with its `MasterRecordId`. Any other path, or a method a collections path does not take, is
//! answered `NOT_FOUND`.
//!
//! `set_faults` injects 500s (not applied) and late answers (applied, answered after the
//! client gave up).
//!
//! The HTTP side (an axum router: the paths, the checks every API call passes first) is in
//! `routes.rs`; this file holds the org's state and what each call does to it.

use std::collections::BTreeMap;

pub use sandbox_server::Faults;
use sandbox_server::{Fault, FaultDice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use serde_json::{json, Map, Value};

mod routes;
mod soql;

/// The API version the sandbox serves.
pub const API_PATH: &str = "/services/data/v60.0";

/// The user API calls run as: the integration user crm-sync authenticates as.
pub const INTEGRATION_USER_ID: &str = "005000000000001AAA";

/// The user [`Sandbox::edit`] acts as: a person in Salesforce.
pub const PERSON_USER_ID: &str = "005000000000002AAA";

/// The org's id, as its Outbound Messages carry it.
pub const ORGANIZATION_ID: &str = "00D000000000062EAA";

/// Counters for tests.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub calls: u64,
    pub refreshed: u64,
    pub refused_sessions: u64,
    /// Outbound Messages answered with `Ack` = `true`.
    pub messages_acknowledged: u64,
    /// Posts of Outbound Messages that were not acknowledged (each is resent).
    pub messages_refused: u64,
    /// Calls refused with `REQUEST_LIMIT_EXCEEDED`: the day's budget was spent.
    pub limit_refusals: u64,
    /// Calls answered 500 by injection, and calls applied but answered late.
    pub injected_errors: u64,
    pub injected_timeouts: u64,
}

/// Where Outbound Messages go, and which fields of each SObject they carry (Salesforce adds
/// `Id`; the sandbox also always selects `LastModifiedById` and `LastModifiedDate`).
#[derive(Debug, Clone)]
pub struct OutboundMessages {
    pub url: String,
    pub fields: BTreeMap<String, Vec<String>>,
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
    outbound: Option<OutboundMessages>,
    next_notification: u64,
    pending_messages: Arc<AtomicU64>,
    /// Records written by the request being handled, to notify of once it is done.
    touched: Vec<(String, String)>,
    dice: FaultDice,
    /// The connected app's client id and secret, once set: a refresh naming another is refused.
    client: Option<(String, String)>,
    /// Deleted records (by the API, a person or a merge), as the recycle bin keeps them:
    /// `IsDeleted` true, and a merge's losers with `MasterRecordId`. Only `queryAll` sees them.
    recycle_bin: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
    /// Query results not yet read, and the batch size asked for, by query locator.
    cursors: BTreeMap<String, (Vec<Value>, usize)>,
    next_locator: u64,
    /// The most records a query answer holds before `nextRecordsUrl` (Salesforce: up to 2,000).
    query_batch: usize,
}

/// The org, as the handlers and [`Sandbox`] share it.
type Shared = Arc<Mutex<State>>;

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    server: sandbox_server::Server,
    state: Shared,
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
            client: None,
            tokens_issued: 0,
            daily_limit,
            used: 0,
            stats: Stats::default(),
            records: BTreeMap::new(),
            next_id: 1,
            outbound: None,
            next_notification: 1,
            pending_messages: Arc::default(),
            touched: Vec::new(),
            dice: FaultDice::default(),
            recycle_bin: BTreeMap::new(),
            cursors: BTreeMap::new(),
            next_locator: 1,
            query_batch: 2000,
        }));
        let server = sandbox_server::start(addr, routes::router(state.clone())).await?;
        Ok(Sandbox { server, state })
    }

    /// The instance URL (`https://{domain}.my.salesforce.com` for a real org).
    pub fn instance_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Refuses token refreshes that do not name this connected app (`invalid_client_id`) and its
    /// secret (`invalid_client`); until set, any non-empty pair is taken.
    pub fn require_client(&self, client_id: &str, client_secret: &str) {
        self.state.lock().unwrap().client = Some((client_id.to_string(), client_secret.to_string()));
    }

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/services/oauth2/token", self.server.addr)
    }

    pub fn stats(&self) -> Stats {
        let state = self.state.lock().unwrap();
        Stats {
            injected_errors: state.dice.errors,
            injected_timeouts: state.dice.timeouts,
            ..state.stats.clone()
        }
    }

    /// Ends the current access token's session, as Salesforce does after its timeout.
    pub fn expire_session(&self) {
        self.state.lock().unwrap().access_token = "expired".into();
    }

    /// Injects failures into API calls from now on (not into the token endpoint), with seeded dice.
    pub fn set_faults(&self, faults: Faults, seed: u64) {
        self.state.lock().unwrap().dice = FaultDice::new(faults, seed);
    }

    /// Posts an Outbound Message for every write from now on.
    pub fn set_outbound_messages(&self, outbound: OutboundMessages) {
        self.state.lock().unwrap().outbound = Some(outbound);
    }

    /// Outbound Messages not yet acknowledged (or given up on).
    pub fn pending_messages(&self) -> u64 {
        self.state.lock().unwrap().pending_messages.load(Ordering::SeqCst)
    }

    /// Edits a record as a person in Salesforce would; an Outbound Message follows.
    pub fn edit(&self, sobject: &str, id: &str, fields: Value) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let record = state
            .records
            .get_mut(sobject)
            .and_then(|records| records.get_mut(id))
            .expect("the record exists");
        record.extend(fields.as_object().cloned().unwrap_or_default());
        stamp(record, PERSON_USER_ID);
        state.touched.push((sobject.to_string(), id.to_string()));
        state.notify(self.state.clone());
    }

    /// Creates a record as a person in Salesforce would; an Outbound Message follows. Returns
    /// its id.
    pub fn create_as_person(&self, sobject: &str, fields: Value) -> String {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let mut record = fields.as_object().cloned().unwrap_or_default();
        record.insert("attributes".into(), json!({"type": sobject}));
        let created = create(state, sobject, &record);
        let id = created["id"]
            .as_str()
            .expect("a record Salesforce takes")
            .to_string();
        let stored = state
            .records
            .get_mut(sobject)
            .and_then(|records| records.get_mut(&id))
            .expect("just created");
        stamp(stored, PERSON_USER_ID);
        state.notify(self.state.clone());
        id
    }

    /// Merges records as a person does in Salesforce (up to three at once): `master` keeps its
    /// id and values and is stamped as modified (an Outbound Message follows); each of `merged`
    /// goes to the recycle bin, deleted, with `MasterRecordId` naming the master; the records that
    /// pointed at them (tasks, contact roles) point at the master, without a message.
    pub fn merge(&self, sobject: &str, master: &str, merged: &[&str]) -> Result<(), String> {
        if field_type(sobject, "MasterRecordId").is_none() {
            return Err(format!("{sobject} records cannot be merged"));
        }
        if merged.is_empty() || merged.len() > 2 {
            return Err("a merge takes a master and one or two other records".into());
        }
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let live = state.records.entry(sobject.to_string()).or_default();
        if !live.contains_key(master) {
            return Err(format!("no live {sobject} {master}"));
        }
        if let Some(missing) = merged
            .iter()
            .find(|id| **id == master || !live.contains_key(**id))
        {
            return Err(format!("cannot merge {missing} into {master}"));
        }
        for id in merged {
            let mut record = live.remove(*id).expect("checked above");
            record.insert("IsDeleted".into(), json!(true));
            record.insert("MasterRecordId".into(), json!(master));
            stamp(&mut record, PERSON_USER_ID);
            state
                .recycle_bin
                .entry(sobject.to_string())
                .or_default()
                .insert((*id).to_string(), record);
        }
        stamp(live.get_mut(master).expect("checked above"), PERSON_USER_ID);
        for (child, field) in [("Task", "WhoId"), ("OpportunityContactRole", "ContactId")] {
            for record in state.records.entry(child.to_string()).or_default().values_mut() {
                if record
                    .get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|id| merged.contains(&id))
                {
                    record.insert(field.into(), json!(master));
                }
            }
        }
        state.touched.push((sobject.to_string(), master.to_string()));
        state.notify(self.state.clone());
        Ok(())
    }

    /// Deletes a record as a person does: to the recycle bin, with no message.
    pub fn delete(&self, sobject: &str, id: &str) {
        let mut state = self.state.lock().unwrap();
        let mut record = state
            .records
            .get_mut(sobject)
            .and_then(|records| records.remove(id))
            .expect("the record exists");
        record.insert("IsDeleted".into(), json!(true));
        stamp(&mut record, PERSON_USER_ID);
        state
            .recycle_bin
            .entry(sobject.to_string())
            .or_default()
            .insert(id.to_string(), record);
    }

    /// Answers queries in pages of at most `size` records (Salesforce may answer fewer than asked).
    pub fn set_query_batch_size(&self, size: usize) {
        self.state.lock().unwrap().query_batch = size.max(1);
    }

    /// The records of `sobject` as stored (not those in the recycle bin).
    pub fn records(&self, sobject: &str) -> Vec<Map<String, Value>> {
        let state = self.state.lock().unwrap();
        state
            .records
            .get(sobject)
            .map(|records| records.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// A JSON answer, with the day's API usage as Salesforce reports it on every response.
fn reply(status: u16, body: &Value, state: &State) -> Response {
    axum::http::Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=UTF-8")
        .header(
            "Sforce-Limit-Info",
            format!("api-usage={}/{}", state.used, state.daily_limit),
        )
        .body(axum::body::Body::from(body.to_string()))
        .expect("a valid response")
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
    )
}

impl State {
    /// Counts an API call (anything but the token endpoint) and lets it through, or refuses it
    /// as Salesforce does, in its order: the session, then the day's budget; then the injected
    /// faults. `Ok` carries how long to hold the answer back (an injected timeout).
    fn admit(&mut self, bearer: Option<&str>) -> Result<Option<Duration>, (u16, Value)> {
        self.stats.calls += 1;
        if bearer != Some(self.access_token.as_str()) {
            self.stats.refused_sessions += 1;
            return Err((
                401,
                json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
            ));
        }
        if self.used >= self.daily_limit {
            self.stats.limit_refusals += 1;
            return Err((
                403,
                json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
            ));
        }
        self.used += 1;
        match self.dice.roll() {
            Fault::Error => Err((
                500,
                json!([{"message": "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)", "errorCode": "UNKNOWN_EXCEPTION"}]),
            )),
            Fault::Late(hold) => Ok(Some(hold)),
            Fault::None => Ok(None),
        }
    }
}

/// `/services/oauth2/token`: the refresh-token grant, from its form `body`; `host` (the request's
/// `Host`) makes the instance URL.
fn refresh(state: &mut State, host: &str, body: &[u8]) -> (u16, Value) {
    let fields = form(body);
    if fields.get("grant_type").map(String::as_str) != Some("refresh_token")
        || fields.get("refresh_token") != Some(&state.refresh_token)
    {
        return (
            400,
            json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
        );
    }
    let client_id = fields.get("client_id").cloned().unwrap_or_default();
    let client_secret = fields.get("client_secret").cloned().unwrap_or_default();
    let (known_id, known_secret) = match &state.client {
        Some((id, secret)) => (client_id == *id, client_secret == *secret),
        None => (!client_id.is_empty(), !client_secret.is_empty()),
    };
    if !known_id {
        return (
            400,
            json!({"error": "invalid_client_id", "error_description": "client identifier invalid"}),
        );
    }
    if !known_secret {
        return (
            400,
            json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        );
    }
    state.tokens_issued += 1;
    state.stats.refreshed += 1;
    state.access_token = format!("access-{}", state.tokens_issued);
    let instance_url = format!("http://{host}");
    // The identity URL, when it was issued, and their HMAC-SHA256 under the client secret:
    // what the token endpoint documents and the clients (jsforce) read.
    let id = format!("{instance_url}/id/{ORGANIZATION_ID}/{INTEGRATION_USER_ID}");
    let issued_at = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).to_string();
    let signature = {
        use base64::Engine;
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(client_secret.as_bytes()).expect("any key length");
        mac.update(format!("{id}{issued_at}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    (
        200,
        json!({
            "access_token": state.access_token,
            "instance_url": instance_url,
            "id": id,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
            "scope": "api refresh_token",
        }),
    )
}

/// One record of `POST /composite/sobjects`: its type from `attributes`.
fn create_from_attributes(state: &mut State, record: &Map<String, Value>) -> Value {
    let sobject = record
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // A create's SaveResult has no `created`; only an upsert's does.
    let mut result = create(state, &sobject, record);
    if let Some(result) = result.as_object_mut() {
        result.remove("created");
    }
    result
}

/// `DELETE /composite/sobjects?ids=a,b`: a SaveResult per id, in order.
fn delete_by_ids(state: &mut State, query: &BTreeMap<String, String>) -> (u16, Value) {
    let ids = query.get("ids").cloned().unwrap_or_default();
    let results: Vec<Value> = ids
        .split(',')
        .map(|id| {
            if !well_formed(id) {
                return failure_without_field("MALFORMED_ID", &format!("malformed id {id}"));
            }
            let found = state
                .records
                .iter_mut()
                .find_map(|(sobject, records)| Some((sobject.clone(), records.remove(id)?)));
            if let Some((sobject, mut record)) = found {
                record.insert("IsDeleted".into(), json!(true));
                stamp(&mut record, INTEGRATION_USER_ID);
                state
                    .recycle_bin
                    .entry(sobject)
                    .or_default()
                    .insert(id.to_string(), record);
                json!({"id": id, "success": true, "errors": []})
            } else {
                failure_without_field("ENTITY_IS_DELETED", "entity is deleted")
            }
        })
        .collect();
    (200, Value::Array(results))
}

/// `GET /composite/sobjects/{type}?ids=a,b&fields=F1,F2`.
fn retrieve_by_query(state: &State, sobject: &str, query: &BTreeMap<String, String>) -> (u16, Value) {
    let ids: Vec<String> = query
        .get("ids")
        .map(|ids| ids.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let fields: Vec<String> = query
        .get("fields")
        .map(|fields| fields.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    retrieve(state, sobject, &ids, &fields)
}

/// `POST /composite/sobjects/{type}` with `{ids, fields}`.
fn retrieve_by_body(state: &State, sobject: &str, body: &[u8]) -> (u16, Value) {
    match serde_json::from_slice::<Value>(body) {
        Ok(request) => {
            let list = |name: &str| -> Vec<String> {
                request
                    .get(name)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            retrieve(state, sobject, &list("ids"), &list("fields"))
        }
        Err(_) => (
            400,
            json!([{"message": "JSON parser error", "errorCode": "JSON_PARSER_ERROR"}]),
        ),
    }
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

fn failure_without_field(code: &str, message: &str) -> Value {
    json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": []}]})
}

/// Each sObject's fields and their `describe` types. Custom fields end in `__c`.
fn schema(sobject: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match sobject {
        "Contact" => Some(&[
            ("Id", "id"),
            ("FirstName", "string"),
            ("LastName", "string"),
            ("Email", "email"),
            ("Phone", "phone"),
            ("Title", "string"),
            ("Description", "textarea"),
            ("AccountId", "reference"),
            ("MasterRecordId", "reference"),
            ("Crm_Sync_App_Id__c", "string"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        "Opportunity" => Some(&[
            ("Id", "id"),
            ("Name", "string"),
            ("Amount", "currency"),
            ("Probability", "percent"),
            ("CloseDate", "date"),
            ("StageName", "picklist"),
            ("Description", "textarea"),
            ("AccountId", "reference"),
            ("Crm_Sync_App_Id__c", "string"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        "Task" => Some(&[
            ("Id", "id"),
            ("Subject", "combobox"),
            ("Description", "textarea"),
            ("ActivityDate", "date"),
            ("Status", "picklist"),
            ("WhoId", "reference"),
            ("WhatId", "reference"),
            ("Crm_Sync_App_Id__c", "string"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        "Account" => Some(&[
            ("Id", "id"),
            ("Name", "string"),
            ("Website", "url"),
            ("Industry", "picklist"),
            ("Phone", "phone"),
            ("ParentId", "reference"),
            ("MasterRecordId", "reference"),
            ("Crm_Sync_App_Id__c", "string"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        // A contact's link to an account with its roles: the direct one (the contact's
        // AccountId) is made by Salesforce, more are made by hand or by API.
        "AccountContactRelation" => Some(&[
            ("Id", "id"),
            ("AccountId", "reference"),
            ("ContactId", "reference"),
            ("Roles", "multipicklist"),
            ("IsDirect", "boolean"),
            ("IsActive", "boolean"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        // A custom object, as an admin defines one: its name ends in `__c`, as do its fields.
        "Project__c" => Some(&[
            ("Id", "id"),
            ("Name", "string"),
            ("Account__c", "reference"),
            ("Status__c", "picklist"),
            ("Crm_Sync_App_Id__c", "string"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        "OpportunityContactRole" => Some(&[
            ("Id", "id"),
            ("OpportunityId", "reference"),
            ("ContactId", "reference"),
            ("Role", "picklist"),
            ("IsPrimary", "boolean"),
            ("CreatedDate", "datetime"),
            ("LastModifiedDate", "datetime"),
            ("LastModifiedById", "reference"),
            ("SystemModstamp", "datetime"),
            ("IsDeleted", "boolean"),
        ]),
        _ => None,
    }
}

fn field_type(sobject: &str, field: &str) -> Option<&'static str> {
    schema(sobject)?
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, kind)| *kind)
}

/// `GET /sobjects/{type}/describe`: the sObject's fields, with the attributes clients read.
fn describe(sobject: &str) -> (u16, Value) {
    let Some(fields) = schema(sobject) else {
        return (
            404,
            json!([{"errorCode": "NOT_FOUND", "message": format!("The requested resource does not exist: {sobject}")}]),
        );
    };
    let fields: Vec<Value> = fields
        .iter()
        .map(|(name, kind)| {
            let system = matches!(
                *name,
                "Id" | "CreatedDate"
                    | "LastModifiedDate"
                    | "LastModifiedById"
                    | "SystemModstamp"
                    | "IsDeleted"
                    | "MasterRecordId"
            );
            json!({
                "name": name, "label": name, "type": kind,
                "soapType": match *kind {
                    "currency" | "percent" | "double" => "xsd:double",
                    "boolean" => "xsd:boolean",
                    "date" => "xsd:date",
                    "datetime" => "xsd:dateTime",
                    "id" | "reference" => "tns:ID",
                    _ => "xsd:string",
                },
                "nillable": !system && *name != "LastName" && *name != "Name",
                "createable": !system, "updateable": !system,
                "custom": name.ends_with("__c"),
                "externalId": *name == "Crm_Sync_App_Id__c",
                "unique": *name == "Crm_Sync_App_Id__c",
                "idLookup": *name == "Id" || *name == "Crm_Sync_App_Id__c",
                "calculated": false, "length": if *kind == "string" { 255 } else { 0 },
                "picklistValues": [], "referenceTo": [],
            })
        })
        .collect();
    (
        200,
        json!({"name": sobject, "label": sobject, "custom": false, "createable": true, "updateable": true,
               "deletable": true, "queryable": true, "retrieveable": true, "fields": fields}),
    )
}

/// An 18-character record id (or its 15-character form): letters and digits.
fn well_formed(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `2026-11-27T10:15:00.000Z`, as stored and as Outbound Messages send it, in the REST API's
/// form: `2026-11-27T10:15:00.000+0000`.
fn rest_datetime(value: &Value) -> Value {
    match value.as_str().and_then(|text| text.strip_suffix('Z')) {
        Some(stamp) => json!(format!("{stamp}+0000")),
        None => value.clone(),
    }
}

/// Records by id as sObject Collections retrieve them: in the order asked, `null` for an id
/// with no record, each with `attributes` and only the fields asked for.
fn retrieve(state: &State, sobject: &str, ids: &[String], fields: &[String]) -> (u16, Value) {
    if schema(sobject).is_none() {
        return (
            404,
            json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
        );
    }
    if let Some(unknown) = fields.iter().find(|field| field_type(sobject, field).is_none()) {
        return (
            400,
            json!([{"errorCode": "INVALID_FIELD", "message": format!("No such column '{unknown}' on entity '{sobject}'.")}]),
        );
    }
    if ids.len() > 2000 {
        return (
            400,
            json!([{"errorCode": "EXCEEDED_ID_LIMIT", "message": "too many ids"}]),
        );
    }
    if let Some(bad) = ids.iter().find(|id| !well_formed(id)) {
        return (
            400,
            json!([{"errorCode": "MALFORMED_ID", "message": format!("malformed id {bad}")}]),
        );
    }
    let records = state.records.get(sobject);
    let results: Vec<Value> = ids
        .iter()
        .map(|id| {
            let Some(stored) = records.and_then(|records| records.get(id)) else {
                return Value::Null;
            };
            selected(sobject, id, stored, fields)
        })
        .collect();
    (200, Value::Array(results))
}

/// A field's name as the schema spells it (SOQL names are case-insensitive).
fn schema_field(sobject: &str, name: &str) -> Option<String> {
    schema(sobject)?
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(known, _)| (*known).to_string())
}

/// A record as a query answers it: `attributes`, then the fields selected.
fn selected(sobject: &str, id: &str, stored: &Map<String, Value>, fields: &[String]) -> Value {
    let mut record = Map::new();
    record.insert(
        "attributes".into(),
        json!({"type": sobject, "url": format!("{API_PATH}/sobjects/{sobject}/{id}")}),
    );
    for field in fields {
        let value = match (field.as_str(), stored.get(field)) {
            ("IsDeleted", None) => json!(false),
            (_, value) => value.cloned().unwrap_or(Value::Null),
        };
        let value = if field_type(sobject, field) == Some("datetime") {
            rest_datetime(&value)
        } else {
            value
        };
        record.insert(field.clone(), value);
    }
    Value::Object(record)
}

/// `GET /query/?q=` and `GET /queryAll/?q=` (`all`: deleted records too): the first batch, and
/// a `nextRecordsUrl` for the rest.
fn query(state: &mut State, soql: &str, all: bool, batch: Option<usize>) -> (u16, Value) {
    let query = match soql::parse(soql, schema_field) {
        Ok(query) => query,
        Err((code, message)) => return (400, json!([{"errorCode": code, "message": message}])),
    };
    let bins = [Some(&state.records), all.then_some(&state.recycle_bin)];
    let mut found: Vec<Map<String, Value>> = bins
        .into_iter()
        .flatten()
        .filter_map(|bin| bin.get(&query.sobject))
        .flat_map(|records| records.values())
        .filter(|record| query.matches(record))
        .cloned()
        .collect();
    query.sort(&mut found);
    found.truncate(query.limit.unwrap_or(usize::MAX));
    let records: Vec<Value> = found
        .iter()
        .map(|record| {
            let id = record.get("Id").and_then(Value::as_str).unwrap_or_default();
            selected(&query.sobject, id, record, &query.fields)
        })
        .collect();
    let batch = batch.unwrap_or(state.query_batch).min(state.query_batch);
    let locator = format!("01g{:012}AAA", state.next_locator);
    state.next_locator += 1;
    state.cursors.insert(locator.clone(), (records, batch));
    page(state, &locator, 0)
}

/// The batch of a query's results from `offset`: `done`, or a `nextRecordsUrl` to the next.
fn page(state: &mut State, locator: &str, offset: usize) -> (u16, Value) {
    let Some((records, batch)) = state.cursors.get(locator) else {
        return (
            400,
            json!([{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}]),
        );
    };
    let total = records.len();
    let end = (offset + batch).min(total);
    let chunk: Vec<Value> = records.get(offset..end).unwrap_or_default().to_vec();
    let done = end >= total;
    let mut answer = json!({"totalSize": total, "done": done, "records": chunk});
    if done {
        state.cursors.remove(locator);
    } else {
        answer["nextRecordsUrl"] = json!(format!("{API_PATH}/query/{locator}-{end}"));
    }
    (200, answer)
}

/// `GET /query/{locator}-{offset}`: the next batch of a query.
fn query_more(state: &mut State, locator_and_offset: &str) -> (u16, Value) {
    let (locator, offset) = locator_and_offset
        .rsplit_once('-')
        .and_then(|(locator, offset)| Some((locator.to_string(), offset.parse::<usize>().ok()?)))
        .unwrap_or_default();
    page(state, &locator, offset)
}

/// What a reference field points at.
fn reference_target(field: &str) -> Option<&'static str> {
    match field {
        "ContactId" | "WhoId" => Some("Contact"),
        "OpportunityId" | "WhatId" => Some("Opportunity"),
        "AccountId" | "ParentId" | "Account__c" => Some("Account"),
        _ => None,
    }
}

/// A reference to a record that does not exist: `INVALID_CROSS_REFERENCE_KEY`.
fn dangling(state: &State, record: &Map<String, Value>) -> Option<Value> {
    record.iter().find_map(|(field, value)| {
        let target = reference_target(field)?;
        let id = value.as_str().filter(|id| !id.is_empty())?;
        let exists = state
            .records
            .get(target)
            .is_some_and(|records| records.contains_key(id));
        (!exists).then(|| {
            failure(
                "INVALID_CROSS_REFERENCE_KEY",
                &format!("invalid cross reference id: {id}"),
                field,
            )
        })
    })
}

/// Salesforce's own checks on the fields crm-sync writes: fields the sObject has, and valid
/// emails.
fn invalid(sobject: &str, record: &Map<String, Value>) -> Option<Value> {
    if let Some(unknown) = record
        .keys()
        .find(|name| *name != "attributes" && *name != "id" && field_type(sobject, name).is_none())
    {
        return Some(failure(
            "INVALID_FIELD",
            &format!("No such column '{unknown}' on sobject of type {sobject}"),
            unknown,
        ));
    }
    // A date field takes `YYYY-MM-DD` only.
    let date = time::macros::format_description!("[year]-[month]-[day]");
    if let Some((name, value)) = record.iter().find(|(name, value)| {
        field_type(sobject, name) == Some("date")
            && value
                .as_str()
                .is_some_and(|text| !text.is_empty() && time::Date::parse(text, &date).is_err())
    }) {
        return Some(failure(
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            &format!("{name}: value not of required type: {value}"),
            name,
        ));
    }
    let email = record.get("Email").and_then(Value::as_str)?;
    (!email.contains('@')).then(|| failure("INVALID_EMAIL_ADDRESS", "Email: invalid email address", "Email"))
}

/// Currency and number fields crm-sync writes; Salesforce stores them as doubles whatever the
/// JSON gave.
const NUMBER_FIELDS: [&str; 2] = ["Amount", "Probability"];

fn fields_of(record: &Map<String, Value>) -> Map<String, Value> {
    record
        .iter()
        .filter(|(name, _)| *name != "attributes" && *name != "id" && *name != "Id")
        .map(|(name, value)| {
            let number = NUMBER_FIELDS
                .contains(&name.as_str())
                .then(|| value.as_str().and_then(|text| text.parse::<f64>().ok()))
                .flatten();
            (name.clone(), number.map_or_else(|| value.clone(), |n| json!(n)))
        })
        .collect()
}

fn create(state: &mut State, sobject: &str, record: &Map<String, Value>) -> Value {
    if let Some(problem) = invalid(sobject, record)
        .or_else(|| dangling(state, record))
        .or_else(|| duplicate_relation(state, sobject, record))
    {
        return problem;
    }
    let prefix = match sobject {
        "Contact" => "003",
        "Opportunity" => "006",
        "Task" => "00T",
        "OpportunityContactRole" => "00K",
        "Account" => "001",
        "AccountContactRelation" => "07k",
        "Project__c" => "a01",
        _ => "a00",
    };
    let id = format!("{prefix}{:012}AAA", state.next_id);
    state.next_id += 1;
    let mut stored = fields_of(record);
    if sobject == "AccountContactRelation" {
        // A relation made by API is never the direct one (that is the contact's AccountId).
        stored.insert("IsDirect".into(), json!(false));
        stored.entry("IsActive").or_insert(json!(true));
    }
    stored.insert("Id".into(), json!(id));
    stored.insert("attributes".into(), json!({"type": sobject}));
    stored.insert("CreatedDate".into(), json!(now()));
    stamp(&mut stored, INTEGRATION_USER_ID);
    state.touched.push((sobject.to_string(), id.clone()));
    state
        .records
        .entry(sobject.to_string())
        .or_default()
        .insert(id.clone(), stored);
    direct_relation(state, sobject, &id);
    json!({"id": id, "success": true, "errors": [], "created": true})
}

/// A second relation between one account and one contact: `DUPLICATE_VALUE`.
fn duplicate_relation(state: &State, sobject: &str, record: &Map<String, Value>) -> Option<Value> {
    if sobject != "AccountContactRelation" {
        return None;
    }
    let (account, contact) = (record.get("AccountId")?, record.get("ContactId")?);
    let (id, _) = state
        .records
        .get("AccountContactRelation")?
        .iter()
        .find(|(_, r)| r.get("AccountId") == Some(account) && r.get("ContactId") == Some(contact))?;
    Some(failure_without_field(
        "DUPLICATE_VALUE",
        &format!("duplicate value found: <unknown> duplicates value on record with id: {id}"),
    ))
}

/// A contact's account is its direct relation, which Salesforce keeps: made when the contact
/// names an account, and the one before made indirect when it names another.
fn direct_relation(state: &mut State, sobject: &str, contact_id: &str) {
    if sobject != "Contact" {
        return;
    }
    let account = state
        .records
        .get("Contact")
        .and_then(|contacts| contacts.get(contact_id))
        .and_then(|contact| contact.get("AccountId"))
        .and_then(Value::as_str)
        .filter(|account| !account.is_empty())
        .map(str::to_string);
    let relations = state.records.entry("AccountContactRelation".into()).or_default();
    let mut found = false;
    for relation in relations.values_mut() {
        if relation.get("ContactId").and_then(Value::as_str) != Some(contact_id) {
            continue;
        }
        let this = relation.get("AccountId").and_then(Value::as_str) == account.as_deref();
        found |= this;
        if relation.get("IsDirect") == Some(&json!(true)) && !this {
            relation.insert("IsDirect".into(), json!(false));
            stamp(relation, INTEGRATION_USER_ID);
        }
    }
    let Some(account) = account.filter(|_| !found) else {
        return;
    };
    let id = format!("07k{:012}AAA", state.next_id);
    state.next_id += 1;
    let mut relation = Map::new();
    relation.insert("Id".into(), json!(id));
    relation.insert("attributes".into(), json!({"type": "AccountContactRelation"}));
    relation.insert("AccountId".into(), json!(account));
    relation.insert("ContactId".into(), json!(contact_id));
    relation.insert("Roles".into(), Value::Null);
    relation.insert("IsDirect".into(), json!(true));
    relation.insert("IsActive".into(), json!(true));
    relation.insert("IsDeleted".into(), json!(false));
    relation.insert("CreatedDate".into(), json!(now()));
    stamp(&mut relation, INTEGRATION_USER_ID);
    state
        .records
        .entry("AccountContactRelation".into())
        .or_default()
        .insert(id, relation);
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
            if let Some(problem) = invalid(sobject, record).or_else(|| dangling(state, record)) {
                return problem;
            }
            let stored = state
                .records
                .get_mut(sobject)
                .and_then(|records| records.get_mut(&id))
                .expect("found");
            stored.extend(fields_of(record));
            stamp(stored, INTEGRATION_USER_ID);
            state.touched.push((sobject.to_string(), id.clone()));
            direct_relation(state, sobject, &id);
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
    if !well_formed(id) {
        return failure(
            "MALFORMED_ID",
            &format!("Record ID: id value of incorrect type: {id}"),
            "Id",
        );
    }
    let found = state
        .records
        .iter_mut()
        .find_map(|(sobject, records)| records.get_mut(id).map(|stored| (sobject.clone(), stored)));
    match found {
        Some((sobject, stored)) => {
            if let Some(problem) = invalid(&sobject, record) {
                return problem;
            }
            stored.extend(fields_of(record));
            stamp(stored, INTEGRATION_USER_ID);
            state.touched.push((sobject.clone(), id.to_string()));
            direct_relation(state, &sobject, id);
            json!({"id": id, "success": true, "errors": []})
        }
        None => failure("ENTITY_IS_DELETED", "entity is deleted", "Id"),
    }
}

/// Salesforce's `xsd:dateTime`, to the second as `LastModifiedDate` is.
fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].000Z"
    ))
    .expect("a formattable time")
}

fn stamp(record: &mut Map<String, Value>, user: &str) {
    record.insert("LastModifiedById".into(), json!(user));
    record.insert("LastModifiedDate".into(), json!(now()));
    record.insert("SystemModstamp".into(), json!(now()));
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A field as the SOAP API renders it: numbers as doubles (`100.0`), null as `xsi:nil`.
fn field_xml(name: &str, value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => return format!(r#"<sf:{name} xsi:nil="true"/>"#),
        Some(Value::String(text)) => escape(text),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(float) if float.fract() == 0.0 => format!("{float:.1}"),
            _ => number.to_string(),
        },
        Some(other) => escape(&other.to_string()),
    };
    format!("<sf:{name}>{text}</sf:{name}>")
}

impl State {
    /// Queues an Outbound Message for each SObject among the records just written, 100
    /// notifications a message, as Salesforce batches them.
    fn notify(&mut self, shared: Arc<Mutex<State>>) {
        let touched = std::mem::take(&mut self.touched);
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        let mut by_sobject: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (sobject, id) in touched {
            if outbound.fields.contains_key(&sobject) {
                by_sobject.entry(sobject).or_default().push(id);
            }
        }
        for (sobject, ids) in by_sobject {
            let selected = &outbound.fields[&sobject];
            for chunk in ids.chunks(100) {
                let mut notifications = String::new();
                for id in chunk {
                    let Some(record) = self.records.get(&sobject).and_then(|records| records.get(id)) else {
                        continue;
                    };
                    let mut fields = field_xml("Id", record.get("Id"));
                    for name in selected.iter().map(String::as_str).chain([
                        "CreatedDate",
                        "LastModifiedById",
                        "LastModifiedDate",
                    ]) {
                        fields.push_str(&field_xml(name, record.get(name)));
                    }
                    notifications.push_str(&format!(
                        r#"<Notification><Id>04l{:012}AAA</Id><sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject></Notification>"#,
                        self.next_notification
                    ));
                    self.next_notification += 1;
                }
                let body = format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{ORGANIZATION_ID}</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>http://sandbox/services/Soap/c/60.0</EnterpriseUrl><PartnerUrl>http://sandbox/services/Soap/u/60.0</PartnerUrl>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"#
                );
                self.send(shared.clone(), outbound.url.clone(), body);
            }
        }
    }

    fn send(&self, shared: Arc<Mutex<State>>, url: String, body: String) {
        let pending = self.pending_messages.clone();
        pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            // Salesforce resends for 24 hours, further apart each time; the sandbox for about 3 s.
            for attempt in 0..5u32 {
                let answer = client
                    .post(&url)
                    .header("content-type", "text/xml; charset=utf-8")
                    .header("SOAPAction", "\"\"")
                    .body(body.clone())
                    .send()
                    .await;
                let acknowledged = match answer {
                    Ok(response) if response.status().is_success() => response
                        .text()
                        .await
                        .is_ok_and(|text| text.contains("<Ack>true</Ack>")),
                    _ => false,
                };
                {
                    let mut state = shared.lock().unwrap();
                    if acknowledged {
                        state.stats.messages_acknowledged += 1;
                    } else {
                        state.stats.messages_refused += 1;
                    }
                }
                if acknowledged {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
