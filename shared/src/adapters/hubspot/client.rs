//! HubSpot's date-versioned CRM API (objects, associations, properties) as a [`Crm`], over HTTPS
//! with reqwest.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::adapters::crm_http;
use crate::domain::adoption::Found;
use crate::domain::crm::{
    existing_id, AssociationInput, BatchResult, CrmError, CrmLink, FailureKind, FindResult, InputError,
    InputOutcome, LinkInput, MergeLookup, PropertyKinds, RateInfo, ReadResult, ThrottlePolicy, UpdateInput,
    UpsertInput, ValueKind,
};
use crate::domain::mapping::LinkVia;
use crate::ports::{unsupported_link, Crm};

/// HubSpot's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";

/// A HubSpot account, reached with a private-app (or OAuth) access token.
#[derive(Clone)]
pub struct HubSpotClient {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    version: ApiVersion,
    /// (from, to) → association label (`None`: the unlabelled default) → (category, type id),
    /// read once per object pair and again when a label is not found.
    labels: std::sync::Arc<std::sync::Mutex<HashMap<(String, String), LabelTypes>>>,
}

type LabelTypes = HashMap<Option<String>, (String, u64)>;

impl HubSpotClient {
    /// A client on the default API version ([`ApiVersion::DEFAULT`]).
    pub fn new(base_url: &str, token: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let http = crm_http::client(timeout)?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            version: ApiVersion::DEFAULT,
            labels: std::sync::Arc::default(),
        })
    }

    /// The same client on another API version.
    pub fn with_api_version(mut self, version: ApiVersion) -> Self {
        self.version = version;
        self
    }

    fn associations_path(&self, from: &str, to: &str) -> String {
        format!("/crm/associations/{}/{from}/{to}", self.version)
    }

    fn labels_path(&self, from: &str, to: &str) -> String {
        format!("{}/labels", self.associations_path(from, to))
    }

    /// The association types from `from` to `to` by label, read again when one of `wanted` is
    /// not among those known (a label defined since).
    async fn label_types(&self, from: &str, to: &str, wanted: &[&String]) -> Result<LabelTypes, CrmError> {
        let key = (from.to_string(), to.to_string());
        let known = self
            .labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(known) = known.filter(|known| {
            wanted
                .iter()
                .all(|label| known.contains_key(&Some((*label).clone())))
        }) {
            return Ok(known);
        }
        let (_, _, json, _) = self
            .send(reqwest::Method::GET, &self.labels_path(from, to), None)
            .await?;
        let mut types = LabelTypes::new();
        for result in json
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(category), Some(id)) = (
                result.get("category").and_then(Value::as_str),
                result.get("typeId").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let label = result.get("label").and_then(Value::as_str).map(str::to_string);
            // Of the unlabelled types, HubSpot's own is the default one.
            if label.is_none() && category != "HUBSPOT_DEFINED" && types.contains_key(&None) {
                continue;
            }
            types.insert(label, (category.to_string(), id));
        }
        self.labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, types.clone());
        Ok(types)
    }

    fn objects_path(&self, object: &str, action: &str) -> String {
        format!("/crm/objects/{}/{object}/batch/{action}", self.version)
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, RateInfo, Value, String), CrmError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, RateInfo, Value, String), CrmError> {
        self.send_reading(method, path, body, false).await
    }

    /// A batch read: HubSpot answers 404 (`OBJECT_NOT_FOUND`) when none of the ids exists,
    /// which reads as no results rather than as a refused call.
    async fn batch_read(&self, object: &str, body: Value) -> Result<(RateInfo, Value, String), CrmError> {
        let (_, rate, json, call) = self
            .send_reading(
                reqwest::Method::POST,
                &self.objects_path(object, "read"),
                Some(body),
                true,
            )
            .await?;
        Ok((rate, json, call))
    }

    async fn send_reading(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        none_found_is_empty: bool,
    ) -> Result<(StatusCode, RateInfo, Value, String), CrmError> {
        let call = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(self.token.expose_secret());
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| crm_http::unreached(&call, "HubSpot", error))?;
        let status = response.status();
        let rate = rate_info(response.headers());
        let retry_after = crm_http::seconds(response.headers(), "retry-after");
        let call = format!("{call} -> {}", status.as_u16());
        let text = crm_http::text(&call, response).await?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.chars().take(500).collect()))
        };
        let message = json
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        match status.as_u16() {
            200..=299 => Ok((status, rate, json, call)),
            404 if none_found_is_empty
                && json.get("category").and_then(Value::as_str) == Some("OBJECT_NOT_FOUND") =>
            {
                Ok((status, rate, json!({ "status": "COMPLETE", "results": [] }), call))
            }
            429 => {
                let policy = match json.get("policyName").and_then(Value::as_str) {
                    Some("DAILY") => ThrottlePolicy::Daily,
                    _ => ThrottlePolicy::Burst,
                };
                Err(CrmError::Throttled {
                    policy,
                    retry_after,
                    message,
                    rate,
                })
            }
            // 423: locked, retry after a moment; 477: migration in progress; 5xx and Cloudflare's 52x.
            423 | 477 | 500..=599 => Err(CrmError::Transient { call, message }),
            // A bad token does not fix itself, but a rotation may: retried like an outage, so that
            // the messages reach the dead-letter queue only after the retry budget.
            401 | 403 => Err(CrmError::Transient {
                call,
                message: format!("authentication failed: {message}"),
            }),
            code => Err(CrmError::Rejected {
                call,
                status: code,
                message: error_detail(&json).unwrap_or(message),
            }),
        }
    }

    /// Maps results and errors of a batch response back to the inputs, by position.
    fn outcomes(json: &Value, count: usize, index_of: impl Fn(&Value) -> Option<usize>) -> Vec<InputOutcome> {
        let mut outcomes: Vec<Option<InputOutcome>> = vec![None; count];
        for result in json
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(index), Some(id)) = (index_of(result), result.get("id").and_then(Value::as_str)) else {
                continue;
            };
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = Some(InputOutcome::Done {
                    crm_id: id.to_string(),
                    created: result.get("new").and_then(Value::as_bool).unwrap_or(false),
                });
            }
        }
        for error in json.get("errors").and_then(Value::as_array).into_iter().flatten() {
            let indexes: Vec<usize> = error
                .pointer("/context/objectWriteTraceId")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|trace| trace.as_str()?.parse().ok())
                .collect();
            for index in indexes {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Some(InputOutcome::Failed(input_error(error)));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    InputOutcome::Failed(InputError {
                        kind: FailureKind::Transient,
                        code: "NOT_REPORTED".to_string(),
                        message: "HubSpot's response did not report this input".to_string(),
                        existing_id: None,
                    })
                })
            })
            .collect()
    }
}

