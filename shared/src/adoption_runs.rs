//! Backfills that run inside AWS, so that a large one needs no machine kept up: the plan is kept
//! in an archive (S3), and the adoption function runs it in slices that fit a Lambda invocation.
//! Each slice goes on from the saved progress and, when its time runs out, queues the next one
//! before it ends; a slice that dies is tried again by its queue. One run of a plan at a time
//! still holds ([`Backfill::run`]'s hold), so duplicate slices stop at once.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::adoption::{AdoptionError, Backfill};
use crate::domain::adoption::{BackfillPhase, BackfillProgress, PlanSummary};
use crate::domain::Clock;
use crate::ports::{AdoptionStore, MessageQueue, OutgoingMessage, PlanArchive};

/// The adoption function's message: run (or go on with) this plan's backfill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub plan_id: String,
    /// Slices in a row that stopped on a failure a wait may cure.
    #[serde(default)]
    pub failures: u32,
}

/// How a slice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The backfill is done.
    Done,
    /// The next slice is queued, after `delay_secs`.
    Continued { delay_secs: u32, reason: String },
    /// The run stopped for a reason no wait cures; it is saved on the progress, and
    /// `crm-sync-adopt start` goes on once it is fixed.
    Stopped(String),
    /// Nothing to run: the request names no kept plan, is not one, or another run holds the plan
    /// (and goes on with it).
    Dropped(String),
}

/// Slices in a row a failure may stop before the run gives up (an hour at the delay below).
pub const MAX_FAILED_SLICES: u32 = 12;
/// The wait before a slice after a failure a wait may cure (the CRM, the queue, the store).
const FAILURE_DELAY_SECS: u32 = 300;
/// The wait before a slice after the day's budget ran out: SQS's longest delay.
const BUDGET_DELAY_SECS: u32 = 900;

/// Deliveries of one slice's message before the run stops: each one after the first means a slice
/// died (killed, out of memory) without ending.
pub const MAX_RECEIVES: u32 = 5;
/// A throttle this close to the slice's end is the slice's time running out, not the budget.
const NEAR_THE_END: std::time::Duration = std::time::Duration::from_secs(120);

/// The longest plan id, and its characters: it names the archive's key and a local directory.
const MAX_PLAN_ID_CHARS: usize = 128;

