//! The dashboard under `/admin` behind API Gateway (HTTP API, payload format 2.0): its axum
//! router, sign-in, CSRF checks, forms and redirects. What the pages show comes from
//! [`DashboardService`]; how they look from [`crate::dashboard::html`]; who is signed in from
//! [`SignIn`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use aws_config::SdkConfig;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use lambda_http::RequestExt;
use tower::ServiceExt as _;

use crate::adapters::dynamodb::{DynamoDbDashboardStore, DynamoDbSyncState};
use crate::adapters::hubspot;
use crate::adapters::oidc_http::OidcHttpProvider;
use crate::adapters::secrets_manager::read_secret_field_and_version;
use crate::adapters::sqs::{SqsDeadLetterQueue, SqsQueue};
use crate::config::{DashboardAccess, DashboardConfig, ProviderClient, RecordLinks, SecretSource};
use crate::dashboard::html::{self, Frame, Notice, RecordsView};
use crate::dashboard::oidc::{
    FinishError, ProviderSignIn, Returned, CALLBACK_PATH, LOGIN_COOKIE, LOGIN_TTL_MS,
};
use crate::dashboard::session::{Session, SignIn, SignInOutcome, COOKIE_NAME};
use crate::dashboard::{
    DashboardError, DashboardService, DashboardSettings, Lane, ResyncOutcome, SkipReason,
};
use crate::domain::clock::rfc3339;
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::domain::sync::{RecordFilter, SyncStatus};
use crate::domain::SystemClock;
use crate::ports::RedriveOutcome;

/// The dashboard HTTP API: its router over the dashboard service and the sign-in.
pub struct DashboardApi {
    router: Router,
}

/// What the routes share.
struct Dashboard {
    service: DashboardService,
    /// Sessions, and the shared password where there is no identity provider.
    access: SignIn,
    provider: Option<Provider>,
}

/// Sign-in through an identity provider.
pub struct Provider {
    pub flow: ProviderSignIn,
    /// Where the dashboard is reached (`https://host`); else rebuilt from each request.
    pub public_url: Option<String>,
}

/// One request, as the routes need it.
struct Incoming {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    form: Vec<(String, String)>,
    /// The caller's IP address, as API Gateway saw it (see [`client_ip`]).
    client: String,
}

impl Incoming {
    fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn https(&self) -> bool {
        self.headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|cookie| cookie.name() == name)
            .map(|cookie| cookie.value().to_string())
    }

    /// A cross-site POST is refused even before its token is checked: browsers send `Origin`
    /// (and `Sec-Fetch-Site`) on form posts, and they must name this very site.
    fn same_origin(&self) -> bool {
        let header = |name: &str| self.headers.get(name).and_then(|value| value.to_str().ok());
        if let Some(site) = header("sec-fetch-site") {
            if site != "same-origin" && site != "none" {
                return false;
            }
        }
        match (header("origin"), header("host")) {
            (None, _) => true,
            (Some(origin), Some(host)) => {
                let origin = origin.trim_end_matches('/');
                origin == format!("https://{host}") || origin == format!("http://{host}")
            }
            (Some(_), None) => false,
        }
    }
}

