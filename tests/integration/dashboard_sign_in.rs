//! Operators sign in as themselves: the dashboard's OpenID Connect sign-in against a third-party
//! provider (oidc-provider-mock, over real HTTP), and its ID-token checks against the tokens a
//! Cognito user pool issues (moto's). Every action then names the operator.

use std::time::Duration;

use crm_sync::adapters::oidc_http::OidcHttpProvider;
use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync::ports::ProviderError;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::dashboard::csrf_in;
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::oidc::{query_of, OidcProvider, OperatorBrowser, CLIENT_ID};
use crm_sync_tests::{moto_endpoint, spawn_app_with, AppOptions, TestApp, DASHBOARD_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn app_signing_in_with(provider: &OidcProvider) -> TestApp {
    spawn_app_with(provider.dashboard_options(&provider.issuer, AppOptions::syncing())).await
}

#[tokio::test]
async fn an_operator_signs_in_through_the_identity_provider_and_their_re_sync_names_them() {
    let provider = OidcProvider::start();
    provider.add_operator("ada-sub-1", "ada@example.com").await;
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());

    let asked = browser.get("/admin/queues").await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER);
    let login = browser.get(asked.location.as_deref().unwrap()).await;
    assert!(login.body.contains("Sign in with Example SSO"), "{}", login.body);
    assert!(!login.body.contains("type=\"password\""), "no password here");

    let authorize = browser.start("%2Fadmin%2Fqueues").await;
    assert!(
        authorize.starts_with(&format!("{}/oauth2/authorize?", provider.issuer)),
        "{authorize}"
    );
    assert_eq!(
        query_of(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(query_of(&authorize, "client_id").as_deref(), Some(CLIENT_ID));
    assert!(query_of(&authorize, "nonce").is_some());
    let back = provider.sign_in(&authorize, "ada-sub-1").await;
    assert!(
        back.starts_with(&format!("{}/admin/auth/callback?", app.stack.url())),
        "{back}"
    );

    let landed = browser.get(&back).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert!(
        landed.body.contains("url=/admin/queues"),
        "the page moves on by itself, a same-site navigation: {}",
        landed.body
    );
    assert!(browser.cookie("crm_sync_session").is_some());
    assert!(
        browser.cookie("crm_sync_login").is_none(),
        "the login cookie is cleared"
    );

    let queues = browser.get("/admin/queues").await;
    assert_eq!(queues.status, StatusCode::OK, "{}", queues.body);
    assert!(
        queues.body.contains("ada@example.com"),
        "the page says who is signed in"
    );

    // A failed contact, re-synced by this operator.
    app.send_changes(&[contact("who-1", now_ms(), json!({"email": "not-an-email"}))])
        .await;
    let record = RecordRef {
        object: ObjectKind::Contact,
        record_id: "who-1".into(),
    };
    app.settled(record.clone(), SyncStatus::Failed).await;
    let page = browser.get("/admin/record?object=contact&id=who-1").await;
    let csrf = csrf_in(&page.body).expect("a CSRF token");
    let done = browser
        .post(
            "/admin/resync",
            &[
                ("csrf", &csrf),
                ("record", "contact/who-1"),
                ("back", "/admin/record?object=contact&id=who-1"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    app.timeline_says(record, "re-sync requested from the dashboard by ada@example.com")
        .await;
}

#[tokio::test]
async fn a_returning_browser_is_signed_in_once_and_only_where_the_sign_in_began() {
    let provider = OidcProvider::start();
    let app = app_signing_in_with(&provider).await;
    provider.add_operator("mallory-sub", "mallory@example.com").await;
    provider.add_operator("ada-sub", "ada@example.com").await;
    let mut victim = OperatorBrowser::new(&app.stack.url());
    let authorize = victim.start("%2Fadmin").await;
    let back = provider.sign_in(&authorize, "mallory-sub").await;

    // Login CSRF: the same link opened in another browser (a victim sent it) signs nobody in.
    let mut elsewhere = OperatorBrowser::new(&app.stack.url());
    let refused = elsewhere.get(&back).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(elsewhere.cookie("crm_sync_session").is_none());

    // The state was spent by that attempt: even its own browser cannot use it now.
    let replay = victim.get(&back).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.body.contains("no longer valid"), "{}", replay.body);
    assert!(victim.cookie("crm_sync_session").is_none());

    // A fresh sign-in works once, and its redirect replayed does not sign in again.
    let authorize = victim.start("%2Fadmin").await;
    let back = provider.sign_in(&authorize, "ada-sub").await;
    assert_eq!(victim.get(&back).await.status, StatusCode::OK);
    let first_session = victim.cookie("crm_sync_session").unwrap().to_string();
    let again = victim.get(&back).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(victim.cookie("crm_sync_session"), Some(first_session.as_str()));
}

#[tokio::test]
async fn a_code_from_another_sign_in_is_refused_by_its_nonce() {
    let provider = OidcProvider::start();
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    // An attacker's code (issued for their own sign-in, with its own nonce) injected into this
    // browser's sign-in.
    provider.add_operator("mallory-sub", "mallory@example.com").await;
    let mut attacker = OperatorBrowser::new(&app.stack.url());
    let theirs = attacker.start("%2Fadmin").await;
    let their_back = provider.sign_in(&theirs, "mallory-sub").await;
    let their_code = query_of(&their_back, "code").unwrap();

    let ours = browser.start("%2Fadmin").await;
    let state = query_of(&ours, "state").unwrap();
    let injected = format!(
        "/admin/auth/callback?code={}&state={}",
        form_urlencoded::byte_serialize(their_code.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>()
    );
    let refused = browser.get(&injected).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("did not verify"), "{}", refused.body);
    assert!(browser.cookie("crm_sync_session").is_none());
}

#[tokio::test]
async fn with_an_identity_provider_the_shared_password_signs_nobody_in() {
    let provider = OidcProvider::start();
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    let posted = browser
        .post(
            "/admin/login",
            &[("password", DASHBOARD_PASSWORD), ("next", "/admin")],
        )
        .await;
    assert_ne!(posted.status, StatusCode::SEE_OTHER);
    assert!(browser.cookie("crm_sync_session").is_none());
    assert_eq!(browser.get("/admin").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_sign_in_refused_or_cancelled_at_the_provider_says_so_and_opens_no_session() {
    let provider = OidcProvider::start();
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    let authorize = browser.start("%2Fadmin").await;
    let state = query_of(&authorize, "state").unwrap();
    let cancelled = browser
        .get(&format!("/admin/auth/callback?error=access_denied&state={state}"))
        .await;
    assert_eq!(cancelled.status, StatusCode::BAD_REQUEST);
    assert!(cancelled.body.contains("access_denied"), "{}", cancelled.body);

    // A code at the length limit goes to the provider, which refuses a made-up one; one past it
    // is not sent anywhere.
    for (code, expected) in [
        ("c".repeat(2048), StatusCode::FORBIDDEN),
        ("c".repeat(2049), StatusCode::BAD_REQUEST),
    ] {
        let authorize = browser.start("%2Fadmin").await;
        let state = query_of(&authorize, "state").unwrap();
        let answer = browser
            .get(&format!("/admin/auth/callback?code={code}&state={state}"))
            .await;
        assert_eq!(
            answer.status,
            expected,
            "{} characters: {}",
            code.len(),
            answer.body
        );
    }
    assert!(browser.cookie("crm_sync_session").is_none());
}

#[tokio::test]
async fn a_page_to_return_to_outside_the_dashboard_becomes_its_home() {
    let provider = OidcProvider::start();
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    provider.add_operator("ada-sub", "ada@example.com").await;
    let authorize = browser.start("https%3A%2F%2Fevil.example%2Fadmin").await;
    let back = provider.sign_in(&authorize, "ada-sub").await;
    let landed = browser.get(&back).await;
    assert_eq!(landed.status, StatusCode::OK);
    assert!(landed.body.contains("url=/admin\""), "{}", landed.body);
    assert!(!landed.body.contains("evil.example"));
}

#[tokio::test]
async fn an_account_outside_the_operators_group_is_refused_and_an_unverified_email_names_nobody() {
    let provider = OidcProvider::start();
    provider
        .set_user(
            "eve-sub",
            json!({"email": "eve@example.com", "email_verified": true, "groups": ["everyone"]}),
        )
        .await;
    provider
        .set_user(
            "bob-sub",
            json!({"email": "ada@example.com", "email_verified": false, "groups": ["operators"]}),
        )
        .await;
    let app = app_signing_in_with(&provider).await;

    // Signed in at the provider, but no operator (a federated user's first sign-in).
    let mut eve = OperatorBrowser::new(&app.stack.url());
    let authorize = eve.start("%2Fadmin").await;
    let back = provider.sign_in(&authorize, "eve-sub").await;
    let refused = eve.get(&back).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("not one of the dashboard"),
        "{}",
        refused.body
    );
    assert!(eve.cookie("crm_sync_session").is_none());

    // An operator whose email the provider has not verified is named by their id, not by an
    // address anyone could have typed (here, another operator's).
    let mut bob = OperatorBrowser::new(&app.stack.url());
    bob.sign_in(&provider, "bob-sub", "%2Fadmin%2Fqueues").await;
    let page = bob.get("/admin/queues").await.body;
    assert!(page.contains("<span class=\"operator\">bob-sub</span>"), "{page}");
    assert!(!page.contains("ada@example.com"));
}

#[tokio::test]
async fn signing_out_ends_the_session_here_and_sends_the_browser_to_end_it_at_the_provider() {
    let provider = OidcProvider::start();
    provider.add_operator("ada-sub", "ada@example.com").await;
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    browser.sign_in(&provider, "ada-sub", "%2Fadmin%2Fqueues").await;
    let page = browser.get("/admin/queues").await;
    let csrf = csrf_in(&page.body).expect("a CSRF token");
    let signed_out = browser.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(signed_out.status, StatusCode::OK, "{}", signed_out.body);
    assert!(browser.cookie("crm_sync_session").is_none());
    let return_to: String =
        form_urlencoded::byte_serialize(format!("{}/admin/login", app.stack.url()).as_bytes()).collect();
    let expected = format!(
        "{}/oauth2/end_session?client_id={CLIENT_ID}&amp;post_logout_redirect_uri={return_to}",
        provider.issuer
    );
    assert!(
        signed_out.body.contains(&format!("url={expected}")),
        "the page moves on to the provider's end_session_endpoint: {}",
        signed_out.body
    );
    assert_eq!(browser.get("/admin/queues").await.status, StatusCode::SEE_OTHER);
}

/// The checker's check: the provider these tests sign in with refuses a code redeemed with
/// another verifier than its challenge's, so the sign-in tests do prove crm-sync's PKCE.
#[tokio::test]
async fn the_test_provider_refuses_a_code_redeemed_with_the_wrong_pkce_verifier() {
    let provider = OidcProvider::start();
    provider.add_operator("ada-sub", "ada@example.com").await;
    let app = app_signing_in_with(&provider).await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    let authorize = browser.start("%2Fadmin").await;
    let back = provider.sign_in(&authorize, "ada-sub").await;
    let code = query_of(&back, "code").unwrap();
    let redirect_uri = query_of(&authorize, "redirect_uri").unwrap();
    let discovery: Value = reqwest::get(format!("{}/.well-known/openid-configuration", provider.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_verifier", &"w".repeat(43))
        .finish();
    let answer = reqwest::Client::new()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some("any"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

#[tokio::test]
async fn an_unreachable_identity_provider_is_a_clear_error_not_a_crash() {
    let app = spawn_app_with(
        AppOptions::default()
            .with_env("DASHBOARD_OIDC_ISSUER", "http://127.0.0.1:9")
            .with_env("DASHBOARD_OIDC_CLIENT_ID", CLIENT_ID),
    )
    .await;
    let mut browser = OperatorBrowser::new(&app.stack.url());
    let started = browser.get("/admin/auth/start?next=%2Fadmin").await;
    assert_eq!(started.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.body.contains("could not be reached"), "{}", started.body);
}

/// moto's Cognito over its JSON API (unsigned: moto does not check signatures).
async fn cognito(action: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(moto_endpoint())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("AWSCognitoIdentityProviderService.{action}"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/cognito-idp/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("moto answers");
    let status = response.status();
    let json: Value = response.json().await.unwrap_or_default();
    assert!(status.is_success(), "{action}: {status} {json}");
    json
}

/// A user pool with one operator and the dashboard's client; returns (pool id, client id,
/// ID token, access token).
async fn cognito_operator() -> (String, String, String, String) {
    let pool = cognito(
        "CreateUserPool",
        json!({"PoolName": format!("operators-{}", now_ms()), "UsernameAttributes": ["email"]}),
    )
    .await["UserPool"]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let client = cognito(
        "CreateUserPoolClient",
        json!({
            "UserPoolId": pool,
            "ClientName": "dashboard",
            "ExplicitAuthFlows": ["ADMIN_NO_SRP_AUTH"],
            "ReadAttributes": ["email", "email_verified"]
        }),
    )
    .await["UserPoolClient"]["ClientId"]
        .as_str()
        .unwrap()
        .to_string();
    // As the invitation in docs/dashboard.md makes an operator.
    cognito(
        "AdminCreateUser",
        json!({
            "UserPoolId": pool,
            "Username": "ada@example.com",
            "MessageAction": "SUPPRESS",
            "UserAttributes": [
                {"Name": "email", "Value": "ada@example.com"},
                {"Name": "email_verified", "Value": "true"}
            ]
        }),
    )
    .await;
    cognito(
        "CreateGroup",
        json!({"UserPoolId": pool, "GroupName": "operators"}),
    )
    .await;
    cognito(
        "AdminAddUserToGroup",
        json!({"UserPoolId": pool, "Username": "ada@example.com", "GroupName": "operators"}),
    )
    .await;
    cognito(
        "AdminSetUserPassword",
        json!({"UserPoolId": pool, "Username": "ada@example.com", "Password": "Correct-Horse-9", "Permanent": true}),
    )
    .await;
    let auth = cognito(
        "AdminInitiateAuth",
        json!({
            "UserPoolId": pool,
            "ClientId": client,
            "AuthFlow": "ADMIN_NO_SRP_AUTH",
            "AuthParameters": {"USERNAME": "ada@example.com", "PASSWORD": "Correct-Horse-9"}
        }),
    )
    .await;
    let result = &auth["AuthenticationResult"];
    (
        pool,
        client,
        result["IdToken"].as_str().unwrap().to_string(),
        result["AccessToken"].as_str().unwrap().to_string(),
    )
}

fn cognito_provider(pool: &str, client: &str) -> OidcHttpProvider {
    OidcHttpProvider::new(
        &format!("https://cognito-idp.us-east-1.amazonaws.com/{pool}"),
        client,
        None,
        Duration::from_secs(5),
    )
    .unwrap()
    // moto serves the pool's discovery document and JWKS at its own address.
    .with_discovery_url(&format!(
        "{}/{pool}/.well-known/openid-configuration",
        moto_endpoint()
    ))
}

#[tokio::test]
async fn a_cognito_id_token_names_its_operator_and_nothing_else_passes_for_one() {
    let (pool, client, id_token, access_token) = cognito_operator().await;
    let provider = cognito_provider(&pool, &client);
    let claims = provider
        .verify(&id_token, None)
        .await
        .expect("a Cognito ID token verifies");
    assert_eq!(claims.email.as_deref(), Some("ada@example.com"));
    assert_eq!(claims.groups, vec!["operators".to_string()]);
    assert!(!claims.subject.is_empty());

    let refused = |result: Result<_, ProviderError>| match result {
        Err(ProviderError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let why = refused(provider.verify(&access_token, None).await);
    assert!(why.contains("aud") || why.contains("not an ID token"), "{why}");
    let why = refused(provider.verify(&id_token, Some("this-sign-in")).await);
    assert!(why.contains("nonce"), "{why}");
    let why = refused(
        cognito_provider(&pool, "another-client")
            .verify(&id_token, None)
            .await,
    );
    assert!(why.to_lowercase().contains("aud"), "{why}");

    // Tampered: a payload claiming another operator, under the original signature.
    let parts: Vec<&str> = id_token.split('.').collect();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    payload["email"] = json!("mallory@example.com");
    let forged = format!("{}.{}.{}", parts[0], engine.encode(payload.to_string()), parts[2]);
    let why = refused(provider.verify(&forged, None).await);
    assert!(why.to_lowercase().contains("signature"), "{why}");

    // Unsigned (`alg: none`) is never accepted.
    let none = format!("{}.{}.", engine.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert!(matches!(
        provider.verify(&none, None).await,
        Err(ProviderError::Refused(_))
    ));
}
