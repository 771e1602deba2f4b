//! What `crm-sync-adopt` runs, wired to the production adapters: the planner and the backfill
//! over the sync function's CRM, state table, limiter and queues. Everything it does lives in
//! [`crate::adoption`].

use std::sync::Arc;

use aws_config::SdkConfig;

use crate::adapters::sqs::SqsQueue;
use crate::adoption::{Backfill, BackfillSettings, Planner};
use crate::config::AdoptConfig;
use crate::domain::adoption::Budget;
use crate::domain::SystemClock;
use crate::ports::{AdoptionStore, MessageQueue};
use crate::sync::SyncSettings;
use crate::worker::Worker;

pub struct AdoptionTool {
    pub planner: Planner,
    pub backfill: Backfill,
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
        let budget = Budget {
            batch: crm.max_batch() as u64,
            daily_limit: limits.daily_limit,
            daily_reserve: limits.daily_reserve,
            live_reserve: limits.live_reserve,
            left_today: None,
            calls_per_second: f64::from(limits.burst_limit) * limits.headroom * 1000.0
                / limits.burst_window_ms.max(1) as f64,
        };
        Ok(Self {
            planner: Planner::new(mapping.clone(), crm.clone(), worker()),
            backfill: Backfill::new(
                mapping,
                crm.clone(),
                worker(),
                lane.clone(),
                lane,
                app_inbox,
                state.clone(),
                state.clone(),
                clock,
                settings,
            ),
            store: state,
            budget,
            crm_name: crm.name(),
        })
    }
}