impl Incoming {
    fn read(parts: &Parts, body: &[u8]) -> Self {
        Incoming {
            client: client_ip(source_ip(parts).as_deref()),
            method: parts.method.clone(),
            query: parts.uri.query().unwrap_or("").to_string(),
            headers: parts.headers.clone(),
            form: form_urlencoded::parse(body)
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
            path: parts.uri.path().to_string(),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = whole_body(body).await;
        Ok(Incoming::read(&parts, &body))
    }
}

/// The body, whole: API Gateway has it in memory already (10 MB at most), and forms are small.
async fn whole_body(body: Body) -> axum::body::Bytes {
    axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default()
}

/// The caller's IP address: API Gateway's `sourceIp`, the TCP peer, which the caller cannot
/// choose. `X-Forwarded-For` is never read: its entries are whatever the caller wrote, so a
/// guesser could give each attempt a new address. Anything that is not an IP address, or no
/// address at all, is `unknown` (one counter for all such callers).
fn client_ip(source_ip: Option<&str>) -> String {
    source_ip
        .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

fn source_ip(request: &Parts) -> Option<String> {
    match request.request_context_ref()? {
        lambda_http::request::RequestContext::ApiGatewayV2(context) => context.http.source_ip.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Adds a cookie the dashboard sets: `HttpOnly`, `Secure` behind HTTPS, for `max_age` seconds
/// (an empty value and 0 clear it).
fn add_cookie(
    response: &mut Response,
    (name, path, same_site): (&'static str, &'static str, cookie::SameSite),
    value: &str,
    max_age: i64,
    https: bool,
) {
    let cookie = cookie::Cookie::build((name, value))
        .path(path)
        .max_age(cookie::time::Duration::seconds(max_age))
        .http_only(true)
        .same_site(same_site)
        .secure(https)
        .build();
    if let Ok(value) = cookie.to_string().parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The session cookie, for every dashboard page; never sent along from another site.
const SESSION: (&str, &str, cookie::SameSite) = (COOKIE_NAME, "/admin", cookie::SameSite::Strict);

/// The cookie that ties a sign-in under way to its browser. `Lax`, not `Strict`: it must come back
/// on the provider's redirect, a top-level navigation from another site.
const LOGIN: (&str, &str, cookie::SameSite) = (LOGIN_COOKIE, "/admin/auth", cookie::SameSite::Lax);

/// Sets the session cookie (`value`, for `max_age` seconds; empty and 0 clear it).
fn set_cookie(response: &mut Response, value: &str, max_age: i64, https: bool) {
    add_cookie(response, SESSION, value, max_age, https);
}

/// Where a redirect may go: only back into the dashboard.
fn safe_target(target: Option<&str>) -> String {
    match target {
        Some(target)
            if (target == "/admin" || target.starts_with("/admin/") || target.starts_with("/admin?"))
                && !target.contains("//")
                && !target.contains('\\')
                && !target.chars().any(char::is_control) =>
        {
            target.to_string()
        }
        _ => "/admin".into(),
    }
}

fn parse_record(key: &str) -> Option<RecordRef> {
    let (object, record_id) = key.split_once('/')?;
    Some(RecordRef {
        object: ObjectKind::parse(object)?,
        record_id: record_id.to_string(),
    })
    // No record id is longer (the message contract's limits: a link's id is both its records'),
    // and a longer one would not fit a DynamoDB key: it names no record.
    .filter(|record| {
        !record.record_id.is_empty()
            && if record.object == ObjectKind::Link {
                record.record_id.len() <= crate::domain::contract::MAX_LINK_ID_BYTES
            } else {
                record.record_id.chars().count() <= crate::domain::contract::MAX_ID_CHARS
            }
    })
}

fn page(status: StatusCode, html: String) -> Response {
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = status;
    secure(&mut response);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().expect("a valid header"),
    );
    response
}

fn redirect(to: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    secure(&mut response);
    if let Ok(location) = to.parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Headers on every answer: never cached, never framed, no scripts at all.
fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, value.parse().expect("a valid header"));
    }
}

fn with_query(path: &str, pairs: &[(&str, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    let query = serializer.finish();
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{query}")
}

impl DashboardApi {
    pub fn new(service: DashboardService, access: SignIn) -> Self {
        Self::with_provider(service, access, None)
    }

    /// With operators signing in through an identity provider (`access` then keeps sessions only).
    pub fn with_provider(service: DashboardService, access: SignIn, provider: Option<Provider>) -> Self {
        let dashboard = Arc::new(Dashboard {
            service,
            access,
            provider,
        });
        // Every page but the sign-in needs a session, and every form post its CSRF token.
        let signed_in = Router::new()
            // HEAD is no page: it would run a page's queries for nothing.
            .route("/admin", get(records).head(not_found))
            .route("/admin/record", get(record).head(not_found))
            .route("/admin/queues", get(queues).head(not_found))
            .route("/admin/health", get(health).head(not_found))
            .route("/admin/queues/letters", get(letters).head(not_found))
            .route("/admin/adoption", get(adoption_plan).head(not_found))
            .route("/admin/resync", post(resync))
            .route("/admin/failures/resync", post(resync_cause))
            .route("/admin/conflicts/dismiss", post(dismiss))
            .route("/admin/identity/share", post(share))
            .route("/admin/queues/redrive", post(redrive))
            .route("/admin/logout", post(sign_out))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .layer(middleware::from_fn_with_state(dashboard.clone(), require_session));
        let router = Router::new()
            .route("/admin/login", any(login))
            .route("/admin/auth/start", get(auth_start).head(not_found))
            .route(CALLBACK_PATH, get(auth_callback).head(not_found))
            .merge(signed_in)
            .with_state(dashboard);
        Self { router }
    }

    /// Wires DynamoDB, SQS and the dashboard password (read once, here, from Secrets Manager).
    ///
    /// Long on purpose: the dashboard function's wiring, every port once, in one place.
    pub async fn build(aws: &SdkConfig, config: DashboardConfig) -> anyhow::Result<Self> {
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        let sqs = aws_sdk_sqs::Client::new(aws);
        let sign_in_store = Arc::new(DynamoDbDashboardStore::new(dynamodb.clone(), config.table));
        let (access, provider) = match config.access {
            DashboardAccess::Password(source) => {
                // Sessions remember the password's version (never anything derived from the
                // password), so that a new password ends them. One from the environment has none.
                let (password, password_version) = match source {
                    SecretSource::Value(value) => (value, "environment".to_string()),
                    SecretSource::SecretsManager { secret_id, field } => {
                        let (value, version) = read_secret_field_and_version(
                            &aws_sdk_secretsmanager::Client::new(aws),
                            &secret_id,
                            field,
                        )
                        .await?;
                        (value, version.unwrap_or_else(|| "unversioned".to_string()))
                    }
                };
                let password = super::not_empty(
                    password,
                    "the dashboard password (DashboardSecret, DASHBOARD_PASSWORD)",
                )?;
                let access = SignIn::new(
                    &password,
                    password_version,
                    sign_in_store.clone(),
                    sign_in_store,
                    config.sign_in_limits,
                    config.session_ttl_ms,
                );
                (access, None)
            }
            DashboardAccess::Provider(settings) => {
                let (client_id, client_secret) = match settings.client {
                    ProviderClient::Values { id, secret } => (id, secret),
                    ProviderClient::SecretsManager { secret_id } => {
                        let fields = crate::adapters::secrets_manager::read_secret_json(
                            &aws_sdk_secretsmanager::Client::new(aws),
                            &secret_id,
                        )
                        .await?;
                        let text = |name: &str| fields.get(name).and_then(|value| value.as_str());
                        let id = text("client_id")
                            .filter(|id| !id.trim().is_empty())
                            .ok_or_else(|| anyhow::anyhow!("secret {secret_id} has no field `client_id`"))?;
                        // A public client (PKCE alone) has no secret.
                        let secret = text("client_secret")
                            .filter(|secret| !secret.is_empty())
                            .map(|secret| secrecy::SecretString::from(secret.to_string()));
                        (id.trim().to_string(), secret)
                    }
                };
                let identity = OidcHttpProvider::new(
                    &settings.issuer,
                    &client_id,
                    client_secret,
                    std::time::Duration::from_secs(10),
                )?;
                let access = SignIn::for_provider(
                    &settings.issuer,
                    sign_in_store.clone(),
                    sign_in_store.clone(),
                    config.session_ttl_ms,
                );
                let flow = ProviderSignIn::new(Arc::new(identity), sign_in_store, settings.name)
                    .requiring_group(settings.required_group);
                (
                    access,
                    Some(Provider {
                        flow,
                        public_url: settings.public_url,
                    }),
                )
            }
        };
        // Timeline retention only matters for entries this function writes: the re-sync notes.
        let state = Arc::new(DynamoDbSyncState::new(
            dynamodb.clone(),
            config.state_table.clone(),
            90 * 86_400_000,
        ));
        let lanes = config
            .lanes
            .into_iter()
            .map(|(name, queue_url, dlq_url)| Lane {
                name,
                description: match name {
                    "outbound" => "App changes that could not be written to the CRM.",
                    "inbound" => "CRM webhook events that could not be processed.",
                    _ => "CRM changes the app did not consume.",
                },
                queue: Arc::new(SqsDeadLetterQueue::new(sqs.clone(), dlq_url, queue_url)),
            })
            .collect();
        // A declared type's records link by its CRM object; links between records have no page.
        let declared = config.declared_objects;
        let mut types: Vec<ObjectKind> = ObjectKind::ALL
            .into_iter()
            .chain(declared.keys().copied())
            .collect();
        types.sort();
        types.push(ObjectKind::Link);
        let crm_record_url: Option<crate::dashboard::CrmRecordUrl> = match config.record_links {
            RecordLinks::HubSpot => match config.hubspot_portal_id {
                Some(portal) => {
                    let app_url = config.hubspot_app_url;
                    Some(Arc::new(move |object, crm_id: &str| {
                        match declared.get(&object) {
                            Some(crm_object) => {
                                hubspot::declared_record_url(&app_url, &portal, crm_object, crm_id)
                            }
                            None => hubspot::record_url(&app_url, &portal, object, crm_id),
                        }
                    }))
                }
                None => None,
            },
            RecordLinks::Pipedrive(app_url) => Some(Arc::new(move |object, crm_id: &str| {
                use crate::adapters::pipedrive::{declared_record_url, record_url};
                match declared.get(&object) {
                    Some(crm_object) => declared_record_url(&app_url, crm_object, crm_id),
                    None => record_url(&app_url, object, crm_id),
                }
            })),
            RecordLinks::Salesforce(instance) => Some(Arc::new(move |object, crm_id: &str| {
                use crate::adapters::salesforce::{declared_record_url, record_url};
                match declared.get(&object) {
                    Some(crm_object) => declared_record_url(&instance, crm_object, crm_id),
                    None => record_url(&instance, object, crm_id),
                }
            })),
            RecordLinks::None => None,
        };
        let settings = DashboardSettings {
            crm_record_url,
            types,
            display: config.display,
            ..DashboardSettings::default()
        };
        let mut service = DashboardService::new(
            state.clone(),
            state.clone(),
            lanes,
            Arc::new(SqsQueue::new(sqs, config.resync_queue_url)),
            Arc::new(SystemClock),
            settings,
        )
        .with_adoptions(state)
        .with_letters(Arc::new(
            crate::adapters::dynamodb::DynamoDbDeadLetterJournal::new(
                dynamodb.clone(),
                config.state_table.clone(),
            ),
        ));
        if let Some((table, key, limiter)) = config.budget {
            service = service.with_budget(Arc::new(crate::adapters::dynamodb::DynamoDbRateLimiter::new(
                dynamodb, table, key, limiter,
            )));
        }
        Ok(Self::with_provider(service, access, provider))
    }

    /// Answers one request; every failure is a page that says what went wrong.
    pub async fn handle(&self, request: lambda_http::Request) -> Result<Response, Infallible> {
        let path = super::raw_path(&request);
        // `/admin/../webhooks/x` or `/admin/%2e/queues` is no dashboard page, whatever a URL
        // parser would make of it (see `is_ambiguous_path`).
        if super::is_ambiguous_path(&path) {
            return Ok(not_found().await);
        }
        let route = match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        let mut response = self
            .router
            .clone()
            .oneshot(super::routed_by(request, route))
            .await?;
        // axum names the allowed methods on a route's fallback answers; the dashboard answers
        // those 404 (or asks for a sign-in), so there is nothing to allow.
        response.headers_mut().remove(header::ALLOW);
        Ok(response)
    }
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        html::message_page("Not found", "There is no such dashboard page."),
    )
}

/// Lets a request through with its [`Session`] once its cookie names a live session and, for a
/// form post, the form came from this site with the session's CSRF token.
async fn require_session(State(d): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = whole_body(body).await;
    let incoming = Incoming::read(&parts, &body);
    let now_ms = d.service.now_ms();
    let session = match incoming.cookie(COOKIE_NAME) {
        None => None,
        Some(cookie) => match d.access.session(&cookie, now_ms).await {
            Ok(session) => session,
            Err(error) => {
                tracing::error!(error = %error, detail = ?error, "could not read the dashboard session");
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    html::message_page("Something went wrong", &error.to_string()),
                );
            }
        },
    };
    let Some(session) = session else {
        if incoming.method == Method::GET && incoming.path.starts_with("/admin") {
            let here = if incoming.query.is_empty() {
                incoming.path.clone()
            } else {
                format!("{}?{}", incoming.path, incoming.query)
            };
            return redirect(&with_query("/admin/login", &[("next", safe_target(Some(&here)))]));
        }
        return page(
            StatusCode::UNAUTHORIZED,
            html::message_page("Signed out", "Sign in at /admin/login first."),
        );
    };
    if incoming.method == Method::POST {
        let token = incoming.field("csrf").unwrap_or("");
        if !incoming.same_origin() || !session.csrf_matches(token) {
            tracing::warn!(path = %incoming.path, "dashboard POST refused: cross-site or without its token");
            return page(
                StatusCode::FORBIDDEN,
                html::message_page(
                    "Refused",
                    "This form did not come from this dashboard page. Reload the page and try again.",
                ),
            );
        }
        // Who did what: every action let through, by the operator's stable id (never their email).
        tracing::info!(subject = %session.subject, path = %incoming.path, "dashboard action");
    }
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(session);
    next.run(request).await
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, detail = ?self, "dashboard request failed");
        let status = match self {
            DashboardError::BadCursor | DashboardError::UnknownLane(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        page(
            status,
            html::message_page("Something went wrong", &self.to_string()),
        )
    }
}

/// The sign-in form, and signing in with it.
async fn login(State(d): State<Arc<Dashboard>>, request: Incoming) -> Response {
    let next = safe_target(request.query("next").as_deref());
    if let Some(provider) = &d.provider {
        return page(
            StatusCode::OK,
            html::provider_login_page(
                &provider.flow.provider_name,
                None,
                &with_query("/admin/auth/start", &[("next", next)]),
            ),
        );
    }
    match request.method {
        Method::POST => sign_in(&d, &request, d.service.now_ms()).await,
        _ => page(StatusCode::OK, html::login_page(None, &next)),
    }
}

async fn sign_in(d: &Dashboard, request: &Incoming, now_ms: i64) -> Response {
    let next = safe_target(request.field("next"));
    if !request.same_origin() {
        return page(
            StatusCode::FORBIDDEN,
            html::message_page("Refused", "Sign in from the dashboard's own page."),
        );
    }
    let attempt = request.field("password").unwrap_or("");
    let outcome = match d.access.sign_in(&request.client, attempt, now_ms).await {
        Ok(outcome) => outcome,
        Err(error) => {
            // Failures cannot be counted: nobody signs in until they can.
            tracing::error!(error = %error, detail = ?error, "dashboard sign-in failed");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                html::login_page(Some("Signing in is unavailable right now; try again."), &next),
            );
        }
    };
    match outcome {
        SignInOutcome::SignedIn { cookie, .. } => {
            let mut response = redirect(&next);
            set_cookie(&mut response, &cookie, d.access.ttl_secs(), request.https());
            response
        }
        SignInOutcome::WrongPassword => page(
            StatusCode::UNAUTHORIZED,
            html::login_page(Some("That password is not right."), &next),
        ),
        SignInOutcome::TooManyFailures { until_ms } => {
            let wait_secs = (until_ms - now_ms).max(0).div_euclid(1000) + 1;
            let at = rfc3339(until_ms);
            let at = at.get(11..19).unwrap_or(&at);
            // "In 1 minute" up to a whole minute ahead, "in 15 minutes" up to 15.
            let minutes = (until_ms - now_ms - 1).max(0) / 60_000 + 1;
            let message = format!(
                "Too many failed sign-ins. Try again after {at} UTC (in {} {}).",
                minutes,
                if minutes == 1 { "minute" } else { "minutes" }
            );
            let mut response = page(
                StatusCode::TOO_MANY_REQUESTS,
                html::login_page(Some(message.as_str()), &next),
            );
            if let Ok(value) = wait_secs.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// Sets or clears (`max_age` 0) the cookie that ties a sign-in under way to this browser.
fn set_login_cookie(response: &mut Response, value: &str, max_age: i64, https: bool) {
    add_cookie(response, LOGIN, value, max_age, https);
}

/// Where the dashboard is reached: the configured address, else the request's. A forged `Host`
/// only misleads its own sender: the provider returns browsers only to registered addresses.
fn public_base(provider: &Provider, request: &Incoming) -> String {
    match &provider.public_url {
        Some(base) => base.clone(),
        None => {
            let scheme = if request.https() { "https" } else { "http" };
            let host = request
                .headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("localhost");
            format!("{scheme}://{host}")
        }
    }
}

/// The redirect URI the provider sends the browser back to.
fn callback_url(provider: &Provider, request: &Incoming) -> String {
    format!("{}{CALLBACK_PATH}", public_base(provider, request))
}

fn provider_login_failed(provider: &Provider, status: StatusCode, message: &str) -> Response {
    page(
        status,
        html::provider_login_page(&provider.flow.provider_name, Some(message), "/admin/auth/start"),
    )
}

/// Sends the browser to the identity provider.
async fn auth_start(State(d): State<Arc<Dashboard>>, request: Incoming) -> Response {
    let Some(provider) = &d.provider else {
        return not_found().await;
    };
    let next = safe_target(request.query("next").as_deref());
    let redirect_uri = callback_url(provider, &request);
    match provider
        .flow
        .start(&redirect_uri, &next, d.service.now_ms())
        .await
    {
        Ok(started) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SEE_OTHER;
            secure(&mut response);
            match started.url.parse() {
                Ok(location) => response.headers_mut().insert(header::LOCATION, location),
                Err(_) => {
                    return provider_login_failed(
                        provider,
                        StatusCode::BAD_GATEWAY,
                        "The identity provider's sign-in address is not a valid URL.",
                    )
                }
            };
            set_login_cookie(
                &mut response,
                &started.login_cookie,
                LOGIN_TTL_MS / 1000,
                request.https(),
            );
            response
        }
        Err(error) => {
            tracing::error!(error = %error, detail = ?error, "could not start a sign-in at the identity provider");
            provider_login_failed(
                provider,
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is unavailable right now: the identity provider could not be reached. Try again.",
            )
        }
    }
}

/// The provider sent the browser back: a session for the operator it names, or a clear refusal.
async fn auth_callback(State(d): State<Arc<Dashboard>>, request: Incoming) -> Response {
    let Some(provider) = &d.provider else {
        return not_found().await;
    };
    let (state, code, error) = (
        request.query("state"),
        request.query("code"),
        request.query("error"),
    );
    let login_cookie = request.cookie(LOGIN_COOKIE);
    let returned = Returned {
        state: state.as_deref(),
        code: code.as_deref(),
        error: error.as_deref(),
        login_cookie: login_cookie.as_deref(),
    };
    let outcome = provider
        .flow
        .finish(&d.access, returned, d.service.now_ms())
        .await;
    let mut response = match outcome {
        Ok(finished) => {
            let mut response = page(
                StatusCode::OK,
                html::continue_page(&safe_target(Some(&finished.next))),
            );
            set_cookie(
                &mut response,
                &finished.cookie,
                d.access.ttl_secs(),
                request.https(),
            );
            response
        }
        Err(error) => {
            // The page says what the operator can do; the log says why (it is no business of
            // someone not signed in which check failed, or what the provider answered).
            let (status, message) = match &error {
                FinishError::Unknown => (
                    StatusCode::BAD_REQUEST,
                    "Not signed in: this sign-in is no longer valid (it took longer than 10 minutes, \
                     was used already, or began in another browser). Start again."
                        .to_string(),
                ),
                FinishError::Denied(why) => (
                    StatusCode::BAD_REQUEST,
                    format!("Not signed in: the identity provider did not sign you in ({why})."),
                ),
                FinishError::NotAnOperator => (
                    StatusCode::FORBIDDEN,
                    "Not signed in: this account is not one of the dashboard's operators. Ask an \
                     administrator to add it."
                        .to_string(),
                ),
                FinishError::Provider(crate::ports::ProviderError::Refused(_)) => (
                    StatusCode::FORBIDDEN,
                    "Not signed in: the identity provider's answer did not verify. The dashboard's \
                     log says why."
                        .to_string(),
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Not signed in: the identity provider could not be reached. Try again.".to_string(),
                ),
            };
            tracing::warn!(error = %error, status = status.as_u16(), "dashboard sign-in through the identity provider failed");
            provider_login_failed(provider, status, &message)
        }
    };
    set_login_cookie(&mut response, "", 0, request.https());
    response
}

/// Ends the session for every copy of the cookie, then clears this browser's.
async fn sign_out(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    d.access.sign_out(&session).await?;
    // Signed out at the provider too, or the next "Sign in" would go straight back in as the
    // same person, without a password: on a shared computer, someone else would act under their
    // name. A page that moves on by itself, not a redirect: the Content-Security-Policy's
    // `form-action 'self'` stops a form's redirect to another site.
    let at_provider = match &d.provider {
        Some(provider) => {
            let return_to = format!("{}/admin/login", public_base(provider, &request));
            provider.flow.logout_url(&return_to).await
        }
        None => None,
    };
    let mut response = match at_provider {
        Some(url) => page(StatusCode::OK, html::signed_out_page(&url)),
        None => redirect("/admin/login"),
    };
    set_cookie(&mut response, "", 0, request.https());
    Ok(response)
}

fn notice(request: &Incoming) -> Option<Notice> {
    let number = |name: &str| request.query(name).and_then(|n| n.parse().ok()).unwrap_or(0);
    match request.query("done")?.as_str() {
        "resync" => Some(Notice::Resync {
            queued: number("queued"),
            skipped: number("skipped"),
            reason: request
                .query("why")
                .and_then(|code| SkipReason::describe(&code))
                .map(str::to_string),
            more: number("more") > 0,
        }),
        "dismissed" => Some(Notice::Dismissed),
        "busy" => Some(Notice::Error(
            "Not dismissed: a sync is writing this record right now. Try again in a moment.".into(),
        )),
        "shared" => Some(Notice::Shared),
        "redrive" => Some(Notice::Redrive {
            lane: request
                .query("lane")
                .filter(|lane| ["outbound", "inbound", "app-inbox"].contains(&lane.as_str()))?,
            outcome: RedriveOutcome {
                letters: Vec::new(),
                moved: number("moved"),
                failed: number("failed"),
                more: number("more") > 0,
            },
        }),
        _ => None,
    }
}

async fn records(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let (csrf, now_ms) = (session.csrf_token(), d.service.now_ms());
    let query = request.query("q").unwrap_or_default();
    let counts = d.service.counts().await?;
    let frame = Frame {
        csrf,
        operator: &session.operator,
        now_ms,
        notice: notice(&request),
    };
    let crm_url = |state: &_| d.service.crm_url(state);
    if !query.trim().is_empty() {
        let records = d.service.search(&query).await?;
        let here = with_query("/admin", &[("q", query.clone())]);
        let names = d.service.display_names(&records);
        let view = RecordsView {
            query: &query,
            ..RecordsView::one_page(&counts, &records, &names, &here)
        };
        return Ok(page(StatusCode::OK, html::records_page(&frame, &view, &crm_url)));
    }
    let filter = request
        .query("filter")
        .and_then(|name| RecordFilter::parse(&name))
        .unwrap_or(RecordFilter::Status(SyncStatus::Failed));
    let cursor = request.query("cursor").filter(|cursor| !cursor.is_empty());
    // An object type this instance does not know lists nothing rather than everything.
    let object = request.query("type").map(|name| {
        d.service
            .types()
            .iter()
            .copied()
            .find(|kind| kind.as_str() == name)
    });
    if let Some(None) = object {
        return Ok(page(
            StatusCode::NOT_FOUND,
            html::message_page(
                "No such object type",
                "The mapping declares no object type of that name.",
            ),
        ));
    }
    let object = object.flatten();
    if filter == RecordFilter::Status(SyncStatus::Failed) {
        if let Some(key) = request.query("cause").filter(|key| !key.is_empty()) {
            return failures_of_cause(&d, &frame, &counts, &key).await;
        }
    }
    // The landing page leads with sync's health and the failures' causes.
    let (groups, health) = match (filter, object, &cursor) {
        (RecordFilter::Status(SyncStatus::Failed), None, None) => {
            let (groups, health) = futures::join!(d.service.failure_groups(), d.service.health());
            let health = health.facts;
            // The listing still shows when the grouping cannot be read.
            let groups = groups
                .map_err(|error| tracing::warn!(error = %error, "could not group the failures"))
                .ok();
            (groups, Some(health))
        }
        _ => (None, None),
    };
    let listing = d.service.list(filter, object, cursor.clone()).await?;
    let mut here_query = vec![("filter", filter.as_str().to_string())];
    if let Some(object) = object {
        here_query.push(("type", object.as_str().to_string()));
    }
    if let Some(cursor) = cursor {
        here_query.push(("cursor", cursor));
    }
    let here = with_query("/admin", &here_query);
    let view = RecordsView {
        counts: &counts,
        filter: Some(filter),
        query: "",
        records: &listing.records,
        names: &d.service.display_names(&listing.records),
        next_cursor: listing.next.as_deref(),
        here: &here,
        object,
        types: d.service.types(),
        groups: groups.as_ref(),
        cause: None,
        health: health.as_ref(),
    };
    Ok(page(StatusCode::OK, html::records_page(&frame, &view, &crm_url)))
}

/// The failed records of one cause.
async fn failures_of_cause(
    d: &Dashboard,
    frame: &Frame<'_>,
    counts: &[(RecordFilter, crate::domain::sync::Tally)],
    key: &str,
) -> Result<Response, DashboardError> {
    let (records, _) = d.service.failed_with_cause(key).await?;
    let cause = records
        .first()
        .map(|state| crate::domain::failures::cause_of(state.last_error.as_deref().unwrap_or_default()));
    let Some(cause) = cause else {
        return Ok(page(
            StatusCode::OK,
            html::message_page(
                "No failures of this cause",
                "No failed record has this cause now: fixed, re-synced, or failing for another reason.",
            ),
        ));
    };
    let here = with_query(
        "/admin",
        &[("filter", "failed".to_string()), ("cause", key.to_string())],
    );
    let crm_url = |state: &_| d.service.crm_url(state);
    let names = d.service.display_names(&records);
    let view = RecordsView {
        filter: Some(RecordFilter::Status(SyncStatus::Failed)),
        cause: Some(&cause),
        ..RecordsView::one_page(counts, &records, &names, &here)
    };
    Ok(page(StatusCode::OK, html::records_page(frame, &view, &crm_url)))
}
async fn record(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let (csrf, now_ms) = (session.csrf_token(), d.service.now_ms());
    let record = request
        .query("object")
        .zip(request.query("id"))
        .and_then(|(object, id)| parse_record(&format!("{object}/{id}")));
    let Some(record) = record else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            html::message_page(
                "Not a record",
                "A record page needs ?object=<type>&id=… (contact, deal, activity, link or a type the mapping declares)",
            ),
        ));
    };
    let Some(view) = d.service.record(&record).await? else {
        return Ok(page(
            StatusCode::NOT_FOUND,
            html::message_page(
                "No such record",
                "crm-sync has never seen a change of this record.",
            ),
        ));
    };
    let frame = Frame {
        csrf,
        operator: &session.operator,
        now_ms,
        notice: notice(&request),
    };
    let crm_url = d.service.crm_url(&view.state);
    let follow = request.query("follow").as_deref() != Some("0");
    Ok(page(
        StatusCode::OK,
        html::record_page(&frame, &view, crm_url, follow),
    ))
}

