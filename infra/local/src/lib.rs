//! The local stack: moto standing in for AWS, the resources `template.yaml` declares created in
//! it, and the Lambda handlers served over HTTP exactly as API Gateway would call them.
//! `cargo run -p crm-sync-local` runs it; the integration tests start it the same way.

pub mod apigw;
pub mod moto;
pub mod provision;
pub mod server;
pub mod template;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::webhook_http::WebhookApi;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use provision::{LocalQueue, Provisioned};

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
    /// Template parameter values (e.g. `HubSpotClientSecret`).
    pub parameters: HashMap<String, String>,
    /// Environment variables set on top of what the template gives the functions.
    pub env_overrides: HashMap<String, String>,
}

/// A running local stack; dropping it stops the HTTP server (moto is owned separately).
pub struct LocalStack {
    pub http_addr: SocketAddr,
    pub resources: Provisioned,
    /// The webhook function's environment, as the template defines it, resolved locally.
    pub webhook_env: HashMap<String, String>,
    server: JoinHandle<()>,
}

impl LocalStack {
    /// Creates the template's resources, builds the handlers from the template's environment and
    /// serves them.
    pub async fn start(options: StackOptions) -> anyhow::Result<LocalStack> {
        let template = template::Template::load(&moto::repo_root().join("template.yaml"))?;
        let admin = load_sdk_config(&AwsTarget::local(&options.aws_endpoint), CallBudget::WEBHOOK).await;
        let resources = provision::provision(&admin, &template, &options.stack_name, &options.parameters)
            .await
            .context("creating the template's resources in moto")?;

        let mut webhook_env = template.function_environment("WebhookFunction", &resources.resolver)?;
        webhook_env.extend(options.env_overrides.clone());
        let lookup = webhook_env.clone();
        let config = Env(move |name: &str| lookup.get(name).cloned()).webhook()?;
        let handler_endpoint = options
            .handler_aws_endpoint
            .as_ref()
            .unwrap_or(&options.aws_endpoint);
        let aws = load_sdk_config(&AwsTarget::local(handler_endpoint), CallBudget::WEBHOOK).await;
        let webhook = Arc::new(WebhookApi::build(&aws, config).await?);

        let handler: server::Handler = Arc::new(move |request| {
            let webhook = webhook.clone();
            Box::pin(async move {
                match webhook.handle(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
        });
        let listener = TcpListener::bind(options.http_addr)
            .await
            .with_context(|| format!("listening on {}", options.http_addr))?;
        let http_addr = listener.local_addr()?;
        let server = tokio::spawn(server::serve(listener, handler));
        Ok(LocalStack {
            http_addr,
            resources,
            webhook_env,
            server,
        })
    }

    /// The base URL of the local HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.server.abort();
    }
}