/// A HubSpot API version: the date-versioned API (`2026-03`), one release each March and
/// September, each supported for 18 months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersion {
    year: u16,
    month: u8,
}

impl ApiVersion {
    /// The version crm-sync is built and tested against.
    pub const DEFAULT: ApiVersion = ApiVersion { year: 2026, month: 3 };

    /// Reads `YYYY-03` or `YYYY-09`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("`{text}` is not a HubSpot API version: expected YYYY-03 or YYYY-09, e.g. 2026-03");
        let (year, month) = text.trim().split_once('-').ok_or_else(invalid)?;
        let year: u16 = year.parse().map_err(|_| invalid())?;
        let month: u8 = month.parse().map_err(|_| invalid())?;
        if !(2026..=2099).contains(&year) || !(month == 3 || month == 9) || text.trim().len() != 7 {
            return Err(invalid());
        }
        Ok(Self { year, month })
    }

    /// The first month HubSpot no longer supports this version (`(year, month)`): 18 months on.
    pub fn end_of_support(self) -> (u16, u8) {
        let months = u32::from(self.year) * 12 + u32::from(self.month) - 1 + 18;
        ((months / 12) as u16, (months % 12 + 1) as u8)
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// HubSpot answers a batch whose input collides with an existing record's unique value (an
/// email) with a 409 for the whole call. For a call of one input that is that input's conflict,
/// with the existing record's id, so that it can be adopted; a larger call is halved by the sync
/// until it is one.
fn conflict_of_one(error: CrmError, inputs: usize) -> Result<BatchResult, CrmError> {
    match error {
        CrmError::Rejected {
            call,
            status: 409,
            message,
        } if inputs == 1 => {
            let existing_id = existing_id(&message);
            match existing_id {
                Some(existing_id) => Ok(BatchResult {
                    outcomes: vec![InputOutcome::Failed(InputError {
                        kind: FailureKind::Conflict,
                        code: "CONFLICT".to_string(),
                        message,
                        existing_id: Some(existing_id),
                    })],
                    rate: RateInfo::default(),
                    call,
                }),
                // A conflict naming no record cannot be adopted; another try may name it.
                None => Err(CrmError::Transient { call, message }),
            }
        }
        other => Err(other),
    }
}

/// A property value as text, whatever JSON type HubSpot used for it.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => other.to_string(),
    }
}

