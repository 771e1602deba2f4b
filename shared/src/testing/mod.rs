//! In-memory adapters of the ports, so that a use case runs in a test in milliseconds: the sync
//! state ([`MemorySyncState`]), a queue that keeps what it is sent ([`MemoryQueue`]), a CRM that
//! keeps records by the app's id and fails on cue ([`MemoryCrm`]), a limiter that always grants
//! ([`OpenLimiter`]) and a clock the test moves ([`ManualClock`]). The integration tests prove the
//! same behaviour against moto and the sandboxes over HTTP; these prove the use cases' rules.

mod memory_state;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

pub use memory_state::MemorySyncState;

use crate::domain::crm::{
    AssociationInput, BatchResult, CrmError, CrmLink, FailureKind, InputError, InputOutcome, LinkInput,
    RateInfo, ReadResult, ThrottlePolicy, UpdateInput, UpsertInput,
};
use crate::domain::Clock;
use crate::ports::{Crm, MessageQueue, OutgoingMessage, Permit, RateLimiter, SendFailure, StoreUnavailable};

/// A use case's deadline in a test: far enough never to cut a run short.
pub fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

/// A worker over an open limiter whose retries and dead letters go to `queue`, retrying a failed
/// call `quick_retries` times a millisecond apart.
pub fn worker(
    clock: std::sync::Arc<dyn Clock>,
    queue: std::sync::Arc<MemoryQueue>,
    quick_retries: u32,
    low_priority: bool,
) -> crate::worker::Worker {
    crate::worker::Worker::new(
        std::sync::Arc::new(OpenLimiter),
        queue.clone(),
        queue,
        clock,
        crate::worker::CallSettings {
            quick_retries,
            quick_retry_base: Duration::from_millis(1),
            max_limiter_wait: Duration::from_secs(1),
            low_priority,
        },
    )
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A queue that keeps every message it is sent; `fail_sends` makes every send fail, as an SQS
/// outage would.
#[derive(Default)]
pub struct MemoryQueue {
    sent: Mutex<Vec<OutgoingMessage>>,
    fail_sends: std::sync::atomic::AtomicBool,
}

impl MemoryQueue {
    /// What was sent since the last `take`, and forgets it.
    pub fn take(&self) -> Vec<OutgoingMessage> {
        std::mem::take(&mut *locked(&self.sent))
    }

    pub fn fail_sends(&self, fail: bool) {
        self.fail_sends.store(fail, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        if self.fail_sends.load(Ordering::SeqCst) {
            return messages
                .iter()
                .map(|message| SendFailure {
                    id: message.id.clone(),
                    reason: "the queue is down, on cue".into(),
                })
                .collect();
        }
        locked(&self.sent).extend_from_slice(messages);
        Vec::new()
    }
}

#[async_trait]
impl crate::ports::QueueDepth for MemoryQueue {
    /// Messages sent and not taken yet.
    async fn depth(&self) -> Result<u64, crate::ports::QueueUnavailable> {
        Ok(locked(&self.sent).len() as u64)
    }
}

/// A limiter with no limits: every call is granted now.
#[derive(Default)]
pub struct OpenLimiter;

#[async_trait]
impl RateLimiter for OpenLimiter {
    async fn acquire(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        Ok(Permit::Granted { at_ms: now_ms })
    }

    async fn acquire_idle(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        Ok(Permit::Granted { at_ms: now_ms })
    }

    async fn observe(&self, _rate: &RateInfo, _now_ms: i64) -> Result<(), StoreUnavailable> {
        Ok(())
    }

    async fn throttled(
        &self,
        _policy: ThrottlePolicy,
        _wait: Duration,
        _now_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        Ok(())
    }
}

/// A clock that stands still until the test moves it.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One record the CRM holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRecord {
    pub crm_id: String,
    pub properties: BTreeMap<String, String>,
}

/// A link in [`MemoryCrm`]: (from object, from CRM id, to object, to CRM id).
type LinkKey = (String, String, String, String);

/// A CRM in memory: records upserted by the app's id, `max_batch` inputs a call, and failures on
/// cue: an input refused for good or for now (by its key), or the next calls throttled.
pub struct MemoryCrm {
    max_batch: usize,
    /// object → app id → record.
    records: Mutex<HashMap<String, BTreeMap<String, MemoryRecord>>>,
    next_id: AtomicUsize,
    /// key → (kind, message): how an input with that key fails.
    failing: Mutex<HashMap<String, (FailureKind, String)>>,
    throttle_next: AtomicU32,
    calls: AtomicUsize,
    /// Merges it keeps to be read (a CRM that announces none), per CRM object, oldest first,
    /// and how many a page answers.
    merges: Mutex<(BTreeMap<String, Vec<crate::domain::crm::MergeSeen>>, usize)>,
    /// Continuation pages of merges still answered before the day's budget runs out.
    merge_pages_left: Mutex<Option<u32>>,
    /// (from object, from CRM id, to object, to CRM id) → the pair's labels.
    links: Mutex<BTreeMap<LinkKey, Vec<String>>>,
}

impl MemoryCrm {
    pub fn new(max_batch: usize) -> Self {
        Self {
            max_batch,
            records: Mutex::default(),
            next_id: AtomicUsize::new(1),
            failing: Mutex::default(),
            throttle_next: AtomicU32::new(0),
            calls: AtomicUsize::new(0),
            merges: Mutex::new((BTreeMap::new(), 100)),
            links: Mutex::default(),
            merge_pages_left: Mutex::new(None),
        }
    }

    /// Puts a record a person made in the CRM (no app id) under `key`; returns its CRM id.
    pub fn put_record(&self, object: &str, key: &str, properties: BTreeMap<String, String>) -> String {
        let crm_id = format!("crm-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        locked(&self.records)
            .entry(object.to_string())
            .or_default()
            .insert(
                format!("~{key}"),
                MemoryRecord {
                    crm_id: crm_id.clone(),
                    properties,
                },
            );
        crm_id
    }

    /// Keeps `merges` of `object` to be read, `page_size` a page; its merges are read from now on.
    pub fn keep_merges(&self, object: &str, merges: Vec<crate::domain::crm::MergeSeen>, page_size: usize) {
        let mut kept = locked(&self.merges);
        let list = kept.0.entry(object.to_string()).or_default();
        list.extend(merges);
        list.sort_by_key(|seen| seen.at_ms);
        kept.1 = page_size.max(1);
    }

    /// After `pages` more continuation pages of merges, the day's budget is spent (`None`: never).
    pub fn spend_budget_after_merge_pages(&self, pages: Option<u32>) {
        *locked(&self.merge_pages_left) = pages;
    }

    /// Inputs with `key` fail with `kind` from now on.
    pub fn fail(&self, key: &str, kind: FailureKind, message: &str) {
        locked(&self.failing).insert(key.to_string(), (kind, message.to_string()));
    }

    /// Inputs with `key` succeed again.
    pub fn heal(&self, key: &str) {
        locked(&self.failing).remove(key);
    }

    /// The next `calls` calls are answered with a burst throttle.
    pub fn throttle_next(&self, calls: u32) {
        self.throttle_next.store(calls, Ordering::SeqCst);
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The record of `object` the app's `key` names.
    pub fn record(&self, object: &str, key: &str) -> Option<MemoryRecord> {
        locked(&self.records).get(object)?.get(key).cloned()
    }

    /// Changes a record as a person in the CRM would, with no webhook.
    pub fn edit(&self, object: &str, key: &str, property: &str, value: &str) {
        if let Some(record) = locked(&self.records)
            .get_mut(object)
            .and_then(|records| records.get_mut(key))
        {
            record.properties.insert(property.to_string(), value.to_string());
        }
    }

    /// Merges the record of the app's `loser` into that of `survivor`, as a person in the CRM
    /// would: the loser's record is gone (and its id with it). Returns both CRM ids.
    pub fn merge(&self, object: &str, loser: &str, survivor: &str) -> (String, String) {
        let mut records = locked(&self.records);
        let records = records.entry(object.to_string()).or_default();
        let gone = records.remove(loser).expect("the loser exists");
        let kept = records.get(survivor).expect("the survivor exists");
        (gone.crm_id, kept.crm_id.clone())
    }

    /// Deletes the record of the app's `key`, as a person in the CRM would.
    pub fn delete(&self, object: &str, key: &str) {
        locked(&self.records)
            .entry(object.to_string())
            .or_default()
            .remove(key);
    }

    /// The record with CRM id `crm_id`, whatever app id it holds.
    pub fn by_crm_id(&self, object: &str, crm_id: &str) -> Option<MemoryRecord> {
        locked(&self.records)
            .get(object)?
            .values()
            .find(|record| record.crm_id == crm_id)
            .cloned()
    }

    /// The links from `from` records to `to` records: (from CRM id, to CRM id) → labels, sorted.
    pub fn links(&self, from: &str, to: &str) -> BTreeMap<(String, String), Vec<String>> {
        locked(&self.links)
            .iter()
            .filter(|((f, _, t, _), _)| f == from && t == to)
            .map(|((_, from_id, _, to_id), labels)| {
                let mut labels = labels.clone();
                labels.sort();
                ((from_id.clone(), to_id.clone()), labels)
            })
            .collect()
    }

    /// The app's id of the record with CRM id `crm_id`.
    pub fn app_id_of(&self, object: &str, crm_id: &str) -> Option<String> {
        locked(&self.records)
            .get(object)?
            .iter()
            .find(|(_, record)| record.crm_id == crm_id)
            .map(|(key, _)| key.clone())
    }

    /// How many records of `object` it holds.
    pub fn count(&self, object: &str) -> usize {
        locked(&self.records).get(object).map_or(0, BTreeMap::len)
    }

    fn call(&self) -> Result<(), CrmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let throttled = self
            .throttle_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if throttled {
            return Err(CrmError::Throttled {
                policy: ThrottlePolicy::Burst,
                retry_after: Some(Duration::from_millis(1)),
                message: "throttled on cue".into(),
                rate: RateInfo::default(),
            });
        }
        Ok(())
    }

    fn failure(&self, key: &str) -> Option<InputOutcome> {
        locked(&self.failing).get(key).map(|(kind, message)| {
            InputOutcome::Failed(InputError {
                kind: *kind,
                code: "ON_CUE".into(),
                message: message.clone(),
                existing_id: None,
            })
        })
    }

    fn result(outcomes: Vec<InputOutcome>) -> BatchResult {
        BatchResult {
            outcomes,
            rate: RateInfo::default(),
            call: "memory".into(),
        }
    }
}

#[async_trait]
impl Crm for MemoryCrm {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    async fn upsert(
        &self,
        object: &str,
        _id_property: &str,
        inputs: &[UpsertInput],
    ) -> Result<BatchResult, CrmError> {
        self.call()?;
        let mut records = locked(&self.records);
        let records = records.entry(object.to_string()).or_default();
        let outcomes = inputs
            .iter()
            .map(|input| {
                if let Some(failed) = self.failure(&input.key) {
                    return failed;
                }
                let created = !records.contains_key(&input.key);
                let record = records.entry(input.key.clone()).or_insert_with(|| MemoryRecord {
                    crm_id: self.next_id.fetch_add(1, Ordering::SeqCst).to_string(),
                    properties: BTreeMap::new(),
                });
                record.properties.extend(input.properties.clone());
                InputOutcome::Done {
                    crm_id: record.crm_id.clone(),
                    created,
                }
            })
            .collect();
        Ok(Self::result(outcomes))
    }

    async fn update(&self, object: &str, inputs: &[UpdateInput]) -> Result<BatchResult, CrmError> {
        self.call()?;
        let mut records = locked(&self.records);
        let records = records.entry(object.to_string()).or_default();
        let outcomes = inputs
            .iter()
            .map(
                |input| match records.values_mut().find(|r| r.crm_id == input.crm_id) {
                    Some(record) => {
                        record.properties.extend(input.properties.clone());
                        InputOutcome::Done {
                            crm_id: input.crm_id.clone(),
                            created: false,
                        }
                    }
                    None => InputOutcome::Failed(InputError {
                        kind: FailureKind::Permanent,
                        code: "NOT_FOUND".into(),
                        message: "no such record".into(),
                        existing_id: None,
                    }),
                },
            )
            .collect();
        Ok(Self::result(outcomes))
    }

    async fn archive(&self, object: &str, crm_ids: &[String]) -> Result<BatchResult, CrmError> {
        self.call()?;
        let mut records = locked(&self.records);
        let records = records.entry(object.to_string()).or_default();
        records.retain(|_, record| !crm_ids.contains(&record.crm_id));
        Ok(Self::result(
            crm_ids
                .iter()
                .map(|id| InputOutcome::Done {
                    crm_id: id.clone(),
                    created: false,
                })
                .collect(),
        ))
    }

    async fn find(
        &self,
        object: &str,
        property: &str,
        values: &[String],
        _properties: &[String],
    ) -> Result<crate::domain::crm::FindResult, CrmError> {
        self.call()?;
        let records = locked(&self.records);
        let all = records.get(object);
        let matches = values
            .iter()
            .map(|value| {
                all.into_iter()
                    .flatten()
                    .filter(|(key, record)| match record.properties.get(property) {
                        Some(held) => held.eq_ignore_ascii_case(value),
                        // Records upserted here are keyed by the app's id.
                        None => !key.starts_with('~') && *key == value,
                    })
                    .map(|(key, record)| {
                        let mut values = record.properties.clone();
                        if !key.starts_with('~') {
                            values.entry(property.to_string()).or_insert_with(|| key.clone());
                        }
                        crate::domain::adoption::Found {
                            crm_id: record.crm_id.clone(),
                            values,
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(crate::domain::crm::FindResult {
            matches,
            rate: RateInfo::default(),
            call: "memory".into(),
        })
    }

    fn merges_are_read(&self, object: &str) -> bool {
        locked(&self.merges).0.contains_key(object)
    }

    async fn merges_since(
        &self,
        object: &str,
        since_ms: i64,
        next: Option<&str>,
    ) -> Result<crate::domain::crm::MergePage, CrmError> {
        self.call()?;
        if next.is_some() {
            let mut left = locked(&self.merge_pages_left);
            match left.as_mut() {
                Some(0) => {
                    return Err(CrmError::Throttled {
                        policy: ThrottlePolicy::Daily,
                        retry_after: None,
                        message: "the day's budget is spent, on cue".into(),
                        rate: RateInfo::default(),
                    })
                }
                Some(pages) => *pages -= 1,
                None => {}
            }
        }
        let kept = locked(&self.merges);
        let after: Vec<_> = kept
            .0
            .get(object)
            .into_iter()
            .flatten()
            .filter(|seen| seen.at_ms > since_ms)
            .cloned()
            .collect();
        let offset: usize = next.and_then(|next| next.parse().ok()).unwrap_or(0);
        let end = (offset + kept.1).min(after.len());
        Ok(crate::domain::crm::MergePage {
            merges: after[offset.min(end)..end].to_vec(),
            next: (end < after.len()).then(|| end.to_string()),
            rate: RateInfo::default(),
            call: "memory".into(),
        })
    }

    async fn read(
        &self,
        object: &str,
        crm_ids: &[String],
        _properties: &[String],
    ) -> Result<ReadResult, CrmError> {
        self.call()?;
        let records = locked(&self.records);
        let found = records.get(object);
        Ok(ReadResult {
            records: crm_ids
                .iter()
                .map(|id| {
                    found
                        .and_then(|records| records.values().find(|r| r.crm_id == *id))
                        .map(|record| record.properties.clone())
                })
                .collect(),
            rate: RateInfo::default(),
            call: "memory".into(),
        })
    }

    /// Links pairs; a pair whose `from_id` is failing (see [`MemoryCrm::fail`]) fails.
    async fn link(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        self.call()?;
        let mut links = locked(&self.links);
        let outcomes = pairs
            .iter()
            .map(|pair| {
                if let Some(failed) = self.failure(&pair.from_id) {
                    return failed;
                }
                let key = (
                    link.from_object.clone(),
                    pair.from_id.clone(),
                    link.to_object.clone(),
                    pair.to_id.clone(),
                );
                let labels = links.entry(key).or_default();
                labels.retain(|label| !pair.drop_labels.contains(label));
                for label in &pair.labels {
                    if !labels.contains(label) {
                        labels.push(label.clone());
                    }
                }
                pair.done()
            })
            .collect();
        Ok(Self::result(outcomes))
    }

    async fn unlink(&self, link: &CrmLink, pairs: &[LinkInput]) -> Result<BatchResult, CrmError> {
        self.call()?;
        let mut links = locked(&self.links);
        for pair in pairs {
            links.remove(&(
                link.from_object.clone(),
                pair.from_id.clone(),
                link.to_object.clone(),
                pair.to_id.clone(),
            ));
        }
        Ok(Self::result(pairs.iter().map(|pair| pair.done()).collect()))
    }

    async fn associate(
        &self,
        _from: &str,
        _to: &str,
        pairs: &[AssociationInput],
    ) -> Result<BatchResult, CrmError> {
        self.call()?;
        Ok(Self::result(pairs.iter().map(|pair| pair.done()).collect()))
    }
}

/// The webhook event journal in memory: each event's outcome, recorded once.
#[derive(Default)]
pub struct MemoryJournal {
    outcomes: Mutex<HashMap<(String, String), (crate::ports::EventOutcome, String)>>,
}

impl MemoryJournal {
    /// Forgets an event's outcome, as a read that does not see it yet would (DynamoDB's
    /// eventually consistent reads, or a write still on its way).
    pub fn forget(&self, provider: &str, key: &str) {
        locked(&self.outcomes).remove(&(provider.to_string(), key.to_string()));
    }

    /// The outcome and detail recorded for an event.
    pub fn outcome(&self, provider: &str, key: &str) -> Option<(crate::ports::EventOutcome, String)> {
        locked(&self.outcomes)
            .get(&(provider.to_string(), key.to_string()))
            .cloned()
    }
}

#[async_trait]
impl crate::ports::EventJournal for MemoryJournal {
    async fn processed(
        &self,
        provider: &str,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreUnavailable> {
        let outcomes = locked(&self.outcomes);
        Ok(keys
            .iter()
            .filter(|key| {
                outcomes
                    .get(&(provider.to_string(), (*key).clone()))
                    .is_some_and(|(outcome, _)| *outcome != crate::ports::EventOutcome::Failed)
            })
            .cloned()
            .collect())
    }

    async fn record_outcome(
        &self,
        event: &crate::domain::inbound::InboundMessage,
        outcome: crate::ports::EventOutcome,
        detail: &str,
        _now_ms: i64,
    ) -> Result<bool, StoreUnavailable> {
        let mut outcomes = locked(&self.outcomes);
        let slot = (event.provider.clone(), event.event_key.clone());
        if outcomes
            .get(&slot)
            .is_some_and(|(recorded, _)| *recorded != crate::ports::EventOutcome::Failed)
        {
            return Ok(false);
        }
        outcomes.insert(slot, (outcome, detail.to_string()));
        Ok(true)
    }
}

/// The webhook store in memory: raw deliveries, each once by id; `fail_deliveries` makes storing a delivery fail, as a DynamoDB outage would.
#[derive(Default)]
pub struct MemoryWebhookStore {
    deliveries: Mutex<std::collections::HashSet<String>>,
    fail_deliveries: std::sync::atomic::AtomicBool,
}

impl MemoryWebhookStore {
    pub fn fail_deliveries(&self, fail: bool) {
        self.fail_deliveries.store(fail, Ordering::SeqCst);
    }

    /// How many distinct deliveries it holds.
    pub fn deliveries(&self) -> usize {
        locked(&self.deliveries).len()
    }
}

#[async_trait]
impl crate::ports::WebhookStore for MemoryWebhookStore {
    async fn put_delivery(
        &self,
        delivery: &crate::domain::webhook::Delivery,
        _expires_at_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        if self.fail_deliveries.load(Ordering::SeqCst) {
            return Err(StoreUnavailable(anyhow::anyhow!("the store is down, on cue")));
        }
        locked(&self.deliveries).insert(delivery.id.clone());
        Ok(())
    }
}
