//! Webhook ingest: the handler's time per delivery (1 and 100 events), called in process as the
//! Lambda runtime calls it, beside the raw DynamoDB and SQS calls that storing and enqueueing
//! those events needs at the least, on the same moto in the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::webhook_http::WebhookApi;
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use crm_sync_tests::hubspot::{now_ms, property_change, v3_headers};

const SECRET: &str = "bench-secret";
const URL: &str = "https://bench.example/webhooks/hubspot";

/// Latencies of one kind of delivery.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub events: usize,
    pub deliveries: usize,
    pub handler_p50_ms: f64,
    pub handler_p99_ms: f64,
    pub raw_p50_ms: f64,
    pub raw_p99_ms: f64,
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

fn body(events: usize, first_id: i64) -> String {
    let events: Vec<_> = (0..events as i64)
        .map(|i| property_change(first_id + i, 5000 + i, "email", &format!("w{i}@example.com"), 0))
        .collect();
    serde_json::Value::Array(events).to_string()
}

fn request(body: &str) -> anyhow::Result<lambda_http::Request> {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "bench.example".parse()?);
    headers.insert("x-forwarded-proto", "https".parse()?);
    headers.insert("content-type", "application/json".parse()?);
    for (name, value) in v3_headers(SECRET, URL, body.as_bytes(), now_ms()) {
        headers.insert(name, value.parse()?);
    }
    let peer: SocketAddr = "127.0.0.1:9".parse()?;
    let event = crm_sync_local::apigw::event("POST", "/webhooks/hubspot", &headers, body.as_bytes(), peer);
    crm_sync_local::apigw::into_request(event)
}

/// What storing a delivery and each of its events, then enqueueing the events, takes at the
/// least: a PutItem per item, all at once, then SendMessageBatch calls.
async fn raw(
    dynamodb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
    table: &str,
    queue: &str,
    body: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let events: Vec<serde_json::Value> = serde_json::from_str(body)?;
    let delivery = dynamodb
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(format!("RAW#{tag}")))
        .item("body", AttributeValue::S(body.to_string()))
        .send();
    let puts = futures::future::join_all(events.iter().enumerate().map(|(i, event)| {
        dynamodb
            .put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("RAWEVENT#{tag}#{i}")))
            .item("event", AttributeValue::S(event.to_string()))
            .send()
    }));
    let (delivery, puts) = futures::future::join(delivery, puts).await;
    delivery?;
    for result in puts {
        result?;
    }
    let sends = events.chunks(10).map(|chunk| {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, event)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(event.to_string())
                    .build()
                    .expect("id and body")
            })
            .collect();
        sqs.send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
    });
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(())
}

pub async fn ingest(moto: &str, deliveries: usize) -> anyhow::Result<Vec<Latencies>> {
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: moto.to_string(),
        handler_aws_endpoint: None,
        stack_name: format!("benchwh-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::Sandbox {
            addr: "127.0.0.1:0".into(),
        },
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), SECRET.to_string())]),
        env_overrides: HashMap::new(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
    })
    .await?;
    let lookup = stack.webhook_env.clone();
    let config = Env(move |name: &str| lookup.get(name).cloned()).webhook()?;
    // moto takes seconds over a 100-event delivery (DynamoDB takes milliseconds): the deployed
    // budget (3.5 s) would time out, so the handler gets the background one here.
    let aws = load_sdk_config(&AwsTarget::local(moto), CallBudget::BACKGROUND).await;
    let api = WebhookApi::build(&aws, config).await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let table = stack.resources.table("WebhookTable").to_string();
    let queue = stack.resources.queue("InboundQueue").url.clone();

    let mut results = Vec::new();
    let mut next_id = 1_000_000_i64;
    for (events, count) in [(1, deliveries), (100, (deliveries / 4).max(10))] {
        let mut handler = Vec::with_capacity(count);
        let mut baseline = Vec::with_capacity(count);
        // Interleaved, so that both see the same moto (its queue and table grow as they go).
        for round in 0..count + 5 {
            let text = body(events, next_id);
            next_id += events as i64;
            let request = request(&text)?;
            let started = Instant::now();
            let response = api.handle(request).await?;
            let took = started.elapsed();
            anyhow::ensure!(
                response.status() == 200,
                "the handler answered {}",
                response.status()
            );
            let started = Instant::now();
            raw(
                &dynamodb,
                &sqs,
                &table,
                &queue,
                &text,
                &format!("{events}-{round}"),
            )
            .await?;
            let raw_took = started.elapsed();
            if round >= 5 {
                // The first rounds warm connections and moto up.
                handler.push(took);
                baseline.push(raw_took);
            }
        }
        results.push(Latencies {
            events,
            deliveries: count,
            handler_p50_ms: percentile(&mut handler, 0.50),
            handler_p99_ms: percentile(&mut handler, 0.99),
            raw_p50_ms: percentile(&mut baseline, 0.50),
            raw_p99_ms: percentile(&mut baseline, 0.99),
        });
    }
    Ok(results)
}
