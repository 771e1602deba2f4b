//! The stand-ins around the adoption tool: the backfill lane as Lambda's event source would feed
//! it, the state table kept in memory, and a limiter that notes whose calls it granted. The
//! tool's calls into them are counted as the world's heap, not the tool's (see `heap`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crm_sync::domain::adoption::{BackfillProgress, PlanSummary};
use crm_sync::domain::contract::{Change, ObjectKind, RecordRef};
use crm_sync::domain::crm::{RateInfo, ThrottlePolicy};
use crm_sync::ports::{
    AdoptionStore, LeaseOutcome, MessageQueue, OutgoingMessage, Permit, QueueDepth, QueueUnavailable,
    RateLimiter, RecordClaim, RecordLeases, SendFailure, Settlement, StoreUnavailable,
};
use crm_sync::testing::{MemoryQueue, MemorySyncState};

use crate::heap::world;

/// A queue held in memory: what the sync function's instances take batches from, with each
/// message's delay honoured, and its depth as SQS reports it (waiting plus in flight).
#[derive(Default)]
pub struct Lane {
    waiting: Mutex<VecDeque<(Instant, OutgoingMessage)>>,
    in_flight: AtomicU64,
}

impl Lane {
    /// Up to `max` messages whose delay has passed, now in flight until `done`.
    pub fn take(&self, max: usize) -> Vec<OutgoingMessage> {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap();
        let mut taken = Vec::new();
        let mut later = VecDeque::new();
        while taken.len() < max {
            match waiting.pop_front() {
                Some((at, message)) if at <= now => taken.push(message),
                Some(delayed) => later.push_back(delayed),
                None => break,
            }
        }
        later.append(&mut waiting);
        *waiting = later;
        self.in_flight.fetch_add(taken.len() as u64, Ordering::SeqCst);
        taken
    }

    /// A batch handled: `back` are the messages to deliver again.
    pub fn done(&self, handled: usize, back: Vec<OutgoingMessage>) {
        let mut waiting = self.waiting.lock().unwrap();
        waiting.extend(back.into_iter().map(|message| (Instant::now(), message)));
        self.in_flight.fetch_sub(handled as u64, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageQueue for Lane {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        world(async {
            let mut waiting = self.waiting.lock().unwrap();
            for message in messages {
                let at = Instant::now() + Duration::from_secs(u64::from(message.delay_secs));
                // SQS names each message it takes anew; the sender's ids are only per call.
                let mut message = message.clone();
                message.id = uuid::Uuid::new_v4().to_string();
                waiting.push_back((at, message));
            }
            Vec::new()
        })
        .await
    }
}

#[async_trait]
impl QueueDepth for Lane {
    async fn depth(&self) -> Result<u64, QueueUnavailable> {
        let waiting = self.waiting.lock().unwrap().len() as u64;
        Ok(waiting + self.in_flight.load(Ordering::SeqCst))
    }
}

/// The app inbox, in memory, as the world's.
pub struct Inbox(pub Arc<MemoryQueue>);

#[async_trait]
impl MessageQueue for Inbox {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        world(self.0.send(messages)).await
    }
}

/// Where a live change's re-queue went, by message id.
#[derive(Default)]
pub struct Requeued(pub Mutex<HashMap<String, u32>>);

#[async_trait]
impl MessageQueue for Requeued {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        let mut requeued = self.0.lock().unwrap();
        for message in messages {
            requeued.insert(message.id.clone(), message.delay_secs);
        }
        Vec::new()
    }
}

/// The state table the tool shares with the sync function, in memory, as the world's.
pub struct SharedState(pub Arc<MemorySyncState>);