async fn queues(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let (csrf, now_ms) = (session.csrf_token(), d.service.now_ms());
    let (lanes, report, backfills, plans) = futures::future::join4(
        d.service.lanes(),
        d.service.latest_report(),
        d.service.backfills(),
        d.service.plans(),
    )
    .await;
    let frame = Frame {
        csrf,
        operator: &session.operator,
        now_ms,
        notice: notice(&request),
    };
    let report_error = report.as_ref().err().map(ToString::to_string);
    let report = match &report {
        Ok(report) => Ok(report.as_ref()),
        Err(_) => Err(report_error.as_deref().unwrap_or("")),
    };
    let backfills = backfills.map_err(|error| error.to_string());
    let plans = plans.map_err(|error| error.to_string());
    Ok(page(
        StatusCode::OK,
        html::queues_page(
            &frame,
            &lanes,
            report,
            backfills.as_deref().map_err(String::as_str),
            plans.as_deref().map_err(String::as_str),
        ),
    ))
}

async fn health(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let health = d.service.health().await;
    let frame = Frame {
        csrf: session.csrf_token(),
        operator: &session.operator,
        now_ms: health.facts.now_ms,
        notice: notice(&request),
    };
    let report = match &health.report {
        Ok(report) => Ok(report.as_ref()),
        Err(error) => Err(error.as_str()),
    };
    Ok(page(
        StatusCode::OK,
        html::health_page(&frame, &health.facts, &health.lanes, report),
    ))
}

