//! `cargo run --release -p crm-sync-bench`: the benchmarks, side by side in one run, against one
//! moto and the HubSpot sandbox (which enforces HubSpot Pro's 190 calls per 10 s). Prints a
//! table and writes `docs/bench/results.json` and `docs/bench/throughput.svg`.
//!
//! Options: `--records N` (20000; the load against the CRM ceiling also runs at N/4 to show how
//! cost grows, and end to end through moto at N/10),
//! `--naive M` (400), `--webhooks K` (200 single-event and K/4 hundred-event deliveries),
//! `--footprint M` (10000 messages in the memory measurement's batch), `--out DIR` (docs/bench),
//! `--crm-records P` (200 through Pipedrive, 10x that through Salesforce), `--only crms` (just
//! the Pipedrive and Salesforce rows, written to `crms.json`), `--only ingest` (just webhook
//! ingest, its bursts and the functions' cold starts, written to `ingest.json`), `--only cold`
//! (just the cold starts, printed), `--only ceiling` (just the sync handler against the CRM
//! ceiling and the naive pattern, printed), `--only graph` (companies, contacts and their
//! labelled links through the sync handler beside contacts alone, written to `graph.json`).

mod cold_start;
mod footprint;
mod machine;
mod other_crms;
mod outbound;
mod report;
mod webhook;

use std::path::PathBuf;

use anyhow::Context;
use crm_sync_local::moto::Moto;

