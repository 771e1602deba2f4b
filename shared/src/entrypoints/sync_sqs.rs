//! The sync function's SQS event source: a batch in, a partial batch response out.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

use crate::adapters::cloudwatch::{EmbeddedMetrics, Unit};
use crate::adapters::dynamodb::DynamoDbEventJournal;
use crate::adapters::sqs::SqsQueue;
use crate::config::SyncConfig;
use crate::domain::SystemClock;
use crate::inbound::{InboundService, InboundSettings};
use crate::sync::SyncService;
use crate::worker::{BatchReport, SyncMessage, Worker};

/// Time kept back from the invocation deadline to re-queue what is left and answer.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// The sync function: app changes from the outbound queue, webhook events from the inbound one.
pub struct SyncHandler {
    outbound: SyncService,
    /// The inbound queue's ARN and the service for its batches.
    inbound: Option<(String, InboundService)>,
    /// The reconciliation lane's ARN and the low-priority service for its batches.
    low_lane: Option<(String, SyncService)>,
    /// The dashboard's re-sync lane: app changes again, at full priority, ahead of any backlog.
    resync_lane: Option<(String, SyncService)>,
    /// The adoption backfill's lane: at the lowest priority, like the reconciliation's.
    backfill_lane: Option<(String, SyncService)>,
    metrics: Option<EmbeddedMetrics>,
}

impl SyncHandler {
    pub fn new(
        outbound: SyncService,
        inbound: Option<(String, InboundService)>,
        low_lane: Option<(String, SyncService)>,
        resync_lane: Option<(String, SyncService)>,
    ) -> Self {
        Self {
            outbound,
            inbound,
            low_lane,
            resync_lane,
            backfill_lane: None,
            metrics: None,
        }
    }

    /// Consumes the adoption backfill's lane too: (queue ARN, its low-priority service).
    pub fn with_backfill_lane(mut self, lane: Option<(String, SyncService)>) -> Self {
        self.backfill_lane = lane;
        self
    }

    /// Writes each batch's counts as CloudWatch metrics.
    pub fn with_metrics(mut self, metrics: EmbeddedMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Wires the production adapters. Fails (and so the cold start fails) on a bad mapping.
    ///
    /// Long on purpose: the sync function's wiring, every port once, in one place.
    pub async fn build(aws: &SdkConfig, config: SyncConfig) -> anyhow::Result<Self> {
        let metrics = config.metrics.clone();
        let settings = config.crm.settings.clone();
        let state_table = config.crm.state_table.clone();
        let super::CrmWiring {
            mapping,
            crm,
            state,
            limiter,
        } = super::wire_crm(aws, config.crm).await?;
        let events = super::crm_events(&settings, &mapping);
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        let sqs = aws_sdk_sqs::Client::new(aws);
        let clock = Arc::new(SystemClock);
        // Every dead letter is journaled too, for the dashboard's list of them.
        let journal = Arc::new(crate::adapters::dynamodb::DynamoDbDeadLetterJournal::new(
            dynamodb.clone(),
            state_table,
        ));
        let journaled = |url: String, lane: &'static str| -> Arc<dyn crate::ports::MessageQueue> {
            Arc::new(crate::dead_letters::JournaledDeadLetters::new(
                Arc::new(SqsQueue::new(sqs.clone(), url)),
                journal.clone(),
                lane,
                clock.clone(),
            ))
        };
        let inbound = config.inbound.map(|inbound| {
            let worker = Worker::new(
                limiter.clone(),
                Arc::new(SqsQueue::new(sqs.clone(), inbound.queue_url)),
                journaled(inbound.dlq_url, "inbound"),
                clock.clone(),
                config.sync.call_settings(),
            );
            let settings = InboundSettings {
                reassert_app_values: inbound.reassert_app_values,
                lease: config.sync.lease,
                busy_delay: config.sync.busy_delay,
                max_attempts: config.sync.max_attempts,
                retry_base: config.sync.retry_base,
                retry_cap: config.sync.retry_cap,
                max_clock_skew: config.sync.max_clock_skew,
            };
            let service = InboundService::new(
                mapping.clone(),
                crm.clone(),
                events,
                Arc::new(DynamoDbEventJournal::new(
                    dynamodb.clone(),
                    inbound.webhook_table,
                    inbound.event_retention_ms,
                )),
                state.clone(),
                Arc::new(SqsQueue::new(sqs.clone(), inbound.app_inbox_url)),
                clock.clone(),
                worker,
                settings,
            );
            (inbound.queue_arn, service)
        });
        let dead_letters = journaled(config.outbound_dlq_url, "outbound");
        // A lane is one more queue of app changes; its retries stay in it.
        let lane = |url: String, settings: crate::sync::SyncSettings| {
            SyncService::new(
                mapping.clone(),
                crm.clone(),
                state.clone(),
                limiter.clone(),
                Arc::new(SqsQueue::new(sqs.clone(), url)),
                dead_letters.clone(),
                clock.clone(),
                settings,
            )
        };
        let low_lane = config.reconcile_lane.map(|(arn, url)| {
            let mut settings = config.sync.clone();
            settings.low_priority = true;
            (arn, lane(url, settings))
        });
        let backfill_lane = config.backfill_lane.map(|(arn, url)| {
            let mut settings = config.sync.clone();
            settings.low_priority = true;
            (arn, lane(url, settings))
        });
        let resync_lane = config
            .resync_lane
            .map(|(arn, url)| (arn, lane(url, config.sync.clone())));
        let outbound = SyncService::new(
            mapping,
            crm,
            state,
            limiter,
            Arc::new(SqsQueue::new(sqs, config.outbound_queue_url)),
            dead_letters,
            clock,
            config.sync,
        );
        let handler = Self::new(outbound, inbound, low_lane, resync_lane).with_backfill_lane(backfill_lane);
        Ok(match metrics {
            Some((namespace, stack)) => handler.with_metrics(EmbeddedMetrics::new(namespace, stack)),
            None => handler,
        })
    }

