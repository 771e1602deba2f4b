//! Typed configuration from the environment, read once per cold start. Every error names the
//! variable at fault.

use secrecy::SecretString;

use crate::ingest::IngestSettings;

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            problem: problem.into(),
        }
    }
}

/// Where a secret comes from: a value in the environment (local runs) or a Secrets Manager
/// secret (deployed).
#[derive(Debug, Clone)]
pub enum SecretSource {
    Value(SecretString),
    SecretsManager { secret_id: String, field: &'static str },
}

/// Everything the webhook function needs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub table: String,
    pub inbound_queue_url: String,
    /// Overrides the URL rebuilt from the request (custom domain, stage prefix): the part before
    /// `/webhooks/{provider}`.
    pub public_base_url: Option<String>,
    pub ingest: IngestSettings,
    pub hubspot_secret: SecretSource,
    pub hubspot_accept_legacy_signatures: bool,
    pub hubspot_replay_window_secs: u64,
    /// Pipedrive's webhooks, when `PIPEDRIVE_WEBHOOK_USER` is set: the Basic credentials given to
    /// the webhook when it was created.
    pub pipedrive: Option<PipedriveWebhookConfig>,
    /// Salesforce's Outbound Messages, when `SALESFORCE_ORGANIZATION_ID` is set: the org they
    /// must come from and the token in the endpoint URL.
    pub salesforce: Option<SalesforceWebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct SalesforceWebhookConfig {
    pub organization_id: String,
    pub token: SecretSource,
}

#[derive(Debug, Clone)]
pub struct PipedriveWebhookConfig {
    pub username: String,
    pub password: SecretSource,
}

/// Which CRM the sync writes to (`CRM`: `hubspot`, the default, or `pipedrive`) and how it is
/// reached.
#[derive(Debug, Clone)]
pub enum CrmSettings {
    HubSpot {
        api_base: String,
        token: SecretSource,
        /// `HUBSPOT_API_VERSION`, default 2026-03.
        api_version: crate::adapters::hubspot::client::ApiVersion,
    },
    Pipedrive {
        api_base: String,
        token: SecretSource,
    },
    Salesforce(SalesforceSettings),
}

/// A Salesforce org and how to renew its access token.
#[derive(Debug, Clone)]
pub struct SalesforceSettings {
    pub instance_url: String,
    pub token: SecretSource,
    /// Set when `SALESFORCE_CLIENT_ID` is: the connected app's secret and the refresh token.
    pub refresh: Option<SalesforceRefresh>,
    /// The user crm-sync's API calls run as (`SALESFORCE_INTEGRATION_USER_ID`): a notification
    /// of a record this user modified last is crm-sync's own write coming back.
    pub integration_user_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SalesforceRefresh {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretSource,
    pub refresh_token: SecretSource,
}

impl CrmSettings {
    /// The CRM's provider id: the limiter's key, and whose webhook events the sync applies.
    pub fn provider(&self) -> crate::domain::ProviderId {
        match self {
            CrmSettings::HubSpot { .. } => crate::adapters::hubspot::webhook::PROVIDER,
            CrmSettings::Pipedrive { .. } => crate::adapters::pipedrive::webhook::PROVIDER,
            CrmSettings::Salesforce(_) => crate::adapters::salesforce::outbound_messages::PROVIDER,
        }
    }

    /// The mapping used when `CRM_SYNC_MAPPING_FILE` names none: (its text, where it came from).
    fn built_in_mapping(&self) -> (String, String) {
        built_in_mapping(self.provider())
    }
}

/// The prefix of a CRM's limit variables (`HUBSPOT_BURST_LIMIT`, `PIPEDRIVE_BURST_LIMIT`, ...),
/// by its name as `crm_name` gives it.
fn limit_prefix(crm: &str) -> &'static str {
    match crm {
        "pipedrive" => "PIPEDRIVE",
        "salesforce" => "SALESFORCE",
        _ => "HUBSPOT",
    }
}

/// A CRM's own limits, before any variable changes them.
fn limiter_defaults(crm: &str) -> crate::adapters::dynamodb::LimiterSettings {
    let hubspot = crate::adapters::dynamodb::LimiterSettings::default();
    match crm {
        // The lowest plan's token window (20 requests per 2 s). The daily budget is the
        // company's, in tokens (30,000 x plan multiplier x seats), shared with every other
        // app; it is adopted from `x-daily-ratelimit-token-remaining` as calls report it.
        "pipedrive" => crate::adapters::dynamodb::LimiterSettings {
            burst_limit: 20,
            burst_window_ms: 2_000,
            daily_limit: 30_000,
            daily_reserve: 1_500,
            requests_per_call: 2,
            daily_cost_per_call: crate::adapters::pipedrive::client::token_cost::PER_CALL,
            // The window is short (2 s), so HubSpot's 2% margin would be 40 ms: less than a
            // slow first connection between a search and its write. 10% is 200 ms.
            headroom: 0.9,
            // Nine calls a window: a live lead would cost a fifth of the pace.
            live_burst: 0,
            ..hubspot
        },
        // Salesforce has no short window, only the daily budget (100,000 requests and up,
        // by edition and licences); 20 calls a second keeps well clear of its concurrent
        // long-request limit.
        "salesforce" => crate::adapters::dynamodb::LimiterSettings {
            burst_limit: 20,
            burst_window_ms: 1_000,
            daily_limit: 100_000,
            daily_reserve: 5_000,
            // Two slots would be a tenth of the pace: a live call waits two slots (100 ms)
            // at most behind background work.
            live_burst: 0,
            ..hubspot
        },
        _ => hubspot,
    }
}

/// What the sync and the reconcile functions share: the CRM, how fast it may be called, the
/// mapping, and the state they keep about it.
#[derive(Debug, Clone)]
pub struct CrmSection {
    pub settings: CrmSettings,
    pub limiter: crate::adapters::dynamodb::LimiterSettings,
    /// The mapping file's text (the built-in one unless `CRM_SYNC_MAPPING_FILE` names another).
    pub mapping_toml: String,
    pub mapping_source: String,
    pub timeout_secs: u64,
    pub state_table: String,
    pub rate_limit_table: String,
    pub timeline_retention_ms: i64,
}

/// Everything the sync function needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub crm: CrmSection,
    pub outbound_queue_url: String,
    pub outbound_dlq_url: String,
    pub sync: crate::sync::SyncSettings,
    /// Set when the function also consumes the inbound (webhook events) queue.
    pub inbound: Option<InboundConfig>,
    /// The low-priority lane the reconciliation re-enqueues into: (queue ARN, queue URL).
    pub reconcile_lane: Option<(String, String)>,
    /// The priority lane the dashboard's re-syncs go to: (queue ARN, queue URL).
    pub resync_lane: Option<(String, String)>,
    /// The low-priority lane adoption backfills write through: (queue ARN, queue URL).
    pub backfill_lane: Option<(String, String)>,
    /// CloudWatch metrics (namespace, stack name); `None` writes none.
    pub metrics: Option<(String, String)>,
}

/// What the sync function needs to process webhook events.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Batches from this queue are webhook events; every other batch is app changes.
    pub queue_arn: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub app_inbox_url: String,
    pub webhook_table: String,
    /// How long each event's outcome item, and so its dedupe record, is kept.
    pub event_retention_ms: i64,
    pub reassert_app_values: bool,
}

/// Everything the reconcile function needs.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub crm: CrmSection,
    /// The low-priority lane re-enqueued changes go to.
    pub reconcile_queue_url: String,
    pub settings: crate::reconcile::ReconcileSettings,
    /// Where CRM-owned drift goes: the app inbox (unset: drift is only reported).
    pub app_inbox_queue_url: Option<String>,
    /// Where merges read from a CRM that does not announce them (Salesforce) go, as events for
    /// the identity step: the inbound queue (unset: they are not read).
    pub inbound_queue_url: Option<String>,
}

/// Everything adoption (`crm-sync-adopt`) needs: the sync function's CRM section, and its
/// backfill lane and app inbox.
#[derive(Debug, Clone)]
pub struct AdoptConfig {
    pub crm: CrmSection,
    pub backfill_queue_url: String,
    /// Where the initial pull delivers CRM-owned values (unset: no initial pull).
    pub app_inbox_queue_url: Option<String>,
    /// Backfills run inside AWS: the bucket their plans are kept in and the adoption function's
    /// queue (`crm-sync-adopt start` needs both; the adoption function too).
    pub adoption_bucket: Option<String>,
    pub adoption_queue_url: Option<String>,
    /// The longest slice of the adoption function, if shorter than its invocation's time.
    pub adoption_slice_seconds: Option<u64>,
}