fn header_number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn rate_info(headers: &HeaderMap) -> RateInfo {
    RateInfo {
        burst_max: header_number(headers, "x-hubspot-ratelimit-max"),
        burst_remaining: header_number(headers, "x-hubspot-ratelimit-remaining"),
        burst_interval_ms: header_number(headers, "x-hubspot-ratelimit-interval-milliseconds"),
        daily_max: header_number(headers, "x-hubspot-ratelimit-daily"),
        daily_remaining: header_number(headers, "x-hubspot-ratelimit-daily-remaining"),
    }
}

/// The most specific message of a HubSpot error body.
fn error_detail(error: &Value) -> Option<String> {
    let top = error.get("message").and_then(Value::as_str)?;
    let details: Vec<&str> = error
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|detail| detail.get("message").and_then(Value::as_str))
        // HubSpot often repeats its message in the details: said once.
        .filter(|detail| !top.contains(detail))
        .collect();
    Some(if details.is_empty() {
        top.to_string()
    } else {
        format!("{top} ({})", details.join("; "))
    })
}

fn input_error(error: &Value) -> InputError {
    let category = error.get("category").and_then(Value::as_str).unwrap_or("UNKNOWN");
    let code = error
        .pointer("/errors/0/code")
        .and_then(Value::as_str)
        .unwrap_or(category)
        .to_string();
    let mut message = error_detail(error).unwrap_or_else(|| category.to_string());
    // The property, where the message does not name it: failures are grouped by it.
    if let Some(property) = error
        .pointer("/errors/0/context/propertyName/0")
        .and_then(Value::as_str)
        .filter(|property| !property.is_empty() && !message.contains(&format!("\"{property}\"")))
    {
        message.push_str(&format!(" (property {property})"));
    }
    let status: u16 = error
        .get("status")
        .and_then(|status| {
            status
                .as_str()
                .and_then(|s| s.parse().ok())
                .or(status.as_u64().map(|n| n as u16))
        })
        .unwrap_or(400);
    let (kind, existing_id) = match category {
        "CONFLICT" => (FailureKind::Conflict, existing_id(&message)),
        "RATE_LIMITS" => (FailureKind::Transient, None),
        _ if status >= 500 || status == 423 => (FailureKind::Transient, None),
        _ => (FailureKind::Permanent, None),
    };
    InputError {
        kind,
        code,
        message,
        existing_id,
    }
}

fn trace_index(value: &Value) -> Option<usize> {
    value.get("objectWriteTraceId")?.as_str()?.parse().ok()
}

/// The records of a batch read's `results`: id and property values as text.
fn records_read(json: &Value) -> impl Iterator<Item = (String, BTreeMap<String, String>)> + '_ {
    json.get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|result| {
            let id = result.get("id").and_then(Value::as_str)?;
            let values = result
                .get("properties")
                .and_then(Value::as_object)
                .map(|map| {
                    map.iter()
                        .map(|(name, value)| (name.clone(), scalar_text(value)))
                        .collect()
                })
                .unwrap_or_default();
            Some((id.to_string(), values))
        })
}

