//! The outbound bulk load through the sync handler and its local event source, and the naive
//! one-call-per-record pattern beside it, both against the sandbox's HubSpot Pro burst limit.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use crm_sync::adapters::hubspot::HubSpotClient;
use crm_sync::domain::crm::{CrmError, UpsertInput};
use crm_sync::ports::Crm;
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use crm_sync_tests::fault_proxy::FaultProxy;
use hubspot_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

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
}

impl Bulk {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn records_per_call(&self) -> f64 {
        self.records as f64 / self.upsert_calls.max(1) as f64
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
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), "bench".to_string())]),
        env_overrides: HashMap::new(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
    })
    .await?;
    let aws = crm_sync::adapters::aws::load_sdk_config(
        &crm_sync::adapters::aws::AwsTarget::local(moto),
        crm_sync::adapters::aws::CallBudget::BACKGROUND,
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    preload(&sqs, &stack.resources.queue("OutboundQueue").url, records).await?;
    let started = Instant::now();
    stack.start_event_sources();
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
    // Let the pollers delete the last batch before counting AWS requests.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = sandbox.stats();
    let (invocations, busy) = stack.invocations.totals();
    Ok(Bulk {
        records,
        seconds,
        crm_calls: stats.total_calls,
        upsert_calls: stats
            .calls
            .iter()
            .filter(|(call, _)| call.contains("batch/upsert"))
            .map(|(_, n)| n)
            .sum(),
        throttled: stats.throttled_burst + stats.throttled_daily,
        aws_calls: proxy.calls(),
        invocations,
        busy_seconds: busy.as_secs_f64(),
    })
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
        let input = UpsertInput {
            key: format!("naive-{i}"),
            properties: BTreeMap::from([("email".to_string(), format!("naive-{i}@example.com"))]),
        };
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