/// Everything the dashboard function needs.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub state_table: String,
    /// Where re-syncs go: the priority lane the sync function reads.
    pub resync_queue_url: String,
    /// Each dead-letter queue with the queue it redrives to: (name, queue URL, DLQ URL).
    pub lanes: Vec<(&'static str, String, String)>,
    /// How operators sign in: through an identity provider, or (the local stack) a password.
    pub access: DashboardAccess,
    pub session_ttl_ms: i64,
    /// Where sessions and failed sign-ins are kept (`DashboardTable`).
    pub table: String,
    /// Failed sign-ins allowed per client and from all clients, per window.
    pub sign_in_limits: crate::dashboard::session::SignInLimits,
    /// The HubSpot account id, for links to records in HubSpot.
    pub hubspot_portal_id: Option<String>,
    pub hubspot_app_url: String,
    /// Where record links point: the configured CRM's app, when it is known.
    pub record_links: RecordLinks,
    /// The CRM object of each type the mapping declares, for links to their records.
    pub declared_objects: std::collections::HashMap<crate::domain::contract::ObjectKind, String>,
    /// Each type's display properties (the mapping's `display`), which name a record to a person.
    pub display: std::collections::HashMap<crate::domain::contract::ObjectKind, Vec<(String, String)>>,
    /// Where the CRM's daily budget is read, for the health page: the limiter's table, its key
    /// (the CRM's name) and its settings; `None` without `RATE_LIMIT_TABLE`.
    pub budget: Option<(String, String, crate::adapters::dynamodb::LimiterSettings)>,
}

/// How operators sign in to the dashboard.
#[derive(Debug, Clone)]
pub enum DashboardAccess {
    /// One shared password: the local stack's way, which cannot tell operators apart.
    Password(SecretSource),
    /// Each operator as themselves, through an OpenID Connect provider.
    Provider(ProviderConfig),
}

/// An OpenID Connect provider and this dashboard's client at it.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The issuer (a Cognito user pool: `https://cognito-idp.{region}.amazonaws.com/{pool id}`).
    pub issuer: String,
    /// The client id, and the secret of a confidential client: from variables, or the fields
    /// `client_id` and `client_secret` of one Secrets Manager secret.
    pub client: ProviderClient,
    /// The provider's name on the sign-in button.
    pub name: String,
    /// Where the dashboard is reached, for the redirect URI (`{public_url}/admin/auth/callback`);
    /// without it, the URL is rebuilt from the request.
    pub public_url: Option<String>,
    /// The group (`cognito:groups` or `groups`) an account must be in to be an operator.
    pub required_group: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ProviderClient {
    Values {
        id: String,
        secret: Option<SecretString>,
    },
    SecretsManager {
        secret_id: String,
    },
}

/// The CRM app a record's dashboard link opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordLinks {
    /// HubSpot (links need `HUBSPOT_PORTAL_ID`).
    HubSpot,
    /// The company's Pipedrive, `https://{company}.pipedrive.com`.
    Pipedrive(String),
    /// The org's Lightning Experience, at its instance URL.
    Salesforce(String),
    /// No link: the CRM's address is not configured.
    None,
}

