//! `POST /webhooks/{provider}` behind API Gateway (HTTP API, payload format 2.0).

use std::convert::Infallible;
use std::sync::Arc;

use aws_config::SdkConfig;
use lambda_http::http::{header, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::adapters::dynamodb::DynamoDbWebhookStore;
use crate::adapters::hubspot::{HubSpotWebhookSettings, HubSpotWebhooks};
use crate::adapters::pipedrive::{PipedriveWebhookSettings, PipedriveWebhooks};
use crate::adapters::salesforce::{SalesforceOutboundMessages, SalesforceWebhookSettings};
use crate::adapters::sqs::SqsQueue;
use crate::config::WebhookConfig;
use crate::domain::{SystemClock, WebhookRequest};
use crate::ingest::{IngestError, WebhookIngest};
use crate::ports::WebhookProvider;

/// The webhook HTTP API: routing, translation to and from HTTP, and the ingest service.
pub struct WebhookApi {
    ingest: WebhookIngest,
    public_base_url: Option<String>,
}

impl WebhookApi {
    pub fn new(ingest: WebhookIngest, public_base_url: Option<String>) -> Self {
        Self {
            ingest,
            public_base_url,
        }
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
    pub async fn handle(&self, request: Request) -> Result<Response<Body>, Infallible> {
        let path = match request.raw_http_path() {
            "" => request.uri().path().to_string(),
            raw => raw.to_string(),
        };
        let Some(provider) = provider_in_path(&path) else {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; webhooks go to POST /webhooks/{provider}",
            ));
        };
        if !self.ingest.knows_provider(provider) {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "unknown_provider",
                &format!("no webhook provider is called `{}`", truncate(provider)),
            ));
        }
        if request.method() != lambda_http::http::Method::POST {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "webhooks are received with POST only",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, "POST".parse().expect("a valid header value"));
            return Ok(response);
        }

        let webhook = to_webhook_request(&request, &path, self.public_base_url.as_deref(), provider);
        let provider = provider.to_string();
        Ok(match self.ingest.ingest(&provider, &webhook).await {
            Ok(report) => {
                tracing::info!(
                    provider,
                    delivery_id = %report.delivery_id,
                    events = report.events,
                    enqueued = report.enqueued,
                    duplicates = report.duplicates,
                    "delivery accepted"
                );
                match self.ingest.acknowledgement(&provider) {
                    Some(ack) => Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, ack.content_type)
                        .body(Body::Text(ack.body.to_string()))
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
        })
    }
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
fn public_url(request: &Request, path: &str, base: Option<&str>, provider: &str) -> String {
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
            format!("{scheme}://{host}{path}")
        }
    };
    if let Some(query) = request.uri().query().filter(|query| !query.is_empty()) {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn header_text<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|value| value.to_str().ok())
}

fn to_webhook_request(request: &Request, path: &str, base: Option<&str>, provider: &str) -> WebhookRequest {
    let body = match request.body() {
        Body::Empty => Vec::new(),
        Body::Text(text) => text.as_bytes().to_vec(),
        Body::Binary(bytes) => bytes.clone(),
        _ => Vec::new(),
    };
    let mut headers: Vec<(String, String)> = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
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
        method: request.method().as_str().to_string(),
        public_url: public_url(request, path, base, provider),
        headers,
        body,
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(body.to_string()))
        .expect("a static response is valid")
}

fn reply(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": code, "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
