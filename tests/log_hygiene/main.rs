//! Everything the functions log, on the happy path and on every error path we can provoke, holds
//! no secret and no email address or phone number in clear. The process's one log subscriber
//! captures every line at a more verbose level than production uses.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync::ports::state::*;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::dashboard::DashboardClient;
use crm_sync_tests::hubspot::{delivery, now_ms, v3_headers};
use crm_sync_tests::{eventually, spawn_app_with, AppOptions, DASHBOARD_PASSWORD, HUBSPOT_SECRET};
use serde_json::json;

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

const PIPEDRIVE_USER: &str = "crm-sync-hooks";
const OPERATOR_EMAIL: &str = "operator.ada@example.com";
const PIPEDRIVE_PASSWORD: &str = "pipedrive-hook-password-7Hq";
const SALESFORCE_ORG: &str = "00D000000000062EAA";
const SALESFORCE_TOKEN: &str = "salesforce-outbound-token-4Zk";

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,crm_sync=trace,crm_sync_local=debug",
            ))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

fn record(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.into(),
    }
}

#[tokio::test]
async fn no_secret_email_address_or_phone_number_reaches_the_logs_on_any_path() {
    let logs = capture_logs();
    let mut options = AppOptions {
        fault_proxy: true,
        ..AppOptions::syncing().with_webhooks()
    };
    options.parameters.extend(
        [
            ("PipedriveWebhookUser", PIPEDRIVE_USER),
            ("PipedriveWebhookPassword", PIPEDRIVE_PASSWORD),
            ("SalesforceOrganizationId", SALESFORCE_ORG),
            ("SalesforceWebhookToken", SALESFORCE_TOKEN),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    let app = spawn_app_with(options).await;
    let faults = app.faults.as_ref().unwrap();
    let store = app.sync_state();
    let at = now_ms();

    // Outbound: one accepted, one the CRM refuses for its email, one breaking the contract.
    app.send_changes(&[
        contact(
            "ada",
            at,
            json!({"email": "ada.lovelace@example.com", "phone": "+1 555 0100", "first_name": "Ada"}),
        ),
        contact(
            "grace",
            at,
            json!({"email": "grace@example", "phone": "+44 20 7946 0958"}),
        ),
        json!({"version": 1, "type": "contact.upsert", "record_id": "bad", "idempotency_id": "bad-1",
               "changed_at": at, "data": {"email": ["linus@example.com"]}}),
    ])
    .await;
    app.settled(record("ada"), SyncStatus::Synced).await;
    let (grace, _) = app.settled(record("grace"), SyncStatus::Failed).await;
    assert!(grace.last_error.unwrap().starts_with("INVALID_EMAIL"));

    // Inbound: a rep overwrites the app-owned email and phone; both are journaled as conflicts.
    let ada_crm = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "ada")
        .unwrap()
        .id;
    app.sandbox()
        .edit(
            "contacts",
            ada_crm,
            BTreeMap::from([
                ("email".to_string(), "ada.typo@example.com".to_string()),
                ("phone".to_string(), "+1 555 0199".to_string()),
            ]),
        )
        .unwrap();
    eventually(60, "both conflicts journaled", || {
        let store = store.clone();
        async move {
            let conflicts = store.conflicts(&record("ada"), 10).await.ok()?;
            (conflicts.len() == 2).then_some(())
        }
    })
    .await;

    // DynamoDB refuses the sync function: its errors are logged (the message comes back later).
    faults.fail("DynamoDB_20120810.UpdateItem");
    app.send_changes(&[contact(
        "ada",
        at + 1,
        json!({"email": "ada.lovelace@example.com", "phone": "+1 555 0111"}),
    )])
    .await;
    eventually(60, "the sync function to give up on DynamoDB", || async {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.contains("could not claim the record").then_some(())
    })
    .await;
    faults.heal();

    // Forged and replayed webhooks.
    let url = app.webhook_url("hubspot");
    let body = delivery(1, 0);
    for headers in [
        v3_headers("not-the-client-secret", &url, body.as_bytes(), now_ms()),
        v3_headers(HUBSPOT_SECRET, &url, body.as_bytes(), now_ms() - 3_600_000),
    ] {
        let mut request = app.http.post(&url).body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }

    // Pipedrive's and Salesforce's routes: wrong credentials, and accepted events that carry a
    // person's email (the body is stored, never logged).
    let pipedrive = app.webhook_url("pipedrive");
    let event = json!({
        "meta": {"action": "change", "entity": "person", "entity_id": "42", "id": "ev-1",
                 "timestamp": "2026-11-27T10:00:00Z", "change_source": "app", "version": "2.0"},
        "data": {"id": 42, "emails": [{"value": "pd.person@example.com", "primary": true}]},
        "previous": {"emails": []}
    })
    .to_string();
    for (password, status) in [("a-guessed-password", 401), (PIPEDRIVE_PASSWORD, 200)] {
        let sent = app
            .http
            .post(&pipedrive)
            .basic_auth(PIPEDRIVE_USER, Some(password))
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), status);
    }
    let soap = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{SALESFORCE_ORG}</OrganizationId><Notification><Id>04l1</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003A</sf:Id><sf:Email>sf.person@example.com</sf:Email><sf:LastModifiedDate>2026-11-27T10:00:00.000Z</sf:LastModifiedDate></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#
    );
    for (token, status) in [("a-guessed-token", 401), (SALESFORCE_TOKEN, 200)] {
        let url = format!("{}?token={token}", app.webhook_url("salesforce"));
        let sent = app.http.post(&url).body(soap.clone()).send().await.unwrap();
        assert_eq!(sent.status(), status);
    }

    // The dashboard: a wrong password, a right one, a page, and a POST without its token.
    let base = app.stack.url();
    let wrong_attempt = "correct-horse-battery-staple";
    let refused = DashboardClient::new(&base).sign_in(wrong_attempt).await;
    assert_ne!(refused.status, 303);
    let dashboard = DashboardClient::signed_in(&base, DASHBOARD_PASSWORD).await;
    let cookie = dashboard.session_cookie().unwrap().to_string();
    assert_eq!(
        dashboard.get("/admin/record?object=contact&id=ada").await.status,
        200
    );
    let forged = dashboard
        .post("/admin/resync", &[("object", "contact"), ("id", "ada")])
        .await;
    assert_eq!(forged.status, 403);

    // The dashboard signed in through an identity provider: a sign-in, a re-sync, a sign-out.
    let provider = crm_sync_tests::oidc::OidcProvider::start();
    provider.add_operator("operator-sub-7", OPERATOR_EMAIL).await;
    let with_provider =
        spawn_app_with(provider.dashboard_options(&provider.issuer, AppOptions::default())).await;
    let mut operator = crm_sync_tests::oidc::OperatorBrowser::new(&with_provider.stack.url());
    operator.sign_in(&provider, "operator-sub-7", "%2Fadmin").await;
    let provider_session = operator.cookie("crm_sync_session").unwrap().to_string();
    let page = operator.get("/admin").await.body;
    assert!(page.contains(OPERATOR_EMAIL), "signed in as the operator");
    let csrf = crm_sync_tests::dashboard::csrf_in(&page).unwrap();
    let resynced = operator
        .post(
            "/admin/resync",
            &[("csrf", &csrf), ("record", "contact/ada"), ("back", "/admin")],
        )
        .await;
    assert_eq!(resynced.status, 303);
    assert_eq!(
        operator.post("/admin/logout", &[("csrf", &csrf)]).await.status,
        200
    );

    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    if let Some(path) = std::env::var_os("CRM_SYNC_LOG_CAPTURE") {
        std::fs::write(path, &text).unwrap();
    }
    for expected in [
        "invalid message",
        "could not claim the record",
        "delivery rejected",
        r#"delivery rejected provider="pipedrive""#,
        r#"delivery accepted provider="salesforce""#,
        "dashboard sign-in with a wrong password",
        "dashboard POST refused",
        "dashboard sign-in through the identity provider subject=operator-sub-7",
        "dashboard action subject=operator-sub-7 path=/admin/resync",
    ] {
        assert!(
            text.contains(expected),
            "the logs lack `{expected}`: the capture is not working"
        );
    }
    let secrets = [
        ("the HubSpot client secret", HUBSPOT_SECRET.to_string()),
        ("the HubSpot access token", app.sandbox().token()),
        ("the dashboard password", DASHBOARD_PASSWORD.to_string()),
        ("the Pipedrive webhook password", PIPEDRIVE_PASSWORD.to_string()),
        ("a guessed Pipedrive password", "a-guessed-password".to_string()),
        ("the Salesforce webhook token", SALESFORCE_TOKEN.to_string()),
        ("a guessed Salesforce token", "a-guessed-token".to_string()),
        ("a wrong password tried", wrong_attempt.to_string()),
        ("the session cookie", cookie),
        ("a provider session's cookie", provider_session),
        (
            "the OpenID client secret",
            crm_sync_tests::oidc::CLIENT_SECRET.to_string(),
        ),
    ];
    let personal = [
        "ada.lovelace@example.com",
        "grace@example",
        "linus@example.com",
        "ada.typo@example.com",
        "+1 555 0100",
        "+44 20 7946 0958",
        "+1 555 0199",
        "+1 555 0111",
        "pd.person@example.com",
        "sf.person@example.com",
        OPERATOR_EMAIL,
    ];
    let mut leaks = Vec::new();
    for (what, value) in secrets
        .iter()
        .map(|(what, value)| (*what, value.as_str()))
        .chain(personal.iter().map(|value| ("personal data", *value)))
    {
        for line in text.lines().filter(|line| line.contains(value)) {
            leaks.push(format!("{what} `{value}` in: {line}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}