async fn letters(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let lane = request.query("lane").unwrap_or_default();
    let query = request.query("q").unwrap_or_default();
    // Longer than anything worth searching, and than a DynamoDB filter value should carry.
    let query: String = query.chars().take(200).collect();
    let cursor = request.query("cursor").filter(|cursor| !cursor.is_empty());
    let page_of = d
        .service
        .letters(&lane, Some(query.as_str()), cursor.clone())
        .await?;
    let frame = Frame {
        csrf: session.csrf_token(),
        operator: &session.operator,
        now_ms: d.service.now_ms(),
        notice: notice(&request),
    };
    Ok(page(
        StatusCode::OK,
        html::letters_page(&frame, &lane, &query, &page_of, cursor.as_deref()),
    ))
}

async fn adoption_plan(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let (csrf, now_ms) = (session.csrf_token(), d.service.now_ms());
    let Some(plan_id) = request.query("plan").filter(|id| !id.is_empty()) else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            html::message_page("Not a plan", "A plan page needs ?plan=<plan id>"),
        ));
    };
    // crm-sync-adopt makes plan ids (`plan-<time>`); a longer one than 256 bytes is none and is
    // not looked up: `plan#<id>` would pass DynamoDB's 1,024-byte sort key, a ValidationException.
    let found = match plan_id.len() <= 256 {
        true => d.service.plan(&plan_id).await?,
        false => None,
    };
    let Some((plan, backfill)) = found else {
        return Ok(page(
            StatusCode::NOT_FOUND,
            html::message_page(
                "No such plan",
                "No plan of this id was saved. Plans made with crm-sync-adopt plan are listed on the Queues page.",
            ),
        ));
    };
    let frame = Frame {
        csrf,
        operator: &session.operator,
        now_ms,
        notice: notice(&request),
    };
    Ok(page(
        StatusCode::OK,
        html::plan_page(&frame, &plan, backfill.as_ref()),
    ))
}

