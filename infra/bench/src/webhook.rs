//! Webhook ingest: the handler's time per delivery (1 and 100 events), called in process as the
//! Lambda runtime calls it, beside the raw DynamoDB and SQS calls that storing the delivery and
//! enqueueing its events need at the least, made one after the other, on the same moto in the
//! same run; then 200 distinct deliveries at once and 50 replays of one delivery at once.

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

/// The HubSpot client secret the bench stacks sign webhooks with.
pub const SECRET: &str = "bench-secret";
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
    crm_sync_local::apigw::into_request(signed_event(body)?)
}

/// API Gateway's event for `body` posted to the HubSpot route, signed now with [`SECRET`].
pub fn signed_event(body: &str) -> anyhow::Result<serde_json::Value> {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "bench.example".parse()?);
    headers.insert("x-forwarded-proto", "https".parse()?);
    headers.insert("content-type", "application/json".parse()?);
    for (name, value) in v3_headers(SECRET, URL, body.as_bytes(), now_ms()) {
        headers.insert(name, value.parse()?);
    }
    let peer: SocketAddr = "127.0.0.1:9".parse()?;
    Ok(crm_sync_local::apigw::event(
        "POST",
        "/webhooks/hubspot",
        &headers,
        body.as_bytes(),
        peer,
    ))
}

/// What storing a delivery and enqueueing its events take at the least, one after the other: a
/// PutItem of the raw body, then SendMessage for one event or SendMessageBatch calls (10 events
/// each, at once) for more.
async fn raw(
    dynamodb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
    table: &str,
    queue: &str,
    body: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let events: Vec<serde_json::Value> = serde_json::from_str(body)?;
    dynamodb
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(format!("RAW#{tag}")))
        .item("body", AttributeValue::S(body.to_string()))
        .send()
        .await?;
    if let [event] = events.as_slice() {
        sqs.send_message()
            .queue_url(queue)
            .message_body(event.to_string())
            .send()
            .await?;
        return Ok(());
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

/// Many deliveries at once: how many answered 5xx, and whether every event reached the queue
/// and every distinct delivery the table.
#[derive(Debug, Clone)]
pub struct Burst {
    pub name: &'static str,
    pub requests: usize,
    pub server_errors: usize,
    pub events_expected: usize,
    /// Distinct event keys found on the queue afterwards.
    pub events_enqueued: usize,
    pub deliveries_expected: usize,
    pub deliveries_stored: usize,
}

impl Burst {
    pub fn lost_nothing(&self) -> bool {
        self.server_errors == 0
            && self.events_enqueued == self.events_expected
            && self.deliveries_stored == self.deliveries_expected
    }
}

/// A local stack on `moto` whose HubSpot webhooks are signed with [`SECRET`], its event sources
/// stopped: the functions' resources and environments, nothing running on its own.
pub async fn stack(moto: &str, name: &str) -> anyhow::Result<LocalStack> {
    LocalStack::start(StackOptions {
        aws_endpoint: moto.to_string(),
        handler_aws_endpoint: None,
        stack_name: format!("{name}-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::Sandbox {
            addr: "127.0.0.1:0".into(),
        },
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), SECRET.to_string())]),
        env_overrides: HashMap::new(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await
}

pub async fn ingest(moto: &str, deliveries: usize) -> anyhow::Result<(Vec<Latencies>, Vec<Burst>)> {
    let stack = stack(moto, "benchwh").await?;
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

    // The queue is emptied before each burst and read after it: what is found is the burst's.
    drain(&sqs, &queue).await?;
    let distinct: Vec<String> = (0..200).map(|i| body(1, next_id + i)).collect();
    next_id += 200;
    let replayed = vec![body(20, next_id); 50];
    let mut bursts = Vec::new();
    for (name, bodies) in [
        ("200 distinct deliveries at once", distinct),
        ("50 replays of one 20-event delivery at once", replayed),
    ] {
        let before = deliveries_stored(&dynamodb, &table).await?;
        let mut outcome = burst(&api, name, &bodies).await?;
        outcome.deliveries_stored = deliveries_stored(&dynamodb, &table).await? - before;
        outcome.events_enqueued = drain(&sqs, &queue).await?.len();
        bursts.push(outcome);
    }
    Ok((results, bursts))
}

