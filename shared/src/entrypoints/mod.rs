//! How Lambda events reach the use cases. `functions/*` only build these and hand them to the
//! Lambda runtime; the local stack hands them the same events.

pub mod adoption_sqs;
pub mod adoption_tool;
pub mod dashboard_http;
pub mod reconcile_schedule;
pub mod sync_sqs;
pub mod webhook_http;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use secrecy::SecretString;

use crate::adapters::hubspot::{HubSpotClient, HubSpotEvents};
use crate::adapters::pipedrive::{PipedriveClient, PipedriveEvents};
use crate::adapters::salesforce::{OAuthRefresh, SalesforceClient, SalesforceEvents};
use crate::adapters::secrets_manager::read_secret_field;
use crate::config::{CrmSettings, SecretSource};
use crate::domain::mapping::Mapping;
use crate::inbound::EventsOf;
use crate::ports::{Crm, CrmEvents};

/// The path API Gateway received, before any stage prefix the runtime adds to the URI.
pub(crate) fn raw_path<B>(request: &http::Request<B>) -> String {
    use lambda_http::RequestExt as _;
    match request.raw_http_path() {
        "" => request.uri().path().to_string(),
        raw => raw.to_string(),
    }
}

/// The path as sent, kept in a routed request's extensions (see [`routed_by`]).
#[derive(Debug, Clone)]
struct SentPath(String);

/// [`raw_path`] of a request taken apart after [`routed_by`].
pub(crate) fn raw_path_of(parts: &http::request::Parts) -> String {
    match parts.extensions.get::<SentPath>() {
        Some(SentPath(path)) => path.clone(),
        None => parts.uri.path().to_string(),
    }
}

/// The request with `route` as the path its router matches, its query kept; the path as sent
/// stays in the request's extensions (read it with [`raw_path_of`]).
pub(crate) fn routed_by<B>(mut request: http::Request<B>, route: &str) -> http::Request<B> {
    let sent = raw_path(&request);
    let target = match request.uri().query() {
        Some(query) => format!("{route}?{query}"),
        None => route.to_string(),
    };
    // A path that is no valid URI (a space, a control byte) routes nowhere, rather than by the
    // runtime's normalized reading of it.
    *request.uri_mut() = target.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    request.extensions_mut().insert(SentPath(sent));
    request
}

/// What the sync and the reconcile functions build alike from their CRM section: the mapping,
/// the CRM client, the state store and the one limiter both directions spend.
pub(crate) struct CrmWiring {
    pub mapping: Arc<Mapping>,
    pub crm: Arc<dyn Crm>,
    pub state: Arc<crate::adapters::dynamodb::DynamoDbSyncState>,
    pub limiter: Arc<crate::adapters::dynamodb::DynamoDbRateLimiter>,
}

/// Fails (and so the cold start fails) on a bad mapping or an unreadable CRM secret.
pub(crate) async fn wire_crm(
    aws: &SdkConfig,
    section: crate::config::CrmSection,
) -> anyhow::Result<CrmWiring> {
    let mapping = load_mapping(&section.mapping_toml, &section.mapping_source)?;
    let crm = crm_client(aws, &section.settings, section.timeout_secs).await?;
    check_links(&mapping, crm.as_ref())?;
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    Ok(CrmWiring {
        mapping: Arc::new(mapping),
        crm,
        state: Arc::new(crate::adapters::dynamodb::DynamoDbSyncState::new(
            dynamodb.clone(),
            section.state_table,
            section.timeline_retention_ms,
        )),
        limiter: Arc::new(crate::adapters::dynamodb::DynamoDbRateLimiter::new(
            dynamodb,
            section.rate_limit_table,
            section.settings.provider(),
            section.limiter,
        )),
    })
}

/// A secret's value: from the environment, or read from Secrets Manager (once, at cold start).
pub(crate) async fn resolve_secret(aws: &SdkConfig, source: SecretSource) -> anyhow::Result<SecretString> {
    match source {
        SecretSource::Value(value) => Ok(value),
        SecretSource::SecretsManager { secret_id, field } => {
            read_secret_field(&aws_sdk_secretsmanager::Client::new(aws), &secret_id, field).await
        }
    }
}

/// Stacks for one CRM leave the others' secrets empty; the chosen CRM's must be set.
pub(crate) fn not_empty(secret: SecretString, what: &str) -> anyhow::Result<SecretString> {
    use secrecy::ExposeSecret;
    if secret.expose_secret().trim().is_empty() {
        anyhow::bail!("{what} is empty");
    }
    Ok(secret)
}

/// The mapping, checked; the error names the entry and the file.
/// Refuses a mapping whose links the CRM cannot hold as it says.
pub(crate) fn check_links(mapping: &Mapping, crm: &dyn Crm) -> anyhow::Result<()> {
    for (from, to, via) in mapping.links() {
        crm.holds_links(via)
            .map_err(|why| anyhow::anyhow!("mapping: {from}.links.{to}: {why}"))?;
    }
    Ok(())
}

pub(crate) fn load_mapping(toml: &str, source: &str) -> anyhow::Result<Mapping> {
    Mapping::parse(toml).map_err(|error| anyhow::anyhow!("{error} (in {source})"))
}