pub struct Args {
    records: usize,
    naive: usize,
    webhooks: usize,
    footprint: usize,
    crm_records: usize,
    only: Option<String>,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        records: 20_000,
        naive: 400,
        webhooks: 200,
        footprint: 10_000,
        crm_records: 200,
        only: None,
        out: PathBuf::from("docs/bench"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().context("--records")?,
            "--naive" => args.naive = value.parse().context("--naive")?,
            "--webhooks" => args.webhooks = value.parse().context("--webhooks")?,
            "--footprint" => args.footprint = value.parse().context("--footprint")?,
            "--out" => args.out = PathBuf::from(value),
            "--crm-records" => args.crm_records = value.parse().context("--crm-records")?,
            "--only" if ["crms", "ingest", "cold", "ceiling", "graph"].contains(&value.as_str()) => {
                args.only = Some(value)
            }
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// The whole graph (companies, contacts, labelled links) through the sync handler at the CRM's
/// ceiling, beside contacts alone: printed, and written to `graph.json`.
async fn graph(moto: &str, args: &Args) -> anyhow::Result<()> {
    eprintln!(
        "sync handler against the CRM ceiling: {} contact upserts alone",
        args.records
    );
    let alone = outbound::handler_ceiling(moto, args.records).await?;
    eprintln!(
        "the same contacts with {} companies and a link each",
        args.records / 10
    );
    let (bulk, graph) = outbound::graph_ceiling(moto, args.records).await?;
    let row = |label: &str, bulk: &outbound::Bulk| {
        format!(
            "| {label} | {} | {:.1} | {} | {:.0} | {} |",
            bulk.records,
            bulk.seconds,
            bulk.crm_calls,
            bulk.records as f64 / bulk.seconds,
            bulk.throttled
        )
    };
    println!(
        "| workload | messages | seconds | CRM calls | messages/s | throttled |\n|---|---|---|---|---|---|"
    );
    println!("{}", row("contacts alone", &alone));
    println!("{}", row("companies, contacts, links", &bulk));
    println!("{graph:?}");
    let json = serde_json::json!({
        "machine": machine::describe(),
        "contacts_alone": {"messages": alone.records, "seconds": alone.seconds, "crm_calls": alone.crm_calls, "throttled": alone.throttled},
        "graph": {"messages": bulk.records, "seconds": bulk.seconds, "crm_calls": bulk.crm_calls, "throttled": bulk.throttled,
                  "invocations": bulk.invocations, "written": graph.to_json()},
    });
    std::fs::write(args.out.join("graph.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Webhook ingest against the raw calls, its bursts, and the cold starts: printed, and written to
/// `ingest.json`.
async fn ingest(moto: &str, args: &Args) -> anyhow::Result<()> {
    eprintln!("webhook ingest");
    let (latencies, bursts) = webhook::ingest(moto, args.webhooks).await?;
    eprintln!("cold starts (builds the release binaries first)");
    let starts = cold_start::measure(moto).await?;
    println!("{}", webhook::table(&latencies, &bursts));
    println!("{}", cold_start::table(&starts));
    let mut json = webhook::to_json(&latencies, &bursts);
    json["cold_starts"] = serde_json::Value::Array(
        starts
            .iter()
            .map(|start| {
                serde_json::json!({
                    "function": start.function, "init_ms": start.init_ms,
                    "first_invocation_ms": start.first_invocation_ms,
                    "init_calls": start.init_calls, "answer": start.answer,
                })
            })
            .collect(),
    );
    std::fs::write(args.out.join("ingest.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(footprint::CHILD) {
        return footprint::child().await;
    }
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let moto = Moto::start("127.0.0.1", free_port()?)?;
    eprintln!("moto at {}", moto.endpoint);

    if args.only.as_deref() == Some("ingest") {
        ingest(&moto.endpoint, &args).await?;
        return Ok(());
    }
    if args.only.as_deref() == Some("ceiling") {
        // The rows the limiter's pace decides, printed; the JSON files are left as they are.
        let mut rows = Vec::new();
        for records in [args.records / 4, args.records] {
            eprintln!("sync handler against the CRM ceiling: {records} contact upserts");
            rows.push(outbound::handler_ceiling(&moto.endpoint, records).await?);
        }
        let naive = outbound::naive(args.naive).await?;
        for bulk in &rows {
            println!("{}", report::bulk_row("sync handler", bulk, &naive));
        }
        return Ok(());
    }
    if args.only.as_deref() == Some("graph") {
        graph(&moto.endpoint, &args).await?;
        return Ok(());
    }
    if args.only.as_deref() == Some("cold") {
        println!(
            "{}",
            cold_start::table(&cold_start::measure(&moto.endpoint).await?)
        );
        return Ok(());
    }
    eprintln!("Pipedrive: {} contact upserts", args.crm_records);
    let mut crms = vec![other_crms::pipedrive(&moto.endpoint, args.crm_records).await?];
    eprintln!("Salesforce: {} contact upserts", args.crm_records * 10);
    crms.push(other_crms::salesforce(&moto.endpoint, args.crm_records * 10).await?);
    println!("{}", other_crms::table(&crms));
    let json: Vec<serde_json::Value> = crms.iter().map(other_crms::CrmRow::to_json).collect();
    std::fs::write(args.out.join("crms.json"), serde_json::to_string_pretty(&json)?)?;
    if args.only.is_some() {
        return Ok(());
    }

    let mut ceiling = Vec::new();
    for records in [args.records / 4, args.records] {
        eprintln!("sync handler against the CRM ceiling: {records} contact upserts");
        ceiling.push(outbound::handler_ceiling(&moto.endpoint, records).await?);
    }
    let local_records = (args.records / 10).max(100);
    eprintln!("end to end on the local stack: {local_records} contact upserts");
    let end_to_end = outbound::bulk(&moto.endpoint, local_records).await?;
    eprintln!("naive pattern: {} single-record calls", args.naive);
    let naive = outbound::naive(args.naive).await?;
    ingest(&moto.endpoint, &args).await?;
    eprintln!(
        "footprint: one {}-message batch in a process of its own",
        args.footprint
    );
    let memory = footprint::measure(&moto.endpoint, args.footprint).await?;
    let sizes = footprint::binary_sizes();

    let results = report::Results {
        machine: machine::describe(),
        ceiling,
        end_to_end,
        naive,
        memory,
        sizes,
    };
    println!("{}", report::table(&results));
    let json = serde_json::to_string_pretty(&results.to_json())?;
    std::fs::write(args.out.join("results.json"), json)?;
    std::fs::write(args.out.join("throughput.svg"), report::svg(&results))?;
    eprintln!(
        "wrote {} and {}",
        args.out.join("results.json").display(),
        args.out.join("throughput.svg").display()
    );
    Ok(())
}
