//! The outbound bulk load through the sync handler and its local event source, and the naive
//! one-call-per-record pattern beside it, both against the sandbox's HubSpot Pro burst limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use crm_sync::adapters::hubspot::HubSpotClient;
use crm_sync::domain::crm::{CrmError, UpsertInput};
use crm_sync::ports::Crm;
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use crm_sync_tests::fault_proxy::FaultProxy;
use hubspot_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

/// The benchmark's own AWS calls (filling queues, reading tables) wait as long as moto needs.
pub const TOOLING: crm_sync::adapters::aws::CallBudget = crm_sync::adapters::aws::CallBudget {
    attempt_timeout: Duration::from_secs(120),
    operation_timeout: Duration::from_secs(300),
    max_attempts: 3,
};

/// HubSpot Pro: 190 calls per 10 s, 100 records a call.
pub const CEILING_RECORDS_PER_SEC: f64 = 19.0 * 100.0;

#[derive(Debug, Clone)]
pub struct Bulk {
    pub records: usize,
    pub seconds: f64,
    pub crm_calls: u64,
    pub upsert_calls: u64,
    pub throttled: u64,
    /// AWS requests the handlers made, by operation.
    pub aws_calls: BTreeMap<String, u64>,
    pub invocations: u64,
    /// Summed duration of the sync function's invocations.
    pub busy_seconds: f64,
    /// Average DynamoDB sizes (attribute names and values, as DynamoDB bills them) of the
    /// records' state items and timeline items.
    pub state_item_bytes: f64,
    pub timeline_item_bytes: f64,
    /// Seconds from the first CRM call to the last, as the sandbox saw them.
    pub call_span_seconds: f64,
}

/// An item's size as DynamoDB bills writes: attribute names plus values.
fn item_bytes(item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue;
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            AttributeValue::M(map) => 3 + map.iter().map(|(k, v)| k.len() + value(v) + 1).sum::<usize>(),
            AttributeValue::L(list) => 3 + list.iter().map(|v| value(v) + 1).sum::<usize>(),
            _ => 0,
        }
    }
    item.iter().map(|(name, v)| name.len() + value(v)).sum()
}

