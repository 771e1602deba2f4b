//! `cargo run -p crm-sync-local --bin run-reconcile [-- --again]`: runs the nightly reconciliation
//! now against the running local stack (`cargo run -p crm-sync-local`), printing its progress.
//! `--again` starts today's run over even if it is done; `RECONCILE_CYCLE_NIGHTS=1` checks every
//! record rather than tonight's segment. Reads the same settings as the local stack (`CRM_SYNC_HOST`, `CRM_SYNC_MOTO_PORT`, `CRM_SYNC_AWS_ENDPOINT`, `CRM_SYNC_STACK_NAME`,
//! `CRM_SYNC_SANDBOX_PORT`, `HUBSPOT_ACCESS_TOKEN`).

use std::time::Duration;

use crm_sync::config::Env;
use crm_sync::entrypoints::reconcile_schedule::ReconcileHandler;
use crm_sync::reconcile::Phase;
use crm_sync_local::running;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (aws, mut env) = running::function_env("ReconcileFunction").await?;
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
