//! The webhook ingest use case: authenticate, parse, store the raw delivery, then store and
//! enqueue each event exactly once, and say whether the CRM must retry.
//!
//! Exactly once rests on a lease per event. Claiming an event writes its item with a lease only
//! if it is new (or its last lease ran out without the event being enqueued). The winner sends
//! the message, then confirms; on a send failure it releases the lease so that the CRM's retry
//! can claim the event at once. A crash between the two leaves the lease to run out.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::domain::webhook::{json_depth, MAX_EVENT_DEPTH, MAX_EVENT_KEY_BYTES};
use crate::domain::{AuthError, Clock, Delivery, InboundEvent, ParseError, WebhookRequest};
use crate::ports::{Claim, MessageQueue, OutgoingMessage, WebhookProvider, WebhookStore};

/// At most this many conditional writes in flight for one delivery.
const STORE_CONCURRENCY: usize = 32;

/// Limits and retention for webhook ingest.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Bodies larger than this are refused before any work (DynamoDB items hold at most 400 KB).
    pub max_body_bytes: usize,
    /// How long a claim protects an event from a concurrent duplicate; longer than the function
    /// timeout so that a live request never loses its lease.
    pub claim_lease_ms: i64,
    /// How long raw delivery bodies are kept (DynamoDB TTL).
    pub delivery_retention_ms: i64,
    /// How long event items, and so the dedupe record, are kept.
    pub event_retention_ms: i64,
    /// The largest inbound-queue message one event may become: SQS takes 256 KiB by default,
    /// and a retry or a dead letter adds attributes (attempts, the reason, up to about 1.1 KB).
    pub max_message_bytes: usize,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            claim_lease_ms: 30_000,
            delivery_retention_ms: 30 * DAY_MS,
            event_retention_ms: 90 * DAY_MS,
            max_message_bytes: 256 * 1024 - 4 * 1024,
        }
    }
}

/// What an accepted delivery amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub delivery_id: String,
    pub events: usize,
    /// Events stored and enqueued by this request.
    pub enqueued: usize,
    /// Events an earlier delivery had already stored and enqueued.
    pub duplicates: usize,
}

/// Why a delivery was not (wholly) accepted. Every variant but `Unavailable` and `Incomplete`
/// is the caller's fault and stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no webhook provider is called `{0}`")]
    UnknownProvider(String),
    #[error("the body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error(transparent)]
    BadRequest(#[from] ParseError),
    #[error("storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Some events are safely stored and enqueued, others are not yet: the CRM must retry.
    #[error("{pending} of {events} events could not be stored and enqueued yet")]
    Incomplete { pending: usize, events: usize },
}

/// The webhook ingest service: the providers it knows and the ports it writes to.
pub struct WebhookIngest {
    providers: Vec<Arc<dyn WebhookProvider>>,
    store: Arc<dyn WebhookStore>,
    queue: Arc<dyn MessageQueue>,
    clock: Arc<dyn Clock>,
    settings: IngestSettings,
}

impl WebhookIngest {
    pub fn new(
        providers: Vec<Arc<dyn WebhookProvider>>,
        store: Arc<dyn WebhookStore>,
        queue: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
        settings: IngestSettings,
    ) -> Self {
        Self {
            providers,
            store,
            queue,
            clock,
            settings,
        }
    }

    /// Whether `id` names a provider this service accepts webhooks from.
    pub fn knows_provider(&self, id: &str) -> bool {
        self.providers.iter().any(|provider| provider.id() == id)
    }

    /// What `id`'s accepted deliveries are answered with, when the CRM expects a particular body.
    pub fn acknowledgement(&self, id: &str) -> Option<crate::domain::Acknowledgement> {
        self.providers
            .iter()
            .find(|provider| provider.id() == id)
            .and_then(|provider| provider.acknowledgement())
    }

