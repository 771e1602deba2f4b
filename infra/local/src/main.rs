//! `cargo run -p crm-sync-local`: installs moto if needed, starts it, creates the stack's tables,
//! queues and secrets, and serves the webhook handler and the dashboard (/admin) at
//! http://127.0.0.1:3000 until Ctrl-C.
//!
//! Environment: `CRM_SYNC_HOST` (127.0.0.1), `CRM_SYNC_HTTP_PORT` (3000), `CRM_SYNC_MOTO_PORT`
//! (4566), `CRM_SYNC_AWS_ENDPOINT` (use a moto already running there instead of starting one),
//! `CRM_SYNC_STACK_NAME` (crm-sync-local), `HUBSPOT_CLIENT_SECRET` (local-hubspot-secret),
//! `CRM_SYNC_DASHBOARD_PASSWORD` (local-admin), `CRM` (hubspot; `pipedrive` or `salesforce`
//! runs that CRM's sandbox in HubSpot's place, with its webhooks or Outbound Messages coming
//! back to the local webhook API).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use crm_sync_local::moto::Moto;
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws_config=warn".into()),
        )
        .with_target(false)
        .init();

    let host = setting("CRM_SYNC_HOST", "127.0.0.1");
    let http_port: u16 = setting("CRM_SYNC_HTTP_PORT", "3000")
        .parse()
        .context("CRM_SYNC_HTTP_PORT")?;
    let moto_port: u16 = setting("CRM_SYNC_MOTO_PORT", "4566")
        .parse()
        .context("CRM_SYNC_MOTO_PORT")?;
    let stack_name = setting("CRM_SYNC_STACK_NAME", "crm-sync-local");
    let sandbox_port = setting("CRM_SYNC_SANDBOX_PORT", "3001");
    // A real HubSpot token in the environment means real HubSpot; otherwise the sandbox.
    let real_token = std::env::var("HUBSPOT_ACCESS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let mut env_overrides = HashMap::new();
    let chosen = setting("CRM", "hubspot").to_ascii_lowercase();
    let other = OtherCrm::start(&chosen, &format!("{host}:{sandbox_port}")).await?;
    let crm = match &real_token {
        _ if other.is_some() => CrmTarget::HubSpot,
        Some(token) => {
            env_overrides.insert("HUBSPOT_ACCESS_TOKEN".to_string(), token.clone());
            if let Ok(base) = std::env::var("HUBSPOT_API_BASE") {
                env_overrides.insert("HUBSPOT_API_BASE".to_string(), base);
            }
            CrmTarget::HubSpot
        }
        None => CrmTarget::Sandbox {
            addr: format!("{host}:{sandbox_port}"),
        },
    };
    let secret = setting("HUBSPOT_CLIENT_SECRET", "local-hubspot-secret");
    let dashboard_password = setting("CRM_SYNC_DASHBOARD_PASSWORD", "local-admin");

    let (moto, aws_endpoint) = match std::env::var("CRM_SYNC_AWS_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(endpoint) => (None, endpoint),
        None => {
            let moto = Moto::start(&host, moto_port)?;
            let endpoint = moto.endpoint.clone();
            (Some(moto), endpoint)
        }
    };
    let http_addr: SocketAddr = format!("{host}:{http_port}").parse().context("CRM_SYNC_HOST")?;
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: aws_endpoint.clone(),
        handler_aws_endpoint: None,
        stack_name,
        http_addr,
        crm,
        parameters: {
            let mut parameters = HashMap::from([("HubSpotClientSecret".to_string(), secret.clone())]);
            if let Some(other) = &other {
                parameters.extend(other.parameters());
                env_overrides.extend(other.env());
            }
            parameters
        },
        env_overrides,
        run_event_sources: true,
        sandbox_webhooks: true,
        generated_secrets: HashMap::new(),
        dashboard_password: dashboard_password.clone(),
    })
    .await?;

    match &other {
        Some(other) => {
            other.send_changes_to(&stack.url());
            other.print_summary(&stack, &aws_endpoint, &dashboard_password);
        }
        None => print_summary(
            &stack,
            &aws_endpoint,
            moto.is_some(),
            &secret,
            &dashboard_password,
        ),
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!(
        "\nstopping: HTTP server{}",
        if moto.is_some() { " and moto" } else { "" }
    );
    drop(stack);
    drop(other);
    drop(moto);
    Ok(())
}

const SANDBOX_TOKEN: &str = "sandbox-token";
const PIPEDRIVE_HOOK_USER: &str = "crm-sync-local";
const PIPEDRIVE_HOOK_PASSWORD: &str = "local-pipedrive-password";
const SALESFORCE_HOOK_TOKEN: &str = "local-salesforce-token";

/// The Pipedrive or Salesforce sandbox the stack writes to when `CRM` names one.
enum OtherCrm {
    Pipedrive(pipedrive_sandbox::Sandbox),
    Salesforce(salesforce_sandbox::Sandbox),
}

