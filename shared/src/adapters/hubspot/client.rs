//! HubSpot's CRM v3 object API (and v4 associations) as a [`Crm`], over HTTPS with reqwest.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::adapters::crm_http;
use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, FailureKind, InputError, InputOutcome, RateInfo, ReadResult,
    ThrottlePolicy, UpdateInput, UpsertInput,
};
use crate::ports::Crm;

/// HubSpot's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";

/// A HubSpot account, reached with a private-app (or OAuth) access token.
#[derive(Clone)]
pub struct HubSpotClient {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
}

impl HubSpotClient {
    pub fn new(base_url: &str, token: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let http = crm_http::client(timeout)?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, RateInfo, Value, String), CrmError> {
        let call = format!("POST {path}");
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(self.token.expose_secret())
            .json(&body)
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
    let message = error_detail(error).unwrap_or_else(|| category.to_string());
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
        "CONFLICT" => (
            FailureKind::Conflict,
            message
                .split("Existing ID: ")
                .nth(1)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                .filter(|id| !id.is_empty()),
        ),
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
        let (_, rate, json, call) = self
            .post(&format!("/crm/v3/objects/{object}/batch/upsert"), body)
            .await?;
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
        let (_, rate, json, call) = self
            .post(&format!("/crm/v3/objects/{object}/batch/update"), body)
            .await?;
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
        let (_, rate, _, call) = self
            .post(&format!("/crm/v3/objects/{object}/batch/archive"), body)
            .await?;
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
        let (_, rate, json, call) = self
            .post(&format!("/crm/v3/objects/{object}/batch/read"), body)
            .await?;
        let mut found: HashMap<String, std::collections::BTreeMap<String, String>> = HashMap::new();
        for result in json
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = result.get("id").and_then(Value::as_str) else {
                continue;
            };
            let values = result
                .get("properties")
                .and_then(Value::as_object)
                .map(|map| {
                    map.iter()
                        .map(|(name, value)| {
                            (
                                name.clone(),
                                value.as_str().map(str::to_string).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.insert(id.to_string(), values);
        }
        let records = crm_ids.iter().map(|id| found.remove(id)).collect();
        Ok(ReadResult { records, rate, call })
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
        let (_, rate, json, call) = self
            .post(
                &format!("/crm/v4/associations/{from}/{to}/batch/associate/default"),
                body,
            )
            .await?;
        let positions: HashMap<(String, String), usize> = pairs
            .iter()
            .enumerate()
            .map(|(index, pair)| ((pair.from_id.clone(), pair.to_id.clone()), index))
            .collect();
        let mut outcomes: Vec<InputOutcome> = pairs
            .iter()
            .map(|pair| InputOutcome::Done {
                crm_id: pair.from_id.clone(),
                created: false,
            })
            .collect();
        // Only failures need mapping back: a 200 associates every pair.
        for error in json.get("errors").and_then(Value::as_array).into_iter().flatten() {
            let from = error.pointer("/context/fromObjectId/0").and_then(Value::as_str);
            let to = error.pointer("/context/toObjectId/0").and_then(Value::as_str);
            let index = from
                .zip(to)
                .and_then(|(from, to)| positions.get(&(from.to_string(), to.to_string())));
            if let Some(&index) = index {
                outcomes[index] = InputOutcome::Failed(input_error(error));
            }
        }
        Ok(BatchResult { outcomes, rate, call })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
