//! Ports: what the use cases need from the outside world. Each contract says what an adapter
//! MUST do; the use cases rely on nothing more.

use async_trait::async_trait;

use crate::domain::{AuthError, Delivery, InboundEvent, ParseError, ProviderId, WebhookRequest};

/// A CRM's webhook dialect: how its requests are authenticated and how its bodies are read.
pub trait WebhookProvider: Send + Sync {
    /// The provider's short name; the route is `POST /webhooks/{id}`.
    fn id(&self) -> ProviderId;

    /// MUST return `Ok` only if the request provably comes from the CRM (signature, credentials,
    /// replay window), comparing secrets in constant time. MUST NOT look at the body as data.
    fn authenticate(&self, request: &WebhookRequest, now_ms: i64) -> Result<(), AuthError>;

    /// Reads an authenticated body into events. MUST reject the whole body if any event is
    /// malformed, so that a delivery is either stored whole or not at all.
    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError>;
}

/// A storage failure; the caller answers "try again later".
#[derive(Debug, thiserror::Error)]
#[error("webhook storage is unavailable")]
pub struct StoreUnavailable(#[source] pub anyhow::Error);

/// What claiming an event for enqueueing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The event is stored and this caller holds the lease: it must enqueue it, then confirm.
    Won,
    /// An earlier delivery stored and enqueued this event: nothing to do.
    AlreadyEnqueued,
    /// Another request holds a live lease on this event; it may still fail, so do not confirm.
    HeldElsewhere,
}

/// Durable storage of raw deliveries and their events.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a raw delivery. MUST succeed without change when the same delivery is stored already.
    async fn put_delivery(&self, delivery: &Delivery, expires_at_ms: i64) -> Result<(), StoreUnavailable>;

    /// Stores `event` and leases it to `token` until `lease_until_ms`, unless it is enqueued
    /// already or leased to someone else until after `now_ms`. MUST be atomic: two concurrent
    /// callers never both win.
    async fn claim_event(
        &self,
        event: &InboundEvent,
        delivery: &Delivery,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Claim, StoreUnavailable>;

    /// Records that the event held by `token` is on the queue. MUST NOT touch an event whose
    /// lease has passed to another token.
    async fn confirm_enqueued(
        &self,
        provider: ProviderId,
        key: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable>;

    /// Gives up the lease held by `token` so that a retry may claim the event at once.
    async fn release(&self, provider: ProviderId, key: &str, token: &str) -> Result<(), StoreUnavailable>;
}

/// One message to put on a queue; `id` is unique within one `send` call.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: String,
}

/// A message that the queue did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub id: String,
    pub reason: String,
}

/// A message queue.
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Sends every message, in as few calls as the queue allows. MUST return one failure for
    /// every message that is not durably on the queue, and none for a message that is.
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure>;
}
