//! The webhook ingest use case: authenticate and parse, then store the raw delivery and send its
//! events side by side, and answer once both are done (or say that the CRM must retry).
//!
//! Ingest takes no lease and keeps no per-event record: a standard SQS queue delivers at least
//! once anyway, so a CRM's retry that sends an event again changes nothing the consumer would not
//! already meet. The consumer makes each event's effect happen once: it records each event's
//! outcome with one atomic write (only the first copy records it) and decides under the record's
//! lease against the record's state, so a copy processed later finds the change applied.

use std::collections::HashSet;
use std::sync::Arc;

use crate::domain::webhook::{json_depth, MAX_EVENT_DEPTH, MAX_EVENT_KEY_BYTES};
use crate::domain::{AuthError, Clock, Delivery, InboundEvent, ParseError, WebhookRequest};
use crate::ports::{MessageQueue, OutgoingMessage, WebhookProvider, WebhookStore};

/// Limits and retention for webhook ingest.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Bodies larger than this are refused before any work (DynamoDB items hold at most 400 KB).
    pub max_body_bytes: usize,
    /// How long raw delivery bodies are kept (DynamoDB TTL).
    pub delivery_retention_ms: i64,
    /// The largest inbound-queue message one event may become: SQS takes 256 KiB by default,
    /// and a retry or a dead letter adds attributes (attempts, the reason, up to about 1.1 KB).
    pub max_message_bytes: usize,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            delivery_retention_ms: 30 * DAY_MS,
            max_message_bytes: 256 * 1024 - 4 * 1024,
        }
    }
}

/// What an accepted delivery amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub delivery_id: String,
    pub events: usize,
    /// Events sent to the inbound queue by this request.
    pub enqueued: usize,
    /// Events this delivery held more than once (sent once). Events an earlier delivery sent are
    /// sent again and recognised by the consumer.
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
    /// Some events are on the queue, others are not yet: the CRM must retry (the consumer
    /// recognises the events sent twice).
    #[error("{pending} of {events} events could not be enqueued yet")]
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

    /// Ingests one webhook request for `provider_id`. `Ok` means the raw delivery is stored and
    /// every event in it is on the queue.
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
        // Each event's queue message, made once: checked against the limits, then sent.
        let bodies: Vec<String> = events
            .iter()
            .map(|event| event.queue_message(&delivery))
            .collect();
        check_limits(&events, &bodies, self.settings.max_message_bytes)?;
        // The same event twice in one delivery is sent once.
        let mut keys = HashSet::new();
        let messages: Vec<OutgoingMessage> = events
            .iter()
            .zip(bodies)
            .filter(|(event, _)| keys.insert(event.key.as_str()))
            .map(|(event, body)| OutgoingMessage::new(event.key.clone(), body))
            .collect();

        // One round trip: neither waits for the other.
        let (stored, failures) = futures::future::join(
            self.store
                .put_delivery(&delivery, now_ms + self.settings.delivery_retention_ms),
            self.queue.send(&messages),
        )
        .await;
        for failure in &failures {
            tracing::error!(event_key = %failure.id, reason = %failure.reason, "could not enqueue event");
        }
        if let Err(error) = stored {
            // The events that did go out are processed; the retry stores the delivery.
            return Err(IngestError::Unavailable(error.into()));
        }
        if !failures.is_empty() {
            tracing::warn!(
                delivery_id = %delivery.id,
                pending = failures.len(),
                events = events.len(),
                "some events are not enqueued yet; the CRM must retry"
            );
            return Err(IngestError::Incomplete {
                pending: failures.len(),
                events: events.len(),
            });
        }
        Ok(IngestReport {
            delivery_id: delivery.id,
            events: events.len(),
            enqueued: messages.len(),
            duplicates: events.len() - messages.len(),
        })
    }
}

/// Every limit of what is stored and sent, checked before anything is: a refusal leaves nothing
/// behind for the CRM's retries to pile up. The first event past a limit names it.
fn check_limits(
    events: &[InboundEvent],
    bodies: &[String],
    max_message_bytes: usize,
) -> Result<(), IngestError> {
    for (index, (event, body)) in events.iter().zip(bodies).enumerate() {
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
        let size = body.len();
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
