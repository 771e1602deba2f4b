//! Salesforce's REST API (sObject Collections) as a [`Crm`], over HTTPS with reqwest.
//!
//! Writes go 200 records a call with `allOrNone: false`, so one bad record fails alone; an upsert
//! is by the external id field that holds the app's id. The daily API budget comes from
//! `Sforce-Limit-Info`; a spent one is a 403 `REQUEST_LIMIT_EXCEEDED`. An expired session
//! (`INVALID_SESSION_ID`) is renewed once with the OAuth refresh token, and the call repeated.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use tokio::sync::RwLock;

use crate::adapters::crm_http;
use crate::domain::adoption::Found;
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, CrmLink, FailureKind, FindResult, InputError, InputOutcome,
    LinkInput, MergeLookup, MergePage, MergeSeen, PropertyKinds, RateInfo, ReadResult, ThrottlePolicy,
    UpdateInput, UpsertInput, ValueKind,
};
use crate::domain::mapping::LinkVia;
use crate::ports::{unsupported_link, Crm};

/// The REST API version crm-sync speaks.
pub const API_VERSION: &str = "v60.0";

/// How to renew the access token: a connected app's client and a user's refresh token.
#[derive(Clone)]
pub struct OAuthRefresh {
    /// `https://login.salesforce.com/services/oauth2/token` (or the org's My Domain).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub refresh_token: SecretString,
}

/// A Salesforce org.
pub struct SalesforceClient {
    http: reqwest::Client,
    /// `{instance_url}/services/data/{API_VERSION}`.
    base_url: RwLock<String>,
    token: RwLock<SecretString>,
    refresh: Option<OAuthRefresh>,
}

/// The daily API budget from `Sforce-Limit-Info: api-usage=used/max`, and, where the connected
/// app has its own cap (`; per-app-api-usage=used/max(appName=…)`), the smaller of the two.
pub fn rate_info(headers: &HeaderMap) -> RateInfo {
    let Some(value) = headers
        .get("sforce-limit-info")
        .and_then(|value| value.to_str().ok())
    else {
        return RateInfo::default();
    };
    let usage = |prefix: &str| -> Option<(u64, u64)> {
        let usage = value
            .split([';', ','])
            .find_map(|part| part.trim().strip_prefix(prefix))?;
        let usage = usage.split('(').next().unwrap_or(usage);
        let (used, max) = usage.split_once('/')?;
        Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
    };
    let left = |(used, max): (u64, u64)| (max, max.saturating_sub(used));
    match (
        usage("api-usage=").map(left),
        usage("per-app-api-usage=").map(left),
    ) {
        (Some((max, remaining)), app) => RateInfo {
            daily_max: Some(max),
            daily_remaining: Some(app.map_or(remaining, |(_, app_left)| remaining.min(app_left))),
            ..RateInfo::default()
        },
        _ => RateInfo::default(),
    }
}

/// How a Salesforce error code bears on a retry.
fn kind_of(code: &str) -> FailureKind {
    match code {
        "DUPLICATE_VALUE" | "DUPLICATES_DETECTED" => FailureKind::Conflict,
        "UNABLE_TO_LOCK_ROW" | "REQUEST_RUNNING_TOO_LONG" | "SERVER_UNAVAILABLE" => FailureKind::Transient,
        _ => FailureKind::Permanent,
    }
}

/// One SaveResult (`{id, success, created?, errors}`) as an outcome.
fn save_result(result: &Value, fallback_id: Option<&str>) -> InputOutcome {
    if result.get("success").and_then(Value::as_bool) == Some(true) {
        let crm_id = result
            .get("id")
            .and_then(Value::as_str)
            .or(fallback_id)
            .unwrap_or_default()
            .to_string();
        return InputOutcome::Done {
            crm_id,
            created: result.get("created").and_then(Value::as_bool).unwrap_or(false),
        };
    }
    let error = result
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|errors| errors.first())
        .cloned()
        .unwrap_or(Value::Null);
    let code = error
        .get("statusCode")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN_ERROR")
        .to_string();
    let mut message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("Salesforce refused the record")
        .to_string();
    // The fields, always: failures are grouped by them, and Salesforce's message names them in
    // forms no one reads alike (`Email: invalid email address`, `missing: [LastName]`).
    let fields: Vec<&str> = error
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !fields.is_empty() {
        message.push_str(&format!(" (fields: {})", fields.join(", ")));
    }
    InputOutcome::Failed(InputError {
        kind: kind_of(&code),
        message,
        code,
        existing_id: None,
    })
}

