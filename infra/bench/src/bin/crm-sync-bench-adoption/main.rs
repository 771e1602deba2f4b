//! `cargo run --release -p crm-sync-bench --bin crm-sync-bench-adoption`: adoption day at HubSpot
//! Pro limits, side by side at two sizes. An app of N contacts meets a CRM that already holds
//! most of them (some with the app's id, some only by email, some shared) and N/2 others. The
//! adoption tool plans and backfills it while the sync function, invoked as Lambda invokes it,
//! drains the backfill lane at the lowest priority and handles live changes at a steady rate.
//!
//! It reports the backfill's throughput as a share of the ceiling live changes leave, the live
//! changes' latency with and without the backfill, and the tool's peak heap for the plan and the
//! backfill at N/10 and N. It checks the outcome too (every record in the CRM once, the links
//! made, the conflicts left, the CRM-owned values pulled once) and fails when it is wrong.
//!
//! Options: `--records N` (100000), `--live-rate R` (live changes a second, 4),
//! `--baseline K` (live changes without the backfill, 200), `--out DIR` (docs/bench).
//!
//! The CRM is the HubSpot sandbox over HTTP; the rate limiter is the production one in DynamoDB
//! (moto). The state table, the backfill lane and the app inbox are kept in memory: moto writes a
//! few hundred items a second, and 100,000 records would measure moto.

mod harness;
mod heap;
#[path = "../../machine.rs"]
mod machine;

#[global_allocator]
static HEAP: heap::Accounting = heap::Accounting;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::adapters::dynamodb::{DynamoDbRateLimiter, LimiterSettings};
use crm_sync::adapters::hubspot::HubSpotClient;
use crm_sync::adapters::plan_files::{self, InputFormat, PlanFiles};
use crm_sync::adoption::{Backfill, BackfillSettings, Planner};
use crm_sync::config::Env;
use crm_sync::domain::adoption::{cost, BackfillPhase, BackfillProgress, Budget, Cost, PlanCounts};
use crm_sync::domain::contract::ObjectKind;
use crm_sync::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crm_sync::domain::{Clock, SystemClock};
use crm_sync::entrypoints::sync_sqs::SyncHandler;
use crm_sync::ports::{MessageQueue, RateLimiter};
use crm_sync::sync::{SyncService, SyncSettings};
use crm_sync::testing::{MemoryQueue, MemorySyncState};
use crm_sync::worker::Worker;
use crm_sync_local::moto::Moto;
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use harness::{Caller, Counted, Grants, Inbox, Lane, Requeued, SharedState};
use hubspot_sandbox::{Sandbox, SandboxConfig};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::json;

/// HubSpot Pro: 190 calls in any 10 s.
const CEILING_CALLS_PER_SEC: f64 = 19.0;

/// The backfill lane's batch size (the template's `SyncBatchSize` default) and its maximum
/// concurrency (`BackfillMaximumConcurrency`).
const LAMBDA_BATCH: usize = 1000;
const LANE_INSTANCES: usize = 2;

struct Args {
    records: usize,
    live_rate: f64,
    baseline: usize,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        records: 100_000,
        live_rate: 4.0,
        baseline: 200,
        out: PathBuf::from("docs/bench"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().context("--records")?,
            "--live-rate" => args.live_rate = value.parse().context("--live-rate")?,
            "--baseline" => args.baseline = value.parse().context("--baseline")?,
            "--out" => args.out = PathBuf::from(value),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(args.records >= 1000, "--records must be at least 1000");
    anyhow::ensure!(args.live_rate > 0.0, "--live-rate must be above 0");
    Ok(args)
}

/// What each app record is, by its index: per hundred, 10 already in the CRM with the app's id
/// and the same values, 10 there with another last name, 20 there by email only (to link), 2
/// sharing one email in the app, 1 whose email a CRM contact holds under another app id
/// (HubSpot keeps one contact per email), 57 new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unchanged,
    Update,
    Link,
    SharedInApp,
    TakenInCrm,
    Create,
}