/// Whether `plan_id` may name a kept plan: letters, digits, `-`, `_` and `.`, not leading, so
/// it can never name a path outside the archive's own.
pub fn valid_plan_id(plan_id: &str) -> bool {
    !plan_id.is_empty()
        && plan_id.len() <= MAX_PLAN_ID_CHARS
        && !plan_id.starts_with('.')
        && plan_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Starts and runs backfills inside AWS.
pub struct BackfillRuns {
    backfill: Arc<Backfill>,
    store: Arc<dyn AdoptionStore>,
    archive: Arc<dyn PlanArchive>,
    runs: Arc<dyn MessageQueue>,
    clock: Arc<dyn Clock>,
}

/// Why a slice did not run the plan to the end.
enum SliceError {
    Run(AdoptionError),
    /// The archive could not give the plan (a wait may cure it).
    Archive(anyhow::Error),
}

impl From<AdoptionError> for SliceError {
    fn from(error: AdoptionError) -> Self {
        SliceError::Run(error)
    }
}

impl From<crate::ports::StoreUnavailable> for SliceError {
    fn from(error: crate::ports::StoreUnavailable) -> Self {
        SliceError::Run(error.into())
    }
}

/// Where a backfill stands, to tell a slice that moved it from one that did not.
fn position(progress: Option<&BackfillProgress>) -> Option<(BackfillPhase, u64, u64, u64)> {
    progress.map(|p| (p.phase, p.line, p.sent, p.pulled))
}

impl BackfillRuns {
    pub fn new(
        backfill: Arc<Backfill>,
        store: Arc<dyn AdoptionStore>,
        archive: Arc<dyn PlanArchive>,
        runs: Arc<dyn MessageQueue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            backfill,
            store,
            archive,
            runs,
            clock,
        }
    }

    /// Keeps the plan of `dir` (its summary for the slices and the dashboard, its file in the
    /// archive) and queues its first slice; a stopped one goes on from its progress. Started again
    /// while running, its second chain of slices ends the first time it meets the other's hold.
    pub async fn start(&self, summary: &PlanSummary, dir: &std::path::Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            valid_plan_id(&summary.plan_id),
            "plan id `{}` is not one crm-sync-adopt makes",
            summary.plan_id
        );
        self.store.save_plan(summary).await?;
        self.archive.put(&summary.plan_id, dir).await?;
        self.queue(&summary.plan_id, 0, 0).await
    }

    /// Runs one slice of the run `body` asks for, until `deadline`, and queues the next one if
    /// the backfill is not done. `receives` is how often this message has been delivered. Errs
    /// only when the next slice could not be queued: the caller then leaves the message to its
    /// queue, which offers it again.
    pub async fn slice(&self, body: &str, receives: u32, deadline: Instant) -> anyhow::Result<SliceOutcome> {
        let request: RunRequest = match serde_json::from_str(body) {
            Ok(request) => request,
            Err(error) => {
                return Ok(SliceOutcome::Dropped(format!(
                    "not a run request ({error}): expected {{\"plan_id\": \"…\"}}"
                )))
            }
        };
        if !valid_plan_id(&request.plan_id) {
            return Ok(SliceOutcome::Dropped(format!(
                "`{}` is not a plan id: 1 to {MAX_PLAN_ID_CHARS} letters, digits, `-`, `_` or `.`, not leading",
                request.plan_id.chars().take(MAX_PLAN_ID_CHARS).collect::<String>()
            )));
        }
        if receives > MAX_RECEIVES {
            let reason = format!(
                "a slice died {} times without ending (killed, out of memory or time, or throttled before it ran); see the adoption function's logs, then start it again",
                receives - 1
            );
            self.note(&request.plan_id, &reason).await;
            return Ok(SliceOutcome::Stopped(reason));
        }
        let before = match self.store.backfill(&request.plan_id).await {
            Ok(progress) => progress,
            Err(error) => return self.go_on_after_failure(&request, error.to_string()).await,
        };
        if before
            .as_ref()
            .is_some_and(|progress| progress.phase == BackfillPhase::Done)
        {
            return Ok(SliceOutcome::Dropped(format!("{} is done", request.plan_id)));
        }
        let failure = match self.run(&request, deadline).await {
            Ok(outcome) => {
                if let SliceOutcome::Stopped(reason) = &outcome {
                    self.note(&request.plan_id, reason).await;
                }
                return Ok(outcome);
            }
            Err(SliceError::Archive(error)) => format!("the plan file could not be fetched: {error:#}"),
            Err(SliceError::Run(AdoptionError::Busy)) => {
                return Ok(SliceOutcome::Dropped(AdoptionError::Busy.to_string()))
            }
            Err(SliceError::Run(error @ (AdoptionError::Deadline(_) | AdoptionError::Budget)))
                if matches!(error, AdoptionError::Deadline(_))
                    || Instant::now() + NEAR_THE_END >= deadline =>
            {
                let after = self.store.backfill(&request.plan_id).await.ok().flatten();
                // Waiting for the lane to drain is the settle phase's work, however long it takes.
                let settling = after.as_ref().is_some_and(|p| p.phase == BackfillPhase::Settle);
                if settling || position(after.as_ref()) != position(before.as_ref()) {
                    self.queue(&request.plan_id, 0, 0).await?;
                    return Ok(SliceOutcome::Continued {
                        delay_secs: 0,
                        reason: "the slice's time ran out".into(),
                    });
                }
                // A slice too short for one step would hand on forever.
                "the slice's time ran out before a step was done".to_string()
            }
            Err(SliceError::Run(AdoptionError::Budget)) => {
                self.queue(&request.plan_id, 0, BUDGET_DELAY_SECS).await?;
                return Ok(SliceOutcome::Continued {
                    delay_secs: BUDGET_DELAY_SECS,
                    reason: AdoptionError::Budget.to_string(),
                });
            }
            Err(SliceError::Run(
                error @ (AdoptionError::Crm(_) | AdoptionError::Lane(_) | AdoptionError::Store(_)),
            )) => error.to_string(),
            Err(SliceError::Run(error)) => {
                let reason = error.to_string();
                return Ok(SliceOutcome::Stopped(reason));
            }
        };
        self.go_on_after_failure(&request, failure).await
    }

    /// After a failure a wait may cure: the next slice later, or the run stopped after too many
    /// in a row, with the reason on its progress.
    async fn go_on_after_failure(
        &self,
        request: &RunRequest,
        reason: String,
    ) -> anyhow::Result<SliceOutcome> {
        let failures = request.failures.saturating_add(1);
        if failures >= MAX_FAILED_SLICES {
            let reason = format!("{failures} slices in a row failed, the last: {reason}");
            self.note(&request.plan_id, &reason).await;
            return Ok(SliceOutcome::Stopped(reason));
        }
        self.note(
            &request.plan_id,
            &format!("{reason}; tried again in {FAILURE_DELAY_SECS} s"),
        )
        .await;
        self.queue(&request.plan_id, failures, FAILURE_DELAY_SECS).await?;
        Ok(SliceOutcome::Continued {
            delay_secs: FAILURE_DELAY_SECS,
            reason,
        })
    }

    async fn queue(&self, plan_id: &str, failures: u32, delay_secs: u32) -> anyhow::Result<()> {
        let request = RunRequest {
            plan_id: plan_id.to_string(),
            failures,
        };
        let message = OutgoingMessage {
            delay_secs,
            ..OutgoingMessage::new("0", serde_json::to_string(&request)?)
        };
        match self.runs.send(&[message]).await.first() {
            None => Ok(()),
            Some(failure) => anyhow::bail!("the next slice could not be queued: {}", failure.reason),
        }
    }

    /// Says on the backfill's progress why its run stopped or waits, unless a run holds it now
    /// (that run's own word is the one to keep). Best effort: the log says it too.
    async fn note(&self, plan_id: &str, reason: &str) {
        let Ok(Some(mut progress)) = self.store.backfill(plan_id).await else {
            return;
        };
        progress.stopped = Some(reason.to_string());
        progress.run_token = uuid::Uuid::new_v4().to_string();
        let now_ms = self.clock.now_ms();
        progress.updated_at_ms = now_ms;
        if let Err(error) = self.store.save_backfill(&progress, now_ms, 0).await {
            tracing::warn!(error = ?error.0, "could not note why the backfill stopped");
        }
    }

    async fn run(&self, request: &RunRequest, deadline: Instant) -> Result<SliceOutcome, SliceError> {
        let Some(summary) = self.store.plan(&request.plan_id).await? else {
            return Ok(SliceOutcome::Dropped(format!(
                "no plan `{}` is kept; start it with `crm-sync-adopt start`",
                request.plan_id
            )));
        };
        let Some(plan) = self
            .archive
            .fetch(&request.plan_id)
            .await
            .map_err(SliceError::Archive)?
        else {
            return Ok(SliceOutcome::Stopped(format!(
                "no plan file is kept for {} (never uploaded, or deleted after the bucket's retention); start it again",
                request.plan_id
            )));
        };
        let progress = self
            .backfill
            .run(
                &request.plan_id,
                &summary.counts,
                plan.as_ref(),
                deadline,
                &|_| {},
            )
            .await?;
        Ok(match progress.phase {
            BackfillPhase::Done => SliceOutcome::Done,
            // A run returns only when done or stopped; this is for a future phase.
            phase => SliceOutcome::Stopped(format!("the run ended in {phase:?}")),
        })
    }
}

#[cfg(test)]
#[path = "adoption_runs_tests.rs"]
mod tests;