/// Reads variables through a lookup, so that tests need not touch the process environment.
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl Env<fn(&str) -> Option<String>> {
    /// The process environment.
    pub fn process() -> Self {
        Env(|name| std::env::var(name).ok())
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The variables `T` declares (each field is a variable, `prefix` + its name in capitals),
    /// deserialized by envy. Values are trimmed and an empty one counts as unset, as a template
    /// parameter left blank arrives empty.
    fn read<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<T, ConfigError> {
        let pairs = variables::names::<T>(prefix).into_iter().filter_map(|name| {
            let value = (self.0)(&name)?.trim().to_string();
            (!value.is_empty()).then_some((name, value))
        });
        envy::prefixed(prefix)
            .from_iter(pairs)
            .map_err(|error| variables::named(error, prefix))
    }

    /// The webhook function's configuration.
    pub fn webhook(&self) -> Result<WebhookConfig, ConfigError> {
        let vars: variables::Webhook = self.read("")?;
        let defaults = IngestSettings::default();
        let days =
            |days: Option<u32>, default_ms: i64| days.map_or(default_ms, |days| i64::from(days) * DAY_MS);
        let max_body_bytes = vars.webhook_max_body_bytes.unwrap_or(defaults.max_body_bytes);
        if max_body_bytes > 350_000 {
            // The raw body is stored in one DynamoDB item, which holds at most 400 KB.
            return Err(ConfigError::new(
                "WEBHOOK_MAX_BODY_BYTES",
                "must be at most 350000",
            ));
        }
        Ok(WebhookConfig {
            table: vars.webhook_table,
            inbound_queue_url: vars.inbound_queue_url,
            public_base_url: web_address("WEBHOOK_PUBLIC_BASE_URL", vars.webhook_public_base_url)?,
            ingest: IngestSettings {
                max_body_bytes,
                delivery_retention_ms: days(vars.raw_delivery_retention_days, defaults.delivery_retention_ms),
                ..defaults
            },
            hubspot_secret: secret(
                ("HUBSPOT_CLIENT_SECRET", vars.hubspot_client_secret),
                ("HUBSPOT_SECRET_ARN", vars.hubspot_secret_arn.clone()),
                "client_secret",
            )?,
            hubspot_accept_legacy_signatures: flag(
                "HUBSPOT_ACCEPT_LEGACY_SIGNATURES",
                vars.hubspot_accept_legacy_signatures,
                true,
            )?,
            hubspot_replay_window_secs: vars.hubspot_replay_window_seconds.unwrap_or(300),
            pipedrive: match vars.pipedrive_webhook_user {
                None => None,
                Some(username) => Some(PipedriveWebhookConfig {
                    username,
                    password: secret(
                        ("PIPEDRIVE_WEBHOOK_PASSWORD", vars.pipedrive_webhook_password),
                        ("PIPEDRIVE_SECRET_ARN", vars.pipedrive_secret_arn),
                        "webhook_password",
                    )?,
                }),
            },
            salesforce: match vars.salesforce_organization_id {
                None => None,
                Some(organization_id) => Some(SalesforceWebhookConfig {
                    organization_id,
                    token: secret(
                        ("SALESFORCE_WEBHOOK_TOKEN", vars.salesforce_webhook_token),
                        ("SALESFORCE_SECRET_ARN", vars.salesforce_secret_arn),
                        "webhook_token",
                    )?,
                }),
            },
        })
    }

    /// The limiter's settings for a CRM (by its name, `hubspot`, ...): its own limits, changed
    /// by the `{CRM}_…` variables.
    fn limiter(&self, crm: &str) -> Result<crate::adapters::dynamodb::LimiterSettings, ConfigError> {
        let defaults = limiter_defaults(crm);
        let prefix = limit_prefix(crm);
        let limits: variables::Limits = self.read(&format!("{prefix}_"))?;
        let headroom = limits.burst_headroom.unwrap_or(defaults.headroom);
        if !(0.05..=1.0).contains(&headroom) {
            return Err(ConfigError::new(
                &format!("{prefix}_BURST_HEADROOM"),
                "must be between 0.05 and 1",
            ));
        }
        let daily_limit = limits.daily_limit.unwrap_or(defaults.daily_limit);
        let daily_reserve = limits.daily_reserve.unwrap_or(defaults.daily_reserve);
        // A tenth of the day for live changes unless set.
        let live_reserve = limits.live_reserve.unwrap_or(daily_limit / 10);
        if daily_reserve + live_reserve >= daily_limit {
            return Err(ConfigError::new(
                &format!("{prefix}_LIVE_RESERVE"),
                format!(
                    "{prefix}_DAILY_RESERVE ({daily_reserve}) and {prefix}_LIVE_RESERVE ({live_reserve}) leave nothing of \
                     {prefix}_DAILY_LIMIT ({daily_limit}) for background work: set the account's real daily limit"
                ),
            ));
        }
        Ok(crate::adapters::dynamodb::LimiterSettings {
            burst_limit: limits.burst_limit.unwrap_or(defaults.burst_limit),
            burst_window_ms: limits.burst_window_ms.unwrap_or(defaults.burst_window_ms),
            headroom,
            daily_limit,
            daily_reserve,
            live_reserve,
            day_offset_minutes: limits
                .day_utc_offset_minutes
                .unwrap_or(defaults.day_offset_minutes),
            ..defaults
        })
    }

    /// The CRM section the sync and the reconcile functions share.
    fn crm_section(&self) -> Result<CrmSection, ConfigError> {
        let vars: variables::Crm = self.read("")?;
        let settings = crm_settings(vars.crm.as_deref(), &vars)?;
        let limiter = self.limiter(settings.provider())?;
        let (mapping_toml, mapping_source) =
            mapping_text(vars.crm_sync_mapping_file, settings.built_in_mapping())?;
        Ok(CrmSection {
            limiter,
            settings,
            mapping_toml,
            mapping_source,
            timeout_secs: vars.sync_crm_timeout_seconds.unwrap_or(20),
            state_table: vars.sync_state_table,
            rate_limit_table: vars.rate_limit_table,
            timeline_retention_ms: i64::from(vars.timeline_retention_days.unwrap_or(180)) * DAY_MS,
        })
    }

    /// The sync function's configuration.
    pub fn sync(&self) -> Result<SyncConfig, ConfigError> {
        use std::time::Duration;
        let crm = self.crm_section()?;
        let vars: variables::Sync = self.read("")?;
        let defaults = crate::sync::SyncSettings::default();
        let seconds = |secs: Option<u64>, default: Duration| secs.map_or(default, Duration::from_secs);
        let max_attempts = vars.sync_max_attempts.unwrap_or(defaults.max_attempts);
        if max_attempts == 0 {
            return Err(ConfigError::new("SYNC_MAX_ATTEMPTS", "must be at least 1"));
        }
        let max_clock_skew = seconds(vars.max_clock_skew_seconds, defaults.max_clock_skew);
        if max_clock_skew < Duration::from_secs(1) {
            // Clocks a few milliseconds apart would dead-letter ordinary changes.
            return Err(ConfigError::new("MAX_CLOCK_SKEW_SECONDS", "must be at least 1"));
        }
        let lane = |arn: Option<String>, url: Option<String>, url_name: &str| match arn {
            None => Ok(None),
            Some(arn) => Ok(Some((arn, required(url_name, url)?))),
        };
        Ok(SyncConfig {
            crm,
            outbound_queue_url: vars.outbound_queue_url,
            outbound_dlq_url: vars.outbound_dlq_url,
            sync: crate::sync::SyncSettings {
                max_attempts,
                retry_base: seconds(vars.sync_retry_base_seconds, defaults.retry_base),
                retry_cap: seconds(vars.sync_retry_cap_seconds, defaults.retry_cap)
                    .min(Duration::from_secs(900)),
                lease: seconds(vars.sync_lease_seconds, defaults.lease),
                busy_delay: seconds(vars.sync_busy_retry_seconds, defaults.busy_delay),
                max_link_wait: seconds(vars.sync_max_link_wait_seconds, defaults.max_link_wait),
                max_clock_skew,
                shared_email: match vars.shared_email_policy.as_deref() {
                    None => defaults.shared_email,
                    Some(text) => crate::sync::SharedEmailPolicy::parse(text).ok_or_else(|| {
                        ConfigError::new("SHARED_EMAIL_POLICY", format!("`{text}` is not adopt or refuse"))
                    })?,
                },
                ..defaults
            },
            reconcile_lane: lane(
                vars.reconcile_queue_arn,
                vars.reconcile_queue_url,
                "RECONCILE_QUEUE_URL",
            )?,
            resync_lane: lane(vars.resync_queue_arn, vars.resync_queue_url, "RESYNC_QUEUE_URL")?,
            backfill_lane: lane(
                vars.backfill_queue_arn,
                vars.backfill_queue_url,
                "BACKFILL_QUEUE_URL",
            )?,
            metrics: vars
                .metrics_namespace
                .map(|namespace| (namespace, vars.stack_name.unwrap_or_else(|| "crm-sync".into()))),
            inbound: match vars.inbound_queue_arn {
                None => None,
                Some(queue_arn) => Some(InboundConfig {
                    queue_arn,
                    queue_url: required("INBOUND_QUEUE_URL", vars.inbound_queue_url)?,
                    dlq_url: required("INBOUND_DLQ_URL", vars.inbound_dlq_url)?,
                    app_inbox_url: required("APP_INBOX_QUEUE_URL", vars.app_inbox_queue_url)?,
                    webhook_table: required("WEBHOOK_TABLE", vars.webhook_table)?,
                    event_retention_ms: match vars.webhook_event_retention_days.unwrap_or(90) {
                        // The outcome item is the event's dedupe record: kept for no day, it
                        // would let a CRM's retry act again.
                        0 => {
                            return Err(ConfigError::new(
                                "WEBHOOK_EVENT_RETENTION_DAYS",
                                "must be at least 1",
                            ))
                        }
                        days => i64::from(days) * DAY_MS,
                    },
                    reassert_app_values: flag("REASSERT_APP_VALUES", vars.reassert_app_values, false)?,
                }),
            },
        })
    }

    /// The reconcile function's configuration: the CRM section as the sync function reads it,
    /// so that both spend one budget the same way.
    pub fn reconcile(&self) -> Result<ReconcileConfig, ConfigError> {
        let crm = self.crm_section()?;
        let vars: variables::Reconcile = self.read("")?;
        let defaults = crate::reconcile::ReconcileSettings::default();
        let nights = vars.reconcile_cycle_nights.unwrap_or(defaults.cycle_nights);
        if nights == 0 {
            return Err(ConfigError::new("RECONCILE_CYCLE_NIGHTS", "must be at least 1"));
        }
        Ok(ReconcileConfig {
            reconcile_queue_url: vars.reconcile_queue_url,
            settings: crate::reconcile::ReconcileSettings {
                cycle_nights: nights,
                stuck_after: std::time::Duration::from_secs(
                    60 * vars.reconcile_stuck_after_minutes.unwrap_or(60),
                ),
                page_size: vars
                    .reconcile_page_size
                    .unwrap_or(defaults.page_size)
                    .clamp(1, 1000),
                day_offset_minutes: crm.limiter.day_offset_minutes,
                ..defaults
            },
            crm,
            app_inbox_queue_url: vars.app_inbox_queue_url,
            inbound_queue_url: vars.inbound_queue_url,
        })
    }

    /// Adoption's configuration: the sync function's variables (`BACKFILL_QUEUE_URL` required).
    pub fn adopt(&self) -> Result<AdoptConfig, ConfigError> {
        let crm = self.crm_section()?;
        let vars: variables::Adopt = self.read("")?;
        if vars.adoption_slice_seconds == Some(0) {
            return Err(ConfigError::new("ADOPTION_SLICE_SECONDS", "must be at least 1"));
        }
        Ok(AdoptConfig {
            crm,
            backfill_queue_url: vars.backfill_queue_url,
            app_inbox_queue_url: vars.app_inbox_queue_url,
            adoption_bucket: vars.adoption_bucket.filter(|bucket| !bucket.is_empty()),
            adoption_queue_url: vars.adoption_queue_url.filter(|url| !url.is_empty()),
            adoption_slice_seconds: vars.adoption_slice_seconds,
        })
    }

    /// The dashboard function's configuration.
    pub fn dashboard(&self) -> Result<DashboardConfig, ConfigError> {
        let vars: variables::Dashboard = self.read("")?;
        let access = dashboard_access(&vars)?;
        let hours = vars.dashboard_session_hours.unwrap_or(12);
        if hours == 0 || hours > 24 * 7 {
            return Err(ConfigError::new("DASHBOARD_SESSION_HOURS", "must be 1 to 168"));
        }
        let defaults = crate::dashboard::session::SignInLimits::default();
        let at_least_one = |name: &str, value: Option<u32>, default: u32| match value.unwrap_or(default) {
            0 => Err(ConfigError::new(name, "must be at least 1")),
            value => Ok(value),
        };
        let window_secs = vars
            .dashboard_sign_in_window_seconds
            .unwrap_or(u32::try_from(defaults.window_ms / 1000).unwrap_or(900));
        if window_secs == 0 || window_secs > 86_400 {
            return Err(ConfigError::new(
                "DASHBOARD_SIGN_IN_WINDOW_SECONDS",
                "must be 1 to 86400",
            ));
        }
        let sign_in_limits = crate::dashboard::session::SignInLimits {
            per_client: at_least_one(
                "DASHBOARD_SIGN_IN_FAILURES_PER_CLIENT",
                vars.dashboard_sign_in_failures_per_client,
                defaults.per_client,
            )?,
            all_clients: at_least_one(
                "DASHBOARD_SIGN_IN_FAILURES_ALL_CLIENTS",
                vars.dashboard_sign_in_failures_all_clients,
                defaults.all_clients,
            )?,
            window_ms: i64::from(window_secs) * 1000,
        };
        let hubspot_portal_id = match vars.hubspot_portal_id {
            Some(id) if !id.chars().all(|c| c.is_ascii_digit()) => {
                return Err(ConfigError::new(
                    "HUBSPOT_PORTAL_ID",
                    format!("`{id}` is not a HubSpot account id (digits only)"),
                ))
            }
            id => id,
        };
        // The object types the mapping declares: the dashboard shows their records and opens
        // their pages in any instance. A mapping that does not read stops the cold start, as it
        // does the sync function's.
        let crm = crm_name(vars.crm.as_deref())?;
        let (mapping_toml, _) = mapping_text(vars.crm_sync_mapping_file, built_in_mapping(crm))?;
        let mapping = crate::domain::mapping::Mapping::parse(&mapping_toml)
            .map_err(|error| ConfigError::new("CRM_SYNC_MAPPING_FILE", error.to_string()))?;
        let display = mapping
            .kinds()
            .into_iter()
            .filter_map(|kind| mapping.object(kind).map(|object| (kind, object.display.clone())))
            .filter(|(_, display)| !display.is_empty())
            .collect();
        let declared_objects = mapping
            .kinds()
            .into_iter()
            .filter(|kind| kind.is_declared())
            .filter_map(|kind| {
                mapping
                    .object(kind)
                    .map(|object| (kind, object.crm_object.clone()))
            })
            .collect();
        let record_links = match crm {
            "pipedrive" => web_address("PIPEDRIVE_APP_URL", vars.pipedrive_app_url)?
                .map_or(RecordLinks::None, RecordLinks::Pipedrive),
            "salesforce" => web_address("SALESFORCE_INSTANCE_URL", vars.salesforce_instance_url)?
                .map_or(RecordLinks::None, RecordLinks::Salesforce),
            _ => RecordLinks::HubSpot,
        };
        Ok(DashboardConfig {
            state_table: vars.sync_state_table,
            resync_queue_url: vars.resync_queue_url,
            lanes: vec![
                ("outbound", vars.outbound_queue_url, vars.outbound_dlq_url),
                ("inbound", vars.inbound_queue_url, vars.inbound_dlq_url),
                ("app-inbox", vars.app_inbox_queue_url, vars.app_inbox_dlq_url),
            ],
            access,
            session_ttl_ms: i64::from(hours) * 3_600_000,
            table: vars.dashboard_table,
            sign_in_limits,
            hubspot_portal_id,
            hubspot_app_url: web_address("HUBSPOT_APP_URL", vars.hubspot_app_url)?
                .unwrap_or_else(|| "https://app.hubspot.com".into()),
            record_links,
            declared_objects,
            display,
            budget: match vars.rate_limit_table {
                Some(table) => Some((table, crm.to_string(), self.limiter(crm)?)),
                None => None,
            },
        })
    }
}

/// A provider when `DASHBOARD_OIDC_ISSUER` is set, else the password; never both, so that a
/// deployment cannot keep the shared password by mistake.
fn dashboard_access(vars: &variables::Dashboard) -> Result<DashboardAccess, ConfigError> {
    let Some(issuer) = vars
        .dashboard_oidc_issuer
        .clone()
        .filter(|issuer| !issuer.trim().is_empty())
    else {
        return Ok(DashboardAccess::Password(secret(
            ("DASHBOARD_PASSWORD", vars.dashboard_password.clone()),
            ("DASHBOARD_SECRET_ARN", vars.dashboard_secret_arn.clone()),
            "password",
        )?));
    };
    if vars.dashboard_password.is_some() || vars.dashboard_secret_arn.is_some() {
        return Err(ConfigError::new(
            "DASHBOARD_OIDC_ISSUER",
            "is set, and so is a dashboard password: choose one way to sign in",
        ));
    }
    let issuer = web_address("DASHBOARD_OIDC_ISSUER", Some(issuer))?.unwrap_or_default();
    let client = match (&vars.dashboard_oidc_client_id, &vars.dashboard_oidc_secret_arn) {
        (Some(id), _) if !id.trim().is_empty() => ProviderClient::Values {
            id: id.trim().to_string(),
            secret: vars
                .dashboard_oidc_client_secret
                .clone()
                .filter(|secret| !secret.is_empty())
                .map(SecretString::from),
        },
        (_, Some(secret_id)) => ProviderClient::SecretsManager {
            secret_id: secret_id.clone(),
        },
        _ => {
            return Err(ConfigError::new(
                "DASHBOARD_OIDC_CLIENT_ID",
                "is not set, and neither is DASHBOARD_OIDC_SECRET_ARN",
            ))
        }
    };
    Ok(DashboardAccess::Provider(ProviderConfig {
        issuer,
        client,
        name: vars
            .dashboard_oidc_provider_name
            .clone()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "your identity provider".into()),
        public_url: web_address("DASHBOARD_PUBLIC_URL", vars.dashboard_public_url.clone())?,
        required_group: vars
            .dashboard_oidc_required_group
            .clone()
            .filter(|group| !group.trim().is_empty()),
    }))
}