#[async_trait]
impl RecordLeases for SharedState {
    async fn claim(
        &self,
        change: &Change,
        body: &str,
        writes: &BTreeMap<String, String>,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<RecordClaim, StoreUnavailable> {
        world(self.0.claim(change, body, writes, token, now_ms, lease_until_ms)).await
    }

    async fn settle(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        settlement: &Settlement,
    ) -> Result<bool, StoreUnavailable> {
        world(self.0.settle(record, token, now_ms, settlement)).await
    }

    async fn lease(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<LeaseOutcome, StoreUnavailable> {
        world(self.0.lease(record, token, now_ms, lease_until_ms)).await
    }

    async fn settle_inbound(
        &self,
        record: &RecordRef,
        token: &str,
        now_ms: i64,
        update: &crm_sync::ports::InboundUpdate,
    ) -> Result<bool, StoreUnavailable> {
        world(self.0.settle_inbound(record, token, now_ms, update)).await
    }

    async fn claim_crm_record(
        &self,
        object: ObjectKind,
        crm_id: &str,
        record_id: &str,
    ) -> Result<Option<String>, StoreUnavailable> {
        world(self.0.claim_crm_record(object, crm_id, record_id)).await
    }

    async fn record_merge(
        &self,
        object: ObjectKind,
        merged: &[String],
        survivor: &str,
        at_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        world(self.0.record_merge(object, merged, survivor, at_ms)).await
    }
}

#[async_trait]
impl AdoptionStore for SharedState {
    async fn backfill(&self, plan_id: &str) -> Result<Option<BackfillProgress>, StoreUnavailable> {
        world(self.0.backfill(plan_id)).await
    }

    async fn save_backfill(
        &self,
        progress: &BackfillProgress,
        now_ms: i64,
        held_until_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        world(self.0.save_backfill(progress, now_ms, held_until_ms)).await
    }

    async fn backfills(&self, limit: usize) -> Result<Vec<BackfillProgress>, StoreUnavailable> {
        world(self.0.backfills(limit)).await
    }

    async fn save_plan(&self, summary: &PlanSummary) -> Result<(), StoreUnavailable> {
        world(self.0.save_plan(summary)).await
    }

    async fn plan(&self, plan_id: &str) -> Result<Option<PlanSummary>, StoreUnavailable> {
        world(self.0.plan(plan_id)).await
    }

    async fn plans(&self, limit: usize) -> Result<Vec<PlanSummary>, StoreUnavailable> {
        world(self.0.plans(limit)).await
    }
}

/// Who a call slot went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The adoption tool: the plan's lookups, the links, the initial pull.
    Tool,
    /// The sync function draining the backfill lane.
    Lane,
    /// The sync function with live changes.
    Live,
}

/// Every call slot granted, when and to whom.
#[derive(Default)]
pub struct Grants(Mutex<Vec<(Instant, Caller)>>);

impl Grants {
    pub fn since(&self, start: Instant) -> Vec<(f64, Caller)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= start)
            .map(|(at, caller)| (at.duration_since(start).as_secs_f64(), *caller))
            .collect()
    }
}

/// A limiter that notes each slot it grants.
pub struct Counted {
    pub inner: Arc<dyn RateLimiter>,
    pub grants: Arc<Grants>,
    pub caller: Caller,
}

impl Counted {
    async fn noted(&self, permit: Result<Permit, StoreUnavailable>) -> Result<Permit, StoreUnavailable> {
        if let Ok(Permit::Granted { .. }) = &permit {
            world(async {
                self.grants.0.lock().unwrap().push((Instant::now(), self.caller));
            })
            .await;
        }
        permit
    }
}

#[async_trait]
impl RateLimiter for Counted {
    async fn acquire(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        let permit = self.inner.acquire(now_ms).await;
        self.noted(permit).await
    }

    async fn acquire_idle(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        let permit = self.inner.acquire_idle(now_ms).await;
        self.noted(permit).await
    }

    async fn observe(&self, rate: &RateInfo, now_ms: i64) -> Result<(), StoreUnavailable> {
        self.inner.observe(rate, now_ms).await
    }

    async fn throttled(
        &self,
        policy: ThrottlePolicy,
        wait: Duration,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        self.inner.throttled(policy, wait, now_ms).await
    }
}
