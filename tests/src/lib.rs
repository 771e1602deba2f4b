//! Test harness: one moto per test binary, and for each test its own local stack (resource names
//! prefixed uniquely, HTTP on a free port), driven over real HTTP.

pub mod fault_proxy;
pub mod hubspot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use aws_sdk_dynamodb::types::AttributeValue;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync_local::moto::{free_port, Moto};
use crm_sync_local::{LocalStack, StackOptions};

pub use fault_proxy::FaultProxy;

/// The HubSpot client secret every test stack is deployed with.
pub const HUBSPOT_SECRET: &str = "test-hubspot-client-secret";

static MOTO: OnceLock<Moto> = OnceLock::new();
static NEXT_STACK: AtomicUsize = AtomicUsize::new(0);

/// The endpoint of this test binary's moto, started on first use; it stops when the binary exits.
pub fn moto_endpoint() -> &'static str {
    &MOTO
        .get_or_init(|| {
            init_test_logging();
            Moto::start("127.0.0.1", free_port().expect("a free port")).expect("moto starts")
        })
        .endpoint
}

/// Logs go nowhere unless `TEST_LOG` is set.
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_default(),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// How a test wants its stack.
#[derive(Default)]
pub struct AppOptions {
    /// Send the handlers' AWS calls through a proxy that can fail them on demand.
    pub fault_proxy: bool,
    /// Extra environment for the functions.
    pub env: HashMap<String, String>,
}

/// One test's stack and the clients to look inside it.
pub struct TestApp {
    pub stack: LocalStack,
    pub http: reqwest::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub faults: Option<FaultProxy>,
}

/// A stack with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let endpoint = moto_endpoint().to_string();
    let faults = if options.fault_proxy {
        Some(FaultProxy::start(&endpoint).await)
    } else {
        None
    };
    let stack_name = format!(
        "t{}-{}",
        std::process::id(),
        NEXT_STACK.fetch_add(1, Ordering::SeqCst)
    );
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: endpoint.clone(),
        handler_aws_endpoint: faults.as_ref().map(FaultProxy::endpoint),
        stack_name,
        http_addr: "127.0.0.1:0".parse().expect("a socket address"),
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), HUBSPOT_SECRET.to_string())]),
        env_overrides: options.env,
    })
    .await
    .expect("the local stack starts");
    let aws = load_sdk_config(&AwsTarget::local(&endpoint), CallBudget::WEBHOOK).await;
    TestApp {
        stack,
        http: reqwest::Client::new(),
        dynamodb: aws_sdk_dynamodb::Client::new(&aws),
        sqs: aws_sdk_sqs::Client::new(&aws),
        faults,
    }
}

impl TestApp {
    pub fn webhook_url(&self, provider: &str) -> String {
        format!("{}/webhooks/{provider}", self.stack.url())
    }

    pub fn table(&self) -> &str {
        self.stack.resources.table("WebhookTable")
    }

    pub fn inbound_queue_url(&self) -> &str {
        &self.stack.resources.queue("InboundQueue").url
    }

    /// Every item in the webhook table.
    pub async fn stored_items(&self) -> Vec<HashMap<String, AttributeValue>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb
                .scan()
                .table_name(self.table())
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan works");
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return items;
            }
        }
    }

    /// Items of one kind (`delivery` or `event`).
    pub async fn stored(&self, kind: &str) -> Vec<HashMap<String, AttributeValue>> {
        self.stored_items()
            .await
            .into_iter()
            .filter(|item| {
                item.get("kind")
                    .and_then(|k| k.as_s().ok())
                    .is_some_and(|k| k == kind)
            })
            .collect()
    }

    /// Drains the inbound queue: every message body on it, each read once.
    pub async fn drain_inbound(&self) -> Vec<serde_json::Value> {
        drain(&self.sqs, self.inbound_queue_url()).await
    }
}

/// Reads every message on a queue, deleting each, until a receive comes back empty.
pub async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<serde_json::Value> {
    let mut bodies = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .send()
            .await
            .expect("receive works");
        let messages = received.messages();
        if messages.is_empty() {
            return bodies;
        }
        for message in messages {
            bodies.push(serde_json::from_str(message.body().unwrap_or_default()).expect("messages are JSON"));
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete works");
        }
    }
}

/// The string value of an item's attribute.
pub fn attr<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .map(String::as_str)
        .unwrap_or_default()
}