/// A record body: its type, then its fields by API name.
fn record(object: &str, fields: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut body = Map::new();
    body.insert("attributes".into(), json!({ "type": object }));
    for (name, value) in fields {
        body.insert(name, Value::String(value));
    }
    Value::Object(body)
}

/// A record body of `properties` and one more field that names the record (`id`, or the
/// external id field).
fn record_with(
    object: &str,
    properties: &std::collections::BTreeMap<String, String>,
    naming: (&str, &str),
) -> Value {
    let fields = properties
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .chain([(naming.0.to_string(), naming.1.to_string())]);
    record(object, fields)
}

/// The sObjects Salesforce merges (a merge keeps the losers deleted, with `MasterRecordId`).
pub const MERGEABLE: [&str; 3] = ["Account", "Contact", "Lead"];

/// The most characters, percent-encoded, of one query's `IN` list: with the rest of the query it
/// stays well under Salesforce's 16,384-character URL.
const MAX_IN_LIST_CHARS: usize = 8_000;

/// How many merges a chain is followed through when one id is asked about (a into b, b into c).
const SURVIVOR_HOPS: usize = 4;

/// A record's fields as text, without `attributes` (a null reads as empty).
fn field_texts(record: &Map<String, Value>) -> impl Iterator<Item = (String, String)> + '_ {
    record
        .iter()
        .filter(|(name, _)| *name != "attributes")
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (name.clone(), text)
        })
}

/// The API path of a query's `nextRecordsUrl`, which is absolute from the host
/// (`/services/data/v60.0/query/01g…-2000`).
fn next_records_path(next: &str) -> Result<String, CrmError> {
    match next.find("/query") {
        Some(at) => Ok(next[at..].to_string()),
        None => Err(CrmError::Rejected {
            call: "GET nextRecordsUrl".into(),
            status: 400,
            message: format!("unexpected nextRecordsUrl {next:?}"),
        }),
    }
}

/// A SOQL datetime literal (UTC, to the second; unquoted).
fn soql_datetime(ms: i64) -> String {
    let text = crate::domain::clock::rfc3339(ms.div_euclid(1000) * 1000);
    text.replace(".000Z", "Z")
}

/// A SOQL string literal for an id: Salesforce ids are 15 or 18 letters and digits, so anything
/// else is refused rather than escaped.
fn soql_id(id: &str) -> Option<String> {
    (matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| format!("'{id}'"))
}

fn query_path(soql: &str) -> String {
    resource_path("queryAll", soql)
}

fn resource_path(resource: &str, soql: &str) -> String {
    format!(
        "/{resource}/?q={}",
        form_urlencoded::byte_serialize(soql.as_bytes()).collect::<String>()
    )
}

/// A SOQL string literal: backslashes and quotes escaped; `None` for a value with control
/// characters, which no id or email holds.
fn soql_text(value: &str) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    Some(format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")))
}

/// A field or sObject name as it may appear in a query: letters, digits and underscores.
pub(crate) fn soql_name(name: &str) -> Option<&str> {
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(name)
}

/// A record's value of `field`: Salesforce answers with the field's own spelling, whatever the
/// mapping's.
fn field_value<'a>(values: &'a std::collections::BTreeMap<String, String>, field: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(field))
        .map(|(_, value)| value.as_str())
}

/// Whether crm-sync reads merges of `object` (an sObject name in any case).
fn mergeable(object: &str) -> bool {
    MERGEABLE.iter().any(|m| m.eq_ignore_ascii_case(object))
}

/// (from id, to id) → (junction record id, its labels).
type JunctionRows = std::collections::HashMap<(String, String), (String, Vec<String>)>;