fn kind(i: usize) -> Kind {
    match i % 100 {
        0..=9 => Kind::Unchanged,
        10..=19 => Kind::Update,
        20..=39 => Kind::Link,
        40 | 41 => Kind::SharedInApp,
        42 => Kind::TakenInCrm,
        _ => Kind::Create,
    }
}

fn email(i: usize) -> String {
    match kind(i) {
        Kind::SharedInApp => format!("shared-{}@example.com", i / 100),
        _ => format!("person-{i}@example.com"),
    }
}

/// The counts the plan must arrive at.
fn expected(records: usize) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for i in 0..records {
        let name = match kind(i) {
            Kind::Unchanged => "unchanged",
            Kind::Update => "update",
            Kind::Link => "link",
            Kind::SharedInApp | Kind::TakenInCrm => "conflict",
            Kind::Create => "create",
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// The CRM before adoption day: the app's people it already knows, and half as many others.
fn seed(sandbox: &Sandbox, records: usize) -> anyhow::Result<()> {
    let contact = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    for i in 0..records {
        let (first, last) = ("Ada".to_string(), format!("L{i}"));
        let made = match kind(i) {
            Kind::Unchanged => vec![contact(&[
                ("crm_sync_app_id", format!("app-{i}")),
                ("email", email(i)),
                ("firstname", first),
                ("lastname", last),
                ("lifecyclestage", "customer".into()),
            ])],
            Kind::Update => vec![contact(&[
                ("crm_sync_app_id", format!("app-{i}")),
                ("email", email(i)),
                ("firstname", first),
                ("lastname", format!("Old{i}")),
                ("lifecyclestage", "customer".into()),
            ])],
            Kind::Link => vec![contact(&[
                ("email", email(i)),
                ("firstname", first),
                ("lastname", last),
                ("lifecyclestage", "lead".into()),
            ])],
            Kind::TakenInCrm => vec![contact(&[
                ("crm_sync_app_id", format!("legacy-{i}")),
                ("email", email(i)),
                ("lastname", "Legacy".into()),
            ])],
            Kind::SharedInApp | Kind::Create => Vec::new(),
        };
        for properties in made {
            sandbox
                .create("contacts", properties)
                .map_err(|failure| anyhow::anyhow!("seeding the sandbox: {failure:?}"))?;
        }
    }
    for j in 0..records / 2 {
        sandbox
            .create(
                "contacts",
                contact(&[
                    ("email", format!("other-{j}@example.org")),
                    ("lastname", "Other".into()),
                ]),
            )
            .map_err(|failure| anyhow::anyhow!("seeding the sandbox: {failure:?}"))?;
    }
    Ok(())
}

/// The app's export: one contact.upsert per record, dated a day ago.
fn write_input(path: &Path, records: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let at = SystemClock.now_ms() - 86_400_000;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..records {
        let line = json!({
            "version": 1, "type": "contact.upsert", "record_id": format!("app-{i}"),
            "idempotency_id": format!("adopt-{i}"), "changed_at": at,
            "data": {"email": email(i), "first_name": "Ada", "last_name": format!("L{i}")}
        });
        writeln!(file, "{line}")?;
    }
    file.flush()?;
    Ok(())
}

/// What every part of one run shares.
#[derive(Clone)]
struct Setup {
    moto: String,
    sandbox_url: String,
    token: String,
    rate_table: String,
    limiter_key: String,
    limits: LimiterSettings,
    sync: SyncSettings,
    backfill_arn: String,
    outbound_arn: String,
    grants: Arc<Grants>,
    state: Arc<MemorySyncState>,
    lane: Arc<Lane>,
    inbox: Arc<MemoryQueue>,
    dead_letters: Arc<MemoryQueue>,
}

impl Setup {
    async fn limiter(&self, caller: Caller) -> Arc<dyn RateLimiter> {
        let aws = load_sdk_config(&AwsTarget::local(&self.moto), CallBudget::BACKGROUND).await;
        Arc::new(Counted {
            inner: Arc::new(DynamoDbRateLimiter::new(
                aws_sdk_dynamodb::Client::new(&aws),
                &self.rate_table,
                &self.limiter_key,
                self.limits.clone(),
            )),
            grants: self.grants.clone(),
            caller,
        })
    }

    fn crm(&self) -> anyhow::Result<Arc<HubSpotClient>> {
        Ok(Arc::new(HubSpotClient::new(
            &self.sandbox_url,
            secrecy::SecretString::from(self.token.clone()),
            Duration::from_secs(20),
        )?))
    }

    fn budget(&self) -> Budget {
        crm_sync::entrypoints::adoption_tool::budget_of(&self.limits, 100)
    }

    /// One instance of the sync function: live changes, or the backfill lane at the lowest
    /// priority; each instance has its own limiter client, as separate Lambda instances do.
    async fn sync_function(&self, caller: Caller, requeued: Arc<Requeued>) -> anyhow::Result<SyncHandler> {
        let limiter = self.limiter(caller).await;
        let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING)?);
        let crm = self.crm()?;
        let service = |retry: Arc<dyn MessageQueue>, low_priority: bool| {
            let mut settings = self.sync.clone();
            settings.low_priority = low_priority;
            SyncService::new(
                mapping.clone(),
                crm.clone(),
                self.state.clone(),
                limiter.clone(),
                retry,
                self.dead_letters.clone(),
                Arc::new(SystemClock),
                settings,
            )
        };
        let live = service(requeued, false);
        let backfill = service(self.lane.clone(), true);
        Ok(SyncHandler::new(live, None, None, None)
            .with_backfill_lane(Some((self.backfill_arn.clone(), backfill))))
    }
}

