//! `POST /webhooks/hubspot` through the local stack: API Gateway v2 events, DynamoDB and SQS in
//! moto, the client secret read from Secrets Manager as when deployed.

use std::collections::{HashMap, HashSet};

use crm_sync::adapters::hubspot::signature;
use crm_sync_tests::hubspot::{delivery, now_ms, property_change, v3_headers};
use crm_sync_tests::{attr, spawn_app, spawn_app_with, AppOptions, TestApp, HUBSPOT_SECRET};
use reqwest::StatusCode;

async fn post(app: &TestApp, url: &str, body: &str, headers: &[(&str, String)]) -> reqwest::Response {
    let mut request = app
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("the local API answers")
}

/// Posts `body` signed (v3, now) for the URL it is posted to.
async fn post_signed(app: &TestApp, body: &str) -> reqwest::Response {
    let url = app.webhook_url("hubspot");
    let headers = v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms());
    post(app, &url, body, &headers).await
}

async fn json(response: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn assert_nothing_stored_or_enqueued(app: &TestApp) {
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
    assert!(app.drain_inbound().await.is_empty(), "nothing may be enqueued");
}

#[tokio::test]
async fn a_delivery_posted_three_times_is_stored_once_and_each_posting_enqueues_its_events() {
    let app = spawn_app().await;
    let body = delivery(3, 0);

    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(json(post_signed(&app, &body).await).await);
    }

    assert!(
        replies.iter().all(|(status, _)| *status == StatusCode::OK),
        "{replies:?}"
    );
    assert!(
        replies.iter().all(|(_, reply)| reply["enqueued"] == 3),
        "{replies:?}"
    );
    assert_eq!(app.stored("delivery").await.len(), 1);
    assert!(
        app.stored("event").await.is_empty(),
        "no per-event write at ingest: the consumer records each event's outcome"
    );
    let messages = app.drain_inbound().await;
    assert_eq!(
        messages.len(),
        9,
        "sent each time; the consumer recognises the copies"
    );
    let keys: HashSet<_> = messages
        .iter()
        .map(|m| m["event_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 3);
    let delivery_id = replies[0].1["delivery_id"].as_str().unwrap();
    assert!(messages
        .iter()
        .all(|m| m["delivery_id"] == delivery_id && m["provider"] == "hubspot"));
}

#[tokio::test]
async fn the_raw_delivery_is_stored_verbatim_with_an_expiry() {
    let app = spawn_app().await;
    let body = delivery(2, 0);
    assert_eq!(post_signed(&app, &body).await.status(), StatusCode::OK);
    let deliveries = app.stored("delivery").await;
    assert_eq!(attr(&deliveries[0], "body"), body);
    let expires_at: i64 = deliveries[0]["expires_at"].as_n().unwrap().parse().unwrap();
    let thirty_days = 30 * 24 * 3600;
    assert!(
        (expires_at - now_ms() / 1000 - thirty_days).abs() < 60,
        "expires in 30 days"
    );
}

#[tokio::test]
async fn a_retry_with_a_new_attempt_number_keeps_both_bodies_and_enqueues_the_same_events() {
    let app = spawn_app().await;
    assert_eq!(post_signed(&app, &delivery(2, 0)).await.status(), StatusCode::OK);
    let (status, reply) = json(post_signed(&app, &delivery(2, 1)).await).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["enqueued"], 2);
    // Each attempt's body is kept as received; its events keep their keys, so the consumer
    // knows the second copy of each.
    assert_eq!(app.stored("delivery").await.len(), 2);
    let keys: HashSet<_> = app
        .drain_inbound()
        .await
        .iter()
        .map(|m| m["event_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn fifty_concurrent_replays_of_one_delivery_are_all_accepted_and_store_it_once() {
    let app = spawn_app().await;
    let body = delivery(20, 0);
    let replies = futures::future::join_all((0..50).map(|_| post_signed(&app, &body))).await;

    let statuses: Vec<_> = replies.iter().map(|r| r.status()).collect();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(app.stored("delivery").await.len(), 1);
    let messages = app.drain_inbound().await;
    // Every replay enqueues its events again, at least once: a send retried after its answer
    // was lost under the load sends a batch twice, and the consumer knows each copy by its key.
    let mut copies: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for message in &messages {
        *copies.entry(message["event_key"].to_string()).or_default() += 1;
    }
    assert_eq!(copies.len(), 20);
    assert!(copies.values().all(|n| *n >= 50), "{copies:?}");
}

#[tokio::test]
async fn a_wrong_signature_is_401_and_stores_nothing() {
    let app = spawn_app().await;
    let body = delivery(1, 0);
    let url = app.webhook_url("hubspot");
    let headers = v3_headers("some-other-secret", &url, body.as_bytes(), now_ms());

    let (status, reply) = json(post(&app, &url, &body, &headers).await).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply["message"], "the signature does not match the request");
    let good = v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms());
    assert!(!reply.to_string().contains(HUBSPOT_SECRET));
    assert!(
        !reply.to_string().contains(&good[0].1),
        "the expected signature is never echoed"
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_tampered_body_is_401_and_stores_nothing() {
    let app = spawn_app().await;
    let url = app.webhook_url("hubspot");
    let signed = delivery(1, 0);
    let headers = v3_headers(HUBSPOT_SECRET, &url, signed.as_bytes(), now_ms());
    let tampered = signed.replace("person1@", "attacker@");

    assert_eq!(
        post(&app, &url, &tampered, &headers).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_stale_timestamp_is_401_and_stores_nothing() {
    let app = spawn_app().await;
    let body = delivery(1, 0);
    let url = app.webhook_url("hubspot");
    let headers = v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms() - 6 * 60 * 1000);

    let (status, reply) = json(post(&app, &url, &body, &headers).await).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply["message"],
        "the request timestamp is outside the 300-second replay window"
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_missing_signature_is_401_and_stores_nothing() {
    let app = spawn_app().await;
    let (status, reply) = json(post(&app, &app.webhook_url("hubspot"), &delivery(1, 0), &[]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply["message"],
        "the request carries no X-HubSpot-Signature-v3 header"
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn malformed_json_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let (status, reply) = json(post_signed(&app, "[{\"eventId\": 1,").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["error"], "bad_request");
    assert!(reply["message"]
        .as_str()
        .unwrap()
        .starts_with("the body is not valid JSON"));
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_body_of_the_wrong_shape_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let mut events: Vec<_> = (1..=3)
        .map(|i| property_change(i, i, "email", "x@example.com", 0))
        .collect();
    events[2].as_object_mut().unwrap().remove("portalId");
    let body = serde_json::Value::Array(events).to_string();

    let (status, reply) = json(post_signed(&app, &body).await).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply["message"],
        "event 2: `portalId` is missing or not an integer"
    );
    assert_nothing_stored_or_enqueued(&app).await;
    assert_eq!(
        post_signed(&app, r#"{"events":[]}"#).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_413_and_stores_nothing() {
    let app = spawn_app_with(AppOptions {
        env: HashMap::from([("WEBHOOK_MAX_BODY_BYTES".to_string(), "2048".to_string())]),
        ..AppOptions::default()
    })
    .await;
    let padded = |len: usize| {
        let body = delivery(1, 0);
        let padding = "p".repeat(len - body.len());
        body.replace("\"CRM_UI\"", &format!("\"CRM_UI{padding}\""))
    };
    let at_limit = padded(2048);
    assert_eq!(at_limit.len(), 2048);
    assert_eq!(post_signed(&app, &at_limit).await.status(), StatusCode::OK);
    assert_eq!(app.stored("delivery").await.len(), 1);
    app.drain_inbound().await;
    let body = padded(2049);

    let (status, reply) = json(post_signed(&app, &body).await).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply["message"], "the body is larger than the 2048-byte limit");
    assert_eq!(app.stored("delivery").await.len(), 1, "only the one at the limit");
    assert!(app.drain_inbound().await.is_empty());
}

#[tokio::test]
async fn an_event_too_large_for_one_queue_message_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    // One event filling the 256 KiB body: with its envelope, and room for the attributes of a
    // retry or a dead letter, it cannot be one SQS message.
    let body = delivery(1, 0);
    let padding = "v".repeat(256 * 1024 - body.len());
    let body = body.replace("person1@example.com", &format!("{padding}person1@example.com"));
    assert_eq!(body.len(), 256 * 1024);

    let (status, reply) = json(post_signed(&app, &body).await).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("queue message, more than the 258048 allowed"),
        "{message}"
    );
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_post_and_stores_nothing() {
    let app = spawn_app().await;
    let response = app.http.get(app.webhook_url("hubspot")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn an_unknown_provider_is_404_and_stores_nothing() {
    let app = spawn_app().await;
    let url = app.webhook_url("zoho");
    let body = delivery(1, 0);
    let headers = v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms());
    let (status, reply) = json(post(&app, &url, &body, &headers).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(reply["error"], "unknown_provider");
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn a_legacy_v1_signature_is_accepted() {
    let app = spawn_app().await;
    let body = delivery(1, 0);
    let headers = [
        (
            "x-hubspot-signature",
            signature::sign_v1(HUBSPOT_SECRET.as_bytes(), body.as_bytes()),
        ),
        ("x-hubspot-signature-version", "v1".to_string()),
    ];
    let response = post(&app, &app.webhook_url("hubspot"), &body, &headers).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.drain_inbound().await.len(), 1);
}

#[tokio::test]
async fn a_base64_encoded_body_is_verified_over_its_decoded_bytes() {
    let app = spawn_app().await;
    let body = delivery(2, 0);
    let url = app.webhook_url("hubspot");
    let mut request = app
        .http
        .post(&url)
        // API Gateway base64-encodes bodies of non-text content types.
        .header("content-type", "application/octet-stream")
        .body(body.clone());
    for (name, value) in v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms()) {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(attr(&app.stored("delivery").await[0], "body"), body);
}

#[tokio::test]
async fn v3_verifies_against_the_configured_public_url_behind_a_custom_domain() {
    let public = "https://hooks.example.com/crm";
    let app = spawn_app_with(AppOptions {
        env: HashMap::from([("WEBHOOK_PUBLIC_BASE_URL".to_string(), public.to_string())]),
        ..AppOptions::default()
    })
    .await;
    let body = delivery(1, 0);
    let local_url = app.webhook_url("hubspot");
    let for_local = v3_headers(HUBSPOT_SECRET, &local_url, body.as_bytes(), now_ms());
    let for_public = v3_headers(
        HUBSPOT_SECRET,
        &format!("{public}/webhooks/hubspot"),
        body.as_bytes(),
        now_ms(),
    );

    assert_eq!(
        post(&app, &local_url, &body, &for_local).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&app, &local_url, &body, &for_public).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_client_secret_comes_from_secrets_manager_as_when_deployed() {
    let app = spawn_app().await;
    assert!(app.stack.webhook_env["HUBSPOT_SECRET_ARN"].starts_with("arn:aws:secretsmanager:"));
    assert!(!app.stack.webhook_env.contains_key("HUBSPOT_CLIENT_SECRET"));
    assert_eq!(post_signed(&app, &delivery(1, 0)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn when_dynamodb_fails_the_crm_gets_503_and_its_retry_stores_the_delivery() {
    let app = spawn_app_with(AppOptions {
        fault_proxy: true,
        ..AppOptions::default()
    })
    .await;
    let faults = app.faults.as_ref().unwrap();
    let body = delivery(5, 0);

    faults.fail("DynamoDB_20120810.PutItem");
    let (status, reply) = json(post_signed(&app, &body).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply["error"], "unavailable");
    assert!(faults.failed_calls() > 0);
    assert!(app.stored("delivery").await.is_empty());
    assert_eq!(
        app.drain_inbound().await.len(),
        5,
        "sent side by side: the events are processed while the CRM retries"
    );

    faults.heal();
    assert_eq!(post_signed(&app, &body).await.status(), StatusCode::OK);
    assert_eq!(app.stored("delivery").await.len(), 1);
    assert_eq!(app.drain_inbound().await.len(), 5);
}

#[tokio::test]
async fn when_sqs_fails_the_crm_gets_503_naming_the_events_and_its_retry_enqueues_them() {
    let app = spawn_app_with(AppOptions {
        fault_proxy: true,
        ..AppOptions::default()
    })
    .await;
    let faults = app.faults.as_ref().unwrap();
    let body = delivery(12, 0);

    faults.fail("AmazonSQS.SendMessageBatch");
    let (status, reply) = json(post_signed(&app, &body).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply["message"], "12 of 12 events could not be enqueued yet");
    assert_eq!(app.stored("delivery").await.len(), 1, "stored side by side");
    assert!(app.drain_inbound().await.is_empty());

    faults.heal();
    let (status, reply) = json(post_signed(&app, &body).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["enqueued"], 12);
    assert_eq!(app.drain_inbound().await.len(), 12);
    assert_eq!(app.stored("delivery").await.len(), 1);
}

#[tokio::test]
async fn a_delivery_write_whose_first_answer_was_lost_is_accepted_on_the_sdks_retry() {
    let app = spawn_app_with(AppOptions {
        fault_proxy: true,
        ..AppOptions::default()
    })
    .await;
    let faults = app.faults.as_ref().unwrap();
    // The write lands in DynamoDB, its answer does not: the SDK retries it, and the retry finds
    // the delivery stored (by itself) and takes that as done.
    faults.lose_answers("DynamoDB_20120810.PutItem", 1);
    let (status, reply) = json(post_signed(&app, &delivery(3, 0)).await).await;

    assert!(faults.failed_calls() > 0, "the proxy lost an answer");
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(app.stored("delivery").await.len(), 1);
    assert_eq!(app.drain_inbound().await.len(), 3);
}

#[tokio::test]
async fn a_delivery_holding_the_same_event_twice_enqueues_it_once() {
    let app = spawn_app().await;
    let event = property_change(7, 1007, "email", "seven@example.com", 0);
    let body = serde_json::json!([
        event,
        event,
        property_change(8, 1008, "email", "e@example.com", 0)
    ])
    .to_string();

    let (status, reply) = json(post_signed(&app, &body).await).await;

    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["events"], 3);
    assert_eq!(reply["enqueued"], 2);
    assert_eq!(reply["duplicates"], 1);
    assert_eq!(app.drain_inbound().await.len(), 2);
}

#[tokio::test]
async fn two_hundred_distinct_deliveries_at_once_are_all_accepted_and_enqueued() {
    let app = spawn_app().await;
    let replies = futures::future::join_all((0..200).map(|i| {
        let body = serde_json::json!([property_change(
            10_000 + i,
            5_000 + i,
            "email",
            "x@example.com",
            0
        )])
        .to_string();
        let app = &app;
        async move { post_signed(app, &body).await.status() }
    }))
    .await;

    let refused: Vec<_> = replies.iter().filter(|status| !status.is_success()).collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    assert_eq!(app.stored("delivery").await.len(), 200);
    let keys: HashSet<String> = app
        .drain_inbound()
        .await
        .iter()
        .map(|message| message["event_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 200);
}

/// HubSpot events with one field replaced by `value`.
fn event_with(field: &str, value: serde_json::Value) -> String {
    let mut event = property_change(1, 1001, "email", "a@example.com", 0);
    event[field] = value;
    serde_json::json!([event]).to_string()
}

#[tokio::test]
async fn each_key_field_is_taken_at_its_length_limit_and_refused_by_name_one_byte_past_it() {
    let app = spawn_app().await;
    let limit = crm_sync::domain::webhook::MAX_IDENTIFIER_BYTES;
    // `objectTypeId` names the type of the generic subscriptions' events (`object.*`).
    let with = |field: &str, value: String| {
        let body = event_with(field, value.into());
        match field {
            "objectTypeId" => body.replace("contact.propertyChange", "object.propertyChange"),
            _ => body,
        }
    };
    for field in ["propertyName", "subscriptionType", "objectId", "objectTypeId"] {
        let at_limit = match field {
            "subscriptionType" => format!("contact.{}", "p".repeat(limit - "contact.".len())),
            _ => "7".repeat(limit),
        };
        let (status, reply) = json(post_signed(&app, &with(field, at_limit.clone())).await).await;
        assert_eq!(status, StatusCode::OK, "{field} at {limit} bytes: {reply}");

        let past = format!("{at_limit}7");
        let (status, reply) = json(post_signed(&app, &with(field, past)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    // Only the four accepted deliveries are stored and sent: a refusal leaves nothing behind.
    assert_eq!(app.stored("delivery").await.len(), 4);
    assert_eq!(app.drain_inbound().await.len(), 4);
}

#[tokio::test]
async fn a_three_kilobyte_property_name_is_refused_every_time_and_stores_nothing() {
    let app = spawn_app().await;
    for attempt in 0..3 {
        // HubSpot's retry carries a new attempt number, so a new body each time.
        let mut event = property_change(1, 1001, &"p".repeat(3000), "v", attempt);
        event["attemptNumber"] = attempt.into();
        let body = serde_json::json!([event]).to_string();
        let (status, reply) = json(post_signed(&app, &body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    }
    assert_nothing_stored_or_enqueued(&app).await;
}

#[tokio::test]
async fn an_event_nested_deeper_than_the_consumer_can_read_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let limit = crm_sync::domain::webhook::MAX_EVENT_DEPTH;
    // The event object is one level; its value adds the rest.
    let nested = |levels: usize| {
        let value: serde_json::Value =
            serde_json::from_str(&format!("{}{}", "[".repeat(levels), "]".repeat(levels))).unwrap();
        event_with("propertyValue", value)
    };
    let (status, reply) = json(post_signed(&app, &nested(limit - 1)).await).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(app.drain_inbound().await.len(), 1);

    let (status, reply) = json(post_signed(&app, &nested(limit)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("nests 65 levels deep"),
        "{reply}"
    );
    assert_eq!(app.stored("delivery").await.len(), 1, "only the one at the limit");
}
