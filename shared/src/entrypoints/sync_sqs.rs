//! The sync function's SQS event source: a batch in, a partial batch response out.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

use crate::adapters::dynamodb::{DynamoDbRateLimiter, DynamoDbSyncState};
use crate::adapters::hubspot::HubSpotClient;
use crate::adapters::secrets_manager::read_secret_field;
use crate::adapters::sqs::SqsQueue;
use crate::config::{SecretSource, SyncConfig};
use crate::domain::mapping::Mapping;
use crate::domain::SystemClock;
use crate::sync::{SyncMessage, SyncReport, SyncService};

/// Time kept back from the invocation deadline to re-queue what is left and answer.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

pub struct SyncHandler {
    service: SyncService,
}

impl SyncHandler {
    pub fn new(service: SyncService) -> Self {
        Self { service }
    }

    /// Wires the production adapters. Fails (and so the cold start fails) on a bad mapping.
    pub async fn build(aws: &SdkConfig, config: SyncConfig) -> anyhow::Result<Self> {
        let mapping = Mapping::parse(&config.mapping_toml)
            .map_err(|error| anyhow::anyhow!("{error} (in {})", config.mapping_source))?;
        let token = match config.hubspot_token {
            SecretSource::Value(value) => value,
            SecretSource::SecretsManager { secret_id, field } => {
                read_secret_field(&aws_sdk_secretsmanager::Client::new(aws), &secret_id, field).await?
            }
        };
        let crm = HubSpotClient::new(
            &config.hubspot_api_base,
            token,
            Duration::from_secs(config.crm_timeout_secs),
        )?;
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        let sqs = aws_sdk_sqs::Client::new(aws);
        let service = SyncService::new(
            Arc::new(mapping),
            Arc::new(crm),
            Arc::new(DynamoDbSyncState::new(
                dynamodb.clone(),
                config.state_table,
                config.timeline_retention_ms,
            )),
            Arc::new(DynamoDbRateLimiter::new(
                dynamodb,
                config.rate_limit_table,
                "hubspot",
                config.limiter,
            )),
            Arc::new(SqsQueue::new(sqs.clone(), config.outbound_queue_url)),
            Arc::new(SqsQueue::new(sqs, config.outbound_dlq_url)),
            Arc::new(SystemClock),
            config.sync,
        );
        Ok(Self::new(service))
    }

    /// Handles one SQS batch; only messages whose handling could not be recorded come back.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline = deadline_of(event.context.deadline);
        let messages: Vec<SyncMessage> = event
            .payload
            .records
            .into_iter()
            .filter_map(|record| {
                Some(SyncMessage {
                    message_id: record.message_id?,
                    body: record.body.unwrap_or_default(),
                    attributes: record
                        .message_attributes
                        .into_iter()
                        .filter_map(|(name, value)| Some((name, value.string_value?)))
                        .collect(),
                })
            })
            .collect();
        let count = messages.len();
        let report: SyncReport = self.service.process(messages, deadline).await;
        tracing::info!(
            messages = count,
            applied = report.applied,
            skipped = report.skipped,
            retried = report.retried,
            dead_lettered = report.dead_lettered,
            redeliver = report.redeliver.len(),
            crm_calls = report.crm_calls,
            "batch done"
        );
        let mut response = SqsBatchResponse::default();
        for id in report.redeliver {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }
}

/// The invocation's deadline (epoch ms) as an instant, less the margin.
fn deadline_of(deadline_ms: u64) -> tokio::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    tokio::time::Instant::now() + left.saturating_sub(DEADLINE_MARGIN)
}