fn sqs_event(
    arn: &str,
    messages: impl IntoIterator<Item = (String, String, Vec<(String, String)>)>,
) -> LambdaEvent<SqsEvent> {
    let mut event = SqsEvent::default();
    for (id, body, attributes) in messages {
        let mut message = SqsMessage::default();
        message.message_id = Some(id);
        message.body = Some(body);
        message.event_source_arn = Some(arn.to_string());
        for (name, value) in attributes {
            let mut attribute = SqsMessageAttribute::default();
            attribute.string_value = Some(value);
            attribute.data_type = Some("String".into());
            message.message_attributes.insert(name, attribute);
        }
        event.records.push(message);
    }
    let mut context = Context::default();
    context.deadline = (SystemClock.now_ms() + 60_000) as u64;
    LambdaEvent::new(event, context)
}

/// The backfill lane's event source: `instances` at a time, batches of the sync batch size.
fn drain_lane(
    setup: &Setup,
    instances: usize,
    batch: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    (0..instances)
        .map(|_| {
            let (setup, stop) = (setup.clone(), stop.clone());
            tokio::spawn(async move {
                let function = setup.sync_function(Caller::Lane, Arc::default()).await?;
                while !stop.load(Ordering::SeqCst) {
                    let taken = setup.lane.take(batch);
                    if taken.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let handled = taken.len();
                    let by_id: HashMap<String, _> = taken.iter().map(|m| (m.id.clone(), m.clone())).collect();
                    let event = sqs_event(
                        &setup.backfill_arn,
                        taken.into_iter().map(|m| (m.id, m.body, m.attributes)),
                    );
                    let response = function.handle(event).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    let back = response
                        .batch_item_failures
                        .into_iter()
                        .filter_map(|failure| by_id.get(&failure.item_identifier).cloned())
                        .collect();
                    setup.lane.done(handled, back);
                }
                Ok(())
            })
        })
        .collect()
}