#[async_trait]
impl Crm for HubSpotClient {
    fn name(&self) -> &'static str {
        "hubspot"
    }

    fn max_batch(&self) -> usize {
        100
    }

    async fn upsert(
        &self,
        object: &str,
        id_property: &str,
        inputs: &[UpsertInput],
    ) -> Result<BatchResult, CrmError> {
        let body = json!({
            "inputs": inputs.iter().enumerate().map(|(index, input)| json!({
                "idProperty": id_property,
                "id": input.key,
                "properties": input.properties,
                "objectWriteTraceId": index.to_string(),
            })).collect::<Vec<_>>()
        });
        let path = self.objects_path(object, "upsert");
        let (_, rate, json, call) = match self.post(&path, body).await {
            Ok(answer) => answer,
            Err(error) => return conflict_of_one(error, inputs.len()),
        };
        let positions: HashMap<&str, usize> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| (input.key.as_str(), index))
            .collect();
        let outcomes = Self::outcomes(&json, inputs.len(), |result| {
            trace_index(result).or_else(|| {
                let key = result.pointer(&format!("/properties/{id_property}"))?.as_str()?;
                positions.get(key).copied()
            })
        });
        Ok(BatchResult { outcomes, rate, call })
    }

    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError> {
        let body = json!({
            "inputs": inputs.iter().enumerate().map(|(index, input)| json!({
                "id": input.crm_id,
                "properties": input.properties,
                "objectWriteTraceId": index.to_string(),
            })).collect::<Vec<_>>()
        });
        let path = self.objects_path(object, "update");
        let (_, rate, json, call) = match self.post(&path, body).await {
            Ok(answer) => answer,
            Err(error) => return conflict_of_one(error, inputs.len()),
        };
        let positions: HashMap<&str, usize> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| (input.crm_id.as_str(), index))
            .collect();
        let outcomes = Self::outcomes(&json, inputs.len(), |result| {
            trace_index(result).or_else(|| positions.get(result.get("id")?.as_str()?).copied())
        });
        Ok(BatchResult { outcomes, rate, call })
    }

    async fn archive(&self, object: &str, crm_ids: &[String]) -> Result<BatchResult, CrmError> {
        let body = json!({ "inputs": crm_ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() });
        let (_, rate, _, call) = self.post(&self.objects_path(object, "archive"), body).await?;
        // 204: archive is all or nothing, and archiving an archived record is not an error.
        let outcomes = crm_ids
            .iter()
            .map(|id| InputOutcome::Done {
                crm_id: id.clone(),
                created: false,
            })
            .collect();
        Ok(BatchResult { outcomes, rate, call })
    }

    async fn survivor(&self, object: &str, crm_id: &str) -> Result<MergeLookup, CrmError> {
        // HubSpot reads a merged-away id as the record that survived the merge, under its own id.
        let body = json!({ "inputs": [{ "id": crm_id }], "properties": [] });
        let (rate, json, call) = self.batch_read(object, body).await?;
        let survivor = json
            .get("results")
            .and_then(Value::as_array)
            .and_then(|results| results.first())
            .and_then(|result| result.get("id"))
            .and_then(Value::as_str)
            .filter(|id| *id != crm_id)
            .map(str::to_string);
        Ok(MergeLookup { survivor, rate, call })
    }

    async fn erase(&self, object: &str, crm_id: &str) -> Result<BatchResult, CrmError> {
        if object != "contacts" {
            return self.archive(object, &[crm_id.to_string()]).await;
        }
        let path = format!("/crm/objects/{}/contacts/gdpr-delete", self.version);
        let done = |rate, call| BatchResult {
            outcomes: vec![InputOutcome::Done {
                crm_id: crm_id.to_string(),
                created: false,
            }],
            rate,
            call,
        };
        match self.post(&path, json!({ "objectId": crm_id })).await {
            // 204; a contact that is not there (erased or merged away already) is erased too.
            Ok((_, rate, _, call)) => Ok(done(rate, call)),
            Err(CrmError::Rejected {
                status: 404, call, ..
            }) => Ok(done(RateInfo::default(), call)),
            Err(error) => Err(error),
        }
    }

    async fn read(
        &self,
        object: &str,
        crm_ids: &[String],
        properties: &[String],
    ) -> Result<ReadResult, CrmError> {
        let body = json!({
            "inputs": crm_ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
            "properties": properties,
        });
        let (rate, json, call) = self.batch_read(object, body).await?;
        let mut found: HashMap<String, BTreeMap<String, String>> = records_read(&json).collect();
        let records = crm_ids.iter().map(|id| found.remove(id)).collect();
        Ok(ReadResult { records, rate, call })
    }

    async fn find(
        &self,
        object: &str,
        property: &str,
        values: &[String],
        properties: &[String],
    ) -> Result<FindResult, CrmError> {
        // A batch read by a unique property (`idProperty`): the app's id property, or a
        // contact's email. HubSpot keeps emails lower-cased (app ids as they are), and answers
        // each record once.
        let fold = |value: &str| {
            if property == "email" {
                value.to_lowercase()
            } else {
                value.to_string()
            }
        };
        let mut wanted: Vec<String> = properties.to_vec();
        if !wanted.iter().any(|p| p == property) {
            wanted.push(property.to_string());
        }
        let mut unique: Vec<&String> = values.iter().collect();
        unique.sort();
        unique.dedup();
        let body = json!({
            "idProperty": property,
            "inputs": unique.iter().map(|value| json!({ "id": value })).collect::<Vec<_>>(),
            "properties": wanted,
        });
        let (rate, json, call) = self.batch_read(object, body).await?;
        let mut by_value: HashMap<String, Vec<Found>> = HashMap::new();
        for (crm_id, values) in records_read(&json) {
            let key = values.get(property).cloned().unwrap_or_default();
            by_value
                .entry(fold(&key))
                .or_default()
                .push(Found { crm_id, values });
        }
        let matches = values
            .iter()
            .map(|value| by_value.get(&fold(value)).cloned().unwrap_or_default())
            .collect();
        Ok(FindResult { matches, rate, call })
    }

    async fn associate(
        &self,
        from: &str,
        to: &str,
        pairs: &[AssociationInput],
    ) -> Result<BatchResult, CrmError> {
        let body = json!({
            "inputs": pairs.iter().map(|pair| json!({
                "from": { "id": pair.from_id },
                "to": { "id": pair.to_id },
            })).collect::<Vec<_>>()
        });
        let path = format!(
            "/crm/associations/{}/{from}/{to}/batch/associate/default",
            self.version
        );
        let (_, rate, json, call) = self.post(&path, body).await?;
        Ok(BatchResult {
            outcomes: association_outcomes(&json, pairs),
            rate,
            call,
        })
    }

    fn holds_links(&self, via: &LinkVia) -> Result<(), String> {
        match via {
            LinkVia::Association => Ok(()),
            _ => Err(
                "HubSpot links records by associations (with labels): leave out `field` and `junction`"
                    .into(),
            ),
        }
    }

    /// `batch/create` with the default type and each label's type; the labels crm-sync put on
    /// a pair before and no longer wants come off with `batch/labels/archive`.
    async fn link(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        if link.via != LinkVia::Association {
            return Err(unsupported_link(self.name(), link));
        }
        let (from, to) = (link.from_object.as_str(), link.to_object.as_str());
        let wanted: Vec<&String> = pairs.iter().flat_map(|pair| &pair.labels).collect();
        let types = self.label_types(from, to, &wanted).await?;
        let Some(default) = types.get(&None).cloned() else {
            return Err(CrmError::Rejected {
                call: format!("GET {}", self.labels_path(from, to)),
                status: 200,
                message: format!("HubSpot lists no default association type from {from} to {to}"),
            });
        };
        let spec = |(category, id): &(String, u64)| json!({"associationCategory": category, "associationTypeId": id});
        let mut outcomes: Vec<Option<InputOutcome>> = vec![None; pairs.len()];
        let (mut creates, mut created_pairs, mut drops) = (Vec::new(), Vec::new(), Vec::new());
        for (index, pair) in pairs.iter().enumerate() {
            if let Some(unknown) = pair
                .labels
                .iter()
                .find(|label| !types.contains_key(&Some((*label).clone())))
            {
                outcomes[index] = Some(InputOutcome::Failed(InputError {
                    kind: FailureKind::Permanent,
                    code: "UNKNOWN_LABEL".into(),
                    message: format!(
                        "HubSpot has no association label `{unknown}` from {from} to {to}: define it in HubSpot \
                         (the object's association settings) and re-sync"
                    ),
                    existing_id: None,
                }));
                continue;
            }
            let mut specs = vec![spec(&default)];
            specs.extend(
                pair.labels
                    .iter()
                    .filter_map(|label| types.get(&Some(label.clone())))
                    .map(spec),
            );
            creates.push(json!({"from": {"id": pair.from_id}, "to": {"id": pair.to_id}, "types": specs}));
            created_pairs.push((
                index,
                AssociationInput {
                    from_id: pair.from_id.clone(),
                    to_id: pair.to_id.clone(),
                },
            ));
            let dropped: Vec<Value> = pair
                .drop_labels
                .iter()
                .filter_map(|label| types.get(&Some(label.clone())))
                .map(spec)
                .collect();
            if !dropped.is_empty() {
                drops.push(json!({"from": {"id": pair.from_id}, "to": {"id": pair.to_id}, "types": dropped}));
            }
        }
        let mut rate = RateInfo::default();
        let mut call = String::from("no HubSpot call: no pair to link");
        if !creates.is_empty() {
            let path = format!("{}/batch/create", self.associations_path(from, to));
            let (_, created_rate, json, created_call) =
                self.post(&path, json!({ "inputs": creates })).await?;
            let inputs: Vec<AssociationInput> = created_pairs.iter().map(|(_, pair)| pair.clone()).collect();
            for ((index, _), outcome) in created_pairs.iter().zip(association_outcomes(&json, &inputs)) {
                outcomes[*index] = Some(outcome);
            }
            (rate, call) = (created_rate, created_call);
        }
        if !drops.is_empty() {
            let path = format!("{}/batch/labels/archive", self.associations_path(from, to));
            let (_, dropped_rate, _, dropped_call) = self.post(&path, json!({ "inputs": drops })).await?;
            rate = dropped_rate;
            call = format!("{call}; {dropped_call}");
        }
        Ok(BatchResult::decided(outcomes, rate, call))
    }

    /// `batch/archive`: every association type between each pair goes.
    async fn unlink(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        if link.via != LinkVia::Association {
            return Err(unsupported_link(self.name(), link));
        }
        let inputs: Vec<Value> = pairs
            .iter()
            .map(|pair| json!({"from": {"id": pair.from_id}, "to": [{"id": pair.to_id}]}))
            .collect();
        let path = format!(
            "{}/batch/archive",
            self.associations_path(&link.from_object, &link.to_object)
        );
        let (_, rate, _, call) = self.post(&path, json!({ "inputs": inputs })).await?;
        Ok(BatchResult {
            outcomes: pairs.iter().map(|pair| pair.done()).collect(),
            rate,
            call,
        })
    }

    async fn property_kinds(&self, object: &str) -> Result<PropertyKinds, CrmError> {
        let path = format!("/crm/properties/{}/{object}", self.version);
        let (_, rate, json, _) = match self.send(reqwest::Method::GET, &path, None).await {
            Ok(answer) => answer,
            // Reading property definitions takes the `crm.schemas.{object}.read` scope, which a
            // token made for object reads and writes may lack: the standard properties' types
            // are known, so they still compare by meaning.
            Err(CrmError::Transient { message, .. }) if message.starts_with("authentication failed") => {
                tracing::warn!(object, %message, "HubSpot refused the property definitions (grant crm.schemas.{object}.read); comparing the standard properties by their known types");
                return Ok(PropertyKinds {
                    kinds: standard_kinds(),
                    rate: RateInfo::default(),
                });
            }
            Err(error) => return Err(error),
        };
        let kinds = crm_http::property_kinds(json.get("results"), |kind| match kind {
            "number" => ValueKind::Number,
            "bool" => ValueKind::Bool,
            "date" => ValueKind::Date,
            "datetime" => ValueKind::DateTime,
            _ => ValueKind::Text,
        });
        Ok(PropertyKinds { kinds, rate })
    }
}

