//! Test harness: one moto per test binary, and for each test its own local stack (resource names
//! prefixed uniquely, HTTP on a free port), driven over real HTTP.

pub mod app_changes;
pub mod browser;
pub mod chaos;
pub mod contract;
pub mod crms;
pub mod dashboard;
pub mod fault_proxy;
pub mod hubspot;
pub mod identity_chaos;
pub mod oidc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::adapters::dynamodb::DynamoDbSyncState;
use crm_sync_local::moto::{free_port, Moto};
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};

pub use fault_proxy::FaultProxy;

/// The HubSpot client secret every test stack is deployed with.
pub const HUBSPOT_SECRET: &str = "test-hubspot-client-secret";
/// The dashboard password every test stack gets.
pub const DASHBOARD_PASSWORD: &str = "test-dashboard-password";

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
    /// Feed the sync function from its queue, as the event source mapping does.
    pub event_sources: bool,
    /// Template parameters on top of the test defaults.
    pub parameters: HashMap<String, String>,
    /// Let the sandbox post webhooks for every CRM change, as HubSpot does.
    pub webhooks: bool,
}

impl AppOptions {
    /// A stack whose sync function runs from its queue, with retries quick enough for tests.
    pub fn syncing() -> Self {
        AppOptions {
            event_sources: true,
            env: HashMap::from([
                ("SYNC_RETRY_BASE_SECONDS".to_string(), "1".to_string()),
                ("SYNC_BUSY_RETRY_SECONDS".to_string(), "1".to_string()),
            ]),
            parameters: HashMap::from([("SyncBatchWindowSeconds".to_string(), "1".to_string())]),
            ..AppOptions::default()
        }
    }

    /// With the sandbox's webhooks on: the whole loop, CRM changes coming back to crm-sync.
    pub fn with_webhooks(mut self) -> Self {
        self.webhooks = true;
        self
    }