/// Live changes at `rate` a second, each handed to the sync function on its own (as a batch of
/// one) the moment it is sent, until `stop` or `count`; returns (when sent, latency) of each,
/// the latency being until the change was written, re-queues included.
async fn live_changes(
    setup: &Setup,
    label: &str,
    rate: f64,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(Instant, Duration)>> {
    let requeued = Arc::new(Requeued::default());
    let function = Arc::new(setup.sync_function(Caller::Live, requeued.clone()).await?);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    let mut i = 0;
    while count.map_or(!stop.load(Ordering::SeqCst), |count| i < count) {
        ticks.tick().await;
        let (function, requeued, arn) = (function.clone(), requeued.clone(), setup.outbound_arn.clone());
        let id = format!("live-{label}-{i}");
        let body = json!({
            "version": 1, "type": "contact.upsert", "record_id": id,
            "idempotency_id": format!("{id}-1"), "changed_at": SystemClock.now_ms(),
            "data": {"email": format!("{id}@example.net"), "first_name": "Live"}
        })
        .to_string();
        sent.push(tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let response = function
                    .handle(sqs_event(&arn, [(id.clone(), body.clone(), Vec::new())]))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let delay = requeued.0.lock().unwrap().remove(&id);
                match (response.batch_item_failures.is_empty(), delay) {
                    (true, None) => return anyhow::Ok((started, started.elapsed())),
                    (_, delay) => {
                        tokio::time::sleep(
                            Duration::from_secs(u64::from(delay.unwrap_or(0)))
                                .max(Duration::from_millis(100)),
                        )
                        .await
                    }
                }
            }
        }));
        i += 1;
    }
    let mut latencies = Vec::new();
    for change in sent {
        latencies.push(change.await??);
    }
    Ok(latencies)
}

/// Runs `work` on a thread of its own whose allocations count as the tool's.
async fn on_tool_thread<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    on_thread(true, work).await
}

/// Runs `work` on a thread and runtime of its own, as a Lambda instance runs apart from the
/// others: the live changes' instance does not wait for a worker thread busy with a batch.
async fn on_own_thread<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    on_thread(false, work).await
}