impl OtherCrm {
    async fn start(crm: &str, addr: &str) -> anyhow::Result<Option<OtherCrm>> {
        Ok(match crm {
            "hubspot" => None,
            "pipedrive" => Some(OtherCrm::Pipedrive(
                pipedrive_sandbox::Sandbox::start(addr, SANDBOX_TOKEN, pipedrive_sandbox::Limits::default())
                    .await?,
            )),
            "salesforce" => Some(OtherCrm::Salesforce(
                salesforce_sandbox::Sandbox::start(addr, SANDBOX_TOKEN, "sandbox-refresh", 100_000).await?,
            )),
            other => anyhow::bail!("CRM: `{other}` is not hubspot, pipedrive or salesforce"),
        })
    }

    /// What the functions read to write to this sandbox.
    fn env(&self) -> Vec<(String, String)> {
        let pairs = match self {
            OtherCrm::Pipedrive(sandbox) => vec![
                ("CRM", "pipedrive".to_string()),
                ("PIPEDRIVE_API_BASE", sandbox.url()),
                ("PIPEDRIVE_API_TOKEN", SANDBOX_TOKEN.to_string()),
            ],
            OtherCrm::Salesforce(sandbox) => vec![
                ("CRM", "salesforce".to_string()),
                ("SALESFORCE_INSTANCE_URL", sandbox.instance_url()),
                ("SALESFORCE_ACCESS_TOKEN", SANDBOX_TOKEN.to_string()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The template parameters that open its webhook route.
    fn parameters(&self) -> Vec<(String, String)> {
        let pairs = match self {
            OtherCrm::Pipedrive(_) => vec![
                ("PipedriveWebhookUser", PIPEDRIVE_HOOK_USER),
                ("PipedriveWebhookPassword", PIPEDRIVE_HOOK_PASSWORD),
            ],
            OtherCrm::Salesforce(_) => vec![
                ("SalesforceOrganizationId", salesforce_sandbox::ORGANIZATION_ID),
                ("SalesforceWebhookToken", SALESFORCE_HOOK_TOKEN),
                (
                    "SalesforceIntegrationUserId",
                    salesforce_sandbox::INTEGRATION_USER_ID,
                ),
            ],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Points the sandbox's webhooks (or Outbound Messages) at the local webhook API.
    fn send_changes_to(&self, base: &str) {
        match self {
            OtherCrm::Pipedrive(sandbox) => sandbox.set_webhook(pipedrive_sandbox::Webhook {
                url: format!("{base}/webhooks/pipedrive"),
                user: PIPEDRIVE_HOOK_USER.into(),
                password: PIPEDRIVE_HOOK_PASSWORD.into(),
            }),
            OtherCrm::Salesforce(sandbox) => {
                let selected = |fields: &[&str]| fields.iter().map(|f| f.to_string()).collect::<Vec<_>>();
                sandbox.set_outbound_messages(salesforce_sandbox::OutboundMessages {
                    url: format!("{base}/webhooks/salesforce?token={SALESFORCE_HOOK_TOKEN}"),
                    fields: [
                        (
                            "Contact".to_string(),
                            selected(&["Email", "Phone", "FirstName", "LastName", "Crm_Sync_App_Id__c"]),
                        ),
                        (
                            "Opportunity".to_string(),
                            selected(&["Name", "Amount", "CloseDate", "StageName", "Crm_Sync_App_Id__c"]),
                        ),
                    ]
                    .into(),
                })
            }
        }
    }

    fn print_summary(&self, stack: &LocalStack, aws_endpoint: &str, password: &str) {
        let (name, url, look) = match self {
            OtherCrm::Pipedrive(sandbox) => (
                "Pipedrive",
                sandbox.url(),
                format!("curl -s -H 'x-api-token: {SANDBOX_TOKEN}' {}/persons/1; echo", sandbox.url()),
            ),
            OtherCrm::Salesforce(sandbox) => (
                "Salesforce",
                sandbox.instance_url(),
                format!(
                    "curl -s -H 'Authorization: Bearer {SANDBOX_TOKEN}' '{}{}/composite/sobjects/Contact?ids=003000000000001AAA'; echo",
                    sandbox.instance_url(),
                    salesforce_sandbox::API_PATH
                ),
            ),
        };
        let outbound = stack.resources.queue("OutboundQueue");
        println!();
        println!(
            "crm-sync is running locally with CRM={}",
            name.to_ascii_lowercase()
        );
        println!(
            "  {name:<13} sandbox {url} (token {SANDBOX_TOKEN:?}); its changes come back to the webhook API"
        );
        println!(
            "  webhooks      POST {}/webhooks/{}",
            stack.url(),
            name.to_ascii_lowercase()
        );
        println!("  dashboard     {}/admin  (password {password:?})", stack.url());
        println!("  AWS (moto)    {aws_endpoint}");
        println!();
        println!("Sync a contact to {name}:");
        println!(
            "  aws --endpoint-url {aws_endpoint} --region us-east-1 sqs send-message --queue-url {} \\",
            outbound.url
        );
        println!(
            "    --message-body '{{\"version\":1,\"type\":\"contact.upsert\",\"record_id\":\"user-42\",\"idempotency_id\":\"'$(date +%s%N)'\",\"changed_at\":\"'$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)'\",\"data\":{{\"email\":\"ada@example.com\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\"}}}}'"
        );
        println!("  {look}");
        println!();
        println!("Ctrl-C stops everything started here.");
    }
}

fn print_summary(stack: &LocalStack, aws_endpoint: &str, started_moto: bool, secret: &str, password: &str) {
    let resources = &stack.resources;
    let webhook_url = format!("{}/webhooks/hubspot", stack.url());
    println!();
    println!("crm-sync is running locally");
    println!("  webhooks      POST {webhook_url}");
    println!(
        "  dashboard     {}/admin  (password {password:?}; set CRM_SYNC_DASHBOARD_PASSWORD to change it)",
        stack.url()
    );
    println!(
        "  AWS (moto)    {aws_endpoint}{}",
        if started_moto { "" } else { " (already running)" }
    );
    let mut tables: Vec<_> = resources.tables.iter().collect();
    tables.sort();
    for (logical, name) in tables {
        println!("  table         {name}  ({logical})");
    }
    let mut queues: Vec<_> = resources.queues.iter().collect();
    queues.sort_by_key(|(logical, _)| logical.as_str());
    for (logical, queue) in queues {
        println!("  queue         {}  ({logical})", queue.url);
    }
    match &stack.sandbox {
        Some(sandbox) => println!(
            "  HubSpot       sandbox {} (token {:?}; records at {}/_sandbox/objects/contacts)",
            sandbox.url(),
            sandbox.token(),
            sandbox.url()
        ),
        None => println!(
            "  HubSpot       {} (HUBSPOT_ACCESS_TOKEN is set)",
            stack
                .sync_env
                .get("HUBSPOT_API_BASE")
                .map(String::as_str)
                .unwrap_or("https://api.hubapi.com")
        ),
    }
    println!("  HubSpot secret {secret:?} (set HUBSPOT_CLIENT_SECRET to change it)");
    println!();
    println!("Send a v3-signed test delivery (bash, openssl, curl):");
    println!();
    println!("  SECRET='{secret}' URL='{webhook_url}'");
    println!(
        "  BODY='[{{\"eventId\":100,\"subscriptionId\":1,\"portalId\":62515,\"appId\":1,\"occurredAt\":1767225600000,\"subscriptionType\":\"contact.propertyChange\",\"attemptNumber\":0,\"objectId\":123,\"propertyName\":\"email\",\"propertyValue\":\"ada@example.com\",\"changeSource\":\"CRM_UI\"}}]'"
    );
    println!("  TS=$(date +%s%3N)");
    println!(
        "  SIG=$(printf '%s' \"POST$URL$BODY$TS\" | openssl dgst -sha256 -hmac \"$SECRET\" -binary | base64)"
    );
    println!(
        "  curl -sS \"$URL\" -H 'content-type: application/json' -H \"x-hubspot-request-timestamp: $TS\" -H \"x-hubspot-signature-v3: $SIG\" -d \"$BODY\"; echo"
    );
    println!();
    let inbound = resources.queue("InboundQueue");
    println!("Then look (any AWS CLI; credentials can be anything):");
    println!(
        "  aws --endpoint-url {aws_endpoint} --region us-east-1 dynamodb scan --table-name {}",
        resources.table("WebhookTable")
    );
    println!(
        "  aws --endpoint-url {aws_endpoint} --region us-east-1 sqs receive-message --queue-url {} --max-number-of-messages 10",
        inbound.url
    );
    println!();
    let outbound = resources.queue("OutboundQueue");
    println!(
        "Sync a contact to HubSpot (the sync function polls {}):",
        outbound.name
    );
    println!(
        "  aws --endpoint-url {aws_endpoint} --region us-east-1 sqs send-message --queue-url {} \\",
        outbound.url
    );
    println!(
        "    --message-body '{{\"version\":1,\"type\":\"contact.upsert\",\"record_id\":\"user-42\",\"idempotency_id\":\"'$(date +%s%N)'\",\"changed_at\":\"'$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)'\",\"data\":{{\"email\":\"ada@example.com\",\"first_name\":\"Ada\"}}}}'"
    );
    if let Some(sandbox) = &stack.sandbox {
        println!("  curl -s {}/_sandbox/objects/contacts; echo", sandbox.url());
    }
    println!();
    println!("Ctrl-C stops everything started here.");
}
