//! `cargo run --release -p crm-sync-tests --bin chaos -- [--records N] [--rounds N] [--seed N]
//! [--crash-rate R] [--rep-edits N] [--late-rep-edits N]`:
//! the chaos scenario at full size, with its tally. Exits non-zero if any guarantee broke.

use std::time::Duration;

use crm_sync_tests::chaos::{chaos_app, run, Plan};

fn main() -> anyhow::Result<()> {
    let mut plan = Plan {
        records: 1_000,
        rounds: 3,
        rep_edits: 200,
        late_rep_edits: 20,
        invalid: 20,
        seed: 2026,
        drain_timeout: Duration::from_secs(1_800),
        ..Plan::small()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => plan.records = value.parse()?,
            "--rounds" => plan.rounds = value.parse()?,
            "--rep-edits" => plan.rep_edits = value.parse()?,
            "--late-rep-edits" => plan.late_rep_edits = value.parse()?,
            "--crash-rate" => plan.crash_rate = value.parse()?,
            "--seed" => plan.seed = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tally = runtime.block_on(async {
        let app = chaos_app().await;
        run(&app, &plan).await
    });
    println!("{tally}");
    anyhow::ensure!(
        tally.problems.is_empty(),
        "{} guarantees broke",
        tally.problems.len()
    );
    Ok(())
}