async fn on_thread<T, F, Fut>(tool: bool, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let thread = std::thread::spawn(move || {
        if tool {
            heap::enter_tool();
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the tool's thread panicked"))?
}

struct PlanRun {
    seconds: f64,
    peak_heap: i64,
    counts: PlanCounts,
    cost: Cost,
    plan_id: String,
}

async fn plan(setup: &Setup, input: PathBuf, dir: PathBuf) -> anyhow::Result<PlanRun> {
    let setup = setup.clone();
    on_tool_thread(move || async move {
        let worker = tool_worker(&setup).await;
        let planner = Planner::new(Arc::new(Mapping::parse(DEFAULT_MAPPING)?), setup.crm()?, worker);
        heap::take_tool_peak();
        let started = Instant::now();
        let format = InputFormat::of(&input, ObjectKind::Contact);
        let shared = plan_files::shared_emails(&input, format, &dir.join("work"))?;
        let mut files = PlanFiles::create(&dir)?;
        let records = plan_files::read_input(&input, format, SystemClock.now_ms())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let counts = planner.plan(records, &shared, &mut files, deadline).await?;
        files.finish()?;
        std::fs::remove_dir_all(dir.join("work")).ok();
        let seconds = started.elapsed().as_secs_f64();
        let peak_heap = heap::take_tool_peak();
        let budget = Budget {
            left_today: counts.daily_remaining,
            ..setup.budget()
        };
        Ok(PlanRun {
            seconds,
            peak_heap,
            cost: cost(&counts, &budget),
            counts,
            plan_id: format!("bench-{}", setup.limiter_key),
        })
    })
    .await
}

async fn tool_worker(setup: &Setup) -> Worker {
    // As the adoption tool: only call slots live changes leave idle.
    let mut calls = SyncSettings::default().call_settings();
    calls.low_priority = true;
    Worker::new(
        setup.limiter(Caller::Tool).await,
        setup.lane.clone(),
        setup.lane.clone(),
        Arc::new(SystemClock),
        calls,
    )
}

struct BackfillRun {
    seconds: f64,
    peak_heap: i64,
    progress: BackfillProgress,
    /// When each phase was first seen, in seconds from the start.
    phases: Vec<(String, f64)>,
}

async fn backfill(setup: &Setup, planned: &PlanRun, dir: PathBuf) -> anyhow::Result<BackfillRun> {
    let setup = setup.clone();
    let (plan_id, counts) = (planned.plan_id.clone(), planned.counts.clone());
    on_tool_thread(move || async move {
        let state = Arc::new(SharedState(setup.state.clone()));
        let run = Backfill::new(
            Arc::new(Mapping::parse(DEFAULT_MAPPING)?),
            setup.crm()?,
            tool_worker(&setup).await,
            setup.lane.clone(),
            setup.lane.clone(),
            Some(Arc::new(Inbox(setup.inbox.clone()))),
            state.clone(),
            state,
            Arc::new(SystemClock),
            BackfillSettings::default(),
        );
        let reader = || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<_>> + Send>> {
            Ok(Box::new(plan_files::read_plan(&dir)?))
        };
        heap::take_tool_peak();
        let started = Instant::now();
        let phases: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::with_capacity(8));
        let seen = |progress: &BackfillProgress| {
            let name = format!("{:?}", progress.phase).to_lowercase();
            let mut phases = phases.lock().unwrap();
            if phases.last().map(|(last, _)| last != &name).unwrap_or(true) && phases.len() < 8 {
                phases.push((name, started.elapsed().as_secs_f64()));
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let progress = run.run(&plan_id, &counts, &reader, deadline, &seen).await?;
        Ok(BackfillRun {
            seconds: started.elapsed().as_secs_f64(),
            peak_heap: heap::take_tool_peak(),
            progress,
            phases: phases.into_inner().unwrap(),
        })
    })
    .await
}

/// The outcome in the CRM and the app inbox, checked against what the plan promised.
fn check(
    sandbox: &Sandbox,
    setup: &Setup,
    records: usize,
    run: &BackfillRun,
    planned: &PlanRun,
) -> anyhow::Result<()> {
    let want = expected(records);
    let counts = &planned.counts;
    let got = BTreeMap::from([
        ("create", counts.create),
        ("update", counts.update),
        ("unchanged", counts.unchanged),
        ("link", counts.link),
        ("conflict", counts.conflict),
    ]);
    anyhow::ensure!(got == want, "the plan found {got:?}, the data holds {want:?}");
    let progress = &run.progress;
    anyhow::ensure!(
        progress.phase == BackfillPhase::Done,
        "the backfill stopped: {:?}",
        progress.stopped
    );
    anyhow::ensure!(
        progress.linked == counts.link,
        "{} linked of {}",
        progress.linked,
        counts.link
    );
    let mut by_app_id: HashMap<String, u32> = HashMap::new();
    let mut by_email: HashMap<String, u32> = HashMap::new();
    for contact in sandbox.records("contacts") {
        if let Some(id) = contact
            .properties
            .get("crm_sync_app_id")
            .filter(|id| id.starts_with("app-"))
        {
            *by_app_id.entry(id.clone()).or_default() += 1;
        }
        if let Some(email) = contact.properties.get("email") {
            *by_email.entry(email.clone()).or_default() += 1;
        }
    }
    let written = (counts.create + counts.update + counts.unchanged + counts.link) as usize;
    anyhow::ensure!(
        by_app_id.len() == written,
        "{} app records in the CRM, {written} planned",
        by_app_id.len()
    );
    anyhow::ensure!(
        by_app_id.values().all(|n| *n == 1),
        "an app id is on two CRM contacts"
    );
    for i in 0..records {
        let id = format!("app-{i}");
        match kind(i) {
            Kind::SharedInApp | Kind::TakenInCrm => {
                anyhow::ensure!(
                    !by_app_id.contains_key(&id),
                    "{id} was written though it waits for a person"
                )
            }
            Kind::Link | Kind::Create => {
                anyhow::ensure!(
                    by_email.get(&email(i)) == Some(&1),
                    "{} is on {:?} contacts",
                    email(i),
                    by_email.get(&email(i))
                )
            }
            _ => {}
        }
    }
    let pulled: Vec<_> = setup.inbox.take();
    let distinct: HashSet<String> = pulled
        .iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.body).ok())
        .filter_map(|body| body["record_id"].as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(
        pulled.len() as u64 == counts.crm_owned_records && distinct.len() == pulled.len(),
        "{} CRM-owned values reached the app ({} distinct), {} planned",
        pulled.len(),
        distinct.len(),
        counts.crm_owned_records
    );
    let dead = setup.dead_letters.take();
    anyhow::ensure!(
        dead.is_empty(),
        "{} dead-lettered, the first: {:?}",
        dead.len(),
        dead.first()
    );
    Ok(())
}

fn percentile(latencies: &[Duration], share: f64) -> f64 {
    let mut sorted: Vec<f64> = latencies.iter().map(|l| l.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct SizeRun {
    records: usize,
    /// The limiter's interval between two calls.
    pace_interval_ms: f64,
    planned: PlanRun,
    backfilled: BackfillRun,
    /// Calls granted during the backfill: (seconds from its start, to whom).
    grants: Vec<(f64, Caller)>,
    live: Vec<(f64, Duration)>,
}

#[allow(clippy::too_many_arguments)]
async fn run_size(
    stack: &LocalStack,
    moto: &str,
    records: usize,
    args: &Args,
    work: &Path,
) -> anyhow::Result<(SizeRun, Option<Vec<Duration>>)> {
    let sandbox = Sandbox::start("127.0.0.1:0", SandboxConfig::default()).await?;
    let lookup = stack.sync_env.clone();
    let config = Env(move |name: &str| lookup.get(name).cloned()).sync()?;
    let setup = Setup {
        moto: moto.to_string(),
        sandbox_url: sandbox.url(),
        token: sandbox.token(),
        rate_table: stack.resources.table("RateLimitTable").to_string(),
        limiter_key: format!("hubspot-{records}"),
        limits: config.crm.limiter.clone(),
        sync: config.sync.clone(),
        backfill_arn: stack.resources.queue("BackfillQueue").arn.clone(),
        outbound_arn: stack.resources.queue("OutboundQueue").arn.clone(),
        grants: Arc::default(),
        state: Arc::default(),
        lane: Arc::default(),
        inbox: Arc::default(),
        dead_letters: Arc::default(),
    };
    eprintln!("{records} records: seeding the CRM");
    seed(&sandbox, records)?;
    let input = work.join(format!("app-{records}.jsonl"));
    write_input(&input, records)?;
    let baseline = if records == args.records {
        eprintln!(
            "{records} records: {} live changes without a backfill",
            args.baseline
        );
        let (setup, rate, count) = (setup.clone(), args.live_rate, args.baseline);
        let latencies = on_own_thread(move || async move {
            live_changes(&setup, "alone", rate, Some(count), Arc::default()).await
        })
        .await?;
        Some(latencies.into_iter().map(|(_, latency)| latency).collect())
    } else {
        None
    };
    eprintln!("{records} records: plan");
    let dir = work.join(format!("plan-{records}"));
    let planned = plan(&setup, input, dir.clone()).await?;
    eprintln!(
        "{records} records: backfill, {} live changes a second beside it",
        args.live_rate
    );
    let stop = Arc::new(AtomicBool::new(false));
    let drains = drain_lane(&setup, LANE_INSTANCES, LAMBDA_BATCH, stop.clone());
    let live_stop = Arc::new(AtomicBool::new(false));
    let live = {
        let (setup, live_stop, rate) = (setup.clone(), live_stop.clone(), args.live_rate);
        tokio::spawn(on_own_thread(move || async move {
            live_changes(&setup, "beside", rate, None, live_stop).await
        }))
    };
    let started = Instant::now();
    let backfilled = backfill(&setup, &planned, dir).await;
    live_stop.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for drain in drains {
        drain.await??;
    }
    let live = live.await??;
    let backfilled = backfilled?;
    check(&sandbox, &setup, records, &backfilled, &planned)?;
    let run = SizeRun {
        records,
        pace_interval_ms: setup.limits.interval_ms(),
        grants: setup.grants.since(started),
        live: live
            .into_iter()
            .map(|(at, latency)| (at.saturating_duration_since(started).as_secs_f64(), latency))
            .collect(),
        planned,
        backfilled,
    };
    Ok((run, baseline))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let moto = Moto::start("127.0.0.1", port)?;
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: moto.endpoint.clone(),
        handler_aws_endpoint: None,
        stack_name: format!("adoptbench-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::HubSpot,
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), "bench".to_string())]),
        env_overrides: HashMap::from([
            ("HUBSPOT_ACCESS_TOKEN".to_string(), "unused".to_string()),
            ("HUBSPOT_API_BASE".to_string(), "http://127.0.0.1:9".to_string()),
        ]),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await?;
    let work = std::env::temp_dir().join(format!("crm-sync-adoption-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (small, _) = run_size(&stack, &moto.endpoint, args.records / 10, &args, &work).await?;
    let (large, baseline) = run_size(&stack, &moto.endpoint, args.records, &args, &work).await?;
    std::fs::remove_dir_all(&work).ok();
    let report = report(&small, &large, &baseline.unwrap_or_default(), &args);
    println!("{}", report.0);
    std::fs::write(
        args.out.join("adoption.json"),
        serde_json::to_string_pretty(&report.1)?,
    )?;
    eprintln!("wrote {}", args.out.join("adoption.json").display());
    Ok(())
}

/// The printed tables and the JSON.
fn report(
    small: &SizeRun,
    large: &SizeRun,
    baseline: &[Duration],
    args: &Args,
) -> (String, serde_json::Value) {
    let grants = &large.grants;
    let lane_at: Vec<f64> = grants
        .iter()
        .filter(|(_, c)| *c == Caller::Lane)
        .map(|(at, _)| *at)
        .collect();
    let (first, last) = (
        lane_at.first().copied().unwrap_or(0.0),
        lane_at.last().copied().unwrap_or(0.0),
    );
    let window = (last - first).max(1e-3);
    let in_window = |caller: Caller| {
        grants
            .iter()
            .filter(|(at, c)| *c == caller && *at >= first && *at <= last)
            .count() as f64
    };
    let (lane_calls, live_calls) = (in_window(Caller::Lane), in_window(Caller::Live));
    let left = CEILING_CALLS_PER_SEC * window - live_calls;
    // The first grant opens the window: the calls in it are the others.
    let share = (lane_calls - 1.0).max(0.0) / left;
    let whole = large.backfilled.seconds;
    let background = grants.iter().filter(|(_, c)| *c != Caller::Live).count() as f64;
    let live_all = grants.iter().filter(|(_, c)| *c == Caller::Live).count() as f64;
    let whole_share = background / (CEILING_CALLS_PER_SEC * whole - live_all);
    let during: Vec<Duration> = large
        .live
        .iter()
        .filter(|(at, _)| *at >= first && *at <= last)
        .map(|(_, latency)| *latency)
        .collect();
    let all_beside: Vec<Duration> = large.live.iter().map(|(_, latency)| *latency).collect();
    let (p50_alone, p99_alone) = (percentile(baseline, 0.5), percentile(baseline, 0.99));
    let (p50_during, p99_during) = (percentile(&during, 0.5), percentile(&during, 0.99));
    let (p90_alone, p90_during) = (percentile(baseline, 0.9), percentile(&during, 0.9));
    let (max_alone, max_during) = (percentile(baseline, 1.0), percentile(&during, 1.0));
    let p99_beside = percentile(&all_beside, 0.99);
    let written = large.backfilled.progress.to_write as f64;
    let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    let pace = 1000.0 / large.pace_interval_ms;
    let mut text = String::new();
    text.push_str(&format!(
        "\n| adoption, {} contacts | |\n|---|---|\n",
        large.records
    ));
    let c = &large.planned.counts;
    text.push_str(&format!(
        "| plan | {:.0} s, {} CRM calls; {} create, {} update, {} unchanged, {} link, {} conflict, {} with CRM-owned values |\n",
        large.planned.seconds, c.plan_calls, c.create, c.update, c.unchanged, c.link, c.conflict, c.crm_owned_records
    ));
    text.push_str(&format!(
        "| plan's cost | {} calls ({} links, {} writes, {} pull reads), {:.0} s at the ceiling |\n",
        large.planned.cost.total_calls,
        large.planned.cost.link_calls,
        large.planned.cost.write_calls,
        large.planned.cost.pull_calls,
        large.planned.cost.seconds_at_ceiling
    ));
    let p = &large.backfilled.progress;
    text.push_str(&format!(
        "| backfill | {:.0} s, {} CRM calls by the tool; {} linked, {} sent, {} pulled, {} deferred, {} conflicts, phases {:?} |\n",
        whole, p.crm_calls, p.linked, p.sent, p.pulled, p.pull_deferred, p.conflicts, large.backfilled.phases
    ));
    text.push_str(&format!(
        "| backfill writes | {written:.0} records in {window:.1} s = {:.0} records/s; {lane_calls:.0} calls beside {live_calls:.0} live: {:.1}% of the {:.1} calls/s live changes left of the 19 calls/s ceiling (the limiter's pace is {pace:.2} calls/s, {:.1}% of it) |\n",
        written / window,
        share * 100.0,
        left / window,
        pace / CEILING_CALLS_PER_SEC * 100.0
    ));
    text.push_str(&format!(
        "| whole backfill | {background:.0} background calls in {whole:.0} s: {:.1}% of the ceiling live changes left (links, settle and pull included) |\n",
        whole_share * 100.0
    ));
    text.push_str(&format!(
        "| live changes, {} a second | alone ({} changes): p50 {p50_alone:.0} ms, p90 {p90_alone:.0}, p99 {p99_alone:.0}, max {max_alone:.0}; during the writes ({}): p50 {p50_during:.0} ms, p90 {p90_during:.0}, p99 {p99_during:.0}, max {max_during:.0}; p99 {p99_beside:.0} ms over the whole backfill ({}): {:.2}x |\n",
        args.live_rate,
        baseline.len(),
        during.len(),
        all_beside.len(),
        p99_during / p99_alone
    ));
    text.push_str(&format!(
        "| tool's peak heap (bytes it asked for) | plan {:.1} MiB at {}, {:.1} MiB at {}; backfill {:.1} MiB at {}, {:.1} MiB at {} |\n",
        mib(small.planned.peak_heap),
        small.records,
        mib(large.planned.peak_heap),
        large.records,
        mib(small.backfilled.peak_heap),
        small.records,
        mib(large.backfilled.peak_heap),
        large.records
    ));
    let json = json!({
        "machine": machine::describe(),
        "records": large.records,
        "live_changes_per_second": args.live_rate,
        "plan": {
            "seconds": large.planned.seconds, "plan_calls": c.plan_calls,
            "create": c.create, "update": c.update, "unchanged": c.unchanged, "link": c.link,
            "conflict": c.conflict, "crm_owned_records": c.crm_owned_records,
            "predicted_calls": large.planned.cost.total_calls,
        },
        "backfill": {
            "seconds": whole, "tool_crm_calls": p.crm_calls, "linked": p.linked, "sent": p.sent,
            "pulled": p.pulled, "pull_deferred": p.pull_deferred, "conflicts": p.conflicts,
            "phases": large.backfilled.phases,
            "writes_window_seconds": window, "lane_calls": lane_calls, "live_calls_in_window": live_calls,
            "records_per_second": written / window,
            "share_of_ceiling_left": share, "whole_run_share_of_ceiling_left": whole_share,
            "limiter_pace_calls_per_second": pace,
        },
        "live_latency_ms": {
            "alone": {"changes": baseline.len(), "p50": p50_alone, "p90": p90_alone, "p99": p99_alone, "max": max_alone},
            "during_writes": {"changes": during.len(), "p50": p50_during, "p90": p90_during, "p99": p99_during, "max": max_during},
            "whole_backfill": {"changes": all_beside.len(), "p99": p99_beside},
            "p99_ratio": p99_during / p99_alone,
        },
        "tool_peak_heap_bytes": {
            "plan": {small.records.to_string(): small.planned.peak_heap, large.records.to_string(): large.planned.peak_heap},
            "backfill": {small.records.to_string(): small.backfilled.peak_heap, large.records.to_string(): large.backfilled.peak_heap},
        },
    });
    (text, json)
}
