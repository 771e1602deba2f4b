//! What every queue consumer of crm-sync does the same way: CRM calls under the shared budget,
//! with quick retries, and the fate of each message (done, re-queued with a delay,
//! dead-lettered with its reason, or handed back to the queue).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::domain::crm::{BatchResult, CrmError, RateInfo, ReadResult, ThrottlePolicy};
use crate::domain::sync::backoff;
use crate::domain::Clock;
use crate::ports::{MessageQueue, OutgoingMessage, Permit, RateLimiter};

/// Message attribute carrying how many transient failures a message has had.
pub const ATTEMPTS_ATTRIBUTE: &str = "crm_sync_attempts";
/// Message attributes on dead letters.
pub const ERROR_ATTRIBUTE: &str = "crm_sync_error";
pub const FAILED_AT_ATTRIBUTE: &str = "crm_sync_failed_at";
/// A dead letter's key in the dead-letter journal.
pub const LETTER_ATTRIBUTE: &str = "crm_sync_letter";

const CONCURRENCY: usize = 32;

/// One message as the queue delivered it.
#[derive(Debug, Clone)]
pub struct SyncMessage {
    pub message_id: String,
    pub body: String,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
}

impl SyncMessage {
    /// Transient failures so far. A dead letter that was redriven carries its reason: it starts
    /// a fresh retry budget.
    pub fn attempts(&self) -> u32 {
        if self.attributes.contains_key(ERROR_ATTRIBUTE) {
            return 0;
        }
        self.attributes
            .get(ATTEMPTS_ATTRIBUTE)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    }
}

/// What became of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages the queue must deliver again (their handling could not be recorded).
    pub redeliver: Vec<String>,
    pub applied: usize,
    pub skipped: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    pub crm_calls: usize,
    /// Calls the CRM answered with a throttle (429).
    pub throttled: usize,
    /// Calls that failed transiently (5xx, timeouts, 401/403).
    pub crm_errors: usize,
    /// The lowest daily call count the CRM said was left, when it said.
    pub daily_remaining: Option<u64>,
}

/// The fate of one message.
#[derive(Debug, Clone)]
pub enum Disposition {
    Done,
    Retry { delay: Duration, attempts: u32 },
    DeadLetter { reason: String },
    Redeliver,
}

/// A call that did not produce a result.
#[derive(Debug)]
pub enum CallFailure {
    Throttled { until_ms: i64 },
    Transient(String),
    Rejected(String),
}

/// A CRM response that reports the CRM's limits.
pub trait Observed {
    fn rate(&self) -> &RateInfo;
}

