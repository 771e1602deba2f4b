//! `POST /webhooks/{provider}` behind API Gateway (HTTP API, payload format 2.0), routed by axum.

use std::convert::Infallible;
use std::sync::Arc;

use aws_config::SdkConfig;
use axum::body::Body;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tower::ServiceExt as _;

use crate::adapters::dynamodb::DynamoDbWebhookStore;
use crate::adapters::hubspot::{HubSpotWebhookSettings, HubSpotWebhooks};
use crate::adapters::pipedrive::{PipedriveWebhookSettings, PipedriveWebhooks};
use crate::adapters::salesforce::{SalesforceOutboundMessages, SalesforceWebhookSettings};
use crate::adapters::sqs::SqsQueue;
use crate::config::WebhookConfig;
use crate::domain::{SystemClock, WebhookRequest};
use crate::ingest::{IngestError, WebhookIngest};
use crate::ports::WebhookProvider;

/// The webhook HTTP API: its router over the ingest service.
pub struct WebhookApi {
    router: Router,
}

/// What the routes share.
struct Webhooks {
    ingest: WebhookIngest,
    public_base_url: Option<String>,
}

impl WebhookApi {
    pub fn new(ingest: WebhookIngest, public_base_url: Option<String>) -> Self {
        let webhooks = Arc::new(Webhooks {
            ingest,
            public_base_url,
        });
        let router = Router::new()
            .route("/webhooks/{provider}", post(receive).fallback(not_post))
            .fallback(no_route)
            .with_state(webhooks);
        Self { router }
    }

    /// Wires the production adapters: DynamoDB, SQS, and each provider's secret (read once, here).
    /// A provider whose secret is empty is left out, so its route answers 404: an empty secret
    /// would prove nothing, and it is how a stack for another CRM leaves it unset.
    pub async fn build(aws: &SdkConfig, config: WebhookConfig) -> anyhow::Result<Self> {
        let mut providers: Vec<Arc<dyn WebhookProvider>> = Vec::new();
        if let Some(client_secret) = present(
            super::resolve_secret(aws, config.hubspot_secret).await?,
            "hubspot",
        ) {
            let mut hubspot = HubSpotWebhookSettings::new(client_secret);
            hubspot.accept_legacy_signatures = config.hubspot_accept_legacy_signatures;
            hubspot.replay_window_secs = config.hubspot_replay_window_secs;
            providers.push(Arc::new(HubSpotWebhooks::new(hubspot)));
        }
        if let Some(pipedrive) = config.pipedrive {
            if let Some(password) =
                present(super::resolve_secret(aws, pipedrive.password).await?, "pipedrive")
            {
                providers.push(Arc::new(PipedriveWebhooks::new(&PipedriveWebhookSettings {
                    username: pipedrive.username,
                    password,
                })));
            }
        }
        if let Some(salesforce) = config.salesforce {
            if let Some(token) = present(super::resolve_secret(aws, salesforce.token).await?, "salesforce") {
                providers.push(Arc::new(SalesforceOutboundMessages::new(
                    &SalesforceWebhookSettings {
                        organization_id: salesforce.organization_id,
                        token,
                    },
                )));
            }
        }
        let ingest = WebhookIngest::new(
            providers,
            Arc::new(DynamoDbWebhookStore::new(
                aws_sdk_dynamodb::Client::new(aws),
                config.table,
            )),
            Arc::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(aws),
                config.inbound_queue_url,
            )),
            Arc::new(SystemClock),
            config.ingest,
        );
        Ok(Self::new(ingest, config.public_base_url))
    }

    /// Answers one request. Never fails: every outcome is an HTTP status with a one-line reason.
    ///
    /// Routes by the raw path API Gateway received, whatever prefix (stage, API mapping) comes
    /// before `/webhooks/{provider}`; a path a URL parser would read as another names no provider.
    pub async fn handle(&self, request: Request) -> Result<Response, Infallible> {
        let path = super::raw_path(&request);
        let provider = provider_in_path(&path).map(str::to_string);
        let route = match &provider {
            Some(provider) => format!("/webhooks/{provider}"),
            None => "/".to_string(),
        };
        let mut request = super::routed_by(request, &route);
        // The provider as sent: a path parameter would arrive percent-decoded, and
        // `/webhooks/hub%73pot` names no provider.
        request
            .extensions_mut()
            .insert(Provider(provider.unwrap_or_default()));
        let mut response = self.router.clone().oneshot(request).await?;
        // axum names the allowed methods on every answer of a route's fallback; only a 405 has
        // something to say there.
        if response.status() != StatusCode::METHOD_NOT_ALLOWED {
            response.headers_mut().remove(header::ALLOW);
        }
        Ok(response)
    }
}

