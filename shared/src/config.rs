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

    /// The prefix of its limit variables (`HUBSPOT_BURST_LIMIT`, `PIPEDRIVE_BURST_LIMIT`, ...).
    fn prefix(&self) -> &'static str {
        match self {
            CrmSettings::HubSpot { .. } => "HUBSPOT",
            CrmSettings::Pipedrive { .. } => "PIPEDRIVE",
            CrmSettings::Salesforce(_) => "SALESFORCE",
        }
    }

    /// The CRM's own limits, before any variable changes them.
    fn limiter_defaults(&self) -> crate::adapters::dynamodb::LimiterSettings {
        let hubspot = crate::adapters::dynamodb::LimiterSettings::default();
        match self {
            CrmSettings::HubSpot { .. } => hubspot,
            // The lowest plan's token window (20 requests per 2 s). The daily budget is the
            // company's, in tokens (30,000 x plan multiplier x seats), shared with every other
            // app; it is adopted from `x-daily-ratelimit-token-remaining` as calls report it.
            CrmSettings::Pipedrive { .. } => crate::adapters::dynamodb::LimiterSettings {
                burst_limit: 20,
                burst_window_ms: 2_000,
                daily_limit: 30_000,
                daily_reserve: 1_500,
                requests_per_call: 2,
                daily_cost_per_call: crate::adapters::pipedrive::client::token_cost::PER_CALL,
                // The window is short (2 s), so HubSpot's 2% margin would be 40 ms: less than a
                // slow first connection between a search and its write. 10% is 200 ms.
                headroom: 0.9,
                ..hubspot
            },
            // Salesforce has no short window, only the daily budget (100,000 requests and up,
            // by edition and licences); 20 calls a second keeps well clear of its concurrent
            // long-request limit.
            CrmSettings::Salesforce(_) => crate::adapters::dynamodb::LimiterSettings {
                burst_limit: 20,
                burst_window_ms: 1_000,
                daily_limit: 100_000,
                daily_reserve: 5_000,
                ..hubspot
            },
        }
    }
}

/// Everything the sync function needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub state_table: String,
    pub rate_limit_table: String,
    pub outbound_queue_url: String,
    pub outbound_dlq_url: String,
    /// The mapping file's text (the built-in one unless `CRM_SYNC_MAPPING_FILE` names another).
    pub mapping_toml: String,
    pub mapping_source: String,
    pub crm: CrmSettings,
    pub crm_timeout_secs: u64,
    pub limiter: crate::adapters::dynamodb::LimiterSettings,
    pub sync: crate::sync::SyncSettings,
    pub timeline_retention_ms: i64,
    /// Set when the function also consumes the inbound (webhook events) queue.
    pub inbound: Option<InboundConfig>,
    /// The low-priority lane the reconciliation re-enqueues into: (queue ARN, queue URL).
    pub reconcile_lane: Option<(String, String)>,
    /// The priority lane the dashboard's re-syncs go to: (queue ARN, queue URL).
    pub resync_lane: Option<(String, String)>,
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
    pub reassert_app_values: bool,
}

/// Everything the reconcile function needs.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub state_table: String,
    pub rate_limit_table: String,
    /// The low-priority lane re-enqueued changes go to.
    pub reconcile_queue_url: String,
    pub mapping_toml: String,
    pub mapping_source: String,
    pub crm: CrmSettings,
    pub crm_timeout_secs: u64,
    pub limiter: crate::adapters::dynamodb::LimiterSettings,
    pub settings: crate::reconcile::ReconcileSettings,
    pub timeline_retention_ms: i64,
    /// Where CRM-owned drift goes: the app inbox (unset: drift is only reported).
    pub app_inbox_queue_url: Option<String>,
}

