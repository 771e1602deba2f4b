//! What the CRM clients share over HTTP (reqwest): one way to set the client up, and what a call
//! that got no usable answer becomes.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::domain::crm::CrmError;

/// A client with the call's whole-request `timeout`, a short connect timeout and our user agent.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("crm-sync/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// The `{name, type}` entries of a CRM's property list, each with the kind of value crm-sync
/// compares it as (`kind` reads the CRM's type name; an entry without both is skipped).
pub fn property_kinds(
    list: Option<&serde_json::Value>,
    kind: impl Fn(&str) -> crate::domain::crm::ValueKind,
) -> std::collections::BTreeMap<String, crate::domain::crm::ValueKind> {
    list.and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|property| {
            let name = property.get("name")?.as_str()?;
            Some((name.to_string(), kind(property.get("type")?.as_str()?)))
        })
        .collect()
}

/// A request that got no answer: a timeout or a connection failure, both worth a retry.
pub fn unreached(call: &str, crm: &str, error: reqwest::Error) -> CrmError {
    CrmError::Transient {
        call: call.to_string(),
        message: if error.is_timeout() {
            "timed out".to_string()
        } else {
            format!("could not reach {crm}: {}", error.without_url())
        },
    }
}

/// The response body as text; a body that broke off is worth a retry.
pub async fn text(call: &str, response: reqwest::Response) -> Result<String, CrmError> {
    response.text().await.map_err(|error| CrmError::Transient {
        call: call.to_string(),
        message: format!("the response broke off: {}", error.without_url()),
    })
}

/// A header holding a whole number of seconds (`Retry-After`, `x-ratelimit-reset`).
pub fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
