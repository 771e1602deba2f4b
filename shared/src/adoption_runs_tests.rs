//! Backfill slices against in-memory ports: what each way a slice can end queues next. The same
//! run through the local stack (S3 and SQS in moto, the HubSpot sandbox) is in
//! `tests/integration/adoption.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{BackfillRuns, RunRequest, SliceOutcome, MAX_FAILED_SLICES};
use crate::adoption::{Backfill, BackfillSettings};
use crate::domain::adoption::{
    cost, Action, BackfillPhase, BackfillProgress, Budget, PlanCounts, PlanItem, PlanSummary,
};
use crate::domain::contract::ObjectKind;
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::ports::{AdoptionStore, KeptPlan, PlanArchive};
use crate::testing::{deadline, worker, ManualClock, MemoryCrm, MemoryQueue, MemorySyncState};

const PLAN: &str = "plan-20261202T100000";
const NOW_MS: i64 = 1_796_000_000_000;

/// Plans kept in memory, counting fetches; `failing` makes every fetch fail, as S3 down would.
#[derive(Default)]
struct MemoryArchive {
    plans: Mutex<HashMap<String, Vec<PlanItem>>>,
    fetches: AtomicUsize,
    failing: AtomicBool,
}

#[async_trait]
impl PlanArchive for MemoryArchive {
    async fn put(&self, plan_id: &str, dir: &std::path::Path) -> anyhow::Result<()> {
        let items = crate::adapters::plan_files::read_plan(dir)?.collect::<anyhow::Result<Vec<_>>>()?;
        self.plans.lock().unwrap().insert(plan_id.to_string(), items);
        Ok(())
    }

    async fn fetch(&self, plan_id: &str) -> anyhow::Result<Option<Box<KeptPlan>>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        anyhow::ensure!(
            !self.failing.load(Ordering::SeqCst),
            "the archive is down, on cue"
        );
        let Some(items) = self.plans.lock().unwrap().get(plan_id).cloned() else {
            return Ok(None);
        };
        Ok(Some(Box::new(move || {
            Ok(Box::new(items.clone().into_iter().map(Ok)) as Box<dyn Iterator<Item = _> + Send>)
        })))
    }
}

fn created(id: &str) -> PlanItem {
    PlanItem {
        line: 1,
        plan_line: 0,
        object: ObjectKind::Contact,
        record_id: id.into(),
        action: Action::Create,
        crm_owned: Default::default(),
        message: serde_json::json!({"version": 1, "type": "contact.upsert", "record_id": id,
                                    "idempotency_id": format!("adopt-{id}"), "changed_at": NOW_MS,
                                    "data": {"email": format!("{id}@example.com")}})
        .to_string(),
    }
}

fn summary(records: u64) -> PlanSummary {
    let counts = PlanCounts {
        records,
        create: records,
        ..PlanCounts::default()
    };
    let budget = Budget {
        batch: 100,
        daily_limit: 500_000,
        daily_reserve: 50_000,
        live_reserve: 50_000,
        left_today: None,
        calls_per_second: 19.0,
    };
    PlanSummary {
        plan_id: PLAN.into(),
        input: "users.jsonl".into(),
        crm: "hubspot".into(),
        planned_at: "2026-12-02T10:00:00Z".into(),
        cost: cost(&counts, &budget),
        counts,
        budget,
        examples: Vec::new(),
    }
}

struct Setup {
    runs: BackfillRuns,
    queue: Arc<MemoryQueue>,
    lane: Arc<MemoryQueue>,
    archive: Arc<MemoryArchive>,
    store: Arc<MemorySyncState>,
}

/// Three records to create, kept and summarized; the lane is drained as the sync function
/// would drain it.
async fn setup() -> Setup {
    let clock = Arc::new(ManualClock::at(NOW_MS));
    let lane = Arc::new(MemoryQueue::default());
    let store = Arc::new(MemorySyncState::default());
    let archive = Arc::new(MemoryArchive::default());
    archive
        .plans
        .lock()
        .unwrap()
        .insert(PLAN.into(), vec![created("u1"), created("u2"), created("u3")]);
    store.save_plan(&summary(3)).await.unwrap();
    let backfill = Backfill::new(
        Arc::new(Mapping::parse(DEFAULT_MAPPING).unwrap()),
        Arc::new(MemoryCrm::new(100)),
        worker(clock.clone(), Arc::new(MemoryQueue::default()), 0, true),
        lane.clone(),
        lane.clone(),
        None,
        store.clone(),
        store.clone(),
        clock,
        BackfillSettings {
            send_batch: 1,
            settle_poll: Duration::from_millis(1),
            ..BackfillSettings::default()
        },
    );
    let queue = Arc::new(MemoryQueue::default());
    let runs = BackfillRuns::new(
        Arc::new(backfill),
        store.clone(),
        archive.clone(),
        queue.clone(),
        Arc::new(ManualClock::at(NOW_MS)),
    );
    Setup {
        runs,
        queue,
        lane,
        archive,
        store,
    }
}