impl SalesforceClient {
    /// The junction records of the pairs, found by their `from_field` and kept where
    /// `to_field` names the pair's other record.
    async fn junction_rows(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<JunctionRows, CrmError> {
        let LinkVia::Junction {
            object,
            from_field,
            to_field,
            labels_field,
        } = &link.via
        else {
            return Ok(JunctionRows::new());
        };
        let mut from_ids: Vec<String> = pairs.iter().map(|pair| pair.from_id.clone()).collect();
        from_ids.sort();
        from_ids.dedup();
        let read: Vec<String> = std::iter::once(to_field.clone())
            .chain(labels_field.clone())
            .collect();
        let found = self.find(object, from_field, &from_ids, &read).await?;
        let value_of = |values: &std::collections::BTreeMap<String, String>, field: &str| {
            field_value(values, field).unwrap_or_default().to_string()
        };
        let mut rows = JunctionRows::new();
        for (from_id, matches) in from_ids.iter().zip(found.matches) {
            for row in matches {
                let labels = labels_field
                    .as_ref()
                    .map(|field| value_of(&row.values, field))
                    .unwrap_or_default();
                let labels: Vec<String> = labels
                    .split(';')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                rows.insert(
                    (from_id.clone(), value_of(&row.values, to_field)),
                    (row.crm_id, labels),
                );
            }
        }
        Ok(rows)
    }

    /// `instance_url` is the org's (`https://acme.my.salesforce.com`); `refresh` renews `token`.
    pub fn new(
        instance_url: &str,
        token: SecretString,
        refresh: Option<OAuthRefresh>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: crm_http::client(timeout)?,
            base_url: RwLock::new(Self::api_base(instance_url)),
            token: RwLock::new(token),
            refresh,
        })
    }

    fn api_base(instance_url: &str) -> String {
        format!(
            "{}/services/data/{API_VERSION}",
            instance_url.trim_end_matches('/')
        )
    }

    /// Trades the refresh token for a new access token (and the instance it is good for).
    async fn renew(&self, refresh: &OAuthRefresh) -> Result<(), CrmError> {
        let call = "POST /services/oauth2/token".to_string();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &refresh.client_id)
            .append_pair("client_secret", refresh.client_secret.expose_secret())
            .append_pair("refresh_token", refresh.refresh_token.expose_secret())
            .finish();
        let response = self
            .http
            .post(&refresh.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|error| crm_http::unreached(&call, "Salesforce", error))?;
        let status = response.status().as_u16();
        let call = format!("{call} -> {status}");
        let json: Value =
            serde_json::from_str(&crm_http::text(&call, response).await?).unwrap_or(Value::Null);
        let Some(token) = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|_| status == 200)
        else {
            return Err(CrmError::Transient {
                call,
                message: format!(
                    "authentication failed: the refresh token was refused ({})",
                    json.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no access token")
                ),
            });
        };
        *self.token.write().await = SecretString::from(token.to_string());
        if let Some(instance) = json.get("instance_url").and_then(Value::as_str) {
            *self.base_url.write().await = Self::api_base(instance);
        }
        Ok(())
    }

    /// One call; an expired session is renewed once and the call repeated.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, RateInfo, String), CrmError> {
        let mut renewed = false;
        loop {
            let call = format!("{method} {}", path.split('?').next().unwrap_or(path));
            let url = format!("{}{path}", self.base_url.read().await);
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(self.token.read().await.expose_secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|error| crm_http::unreached(&call, "Salesforce", error))?;
            let status = response.status().as_u16();
            let rate = rate_info(response.headers());
            let call = format!("{call} -> {status}");
            let json: Value =
                serde_json::from_str(&crm_http::text(&call, response).await?).unwrap_or(Value::Null);
            let first = json.as_array().and_then(|errors| errors.first());
            let code = first
                .and_then(|error| error.get("errorCode"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message = first
                .and_then(|error| error.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return match (status, code) {
                (200..=299, _) => Ok((json, rate, call)),
                (401, _) => match &self.refresh {
                    Some(refresh) if !renewed => {
                        self.renew(refresh).await?;
                        renewed = true;
                        continue;
                    }
                    _ => Err(CrmError::Transient {
                        call,
                        message: format!("authentication failed: {message}"),
                    }),
                },
                (403, "REQUEST_LIMIT_EXCEEDED") => Err(CrmError::Throttled {
                    policy: ThrottlePolicy::Daily,
                    retry_after: None,
                    message,
                    rate,
                }),
                (500..=599, _) => Err(CrmError::Transient { call, message }),
                (code, _) => Err(CrmError::Rejected {
                    call,
                    status: code,
                    message,
                }),
            };
        }
    }

    /// Maps a collection's SaveResults back to its `count` inputs, in order.
    fn results(json: &Value, count: usize, ids: Option<&[String]>) -> Vec<InputOutcome> {
        let results = json.as_array().map(Vec::as_slice).unwrap_or_default();
        (0..count)
            .map(|index| match results.get(index) {
                Some(result) => save_result(result, ids.and_then(|ids| ids.get(index)).map(String::as_str)),
                None => InputOutcome::Failed(InputError {
                    kind: FailureKind::Transient,
                    code: "NO_RESULT".into(),
                    message: "Salesforce answered without this record's result".into(),
                    existing_id: None,
                }),
            })
            .collect()
    }
}

#[async_trait]
impl Crm for SalesforceClient {
    fn name(&self) -> &'static str {
        "salesforce"
    }

    fn max_batch(&self) -> usize {
        200
    }

    async fn upsert(
        &self,
        object: &str,
        id_property: &str,
        inputs: &[UpsertInput],
    ) -> Result<BatchResult, CrmError> {
        let records: Vec<Value> = inputs
            .iter()
            .map(|input| record_with(object, &input.properties, (id_property, &input.key)))
            .collect();
        let body = json!({ "allOrNone": false, "records": records });
        let (json, rate, call) = self
            .call(
                Method::PATCH,
                &format!("/composite/sobjects/{object}/{id_property}"),
                Some(&body),
            )
            .await?;
        Ok(BatchResult {
            outcomes: Self::results(&json, inputs.len(), None),
            rate,
            call,
        })
    }

    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError> {
        let records: Vec<Value> = inputs
            .iter()
            .map(|input| record_with(object, &input.properties, ("id", &input.crm_id)))
            .collect();
        let body = json!({ "allOrNone": false, "records": records });
        let (json, rate, call) = self
            .call(Method::PATCH, "/composite/sobjects", Some(&body))
            .await?;
        let ids: Vec<String> = inputs.iter().map(|input| input.crm_id.clone()).collect();
        Ok(BatchResult {
            outcomes: Self::results(&json, inputs.len(), Some(&ids)),
            rate,
            call,
        })
    }

    async fn archive(&self, _object: &str, crm_ids: &[String]) -> Result<BatchResult, CrmError> {
        let (json, rate, call) = self
            .call(
                Method::DELETE,
                &format!("/composite/sobjects?ids={}&allOrNone=false", crm_ids.join(",")),
                None,
            )
            .await?;
        let outcomes = Self::results(&json, crm_ids.len(), Some(crm_ids))
            .into_iter()
            .zip(crm_ids)
            .map(|(outcome, id)| match outcome {
                // Deleted already: what an archive wants.
                InputOutcome::Failed(error) if error.code == "ENTITY_IS_DELETED" => InputOutcome::Done {
                    crm_id: id.clone(),
                    created: false,
                },
                other => other,
            })
            .collect();
        Ok(BatchResult { outcomes, rate, call })
    }

    fn max_find(&self) -> usize {
        // A query's URL stays well under Salesforce's 16,384 characters.
        100
    }

    async fn find(
        &self,
        object: &str,
        property: &str,
        values: &[String],
        properties: &[String],
    ) -> Result<FindResult, CrmError> {
        let refused = |what: &str| CrmError::Rejected {
            call: format!("find {object} by {property}"),
            status: 400,
            message: format!("{what} is no Salesforce name"),
        };
        let sobject = soql_name(object).ok_or_else(|| refused(object))?;
        let field = soql_name(property).ok_or_else(|| refused(property))?;
        let mut fields: Vec<&str> = vec!["Id", field];
        for name in properties {
            fields.push(soql_name(name).ok_or_else(|| refused(name))?);
        }
        fields.sort_unstable();
        fields.dedup();
        let literals: Vec<String> = values.iter().filter_map(|value| soql_text(value)).collect();
        // SOQL compares text without regard to case, as HubSpot keeps emails lower-cased.
        let fold = |value: &str| value.to_lowercase();
        let mut by_value: std::collections::HashMap<String, Vec<Found>> = std::collections::HashMap::new();
        let (mut rate, mut call) = (
            RateInfo::default(),
            format!("no CRM call: no {field} to look for"),
        );
        // Queries short enough for Salesforce's URL limit (16,384 characters): long values (ids
        // up to 256 characters, emails up to 254 bytes, percent-encoded) make more of them.
        let mut chunks: Vec<Vec<&String>> = Vec::new();
        let mut length = 0;
        for literal in &literals {
            let encoded = form_urlencoded::byte_serialize(literal.as_bytes())
                .map(str::len)
                .sum::<usize>()
                + 3;
            if chunks.is_empty() || length + encoded > MAX_IN_LIST_CHARS {
                chunks.push(Vec::new());
                length = 0;
            }
            length += encoded;
            chunks.last_mut().expect("pushed above").push(literal);
        }
        for chunk in chunks {
            let list: Vec<&str> = chunk.iter().map(|literal| literal.as_str()).collect();
            let soql = format!(
                "SELECT {} FROM {sobject} WHERE {field} IN ({})",
                fields.join(", "),
                list.join(", ")
            );
            let mut path = resource_path("query", &soql);
            loop {
                let (json, answered_rate, answered_call) = self.call(Method::GET, &path, None).await?;
                (rate, call) = (answered_rate, answered_call);
                for record in json
                    .get("records")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(id) = record.get("Id").and_then(Value::as_str) else {
                        continue;
                    };
                    let values: std::collections::BTreeMap<String, String> = record
                        .as_object()
                        .map(|r| field_texts(r).collect())
                        .unwrap_or_default();
                    let key = fold(field_value(&values, field).unwrap_or_default());
                    by_value.entry(key).or_default().push(Found {
                        crm_id: id.to_string(),
                        values,
                    });
                }
                match json.get("nextRecordsUrl").and_then(Value::as_str) {
                    Some(next) if json.get("done").and_then(Value::as_bool) == Some(false) => {
                        path = next_records_path(next)?;
                    }
                    _ => break,
                }
            }
        }
        let matches = values
            .iter()
            .map(|value| by_value.get(&fold(value)).cloned().unwrap_or_default())
            .collect();
        Ok(FindResult { matches, rate, call })
    }

    fn merges_are_read(&self, object: &str) -> bool {
        mergeable(object)
    }

    async fn merges_since(
        &self,
        object: &str,
        since_ms: i64,
        next: Option<&str>,
    ) -> Result<MergePage, CrmError> {
        // The object goes into the query as it is: only Salesforce's own names do.
        if !mergeable(object) {
            return Err(CrmError::Rejected {
                call: "GET /queryAll".into(),
                status: 400,
                message: format!("Salesforce does not merge {object} records"),
            });
        }
        let path = match next {
            Some(next) => next_records_path(next)?,
            None => query_path(&format!(
                "SELECT Id, MasterRecordId, SystemModstamp, LastModifiedById FROM {object} \
                 WHERE IsDeleted = true AND MasterRecordId != null AND SystemModstamp > {} \
                 ORDER BY SystemModstamp",
                soql_datetime(since_ms)
            )),
        };
        let (json, rate, call) = self.call(Method::GET, &path, None).await?;
        let text = |record: &Value, name: &str| {
            record
                .get(name)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
                .map(str::to_string)
        };
        let merges = json
            .get("records")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|record| {
                Some(MergeSeen {
                    merged: text(record, "Id")?,
                    survivor: text(record, "MasterRecordId")?,
                    at_ms: crate::domain::values::instant_ms(&text(record, "SystemModstamp")?)?,
                    by: text(record, "LastModifiedById"),
                })
            })
            .collect();
        let next = (json.get("done").and_then(Value::as_bool) == Some(false))
            .then(|| text(&json, "nextRecordsUrl"))
            .flatten();
        Ok(MergePage {
            merges,
            next,
            rate,
            call,
        })
    }

    async fn survivor(&self, object: &str, crm_id: &str) -> Result<MergeLookup, CrmError> {
        // A merged record stays readable with `queryAll` while the recycle bin keeps it, naming
        // its master; a chain (a into b, b into c) is followed a few hops.
        let mut lookup = MergeLookup {
            survivor: None,
            rate: RateInfo::default(),
            call: format!("no CRM call: {crm_id} is no {object} id Salesforce merges"),
        };
        if !mergeable(object) {
            return Ok(lookup);
        }
        let mut at = crm_id.to_string();
        for _ in 0..SURVIVOR_HOPS {
            let Some(id) = soql_id(&at) else {
                break;
            };
            let soql = format!("SELECT Id, MasterRecordId, IsDeleted FROM {object} WHERE Id = {id}");
            let (json, rate, call) = match self.call(Method::GET, &query_path(&soql), None).await {
                Ok(answer) => answer,
                // A master found on an earlier hop is an answer; the write asks again later.
                Err(_) if lookup.survivor.is_some() => break,
                Err(error) => return Err(error),
            };
            (lookup.rate, lookup.call) = (rate, call);
            let record = json
                .get("records")
                .and_then(Value::as_array)
                .and_then(|records| records.first());
            let deleted = record
                .and_then(|r| r.get("IsDeleted"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let master = record
                .and_then(|r| r.get("MasterRecordId"))
                .and_then(Value::as_str)
                .filter(|master| !master.is_empty());
            match (deleted, master) {
                (true, Some(master)) => {
                    lookup.survivor = Some(master.to_string());
                    at = master.to_string();
                }
                // Alive, or out of the recycle bin already: the last master named (if any) is
                // where the record went.
                (false, _) => break,
                // A master deleted by a person, not merged on: nowhere to follow.
                (true, None) => {
                    lookup.survivor = None;
                    break;
                }
            }
        }
        Ok(lookup)
    }

    async fn read(
        &self,
        object: &str,
        crm_ids: &[String],
        properties: &[String],
    ) -> Result<ReadResult, CrmError> {
        let fields = if properties.is_empty() {
            "Id".to_string()
        } else {
            properties.join(",")
        };
        // The documented retrieve form: ids and fields in the body, not a 200-id URL.
        let body = json!({ "ids": crm_ids, "fields": fields.split(',').collect::<Vec<_>>() });
        let (json, rate, call) = self
            .call(
                Method::POST,
                &format!("/composite/sobjects/{object}"),
                Some(&body),
            )
            .await?;
        let found = json.as_array().map(Vec::as_slice).unwrap_or_default();
        let records = (0..crm_ids.len())
            .map(|index| {
                let record = found.get(index)?.as_object()?;
                Some(
                    field_texts(record)
                        .filter(|(name, _)| properties.is_empty() || properties.contains(name))
                        .collect(),
                )
            })
            .collect();
        Ok(ReadResult { records, rate, call })
    }

    async fn property_kinds(&self, object: &str) -> Result<PropertyKinds, CrmError> {
        let (json, rate, _) = self
            .call(Method::GET, &format!("/sobjects/{object}/describe"), None)
            .await?;
        let kinds = crm_http::property_kinds(json.get("fields"), |kind| match kind {
            "double" | "currency" | "percent" | "int" | "long" => ValueKind::Number,
            "boolean" => ValueKind::Bool,
            "date" => ValueKind::Date,
            "datetime" => ValueKind::DateTime,
            _ => ValueKind::Text,
        });
        Ok(PropertyKinds { kinds, rate })
    }

    fn holds_links(&self, via: &LinkVia) -> Result<(), String> {
        match via {
            LinkVia::Association => Err(
                "Salesforce links records by a lookup field (`field = \"AccountId\"`) or a junction object \
                 (`junction`, `from_field`, `to_field`, `labels_field`)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// A lookup field set on each `from` record, or a junction record per pair: found by its
    /// two fields and given the labels, or created with them.
    async fn link(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        let outcome = |pair: &LinkInput| pair.done();
        match &link.via {
            LinkVia::Association => Err(unsupported_link(self.name(), link)),
            LinkVia::Field(field) => {
                let records: Vec<Value> = pairs
                    .iter()
                    .map(|pair| {
                        record(
                            &link.from_object,
                            [
                                ("id".to_string(), pair.from_id.clone()),
                                (field.clone(), pair.to_id.clone()),
                            ],
                        )
                    })
                    .collect();
                let ids: Vec<String> = pairs.iter().map(|pair| pair.from_id.clone()).collect();
                let body = json!({ "allOrNone": false, "records": records });
                let (json, rate, call) = self
                    .call(Method::PATCH, "/composite/sobjects", Some(&body))
                    .await?;
                Ok(BatchResult {
                    outcomes: Self::results(&json, pairs.len(), Some(&ids)),
                    rate,
                    call,
                })
            }
            LinkVia::Junction {
                object,
                from_field,
                to_field,
                labels_field,
            } => {
                let rows = self.junction_rows(link, pairs).await?;
                let mut outcomes: Vec<Option<InputOutcome>> = vec![None; pairs.len()];
                let (mut creates, mut updates) = (Vec::new(), Vec::new());
                for (index, pair) in pairs.iter().enumerate() {
                    if pair.labels.iter().any(|label| label.contains(';')) {
                        outcomes[index] = Some(InputOutcome::Failed(InputError {
                            kind: FailureKind::Permanent,
                            code: "INVALID_LABEL".into(),
                            message: "a Salesforce multi-select value cannot hold `;`".into(),
                            existing_id: None,
                        }));
                        continue;
                    }
                    match rows.get(&(pair.from_id.clone(), pair.to_id.clone())) {
                        Some((row, held)) => {
                            let mut labels: Vec<String> = held
                                .iter()
                                .filter(|label| !pair.drop_labels.contains(label))
                                .cloned()
                                .collect();
                            for label in &pair.labels {
                                if !labels.contains(label) {
                                    labels.push(label.clone());
                                }
                            }
                            match labels_field {
                                Some(labels_field) if labels != *held => updates.push((
                                    index,
                                    record(
                                        object,
                                        [
                                            ("id".to_string(), row.clone()),
                                            (labels_field.clone(), labels.join(";")),
                                        ],
                                    ),
                                )),
                                _ => outcomes[index] = Some(outcome(pair)),
                            }
                        }
                        None => {
                            let mut fields = vec![
                                (from_field.clone(), pair.from_id.clone()),
                                (to_field.clone(), pair.to_id.clone()),
                            ];
                            if let Some(labels_field) =
                                labels_field.as_ref().filter(|_| !pair.labels.is_empty())
                            {
                                fields.push((labels_field.clone(), pair.labels.join(";")));
                            }
                            creates.push((index, record(object, fields)));
                        }
                    }
                }
                let (mut rate, mut call) = (
                    RateInfo::default(),
                    format!("no Salesforce write: the {object} records are as wanted"),
                );
                for (method, writes) in [(Method::POST, creates), (Method::PATCH, updates)] {
                    if writes.is_empty() {
                        continue;
                    }
                    let records: Vec<Value> = writes.iter().map(|(_, record)| record.clone()).collect();
                    let body = json!({ "allOrNone": false, "records": records });
                    let (json, answered_rate, answered_call) =
                        self.call(method, "/composite/sobjects", Some(&body)).await?;
                    (rate, call) = (answered_rate, answered_call);
                    for ((index, _), result) in writes.iter().zip(Self::results(&json, writes.len(), None)) {
                        outcomes[*index] = Some(match result {
                            InputOutcome::Done { .. } => outcome(&pairs[*index]),
                            // Made meanwhile by another attempt: the retry finds it and sets its labels.
                            InputOutcome::Failed(mut error) if error.code == "DUPLICATE_VALUE" => {
                                error.kind = FailureKind::Transient;
                                InputOutcome::Failed(error)
                            }
                            failed => failed,
                        });
                    }
                }
                Ok(BatchResult::decided(outcomes, rate, call))
            }
        }
    }

    /// The lookup field cleared where it still names the `to` record, or the pair's junction
    /// record deleted; a pair not linked is done already.
    async fn unlink(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        let done: Vec<InputOutcome> = pairs.iter().map(LinkInput::done).collect();
        // Only the pairs still linked are written to; each gets its own result.
        let (targets, records): (Vec<usize>, Vec<Value>) = match &link.via {
            LinkVia::Association => return Err(unsupported_link(self.name(), link)),
            LinkVia::Field(field) => {
                let ids: Vec<String> = pairs.iter().map(|pair| pair.from_id.clone()).collect();
                let read = self
                    .read(&link.from_object, &ids, std::slice::from_ref(field))
                    .await?;
                // A person may have moved the record elsewhere since: that link is theirs.
                pairs
                    .iter()
                    .zip(&read.records)
                    .enumerate()
                    .filter(|(_, (pair, values))| {
                        values
                            .as_ref()
                            .and_then(|values| field_value(values, field))
                            .is_some_and(|value| value == pair.to_id)
                    })
                    .map(|(index, (pair, _))| {
                        (
                            index,
                            json!({"attributes": {"type": link.from_object}, "id": pair.from_id, field.as_str(): null}),
                        )
                    })
                    .unzip()
            }
            LinkVia::Junction { .. } => {
                let rows = self.junction_rows(link, pairs).await?;
                pairs
                    .iter()
                    .enumerate()
                    .filter_map(|(index, pair)| {
                        rows.get(&(pair.from_id.clone(), pair.to_id.clone()))
                            .map(|(row, _)| (index, Value::String(row.clone())))
                    })
                    .unzip()
            }
        };
        if targets.is_empty() {
            return Ok(BatchResult {
                outcomes: done,
                rate: RateInfo::default(),
                call: "no Salesforce write: the pairs are not linked".into(),
            });
        }
        let (json, rate, call) = match &link.via {
            LinkVia::Junction { .. } => {
                let ids: Vec<&str> = records.iter().filter_map(Value::as_str).collect();
                let path = format!("/composite/sobjects?ids={}&allOrNone=false", ids.join(","));
                self.call(Method::DELETE, &path, None).await?
            }
            _ => {
                let body = json!({ "allOrNone": false, "records": records });
                self.call(Method::PATCH, "/composite/sobjects", Some(&body))
                    .await?
            }
        };
        let mut outcomes = done;
        for (index, outcome) in targets.iter().zip(Self::results(&json, targets.len(), None)) {
            outcomes[*index] = match outcome {
                InputOutcome::Done { .. } => pairs[*index].done(),
                // Gone already: what a removal wants.
                InputOutcome::Failed(error) if error.code == "ENTITY_IS_DELETED" => pairs[*index].done(),
                failed => failed,
            };
        }
        Ok(BatchResult { outcomes, rate, call })
    }

    async fn associate(
        &self,
        from: &str,
        to: &str,
        pairs: &[AssociationInput],
    ) -> Result<BatchResult, CrmError> {
        let (method, records): (Method, Vec<Value>) = match (from, to) {
            // An opportunity and a contact are linked by an OpportunityContactRole record.
            ("Opportunity", "Contact") => (
                Method::POST,
                pairs
                    .iter()
                    .map(|pair| {
                        record(
                            "OpportunityContactRole",
                            [
                                ("OpportunityId".to_string(), pair.from_id.clone()),
                                ("ContactId".to_string(), pair.to_id.clone()),
                            ],
                        )
                    })
                    .collect(),
            ),
            // A task names its contact in `WhoId`.
            ("Task", "Contact") => (
                Method::PATCH,
                pairs
                    .iter()
                    .map(|pair| {
                        record(
                            "Task",
                            [
                                ("id".to_string(), pair.from_id.clone()),
                                ("WhoId".to_string(), pair.to_id.clone()),
                            ],
                        )
                    })
                    .collect(),
            ),
            _ => {
                return Err(CrmError::Rejected {
                    call: "-".into(),
                    status: 400,
                    message: format!("Salesforce links {from} to {to} by no field crm-sync knows"),
                })
            }
        };
        let body = json!({ "allOrNone": false, "records": records });
        let (json, rate, call) = self.call(method, "/composite/sobjects", Some(&body)).await?;
        Ok(BatchResult {
            outcomes: Self::results(&json, pairs.len(), None),
            rate,
            call,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_limit_header_gives_the_days_budget_left() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "sforce-limit-info",
            HeaderValue::from_static("api-usage=10018/100000"),
        );
        let rate = rate_info(&headers);
        assert_eq!(rate.daily_max, Some(100_000));
        assert_eq!(rate.daily_remaining, Some(89_982));
        assert_eq!(rate.burst_remaining, None);
        headers.insert(
            "sforce-limit-info",
            HeaderValue::from_static("api-usage=25/5000; per-app-api-usage=17/250(appName=crm-sync)"),
        );
        let rate = rate_info(&headers);
        assert_eq!(
            (rate.daily_max, rate.daily_remaining),
            (Some(5_000), Some(233)),
            "the connected app's own cap is the nearer limit"
        );
        assert_eq!(rate_info(&HeaderMap::new()), RateInfo::default());
    }

    #[test]
    fn the_fields_of_a_refusal_are_named_for_grouping() {
        let message = |errors: Value| match save_result(&json!({"success": false, "errors": errors}), None) {
            InputOutcome::Failed(error) => error.message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            message(
                json!([{"statusCode": "INVALID_EMAIL_ADDRESS", "message": "Email: invalid email address: bob",
                            "fields": ["Email"]}])
            ),
            "Email: invalid email address: bob (fields: Email)"
        );
        assert_eq!(
            message(json!([{"statusCode": "REQUIRED_FIELD_MISSING",
                            "message": "Required fields are missing: [LastName, Company]",
                            "fields": ["LastName", "Company"]}])),
            "Required fields are missing: [LastName, Company] (fields: LastName, Company)"
        );
        assert_eq!(
            message(json!([{"statusCode": "UNKNOWN_EXCEPTION", "message": "oops", "fields": []}])),
            "oops"
        );
    }

    #[test]
    fn save_results_keep_their_ids_and_say_whether_a_retry_can_help() {
        let created = save_result(
            &json!({"id": "003A", "success": true, "errors": [], "created": true}),
            None,
        );
        assert_eq!(
            created,
            InputOutcome::Done {
                crm_id: "003A".into(),
                created: true
            }
        );
        let locked = save_result(
            &json!({"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked"}]}),
            None,
        );
        assert!(matches!(
            locked,
            InputOutcome::Failed(InputError {
                kind: FailureKind::Transient,
                ..
            })
        ));
        let bad = save_result(
            &json!({"success": false, "errors": [{"statusCode": "INVALID_EMAIL_ADDRESS", "message": "Email: invalid"}]}),
            None,
        );
        assert!(
            matches!(bad, InputOutcome::Failed(InputError { kind: FailureKind::Permanent, ref code, .. }) if code == "INVALID_EMAIL_ADDRESS")
        );
    }
}
