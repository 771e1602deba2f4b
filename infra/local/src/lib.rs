//! The local stack: moto standing in for AWS, the resources `template.yaml` declares created in
//! it, the HubSpot sandbox standing in for HubSpot, the webhook handler served over HTTP exactly
//! as API Gateway would call it, and the sync handler fed from its queue exactly as the event
//! source mapping would feed it. `cargo run -p crm-sync-local` runs it; the integration tests
//! start it the same way.

pub mod apigw;
pub mod esm;
pub mod moto;
pub mod provision;
pub mod running;
pub mod server;
pub mod template;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::adoption_sqs::AdoptionHandler;
use crm_sync::entrypoints::dashboard_http::DashboardApi;
use crm_sync::entrypoints::reconcile_schedule::ReconcileHandler;
use crm_sync::entrypoints::sync_sqs::SyncHandler;
use crm_sync::entrypoints::webhook_http::WebhookApi;
use hubspot_sandbox::{Sandbox, SandboxConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use provision::{LocalQueue, Provisioned};

/// Which HubSpot the sync function talks to.
#[derive(Debug, Clone)]
pub enum CrmTarget {
    /// Start the HubSpot sandbox on this address (port 0 for any free port).
    Sandbox { addr: String },
    /// Real HubSpot: `HUBSPOT_ACCESS_TOKEN` (and optionally `HUBSPOT_API_BASE`) in `env_overrides`.
    HubSpot,
}

/// How to start a local stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// moto's endpoint, where resources are created.
    pub aws_endpoint: String,
    /// The endpoint the handlers use; defaults to `aws_endpoint` (tests put a fault proxy here).
    pub handler_aws_endpoint: Option<String>,
    /// Prefix of every resource name, so that several stacks can share one moto.
    pub stack_name: String,
    /// Where the HTTP API listens (port 0 for any free port).
    pub http_addr: SocketAddr,
    pub crm: CrmTarget,
    /// Template parameter values (e.g. `HubSpotClientSecret`).
    pub parameters: HashMap<String, String>,
    /// Environment variables set on top of what the template gives the functions.
    pub env_overrides: HashMap<String, String>,
    /// Run the sync function's event source (off to drive the handler by hand).
    pub run_event_sources: bool,
    /// Have the sandbox post webhooks for every change to this stack, as HubSpot would.
    pub sandbox_webhooks: bool,
    /// Values for secrets the template has Secrets Manager generate, by logical id (the
    /// dashboard's password): random when absent.
    pub generated_secrets: HashMap<String, String>,
    /// The local dashboard's shared password (the deployed dashboard has none: operators sign
    /// in through the operator pool).
    pub dashboard_password: String,
}

/// Counts the sync function's invocations and their time.
#[derive(Debug, Default)]
pub struct Invocations {
    count: std::sync::atomic::AtomicU64,
    busy_us: std::sync::atomic::AtomicU64,
}

impl Invocations {
    fn record(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.fetch_add(1, Relaxed);
        self.busy_us
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Invocations so far and their summed duration.
    pub fn totals(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.count.load(Relaxed),
            Duration::from_micros(self.busy_us.load(Relaxed)),
        )
    }
}

/// A running local stack; dropping it stops the HTTP server, the pollers and the sandbox
/// (moto is owned separately).
pub struct LocalStack {
    pub http_addr: SocketAddr,
    pub resources: Provisioned,
    /// Each function's environment, as the template defines it, resolved locally.
    pub webhook_env: HashMap<String, String>,
    pub sync_env: HashMap<String, String>,
    pub reconcile_env: HashMap<String, String>,
    pub adoption_env: HashMap<String, String>,
    pub dashboard_env: HashMap<String, String>,
    pub sandbox: Option<Sandbox>,
    pub sync: Arc<SyncHandler>,
    /// The reconcile function's handler: run it with `run_until`, as the schedule would.
    pub reconcile: Arc<ReconcileHandler>,
    /// What the event sources' invocations of the sync function took (what Lambda would bill).
    pub invocations: Arc<Invocations>,
    /// Crashes the sync function's invocations on demand (see [`esm::Crashes`]).
    pub crashes: Arc<esm::CrashSwitch>,
    event_sources: Vec<(aws_sdk_sqs::Client, esm::EventSource, esm::SqsHandler)>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalStack {
    /// Creates the template's resources, builds the handlers from the template's environment and
    /// serves them.
    pub async fn start(mut options: StackOptions) -> anyhow::Result<LocalStack> {
        let template = template::Template::load(&moto::repo_root().join("template.yaml"))?;
        let sandbox = match &options.crm {
            CrmTarget::Sandbox { addr } => Some(Sandbox::start(addr, SandboxConfig::default()).await?),
            CrmTarget::HubSpot => None,
        };
        if let Some(sandbox) = &sandbox {
            options
                .parameters
                .entry("HubSpotAccessToken".into())
                .or_insert_with(|| sandbox.token());
        } else if let Some(token) = options.env_overrides.get("HUBSPOT_ACCESS_TOKEN") {
            options
                .parameters
                .entry("HubSpotAccessToken".into())
                .or_insert_with(|| token.clone());
        }

        let admin = load_sdk_config(&AwsTarget::local(&options.aws_endpoint), CallBudget::BACKGROUND).await;
        let resources = provision::provision(
            &admin,
            &template,
            &options.stack_name,
            &options.parameters,
            &options.generated_secrets,
        )
        .await
        .context("creating the template's resources in moto")?;

        let handler_endpoint = options
            .handler_aws_endpoint
            .as_ref()
            .unwrap_or(&options.aws_endpoint);
        let mut webhook_env = template.function_environment("WebhookFunction", &resources.resolver)?;
        webhook_env.extend(options.env_overrides.clone());
        let lookup = webhook_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).webhook()?;
        let aws = load_sdk_config(&AwsTarget::local(handler_endpoint), CallBudget::WEBHOOK).await;
        let webhook = Arc::new(WebhookApi::build(&aws, config).await?);

        let mut sync_env = template.function_environment("SyncFunction", &resources.resolver)?;
        if let Some(sandbox) = &sandbox {
            sync_env.insert("HUBSPOT_API_BASE".into(), sandbox.url());
        }
        // Locally nobody reads CloudWatch metrics; they would only fill the console.
        sync_env.remove("METRICS_NAMESPACE");
        sync_env.extend(options.env_overrides.clone());
        let lookup = sync_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).sync()?;
        let aws = load_sdk_config(&AwsTarget::local(handler_endpoint), CallBudget::BACKGROUND).await;
        let sync = Arc::new(SyncHandler::build(&aws, config).await?);