fn request(failures: u32) -> String {
    serde_json::to_string(&RunRequest {
        plan_id: PLAN.into(),
        failures,
    })
    .unwrap()
}

/// The one slice expected next: after `failures`, in `delay_secs`.
fn next_slice(failures: u32, delay_secs: u32) -> Vec<(RunRequest, u32)> {
    vec![(
        RunRequest {
            plan_id: PLAN.into(),
            failures,
        },
        delay_secs,
    )]
}

/// A slice whose time is gone when it starts.
async fn out_of_time(s: &Setup) -> SliceOutcome {
    s.runs
        .slice(&request(0), 1, tokio::time::Instant::now())
        .await
        .unwrap()
}

fn queued(queue: &MemoryQueue) -> Vec<(RunRequest, u32)> {
    queue
        .take()
        .into_iter()
        .map(|message| (serde_json::from_str(&message.body).unwrap(), message.delay_secs))
        .collect()
}

async fn progress(store: &MemorySyncState) -> BackfillProgress {
    store.backfill(PLAN).await.unwrap().expect("a saved progress")
}

#[tokio::test]
async fn a_slice_whose_time_runs_out_queues_the_next_which_goes_on_from_its_progress_to_the_end() {
    let s = setup().await;
    let drained = Arc::new(AtomicUsize::new(0));
    let drain = {
        let (lane, drained) = (s.lane.clone(), drained.clone());
        tokio::spawn(async move {
            loop {
                drained.fetch_add(lane.take().len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let first = out_of_time(&s).await;
    assert!(
        matches!(first, SliceOutcome::Continued { delay_secs: 0, .. }),
        "{first:?}"
    );
    assert_eq!(queued(&s.queue), next_slice(0, 0));
    assert_eq!(progress(&s.store).await.sent, 0);

    let second = s.runs.slice(&request(0), 1, deadline()).await.unwrap();
    drain.abort();
    assert_eq!(second, SliceOutcome::Done);
    assert!(queued(&s.queue).is_empty(), "a done backfill queues no slice");
    let done = progress(&s.store).await;
    assert_eq!((done.phase, done.sent, done.runs), (BackfillPhase::Done, 3, 2));
    assert_eq!(
        drained.load(Ordering::SeqCst),
        3,
        "each record sent to the lane once"
    );

    // A slice offered again after the end (SQS delivers at least once) does nothing.
    let again = s.runs.slice(&request(0), 1, deadline()).await.unwrap();
    assert!(matches!(again, SliceOutcome::Dropped(reason) if reason.contains("is done")));
    assert_eq!(progress(&s.store).await.runs, 2);
}

#[tokio::test]
async fn requests_that_name_no_kept_plan_are_dropped_before_the_archive_is_asked() {
    let s = setup().await;
    for body in [
        "not json",
        r#"{"plan_id": "../../etc/passwd"}"#,
        r#"{"plan_id": ""}"#,
        r#"{"plan_id": ".hidden"}"#,
        r#"{"plan_id": "plan/one"}"#,
        r#"{"plan": "plan-1"}"#,
        r#"{"plan_id": "plan-1", "extra": true}"#,
        &format!(r#"{{"plan_id": "{}"}}"#, "p".repeat(129)),
        r#"{"plan_id": "plan-nobody-kept"}"#,
    ] {
        let outcome = s.runs.slice(body, 1, deadline()).await.unwrap();
        assert!(matches!(outcome, SliceOutcome::Dropped(_)), "{body}: {outcome:?}");
    }
    assert_eq!(s.archive.fetches.load(Ordering::SeqCst), 0);
    assert!(queued(&s.queue).is_empty());
    assert!(s.store.backfill(PLAN).await.unwrap().is_none());

    // At the limit, a plan id is read (and found kept, or not).
    let longest = format!(r#"{{"plan_id": "{}"}}"#, "p".repeat(128));
    let outcome = s.runs.slice(&longest, 1, deadline()).await.unwrap();
    assert!(
        matches!(&outcome, SliceOutcome::Dropped(reason) if reason.contains("no plan")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_duplicate_slice_stops_at_once_while_another_run_holds_the_plan() {
    let s = setup().await;
    let mut held = BackfillProgress::new(PLAN, &summary(3).counts, NOW_MS);
    held.run_token = "another-run".into();
    assert!(s
        .store
        .save_backfill(&held, NOW_MS, NOW_MS + 300_000)
        .await
        .unwrap());

    let outcome = s.runs.slice(&request(0), 1, deadline()).await.unwrap();
    assert!(matches!(outcome, SliceOutcome::Dropped(reason) if reason.contains("another backfill")));
    assert!(
        queued(&s.queue).is_empty(),
        "the run holding the plan goes on; no second chain"
    );
    assert_eq!(progress(&s.store).await.runs, 0);
}

#[tokio::test]
async fn a_failure_a_wait_may_cure_queues_a_later_slice_until_too_many_in_a_row_stop_the_run() {
    let s = setup().await;
    s.archive.failing.store(true, Ordering::SeqCst);

    let outcome = s.runs.slice(&request(0), 1, deadline()).await.unwrap();
    assert!(
        matches!(outcome, SliceOutcome::Continued { delay_secs: 300, .. }),
        "{outcome:?}"
    );
    assert_eq!(queued(&s.queue), next_slice(1, 300));

    let last = s
        .runs
        .slice(&request(MAX_FAILED_SLICES - 1), 1, deadline())
        .await
        .unwrap();
    assert!(
        matches!(&last, SliceOutcome::Stopped(reason) if reason.contains("archive is down")),
        "{last:?}"
    );
    assert!(queued(&s.queue).is_empty());

    // A count no slice of ours writes stops the run as well, rather than wrapping to none.
    let crafted = r#"{"plan_id": "plan-20261202T100000", "failures": 4294967295}"#;
    let outcome = s.runs.slice(crafted, 1, deadline()).await.unwrap();
    assert!(matches!(outcome, SliceOutcome::Stopped(_)), "{outcome:?}");
    assert!(queued(&s.queue).is_empty());
}

#[tokio::test]
async fn a_slice_whose_next_cannot_be_queued_errs_so_that_its_own_message_is_offered_again() {
    let s = setup().await;
    s.queue.fail_sends(true);
    let outcome = s.runs.slice(&request(0), 1, tokio::time::Instant::now()).await;
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn starting_keeps_the_summary_and_the_file_and_queues_the_first_slice() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(format!("crm-sync-runs-{}", uuid::Uuid::new_v4()));
    let mut files = crate::adapters::plan_files::PlanFiles::create(&dir).unwrap();
    crate::adoption::PlanSink::item(&mut files, &created("u9")).unwrap();
    files.finish().unwrap();
    let mut other = summary(1);
    other.plan_id = "plan-started".into();

    s.runs.start(&other, &dir).await.unwrap();
    assert_eq!(s.store.plan("plan-started").await.unwrap(), Some(other.clone()));
    assert_eq!(s.archive.plans.lock().unwrap()["plan-started"][0].record_id, "u9");
    assert_eq!(
        queued(&s.queue),
        vec![(
            RunRequest {
                plan_id: "plan-started".into(),
                failures: 0
            },
            0
        )]
    );

    other.plan_id = "../plan".into();
    assert!(s.runs.start(&other, &dir).await.is_err());
    assert!(
        s.store.plan("../plan").await.unwrap().is_none(),
        "refused before anything is kept"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn slices_that_end_without_a_step_or_keep_dying_stop_instead_of_handing_on_forever() {
    let s = setup().await;
    // The first slice takes the plan up, then its time is gone.
    let first = out_of_time(&s).await;
    assert!(
        matches!(first, SliceOutcome::Continued { delay_secs: 0, .. }),
        "{first:?}"
    );
    s.queue.take();

    // The next one does no step either: a failure, tried again later, and said on the progress.
    let idle = out_of_time(&s).await;
    assert!(
        matches!(idle, SliceOutcome::Continued { delay_secs: 300, .. }),
        "{idle:?}"
    );
    assert_eq!(queued(&s.queue), next_slice(1, 300));
    let noted = progress(&s.store).await.stopped.unwrap_or_default();
    assert!(noted.contains("before a step was done"), "{noted}");

    // A message offered a sixth time means five slices died: the run stops, saying so.
    let dying = s
        .runs
        .slice(&request(0), super::MAX_RECEIVES + 1, deadline())
        .await
        .unwrap();
    assert!(
        matches!(&dying, SliceOutcome::Stopped(reason) if reason.contains("died 5 times")),
        "{dying:?}"
    );
    assert!(queued(&s.queue).is_empty());
    assert!(progress(&s.store)
        .await
        .stopped
        .unwrap_or_default()
        .contains("died 5 times"));
    // At the limit, it still runs.
    let last = s
        .runs
        .slice(&request(0), super::MAX_RECEIVES, tokio::time::Instant::now())
        .await
        .unwrap();
    assert!(matches!(last, SliceOutcome::Continued { .. }), "{last:?}");
}

#[tokio::test]
async fn a_plan_whose_file_is_no_longer_kept_stops_at_once_with_the_reason() {
    let s = setup().await;
    out_of_time(&s).await;
    s.queue.take();
    s.archive.plans.lock().unwrap().clear();

    let outcome = s.runs.slice(&request(0), 1, deadline()).await.unwrap();
    assert!(
        matches!(&outcome, SliceOutcome::Stopped(reason) if reason.contains("no plan file is kept")),
        "{outcome:?}"
    );
    assert!(queued(&s.queue).is_empty(), "no wait brings an expired plan back");
    assert!(progress(&s.store)
        .await
        .stopped
        .unwrap_or_default()
        .contains("no plan file is kept"));
}