async fn burst(api: &WebhookApi, name: &'static str, bodies: &[String]) -> anyhow::Result<Burst> {
    let requests = bodies
        .iter()
        .map(|text| request(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answers = futures::future::join_all(requests.into_iter().map(|request| api.handle(request))).await;
    let server_errors = answers
        .iter()
        .filter(|answer| {
            answer
                .as_ref()
                .map_or(true, |response| response.status().is_server_error())
        })
        .count();
    let distinct_bodies: std::collections::HashSet<&String> = bodies.iter().collect();
    let events_expected = distinct_bodies
        .iter()
        .map(|text| serde_json::from_str::<Vec<serde_json::Value>>(text).map_or(0, |events| events.len()))
        .sum();
    Ok(Burst {
        name,
        requests: bodies.len(),
        server_errors,
        events_expected,
        events_enqueued: 0,
        deliveries_expected: distinct_bodies.len(),
        deliveries_stored: 0,
    })
}

/// Every distinct event key on the queue, each message read and deleted once.
async fn drain(sqs: &aws_sdk_sqs::Client, queue: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut keys = std::collections::BTreeSet::new();
    loop {
        let page = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        let messages = page.messages();
        if messages.is_empty() {
            return Ok(keys);
        }
        for message in messages {
            let body: serde_json::Value = serde_json::from_str(message.body().unwrap_or("{}"))?;
            if let Some(key) = body["event_key"].as_str() {
                keys.insert(key.to_string());
            }
            if let Some(handle) = message.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
    }
}

async fn deliveries_stored(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .filter_expression("#kind = :delivery")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":delivery", AttributeValue::S("delivery".into()))
            .set_exclusive_start_key(start)
            .send()
            .await?;
        count += page.count() as usize;
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(count);
        }
    }
}

/// The ingest rows: latencies against the raw calls, with the goals, and the bursts.
pub fn table(latencies: &[Latencies], bursts: &[Burst]) -> String {
    let mut out = String::from(
        "| webhook ingest | handler p50 | handler p99 | raw calls p50 | raw calls p99 | p50 ratio (goal) | p99 ratio (goal) |\n|---|---|---|---|---|---|---|\n",
    );
    for w in latencies {
        let (p50_goal, p99_goal) = if w.events == 1 {
            ("1.0", "1.1")
        } else {
            ("1.1", "1.1")
        };
        out.push_str(&format!(
            "| {} event{} × {} deliveries | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}x ({p50_goal}x) | {:.2}x ({p99_goal}x) |\n",
            w.events,
            if w.events == 1 { "" } else { "s" },
            w.deliveries,
            w.handler_p50_ms,
            w.handler_p99_ms,
            w.raw_p50_ms,
            w.raw_p99_ms,
            w.handler_p50_ms / w.raw_p50_ms,
            w.handler_p99_ms / w.raw_p99_ms,
        ));
    }
    out.push_str("\n| burst | requests | 5xx | events on the queue | deliveries stored | nothing lost |\n|---|---|---|---|---|---|\n");
    for b in bursts {
        out.push_str(&format!(
            "| {} | {} | {} | {} of {} | {} of {} | {} |\n",
            b.name,
            b.requests,
            b.server_errors,
            b.events_enqueued,
            b.events_expected,
            b.deliveries_stored,
            b.deliveries_expected,
            if b.lost_nothing() { "yes" } else { "NO" }
        ));
    }
    out
}

pub fn to_json(latencies: &[Latencies], bursts: &[Burst]) -> serde_json::Value {
    serde_json::json!({
        "latencies": latencies.iter().map(|w| serde_json::json!({
            "events": w.events, "deliveries": w.deliveries,
            "handler_p50_ms": w.handler_p50_ms, "handler_p99_ms": w.handler_p99_ms,
            "raw_p50_ms": w.raw_p50_ms, "raw_p99_ms": w.raw_p99_ms,
            "ratio_p50": w.handler_p50_ms / w.raw_p50_ms, "ratio_p99": w.handler_p99_ms / w.raw_p99_ms,
        })).collect::<Vec<_>>(),
        "bursts": bursts.iter().map(|b| serde_json::json!({
            "name": b.name, "requests": b.requests, "server_errors": b.server_errors,
            "events_expected": b.events_expected, "events_enqueued": b.events_enqueued,
            "deliveries_expected": b.deliveries_expected, "deliveries_stored": b.deliveries_stored,
            "lost_nothing": b.lost_nothing(),
        })).collect::<Vec<_>>(),
    })
}
