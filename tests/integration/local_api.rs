//! The local API Gateway stand-in over raw HTTP, so that the Host header and the path arrive
//! exactly as written (an HTTP client library fixes the one and normalizes the other): malformed
//! Host headers, and paths that a URL parser normalizes into another route.

use std::net::SocketAddr;
use std::time::Duration;

use crm_sync_tests::spawn_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back: status 0 when the connection closed without an answer.
struct Answer {
    status: u16,
    /// Status line and headers, lowercased.
    head: String,
    body: String,
}

/// A GET of `path` with one `Host` line per entry of `hosts`, on its own connection.
fn get(path: &str, hosts: &[&str]) -> String {
    let hosts: String = hosts.iter().map(|host| format!("Host: {host}\r\n")).collect();
    format!("GET {path} HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n")
}

async fn send(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("the local API accepts connections");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A connection reset without an answer reads as an empty one.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the local API answers, or closes, within 10 s");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn a_malformed_host_gets_400_and_the_local_api_keeps_answering() {
    let app = spawn_app().await;
    let addr = app.stack.http_addr;
    for host in ["127.0.0.1:abc", "user@127.0.0.1", "127.0.0.1:99999"] {
        let answer = send(addr, &get("/webhooks/hubspot", &[host])).await;
        assert_eq!(answer.status, 400, "Host: {host}: {}", answer.head);
        assert!(answer.body.contains("Host"), "Host: {host}: {}", answer.body);
    }

    // The webhook function's own answer to a GET on its route: the server is still there.
    let answer = send(addr, &get("/webhooks/hubspot", &[addr.to_string().as_str()])).await;
    assert_eq!(answer.status, 405, "{}", answer.head);
    assert!(answer.head.contains("allow: post"), "{}", answer.head);
}

#[tokio::test]
async fn two_host_headers_get_400() {
    let app = spawn_app().await;
    let addr = app.stack.http_addr;
    let host = addr.to_string();
    let answer = send(addr, &get("/webhooks/hubspot", &[host.as_str(), host.as_str()])).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert!(
        answer.body.contains("more than one Host header"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn a_path_that_normalizes_into_the_dashboard_reaches_neither_handler() {
    let app = spawn_app().await;
    let addr = app.stack.http_addr;
    let host = addr.to_string();
    for path in [
        "/webhooks/../admin",
        "/webhooks/%2e%2e/admin",
        "/webhooks/%2E%2E/admin",
        "/webhooks/./../admin/queues",
        "/admin/../admin",
        "/admin/./login",
        "/admin/../webhooks/hubspot",
    ] {
        let answer = send(addr, &get(path, &[host.as_str()])).await;
        assert!(matches!(answer.status, 400 | 404), "{path}: {}", answer.head);
        // Every dashboard answer carries its security headers; a signed-out GET of a page is a
        // redirect to the sign-in page.
        assert!(!answer.head.contains("location:"), "{path}: {}", answer.head);
        assert!(
            !answer.head.contains("content-security-policy"),
            "{path} reached the dashboard: {}",
            answer.head
        );
        assert!(!answer.body.contains("<html"), "{path}: {}", answer.body);
        // Nor the webhook function (its answers are JSON).
        assert!(
            !answer.head.contains("application/json"),
            "{path}: {}",
            answer.head
        );
    }

    // The dashboard is still where it is.
    let answer = send(addr, &get("/admin", &[host.as_str()])).await;
    assert_eq!(answer.status, 303, "{}", answer.head);
    assert!(answer.head.contains("location: /admin/login"), "{}", answer.head);
}
