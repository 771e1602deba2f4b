//! `cargo run -p crm-sync-local --bin run-reconcile [-- --again]`: runs the nightly reconciliation
//! now against the running local stack (`cargo run -p crm-sync-local`), printing its progress.
//! `--again` starts today's run over even if it is done; `RECONCILE_CYCLE_NIGHTS=1` checks every
//! record rather than tonight's segment. Reads the same settings as the local stack (`CRM_SYNC_HOST`, `CRM_SYNC_MOTO_PORT`, `CRM_SYNC_AWS_ENDPOINT`, `CRM_SYNC_STACK_NAME`,
//! `CRM_SYNC_SANDBOX_PORT`, `HUBSPOT_ACCESS_TOKEN`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::reconcile_schedule::ReconcileHandler;
use crm_sync::reconcile::Phase;
use crm_sync_local::{moto, provision, template};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let host = setting("CRM_SYNC_HOST", "127.0.0.1");
    let endpoint = setting(
        "CRM_SYNC_AWS_ENDPOINT",
        &format!("http://{host}:{}", setting("CRM_SYNC_MOTO_PORT", "4566")),
    );
    let stack_name = setting("CRM_SYNC_STACK_NAME", "crm-sync-local");
    let real_token = std::env::var("HUBSPOT_ACCESS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());

    let template = template::Template::load(&moto::repo_root().join("template.yaml"))?;
    let aws = load_sdk_config(&AwsTarget::local(&endpoint), CallBudget::BACKGROUND).await;
    // Provisioning is idempotent: this finds the running stack's tables, queues and secret.
    let parameters = HashMap::from([
        ("HubSpotClientSecret".to_string(), "unused".to_string()),
        (
            "HubSpotAccessToken".to_string(),
            real_token.clone().unwrap_or_else(|| "sandbox-token".into()),
        ),
    ]);
    let resources = provision::provision(&aws, &template, &stack_name, &parameters, &HashMap::new())
        .await
        .with_context(|| {
            format!("finding the local stack at {endpoint}; is `cargo run -p crm-sync-local` running?")
        })?;
    let mut env = template.function_environment("ReconcileFunction", &resources.resolver)?;
    match real_token {
        Some(token) => {
            env.insert("HUBSPOT_ACCESS_TOKEN".into(), token);
        }
        None => {
            env.insert("HUBSPOT_ACCESS_TOKEN".into(), "sandbox-token".into());
            env.insert(
                "HUBSPOT_API_BASE".into(),
                format!("http://{host}:{}", setting("CRM_SYNC_SANDBOX_PORT", "3001")),
            );
        }
    }
    // The run's shape can be set from the shell, e.g. RECONCILE_CYCLE_NIGHTS=1 to check everything.
    for name in [
        "RECONCILE_CYCLE_NIGHTS",
        "RECONCILE_PAGE_SIZE",
        "RECONCILE_STUCK_AFTER_MINUTES",
    ] {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.to_string(), value);
        }
    }
    let config = Env(move |name: &str| env.get(name).cloned()).reconcile()?;
    let handler = ReconcileHandler::build(&aws, config).await?;
    if std::env::args().any(|arg| arg == "--again") {
        handler.restart().await?;
    }

    loop {
        // Short invocations, so that progress shows; each resumes from the checkpoint.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let report = handler.run_until(deadline).await?;
        println!(
            "run {}  segment {}/{}  {:?}  checked {}  healed {}  flagged {}  crm drift {}  delivered {}  skipped {}  re-enqueued {}  errors {}  CRM calls {}",
            report.run_id,
            report.segment + 1,
            report.segments,
            report.phase,
            report.checked,
            report.healed,
            report.flagged,
            report.crm_drift,
            report.delivered,
            report.skipped.values().sum::<u64>(),
            report.requeued,
            report.errors,
            report.api_calls,
        );
        if report.phase == Phase::Done {
            println!(
                "done in {} ms over {} invocations",
                report.duration_ms, report.invocations
            );
            return Ok(());
        }
        if let Some(reason) = report.stopped.filter(|r| r.contains("budget")) {
            println!("stopped: {reason}");
            return Ok(());
        }
    }
}