    /// Handles one SQS batch; only messages whose handling could not be recorded come back.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline = super::deadline_of(event.context.deadline, DEADLINE_MARGIN);
        let source = event
            .payload
            .records
            .first()
            .and_then(|record| record.event_source_arn.clone())
            .unwrap_or_default();
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
        let (direction, report): (&str, BatchReport) = match &self.inbound {
            Some((arn, inbound)) if *arn == source => ("inbound", inbound.process(messages, deadline).await),
            _ => match (&self.low_lane, &self.resync_lane) {
                (Some((arn, low)), _) if *arn == source => {
                    ("reconcile", low.process(messages, deadline).await)
                }
                (_, Some((arn, resync))) if *arn == source => {
                    ("resync", resync.process(messages, deadline).await)
                }
                _ => match &self.backfill_lane {
                    Some((arn, backfill)) if *arn == source => {
                        ("backfill", backfill.process(messages, deadline).await)
                    }
                    _ => ("outbound", self.outbound.process(messages, deadline).await),
                },
            },
        };
        tracing::info!(
            direction,
            messages = count,
            applied = report.applied,
            skipped = report.skipped,
            retried = report.retried,
            dead_lettered = report.dead_lettered,
            redeliver = report.redeliver.len(),
            crm_calls = report.crm_calls,
            "batch done"
        );
        if let Some(metrics) = &self.metrics {
            let now_ms = crate::domain::clock::Clock::now_ms(&SystemClock);
            // Metrics go to stdout as they are: CloudWatch Logs reads them from the raw line.
            println!(
                "{}",
                metrics.line(now_ms, direction, &batch_metrics(count, &report))
            );
        }
        let mut response = SqsBatchResponse::default();
        for id in report.redeliver {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }
}

/// What a batch reports to CloudWatch; the alarms in template.yaml read these names.
pub fn batch_metrics(messages: usize, report: &BatchReport) -> Vec<(&'static str, f64, Unit)> {
    let count = |n: usize| n as f64;
    let mut metrics = vec![
        ("Messages", count(messages), Unit::Count),
        ("Applied", count(report.applied), Unit::Count),
        ("Skipped", count(report.skipped), Unit::Count),
        ("Retried", count(report.retried), Unit::Count),
        ("DeadLettered", count(report.dead_lettered), Unit::Count),
        ("Redelivered", count(report.redeliver.len()), Unit::Count),
        ("CrmCalls", count(report.crm_calls), Unit::Count),
        ("CrmThrottled", count(report.throttled), Unit::Count),
        ("CrmErrors", count(report.crm_errors), Unit::Count),
    ];
    if let Some(left) = report.daily_remaining {
        metrics.push(("DailyCallsRemaining", left as f64, Unit::Count));
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(metrics: &[(&'static str, f64, Unit)], name: &str) -> Option<f64> {
        metrics.iter().find(|(n, _, _)| *n == name).map(|(_, v, _)| *v)
    }

    #[test]
    fn a_batch_reports_its_counts_and_the_daily_budget_only_when_the_crm_told_it() {
        let mut report = BatchReport {
            applied: 97,
            dead_lettered: 3,
            throttled: 2,
            crm_calls: 4,
            ..BatchReport::default()
        };
        let metrics = batch_metrics(100, &report);
        assert_eq!(value(&metrics, "Messages"), Some(100.0));
        assert_eq!(value(&metrics, "DeadLettered"), Some(3.0));
        assert_eq!(value(&metrics, "CrmThrottled"), Some(2.0));
        assert_eq!(value(&metrics, "DailyCallsRemaining"), None);
        report.daily_remaining = Some(1234);
        assert_eq!(
            value(&batch_metrics(100, &report), "DailyCallsRemaining"),
            Some(1234.0)
        );
    }
}