        // A background function's environment: the template's, pointed at the sandbox, with the
        // caller's overrides on top.
        let background_env = |function: &str| -> anyhow::Result<HashMap<String, String>> {
            let mut env = template.function_environment(function, &resources.resolver)?;
            if let Some(sandbox) = &sandbox {
                env.insert("HUBSPOT_API_BASE".into(), sandbox.url());
            }
            env.extend(options.env_overrides.clone());
            Ok(env)
        };
        let reconcile_env = background_env("ReconcileFunction")?;
        let lookup = reconcile_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).reconcile()?;
        let reconcile = Arc::new(ReconcileHandler::build(&aws, config).await?);

        let adoption_env = background_env("AdoptionFunction")?;
        let lookup = adoption_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).adopt()?;
        let adoption = Arc::new(AdoptionHandler::build(&aws, config).await?);

        let mut dashboard_env = template.function_environment("DashboardFunction", &resources.resolver)?;
        // No Cognito locally: operators sign in with the password, unless the caller names an
        // identity provider of its own.
        dashboard_env.retain(|name, _| !name.starts_with("DASHBOARD_OIDC_"));
        if !options.env_overrides.contains_key("DASHBOARD_OIDC_ISSUER") {
            dashboard_env.insert("DASHBOARD_PASSWORD".into(), options.dashboard_password.clone());
        }
        dashboard_env.extend(options.env_overrides.clone());
        let lookup = dashboard_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).dashboard()?;
        let aws = load_sdk_config(&AwsTarget::local(handler_endpoint), CallBudget::WEBHOOK).await;
        let dashboard = Arc::new(DashboardApi::build(&aws, config).await?);

        let mut event_sources = Vec::new();
        let invocations = Arc::new(Invocations::default());
        let crashes = Arc::new(esm::CrashSwitch::default());
        let timeout =
            Duration::from_secs(template.function_timeout_secs("SyncFunction", &resources.resolver)?);
        let sqs = aws_sdk_sqs::Client::new(&admin);
        // The queue an event source of `function` reads, as the template declares it.
        let queue_of = |function: &str, spec: &template::SqsEventSpec| {
            resources
                .queues
                .values()
                .find(|queue| queue.arn == spec.queue_arn)
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "{function} reads {}, which the template does not declare",
                        spec.queue_arn
                    )
                })
        };
        for spec in template.sqs_event_sources("SyncFunction", &resources.resolver)? {
            let queue = queue_of("SyncFunction", &spec)?;
            let handler = sync.clone();
            let stats = invocations.clone();
            let call: esm::SqsHandler = Arc::new(move |event| {
                let handler = handler.clone();
                let stats = stats.clone();
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    let response = handler.handle(event).await;
                    stats.record(started.elapsed());
                    response
                })
            });
            let source = esm::EventSource {
                queue_url: queue.url.clone(),
                spec,
                function_timeout: timeout,
                crashes: crashes.clone(),
            };
            event_sources.push((sqs.clone(), source, call));
        }
        // The adoption function's slices: not counted with the sync function's invocations,
        // and not crashed by the chaos switch (a slice that dies is offered again all the same).
        let adoption_timeout =
            Duration::from_secs(template.function_timeout_secs("AdoptionFunction", &resources.resolver)?);
        for spec in template.sqs_event_sources("AdoptionFunction", &resources.resolver)? {
            let queue = queue_of("AdoptionFunction", &spec)?;
            let handler = adoption.clone();
            let call: esm::SqsHandler = Arc::new(move |event| {
                let handler = handler.clone();
                Box::pin(async move { handler.handle(event).await })
            });
            let source = esm::EventSource {
                queue_url: queue.url.clone(),
                spec,
                function_timeout: adoption_timeout,
                crashes: Arc::new(esm::CrashSwitch::default()),
            };
            event_sources.push((sqs.clone(), source, call));
        }
        let mut tasks = Vec::new();

        // The routes of the template's HttpApi: /admin to the dashboard, the rest to webhooks.
        let webhooks: server::Handler = Arc::new(move |request| {
            let webhook = webhook.clone();
            Box::pin(async move {
                match webhook.handle(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
        });
        let admin: server::Handler = Arc::new(move |request| {
            let dashboard = dashboard.clone();
            Box::pin(async move {
                match dashboard.handle(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
        });
        let http = routes(admin, webhooks);
        let listener = TcpListener::bind(options.http_addr)
            .await
            .with_context(|| format!("listening on {}", options.http_addr))?;
        let http_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(server::serve(listener, http)));
        if let Some(sandbox) = sandbox.as_ref().filter(|_| options.sandbox_webhooks) {
            // The sandbox posts its webhooks to this stack, signed with the stack's client secret.
            sandbox.set_webhooks(hubspot_sandbox::WebhookSettings {
                target_url: Some(format!("http://{http_addr}/webhooks/hubspot")),
                client_secret: options
                    .parameters
                    .get("HubSpotClientSecret")
                    .cloned()
                    .unwrap_or_default(),
                ..sandbox.webhooks()
            });
        }
        let mut stack = LocalStack {
            http_addr,
            resources,
            webhook_env,
            sync_env,
            reconcile_env,
            adoption_env,
            dashboard_env,
            sandbox,
            sync,
            reconcile,
            invocations,
            crashes,
            event_sources,
            tasks,
        };
        if options.run_event_sources {
            stack.start_event_sources();
        }
        Ok(stack)
    }

    /// Starts feeding the functions from their queues (once; later calls do nothing).
    pub fn start_event_sources(&mut self) {
        for (sqs, source, handler) in self.event_sources.drain(..) {
            self.tasks.extend(esm::start(sqs, source, handler));
        }
    }

    /// The base URL of the local HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

/// The local API's routes, as the template's HttpApi has them: `/admin` and below to the
/// dashboard, everything else to the webhook function.
fn routes(dashboard: server::Handler, webhooks: server::Handler) -> axum::Router {
    let dashboard = server::gateway(dashboard);
    axum::Router::new()
        .route("/admin", axum::routing::any(dashboard.clone()))
        .route("/admin/", axum::routing::any(dashboard.clone()))
        .route("/admin/{*rest}", axum::routing::any(dashboard))
        .fallback(server::gateway(webhooks))
        .layer(axum::middleware::from_fn(refuse_ambiguous_paths))
}

/// Routes match the raw path while a URL parser normalizes it (`/webhooks/../admin` is `/admin`
/// to the handler that reads it), so a path that reads differently normalized and raw is refused
/// before either handler sees it: 404, as each handler answers such a path deployed (neither has
/// a route for it), with the reason.
async fn refuse_ambiguous_paths(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if crm_sync::entrypoints::is_ambiguous_path(request.uri().path()) {
        return server::plain(
            404,
            "no route has a `.` or `..` segment, a backslash or an encoded slash in its path",
        );
    }
    next.run(request).await
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// Which function the local API hands `target` to: its answer names it.
    async fn routed(target: &str) -> (u16, String) {
        let named = |name: &'static str| -> server::Handler {
            Arc::new(move |_| Box::pin(async move { axum::response::Response::new(name.into()) }))
        };
        let mut request = axum::extract::Request::new(axum::body::Body::empty());
        *request.uri_mut() = target.parse().unwrap();
        let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let response = routes(named("dashboard"), named("webhooks"))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_dashboard_gets_admin_paths_and_the_webhook_function_the_rest() {
        for (target, function) in [
            ("/admin", "dashboard"),
            ("/admin/", "dashboard"),
            ("/admin/queues?lane=inbound", "dashboard"),
            ("/webhooks/hubspot", "webhooks"),
            ("/adminx", "webhooks"),
        ] {
            assert_eq!(routed(target).await, (200, function.to_string()), "{target}");
        }
    }

    #[tokio::test]
    async fn a_path_that_normalizes_into_another_route_reaches_neither_handler() {
        for target in [
            "/webhooks/../admin",
            "/webhooks/%2e%2e/admin",
            "/webhooks/%2E%2E/admin",
            "/admin/../webhooks/hubspot",
            "/admin/./queues",
            "/webhooks/hubspot%5c..%5cadmin",
        ] {
            let (status, body) = routed(target).await;
            assert_eq!(status, 404, "{target}");
            assert!(
                body.contains("no route has a `.` or `..` segment"),
                "{target}: {body}"
            );
        }
    }
}
