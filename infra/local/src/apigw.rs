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

/// Refuses, with a one-line reason for a 400, the headers the runtime's conversion of the event
/// cannot read (it unwraps a URL built from them and panics): more than one `Host`, a `Host` that
/// is not a host name or IP literal with an optional numeric port, and an `X-Forwarded-Proto`
/// other than one `http` or `https`. An absent `Host` is fine (the event says `localhost`).
pub fn check_headers(headers: &HeaderMap) -> Result<(), String> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err("more than one Host header".into());
        }
        check_host(host.as_bytes())?;
    }
    let mut protos = headers.get_all("x-forwarded-proto").iter();
    if let Some(proto) = protos.next() {
        if protos.next().is_some() {
            return Err("more than one X-Forwarded-Proto header".into());
        }
        let proto = proto.to_str().unwrap_or_default();
        if !proto.eq_ignore_ascii_case("http") && !proto.eq_ignore_ascii_case("https") {
            return Err("X-Forwarded-Proto is neither http nor https".into());
        }
    }
    Ok(())
}

/// `Host: name[:port]`, `Host: ipv4[:port]` or `Host: [ipv6][:port]`, as an
/// [`http::uri::Authority`] without user information, its port a number up to 65535.
fn check_host(value: &[u8]) -> Result<(), String> {
    let refused = |why: &str| -> Result<(), String> { Err(format!("malformed Host header: {why}")) };
    let Ok(text) = std::str::from_utf8(value) else {
        return refused("not ASCII text");
    };
    let Ok(authority) = text.parse::<http::uri::Authority>() else {
        return refused("not a host and an optional port");
    };
    if text.contains('@') {
        return refused("it carries user information");
    }
    let host = authority.host();
    let name_ok = match host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        Some(literal) => {
            !literal.is_empty()
                && literal
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        }
    };
    if !name_ok {
        return refused("the host is not a name or an IP address");
    }
    match &text[host.len()..] {
        "" => Ok(()),
        rest => match rest.strip_prefix(':') {
            Some(port) if port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok() => Ok(()),
            _ => refused("the port is not a number from 0 to 65535"),
        },
    }
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

/// The runtime's conversion of an event into a request panicked: it unwraps the URL it builds
/// from the `Host` and `X-Forwarded-Proto` headers and the path. The request, not this stack, is
/// at fault: a 400.
#[derive(Debug)]
pub struct ConversionPanicked(pub String);

impl std::fmt::Display for ConversionPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the Lambda runtime could not read this request: {}", self.0)
    }
}

impl std::error::Error for ConversionPanicked {}

/// Reads an event the way the Lambda runtime does, into the request a handler receives. A panic
/// of the runtime's conversion comes back as [`ConversionPanicked`] rather than unwinding.
pub fn into_request(event: Value) -> anyhow::Result<lambda_http::Request> {
    let lambda_request: LambdaRequest = serde_json::from_value(event)?;
    // The closure owns everything it touches, and nothing of it is used after a panic.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        lambda_http::Request::from(lambda_request)
    })) {
        Ok(request) => Ok(request),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "it panicked".to_string());
            Err(ConversionPanicked(message).into())
        }
    }
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

    fn with_hosts(hosts: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append("host", host.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_host_whose_port_is_not_a_number_is_refused() {
        for host in [
            "127.0.0.1:abc",
            "localhost:",
            "localhost:65536",
            "[::1]:x1",
            "localhost:+80",
        ] {
            let refused = check_headers(&with_hosts(&[host])).unwrap_err();
            assert!(refused.contains("Host"), "{host}: {refused}");
        }
    }

    #[test]
    fn two_host_headers_are_refused() {
        let refused = check_headers(&with_hosts(&["127.0.0.1:3000", "127.0.0.1:3000"])).unwrap_err();
        assert_eq!(refused, "more than one Host header");
    }

    #[test]
    fn a_host_with_user_information_a_path_or_odd_characters_is_refused() {
        for host in [
            "user@example.com",
            "example.com/admin",
            "a,b",
            "exa mple.com",
            "",
            "[zz::1]",
            "a%41",
        ] {
            assert!(check_headers(&with_hosts(&[host])).is_err(), "{host}");
        }
    }

    #[test]
    fn names_ip_addresses_with_or_without_a_port_and_no_host_at_all_are_accepted() {
        for host in [
            "127.0.0.1:3000",
            "localhost",
            "abc.execute-api.us-east-1.amazonaws.com",
            "[::1]:8080",
            "[::1]",
        ] {
            assert_eq!(check_headers(&with_hosts(&[host])), Ok(()), "{host}");
        }
        assert_eq!(check_headers(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn a_forwarded_proto_other_than_one_http_or_https_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(check_headers(&headers), Ok(()));
        headers.insert("x-forwarded-proto", "ftp ://".parse().unwrap());
        assert!(check_headers(&headers).is_err());
        headers.insert("x-forwarded-proto", "http".parse().unwrap());
        headers.append("x-forwarded-proto", "https".parse().unwrap());
        assert!(check_headers(&headers).is_err());
    }

    #[test]
    fn every_accepted_host_converts_without_a_panic() {
        for host in ["127.0.0.1:3000", "localhost", "[::1]:8080", "bench.example"] {
            let headers = with_hosts(&[host]);
            let request = into_request(event("GET", "/webhooks/hubspot", &headers, b"", peer())).unwrap();
            assert_eq!(request.raw_http_path(), "/webhooks/hubspot", "{host}");
        }
    }

    #[test]
    fn a_conversion_the_runtime_panics_on_comes_back_as_an_error() {
        // Past `check_headers`, as a request that bypassed it would be.
        let headers = with_hosts(&["127.0.0.1:abc"]);
        let error = into_request(event("GET", "/webhooks/hubspot", &headers, b"", peer())).unwrap_err();
        assert!(error.is::<ConversionPanicked>(), "{error:#}");
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