/// Average sizes of state and timeline items in the table.
async fn item_sizes(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<(f64, f64)> {
    let (mut state, mut timeline) = ((0usize, 0usize), (0usize, 0usize));
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in page.items() {
            let sk = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .map_or("", String::as_str);
            let bucket = if sk == "~state" {
                &mut state
            } else if sk.starts_with("T#") {
                &mut timeline
            } else {
                continue;
            };
            bucket.0 += item_bytes(item);
            bucket.1 += 1;
        }
        match page.last_evaluated_key() {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    let average = |(bytes, n): (usize, usize)| bytes as f64 / n.max(1) as f64;
    Ok((average(state), average(timeline)))
}

impl Bulk {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn records_per_call(&self) -> f64 {
        self.records as f64 / self.upsert_calls.max(1) as f64
    }

    /// Calls per second between the first CRM call and the last: the pace once running,
    /// without start-up (first batch parsed, secret and connections fetched) or the tail.
    pub fn steady_calls_per_sec(&self) -> f64 {
        self.crm_calls.saturating_sub(1) as f64 / self.call_span_seconds.max(1e-3)
    }
}

fn call_span_seconds(stats: &hubspot_sandbox::Stats) -> f64 {
    match (stats.first_call_ms, stats.last_call_ms) {
        (Some(first), Some(last)) => last.saturating_sub(first) as f64 / 1000.0,
        _ => 0.0,
    }
}

#[derive(Debug, Clone)]
pub struct Naive {
    pub records: usize,
    pub seconds: f64,
    pub throttled: u64,
}

impl Naive {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn change(i: usize, at: i64) -> String {
    json!({
        "version": 1,
        "type": "contact.upsert",
        "record_id": format!("bench-{i}"),
        "idempotency_id": format!("bench-{i}-1"),
        "changed_at": at,
        "data": {"email": format!("bench-{i}@example.com"), "first_name": "Bench", "last_name": format!("{i}")}
    })
    .to_string()
}

/// Fills the stack's outbound queue, then starts its event sources; returns when they started.
pub async fn preload_and_start(
    stack: &mut LocalStack,
    moto: &str,
    records: usize,
) -> anyhow::Result<Instant> {
    let aws =
        crm_sync::adapters::aws::load_sdk_config(&crm_sync::adapters::aws::AwsTarget::local(moto), TOOLING)
            .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    preload(&sqs, &stack.resources.queue("OutboundQueue").url, records).await?;
    let started = Instant::now();
    stack.start_event_sources();
    Ok(started)
}

/// Fills the queue before the clock starts, ten messages a call, 16 calls at a time.
async fn preload(sqs: &aws_sdk_sqs::Client, url: &str, records: usize) -> anyhow::Result<()> {
    let at = crm_sync_tests::hubspot::now_ms();
    let batches: Vec<Vec<usize>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(10)
        .map(<[usize]>::to_vec)
        .collect();
    for wave in batches.chunks(16) {
        let calls = wave.iter().map(|batch| {
            let entries = batch
                .iter()
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(change(*i, at))
                        .build()
                        .expect("id and body")
                })
                .collect();
            sqs.send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
        });
        for result in futures::future::join_all(calls).await {
            anyhow::ensure!(result?.failed().is_empty(), "moto refused a message");
        }
    }
    Ok(())
}

pub async fn bulk(moto: &str, records: usize) -> anyhow::Result<Bulk> {
    let proxy = FaultProxy::start(moto).await;
    let mut stack = LocalStack::start(StackOptions {
        aws_endpoint: moto.to_string(),
        handler_aws_endpoint: Some(proxy.endpoint()),
        stack_name: format!("bench-{}-{records}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::Sandbox {
            addr: "127.0.0.1:0".into(),
        },
        // Batches of 100: a batch of 1,000 takes moto longer than the function's 60 s timeout
        // (a minute of conditional writes), and a timed-out batch would be counted twice.
        parameters: HashMap::from([
            ("HubSpotClientSecret".to_string(), "bench".to_string()),
            ("SyncBatchSize".to_string(), "100".to_string()),
        ]),
        env_overrides: HashMap::new(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await?;
    let started = preload_and_start(&mut stack, moto, records).await?;
    let aws =
        crm_sync::adapters::aws::load_sdk_config(&crm_sync::adapters::aws::AwsTarget::local(moto), TOOLING)
            .await;
    let sandbox = stack.sandbox.as_ref().expect("the sandbox runs");
    let deadline = started + Duration::from_secs(600 + records as u64 / 10);
    loop {
        let stats = sandbox.stats();
        if stats.batch_inputs as usize >= records && sandbox.records("contacts").len() >= records {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the bulk load did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The last batch is still settling its records in DynamoDB: count AWS requests only once
    // they have stopped for five seconds.
    let mut last = proxy.calls();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = proxy.calls();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let stats = sandbox.stats();
    let (invocations, busy) = stack.invocations.totals();
    let (state_item_bytes, timeline_item_bytes) = item_sizes(
        &aws_sdk_dynamodb::Client::new(&aws),
        stack.resources.table("SyncStateTable"),
    )
    .await?;
    Ok(Bulk {
        records,
        seconds,
        crm_calls: stats.total_calls,
        upsert_calls: upsert_calls(&stats),
        throttled: stats.throttled_burst + stats.throttled_daily,
        aws_calls: proxy.calls(),
        invocations,
        busy_seconds: busy.as_secs_f64(),
        state_item_bytes,
        timeline_item_bytes,
        call_span_seconds: call_span_seconds(&stats),
    })
}

/// Batch upsert calls the sandbox served.
fn upsert_calls(stats: &hubspot_sandbox::Stats) -> u64 {
    stats
        .calls
        .iter()
        .filter(|(call, _)| call.contains("batch/upsert"))
        .map(|(_, n)| n)
        .sum()
}

/// One record per call, sequentially, waiting out each 429 as a simple client would.
pub async fn naive(records: usize) -> anyhow::Result<Naive> {
    let sandbox = Sandbox::start("127.0.0.1:0", SandboxConfig::default()).await?;
    let client = HubSpotClient::new(
        &sandbox.url(),
        secrecy::SecretString::from(sandbox.token()),
        Duration::from_secs(20),
    )?;
    let started = Instant::now();
    let mut throttled = 0;
    for i in 0..records {
        let input = UpsertInput::new(
            format!("naive-{i}"),
            BTreeMap::from([("email".to_string(), format!("naive-{i}@example.com"))]),
        );
        loop {
            match client
                .upsert("contacts", "crm_sync_app_id", std::slice::from_ref(&input))
                .await
            {
                Ok(_) => break,
                Err(CrmError::Throttled { retry_after, .. }) => {
                    throttled += 1;
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                }
                Err(error) => anyhow::bail!("naive upsert failed: {error}"),
            }
        }
    }
    Ok(Naive {
        records,
        seconds: started.elapsed().as_secs_f64(),
        throttled,
    })
}

/// The sync handler against the CRM ceiling: invoked as Lambda invokes it, with 1,000-message
/// SQS events, two instances at a time (the outbound event source's maximum concurrency), the
/// rate limiter in DynamoDB (moto) and HubSpot (the sandbox) at Pro limits; the state in memory
/// (see `crm_sync::testing::MemorySyncState`). Throttled changes re-queued by the handler are read back and handled.
pub async fn handler_ceiling(moto: &str, records: usize) -> anyhow::Result<Bulk> {
    let at = crm_sync_tests::hubspot::now_ms();
    let messages = (0..records).map(|i| change(i, at)).collect();
    let (bulk, _) = ceiling_run(
        moto,
        records,
        messages,
        |_| {},
        move |sandbox| sandbox.records("contacts").len() >= records,
    )
    .await?;
    Ok(bulk)
}

/// What the graph workload wrote, counted in the sandbox once it is done.
#[derive(Debug, Clone)]
pub struct Graph {
    pub companies: usize,
    pub contacts: usize,
    pub links: usize,
    pub labelled_links: usize,
    pub link_calls: u64,
    pub messages: usize,
}

impl Graph {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "companies": self.companies, "contacts": self.contacts, "links": self.links,
            "labelled_links": self.labelled_links, "link_calls": self.link_calls, "messages": self.messages,
        })
    }
}

/// The whole graph through the sync handler at the CRM's ceiling: `contacts / 10` companies,
/// `contacts` contacts, and a link from each contact to its company (every second one labelled),
/// each link sent just before its contact, so that a batch split between them makes links wait.
pub async fn graph_ceiling(moto: &str, contacts: usize) -> anyhow::Result<(Bulk, Graph)> {
    let at = crm_sync_tests::hubspot::now_ms();
    let companies = (contacts / 10).max(1);
    let mut messages: Vec<String> = (0..companies)
        .map(|c| {
            json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": format!("co-{c}"),
                   "idempotency_id": format!("co-{c}-1"), "changed_at": at, "data": {"name": format!("Company {c}")}})
            .to_string()
        })
        .collect();
    for i in 0..contacts {
        let labels: Vec<&str> = if i % 2 == 0 {
            vec!["Billing contact"]
        } else {
            vec![]
        };
        messages.push(
            json!({"version": 2, "type": "association.upsert", "object_type": "contact", "record_id": format!("bench-{i}"),
                   "to_object_type": "company", "to_record_id": format!("co-{}", i % companies), "labels": labels,
                   "idempotency_id": format!("link-{i}-1"), "changed_at": at})
            .to_string(),
        );
        messages.push(change(i, at));
    }
    let total = messages.len();
    let (mut bulk, sandbox) = ceiling_run(
        moto,
        total,
        messages,
        |sandbox| sandbox.define_label("contacts", "companies", "Billing contact", "Billing contact"),
        move |sandbox| sandbox.association_count("contacts", "companies") >= contacts,
    )
    .await?;
    let stats = sandbox.stats();
    let graph = Graph {
        companies: sandbox.records("companies").len(),
        contacts: sandbox.records("contacts").len(),
        links: sandbox.association_count("contacts", "companies"),
        labelled_links: sandbox.labelled_count("contacts", "companies"),
        link_calls: stats
            .calls
            .iter()
            .filter(|(call, _)| call.contains("batch/create"))
            .map(|(_, n)| n)
            .sum(),
        messages: total,
    };
    anyhow::ensure!(
        graph.companies == companies && graph.contacts == contacts && graph.links == contacts,
        "the graph is not whole: {graph:?}"
    );
    anyhow::ensure!(
        graph.labelled_links == contacts.div_ceil(2),
        "labels lost: {graph:?}"
    );
    bulk.records = total;
    Ok((bulk, graph))
}

/// `messages` through two sync handler instances against the HubSpot sandbox at Pro limits,
/// through the production DynamoDB limiter, until `done` says the CRM holds the result.
async fn ceiling_run(
    moto: &str,
    records: usize,
    messages: Vec<String>,
    prepare: impl Fn(&Sandbox),
    done: impl Fn(&Sandbox) -> bool + Clone,
) -> anyhow::Result<(Bulk, Sandbox)> {
    use std::sync::Arc;

    use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
    use crm_sync::adapters::dynamodb::DynamoDbRateLimiter;
    use crm_sync::adapters::sqs::SqsQueue;
    use crm_sync::config::Env;
    use crm_sync::domain::mapping::{Mapping, DEFAULT_MAPPING};
    use crm_sync::domain::SystemClock;
    use crm_sync::entrypoints::sync_sqs::SyncHandler;
    use crm_sync::sync::SyncService;
    use lambda_runtime::{Context, LambdaEvent};

    let sandbox = Sandbox::start("127.0.0.1:0", SandboxConfig::default()).await?;
    prepare(&sandbox);
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: moto.to_string(),
        handler_aws_endpoint: None,
        stack_name: format!("benchcrm-{}-{records}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::HubSpot,
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), "bench".to_string())]),
        env_overrides: HashMap::from([
            ("HUBSPOT_ACCESS_TOKEN".to_string(), sandbox.token()),
            ("HUBSPOT_API_BASE".to_string(), sandbox.url()),
        ]),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await?;
    let lookup = stack.sync_env.clone();
    let config = Env(move |name: &str| lookup.get(name).cloned()).sync()?;
    let aws = crm_sync::adapters::aws::load_sdk_config(
        &crm_sync::adapters::aws::AwsTarget::local(moto),
        crm_sync::adapters::aws::CallBudget::BACKGROUND,
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let outbound = stack.resources.queue("OutboundQueue").clone();
    let service = SyncService::new(
        Arc::new(Mapping::parse(DEFAULT_MAPPING)?),
        Arc::new(HubSpotClient::new(
            &sandbox.url(),
            secrecy::SecretString::from(sandbox.token()),
            Duration::from_secs(20),
        )?),
        Arc::new(crm_sync::testing::MemorySyncState::default()),
        Arc::new(DynamoDbRateLimiter::new(
            aws_sdk_dynamodb::Client::new(&aws),
            stack.resources.table("RateLimitTable"),
            "hubspot",
            config.crm.limiter.clone(),
        )),
        Arc::new(SqsQueue::new(sqs.clone(), outbound.url.clone())),
        Arc::new(SqsQueue::new(sqs.clone(), config.outbound_dlq_url.clone())),
        Arc::new(SystemClock),
        config.sync.clone(),
    );
    let handler = Arc::new(SyncHandler::new(service, None, None, None));

    let pending: Arc<Mutex<Vec<SqsMessage>>> = Arc::new(Mutex::new(
        messages
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let mut message = SqsMessage::default();
                message.message_id = Some(format!("m-{i}"));
                message.event_source_arn = Some(outbound.arn.clone());
                message.body = Some(body);
                message
            })
            .collect(),
    ));
    let busy = Arc::new(Mutex::new((0u64, Duration::ZERO)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600 + records as u64 / 10);
    let instances = (0..2).map(|_| {
        let (handler, pending, busy, sqs, outbound, done) = (
            handler.clone(),
            pending.clone(),
            busy.clone(),
            sqs.clone(),
            outbound.clone(),
            done.clone(),
        );
        let sandbox = &sandbox;
        async move {
            loop {
                let batch: Vec<SqsMessage> = {
                    let mut pending = pending.lock().unwrap();
                    let take = pending.len().min(1000);
                    pending.drain(..take).collect()
                };
                let batch = if batch.is_empty() {
                    if done(sandbox) {
                        return anyhow::Ok(());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "the load did not finish");
                    // What the handler re-queued (throttled or busy), as the event source would.
                    let received = sqs
                        .receive_message()
                        .queue_url(&outbound.url)
                        .max_number_of_messages(10)
                        .message_attribute_names("All")
                        .send()
                        .await?;
                    let mut batch = Vec::new();
                    for message in received.messages() {
                        sqs.delete_message()
                            .queue_url(&outbound.url)
                            .receipt_handle(message.receipt_handle().unwrap_or_default())
                            .send()
                            .await?;
                        let mut event = SqsMessage::default();
                        event.message_id = message.message_id().map(str::to_string);
                        event.event_source_arn = Some(outbound.arn.clone());
                        event.body = message.body().map(str::to_string);
                        batch.push(event);
                    }
                    if batch.is_empty() {
                        // A short poll and a short nap: a long poll here would hold the run open
                        // after the other instance has sent the last call.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    batch
                } else {
                    batch
                };
                let mut event = SqsEvent::default();
                event.records = batch.clone();
                let mut context = Context::default();
                context.deadline = (crm_sync_tests::hubspot::now_ms() + 60_000) as u64;
                let invoked = Instant::now();
                let response = handler
                    .handle(LambdaEvent::new(event, context))
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                {
                    let mut busy = busy.lock().unwrap();
                    busy.0 += 1;
                    busy.1 += invoked.elapsed();
                }
                let failed: std::collections::HashSet<String> = response
                    .batch_item_failures
                    .into_iter()
                    .map(|failure| failure.item_identifier)
                    .collect();
                let mut pending = pending.lock().unwrap();
                pending.extend(
                    batch
                        .into_iter()
                        .filter(|m| failed.contains(m.message_id.as_deref().unwrap_or_default())),
                );
            }
        }
    });
    for result in futures::future::join_all(instances).await {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = sandbox.stats();
    let (invocations, busy) = *busy.lock().unwrap();
    let bulk = Bulk {
        records,
        seconds,
        crm_calls: stats.total_calls,
        upsert_calls: upsert_calls(&stats),
        throttled: stats.throttled_burst + stats.throttled_daily,
        aws_calls: BTreeMap::new(),
        invocations,
        busy_seconds: busy.as_secs_f64(),
        state_item_bytes: 0.0,
        timeline_item_bytes: 0.0,
        call_span_seconds: call_span_seconds(&stats),
    };
    drop(stack);
    Ok((bulk, sandbox))
}