    /// For a CRM that fails on purpose: a 1-second call timeout, and up to 12 attempts at most
    /// 2 s apart, so that a test ends with everything applied rather than dead-lettered.
    pub fn with_patient_retries(self) -> Self {
        self.with_env("SYNC_CRM_TIMEOUT_SECONDS", "1")
            .with_env("SYNC_MAX_ATTEMPTS", "12")
            .with_env("SYNC_RETRY_CAP_SECONDS", "2")
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_string(), value.to_string());
        self
    }
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
        crm: CrmTarget::Sandbox {
            addr: "127.0.0.1:0".to_string(),
        },
        run_event_sources: options.event_sources,
        sandbox_webhooks: options.webhooks,
        parameters: {
            let mut parameters =
                HashMap::from([("HubSpotClientSecret".to_string(), HUBSPOT_SECRET.to_string())]);
            parameters.extend(options.parameters);
            parameters
        },
        env_overrides: options.env,
        generated_secrets: HashMap::new(),
        dashboard_password: DASHBOARD_PASSWORD.to_string(),
    })
    .await
    .expect("the local stack starts");
    if let Some(sandbox) = stack.sandbox.as_ref().filter(|_| options.webhooks) {
        // Failed deliveries are retried as HubSpot does, only sooner: tests wait for them.
        sandbox.set_webhooks(hubspot_sandbox::WebhookSettings {
            retry_base_ms: 200,
            ..sandbox.webhooks()
        });
    }
    let aws = load_sdk_config(&AwsTarget::local(&endpoint), CallBudget::BACKGROUND).await;
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

    /// Drains the app inbox: every message body on it, each read once.
    pub async fn drain_app_inbox(&self) -> Vec<serde_json::Value> {
        drain(&self.sqs, &self.stack.resources.queue("AppInboxQueue").url).await
    }

    /// Waits until the CRM has no webhook left to deliver (`pending`), some event has an
    /// outcome, and nothing is left on the inbound queue, visible, in flight or delayed for a
    /// retry: every delivered event is processed.
    pub async fn webhooks_settled(&self, pending: impl Fn() -> u64) {
        eventually(60, "every webhook event delivered and processed", || async {
            if pending() > 0 || self.webhook_events().await.is_empty() {
                return None;
            }
            let drained = self.queue_counts("InboundQueue").await? == (0, 0, 0);
            // A batch that wrote to the CRM (a re-assertion) may have made a webhook meanwhile.
            (drained && pending() == 0).then_some(())
        })
        .await;
    }

    /// Stored webhook events, each written once with its outcome: (event key, status, outcome
    /// detail, the event as sent).
    pub async fn webhook_events(&self) -> Vec<(String, String, String, serde_json::Value)> {
        self.stored("event")
            .await
            .into_iter()
            .map(|item| {
                (
                    attr(&item, "event_key").to_string(),
                    attr(&item, "status").to_string(),
                    attr(&item, "outcome_detail").to_string(),
                    serde_json::from_str(attr(&item, "payload")).unwrap_or_default(),
                )
            })
            .collect()
    }

    pub fn sandbox(&self) -> &hubspot_sandbox::Sandbox {
        self.stack
            .sandbox
            .as_ref()
            .expect("test stacks run the HubSpot sandbox")
    }

    pub fn sync_state(&self) -> DynamoDbSyncState {
        DynamoDbSyncState::new(
            self.dynamodb.clone(),
            self.stack.resources.table("SyncStateTable"),
            30 * 24 * 3600 * 1000,
        )
    }

    /// Waits until the record has `status` and the timeline entry that says why (written just
    /// after the state); returns the state and the newest timeline entries.
    pub async fn settled(
        &self,
        record: crm_sync::domain::contract::RecordRef,
        status: crm_sync::domain::sync::SyncStatus,
    ) -> (
        crm_sync::domain::sync::RecordState,
        Vec<crm_sync::domain::sync::TimelineEntry>,
    ) {
        use crm_sync::ports::state::*;
        let store = self.sync_state();
        eventually(30, &format!("{record} to be {}", status.as_str()), || {
            let store = store.clone();
            let record = record.clone();
            async move {
                store
                    .record(&record, 50)
                    .await
                    .ok()
                    .flatten()
                    .filter(|(state, timeline)| {
                        state.status == status
                            && timeline
                                .first()
                                .is_some_and(|entry| entry.at_ms >= state.last_attempt_at_ms.unwrap_or(0))
                    })
            }
        })
        .await
    }

    /// Runs the reconciliation as one long invocation would.
    pub async fn reconcile(&self) -> crm_sync::reconcile::RunReport {
        self.stack
            .reconcile
            .run_until(tokio::time::Instant::now() + std::time::Duration::from_secs(120))
            .await
            .expect("the reconciliation runs")
    }

    /// Runs the reconcile function's merge scan, as its 15-minute schedule would.
    pub async fn scan_merges(&self) -> crm_sync::reconcile::MergeScan {
        self.stack
            .reconcile
            .scan_merges_until(tokio::time::Instant::now() + std::time::Duration::from_secs(60))
            .await
            .expect("the merge scan runs")
    }

    /// Waits until one of the record's newest timeline entries starts with `prefix`; returns the
    /// state and those entries. An attempt writes its line while it still holds the record, just
    /// before its outcome settles: to read the settled state, wait for it with [`Self::settled`].
    pub async fn timeline_says(
        &self,
        record: crm_sync::domain::contract::RecordRef,
        prefix: &str,
    ) -> (
        crm_sync::domain::sync::RecordState,
        Vec<crm_sync::domain::sync::TimelineEntry>,
    ) {
        use crm_sync::ports::state::*;
        let store = self.sync_state();
        eventually(30, &format!("{record}'s timeline to say `{prefix}`"), || {
            let (store, record) = (store.clone(), record.clone());
            async move {
                let (state, timeline) = store.record(&record, 10).await.ok().flatten()?;
                timeline
                    .iter()
                    .any(|entry| entry.detail.starts_with(prefix))
                    .then_some((state, timeline))
            }
        })
        .await
    }

    /// Waits until the change made at `version_ms` is the one the CRM holds and the record is
    /// synced.
    pub async fn applied(&self, record: crm_sync::domain::contract::RecordRef, version_ms: i64) {
        use crm_sync::ports::state::*;
        let store = self.sync_state();
        eventually(120, &format!("{record} synced at version {version_ms}"), || {
            let (store, record) = (store.clone(), record.clone());
            async move {
                let (state, _) = store.record(&record, 1).await.ok().flatten()?;
                (state.status == crm_sync::domain::sync::SyncStatus::Synced
                    && state.applied_version_ms == Some(version_ms))
                .then_some(())
            }
        })
        .await
    }

    /// Sends a company (the built-in mappings' `[company]`) changed now and waits until it is
    /// synced; returns its record.
    pub async fn synced_company(
        &self,
        record_id: &str,
        data: serde_json::Value,
    ) -> crm_sync::domain::contract::RecordRef {
        let company = crm_sync::domain::contract::RecordRef {
            object: crm_sync::domain::contract::ObjectKind::declare("company").expect("a valid name"),
            record_id: record_id.to_string(),
        };
        self.send_changes(&[crate::app_changes::object_upsert(
            "company",
            record_id,
            crate::hubspot::now_ms(),
            data,
        )])
        .await;
        self.settled(company.clone(), crm_sync::domain::sync::SyncStatus::Synced)
            .await;
        company
    }

    /// Waits until the record's conflict journal holds something; returns its newest entries.
    pub async fn journaled_conflicts(
        &self,
        record: crm_sync::domain::contract::RecordRef,
    ) -> Vec<crm_sync::domain::inbound::ConflictEntry> {
        use crm_sync::ports::state::*;
        let store = self.sync_state();
        eventually(60, "the conflict journaled", || {
            let (store, record) = (store.clone(), record.clone());
            async move {
                let conflicts = store.conflicts(&record, 10).await.ok()?;
                (!conflicts.is_empty()).then_some(conflicts)
            }
        })
        .await
    }

    /// Sends a contact and a deal on it, both changed now, and waits until both are synced;
    /// returns their CRM ids.
    pub async fn synced_contact_and_deal(
        &self,
        contact_id: &str,
        deal_id: &str,
        contact: serde_json::Value,
    ) -> (String, String) {
        use crm_sync::domain::contract::{ObjectKind, RecordRef};
        use crm_sync::domain::sync::SyncStatus;
        let at = hubspot::now_ms();
        self.send_changes(&[
            app_changes::contact(contact_id, at, contact),
            app_changes::deal(
                deal_id,
                contact_id,
                at,
                serde_json::json!({"name": "Pro plan", "amount": 100}),
            ),
        ])
        .await;
        let mut ids = Vec::new();
        for (object, record_id) in [(ObjectKind::Contact, contact_id), (ObjectKind::Deal, deal_id)] {
            let record = RecordRef {
                object,
                record_id: record_id.to_string(),
            };
            let (state, _) = self.settled(record, SyncStatus::Synced).await;
            ids.push(state.crm_id.expect("a synced record has a CRM id"));
        }
        let deal = ids.pop().expect("two ids");
        (ids.pop().expect("two ids"), deal)
    }

    /// Waits until nothing on `queue` (its logical id in the template) is visible or in flight:
    /// every message on it has been handled, or is delayed for later. Returns how many are
    /// delayed.
    pub async fn queue_settled(&self, queue: &str) -> u64 {
        eventually(60, &format!("{queue} to settle"), || async {
            let (visible, in_flight, delayed) = self.queue_counts(queue).await?;
            (visible == 0 && in_flight == 0).then_some(delayed)
        })
        .await
    }

    /// How many messages on `queue` are visible, in flight and delayed (SQS's approximations).
    pub async fn queue_counts(&self, queue: &str) -> Option<(u64, u64, u64)> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let url = &self.stack.resources.queue(queue).url;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .ok()?;
        let count = |name: QueueAttributeName| -> u64 {
            attributes
                .attributes()
                .and_then(|all| all.get(&name))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        Some((
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// Sends app changes to the outbound queue, ten per call.
    pub async fn send_changes(&self, changes: &[serde_json::Value]) {
        let url = &self.stack.resources.queue("OutboundQueue").url;
        for chunk in changes.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, change)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(change.to_string())
                        .build()
                        .unwrap()
                })
                .collect();
            let output = self
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send works");
            assert!(output.failed().is_empty(), "every change is queued");
        }
    }

    /// Reads and deletes every message of a dead-letter queue: body and string attributes.
    pub async fn drain_dead_letters(&self, queue: &str) -> Vec<(serde_json::Value, HashMap<String, String>)> {
        let url = &self.stack.resources.queue(queue).url;
        let mut letters = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .visibility_timeout(600)
                .send()
                .await
                .expect("receive works");
            if received.messages().is_empty() {
                return letters;
            }
            for message in received.messages() {
                let attributes = message
                    .message_attributes()
                    .map(|attributes| {
                        attributes
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                let body = serde_json::from_str(message.body().unwrap_or_default()).unwrap_or_default();
                letters.push((body, attributes));
                self.sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete works");
            }
        }
    }

    /// Moves every message of `from` to `to` with its attributes, as
    /// `aws sqs start-message-move-task` does (moto lacks it).
    pub async fn redrive(&self, from: &str, to: &str) -> usize {
        let from_url = self.stack.resources.queue(from).url.clone();
        let to_url = self.stack.resources.queue(to).url.clone();
        let mut moved = 0;
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&from_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive works");
            if received.messages().is_empty() {
                return moved;
            }
            for message in received.messages() {
                self.sqs
                    .send_message()
                    .queue_url(&to_url)
                    .message_body(message.body().unwrap_or_default())
                    .set_message_attributes(message.message_attributes().cloned())
                    .send()
                    .await
                    .expect("send works");
                self.sqs
                    .delete_message()
                    .queue_url(&from_url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete works");
                moved += 1;
            }
        }
    }
}

/// Polls `check` every 200 ms until it gives a value, or panics after `seconds` naming `what`.
pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