/// Everything the dashboard function needs.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub state_table: String,
    /// Where re-syncs go: the priority lane the sync function reads.
    pub resync_queue_url: String,
    /// Each dead-letter queue with the queue it redrives to: (name, queue URL, DLQ URL).
    pub lanes: Vec<(&'static str, String, String)>,
    pub password: SecretSource,
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
    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }

    fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name)
            .ok_or_else(|| ConfigError::new(name, "is not set"))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| ConfigError::new(name, format!("`{text}` is not {what}"))),
        }
    }

    fn flag(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self
            .optional(name)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(ConfigError::new(name, format!("`{other}` is not true or false"))),
        }
    }

    fn secret(
        &self,
        value_var: &str,
        id_var: &str,
        field: &'static str,
    ) -> Result<SecretSource, ConfigError> {
        match (self.optional(value_var), self.optional(id_var)) {
            (Some(value), _) => Ok(SecretSource::Value(SecretString::from(value))),
            (None, Some(secret_id)) => Ok(SecretSource::SecretsManager { secret_id, field }),
            (None, None) => Err(ConfigError::new(
                value_var,
                format!("is not set, and neither is {id_var}"),
            )),
        }
    }

    /// The webhook function's configuration.
    pub fn webhook(&self) -> Result<WebhookConfig, ConfigError> {
        let defaults = IngestSettings::default();
        let days = |name: &str, default_ms: i64| -> Result<i64, ConfigError> {
            let days: u32 = self.parsed(
                name,
                u32::try_from(default_ms / DAY_MS).unwrap_or(1),
                "a number of days",
            )?;
            Ok(i64::from(days) * DAY_MS)
        };
        let max_body_bytes: usize = self.parsed(
            "WEBHOOK_MAX_BODY_BYTES",
            defaults.max_body_bytes,
            "a number of bytes",
        )?;
        if max_body_bytes > 350_000 {
            // The raw body is stored in one DynamoDB item, which holds at most 400 KB.
            return Err(ConfigError::new(
                "WEBHOOK_MAX_BODY_BYTES",
                "must be at most 350000",
            ));
        }
        let lease_secs: u32 = self.parsed(
            "WEBHOOK_CLAIM_LEASE_SECONDS",
            u32::try_from(defaults.claim_lease_ms / 1000).unwrap_or(30),
            "a number of seconds",
        )?;
        let public_base_url = self
            .optional("WEBHOOK_PUBLIC_BASE_URL")
            .map(|url| url.trim_end_matches('/').to_string());
        if let Some(url) = &public_base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::new(
                    "WEBHOOK_PUBLIC_BASE_URL",
                    "must start with https:// or http://",
                ));
            }
        }
        Ok(WebhookConfig {
            table: self.required("WEBHOOK_TABLE")?,
            inbound_queue_url: self.required("INBOUND_QUEUE_URL")?,
            public_base_url,
            ingest: IngestSettings {
                max_body_bytes,
                claim_lease_ms: i64::from(lease_secs) * 1000,
                delivery_retention_ms: days("RAW_DELIVERY_RETENTION_DAYS", defaults.delivery_retention_ms)?,
                event_retention_ms: days("WEBHOOK_EVENT_RETENTION_DAYS", defaults.event_retention_ms)?,
                ..defaults
            },
            hubspot_secret: self.secret("HUBSPOT_CLIENT_SECRET", "HUBSPOT_SECRET_ARN", "client_secret")?,
            hubspot_accept_legacy_signatures: self.flag("HUBSPOT_ACCEPT_LEGACY_SIGNATURES", true)?,
            hubspot_replay_window_secs: self.parsed(
                "HUBSPOT_REPLAY_WINDOW_SECONDS",
                300,
                "a number of seconds",
            )?,
            pipedrive: match self.optional("PIPEDRIVE_WEBHOOK_USER") {
                None => None,
                Some(username) => Some(PipedriveWebhookConfig {
                    username,
                    password: self.secret(
                        "PIPEDRIVE_WEBHOOK_PASSWORD",
                        "PIPEDRIVE_SECRET_ARN",
                        "webhook_password",
                    )?,
                }),
            },
            salesforce: match self.optional("SALESFORCE_ORGANIZATION_ID") {
                None => None,
                Some(organization_id) => Some(SalesforceWebhookConfig {
                    organization_id,
                    token: self.secret(
                        "SALESFORCE_WEBHOOK_TOKEN",
                        "SALESFORCE_SECRET_ARN",
                        "webhook_token",
                    )?,
                }),
            },
        })
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The sync function's configuration.
    ///
    /// Long on purpose: every variable of the sync function is read here, in one place, so that
    /// each error names its variable; typed per-function structs (envy) would replace it.
    pub fn sync(&self) -> Result<SyncConfig, ConfigError> {
        use std::time::Duration;
        let crm = match self
            .optional("CRM")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("hubspot") => CrmSettings::HubSpot {
                api_base: self
                    .optional("HUBSPOT_API_BASE")
                    .unwrap_or_else(|| crate::adapters::hubspot::client::DEFAULT_BASE_URL.to_string()),
                token: self.secret("HUBSPOT_ACCESS_TOKEN", "HUBSPOT_SECRET_ARN", "access_token")?,
                api_version: match self.optional("HUBSPOT_API_VERSION") {
                    None => crate::adapters::hubspot::client::ApiVersion::DEFAULT,
                    Some(text) => crate::adapters::hubspot::client::ApiVersion::parse(&text)
                        .map_err(|reason| ConfigError::new("HUBSPOT_API_VERSION", reason))?,
                },
            },
            Some("pipedrive") => CrmSettings::Pipedrive {
                api_base: self
                    .optional("PIPEDRIVE_API_BASE")
                    .unwrap_or_else(|| crate::adapters::pipedrive::client::DEFAULT_BASE_URL.to_string()),
                token: self.secret("PIPEDRIVE_API_TOKEN", "PIPEDRIVE_SECRET_ARN", "api_token")?,
            },
            Some("salesforce") => CrmSettings::Salesforce(SalesforceSettings {
                instance_url: self.required("SALESFORCE_INSTANCE_URL")?,
                token: self.secret("SALESFORCE_ACCESS_TOKEN", "SALESFORCE_SECRET_ARN", "access_token")?,
                refresh: match self.optional("SALESFORCE_CLIENT_ID") {
                    None => None,
                    Some(client_id) => Some(SalesforceRefresh {
                        token_url: self
                            .optional("SALESFORCE_TOKEN_URL")
                            .unwrap_or_else(|| "https://login.salesforce.com/services/oauth2/token".into()),
                        client_id,
                        client_secret: self.secret(
                            "SALESFORCE_CLIENT_SECRET",
                            "SALESFORCE_SECRET_ARN",
                            "client_secret",
                        )?,
                        refresh_token: self.secret(
                            "SALESFORCE_REFRESH_TOKEN",
                            "SALESFORCE_SECRET_ARN",
                            "refresh_token",
                        )?,
                    }),
                },
                integration_user_id: self.optional("SALESFORCE_INTEGRATION_USER_ID"),
            }),
            Some(other) => {
                return Err(ConfigError::new(
                    "CRM",
                    format!("`{other}` is not a CRM crm-sync speaks (hubspot, pipedrive, salesforce)"),
                ))
            }
        };
        let limiter_defaults = crm.limiter_defaults();
        let prefix = crm.prefix();
        let var = |name: &str| format!("{prefix}_{name}");
        let sync_defaults = crate::sync::SyncSettings::default();
        let (mapping_toml, mapping_source) = match self.optional("CRM_SYNC_MAPPING_FILE") {
            Some(path) => (
                std::fs::read_to_string(&path).map_err(|error| {
                    ConfigError::new("CRM_SYNC_MAPPING_FILE", format!("cannot read {path}: {error}"))
                })?,
                path,
            ),
            None => match crm {
                CrmSettings::HubSpot { .. } => (
                    crate::domain::mapping::DEFAULT_MAPPING.to_string(),
                    "built-in shared/config/mapping.toml".to_string(),
                ),
                CrmSettings::Pipedrive { .. } => (
                    crate::domain::mapping::PIPEDRIVE_MAPPING.to_string(),
                    "built-in shared/config/mapping.pipedrive.toml".to_string(),
                ),
                CrmSettings::Salesforce(_) => (
                    crate::domain::mapping::SALESFORCE_MAPPING.to_string(),
                    "built-in shared/config/mapping.salesforce.toml".to_string(),
                ),
            },
        };
        let headroom: f64 = self.parsed(&var("BURST_HEADROOM"), limiter_defaults.headroom, "a number")?;
        if !(0.05..=1.0).contains(&headroom) {
            return Err(ConfigError::new(
                &var("BURST_HEADROOM"),
                "must be between 0.05 and 1",
            ));
        }
        let seconds = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(self.parsed(
                name,
                default.as_secs(),
                "a number of seconds",
            )?))
        };
        let max_attempts: u32 = self.parsed("SYNC_MAX_ATTEMPTS", sync_defaults.max_attempts, "a number")?;
        if max_attempts == 0 {
            return Err(ConfigError::new("SYNC_MAX_ATTEMPTS", "must be at least 1"));
        }
        let max_clock_skew = seconds("MAX_CLOCK_SKEW_SECONDS", sync_defaults.max_clock_skew)?;
        if max_clock_skew < Duration::from_secs(1) {
            // Clocks a few milliseconds apart would dead-letter ordinary changes.
            return Err(ConfigError::new("MAX_CLOCK_SKEW_SECONDS", "must be at least 1"));
        }
        Ok(SyncConfig {
            state_table: self.required("SYNC_STATE_TABLE")?,
            rate_limit_table: self.required("RATE_LIMIT_TABLE")?,
            outbound_queue_url: self.required("OUTBOUND_QUEUE_URL")?,
            outbound_dlq_url: self.required("OUTBOUND_DLQ_URL")?,
            mapping_toml,
            mapping_source,
            crm,
            crm_timeout_secs: self.parsed("SYNC_CRM_TIMEOUT_SECONDS", 20, "a number of seconds")?,
            limiter: crate::adapters::dynamodb::LimiterSettings {
                burst_limit: self.parsed(&var("BURST_LIMIT"), limiter_defaults.burst_limit, "a number")?,
                burst_window_ms: self.parsed(
                    &var("BURST_WINDOW_MS"),
                    limiter_defaults.burst_window_ms,
                    "milliseconds",
                )?,
                headroom,
                daily_limit: self.parsed(&var("DAILY_LIMIT"), limiter_defaults.daily_limit, "a number")?,
                daily_reserve: self.parsed(
                    &var("DAILY_RESERVE"),
                    limiter_defaults.daily_reserve,
                    "a number",
                )?,
                day_offset_minutes: self.parsed(
                    &var("DAY_UTC_OFFSET_MINUTES"),
                    limiter_defaults.day_offset_minutes,
                    "a number of minutes",
                )?,
                max_ahead_ms: limiter_defaults.max_ahead_ms,
                requests_per_call: limiter_defaults.requests_per_call,
                daily_cost_per_call: limiter_defaults.daily_cost_per_call,
            },
            sync: crate::sync::SyncSettings {
                max_attempts,
                retry_base: seconds("SYNC_RETRY_BASE_SECONDS", sync_defaults.retry_base)?,
                retry_cap: seconds("SYNC_RETRY_CAP_SECONDS", sync_defaults.retry_cap)?
                    .min(Duration::from_secs(900)),
                lease: seconds("SYNC_LEASE_SECONDS", sync_defaults.lease)?,
                busy_delay: seconds("SYNC_BUSY_RETRY_SECONDS", sync_defaults.busy_delay)?,
                max_clock_skew,
                ..sync_defaults
            },
            timeline_retention_ms: i64::from(self.parsed::<u32>(
                "TIMELINE_RETENTION_DAYS",
                180,
                "a number of days",
            )?) * DAY_MS,
            reconcile_lane: match self.optional("RECONCILE_QUEUE_ARN") {
                None => None,
                Some(arn) => Some((arn, self.required("RECONCILE_QUEUE_URL")?)),
            },
            resync_lane: match self.optional("RESYNC_QUEUE_ARN") {
                None => None,
                Some(arn) => Some((arn, self.required("RESYNC_QUEUE_URL")?)),
            },
            metrics: self.optional("METRICS_NAMESPACE").map(|namespace| {
                (
                    namespace,
                    self.optional("STACK_NAME").unwrap_or_else(|| "crm-sync".into()),
                )
            }),
            inbound: match self.optional("INBOUND_QUEUE_ARN") {
                None => None,
                Some(queue_arn) => Some(InboundConfig {
                    queue_arn,
                    queue_url: self.required("INBOUND_QUEUE_URL")?,
                    dlq_url: self.required("INBOUND_DLQ_URL")?,
                    app_inbox_url: self.required("APP_INBOX_QUEUE_URL")?,
                    webhook_table: self.required("WEBHOOK_TABLE")?,
                    reassert_app_values: self.flag("REASSERT_APP_VALUES", false)?,
                }),
            },
        })
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The reconcile function's configuration; CRM and limiter settings read as for the sync
    /// function, so that both spend one budget the same way.
    pub fn reconcile(&self) -> Result<ReconcileConfig, ConfigError> {
        let defaults = crate::reconcile::ReconcileSettings::default();
        let shared = |name: &str| -> Option<String> {
            match name {
                // The sync-only variables are not needed here.
                "OUTBOUND_QUEUE_URL" | "OUTBOUND_DLQ_URL" => Some("unused".into()),
                other => (self.0)(other),
            }
        };
        let sync = Env(shared).sync()?;
        let nights: u32 = self.parsed(
            "RECONCILE_CYCLE_NIGHTS",
            defaults.cycle_nights,
            "a number of nights",
        )?;
        if nights == 0 {
            return Err(ConfigError::new("RECONCILE_CYCLE_NIGHTS", "must be at least 1"));
        }
        let page_size: usize = self.parsed("RECONCILE_PAGE_SIZE", defaults.page_size, "a number")?;
        Ok(ReconcileConfig {
            state_table: sync.state_table,
            rate_limit_table: sync.rate_limit_table,
            reconcile_queue_url: self.required("RECONCILE_QUEUE_URL")?,
            mapping_toml: sync.mapping_toml,
            mapping_source: sync.mapping_source,
            crm: sync.crm,
            crm_timeout_secs: sync.crm_timeout_secs,
            settings: crate::reconcile::ReconcileSettings {
                cycle_nights: nights,
                stuck_after: std::time::Duration::from_secs(
                    60 * self.parsed::<u64>("RECONCILE_STUCK_AFTER_MINUTES", 60, "a number of minutes")?,
                ),
                page_size: page_size.clamp(1, 1000),
                day_offset_minutes: sync.limiter.day_offset_minutes,
                ..defaults
            },
            limiter: sync.limiter,
            timeline_retention_ms: sync.timeline_retention_ms,
            app_inbox_queue_url: self.optional("APP_INBOX_QUEUE_URL"),
        })
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The dashboard function's configuration.
    pub fn dashboard(&self) -> Result<DashboardConfig, ConfigError> {
        let hours: u32 = self.parsed("DASHBOARD_SESSION_HOURS", 12, "a number of hours")?;
        if hours == 0 || hours > 24 * 7 {
            return Err(ConfigError::new("DASHBOARD_SESSION_HOURS", "must be 1 to 168"));
        }
        let sign_in_defaults = crate::dashboard::session::SignInLimits::default();
        let at_least_one = |name: &str, default: u32| -> Result<u32, ConfigError> {
            let value: u32 = self.parsed(name, default, "a number")?;
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
            Ok(value)
        };
        let window_secs: u32 = self.parsed(
            "DASHBOARD_SIGN_IN_WINDOW_SECONDS",
            u32::try_from(sign_in_defaults.window_ms / 1000).unwrap_or(900),
            "a number of seconds",
        )?;
        if window_secs == 0 || window_secs > 86_400 {
            return Err(ConfigError::new(
                "DASHBOARD_SIGN_IN_WINDOW_SECONDS",
                "must be 1 to 86400",
            ));
        }
        let sign_in_limits = crate::dashboard::session::SignInLimits {
            per_client: at_least_one(
                "DASHBOARD_SIGN_IN_FAILURES_PER_CLIENT",
                sign_in_defaults.per_client,
            )?,
            all_clients: at_least_one(
                "DASHBOARD_SIGN_IN_FAILURES_ALL_CLIENTS",
                sign_in_defaults.all_clients,
            )?,
            window_ms: i64::from(window_secs) * 1000,
        };
        let lane = |name: &'static str, queue: &str, dlq: &str| -> Result<_, ConfigError> {
            Ok((name, self.required(queue)?, self.required(dlq)?))
        };
        let app_url = self
            .optional("HUBSPOT_APP_URL")
            .unwrap_or_else(|| "https://app.hubspot.com".into());
        if !app_url.starts_with("https://") && !app_url.starts_with("http://") {
            return Err(ConfigError::new("HUBSPOT_APP_URL", "must start with https://"));
        }
        Ok(DashboardConfig {
            state_table: self.required("SYNC_STATE_TABLE")?,
            resync_queue_url: self.required("RESYNC_QUEUE_URL")?,
            lanes: vec![
                lane("outbound", "OUTBOUND_QUEUE_URL", "OUTBOUND_DLQ_URL")?,
                lane("inbound", "INBOUND_QUEUE_URL", "INBOUND_DLQ_URL")?,
                lane("app-inbox", "APP_INBOX_QUEUE_URL", "APP_INBOX_DLQ_URL")?,
            ],
            password: self.secret("DASHBOARD_PASSWORD", "DASHBOARD_SECRET_ARN", "password")?,
            session_ttl_ms: i64::from(hours) * 3_600_000,
            table: self.required("DASHBOARD_TABLE")?,
            sign_in_limits,
            hubspot_portal_id: match self.optional("HUBSPOT_PORTAL_ID") {
                None => None,
                Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) => Some(id),
                Some(id) => {
                    return Err(ConfigError::new(
                        "HUBSPOT_PORTAL_ID",
                        format!("`{id}` is not a HubSpot account id (digits only)"),
                    ))
                }
            },
            hubspot_app_url: app_url.trim_end_matches('/').to_string(),
            record_links: self.record_links()?,
        })
    }

    fn record_links(&self) -> Result<RecordLinks, ConfigError> {
        let url = |name: &str| -> Result<Option<String>, ConfigError> {
            match self.optional(name) {
                None => Ok(None),
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    Ok(Some(url.trim_end_matches('/').to_string()))
                }
                Some(_) => Err(ConfigError::new(name, "must start with https://")),
            }
        };
        Ok(
            match self
                .optional("CRM")
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("pipedrive") => {
                    url("PIPEDRIVE_APP_URL")?.map_or(RecordLinks::None, RecordLinks::Pipedrive)
                }
                Some("salesforce") => {
                    url("SALESFORCE_INSTANCE_URL")?.map_or(RecordLinks::None, RecordLinks::Salesforce)
                }
                _ => RecordLinks::HubSpot,
            },
        )
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
        assert_eq!(config.ingest.claim_lease_ms, 30_000);
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
            "configuration: WEBHOOK_MAX_BODY_BYTES: `lots` is not a number of bytes"
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
        assert_eq!(config.limiter.burst_limit, 190);
        assert_eq!(config.limiter.daily_reserve, 25_000);
        assert_eq!(config.sync.max_attempts, 5);
        assert!(
            matches!(config.crm, CrmSettings::HubSpot { ref api_base, .. } if api_base == "https://api.hubapi.com")
        );
        assert_eq!(config.crm.provider(), "hubspot");
        assert!(config.mapping_toml.contains("[contact]"));
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
            config.crm,
            CrmSettings::Pipedrive { ref api_base, token: SecretSource::SecretsManager { field: "api_token", .. } }
                if api_base == "https://api.pipedrive.com/api/v2"
        ));
        assert_eq!(config.crm.provider(), "pipedrive");
        assert_eq!(config.limiter.burst_limit, 40);
        assert_eq!(config.limiter.burst_window_ms, 2_000);
        assert!(config.mapping_toml.contains(r#"crm_object = "persons""#));
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
        let CrmSettings::Salesforce(settings) = &config.crm else {
            panic!("salesforce");
        };
        assert!(settings.refresh.is_none());
        assert_eq!(config.limiter.daily_limit, 100_000);
        assert!(config.mapping_toml.contains(r#"crm_object = "Contact""#));
        pairs.push(("SALESFORCE_CLIENT_ID", "app"));
        let config = env(&pairs).sync().unwrap();
        let CrmSettings::Salesforce(settings) = &config.crm else {
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
    fn dashboard_sign_in_limits_default_to_five_per_client_and_a_hundred_in_all_per_quarter_hour() {
        let mut pairs = vec![
            ("SYNC_STATE_TABLE", "s"),
            ("RESYNC_QUEUE_URL", "http://r"),
            ("OUTBOUND_QUEUE_URL", "http://o"),
            ("OUTBOUND_DLQ_URL", "http://od"),
            ("INBOUND_QUEUE_URL", "http://i"),
            ("INBOUND_DLQ_URL", "http://id"),
            ("APP_INBOX_QUEUE_URL", "http://a"),
            ("APP_INBOX_DLQ_URL", "http://ad"),
            ("DASHBOARD_PASSWORD", "p"),
        ];
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
    fn a_mapping_file_that_cannot_be_read_is_named() {
        let mut pairs = SYNC.to_vec();
        pairs.push(("CRM_SYNC_MAPPING_FILE", "/nonexistent/mapping.toml"));
        let error = env(&pairs).sync().unwrap_err();
        assert_eq!(error.variable, "CRM_SYNC_MAPPING_FILE");
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
        // The code before its tests: every quoted NAME it reads, and each CRM's limit variables.
        let source = include_str!("config.rs")
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default();
        let docs = include_str!("../../docs/configuration.md");
        let quoted = |text: &str| -> Vec<String> {
            text.split('"')
                .skip(1)
                .step_by(2)
                .filter(|name| {
                    name.len() > 2
                        && name.starts_with(|c: char| c.is_ascii_uppercase())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                })
                .map(str::to_string)
                .collect()
        };
        let per_crm: Vec<String> = source
            .split("var(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect();
        assert!(
            per_crm.contains(&"BURST_LIMIT".to_string()),
            "the limit variables are found"
        );
        let mut missing = Vec::new();
        const CRMS: [&str; 3] = ["HUBSPOT", "PIPEDRIVE", "SALESFORCE"];
        for name in quoted(source)
            .into_iter()
            .filter(|name| !CRMS.contains(&name.as_str()))
        {
            let names = if per_crm.contains(&name) {
                CRMS.map(|crm| format!("{crm}_{name}")).to_vec()
            } else {
                vec![name]
            };
            missing.extend(
                names
                    .into_iter()
                    .filter(|name| !docs.contains(&format!("`{name}`"))),
            );
        }
        assert!(missing.is_empty(), "not in docs/configuration.md: {missing:?}");
    }
}
