//! Footprint: the sync handler's peak memory on one 10,000-message batch, measured in a process
//! of its own (the sandbox runs in the parent, so its records do not count), and the size of
//! each function's Lambda binary.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use crm_sync_local::{CrmTarget, LocalStack, StackOptions};
use hubspot_sandbox::{Sandbox, SandboxConfig};
use lambda_runtime::{Context, LambdaEvent};

/// The argument that makes this binary the measured child.
pub const CHILD: &str = "footprint-child";

#[derive(Debug, Clone)]
pub struct Memory {
    pub messages: usize,
    /// Resident memory before the batch (runtime, SDK clients, the local stack around them).
    pub before_mb: f64,
    /// Peak resident memory of the process, as Lambda's "Max Memory Used" counts it.
    pub peak_mb: f64,
    pub applied: u64,
    pub seconds: f64,
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Runs the child and reads its one line of JSON.
pub async fn measure(moto: &str, messages: usize) -> anyhow::Result<Memory> {
    let sandbox = Sandbox::start("127.0.0.1:0", SandboxConfig::default()).await?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([CHILD, moto, &sandbox.url(), &messages.to_string()])
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "the footprint child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(line.trim())?;
    let number = |name: &str| value[name].as_f64().unwrap_or(0.0);
    Ok(Memory {
        messages,
        before_mb: number("before_mb"),
        peak_mb: number("peak_mb"),
        applied: number("applied") as u64,
        seconds: number("seconds"),
    })
}

/// The child: one stack whose sync handler gets one batch of `messages`.
pub async fn child() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [moto, sandbox_url, messages] = args.as_slice() else {
        anyhow::bail!("usage: {CHILD} <moto endpoint> <sandbox url> <messages>");
    };
    let messages: usize = messages.parse()?;
    let stack = LocalStack::start(StackOptions {
        aws_endpoint: moto.clone(),
        handler_aws_endpoint: None,
        stack_name: format!("benchmem-{}", std::process::id()),
        http_addr: "127.0.0.1:0".parse()?,
        crm: CrmTarget::HubSpot,
        parameters: HashMap::from([("HubSpotClientSecret".to_string(), "bench".to_string())]),
        env_overrides: HashMap::from([
            ("HUBSPOT_ACCESS_TOKEN".to_string(), "sandbox-token".to_string()),
            ("HUBSPOT_API_BASE".to_string(), sandbox_url.clone()),
        ]),
        run_event_sources: false,
        sandbox_webhooks: false,
        generated_secrets: HashMap::new(),
        dashboard_password: "bench-dashboard-password".to_string(),
    })
    .await?;
    let queue = stack.resources.queue("OutboundQueue").clone();
    let before_mb = status_kb("VmRSS:") / 1024.0;
    let at = crm_sync_tests::hubspot::now_ms();
    let mut event = SqsEvent::default();
    for i in 0..messages {
        let mut message = SqsMessage::default();
        message.message_id = Some(format!("m-{i}"));
        message.receipt_handle = Some(format!("r-{i}"));
        message.event_source_arn = Some(queue.arn.clone());
        message.body = Some(
            serde_json::json!({
                "version": 1, "type": "contact.upsert", "record_id": format!("mem-{i}"),
                "idempotency_id": format!("mem-{i}-1"), "changed_at": at,
                "data": {"email": format!("mem-{i}@example.com"), "first_name": "Memory"}
            })
            .to_string(),
        );
        event.records.push(message);
    }
    let mut context = Context::default();
    context.deadline = (at + 900_000) as u64;
    let started = std::time::Instant::now();
    let response = stack.sync.handle(LambdaEvent::new(event, context)).await;
    let seconds = started.elapsed().as_secs_f64();
    let response = response.map_err(|error| anyhow::anyhow!("{error}"))?;
    let peak_mb = status_kb("VmHWM:") / 1024.0;
    println!(
        "{}",
        serde_json::json!({
            "before_mb": before_mb,
            "peak_mb": peak_mb,
            "applied": messages - response.batch_item_failures.len(),
            "seconds": seconds,
        })
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// Sizes of the functions' Lambda binaries, where a `cargo lambda build --release` or a
/// `sam build` left them.
pub fn binary_sizes() -> Vec<(String, Option<u64>)> {
    let root = crm_sync_local::moto::repo_root();
    [
        ("webhook", "WebhookFunction"),
        ("sync", "SyncFunction"),
        ("reconcile", "ReconcileFunction"),
        ("dashboard", "DashboardFunction"),
    ]
    .iter()
    .map(|(binary, logical)| {
        let candidates = [
            root.join("target/lambda").join(binary).join("bootstrap"),
            root.join(".aws-sam/build").join(logical).join("bootstrap"),
        ];
        let size = candidates
            .iter()
            .find_map(|path| std::fs::metadata(path).ok().map(|meta| meta.len()));
        (binary.to_string(), size)
    })
    .collect()
}