async fn resync(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let field = if request.field("scope") == Some("page") {
        "page_record"
    } else {
        "record"
    };
    let records: Vec<RecordRef> = request
        .fields(field)
        .filter_map(parse_record)
        .take(d.service.settings().page_size)
        .collect();
    let outcome = d.service.resync(&records, &session.operator).await?;
    tracing::info!(
        subject = %session.subject,
        queued = outcome.queued.len(),
        skipped = outcome.skipped.len(),
        "dashboard re-sync"
    );
    Ok(resync_done(&request, &outcome, None))
}

/// Back where a re-sync was asked for, with what it did (and whether more are left).
fn resync_done(request: &Incoming, outcome: &ResyncOutcome, more: Option<bool>) -> Response {
    let mut pairs = vec![
        ("done", "resync".to_string()),
        ("queued", outcome.queued.len().to_string()),
        ("skipped", outcome.skipped.len().to_string()),
    ];
    if let Some(more) = more {
        pairs.push(("more", u8::from(more).to_string()));
    }
    if let Some((_, reason)) = outcome.skipped.first() {
        pairs.push(("why", reason.code().to_string()));
    }
    redirect(&with_query(&safe_target(request.field("back")), &pairs))
}

async fn resync_cause(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let key = request.field("cause").unwrap_or_default();
    let (outcome, more) = d.service.resync_cause(key, &session.operator).await?;
    Ok(resync_done(&request, &outcome, Some(more)))
}

