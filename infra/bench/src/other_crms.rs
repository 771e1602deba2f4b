//! The same sync, end to end through the local stack, against the Pipedrive and Salesforce
//! sandboxes with their default limits: how many records a call carries, how many requests a
//! record costs, and the pace against what the CRM's limits allow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use serde_json::json;

use crate::outbound::preload_and_start;

/// One CRM's row.
#[derive(Debug, Clone)]
pub struct CrmRow {
    pub crm: &'static str,
    pub records: usize,
    pub seconds: f64,
    /// HTTP requests the CRM served (refused ones included).
    pub requests: u64,
    /// Write calls that carried records (a Pipedrive upsert is a search and a write).
    pub write_calls: u64,
    pub throttled: u64,
    /// Records a second the CRM's limits allow crm-sync (its configured pace, before headroom).
    pub ceiling_per_second: f64,
}

impl CrmRow {
    pub fn records_per_call(&self) -> f64 {
        self.records as f64 / self.write_calls.max(1) as f64
    }

    pub fn requests_per_record(&self) -> f64 {
        (self.requests - self.throttled) as f64 / self.records as f64
    }

    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "crm": self.crm,
            "records": self.records,
            "seconds": self.seconds,
            "requests": self.requests,
            "write_calls": self.write_calls,
            "throttled": self.throttled,
            "records_per_call": self.records_per_call(),
            "requests_per_record": self.requests_per_record(),
            "records_per_second": self.per_second(),
            "ceiling_records_per_second": self.ceiling_per_second,
        })
    }
}

async fn stack(
    moto: &str,
    name: &str,
    batch_size: u32,
    env: &[(&str, String)],
) -> anyhow::Result<LocalStack> {
    LocalStack::start(StackOptions {
        aws_endpoint: moto.to_string(),
        handler_aws_endpoint: None,
        stack_name: format!("bench{name}-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::HubSpot,
        parameters: HashMap::from([("SyncBatchSize".to_string(), batch_size.to_string())]),
        env_overrides: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await
}

/// Fills the outbound queue, starts the event sources and waits until `count()` reaches
/// `records`; returns the seconds it took.
async fn run(
    stack: &mut LocalStack,
    moto: &str,
    records: usize,
    count: impl Fn() -> usize,
) -> anyhow::Result<f64> {
    let started = preload_and_start(stack, moto, records).await?;
    let deadline = started + Duration::from_secs(900);
    while count() < records {
        anyhow::ensure!(Instant::now() < deadline, "the load did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn pipedrive(moto: &str, records: usize) -> anyhow::Result<CrmRow> {
    let limits = pipedrive_sandbox::Limits::default();
    let sandbox = pipedrive_sandbox::Sandbox::start("127.0.0.1:0", "bench-token", limits.clone()).await?;
    let mut stack = stack(
        moto,
        "pd",
        100,
        &[
            ("CRM", "pipedrive".into()),
            ("PIPEDRIVE_API_BASE", sandbox.url()),
            ("PIPEDRIVE_API_TOKEN", "bench-token".into()),
        ],
    )
    .await?;
    let seconds = run(&mut stack, moto, records, || sandbox.records("persons").len()).await?;
    let stats = sandbox.stats();
    let window = limits.burst_window.as_secs_f64();
    Ok(CrmRow {
        crm: "pipedrive",
        records,
        seconds,
        requests: stats.calls,
        // Each upsert ends in one write (a PATCH or a POST) after its search.
        write_calls: records as u64,
        throttled: stats.throttled,
        // Two requests a record within the token's window.
        ceiling_per_second: limits.burst_limit as f64 / window / 2.0,
    })
}

pub async fn salesforce(moto: &str, records: usize) -> anyhow::Result<CrmRow> {
    let sandbox =
        salesforce_sandbox::Sandbox::start("127.0.0.1:0", "bench-access", "bench-refresh", 1_000_000).await?;
    let mut stack = stack(
        moto,
        "sf",
        // Two full collections a batch.
        400,
        &[
            ("CRM", "salesforce".into()),
            ("SALESFORCE_INSTANCE_URL", sandbox.instance_url()),
            ("SALESFORCE_ACCESS_TOKEN", "bench-access".into()),
        ],
    )
    .await?;
    let seconds = run(&mut stack, moto, records, || sandbox.records("Contact").len()).await?;
    let stats = sandbox.stats();
    Ok(CrmRow {
        crm: "salesforce",
        records,
        seconds,
        requests: stats.calls,
        write_calls: stats.calls,
        throttled: 0,
        // 20 calls a second (the limiter's default pace) of 200 records.
        ceiling_per_second: 20.0 * 200.0,
    })
}

/// The rows as a Markdown table.
pub fn table(rows: &[CrmRow]) -> String {
    let mut out = String::from(
        "| CRM | records | seconds | records/s | allowed by its limits | records per write call | requests per record | 429s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.0} ({:.0}%) | {:.0} | {:.2} | {} |\n",
            row.crm,
            row.records,
            row.seconds,
            row.per_second(),
            row.ceiling_per_second,
            100.0 * row.per_second() / row.ceiling_per_second,
            row.records_per_call(),
            row.requests_per_record(),
            row.throttled,
        ));
    }
    out
}