    /// Ingests one webhook request for `provider_id`. `Ok` means every event in it is durably
    /// stored and on the queue (by this request or an earlier one).
    ///
    /// Long on purpose: the request's whole path (provider, size, signature, parse, limits, store,
    /// enqueue) reads in order; each step's rules are in the functions it calls.
    pub async fn ingest(
        &self,
        provider_id: &str,
        request: &WebhookRequest,
    ) -> Result<IngestReport, IngestError> {
        let provider = self
            .providers
            .iter()
            .find(|provider| provider.id() == provider_id)
            .ok_or_else(|| IngestError::UnknownProvider(provider_id.to_string()))?;
        // Checked first so that an oversized body costs no hashing.
        if request.body.len() > self.settings.max_body_bytes {
            return Err(IngestError::TooLarge {
                limit: self.settings.max_body_bytes,
            });
        }
        let now_ms = self.clock.now_ms();
        provider.authenticate(request, now_ms)?;
        let events = provider.parse(&request.body)?;
        let delivery = Delivery::new(provider.id(), request.body.clone(), now_ms, events.len());
        check_limits(&events, &delivery, self.settings.max_message_bytes)?;
        // The same event twice in one delivery is stored and sent once.
        let mut keys = HashSet::new();
        let (events, repeated): (Vec<&InboundEvent>, Vec<&InboundEvent>) =
            events.iter().partition(|event| keys.insert(event.key.as_str()));
        let event_count = events.len() + repeated.len();

        let token = uuid::Uuid::new_v4().to_string();
        let lease_until_ms = now_ms + self.settings.claim_lease_ms;
        let expires_at_ms = now_ms + self.settings.event_retention_ms;
        // The raw delivery and the events are stored side by side: one round trip, not two.
        let (stored, claims) = futures::future::join(
            self.store
                .put_delivery(&delivery, now_ms + self.settings.delivery_retention_ms),
            bounded(
                events
                    .iter()
                    .map(|event| {
                        self.store.claim_event(
                            event,
                            &delivery,
                            &token,
                            now_ms,
                            lease_until_ms,
                            expires_at_ms,
                        )
                    })
                    .collect(),
            ),
        )
        .await;
        if let Err(error) = stored {
            // Give the leases back, so that the CRM's retry can claim the events at once.
            for (event, claim) in events.iter().zip(&claims) {
                if matches!(claim, Ok(Claim::Won)) {
                    if let Err(release) = self.store.release(provider.id(), &event.key, &token).await {
                        tracing::warn!(event_key = %event.key, error = ?anyhow::Error::from(release), "could not release a lease");
                    }
                }
            }
            return Err(IngestError::Unavailable(error.into()));
        }

        let mut won: Vec<&InboundEvent> = Vec::new();
        let mut duplicates = repeated.len();
        let mut pending = 0;
        for (event, claim) in events.iter().copied().zip(claims) {
            match claim {
                Ok(Claim::Won) => won.push(event),
                Ok(Claim::AlreadyEnqueued) => duplicates += 1,
                Ok(Claim::HeldElsewhere) => pending += 1,
                Err(error) => {
                    tracing::error!(event_key = %event.key, error = ?anyhow::Error::from(error), "could not store event");
                    pending += 1;
                }
            }
        }

        let enqueued = self.enqueue(&won, &delivery, &token).await;
        pending += won.len() - enqueued;
        if pending > 0 {
            tracing::warn!(
                delivery_id = %delivery.id,
                pending,
                events = event_count,
                "some events are not stored and enqueued yet; the CRM must retry"
            );
            return Err(IngestError::Incomplete {
                pending,
                events: event_count,
            });
        }
        Ok(IngestReport {
            delivery_id: delivery.id,
            events: event_count,
            enqueued,
            duplicates,
        })
    }

    /// Sends the won events, confirms the sent ones and releases the rest; returns how many were sent.
    async fn enqueue(&self, won: &[&InboundEvent], delivery: &Delivery, token: &str) -> usize {
        if won.is_empty() {
            return 0;
        }
        let messages: Vec<OutgoingMessage> = won
            .iter()
            .map(|event| OutgoingMessage::new(event.key.clone(), event.queue_message(delivery)))
            .collect();
        let failures = self.queue.send(&messages).await;
        for failure in &failures {
            tracing::error!(event_key = %failure.id, reason = %failure.reason, "could not enqueue event");
        }
        let failed: HashSet<&str> = failures.iter().map(|failure| failure.id.as_str()).collect();
        let now_ms = self.clock.now_ms();
        let settle = won
            .iter()
            .map(|event| {
                let sent = !failed.contains(event.key.as_str());
                async move {
                    let result = if sent {
                        self.store
                            .confirm_enqueued(event.provider, &event.key, token, now_ms)
                            .await
                    } else {
                        self.store.release(event.provider, &event.key, token).await
                    };
                    if let Err(error) = result {
                        // Either way the lease runs out on its own; a confirm that failed at
                        // worst lets a late duplicate enqueue the event again.
                        tracing::warn!(event_key = %event.key, sent, error = ?anyhow::Error::from(error), "could not settle the lease");
                    }
                    sent
                }
            })
            .collect();
        bounded(settle).await.into_iter().filter(|sent| *sent).count()
    }
}

/// Runs the futures at most [`STORE_CONCURRENCY`] at a time; outputs keep the input order.
/// (Futures are built first: a stream `map` closure here defeats the `Send` proof handlers need.)
async fn bounded<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures).buffered(STORE_CONCURRENCY).collect().await
}
/// Every limit of what is stored and sent, checked before anything is: a refusal leaves nothing
/// behind for the CRM's retries to pile up. The first event past a limit names it.
fn check_limits(
    events: &[InboundEvent],
    delivery: &Delivery,
    max_message_bytes: usize,
) -> Result<(), IngestError> {
    for (index, event) in events.iter().enumerate() {
        if event.key.len() > MAX_EVENT_KEY_BYTES {
            return Err(IngestError::BadRequest(ParseError::BadEvent {
                index,
                problem: format!(
                    "the event's identity is {} bytes long, more than the {MAX_EVENT_KEY_BYTES} allowed",
                    event.key.len()
                ),
            }));
        }
        let depth = json_depth(event.raw.get());
        if depth > MAX_EVENT_DEPTH {
            return Err(IngestError::BadRequest(ParseError::BadEvent {
                index,
                problem: format!(
                    "the event nests {depth} levels deep, more than the {MAX_EVENT_DEPTH} allowed"
                ),
            }));
        }
        let size = event.queue_message(delivery).len();
        if size > max_message_bytes {
            return Err(IngestError::BadRequest(ParseError::BadEvent {
                index,
                problem: format!(
                    "the event makes a {size}-byte queue message, more than the {} allowed",
                    max_message_bytes
                ),
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "ingest_tests.rs"]
mod use_case_tests;
