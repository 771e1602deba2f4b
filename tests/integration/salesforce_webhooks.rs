//! `POST /webhooks/salesforce` through the local stack: Outbound Messages authenticated by the
//! token in the URL (read from Secrets Manager, as when deployed) and the org id, stored in
//! DynamoDB, queued on SQS (moto), and answered with the SOAP `Ack` Salesforce waits for.

use std::collections::HashMap;

use crm_sync_tests::{attr, spawn_app_with, AppOptions, TestApp};
use reqwest::StatusCode;

const ORG: &str = "00D000000000062EAA";
const TOKEN: &str = "k3Jd9-outbound-message-token-2Lq";

async fn salesforce_app(extra: &[(&str, &str)]) -> TestApp {
    let mut parameters = HashMap::from([
        ("SalesforceOrganizationId".to_string(), ORG.to_string()),
        ("SalesforceWebhookToken".to_string(), TOKEN.to_string()),
    ]);
    parameters.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spawn_app_with(AppOptions {
        parameters,
        ..AppOptions::default()
    })
    .await
}

fn message(organization: &str, notifications: &[(&str, &str)]) -> String {
    let notifications: String = notifications
        .iter()
        .map(|(id, contact)| {
            format!(
                r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>{contact}</sf:Id><sf:Email>ada@example.com</sf:Email><sf:LastModifiedById>005000000000002AAA</sf:LastModifiedById><sf:LastModifiedDate>2026-11-27T10:00:00.000Z</sf:LastModifiedDate></sObject></Notification>"#
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{organization}</OrganizationId><ActionId>04k000000000001AAA</ActionId>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"#
    )
}

async fn post(app: &TestApp, token: Option<&str>, body: &str) -> (StatusCode, String, String) {
    let mut url = app.webhook_url("salesforce");
    if let Some(token) = token {
        url.push_str("?token=");
        url.extend(form_urlencoded::byte_serialize(token.as_bytes()));
    }
    let response = app
        .http
        .post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("SOAPAction", "\"\"")
        .body(body.to_string())
        .send()
        .await
        .expect("the local API answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn an_outbound_message_is_one_event_per_notification_and_acknowledged_in_soap() {
    let app = salesforce_app(&[]).await;
    let body = message(ORG, &[("04l1", "003A"), ("04l2", "003B")]);
    let (status, content_type, reply) = post(&app, Some(TOKEN), &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(content_type.starts_with("text/xml"), "{content_type}");
    let ack = roxmltree::Document::parse(&reply).expect("the answer is XML");
    let acked = ack
        .descendants()
        .find(|node| node.has_tag_name(("http://soap.sforce.com/2005/09/outbound", "Ack")))
        .and_then(|node| node.text());
    assert_eq!(acked, Some("true"), "{reply}");

    // Salesforce resends a message it did not see acknowledged: the same notifications.
    let (again, _, _) = post(&app, Some(TOKEN), &body).await;
    assert_eq!(again, StatusCode::OK);

    let delivery = &app.stored("delivery").await[0];
    assert!(
        attr(delivery, "body").contains("<OrganizationId>"),
        "the raw SOAP body is kept verbatim"
    );
    let messages = app.drain_inbound().await;
    assert_eq!(messages.len(), 4, "each notification, sent with each resend");
    let keys: std::collections::BTreeSet<&str> =
        messages.iter().filter_map(|m| m["event_key"].as_str()).collect();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        [format!("{ORG}:04l1"), format!("{ORG}:04l2")],
        "one event per notification, whatever the resends"
    );
    assert_eq!(messages[0]["provider"], "salesforce");
    assert_eq!(messages[0]["kind"], "Contact.updated");
    assert_eq!(messages[0]["event"]["fields"]["Email"], "ada@example.com");
}

#[tokio::test]
async fn a_wrong_token_or_another_org_is_401_and_stores_nothing() {
    let app = salesforce_app(&[]).await;
    let cases = [
        (Some("guess"), message(ORG, &[("04l1", "003A")])),
        (None, message(ORG, &[("04l1", "003A")])),
        (Some(TOKEN), message("00D000000000099EAA", &[("04l1", "003A")])),
    ];
    for (token, body) in cases {
        let (status, _, reply) = post(&app, token, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {reply}");
    }
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
    assert!(app.drain_inbound().await.is_empty(), "nothing may be enqueued");
}

#[tokio::test]
async fn an_authentic_body_that_is_not_an_outbound_message_is_400_with_the_reason() {
    let app = salesforce_app(&[]).await;
    let no_date = message(ORG, &[("04l1", "003A")]).replace(
        "<sf:LastModifiedDate>2026-11-27T10:00:00.000Z</sf:LastModifiedDate>",
        "",
    );
    for (body, reason) in [
        (r#"{"not": "xml"}"#.to_string(), "not a SOAP notification"),
        (no_date, "LastModifiedDate"),
    ] {
        let (status, _, reply) = post(&app, Some(TOKEN), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(reply.contains(reason), "{reply}");
    }
    assert!(app.stored_items().await.is_empty(), "nothing may be stored");
}

#[tokio::test]
async fn a_stack_without_hubspots_client_secret_refuses_hubspot_webhooks_and_takes_salesforces() {
    let app = salesforce_app(&[("HubSpotClientSecret", "")]).await;
    let response = app
        .http
        .post(app.webhook_url("hubspot"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, _, reply) = post(&app, Some(TOKEN), &message(ORG, &[("04l1", "003A")])).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}
