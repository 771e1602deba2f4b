//! The adoption function: runs backfills inside AWS, a slice per invocation of its queue's
//! messages (see [`crate::adoption_runs`]). Wired like `crm-sync-adopt --deployed`.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

use crate::adoption_runs::{BackfillRuns, SliceOutcome};
use crate::config::AdoptConfig;
use crate::entrypoints::adoption_tool::AdoptionTool;

/// Time kept at the end of an invocation to save the progress and queue the next slice.
const DEADLINE_MARGIN: Duration = Duration::from_secs(60);

pub struct AdoptionHandler {
    runs: BackfillRuns,
    /// The longest slice, when shorter than the invocation.
    slice: Option<Duration>,
}

impl AdoptionHandler {
    pub async fn build(aws: &SdkConfig, config: AdoptConfig) -> anyhow::Result<Self> {
        let slice = config.adoption_slice_seconds.map(Duration::from_secs);
        let runs = AdoptionTool::build(aws, config).await?.runs.ok_or_else(|| {
            anyhow::anyhow!("the adoption function needs ADOPTION_BUCKET and ADOPTION_QUEUE_URL")
        })?;
        Ok(Self { runs, slice })
    }

    /// Runs a slice for each message (the event source hands one at a time). A message whose
    /// next slice could not be queued is reported failed, so that its queue offers it again.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut deadline = super::deadline_of(event.context.deadline, DEADLINE_MARGIN);
        if let Some(slice) = self.slice {
            deadline = deadline.min(tokio::time::Instant::now() + slice);
        }
        let mut response = SqsBatchResponse::default();
        for record in event.payload.records {
            let id = record.message_id.unwrap_or_default();
            let body = record.body.unwrap_or_default();
            let receives = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            match self.runs.slice(&body, receives, deadline).await {
                Ok(SliceOutcome::Done) => tracing::info!(message = %id, "backfill done"),
                Ok(SliceOutcome::Continued { delay_secs, reason }) => {
                    tracing::info!(message = %id, delay_secs, %reason, "backfill goes on in the next slice")
                }
                Ok(SliceOutcome::Stopped(reason)) => {
                    tracing::error!(message = %id, %reason, "backfill stopped; fix the cause, then `crm-sync-adopt start` goes on")
                }
                Ok(SliceOutcome::Dropped(reason)) => tracing::warn!(message = %id, %reason, "nothing to run"),
                Err(error) => {
                    tracing::error!(message = %id, error = format!("{error:#}"), "the next slice could not be queued; this message returns");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        Ok(response)
    }
}