impl Observed for BatchResult {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

impl Observed for crate::domain::crm::PropertyKinds {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

impl Observed for crate::domain::crm::MergeLookup {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

impl Observed for crate::domain::crm::FindResult {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

impl Observed for crate::domain::crm::MergePage {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

impl Observed for ReadResult {
    fn rate(&self) -> &RateInfo {
        &self.rate
    }
}

/// Quick-retry settings of CRM calls inside one invocation.
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub quick_retries: u32,
    pub quick_retry_base: Duration,
    /// Longest wait for the rate limiter inside an invocation; longer waits re-queue.
    pub max_limiter_wait: Duration,
    /// Take only idle call slots (the reconciliation lane), never reserve ahead of live work.
    pub low_priority: bool,
}

/// The shared machinery of a queue consumer.
pub struct Worker {
    limiter: Arc<dyn RateLimiter>,
    retry_queue: Arc<dyn MessageQueue>,
    dead_letters: Arc<dyn MessageQueue>,
    clock: Arc<dyn Clock>,
    settings: CallSettings,
    /// Low-priority calls ask the limiter one at a time: they may only take the next slot, so
    /// a crowd of them asking at once would only spend limiter writes (and slow live callers'
    /// writes to the same item) for slots one of them gets.
    low_priority_turn: tokio::sync::Mutex<()>,
}

impl Worker {
    pub fn new(
        limiter: Arc<dyn RateLimiter>,
        retry_queue: Arc<dyn MessageQueue>,
        dead_letters: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
        settings: CallSettings,
    ) -> Self {
        Self {
            limiter,
            retry_queue,
            dead_letters,
            clock,
            settings,
            low_priority_turn: tokio::sync::Mutex::new(()),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// One CRM call under the rate limiter, with quick retries of transient failures and of
    /// burst throttles, until `deadline`.
    pub async fn call<'a, T, F, Fut>(
        &self,
        deadline: Instant,
        report: &mut BatchReport,
        make: F,
    ) -> Result<T, CallFailure>
    where
        F: Fn() -> Fut,
        T: Observed,
        Fut: std::future::Future<Output = Result<T, CrmError>> + 'a,
    {
        let mut transient_failures = 0;
        let mut throttles = 0;
        loop {
            self.permit(deadline).await?;
            report.crm_calls += 1;
            let error = match make().await {
                Ok(result) => {
                    if let Some(left) = result.rate().daily_remaining {
                        report.daily_remaining =
                            Some(report.daily_remaining.map_or(left, |seen| seen.min(left)));
                    }
                    if let Err(error) = self.limiter.observe(result.rate(), self.clock.now_ms()).await {
                        tracing::warn!(error = ?anyhow::Error::from(error), "could not record the CRM's rate headers");
                    }
                    return Ok(result);
                }
                Err(error) => error,
            };
            let now_ms = self.clock.now_ms();
            match error {
                CrmError::Throttled {
                    policy, retry_after, ..
                } => {
                    throttles += 1;
                    report.throttled += 1;
                    // A rolling window frees up continuously: a short pause, not a growing one.
                    let wait = match policy {
                        ThrottlePolicy::Daily => retry_after.unwrap_or(Duration::from_secs(3600)),
                        ThrottlePolicy::Burst => retry_after.unwrap_or(Duration::from_secs(1)),
                    };
                    if let Err(error) = self.limiter.throttled(policy, wait, now_ms).await {
                        tracing::warn!(error = ?anyhow::Error::from(error), "could not share the throttle");
                    }
                    tracing::info!(
                        ?policy,
                        wait_ms = wait.as_millis() as u64,
                        "the CRM throttled a call"
                    );
                    if policy == ThrottlePolicy::Daily || throttles > 5 {
                        return Err(CallFailure::Throttled {
                            until_ms: now_ms + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                        });
                    }
                }
                CrmError::Transient { call, message } => {
                    transient_failures += 1;
                    report.crm_errors += 1;
                    let wait = backoff(
                        transient_failures,
                        self.settings.quick_retry_base,
                        Duration::from_secs(5),
                        fastrand::f64(),
                    );
                    if transient_failures > self.settings.quick_retries || Instant::now() + wait >= deadline {
                        return Err(CallFailure::Transient(format!("{call}: {message}")));
                    }
                    tokio::time::sleep(wait).await;
                }
                CrmError::Rejected { call, message, .. } => {
                    return Err(CallFailure::Rejected(format!("{call}: {message}")))
                }
            }
        }
    }

    /// Waits for a call slot; a wait that would be too long, or past the deadline, re-queues.
    async fn permit(&self, deadline: Instant) -> Result<(), CallFailure> {
        let _turn = match self.settings.low_priority {
            true => Some(self.low_priority_turn.lock().await),
            false => None,
        };
        loop {
            let now_ms = self.clock.now_ms();
            let permit = if self.settings.low_priority {
                self.limiter.acquire_idle(now_ms).await
            } else {
                self.limiter.acquire(now_ms).await
            };
            let permit = permit.map_err(|error| {
                CallFailure::Transient(format!(
                    "rate limiter unavailable: {:#}",
                    anyhow::Error::from(error)
                ))
            })?;
            let (until_ms, granted) = match permit {
                Permit::Granted { at_ms } => (at_ms, true),
                Permit::Denied { until_ms, .. } => (until_ms, false),
            };
            let wait = Duration::from_millis(u64::try_from(until_ms - now_ms).unwrap_or(0));
            if !granted && (wait > self.settings.max_limiter_wait || Instant::now() + wait >= deadline) {
                return Err(CallFailure::Throttled { until_ms });
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if granted {
                return Ok(());
            }
        }
    }

    /// Carries out every message's disposition: re-queue, dead-letter, or ask for redelivery.
    pub async fn dispatch(
        &self,
        messages: &[SyncMessage],
        dispositions: HashMap<String, Disposition>,
        report: &mut BatchReport,
    ) {
        let failed_at = crate::domain::clock::rfc3339(self.clock.now_ms());
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for message in messages {
            match dispositions
                .get(&message.message_id)
                .cloned()
                .unwrap_or(Disposition::Redeliver)
            {
                Disposition::Done => {}
                Disposition::Redeliver => report.redeliver.push(message.message_id.clone()),
                Disposition::Retry { delay, attempts } => retries.push(OutgoingMessage {
                    id: message.message_id.clone(),
                    body: message.body.clone(),
                    delay_secs: u32::try_from(delay.as_secs().clamp(1, 900)).unwrap_or(900),
                    attributes: vec![(ATTEMPTS_ATTRIBUTE.to_string(), attempts.to_string())],
                }),
                Disposition::DeadLetter { reason } => {
                    report.dead_lettered += 1;
                    let attempts = message
                        .attributes
                        .get(ATTEMPTS_ATTRIBUTE)
                        .cloned()
                        .unwrap_or_else(|| "0".into());
                    dead.push(OutgoingMessage {
                        id: message.message_id.clone(),
                        body: message.body.clone(),
                        delay_secs: 0,
                        attributes: vec![
                            (ERROR_ATTRIBUTE.to_string(), reason.chars().take(1000).collect()),
                            (FAILED_AT_ATTRIBUTE.to_string(), failed_at.clone()),
                            (ATTEMPTS_ATTRIBUTE.to_string(), attempts),
                        ],
                    });
                }
            }
        }
        for failure in self.retry_queue.send(&retries).await {
            tracing::error!(message_id = %failure.id, reason = %failure.reason, "could not re-queue; asking for redelivery");
            report.redeliver.push(failure.id);
        }
        for failure in self.dead_letters.send(&dead).await {
            tracing::error!(message_id = %failure.id, reason = %failure.reason, "could not dead-letter; asking for redelivery");
            report.redeliver.push(failure.id);
        }
    }
}

/// Runs `make` over the items at most 32 at a time, building the futures a few hundred at a time:
/// built all at once, a 10,000-message batch held 10,000 boxed SDK futures (114 MB peak in a
/// debug build).
/// Outputs keep the input order.
pub async fn bounded_each<'a, T, F, Fut>(items: &'a [T], make: F) -> Vec<Fut::Output>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future,
{
    let mut outputs = Vec::with_capacity(items.len());
    for chunk in items.chunks(CONCURRENCY * 8) {
        outputs.extend(bounded(chunk.iter().map(&make).collect()).await);
    }
    outputs
}

/// Runs the futures at most 32 at a time; outputs keep the input order.
/// (Futures are built first: a stream `map` closure here defeats the `Send` proof handlers need.)
pub async fn bounded<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures).buffered(CONCURRENCY).collect().await
}