/// A required value that a configuration choice made necessary (its struct field is optional).
fn required(name: &str, value: Option<String>) -> Result<String, ConfigError> {
    value.ok_or_else(|| ConfigError::new(name, "is not set"))
}

/// A flag: `true`, `1` or `yes`; `false`, `0` or `no`, in any case.
fn flag(name: &str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(ConfigError::new(name, format!("`{other}` is not true or false"))),
    }
}

/// A secret from its own variable, or else from the Secrets Manager secret its ARN names.
fn secret(
    value: (&str, Option<String>),
    arn: (&str, Option<String>),
    field: &'static str,
) -> Result<SecretSource, ConfigError> {
    match (value, arn) {
        ((_, Some(value)), _) => Ok(SecretSource::Value(SecretString::from(value))),
        (_, (_, Some(secret_id))) => Ok(SecretSource::SecretsManager { secret_id, field }),
        ((value_name, None), (arn_name, None)) => Err(ConfigError::new(
            value_name,
            format!("is not set, and neither is {arn_name}"),
        )),
    }
}

/// An `https://` (or, locally, `http://`) address, without its trailing slash.
fn web_address(name: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        None => Ok(None),
        Some(url) => {
            let url = url.trim_end_matches('/');
            match url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
            {
                Some(host) if !host.is_empty() => Ok(Some(url.to_string())),
                _ => Err(ConfigError::new(name, "must be an https:// (or http://) address")),
            }
        }
    }
}

/// `CRM`, in lower case: one of the CRMs crm-sync speaks (HubSpot when unset).
/// The built-in mapping of a CRM (by [`crm_name`]): (its text, where it came from).
fn built_in_mapping(crm: &str) -> (String, String) {
    let (text, file) = match crm {
        "pipedrive" => (
            crate::domain::mapping::PIPEDRIVE_MAPPING,
            "mapping.pipedrive.toml",
        ),
        "salesforce" => (
            crate::domain::mapping::SALESFORCE_MAPPING,
            "mapping.salesforce.toml",
        ),
        _ => (crate::domain::mapping::DEFAULT_MAPPING, "mapping.toml"),
    };
    (text.to_string(), format!("built-in shared/config/{file}"))
}

/// The mapping `CRM_SYNC_MAPPING_FILE` names, else `built_in`: (its text, where it came from).
fn mapping_text(file: Option<String>, built_in: (String, String)) -> Result<(String, String), ConfigError> {
    match file {
        Some(path) => Ok((
            std::fs::read_to_string(&path).map_err(|error| {
                ConfigError::new("CRM_SYNC_MAPPING_FILE", format!("cannot read {path}: {error}"))
            })?,
            path,
        )),
        None => Ok(built_in),
    }
}

fn crm_name(value: Option<&str>) -> Result<&'static str, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("hubspot") => Ok("hubspot"),
        Some("pipedrive") => Ok("pipedrive"),
        Some("salesforce") => Ok("salesforce"),
        Some(other) => Err(ConfigError::new(
            "CRM",
            format!("`{other}` is not a CRM crm-sync speaks (hubspot, pipedrive, salesforce)"),
        )),
    }
}