/// The provider segment of the path, as sent.
#[derive(Clone)]
struct Provider(String);

async fn receive(
    State(webhooks): State<Arc<Webhooks>>,
    Extension(Provider(provider)): Extension<Provider>,
    request: axum::extract::Request,
) -> Response {
    if !webhooks.ingest.knows_provider(&provider) {
        return unknown_provider(&provider);
    }
    let (parts, body) = request.into_parts();
    // API Gateway holds the whole body already (10 MB at most); the ingest applies its own limit.
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let webhook = to_webhook_request(&parts, &body, webhooks.public_base_url.as_deref(), &provider);
    let ingest = &webhooks.ingest;
    match ingest.ingest(&provider, &webhook).await {
        Ok(report) => {
            tracing::info!(
                provider,
                delivery_id = %report.delivery_id,
                events = report.events,
                enqueued = report.enqueued,
                duplicates = report.duplicates,
                "delivery accepted"
            );
            match ingest.acknowledgement(&provider) {
                Some(ack) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, ack.content_type)
                    .body(Body::from(ack.body.to_string()))
                    .expect("a static response is valid"),
                None => json_response(
                    StatusCode::OK,
                    &json!({
                        "delivery_id": report.delivery_id,
                        "events": report.events,
                        "enqueued": report.enqueued,
                        "duplicates": report.duplicates,
                    }),
                ),
            }
        }
        Err(error) => {
            let (status, code) = classify(&error);
            if status.is_server_error() {
                tracing::error!(provider, error = ?error, "delivery not accepted; the CRM will retry");
            } else {
                tracing::warn!(provider, status = status.as_u16(), reason = %error, "delivery rejected");
            }
            reply(status, code, &error.to_string())
        }
    }
}

/// Any other method on a webhook route: 405 for a provider this function knows, else 404.
async fn not_post(
    State(webhooks): State<Arc<Webhooks>>,
    Extension(Provider(provider)): Extension<Provider>,
) -> Response {
    if !webhooks.ingest.knows_provider(&provider) {
        return unknown_provider(&provider);
    }
    let mut response = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "webhooks are received with POST only",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn no_route() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; webhooks go to POST /webhooks/{provider}",
    )
}

fn unknown_provider(provider: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "unknown_provider",
        &format!("no webhook provider is called `{}`", truncate(provider)),
    )
}

fn present(secret: SecretString, provider: &str) -> Option<SecretString> {
    if secret.expose_secret().trim().is_empty() {
        tracing::warn!(
            provider,
            "the provider's secret is empty; its webhooks are refused"
        );
        None
    } else {
        Some(secret)
    }
}