/// The configured CRM's API client.
pub(crate) async fn crm_client(
    aws: &SdkConfig,
    settings: &CrmSettings,
    timeout_secs: u64,
) -> anyhow::Result<Arc<dyn Crm>> {
    let timeout = Duration::from_secs(timeout_secs);
    Ok(match settings {
        CrmSettings::HubSpot {
            api_base,
            token,
            api_version,
        } => {
            let token = not_empty(
                resolve_secret(aws, token.clone()).await?,
                "the HubSpot access token (HubSpotAccessToken, HUBSPOT_ACCESS_TOKEN)",
            )?;
            let (year, month) = api_version.end_of_support();
            tracing::info!(%api_version, "HubSpot API version {api_version}, supported by HubSpot until {year}-{month:02}");
            Arc::new(HubSpotClient::new(api_base, token, timeout)?.with_api_version(*api_version))
        }
        CrmSettings::Pipedrive { api_base, token } => {
            let token = not_empty(
                resolve_secret(aws, token.clone()).await?,
                "the Pipedrive API token (PipedriveApiToken, PIPEDRIVE_API_TOKEN)",
            )?;
            Arc::new(PipedriveClient::new(api_base, token, timeout)?)
        }
        CrmSettings::Salesforce(settings) => {
            let token = resolve_secret(aws, settings.token.clone()).await?;
            let refresh = match &settings.refresh {
                None => None,
                Some(refresh) => Some(OAuthRefresh {
                    token_url: refresh.token_url.clone(),
                    client_id: refresh.client_id.clone(),
                    client_secret: not_empty(
                        resolve_secret(aws, refresh.client_secret.clone()).await?,
                        "the connected app's secret (SalesforceClientSecret, SALESFORCE_CLIENT_SECRET)",
                    )?,
                    refresh_token: not_empty(
                        resolve_secret(aws, refresh.refresh_token.clone()).await?,
                        "the refresh token (SalesforceRefreshToken, SALESFORCE_REFRESH_TOKEN)",
                    )?,
                }),
            };
            // With a refresh token the first call fetches an access token.
            let token = if refresh.is_some() {
                token
            } else {
                not_empty(
                    token,
                    "the Salesforce access token (SalesforceAccessToken, SALESFORCE_ACCESS_TOKEN)",
                )?
            };
            Arc::new(SalesforceClient::new(
                &settings.instance_url,
                token,
                refresh,
                timeout,
            )?)
        }
    })
}

/// How the configured CRM's webhook events read, for the inbound worker.
pub(crate) fn crm_events(settings: &CrmSettings, mapping: &Mapping) -> Arc<dyn CrmEvents> {
    let events: Option<Arc<dyn CrmEvents>> = match settings {
        CrmSettings::HubSpot { .. } => Some(Arc::new(HubSpotEvents::new(mapping))),
        CrmSettings::Pipedrive { .. } => Some(Arc::new(PipedriveEvents::new(mapping))),
        CrmSettings::Salesforce(settings) => Some(Arc::new(SalesforceEvents {
            integration_user_id: settings.integration_user_id.clone(),
            declared: mapping.declared_by_crm_object(),
        })),
    };
    Arc::new(EventsOf::new(settings.provider(), events))
}

/// Whether a request path reads differently to different layers: a `.` or `..` segment (also
/// percent-encoded, `%2e`), a backslash, or an encoded slash or backslash (`%2f`, `%5c`), which
/// some layers decode into a separator. A URL parser normalizes these away (`/webhooks/../admin`
/// is `/admin` to it) while the routes match the raw text, so neither HTTP handler takes such a
/// path for one of its routes: no route of the API has one, and both answer 404.
pub fn is_ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
        return true;
    }
    lower
        .split('/')
        .map(|segment| segment.replace("%2e", "."))
        .any(|segment| segment == "." || segment == "..")
}

/// An invocation's deadline (epoch ms) as an instant, less `margin`.
pub(crate) fn deadline_of(deadline_ms: u64, margin: std::time::Duration) -> tokio::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    tokio::time::Instant::now() + left.saturating_sub(margin)
}

#[cfg(test)]
mod path_tests {
    use super::is_ambiguous_path;

    #[test]
    fn dot_segments_backslashes_and_encoded_separators_make_a_path_ambiguous() {
        for path in [
            "/webhooks/../admin",
            "/webhooks/%2e%2e/admin",
            "/webhooks/%2E%2E/admin",
            "/webhooks/.%2e/admin",
            "/admin/./queues",
            "/admin/%2e/queues",
            "/admin/..",
            "/webhooks\\hubspot",
            "/webhooks%2fhubspot",
            "/webhooks%5Chubspot",
        ] {
            assert!(is_ambiguous_path(path), "{path}");
        }
    }

    #[test]
    fn the_api_s_own_paths_are_not_ambiguous() {
        for path in [
            "/webhooks/hubspot",
            "/prod/webhooks/salesforce/",
            "/admin",
            "/admin/record",
            "/admin/queues/redrive",
            "/admin/login",
            "/",
            "",
            "/webhooks/hub.spot",
            "/webhooks/...",
        ] {
            assert!(!is_ambiguous_path(path), "{path}");
        }
    }
}