/// Types of HubSpot's standard properties crm-sync's mappings use, for when the property
/// definitions cannot be read.
fn standard_kinds() -> BTreeMap<String, ValueKind> {
    [
        ("closedate", ValueKind::DateTime),
        ("hs_timestamp", ValueKind::DateTime),
        ("createdate", ValueKind::DateTime),
        ("lastmodifieddate", ValueKind::DateTime),
        ("amount", ValueKind::Number),
        ("hs_deal_stage_probability", ValueKind::Number),
    ]
    .into_iter()
    .map(|(name, kind)| (name.to_string(), kind))
    .collect()
}

/// An association is done when HubSpot's results name its pair (`from.id`, `to.id`): the error
/// objects of a failed one carry no documented key to map them back by, so every pair the results
/// leave out failed, with the errors' messages as the reason.
fn association_outcomes(json: &Value, pairs: &[AssociationInput]) -> Vec<InputOutcome> {
    let id = |value: Option<&Value>| value.map(scalar_text).unwrap_or_default();
    let done: std::collections::HashSet<(String, String)> = json
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|result| {
            // `batch/associate/default` names a pair as `from.id`/`to.id`, `batch/create` as
            // `fromObjectId`/`toObjectId`.
            (
                id(result.pointer("/from/id").or_else(|| result.get("fromObjectId"))),
                id(result.pointer("/to/id").or_else(|| result.get("toObjectId"))),
            )
        })
        .collect();
    let errors: Vec<&Value> = json
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let missing = pairs
        .iter()
        .filter(|pair| !done.contains(&(pair.from_id.clone(), pair.to_id.clone())))
        .count();
    pairs
        .iter()
        .map(|pair| {
            if done.contains(&(pair.from_id.clone(), pair.to_id.clone())) {
                return pair.done();
            }
            // The one error that names either id; else the only error when only this pair is
            // missing. Anything less certain is reported as transient: a retry finds out.
            let naming: Vec<&&Value> = errors
                .iter()
                .filter(|error| {
                    let text = error.to_string();
                    text.contains(&format!("\"{}\"", pair.from_id))
                        || text.contains(&format!("\"{}\"", pair.to_id))
                })
                .collect();
            let error = match (naming.as_slice(), errors.as_slice()) {
                ([one], _) => Some(**one),
                ([], [only]) if missing == 1 => Some(*only),
                _ => None,
            };
            InputOutcome::Failed(match error {
                Some(error) => input_error(error),
                None => InputError {
                    kind: FailureKind::Transient,
                    code: "NOT_REPORTED".to_string(),
                    message: match errors.first() {
                        Some(first) => format!(
                            "HubSpot did not associate this pair; its errors: {}",
                            error_detail(first).unwrap_or_default()
                        ),
                        None => "HubSpot's response did not report this association".to_string(),
                    },
                    existing_id: None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubspots_message_repeated_in_its_details_is_said_once() {
        let error = json!({"message": "Property \"shoe\" does not exist", "category": "VALIDATION_ERROR",
                           "errors": [{"message": "Property \"shoe\" does not exist", "code": "PROPERTY_DOESNT_EXIST"}]});
        assert_eq!(
            error_detail(&error).as_deref(),
            Some("Property \"shoe\" does not exist")
        );
        let more = json!({"message": "Property values were not valid",
                          "errors": [{"message": "Email address x is invalid"}]});
        assert_eq!(
            error_detail(&more).as_deref(),
            Some("Property values were not valid (Email address x is invalid)")
        );
    }

    #[test]
    fn the_property_of_a_refused_value_is_named_once_for_grouping() {
        let named = |error: Value| input_error(&error).message;
        let unnamed = json!({"category": "VALIDATION_ERROR", "message": "Property values were not valid",
                             "errors": [{"message": "Email address x is invalid", "code": "INVALID_EMAIL",
                                         "context": {"propertyName": ["email"]}}]});
        assert_eq!(
            named(unnamed),
            "Property values were not valid (Email address x is invalid) (property email)"
        );
        let already = json!({"category": "VALIDATION_ERROR", "message": "Property \"shoe\" does not exist",
                             "errors": [{"code": "PROPERTY_DOESNT_EXIST", "context": {"propertyName": ["shoe"]}}]});
        assert_eq!(named(already), "Property \"shoe\" does not exist");
    }

    #[test]
    fn a_partial_result_maps_back_to_inputs_by_trace_id() {
        let body = json!({
            "status": "COMPLETE",
            "results": [{"id": "11", "new": true, "objectWriteTraceId": "0", "properties": {}}],
            "numErrors": 1,
            "errors": [{
                "status": "error", "category": "VALIDATION_ERROR",
                "message": "Property values were not valid",
                "errors": [{"message": "Email address x is invalid", "code": "INVALID_EMAIL"}],
                "context": {"objectWriteTraceId": ["2"]}
            }]
        });
        let outcomes = HubSpotClient::outcomes(&body, 3, trace_index);
        assert_eq!(
            outcomes[0],
            InputOutcome::Done {
                crm_id: "11".into(),
                created: true
            }
        );
        assert!(matches!(&outcomes[1], InputOutcome::Failed(e) if e.kind == FailureKind::Transient));
        match &outcomes[2] {
            InputOutcome::Failed(error) => {
                assert_eq!(error.kind, FailureKind::Permanent);
                assert_eq!(error.code, "INVALID_EMAIL");
                assert_eq!(
                    error.message,
                    "Property values were not valid (Email address x is invalid)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_association_takes_only_an_error_certainly_its_own_else_a_transient_one() {
        let pair = |from: &str, to: &str| AssociationInput {
            from_id: from.into(),
            to_id: to.into(),
        };
        let pairs = [pair("1", "2"), pair("3", "4"), pair("5", "6")];
        let answer = json!({
            "status": "COMPLETE",
            "results": [{"from": {"id": "1"}, "to": {"id": "2"}, "associationSpec": {}}],
            "errors": [
                {"status": "error", "category": "VALIDATION_ERROR", "message": "No contacts with ID 4 exist", "context": {"ids": ["3", "4"]}},
                {"status": "error", "category": "VALIDATION_ERROR", "message": "something else", "context": {}}
            ]
        });
        let outcomes = association_outcomes(&answer, &pairs);
        assert!(matches!(outcomes[0], InputOutcome::Done { .. }));
        assert!(
            matches!(&outcomes[1], InputOutcome::Failed(e) if e.kind == FailureKind::Permanent),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[2], InputOutcome::Failed(e) if e.kind == FailureKind::Transient && e.code == "NOT_REPORTED"),
            "two errors, none naming it: not blamed on either: {outcomes:?}"
        );

        let one_missing = json!({"results": [
            {"from": {"id": "1"}, "to": {"id": "2"}}, {"from": {"id": "3"}, "to": {"id": "4"}}
        ], "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "bad pair"}]});
        let outcomes = association_outcomes(&one_missing, &pairs);
        assert!(
            matches!(&outcomes[2], InputOutcome::Failed(e) if e.kind == FailureKind::Permanent),
            "{outcomes:?}"
        );
    }

    #[test]
    fn a_whole_call_conflict_naming_no_record_is_retried_not_refused() {
        let error = CrmError::Rejected {
            call: "POST x -> 409".into(),
            status: 409,
            message: "Conflict".into(),
        };
        assert!(matches!(
            conflict_of_one(error, 1),
            Err(CrmError::Transient { .. })
        ));
    }

    #[test]
    fn a_conflict_carries_the_existing_record_id() {
        let error = input_error(&json!({
            "status": "error", "category": "CONFLICT",
            "message": "Contact already exists. Existing ID: 123"
        }));
        assert_eq!(error.kind, FailureKind::Conflict);
        assert_eq!(error.existing_id.as_deref(), Some("123"));
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-hubspot-ratelimit-max", "190".parse().unwrap());
        headers.insert("x-hubspot-ratelimit-remaining", "12".parse().unwrap());
        headers.insert("x-hubspot-ratelimit-daily-remaining", "5000".parse().unwrap());
        let rate = rate_info(&headers);
        assert_eq!(rate.burst_max, Some(190));
        assert_eq!(rate.burst_remaining, Some(12));
        assert_eq!(rate.daily_remaining, Some(5000));
        assert_eq!(rate.daily_max, None);
    }
}
