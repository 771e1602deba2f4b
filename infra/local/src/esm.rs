//! Plays the Lambda event source mapping for SQS, which moto cannot run: long-polls the queue,
//! gathers a batch (up to the batch size, or until the batching window closes), invokes the
//! handler with an SQS event, deletes what succeeded and leaves the reported failures to the
//! visibility timeout (and so to the queue's redrive policy). Up to `maximum_concurrency`
//! batches run at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use futures::future::BoxFuture;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

use crate::template::SqsEventSpec;

/// An SQS-triggered Lambda handler, as the local event source calls it.
pub type SqsHandler = Arc<
    dyn Fn(LambdaEvent<SqsEvent>) -> BoxFuture<'static, Result<SqsBatchResponse, lambda_runtime::Error>>
        + Send
        + Sync,
>;

/// One event source: a queue feeding a handler.
#[derive(Clone)]
pub struct EventSource {
    pub queue_url: String,
    pub spec: SqsEventSpec,
    pub function_timeout: Duration,
    pub crashes: Arc<CrashSwitch>,
}

/// Invocations that die mid-flight, as when a Lambda runs out of memory or its host fails: the
/// handler is stopped wherever it is (after some CRM calls, before others) and reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crashes {
    /// Share of invocations that crash (0..1).
    pub rate: f64,
    /// A crashing invocation runs for a random time up to this first.
    pub within: Duration,
    /// When the crashed batch's messages are visible again. Lambda leaves them to the queue's
    /// visibility timeout (six minutes here); a test shortens the wait.
    pub return_after: Duration,
}

/// Turns crashes on and off for every event source of a stack, and counts them.
#[derive(Debug, Default)]
pub struct CrashSwitch {
    settings: std::sync::Mutex<Crashes>,
    crashed: std::sync::atomic::AtomicU64,
}

impl CrashSwitch {
    pub fn set(&self, crashes: Crashes) {
        *self.settings.lock().unwrap() = crashes;
    }

    /// Invocations crashed so far.
    pub fn crashed(&self) -> u64 {
        self.crashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the next invocation may run before it crashes, if it is to crash.
    fn draw(&self) -> Option<(Duration, Duration)> {
        let crashes = *self.settings.lock().unwrap();
        (crashes.rate > 0.0 && fastrand::f64() < crashes.rate)
            .then(|| (crashes.within.mul_f64(fastrand::f64()), crashes.return_after))
    }
}

/// Starts the pollers; dropping (aborting) the handles stops them.
pub fn start(sqs: aws_sdk_sqs::Client, source: EventSource, handler: SqsHandler) -> Vec<JoinHandle<()>> {
    (0..source.spec.maximum_concurrency.max(1))
        .map(|_| tokio::spawn(poll(sqs.clone(), source.clone(), handler.clone())))
        .collect()
}

async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, max: usize, wait_secs: i32) -> Vec<Message> {
    let result = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await;
    match result {
        Ok(output) => output.messages().to_vec(),
        Err(error) => {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "local event source: receive failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}

async fn poll(sqs: aws_sdk_sqs::Client, source: EventSource, handler: SqsHandler) {
    let window = Duration::from_secs(source.spec.batching_window_secs);
    loop {
        let mut batch: Vec<Message> = Vec::new();
        let mut opened: Option<Instant> = None;
        while batch.len() < source.spec.batch_size {
            let waiting = opened.map(|at| window.saturating_sub(at.elapsed()));
            if waiting.is_some_and(|left| left.is_zero()) {
                break;
            }
            let wait_secs = if batch.is_empty() { 1 } else { 0 };
            let received = receive(
                &sqs,
                &source.queue_url,
                source.spec.batch_size - batch.len(),
                wait_secs,
            )
            .await;
            if received.is_empty() && !batch.is_empty() {
                // Nothing more yet: wait out the window in short steps rather than hammer moto.
                tokio::time::sleep(Duration::from_millis(50).min(waiting.unwrap_or_default())).await;
            }
            if !received.is_empty() && opened.is_none() {
                opened = Some(Instant::now());
            }
            batch.extend(received);
        }
        if !batch.is_empty() {
            invoke(&sqs, &source, &handler, batch).await;
        }
    }
}

fn record(message: &Message, source: &EventSource) -> Value {
    let attributes: Map<String, Value> = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), Value::String(value.clone())))
                .collect()
        })
        .unwrap_or_default();
    let message_attributes: Map<String, Value> = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    (
                        name.clone(),
                        json!({
                            "stringValue": value.string_value(),
                            "dataType": value.data_type(),
                            "stringListValues": [],
                            "binaryListValues": [],
                        }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": source.spec.queue_arn,
        "awsRegion": crate::provision::REGION,
    })
}

async fn invoke(sqs: &aws_sdk_sqs::Client, source: &EventSource, handler: &SqsHandler, batch: Vec<Message>) {
    let event = json!({ "Records": batch.iter().map(|m| record(m, source)).collect::<Vec<_>>() });
    let payload: SqsEvent = match serde_json::from_value(event) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "local event source: could not build the SQS event");
            return;
        }
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut context = Context::default();
    context.request_id = format!("local-{now_ms}");
    context.deadline = now_ms + source.function_timeout.as_millis() as u64;
    let crash = source.crashes.draw();
    let limit = crash.map_or(source.function_timeout, |(after, _)| {
        after.min(source.function_timeout)
    });
    let result = tokio::time::timeout(limit, handler(LambdaEvent::new(payload, context))).await;
    if let (Err(_), Some((_, return_after))) = (&result, crash) {
        source
            .crashes
            .crashed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            messages = batch.len(),
            "local event source: the invocation crashed mid-flight"
        );
        return_early(sqs, &source.queue_url, &batch, return_after).await;
        return;
    }
    let failed: HashSet<String> = match result {
        Ok(Ok(response)) if source.spec.report_batch_item_failures => {
            let ids: HashSet<String> = batch
                .iter()
                .filter_map(|m| m.message_id().map(str::to_string))
                .collect();
            let failed: HashSet<String> = response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect();
            if failed.iter().any(|id| !ids.contains(id)) {
                // Lambda treats an unknown item identifier as a failure of the whole batch.
                tracing::error!("local event source: the response names a message not in the batch");
                return;
            }
            failed
        }
        Ok(Ok(_)) => HashSet::new(),
        Ok(Err(error)) => {
            tracing::error!(%error, "local event source: the handler failed; the whole batch returns");
            return;
        }
        Err(_) => {
            tracing::error!("local event source: the handler timed out; the whole batch returns");
            return;
        }
    };
    let done: Vec<&Message> = batch
        .iter()
        .filter(|m| m.message_id().is_some_and(|id| !failed.contains(id)))
        .collect();
    for chunk in done.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        if let Err(error) = sqs
            .delete_message_batch()
            .queue_url(&source.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "local event source: delete failed");
        }
    }
}

/// Makes a crashed batch visible again after `after`.
async fn return_early(sqs: &aws_sdk_sqs::Client, queue_url: &str, batch: &[Message], after: Duration) {
    let seconds = i32::try_from(after.as_secs()).unwrap_or(i32::MAX);
    for chunk in batch.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .visibility_timeout(seconds)
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        if let Err(error) = sqs
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            // The messages still come back, after the queue's own visibility timeout.
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "local event source: could not shorten a crashed batch's wait");
        }
    }
}
