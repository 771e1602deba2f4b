//! What `crm-sync-adopt` runs, wired to the production adapters: the planner and the backfill
//! over the sync function's CRM, state table, limiter and queues. Everything it does lives in
//! [`crate::adoption`].

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::adapters::plan_files::{self, InputFormat, PlanFiles};
use crate::adapters::s3::S3PlanArchive;
use crate::adapters::sqs::SqsQueue;
use crate::adoption::{Backfill, BackfillSettings, Planner};
use crate::adoption_runs::BackfillRuns;
use crate::config::AdoptConfig;
use crate::domain::adoption::{cost, Budget, PlanSummary};
use crate::domain::SystemClock;
use crate::ports::{AdoptionStore, MessageQueue};
use crate::sync::SyncSettings;
use crate::worker::Worker;

pub struct AdoptionTool {
    pub planner: Planner,
    pub backfill: Arc<Backfill>,
    /// Backfills run inside AWS by the adoption function, when the stack has one.
    pub runs: Option<BackfillRuns>,
    pub store: Arc<dyn AdoptionStore>,
    /// The CRM's limits, for the plan's cost.
    pub budget: Budget,
    pub crm_name: &'static str,
}

impl AdoptionTool {
    pub async fn build(aws: &SdkConfig, config: AdoptConfig) -> anyhow::Result<Self> {
        Self::build_with(aws, config, BackfillSettings::default()).await
    }

    pub async fn build_with(
        aws: &SdkConfig,
        config: AdoptConfig,
        settings: BackfillSettings,
    ) -> anyhow::Result<Self> {
        let limits = config.crm.limiter.clone();
        let super::CrmWiring {
            mapping,
            crm,
            state,
            limiter,
        } = super::wire_crm(aws, config.crm).await?;
        let sqs = aws_sdk_sqs::Client::new(aws);
        let lane = Arc::new(SqsQueue::new(sqs.clone(), config.backfill_queue_url));
        let app_inbox = config
            .app_inbox_queue_url
            .map(|url| Arc::new(SqsQueue::new(sqs.clone(), url)) as Arc<dyn MessageQueue>);
        let clock = Arc::new(SystemClock);
        // Like the reconciliation: only call slots live changes leave idle, never the reserve.
        let mut calls = SyncSettings::default().call_settings();
        calls.low_priority = true;
        let worker = || {
            Worker::new(
                limiter.clone(),
                lane.clone(),
                lane.clone(),
                clock.clone(),
                calls.clone(),
            )
        };
        let budget = budget_of(&limits, crm.max_batch());
        let backfill = Arc::new(Backfill::new(
            mapping.clone(),
            crm.clone(),
            worker(),
            lane.clone(),
            lane.clone(),
            app_inbox,
            state.clone(),
            state.clone(),
            clock.clone(),
            settings,
        ));
        let runs = match (config.adoption_bucket, config.adoption_queue_url) {
            (Some(bucket), Some(queue_url)) => {
                let cache = std::env::temp_dir().join("crm-sync-plans");
                Some(BackfillRuns::new(
                    backfill.clone(),
                    state.clone(),
                    Arc::new(S3PlanArchive::new(aws, bucket, cache)),
                    Arc::new(SqsQueue::new(sqs, queue_url)),
                    clock.clone(),
                ))
            }
            _ => None,
        };
        Ok(Self {
            planner: Planner::new(mapping, crm.clone(), worker()),
            backfill,
            runs,
            store: state,
            budget,
            crm_name: crm.name(),
        })
    }

    /// Plans the records of `input` into `dir` (`plan.jsonl`, `invalid.jsonl`, `summary.json`)
    /// and keeps the summary for the dashboard. `exported_ms` dates rows without `changed_at`;
    /// `stage` hears what the plan is doing. Returns the summary, and why the dashboard could
    /// not be given it, if it could not: the plan directory is what a backfill runs.
    pub async fn plan_file(
        &self,
        request: &PlanRequest<'_>,
        stage: &dyn Fn(&str),
    ) -> anyhow::Result<(PlanSummary, Option<String>)> {
        let (input, dir) = (request.input, request.dir);
        stage("looking for app records that share an email");
        let shared = plan_files::shared_emails(input, request.format, &dir.join("work"))?;
        stage("asking the CRM");
        let mut files = PlanFiles::create(dir)?;
        let records = plan_files::read_input(input, request.format, request.exported_ms)?;
        let counts = self
            .planner
            .plan(records, &shared, &mut files, request.deadline)
            .await?;
        files.finish()?;
        std::fs::remove_dir_all(dir.join("work")).ok();
        let budget = Budget {
            left_today: counts.daily_remaining,
            ..self.budget
        };
        let mut summary = PlanSummary {
            plan_id: request.plan_id.to_string(),
            input: input.display().to_string(),
            crm: self.crm_name.to_string(),
            planned_at: crate::domain::clock::rfc3339(request.now_ms),
            cost: cost(&counts, &budget),
            counts,
            budget,
            examples: Vec::new(),
        };
        summary.take_examples(plan_files::read_plan(dir)?.filter_map(Result::ok));
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        let unsaved = match self.store.save_plan(&summary).await {
            Ok(()) => None,
            Err(error) => Some(format!("{:#}", anyhow::Error::from(error))),
        };
        Ok((summary, unsaved))
    }
}

/// The CRM's limits as a plan's cost is reckoned against them, `batch` records a write call.
pub fn budget_of(limits: &crate::adapters::dynamodb::LimiterSettings, batch: usize) -> Budget {
    Budget {
        batch: batch as u64,
        daily_limit: limits.daily_limit,
        daily_reserve: limits.daily_reserve,
        live_reserve: limits.live_reserve,
        left_today: None,
        // The limiter's own pace: headroom, live lead and requests a call counted.
        calls_per_second: 1000.0 / limits.interval_ms(),
    }
}

/// What to plan, and where.
pub struct PlanRequest<'a> {
    pub plan_id: &'a str,
    pub input: &'a std::path::Path,
    pub format: InputFormat,
    pub dir: &'a std::path::Path,
    /// When the input was exported: the date of rows without `changed_at`.
    pub exported_ms: i64,
    pub now_ms: i64,
    pub deadline: tokio::time::Instant,
}