fn crm_settings(crm: Option<&str>, vars: &variables::Crm) -> Result<CrmSettings, ConfigError> {
    let vars = vars.clone();
    Ok(match crm_name(crm)? {
        "pipedrive" => CrmSettings::Pipedrive {
            api_base: vars
                .pipedrive_api_base
                .unwrap_or_else(|| crate::adapters::pipedrive::client::DEFAULT_BASE_URL.to_string()),
            token: secret(
                ("PIPEDRIVE_API_TOKEN", vars.pipedrive_api_token),
                ("PIPEDRIVE_SECRET_ARN", vars.pipedrive_secret_arn),
                "api_token",
            )?,
        },
        "salesforce" => CrmSettings::Salesforce(SalesforceSettings {
            instance_url: required("SALESFORCE_INSTANCE_URL", vars.salesforce_instance_url)?,
            token: secret(
                ("SALESFORCE_ACCESS_TOKEN", vars.salesforce_access_token),
                ("SALESFORCE_SECRET_ARN", vars.salesforce_secret_arn.clone()),
                "access_token",
            )?,
            refresh: match vars.salesforce_client_id {
                None => None,
                Some(client_id) => Some(SalesforceRefresh {
                    token_url: vars
                        .salesforce_token_url
                        .unwrap_or_else(|| "https://login.salesforce.com/services/oauth2/token".into()),
                    client_id,
                    client_secret: secret(
                        ("SALESFORCE_CLIENT_SECRET", vars.salesforce_client_secret),
                        ("SALESFORCE_SECRET_ARN", vars.salesforce_secret_arn.clone()),
                        "client_secret",
                    )?,
                    refresh_token: secret(
                        ("SALESFORCE_REFRESH_TOKEN", vars.salesforce_refresh_token),
                        ("SALESFORCE_SECRET_ARN", vars.salesforce_secret_arn),
                        "refresh_token",
                    )?,
                }),
            },
            integration_user_id: vars.salesforce_integration_user_id,
        }),
        _ => CrmSettings::HubSpot {
            api_base: vars
                .hubspot_api_base
                .unwrap_or_else(|| crate::adapters::hubspot::client::DEFAULT_BASE_URL.to_string()),
            token: secret(
                ("HUBSPOT_ACCESS_TOKEN", vars.hubspot_access_token),
                ("HUBSPOT_SECRET_ARN", vars.hubspot_secret_arn),
                "access_token",
            )?,
            api_version: match vars.hubspot_api_version {
                None => crate::adapters::hubspot::client::ApiVersion::DEFAULT,
                Some(text) => crate::adapters::hubspot::client::ApiVersion::parse(&text)
                    .map_err(|reason| ConfigError::new("HUBSPOT_API_VERSION", reason))?,
            },
        },
    })
}

/// Each function's variables as typed structs: a field is a variable (its name in capitals),
/// `Option` when it may be unset. Only what envy cannot say (defaults, ranges, choices that
/// make others required) is decided by the code above.
mod variables {
    use serde::Deserialize;

    use super::ConfigError;

    #[derive(Deserialize)]
    pub(super) struct Webhook {
        pub webhook_table: String,
        pub inbound_queue_url: String,
        pub webhook_public_base_url: Option<String>,
        pub webhook_max_body_bytes: Option<usize>,
        pub raw_delivery_retention_days: Option<u32>,
        pub hubspot_client_secret: Option<String>,
        pub hubspot_secret_arn: Option<String>,
        /// A flag: read as text, for [`super::flag`] accepts more than `true` and `false`.
        pub hubspot_accept_legacy_signatures: Option<String>,
        pub hubspot_replay_window_seconds: Option<u64>,
        pub pipedrive_webhook_user: Option<String>,
        pub pipedrive_webhook_password: Option<String>,
        pub pipedrive_secret_arn: Option<String>,
        pub salesforce_organization_id: Option<String>,
        pub salesforce_webhook_token: Option<String>,
        pub salesforce_secret_arn: Option<String>,
    }

    /// The CRM section, shared by the sync and the reconcile functions.
    #[derive(Deserialize, Clone)]
    pub(super) struct Crm {
        pub crm: Option<String>,
        pub sync_state_table: String,
        pub rate_limit_table: String,
        pub crm_sync_mapping_file: Option<String>,
        pub sync_crm_timeout_seconds: Option<u64>,
        pub timeline_retention_days: Option<u32>,
        pub hubspot_api_base: Option<String>,
        pub hubspot_access_token: Option<String>,
        pub hubspot_secret_arn: Option<String>,
        pub hubspot_api_version: Option<String>,
        pub pipedrive_api_base: Option<String>,
        pub pipedrive_api_token: Option<String>,
        pub pipedrive_secret_arn: Option<String>,
        pub salesforce_instance_url: Option<String>,
        pub salesforce_access_token: Option<String>,
        pub salesforce_secret_arn: Option<String>,
        pub salesforce_client_id: Option<String>,
        pub salesforce_token_url: Option<String>,
        pub salesforce_client_secret: Option<String>,
        pub salesforce_refresh_token: Option<String>,
        pub salesforce_integration_user_id: Option<String>,
    }

    /// The limiter's variables, each prefixed with the CRM's name (`HUBSPOT_BURST_LIMIT`, ...).
    #[derive(Deserialize)]
    pub(super) struct Limits {
        pub burst_limit: Option<u32>,
        pub burst_window_ms: Option<u64>,
        pub burst_headroom: Option<f64>,
        pub daily_limit: Option<u64>,
        pub daily_reserve: Option<u64>,
        pub live_reserve: Option<u64>,
        pub day_utc_offset_minutes: Option<i32>,
    }

    #[derive(Deserialize)]
    pub(super) struct Sync {
        pub outbound_queue_url: String,
        pub outbound_dlq_url: String,
        pub sync_max_attempts: Option<u32>,
        pub sync_retry_base_seconds: Option<u64>,
        pub sync_retry_cap_seconds: Option<u64>,
        pub sync_max_link_wait_seconds: Option<u64>,
        pub sync_lease_seconds: Option<u64>,
        pub sync_busy_retry_seconds: Option<u64>,
        pub max_clock_skew_seconds: Option<u64>,
        pub shared_email_policy: Option<String>,
        pub reconcile_queue_arn: Option<String>,
        pub reconcile_queue_url: Option<String>,
        pub resync_queue_arn: Option<String>,
        pub resync_queue_url: Option<String>,
        pub backfill_queue_arn: Option<String>,
        pub backfill_queue_url: Option<String>,
        pub metrics_namespace: Option<String>,
        pub stack_name: Option<String>,
        pub inbound_queue_arn: Option<String>,
        pub inbound_queue_url: Option<String>,
        pub inbound_dlq_url: Option<String>,
        pub app_inbox_queue_url: Option<String>,
        pub webhook_table: Option<String>,
        pub webhook_event_retention_days: Option<u32>,
        /// A flag, read as text (see [`super::flag`]).
        pub reassert_app_values: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Reconcile {
        pub reconcile_queue_url: String,
        pub reconcile_cycle_nights: Option<u32>,
        pub reconcile_page_size: Option<usize>,
        pub reconcile_stuck_after_minutes: Option<u64>,
        pub app_inbox_queue_url: Option<String>,
        pub inbound_queue_url: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Adopt {
        pub backfill_queue_url: String,
        pub app_inbox_queue_url: Option<String>,
        pub adoption_bucket: Option<String>,
        pub adoption_queue_url: Option<String>,
        pub adoption_slice_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    pub(super) struct Dashboard {
        pub crm: Option<String>,
        pub sync_state_table: String,
        pub resync_queue_url: String,
        pub outbound_queue_url: String,
        pub outbound_dlq_url: String,
        pub inbound_queue_url: String,
        pub inbound_dlq_url: String,
        pub app_inbox_queue_url: String,
        pub app_inbox_dlq_url: String,
        pub dashboard_password: Option<String>,
        pub dashboard_secret_arn: Option<String>,
        pub dashboard_oidc_issuer: Option<String>,
        pub dashboard_oidc_client_id: Option<String>,
        pub dashboard_oidc_client_secret: Option<String>,
        pub dashboard_oidc_secret_arn: Option<String>,
        pub dashboard_oidc_provider_name: Option<String>,
        pub dashboard_oidc_required_group: Option<String>,
        pub dashboard_public_url: Option<String>,
        pub dashboard_table: String,
        pub dashboard_session_hours: Option<u32>,
        pub dashboard_sign_in_failures_per_client: Option<u32>,
        pub dashboard_sign_in_failures_all_clients: Option<u32>,
        pub dashboard_sign_in_window_seconds: Option<u32>,
        pub hubspot_portal_id: Option<String>,
        pub hubspot_app_url: Option<String>,
        pub pipedrive_app_url: Option<String>,
        pub salesforce_instance_url: Option<String>,
        pub crm_sync_mapping_file: Option<String>,
        pub rate_limit_table: Option<String>,
    }

    /// The variable names `T` declares, with `prefix`: serde hands a struct's deserializer its
    /// field names, so asking once (and stopping there) lists them.
    pub(super) fn names<T: serde::de::DeserializeOwned>(prefix: &str) -> Vec<String> {
        let mut fields = FieldNames(&[]);
        let _ = T::deserialize(&mut fields);
        fields
            .0
            .iter()
            .map(|field| format!("{prefix}{}", field.to_ascii_uppercase()))
            .collect()
    }

    struct FieldNames(&'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for &mut FieldNames {
        type Error = serde::de::value::Error;

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("only the field names were asked for"))
        }

        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct of variables"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    /// envy's error, naming the variable: a missing one by its field, a malformed one by what
    /// envy reports it was "provided by" (as text: envy has no structured form of it).
    pub(super) fn named(error: envy::Error, prefix: &str) -> ConfigError {
        match error {
            envy::Error::MissingValue(field) => {
                ConfigError::new(&format!("{prefix}{}", field.to_ascii_uppercase()), "is not set")
            }
            envy::Error::Custom(message) => match message.rsplit_once(" provided by ") {
                Some((problem, variable)) => {
                    let (why, value) = problem
                        .rsplit_once(" while parsing value '")
                        .map_or((problem, ""), |(why, value)| (why, value.trim_end_matches('\'')));
                    // envy names the variable without the prefix it stripped.
                    ConfigError::new(
                        &format!("{prefix}{variable}"),
                        format!("`{value}` is not valid: {why}"),
                    )
                }
                None => ConfigError::new("environment", message),
            },
        }
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env(move |name: &str| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 3] = [
        ("WEBHOOK_TABLE", "t"),
        ("INBOUND_QUEUE_URL", "http://q"),
        ("HUBSPOT_CLIENT_SECRET", "s"),
    ];

    #[test]
    fn a_minimal_environment_gives_the_documented_defaults() {
        let config = env(&BASE).webhook().unwrap();
        assert_eq!(config.ingest.max_body_bytes, 262_144);
        assert_eq!(config.ingest.delivery_retention_ms, 30 * DAY_MS);
        assert!(config.hubspot_accept_legacy_signatures);
        assert_eq!(config.hubspot_replay_window_secs, 300);
        assert!(config.public_base_url.is_none());
        assert!(matches!(config.hubspot_secret, SecretSource::Value(_)));
    }

    #[test]
    fn salesforce_outbound_messages_are_accepted_only_once_the_org_is_configured() {
        assert!(env(&BASE).webhook().unwrap().salesforce.is_none());
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("SALESFORCE_ORGANIZATION_ID", "00D000000000062EAA"),
            ("SALESFORCE_SECRET_ARN", "arn:s"),
        ]);
        let salesforce = env(&pairs).webhook().unwrap().salesforce.expect("configured");
        assert_eq!(salesforce.organization_id, "00D000000000062EAA");
        assert!(matches!(
            salesforce.token,
            SecretSource::SecretsManager { ref secret_id, field: "webhook_token" } if secret_id == "arn:s"
        ));
        pairs.truncate(BASE.len() + 1);
        let error = env(&pairs).webhook().unwrap_err();
        assert!(error.to_string().contains("SALESFORCE_WEBHOOK_TOKEN"), "{error}");
    }