fn classify(error: &IngestError) -> (StatusCode, &'static str) {
    match error {
        IngestError::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        IngestError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        IngestError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        IngestError::Unavailable(_) | IngestError::Incomplete { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// The provider segment of `.../webhooks/{provider}`; any prefix (stage, API mapping) is allowed,
/// but no `.` or `..` segment or backslash anywhere (see [`super::is_ambiguous_path`]).
fn provider_in_path(path: &str) -> Option<&str> {
    if super::is_ambiguous_path(path) {
        return None;
    }
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let provider = segments.next()?;
    (segments.next()? == "webhooks" && !provider.is_empty()).then_some(provider)
}

fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

/// The URL the CRM called: the configured base, or scheme, host, raw path and raw query as they
/// reached API Gateway (percent-escapes untouched, as signatures need them).
fn public_url(request: &Parts, base: Option<&str>, provider: &str) -> String {
    let mut url = match base {
        Some(base) => format!("{base}/webhooks/{provider}"),
        None => {
            let scheme = header_text(request, "x-forwarded-proto").unwrap_or("https");
            let host = header_text(request, "host")
                .map(str::to_string)
                .or_else(|| match request.request_context_ref() {
                    Some(RequestContext::ApiGatewayV2(context)) => context.domain_name.clone(),
                    _ => None,
                })
                .unwrap_or_default();
            format!("{scheme}://{host}{}", super::raw_path_of(request))
        }
    };
    if let Some(query) = request.uri.query().filter(|query| !query.is_empty()) {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn header_text<'a>(request: &'a Parts, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|value| value.to_str().ok())
}

fn to_webhook_request(request: &Parts, body: &[u8], base: Option<&str>, provider: &str) -> WebhookRequest {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(request.headers.len());
    for (name, value) in &request.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.iter_mut().find(|(existing, _)| existing == name.as_str()) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            None => headers.push((name.as_str().to_string(), value)),
        }
    }
    WebhookRequest {
        method: request.method.as_str().to_string(),
        public_url: public_url(request, base, provider),
        headers,
        body: body.to_vec(),
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a static response is valid")
}

fn reply(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, &json!({ "error": code, "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::pipedrive::{PipedriveWebhookSettings, PipedriveWebhooks};
    use crate::testing::{ManualClock, MemoryQueue, MemoryWebhookStore};

    /// The API with Pipedrive's webhooks, over in-memory ports.
    fn api() -> WebhookApi {
        let provider = PipedriveWebhooks::new(&PipedriveWebhookSettings {
            username: "hooks".into(),
            password: SecretString::from("hook password"),
        });
        let ingest = WebhookIngest::new(
            vec![Arc::new(provider)],
            Arc::new(MemoryWebhookStore::default()),
            Arc::new(MemoryQueue::default()),
            Arc::new(ManualClock::at(1_796_000_000_000)),
            crate::ingest::IngestSettings::default(),
        );
        WebhookApi::new(ingest, None)
    }

    async fn answer(method: &str, target: &str) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::new(lambda_http::Body::Empty);
        *request.method_mut() = method.parse().unwrap();
        *request.uri_mut() = target.parse().unwrap();
        let response = api().handle(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    use axum::http::HeaderMap;

    #[tokio::test]
    async fn a_provider_spelled_with_percent_escapes_is_no_provider() {
        let (status, headers, body) = answer("POST", "/webhooks/pipe%64rive").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("unknown_provider"), "{body}");
        assert!(headers.get(header::ALLOW).is_none(), "a 404 allows nothing");
        let (status, _, body) = answer("POST", "/webhooks/%FF").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }

    #[tokio::test]
    async fn only_post_is_allowed_on_a_known_provider_and_the_405_says_so() {
        let (status, headers, body) = answer("GET", "/prod/webhooks/pipedrive/").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        assert_eq!(headers.get(header::ALLOW).unwrap(), "POST");
        let (status, headers, _) = answer("GET", "/webhooks/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers.get(header::ALLOW).is_none());
    }

    #[tokio::test]
    async fn a_post_with_the_wrong_credentials_reaches_the_ingest_and_is_refused() {
        let (status, _, body) = answer("POST", "/webhooks/pipedrive").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, _, body) = answer("POST", "/webhooks/pipedrive?x=1").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }

    #[test]
    fn the_provider_is_the_segment_after_webhooks_whatever_the_prefix() {
        assert_eq!(provider_in_path("/webhooks/hubspot"), Some("hubspot"));
        assert_eq!(provider_in_path("/prod/webhooks/hubspot/"), Some("hubspot"));
        assert_eq!(provider_in_path("/webhooks/"), None);
        assert_eq!(provider_in_path("/hooks/hubspot"), None);
        assert_eq!(provider_in_path("/"), None);
    }

    #[test]
    fn a_path_with_a_dot_segment_or_a_backslash_names_no_provider() {
        for path in [
            "/admin/../webhooks/hubspot",
            "/webhooks/./hubspot",
            "/x/%2e%2e/webhooks/hubspot",
            "/webhooks/..",
            "/webhooks\\hubspot",
        ] {
            assert_eq!(provider_in_path(path), None, "{path}");
        }
    }
}
