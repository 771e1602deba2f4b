//! `crm-sync-adopt`: adoption day for an existing app and an existing CRM.
//!
//! - `plan <records.jsonl|records.csv>` reads the app's records and the CRM, writes nothing, and
//!   says what the backfill would do: a table (or `--json`), and a plan directory
//!   (`adoption/<plan id>/`: `plan.jsonl`, `invalid.jsonl`, `summary.json`);
//! - `backfill <plan dir>` runs it: links, writes through the backfill lane, the initial pull;
//!   stopped anywhere (Ctrl-C, `--minutes`), it goes on where it stopped when run again;
//! - `start <plan dir>` hands the backfill to the stack's adoption function: the plan is kept in
//!   its bucket and run inside AWS, a slice at a time, with nothing here staying up;
//! - `status <plan dir>` shows a backfill's saved progress.
//!
//! Against the running local stack by default; `--deployed` reads the configuration from the
//! environment as the sync function does (see docs/adoption.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::adapters::plan_files::{self, InputFormat};
use crm_sync::config::Env;
use crm_sync::domain::adoption::{Action, BackfillPhase, BackfillProgress, PlanSummary};
use crm_sync::domain::contract::ObjectKind;
use crm_sync::domain::Clock;
use crm_sync::entrypoints::adoption_tool::{AdoptionTool, PlanRequest};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "crm-sync-adopt",
    about = "Plan and backfill an existing app and an existing CRM"
)]
struct Cli {
    /// Read the configuration from the environment (a deployed stack's sync function variables)
    /// rather than from the running local stack.
    #[arg(long, global = true)]
    deployed: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reads the app's records and the CRM, writes nothing, and says what the backfill would do.
    Plan {
        /// JSON Lines of outbound-change v1 messages, or a CSV file (`.csv`) with a header.
        input: PathBuf,
        /// The object a CSV file's rows are.
        #[arg(long, default_value = "contact")]
        object: String,
        /// Where the plan goes (default `adoption/<plan id>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Prints the summary as JSON rather than as a table.
        #[arg(long)]
        json: bool,
    },
    /// Runs a plan; run it again to go on after a stop.
    Backfill {
        plan: PathBuf,
        /// Stops after this many minutes (progress is kept).
        #[arg(long)]
        minutes: Option<u64>,
    },
    /// Hands a plan's backfill to the stack's adoption function, which runs it inside AWS
    /// (started again, it goes on from the saved progress).
    Start { plan: PathBuf },
    /// Shows a backfill's saved progress.
    Status { plan: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tool = tool(cli.deployed).await?;
    match cli.command {
        Command::Plan {
            input,
            object,
            out,
            json,
        } => plan(&tool, &input, &object, out, json).await,
        Command::Backfill { plan, minutes } => backfill(&tool, &plan, minutes).await,
        Command::Start { plan } => start(&tool, &plan).await,
        Command::Status { plan } => status(&tool, &plan).await,
    }
}

async fn tool(deployed: bool) -> anyhow::Result<AdoptionTool> {
    let (aws, env) = if deployed {
        let aws = load_sdk_config(&AwsTarget::FromEnvironment, CallBudget::BACKGROUND).await;
        (aws, std::env::vars().collect())
    } else {
        crm_sync_local::running::function_env("AdoptionFunction").await?
    };
    let config = Env(move |name: &str| env.get(name).cloned()).adopt()?;
    AdoptionTool::build(&aws, config).await
}

async fn plan(
    tool: &AdoptionTool,
    input: &Path,
    object: &str,
    out: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let object = ObjectKind::parse(object)
        .filter(|kind| kind.is_built_in())
        .with_context(|| format!("`{object}` is not contact, deal or activity"))?;
    let now_ms = crm_sync::domain::SystemClock.now_ms();
    let plan_id = format!(
        "plan-{}",
        crm_sync::domain::clock::rfc3339(now_ms)
            .replace([':', '-'], "")
            .trim_end_matches('Z')
            .replace('.', "-")
    );
    let dir = out.unwrap_or_else(|| PathBuf::from("adoption").join(&plan_id));
    let format = InputFormat::of(input, object);
    let spinner = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner.enable_steady_tick(Duration::from_millis(200));
    // A CSV row without `changed_at` is as old as the file: a live change made since the export
    // is newer, and wins.
    let exported_ms = std::fs::metadata(input)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_ms, |since| since.as_millis() as i64);
    let request = PlanRequest {
        plan_id: &plan_id,
        input,
        format,
        dir: &dir,
        exported_ms,
        now_ms,
        deadline: tokio::time::Instant::now() + Duration::from_secs(24 * 3600),
    };
    let (summary, unsaved) = tool
        .plan_file(&request, &|stage| spinner.set_message(stage.to_string()))
        .await?;
    spinner.finish_and_clear();
    if let Some(error) = unsaved {
        eprintln!("warning: the dashboard will not show this plan: {error}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_plan(&summary, &dir)?;
    }
    Ok(())
}

fn print_plan(summary: &PlanSummary, dir: &Path) -> anyhow::Result<()> {
    let c = &summary.counts;
    let cost = &summary.cost;
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["", "records", ""]);
    table.add_row(["create", &c.create.to_string(), "no CRM record is theirs"]);
    table.add_row([
        "update",
        &c.update.to_string(),
        "the CRM record with our id differs",
    ]);
    table.add_row([
        "link",
        &c.link.to_string(),
        "a CRM record without our id holds their email",
    ]);
    table.add_row([
        "unchanged",
        &c.unchanged.to_string(),
        "the CRM holds every app value",
    ]);
    table.add_row([
        "identity conflict",
        &c.conflict.to_string(),
        "not written: for a person to decide",
    ]);
    table.add_row([
        "CRM-owned values",
        &c.crm_owned_records.to_string(),
        "records the initial pull tells the app about",
    ]);
    table.add_row(["invalid lines", &c.invalid.to_string(), "see invalid.jsonl"]);
    println!(
        "Plan {} ({} records, {})\n{table}",
        summary.plan_id, c.records, summary.crm
    );
    let mut costs = Table::new();
    costs.load_preset(UTF8_BORDERS_ONLY).set_header(["cost", ""]);
    costs.add_row([
        "CRM calls".to_string(),
        format!(
            "{} ({} links, {} writes, {} pull reads); the plan made {}",
            cost.total_calls, cost.link_calls, cost.write_calls, cost.pull_calls, c.plan_calls
        ),
    ]);
    costs.add_row([
        "share of a day's budget".to_string(),
        format!(
            "{:.1}% of {} calls (the daily limit less the {}-call reserve and the {}-call live reserve)",
            cost.share_of_daily_budget * 100.0,
            summary
                .budget
                .daily_limit
                .saturating_sub(summary.budget.daily_reserve + summary.budget.live_reserve),
            summary.budget.daily_reserve,
            summary.budget.live_reserve
        ),
    ]);
    costs.add_row(["days".to_string(), cost.days.to_string()]);
    costs.add_row([
        "at the rate ceiling".to_string(),
        format!(
            "{} ({:.1} calls/s)",
            human(cost.seconds_at_ceiling),
            summary.budget.calls_per_second
        ),
    ]);
    println!("{costs}");
    let examples: Vec<String> = summary
        .examples
        .iter()
        .filter_map(|item| match &item.action {
            Action::Conflict { reason, .. } => {
                Some(format!("  {} {}: {reason}", item.object, item.record_id))
            }
            _ => None,
        })
        .take(10)
        .collect();
    if !examples.is_empty() {
        println!(
            "Identity conflicts (first {}):\n{}",
            examples.len(),
            examples.join("\n")
        );
    }
    println!("Plan written to {}", dir.display());
    Ok(())
}

