//! Turns a plain HTTP request into the event API Gateway (HTTP API, payload format 2.0) gives a
//! Lambda, and reads it back with the Lambda runtime's own deserializer, so that handlers run
//! locally on exactly what they get deployed.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderMap;
use lambda_http::request::LambdaRequest;
use serde_json::{json, Map, Value};

/// Content types API Gateway passes as text; anything else arrives base64-encoded.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/javascript"
        )
}

/// The API Gateway v2 event for a request (`target` is the raw path and query as sent).
pub fn event(method: &str, target: &str, headers: &HeaderMap, body: &[u8], peer: SocketAddr) -> Value {
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let mut header_map = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == http::header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(|cookie| Value::String(cookie.trim().to_string())),
            );
            continue;
        }
        // Payload 2.0 joins repeated headers with commas.
        match header_map.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => {
                header_map.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    // API Gateway adds these; here the caller spoke plain HTTP to us.
    header_map
        .entry("x-forwarded-proto")
        .or_insert_with(|| Value::String("http".to_string()));
    header_map
        .entry("x-forwarded-for")
        .or_insert_with(|| Value::String(peer.ip().to_string()));
    let host = headers
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let text_body = is_text(content_type)
        .then(|| std::str::from_utf8(body).ok())
        .flatten();
    let (body_field, base64_encoded) = match (body.is_empty(), text_body) {
        (true, _) => (Value::Null, false),
        (false, Some(text)) => (Value::String(text.to_string()), false),
        (false, None) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut query_parameters = Map::new();
    for pair in raw_query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match query_parameters.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => {
                query_parameters.insert(name.to_string(), Value::String(value.to_string()));
            }
        }
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "cookies": if cookies.is_empty() { Value::Null } else { Value::Array(cookies) },
        "headers": header_map,
        "queryStringParameters": if query_parameters.is_empty() { Value::Null } else { Value::Object(query_parameters) },
        "requestContext": {
            "accountId": crate::provision::ACCOUNT_ID,
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or_default(),
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": peer.ip().to_string(),
                "userAgent": headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": format!("local-{}", now.as_nanos()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "",
            "timeEpoch": now.as_millis() as i64,
        },
        "body": body_field,
        "isBase64Encoded": base64_encoded,
    })
}

/// Reads an event the way the Lambda runtime does, into the request a handler receives.
pub fn into_request(event: Value) -> anyhow::Result<lambda_http::Request> {
    let lambda_request: LambdaRequest = serde_json::from_value(event)?;
    Ok(lambda_http::Request::from(lambda_request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, RequestExt};

    fn peer() -> SocketAddr {
        "127.0.0.1:5555".parse().unwrap()
    }

    #[test]
    fn a_json_body_arrives_as_text_with_raw_path_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:3000".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("x-dup", "a".parse().unwrap());
        headers.append("x-dup", "b".parse().unwrap());
        let event = event("POST", "/webhooks/hubspot?a=%40b", &headers, b"[1]", peer());
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["headers"]["x-dup"], "a,b");
        assert_eq!(event["headers"]["x-forwarded-proto"], "http");
        let request = into_request(event).unwrap();
        assert_eq!(request.raw_http_path(), "/webhooks/hubspot");
        assert_eq!(request.uri().query(), Some("a=%40b"));
        assert_eq!(request.method(), "POST");
        assert!(matches!(request.body(), Body::Text(text) if text == "[1]"));
    }

    #[test]
    fn a_binary_content_type_arrives_base64_encoded_and_is_decoded_by_the_runtime() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        let event = event("POST", "/webhooks/hubspot", &headers, b"[1]", peer());
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], "WzFd");
        let request = into_request(event).unwrap();
        assert!(matches!(request.body(), Body::Binary(bytes) if bytes == b"[1]"));
    }
}
