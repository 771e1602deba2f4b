//! `POST /webhooks/pipedrive` through the local stack: Basic credentials read from Secrets
//! Manager as when deployed, deliveries stored in DynamoDB and queued on SQS (moto).

use std::collections::HashMap;

use base64::Engine;
use crm_sync_tests::{spawn_app, spawn_app_with, AppOptions, TestApp};
use reqwest::StatusCode;

const USER: &str = "crm-sync-hooks";
const PASSWORD: &str = "pipedrive webhook password";

async fn pipedrive_app() -> TestApp {
    spawn_app_with(AppOptions {
        parameters: HashMap::from([
            ("PipedriveWebhookUser".to_string(), USER.to_string()),
            ("PipedriveWebhookPassword".to_string(), PASSWORD.to_string()),
        ]),
        ..AppOptions::default()
    })
    .await
}

fn event(id: &str, attempt: u32) -> String {
    serde_json::json!({
        "meta": {"action": "change", "entity": "person", "entity_id": "42", "id": id,
                 "timestamp": "2026-11-27T10:00:00.250Z", "attempt": attempt,
                 "change_source": "app", "version": "2.0", "company_id": "7", "user_id": "9"},
        "data": {"id": 42, "name": "Ada Lovelace",
                 "emails": [{"value": "ada@example.com", "primary": true, "label": "work"}]},
        "previous": {"name": "Ada King"}
    })
    .to_string()
}

async fn post(app: &TestApp, body: &str, credentials: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut request = app
        .http
        .post(app.webhook_url("pipedrive"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(credentials) = credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        request = request.header("authorization", format!("Basic {encoded}"));
    }
    let response = request.send().await.expect("the local API answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn good() -> Option<&'static str> {
    Some("crm-sync-hooks:pipedrive webhook password")
}

#[tokio::test]
async fn a_pipedrive_event_with_the_webhooks_credentials_is_stored_and_enqueued_with_its_key() {
    let app = pipedrive_app().await;
    let (first, reply) = post(&app, &event("e-1", 1), good()).await;
    assert_eq!(first, StatusCode::OK, "{reply}");
    assert_eq!(reply["enqueued"], 1);
    // Pipedrive's retry of the same event: a new attempt number, the same event id.
    let (again, retry) = post(&app, &event("e-1", 2), good()).await;
    assert_eq!(again, StatusCode::OK, "{retry}");
    assert_eq!(retry["enqueued"], 1, "sent again, for the consumer to recognise");

    assert_eq!(
        app.stored("delivery").await.len(),
        2,
        "each body is kept verbatim"
    );
    let messages = app.drain_inbound().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["event_key"], messages[1]["event_key"], "one event");
    assert_eq!(messages[0]["provider"], "pipedrive");
    assert_eq!(messages[0]["kind"], "person.change");
    assert_eq!(messages[0]["object_id"], "42");
    assert_eq!(messages[0]["event"]["previous"]["name"], "Ada King");
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_401_and_store_nothing() {
    let app = pipedrive_app().await;
    for credentials in [
        Some("crm-sync-hooks:guess"),
        Some("someone:pipedrive webhook password"),
        None,
    ] {
        let (status, reply) = post(&app, &event("e-2", 1), credentials).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{credentials:?}: {reply}");
    }
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
    assert!(app.drain_inbound().await.is_empty(), "nothing may be enqueued");
}

#[tokio::test]
async fn an_authentic_body_that_is_not_a_v2_event_is_400_and_stores_nothing() {
    let app = pipedrive_app().await;
    let v1 = event("e-3", 1).replace(r#""version":"2.0""#, r#""version":"1.0""#);
    let (status, reply) = post(&app, &v1, good()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("not a v2 webhook"),
        "{reply}"
    );
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
}

#[tokio::test]
async fn without_pipedrive_credentials_configured_its_route_is_an_unknown_provider() {
    let app = spawn_app().await;
    let (status, reply) = post(&app, &event("e-4", 1), good()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert_eq!(reply["error"], "unknown_provider");
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
}