fn human(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds / 60),
        _ => format!("{:.1} h", seconds as f64 / 3600.0),
    }
}

fn summary(dir: &Path) -> anyhow::Result<PlanSummary> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

async fn backfill(tool: &AdoptionTool, dir: &Path, minutes: Option<u64>) -> anyhow::Result<()> {
    let summary = summary(dir)?;
    let bar = ProgressBar::new(summary.counts.records);
    bar.set_style(ProgressStyle::with_template(
        "{msg:24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
    )?);
    let shown = bar.clone();
    let show = move |progress: &BackfillProgress| {
        let (label, position, length) = match progress.phase {
            BackfillPhase::Links => ("links", progress.line, progress.records),
            BackfillPhase::Writes => ("writes sent", progress.sent, progress.to_write),
            BackfillPhase::Settle => ("writes finishing", progress.sent, progress.to_write),
            BackfillPhase::Pull => ("initial pull", progress.line, progress.records),
            BackfillPhase::Done => ("done", progress.records, progress.records),
        };
        if shown.message() != label {
            shown.reset();
            shown.set_message(label);
        }
        shown.set_length(length.max(1));
        shown.set_position(position);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 * minutes.unwrap_or(7 * 24 * 60));
    let reader = || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<_>> + Send>> {
        Ok(Box::new(plan_files::read_plan(dir)?))
    };
    let run = tool
        .backfill
        .run(&summary.plan_id, &summary.counts, &reader, deadline, &show);
    // Ctrl-C stops at the next step, saved and letting go of the plan; a second one quits at once.
    let stopper = tool.backfill.stopper();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper.store(true, std::sync::atomic::Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let outcome = run.await;
    bar.finish();
    match outcome {
        Ok(progress) => print_progress(&progress),
        Err(error) => {
            if let Some(progress) = tool.store.backfill(&summary.plan_id).await? {
                print_progress(&progress);
            }
            return Err(error.into());
        }
    }
    Ok(())
}

async fn start(tool: &AdoptionTool, dir: &Path) -> anyhow::Result<()> {
    let summary = summary(dir)?;
    let runs = tool.runs.as_ref().context(
        "this stack has no adoption function to start it on: set ADOPTION_BUCKET and ADOPTION_QUEUE_URL (the stack's AdoptionBucketName and AdoptionQueueUrl outputs)",
    )?;
    if let Some(progress) = tool.store.backfill(&summary.plan_id).await? {
        if progress.phase == BackfillPhase::Done {
            print_progress(&progress);
            println!("{} is done already", summary.plan_id);
            return Ok(());
        }
    }
    runs.start(&summary, dir).await?;
    println!(
        "{} started in the stack's adoption function; follow it with `crm-sync-adopt status {}` or on the dashboard's Queues page",
        summary.plan_id,
        dir.display()
    );
    Ok(())
}

async fn status(tool: &AdoptionTool, dir: &Path) -> anyhow::Result<()> {
    let summary = summary(dir)?;
    match tool.store.backfill(&summary.plan_id).await? {
        Some(progress) => print_progress(&progress),
        None => println!("{}: not started", summary.plan_id),
    }
    Ok(())
}

fn print_progress(progress: &BackfillProgress) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header([progress.plan_id.as_str(), ""]);
    table.add_row([
        "phase".to_string(),
        format!("{:?}", progress.phase).to_lowercase(),
    ]);
    table.add_row(["linked".to_string(), progress.linked.to_string()]);
    table.add_row([
        "sent to the lane".to_string(),
        format!("{} of {}", progress.sent, progress.to_write),
    ]);
    table.add_row([
        "pulled".to_string(),
        format!(
            "{} ({} left to the reconciliation: busy or not written)",
            progress.pulled, progress.pull_deferred
        ),
    ]);
    table.add_row(["links refused".to_string(), progress.refused.len().to_string()]);
    table.add_row([
        "waiting for a person".to_string(),
        format!(
            "{} identity conflicts, {} deals and activities of theirs",
            progress.conflicts, progress.waiting_on_contact
        ),
    ]);
    table.add_row(["CRM calls".to_string(), progress.crm_calls.to_string()]);
    table.add_row(["runs".to_string(), progress.runs.to_string()]);
    if let Some(stopped) = &progress.stopped {
        table.add_row(["stopped".to_string(), stopped.clone()]);
    }
    println!("{table}");
}