    #[test]
    fn pipedrive_webhooks_are_accepted_only_once_their_user_is_configured() {
        assert!(env(&BASE).webhook().unwrap().pipedrive.is_none());
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("PIPEDRIVE_WEBHOOK_USER", "crm-sync"),
            ("PIPEDRIVE_SECRET_ARN", "arn:p"),
        ]);
        let pipedrive = env(&pairs).webhook().unwrap().pipedrive.expect("configured");
        assert_eq!(pipedrive.username, "crm-sync");
        assert!(matches!(
            pipedrive.password,
            SecretSource::SecretsManager { ref secret_id, field: "webhook_password" } if secret_id == "arn:p"
        ));
        pairs.truncate(BASE.len() + 1);
        let error = env(&pairs).webhook().unwrap_err();
        assert!(
            error.to_string().contains("PIPEDRIVE_WEBHOOK_PASSWORD"),
            "{error}"
        );
    }

    #[test]
    fn the_secret_comes_from_secrets_manager_when_only_its_arn_is_set() {
        let config = env(&[
            ("WEBHOOK_TABLE", "t"),
            ("INBOUND_QUEUE_URL", "http://q"),
            ("HUBSPOT_SECRET_ARN", "arn:aws:secretsmanager:x"),
        ])
        .webhook()
        .unwrap();
        assert!(matches!(
            config.hubspot_secret,
            SecretSource::SecretsManager { ref secret_id, field: "client_secret" } if secret_id == "arn:aws:secretsmanager:x"
        ));
    }

    #[test]
    fn a_missing_variable_is_named_in_the_error() {
        let error = env(&BASE[1..]).webhook().unwrap_err();
        assert_eq!(error.variable, "WEBHOOK_TABLE");
        let error = env(&BASE[..2]).webhook().unwrap_err();
        assert_eq!(
            error.to_string(),
            "configuration: HUBSPOT_CLIENT_SECRET: is not set, and neither is HUBSPOT_SECRET_ARN"
        );
    }

    #[test]
    fn a_malformed_value_is_named_with_what_was_expected() {
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOK_MAX_BODY_BYTES", "lots"));
        let error = env(&pairs).webhook().unwrap_err();
        assert_eq!(
            error.to_string(),
            "configuration: WEBHOOK_MAX_BODY_BYTES: `lots` is not valid: invalid digit found in string"
        );
        let mut pairs = BASE.to_vec();
        pairs.push(("HUBSPOT_ACCEPT_LEGACY_SIGNATURES", "maybe"));
        assert_eq!(
            env(&pairs).webhook().unwrap_err().variable,
            "HUBSPOT_ACCEPT_LEGACY_SIGNATURES"
        );
    }

    #[test]
    fn a_body_limit_beyond_what_one_item_holds_is_refused() {
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOK_MAX_BODY_BYTES", "500000"));
        assert_eq!(
            env(&pairs).webhook().unwrap_err().variable,
            "WEBHOOK_MAX_BODY_BYTES"
        );
    }

    const SYNC: [(&str, &str); 5] = [
        ("SYNC_STATE_TABLE", "s"),
        ("RATE_LIMIT_TABLE", "r"),
        ("OUTBOUND_QUEUE_URL", "http://q"),
        ("OUTBOUND_DLQ_URL", "http://d"),
        ("HUBSPOT_ACCESS_TOKEN", "t"),
    ];

    #[test]
    fn the_sync_configuration_defaults_to_hubspot_pro_limits_and_the_built_in_mapping() {
        let config = env(&SYNC).sync().unwrap();
        assert_eq!(config.crm.limiter.burst_limit, 190);
        assert_eq!(config.crm.limiter.daily_reserve, 25_000);
        assert_eq!(config.sync.max_attempts, 5);
        assert!(
            matches!(config.crm.settings, CrmSettings::HubSpot { ref api_base, .. } if api_base == "https://api.hubapi.com")
        );
        assert_eq!(config.crm.settings.provider(), "hubspot");
        assert!(config.crm.mapping_toml.contains("[contact]"));
    }

    #[test]
    fn crm_pipedrive_takes_pipedrives_token_limits_and_mapping() {
        let mut pairs = SYNC[..4].to_vec();
        pairs.extend([
            ("CRM", "Pipedrive"),
            ("PIPEDRIVE_SECRET_ARN", "arn:p"),
            ("PIPEDRIVE_BURST_LIMIT", "40"),
        ]);
        let config = env(&pairs).sync().unwrap();
        assert!(matches!(
            config.crm.settings,
            CrmSettings::Pipedrive { ref api_base, token: SecretSource::SecretsManager { field: "api_token", .. } }
                if api_base == "https://api.pipedrive.com/api/v2"
        ));
        assert_eq!(config.crm.settings.provider(), "pipedrive");
        assert_eq!(config.crm.limiter.burst_limit, 40);
        assert_eq!(config.crm.limiter.burst_window_ms, 2_000);
        assert!(config.crm.mapping_toml.contains(r#"crm_object = "persons""#));
        // Without its token the error names Pipedrive's variable, not HubSpot's.
        pairs.retain(|(name, _)| *name != "PIPEDRIVE_SECRET_ARN");
        assert_eq!(env(&pairs).sync().unwrap_err().variable, "PIPEDRIVE_API_TOKEN");
    }

    #[test]
    fn crm_salesforce_needs_its_instance_and_renews_with_a_refresh_token_when_a_client_is_set() {
        let mut pairs = SYNC[..4].to_vec();
        pairs.extend([("CRM", "salesforce"), ("SALESFORCE_SECRET_ARN", "arn:s")]);
        assert_eq!(
            env(&pairs).sync().unwrap_err().variable,
            "SALESFORCE_INSTANCE_URL"
        );
        pairs.push(("SALESFORCE_INSTANCE_URL", "https://acme.my.salesforce.com"));
        let config = env(&pairs).sync().unwrap();
        let CrmSettings::Salesforce(settings) = &config.crm.settings else {
            panic!("salesforce");
        };
        assert!(settings.refresh.is_none());
        assert_eq!(config.crm.limiter.daily_limit, 100_000);
        assert!(config.crm.mapping_toml.contains(r#"crm_object = "Contact""#));
        pairs.push(("SALESFORCE_CLIENT_ID", "app"));
        let config = env(&pairs).sync().unwrap();
        let CrmSettings::Salesforce(settings) = &config.crm.settings else {
            panic!("salesforce");
        };
        let refresh = settings.refresh.as_ref().expect("a refresh client");
        assert_eq!(
            refresh.token_url,
            "https://login.salesforce.com/services/oauth2/token"
        );
        assert!(matches!(
            refresh.refresh_token,
            SecretSource::SecretsManager {
                field: "refresh_token",
                ..
            }
        ));
    }

    /// Every variable the dashboard function requires.
    const DASHBOARD: [(&str, &str); 10] = [
        ("SYNC_STATE_TABLE", "s"),
        ("RESYNC_QUEUE_URL", "http://r"),
        ("OUTBOUND_QUEUE_URL", "http://o"),
        ("OUTBOUND_DLQ_URL", "http://od"),
        ("INBOUND_QUEUE_URL", "http://i"),
        ("INBOUND_DLQ_URL", "http://id"),
        ("APP_INBOX_QUEUE_URL", "http://a"),
        ("APP_INBOX_DLQ_URL", "http://ad"),
        ("DASHBOARD_PASSWORD", "p"),
        ("DASHBOARD_TABLE", "t"),
    ];

    #[test]
    fn dashboard_links_open_the_configured_crms_app_when_its_address_is_known() {
        let base = DASHBOARD;
        let links = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            env(&pairs).dashboard().map(|config| config.record_links)
        };
        assert_eq!(links(&[]).unwrap(), RecordLinks::HubSpot);
        assert_eq!(links(&[("CRM", "pipedrive")]).unwrap(), RecordLinks::None);
        assert_eq!(
            links(&[
                ("CRM", "pipedrive"),
                ("PIPEDRIVE_APP_URL", "https://acme.pipedrive.com/")
            ])
            .unwrap(),
            RecordLinks::Pipedrive("https://acme.pipedrive.com".into())
        );
        assert_eq!(
            links(&[
                ("CRM", "salesforce"),
                ("SALESFORCE_INSTANCE_URL", "https://acme.my.salesforce.com")
            ])
            .unwrap(),
            RecordLinks::Salesforce("https://acme.my.salesforce.com".into())
        );
        assert_eq!(
            links(&[("CRM", "pipedrive"), ("PIPEDRIVE_APP_URL", "javascript:alert(1)")])
                .unwrap_err()
                .variable,
            "PIPEDRIVE_APP_URL"
        );
    }

    #[test]
    fn operators_sign_in_through_a_provider_when_an_issuer_is_set_and_never_also_with_a_password() {
        let without_password: Vec<(&str, &str)> = DASHBOARD
            .iter()
            .copied()
            .filter(|(name, _)| *name != "DASHBOARD_PASSWORD")
            .collect();
        let access = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = without_password.clone();
            pairs.extend_from_slice(extra);
            env(&pairs).dashboard().map(|config| config.access)
        };
        let issuer = (
            "DASHBOARD_OIDC_ISSUER",
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/",
        );
        let Ok(DashboardAccess::Provider(provider)) =
            access(&[issuer, ("DASHBOARD_OIDC_SECRET_ARN", "stack-dashboard-sign-in")])
        else {
            panic!("a provider");
        };
        assert_eq!(
            provider.issuer,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc"
        );
        assert!(matches!(provider.client, ProviderClient::SecretsManager { .. }));
        assert_eq!(provider.name, "your identity provider");
        let Ok(DashboardAccess::Provider(provider)) = access(&[
            issuer,
            ("DASHBOARD_OIDC_CLIENT_ID", " abc "),
            ("DASHBOARD_OIDC_SECRET_ARN", "ignored"),
            ("DASHBOARD_PUBLIC_URL", "https://admin.example.com/"),
        ]) else {
            panic!("a provider");
        };
        assert!(matches!(&provider.client, ProviderClient::Values { id, secret: None } if id == "abc"));
        assert_eq!(provider.public_url.as_deref(), Some("https://admin.example.com"));

        assert_eq!(
            access(&[issuer]).unwrap_err().variable,
            "DASHBOARD_OIDC_CLIENT_ID"
        );
        assert_eq!(
            access(&[
                issuer,
                ("DASHBOARD_OIDC_CLIENT_ID", "abc"),
                ("DASHBOARD_PASSWORD", "p")
            ])
            .unwrap_err()
            .variable,
            "DASHBOARD_OIDC_ISSUER",
            "a password beside a provider is refused"
        );
        assert_eq!(
            access(&[
                ("DASHBOARD_OIDC_ISSUER", "ftp://idp"),
                ("DASHBOARD_OIDC_CLIENT_ID", "abc")
            ])
            .unwrap_err()
            .variable,
            "DASHBOARD_OIDC_ISSUER"
        );
        assert!(matches!(
            access(&[("DASHBOARD_PASSWORD", "p")]),
            Ok(DashboardAccess::Password(_))
        ));
        assert_eq!(access(&[]).unwrap_err().variable, "DASHBOARD_PASSWORD");
    }

    /// The dashboard's required variables but its table.
    fn dashboard_pairs() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SYNC_STATE_TABLE", "s"),
            ("RESYNC_QUEUE_URL", "http://r"),
            ("OUTBOUND_QUEUE_URL", "http://o"),
            ("OUTBOUND_DLQ_URL", "http://od"),
            ("INBOUND_QUEUE_URL", "http://i"),
            ("INBOUND_DLQ_URL", "http://id"),
            ("APP_INBOX_QUEUE_URL", "http://a"),
            ("APP_INBOX_DLQ_URL", "http://ad"),
            ("DASHBOARD_PASSWORD", "p"),
        ]
    }

    #[test]
    fn dashboard_sign_in_limits_default_to_five_per_client_and_a_hundred_in_all_per_quarter_hour() {
        let mut pairs = dashboard_pairs();
        assert_eq!(env(&pairs).dashboard().unwrap_err().variable, "DASHBOARD_TABLE");
        pairs.push(("DASHBOARD_TABLE", "t"));
        let config = env(&pairs).dashboard().unwrap();
        assert_eq!(config.table, "t");
        assert_eq!(
            config.sign_in_limits,
            crate::dashboard::session::SignInLimits {
                per_client: 5,
                all_clients: 100,
                window_ms: 900_000,
            }
        );
        pairs.extend([
            ("DASHBOARD_SIGN_IN_FAILURES_PER_CLIENT", "3"),
            ("DASHBOARD_SIGN_IN_FAILURES_ALL_CLIENTS", "20"),
            ("DASHBOARD_SIGN_IN_WINDOW_SECONDS", "60"),
        ]);
        let limits = env(&pairs).dashboard().unwrap().sign_in_limits;
        assert_eq!(
            (limits.per_client, limits.all_clients, limits.window_ms),
            (3, 20, 60_000)
        );
        pairs.push(("DASHBOARD_SIGN_IN_FAILURES_PER_CLIENT", "0"));
        // The later pair wins in the lookup map.
        assert_eq!(
            env(&pairs).dashboard().unwrap_err().variable,
            "DASHBOARD_SIGN_IN_FAILURES_PER_CLIENT"
        );
    }

    #[test]
    fn the_dashboard_reads_the_days_budget_with_the_limits_the_sync_uses_when_it_knows_the_limiter() {
        let mut pairs = dashboard_pairs();
        pairs.push(("DASHBOARD_TABLE", "t"));
        assert!(
            env(&pairs).dashboard().unwrap().budget.is_none(),
            "no limiter table, no budget"
        );
        pairs.extend([
            ("RATE_LIMIT_TABLE", "limits"),
            ("CRM", "pipedrive"),
            ("PIPEDRIVE_DAILY_LIMIT", "90000"),
        ]);
        let (table, key, limiter) = env(&pairs).dashboard().unwrap().budget.unwrap();
        assert_eq!((table.as_str(), key.as_str()), ("limits", "pipedrive"));
        assert_eq!(limiter.daily_limit, 90_000);
        assert_eq!(limiter.daily_reserve, 1_500, "Pipedrive's own reserve");
        assert_eq!(limiter.live_reserve, 9_000, "a tenth of the day");
        pairs.push(("PIPEDRIVE_DAILY_RESERVE", "90000"));
        assert_eq!(
            env(&pairs).dashboard().unwrap_err().variable,
            "PIPEDRIVE_LIVE_RESERVE"
        );
    }

    #[test]
    fn the_dashboard_knows_the_object_types_its_crms_mapping_declares_and_a_bad_mapping_stops_it() {
        let dir = std::env::temp_dir().join(format!("crm-sync-dashboard-mapping-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, bad) = (dir.join("good.toml"), dir.join("bad.toml"));
        std::fs::write(
            &good,
            "[contact]\ncrm_object = \"contacts\"\nid_property = \"crm_sync_app_id\"\n\
             [gadget]\ncrm_object = \"2-2000001\"\nid_property = \"crm_sync_app_id\"\n",
        )
        .unwrap();
        std::fs::write(&bad, "[contact]\ncrm_object = \"\"\nid_property = \"x\"\n").unwrap();
        let mut pairs = dashboard_pairs();
        pairs.push(("DASHBOARD_TABLE", "t"));
        assert!(env(&pairs).dashboard().is_ok(), "the built-in mapping");
        assert_eq!(crate::domain::contract::ObjectKind::parse("gadget"), None);
        pairs.push(("CRM_SYNC_MAPPING_FILE", good.to_str().unwrap()));
        env(&pairs).dashboard().unwrap();
        assert!(
            crate::domain::contract::ObjectKind::parse("gadget").is_some(),
            "declared at cold start"
        );
        pairs.push(("CRM_SYNC_MAPPING_FILE", bad.to_str().unwrap()));
        let error = env(&pairs).dashboard().unwrap_err();
        assert_eq!(error.variable, "CRM_SYNC_MAPPING_FILE");
        assert!(error.to_string().contains("contact.crm_object"), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_hubspot_portal_id_that_is_not_digits_stops_the_cold_start_naming_it() {
        let base = DASHBOARD;
        let with = |id: &'static str| {
            let mut pairs = base.to_vec();
            pairs.push(("HUBSPOT_PORTAL_ID", id));
            env(&pairs).dashboard()
        };
        assert_eq!(with("62515").unwrap().hubspot_portal_id.as_deref(), Some("62515"));
        assert_eq!(with("").unwrap().hubspot_portal_id, None, "unset");
        assert_eq!(with("62515x").unwrap_err().variable, "HUBSPOT_PORTAL_ID");
    }

    #[test]
    fn a_clock_skew_below_one_second_is_refused() {
        let mut pairs = SYNC.to_vec();
        pairs.push(("MAX_CLOCK_SKEW_SECONDS", "0"));
        assert_eq!(env(&pairs).sync().unwrap_err().variable, "MAX_CLOCK_SKEW_SECONDS");
        pairs.pop();
        pairs.push(("MAX_CLOCK_SKEW_SECONDS", "1"));
        assert_eq!(env(&pairs).sync().unwrap().sync.max_clock_skew.as_secs(), 1);
    }

    #[test]
    fn an_unknown_crm_is_refused_with_the_ones_spoken() {
        let mut pairs = SYNC.to_vec();
        pairs.push(("CRM", "zoho"));
        let error = env(&pairs).sync().unwrap_err();
        assert_eq!(error.variable, "CRM");
        assert!(
            error.problem.contains("hubspot, pipedrive, salesforce"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn inbound_processing_is_configured_by_the_inbound_queue_and_needs_its_companions() {
        assert!(env(&SYNC).sync().unwrap().inbound.is_none());
        let mut pairs = SYNC.to_vec();
        pairs.push(("INBOUND_QUEUE_ARN", "arn:aws:sqs:us-east-1:1:inbound"));
        assert_eq!(env(&pairs).sync().unwrap_err().variable, "INBOUND_QUEUE_URL");
        pairs.extend([
            ("INBOUND_QUEUE_URL", "http://i"),
            ("INBOUND_DLQ_URL", "http://id"),
            ("APP_INBOX_QUEUE_URL", "http://a"),
            ("WEBHOOK_TABLE", "w"),
        ]);
        let inbound = env(&pairs).sync().unwrap().inbound.unwrap();
        assert_eq!(inbound.app_inbox_url, "http://a");
        assert!(!inbound.reassert_app_values);
    }

    #[test]
    fn an_event_retention_of_no_day_is_refused_for_the_dedupe_record_would_vanish() {
        let mut pairs = SYNC.to_vec();
        pairs.extend([
            ("INBOUND_QUEUE_ARN", "arn:aws:sqs:us-east-1:1:inbound"),
            ("INBOUND_QUEUE_URL", "http://i"),
            ("INBOUND_DLQ_URL", "http://id"),
            ("APP_INBOX_QUEUE_URL", "http://a"),
            ("WEBHOOK_TABLE", "w"),
        ]);
        let inbound = env(&pairs).sync().unwrap().inbound.unwrap();
        assert_eq!(inbound.event_retention_ms, 90 * DAY_MS);
        pairs.push(("WEBHOOK_EVENT_RETENTION_DAYS", "1"));
        assert_eq!(
            env(&pairs).sync().unwrap().inbound.unwrap().event_retention_ms,
            DAY_MS
        );
        pairs.push(("WEBHOOK_EVENT_RETENTION_DAYS", "0"));
        assert_eq!(
            env(&pairs).sync().unwrap_err().variable,
            "WEBHOOK_EVENT_RETENTION_DAYS"
        );
    }

    #[test]
    fn a_mapping_file_that_cannot_be_read_is_named() {
        let mut pairs = SYNC.to_vec();
        pairs.push(("CRM_SYNC_MAPPING_FILE", "/nonexistent/mapping.toml"));
        let error = env(&pairs).sync().unwrap_err();
        assert_eq!(error.variable, "CRM_SYNC_MAPPING_FILE");
    }

    #[test]
    fn an_address_without_a_host_is_refused() {
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOK_PUBLIC_BASE_URL", "https://"));
        assert_eq!(
            env(&pairs).webhook().unwrap_err().variable,
            "WEBHOOK_PUBLIC_BASE_URL"
        );
    }

    #[test]
    fn the_public_base_url_loses_its_trailing_slash() {
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOK_PUBLIC_BASE_URL", "https://hooks.example.com/crm/"));
        let config = env(&pairs).webhook().unwrap();
        assert_eq!(
            config.public_base_url.as_deref(),
            Some("https://hooks.example.com/crm")
        );
    }

    #[test]
    fn every_variable_the_configuration_reads_is_documented() {
        use super::variables::{self, names};
        let docs = include_str!("../../docs/configuration.md");
        let mut read = Vec::new();
        read.extend(names::<variables::Webhook>(""));
        read.extend(names::<variables::Crm>(""));
        read.extend(names::<variables::Sync>(""));
        read.extend(names::<variables::Reconcile>(""));
        read.extend(names::<variables::Dashboard>(""));
        for crm in ["HUBSPOT_", "PIPEDRIVE_", "SALESFORCE_"] {
            read.extend(names::<variables::Limits>(crm));
        }
        assert!(
            read.contains(&"PIPEDRIVE_BURST_LIMIT".to_string()),
            "the names are listed: {read:?}"
        );
        let missing: Vec<&String> = read
            .iter()
            .filter(|name| !docs.contains(&format!("`{name}`")))
            .collect();
        assert!(missing.is_empty(), "not in docs/configuration.md: {missing:?}");
    }

    #[test]
    fn only_the_variables_a_function_declares_are_read() {
        let asked = std::cell::RefCell::new(Vec::new());
        let config = Env(|name: &str| {
            asked.borrow_mut().push(name.to_string());
            BASE.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
        .webhook();
        assert!(config.is_ok());
        let asked = asked.into_inner();
        assert!(asked.contains(&"WEBHOOK_TABLE".to_string()));
        assert!(!asked.contains(&"SYNC_STATE_TABLE".to_string()), "{asked:?}");
    }

    #[test]
    fn a_flag_is_true_or_false_in_any_of_their_spellings_and_anything_else_names_the_variable() {
        let with = |value: &'static str| {
            let mut pairs = BASE.to_vec();
            pairs.push(("HUBSPOT_ACCEPT_LEGACY_SIGNATURES", value));
            env(&pairs).webhook()
        };
        assert!(!with("false").unwrap().hubspot_accept_legacy_signatures);
        assert!(!with("No").unwrap().hubspot_accept_legacy_signatures);
        assert!(!with("0").unwrap().hubspot_accept_legacy_signatures);
        assert!(with("TRUE").unwrap().hubspot_accept_legacy_signatures);
        assert!(
            with("  ").unwrap().hubspot_accept_legacy_signatures,
            "blank is unset"
        );
        let error = with("maybe").unwrap_err();
        assert_eq!(error.variable, "HUBSPOT_ACCEPT_LEGACY_SIGNATURES");
        assert!(error.problem.contains("`maybe`"), "{}", error.problem);
    }

    #[test]
    fn a_limit_variable_is_read_for_the_configured_crm_only() {
        let mut pairs = SYNC.to_vec();
        pairs.extend([("PIPEDRIVE_BURST_LIMIT", "7"), ("HUBSPOT_DAILY_LIMIT", "lots")]);
        let error = env(&pairs).sync().unwrap_err();
        assert_eq!(error.variable, "HUBSPOT_DAILY_LIMIT");
        pairs.pop();
        assert_eq!(env(&pairs).sync().unwrap().crm.limiter.burst_limit, 190);
    }
}