async fn dismiss(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let Some(record) = request.field("record").and_then(parse_record) else {
        return Ok(redirect("/admin"));
    };
    let done = if d.service.dismiss_conflicts(&record, &session.operator).await? {
        "dismissed"
    } else {
        "busy"
    };
    Ok(redirect(&with_query(
        &html::record_href(&record),
        &[("done", done.to_string())],
    )))
}

async fn share(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let Some(record) = request.field("record").and_then(parse_record) else {
        return Ok(redirect("/admin"));
    };
    d.service.share_crm_record(&record, &session.operator).await?;
    Ok(redirect(&with_query(
        &html::record_href(&record),
        &[("done", "shared".to_string())],
    )))
}

async fn redrive(
    State(d): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    request: Incoming,
) -> Result<Response, DashboardError> {
    let lane = request.field("lane").unwrap_or("");
    let outcome = d.service.redrive(lane, &session.operator).await?;
    Ok(redirect(&with_query(
        "/admin/queues",
        &[
            ("done", "redrive".to_string()),
            ("lane", lane.to_string()),
            ("moved", outcome.moved.to_string()),
            ("failed", outcome.failed.to_string()),
            ("more", u8::from(outcome.more).to_string()),
        ],
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_inside_the_dashboard() {
        assert_eq!(safe_target(Some("/admin?filter=failed")), "/admin?filter=failed");
        assert_eq!(
            safe_target(Some("/admin/record?object=contact&id=1")),
            "/admin/record?object=contact&id=1"
        );
        for hostile in [
            "https://evil.example",
            "//evil.example",
            "/admin//evil",
            "/adminx",
            "/admin\\x",
            "",
        ] {
            assert_eq!(safe_target(Some(hostile)), "/admin", "{hostile}");
        }
        assert_eq!(safe_target(None), "/admin");
    }

    #[test]
    fn the_client_is_api_gateways_source_ip_and_never_a_forwarded_header() {
        assert_eq!(client_ip(Some("203.0.113.9")), "203.0.113.9");
        assert_eq!(client_ip(Some("2001:db8::1")), "2001:db8::1");
        assert_eq!(client_ip(Some("")), "unknown");
        assert_eq!(client_ip(None), "unknown");
        assert_eq!(client_ip(Some("all")), "unknown");
    }

    #[test]
    fn a_record_key_names_a_known_object_type_and_an_id() {
        assert_eq!(
            parse_record("contact/a/b"),
            Some(RecordRef {
                object: ObjectKind::Contact,
                record_id: "a/b".into()
            })
        );
        assert_eq!(parse_record("widget/1"), None);
        assert_eq!(parse_record("contact/"), None);
    }
}
