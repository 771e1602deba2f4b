//! The reconcile function: invoked by EventBridge Scheduler (the event's content does not
//! matter), it runs or resumes tonight's reconciliation until done or the deadline nears.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use lambda_runtime::LambdaEvent;
use tokio::time::Instant;

use crate::adapters::sqs::SqsQueue;
use crate::config::ReconcileConfig;
use crate::domain::SystemClock;
use crate::reconcile::{MergeScan, ReconcileService, RunReport};

/// The task of the frequent schedule's event: read the CRM's merges only.
pub const MERGES_TASK: &str = "merges";
use crate::sync::SyncSettings;
use crate::worker::Worker;

pub struct ReconcileHandler {
    service: ReconcileService,
}

impl ReconcileHandler {
    pub async fn build(aws: &SdkConfig, config: ReconcileConfig) -> anyhow::Result<Self> {
        let super::CrmWiring {
            mapping,
            crm,
            state,
            limiter,
        } = super::wire_crm(aws, config.crm).await?;
        let sqs = aws_sdk_sqs::Client::new(aws);
        let low_lane = Arc::new(SqsQueue::new(sqs.clone(), config.reconcile_queue_url));
        let queue =
            |url: String| Arc::new(SqsQueue::new(sqs.clone(), url)) as Arc<dyn crate::ports::MessageQueue>;
        let app_inbox = config.app_inbox_queue_url.map(queue);
        let inbound = config.inbound_queue_url.map(queue);
        let clock = Arc::new(SystemClock);
        let mut calls = SyncSettings::default().call_settings();
        // Reconciliation is the lowest priority: only idle call slots.
        calls.low_priority = true;
        let worker = Worker::new(limiter, low_lane.clone(), low_lane.clone(), clock.clone(), calls);
        let service = ReconcileService::new(
            mapping,
            crm,
            state.clone(),
            state,
            low_lane,
            worker,
            clock,
            config.settings,
        )
        .with_app_inbox(app_inbox)
        .with_inbound_queue(inbound);
        Ok(Self { service })
    }

    /// Starts today's run over.
    pub async fn restart(&self) -> anyhow::Result<()> {
        Ok(self.service.restart().await?)
    }

    /// Runs until done or until `deadline`.
    pub async fn run_until(&self, deadline: Instant) -> anyhow::Result<RunReport> {
        Ok(self.service.run(deadline).await?)
    }

    /// Reads the CRM's merges now (the frequent schedule's task), until done or `deadline`.
    pub async fn scan_merges_until(&self, deadline: Instant) -> anyhow::Result<MergeScan> {
        Ok(self.service.scan_merges(deadline).await?)
    }

    /// The nightly run, or with `{"task": "merges"}` only the read of the CRM's merges.
    pub async fn handle(
        &self,
        event: LambdaEvent<serde_json::Value>,
    ) -> Result<serde_json::Value, lambda_runtime::Error> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let left = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        if event.payload.get("task").and_then(serde_json::Value::as_str) == Some(MERGES_TASK) {
            let scan = self.scan_merges_until(Instant::now() + left).await?;
            tracing::info!(
                read = scan.read,
                errors = scan.errors,
                stopped = scan.stopped.as_deref().unwrap_or(""),
                "merges read"
            );
            if scan.errors > 0 {
                // A failed invocation, so that ReconcileErrorsAlarm says so: merges left unread
                // long enough leave Salesforce's recycle bin.
                return Err(format!(
                    "the merge scan met {} error(s); the next scan reads them again",
                    scan.errors
                )
                .into());
            }
            return Ok(serde_json::json!({
                "merges_read": scan.read,
                "stopped": scan.stopped,
            }));
        }
        let report = self.run_until(Instant::now() + left).await?;
        tracing::info!(
            run = %report.run_id,
            phase = ?report.phase,
            checked = report.checked,
            healed = report.healed,
            flagged = report.flagged,
            requeued = report.requeued,
            merges_read = report.merges_read,
            errors = report.errors,
            api_calls = report.api_calls,
            stopped = report.stopped.as_deref().unwrap_or(""),
            "reconciliation"
        );
        Ok(serde_json::to_value(report)?)
    }
}
