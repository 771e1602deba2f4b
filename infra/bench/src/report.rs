//! The run's results: a table for the terminal and the README, JSON, and an SVG chart.

use std::fmt::Write as _;

use serde_json::json;

use crate::footprint::Memory;
use crate::outbound::{Bulk, Naive, CEILING_RECORDS_PER_SEC};

pub struct Results {
    pub machine: String,
    /// The handler against the CRM ceiling, at two sizes.
    pub ceiling: Vec<Bulk>,
    /// The whole local stack: moto's queue and state, the event source, the sandbox.
    pub end_to_end: Bulk,
    pub naive: Naive,
    pub memory: Memory,
    pub sizes: Vec<(String, Option<u64>)>,
}

/// us-east-1 list prices, on demand.
const LAMBDA_ARM_GB_SECOND: f64 = 0.000_013_333_4;
const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
const SQS_REQUEST: f64 = 0.40 / 1e6;
const DYNAMODB_WRU: f64 = 0.625 / 1e6;
const DYNAMODB_RRU: f64 = 0.125 / 1e6;
/// The sync function's MemorySize in template.yaml.
const SYNC_MEMORY_GB: f64 = 0.25;

/// One line of the cost of a million synced changes: what, dollars, how it was derived.
pub struct CostLine {
    pub what: &'static str,
    pub dollars: f64,
    pub basis: String,
}

fn units(bytes: f64, unit: f64) -> f64 {
    (bytes / unit).ceil().max(1.0)
}

/// The cost of a million synced changes, from the measured request counts, item sizes and
/// handler time (at the CRM ceiling, where production runs under load).
pub fn cost(results: &Results) -> Vec<CostLine> {
    let e2e = &results.end_to_end;
    let per =
        |operation: &str| e2e.aws_calls.get(operation).copied().unwrap_or(0) as f64 / e2e.records as f64;
    let busiest = results.ceiling.last().unwrap_or(e2e);
    let seconds_per_change = busiest.busy_seconds / busiest.records as f64;
    let invocations_per_change = busiest.invocations as f64 / busiest.records as f64;
    // Each UpdateItem of a state item writes the item and moves it in `by_status` (its key
    // changes: a delete and a put of the projected item); the limiter's calls are one per CRM call.
    let limiter_writes = e2e.crm_calls as f64 / e2e.records as f64;
    let state_writes = (per("UpdateItem") - limiter_writes).max(0.0);
    let state_wru = units(e2e.state_item_bytes, 1024.0);
    let timeline_wru = units(e2e.timeline_item_bytes, 1024.0);
    let wru = state_writes * 3.0 * state_wru + timeline_wru + limiter_writes;
    let reads = per("Query") + per("BatchGetItem") + per("GetItem");
    // The app sends one message per change; the event source receives and deletes ten at a time.
    let sqs_requests = 1.0 + 0.1 + 0.1;
    vec![
        CostLine {
            what: "DynamoDB writes",
            dollars: 1e6 * wru * DYNAMODB_WRU,
            basis: format!(
                "{state_writes:.2} state writes x 3 (item + by_status move) x {state_wru:.0} WRU ({:.0} B items) + timeline {timeline_wru:.0} WRU ({:.0} B) + limiter {limiter_writes:.3}",
                e2e.state_item_bytes, e2e.timeline_item_bytes
            ),
        },
        CostLine {
            what: "DynamoDB reads",
            dollars: 1e6 * reads * DYNAMODB_RRU,
            basis: format!("{reads:.3} reads per change"),
        },
        CostLine {
            what: "SQS requests",
            dollars: 1e6 * sqs_requests * SQS_REQUEST,
            basis: "1 SendMessage by the app + 0.1 ReceiveMessage + 0.1 DeleteMessageBatch".into(),
        },
        CostLine {
            what: "Lambda duration (arm64, 256 MB)",
            dollars: 1e6 * seconds_per_change * SYNC_MEMORY_GB * LAMBDA_ARM_GB_SECOND,
            basis: format!("{:.2} ms of sync function per change", seconds_per_change * 1000.0),
        },
        CostLine {
            what: "Lambda requests",
            dollars: 1e6 * invocations_per_change * LAMBDA_REQUEST,
            basis: format!("{:.4} invocations per change", invocations_per_change),
        },
    ]
}

fn bulk_json(b: &Bulk) -> serde_json::Value {
    json!({
        "records": b.records,
        "seconds": b.seconds,
        "records_per_sec": b.records_per_sec(),
        "fraction_of_ceiling": b.records_per_sec() / CEILING_RECORDS_PER_SEC,
        "records_per_call": b.records_per_call(),
        "crm_calls": b.crm_calls,
        "upsert_calls": b.upsert_calls,
        "throttled_429": b.throttled,
        "aws_calls": b.aws_calls,
        "invocations": b.invocations,
        "busy_seconds": b.busy_seconds,
        "state_item_bytes": b.state_item_bytes,
        "timeline_item_bytes": b.timeline_item_bytes,
        "call_span_seconds": b.call_span_seconds,
        "steady_calls_per_sec": b.steady_calls_per_sec(),
    })
}

impl Results {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "machine": self.machine,
            "ceiling_records_per_sec": CEILING_RECORDS_PER_SEC,
            "end_to_end": bulk_json(&self.end_to_end),
            "handler_vs_ceiling": self.ceiling.iter().map(bulk_json).collect::<Vec<_>>(),
            "naive": {
                "records": self.naive.records,
                "seconds": self.naive.seconds,
                "records_per_sec": self.naive.records_per_sec(),
                "throttled_429": self.naive.throttled,
            },
            "memory": {
                "messages": self.memory.messages,
                "before_mb": self.memory.before_mb,
                "peak_mb": self.memory.peak_mb,
                "handled": self.memory.applied,
                "seconds": self.memory.seconds,
            },
            "cost_per_million_changes_usd": cost(self).iter().map(|line| json!({
                "what": line.what, "dollars": line.dollars, "basis": line.basis,
            })).collect::<Vec<_>>(),
            "binary_bytes": self.sizes.iter().map(|(name, size)| (name.clone(), json!(size))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

pub fn bulk_row(label: &str, bulk: &Bulk, naive: &Naive) -> String {
    format!(
        "| {label}: {} contact upserts in {:.1} s | {:.0} | {:.1}% | {:.2} ({:.1}%) | {:.1} | {} | {:.0}x |",
        bulk.records,
        bulk.seconds,
        bulk.records_per_sec(),
        100.0 * bulk.records_per_sec() / CEILING_RECORDS_PER_SEC,
        bulk.steady_calls_per_sec(),
        100.0 * bulk.steady_calls_per_sec() * 100.0 / CEILING_RECORDS_PER_SEC,
        bulk.records_per_call(),
        bulk.throttled,
        bulk.records_per_sec() / naive.records_per_sec()
    )
}

/// A Markdown table, as pasted into the README.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", results.machine);
    let _ = writeln!(
        out,
        "| outbound | records/s | of the 1,900/s ceiling | CRM calls/s, first to last call (of 19/s) | records per CRM call | 429s | vs naive |\n|---|---|---|---|---|---|---|"
    );
    for bulk in &results.ceiling {
        let _ = writeln!(out, "{}", bulk_row("sync handler", bulk, &results.naive));
    }
    let _ = writeln!(
        out,
        "| naive, one call per record: {} records in {:.1} s | {:.1} | {:.1}% | {:.2} | 1 | {} | 1x |",
        results.naive.records,
        results.naive.seconds,
        results.naive.records_per_sec(),
        100.0 * results.naive.records_per_sec() / CEILING_RECORDS_PER_SEC,
        results.naive.records_per_sec(),
        results.naive.throttled
    );
    let _ = writeln!(
        out,
        "{}",
        bulk_row("end to end through moto", &results.end_to_end, &results.naive)
    );
    let e2e = &results.end_to_end;
    let _ = writeln!(
        out,
        "\n| end to end, per synced change | AWS requests |\n|---|---|"
    );
    for (operation, count) in &e2e.aws_calls {
        let _ = writeln!(out, "| {operation} | {:.3} |", *count as f64 / e2e.records as f64);
    }
    for bulk in &results.ceiling {
        let _ = writeln!(
            out,
            "| sync function time, {} records (handler invoked {} times) | {:.2} ms |",
            bulk.records,
            bulk.invocations,
            1000.0 * bulk.busy_seconds / bulk.records as f64
        );
    }
    let lines = cost(results);
    let _ = writeln!(
        out,
        "\n| a million synced changes, us-east-1 list prices | dollars | derived from |\n|---|---|---|"
    );
    for line in &lines {
        let _ = writeln!(out, "| {} | {:.2} | {} |", line.what, line.dollars, line.basis);
    }
    let _ = writeln!(
        out,
        "| **total** | **{:.2}** | |",
        lines.iter().map(|line| line.dollars).sum::<f64>()
    );
    let _ = writeln!(
        out,
        "\n| footprint | |\n|---|---|\n| sync handler, one {}-message batch: peak resident memory | {:.1} MB (before the batch: {:.1} MB; {:.1} s) |",
        results.memory.messages, results.memory.peak_mb, results.memory.before_mb, results.memory.seconds
    );
    for (name, size) in &results.sizes {
        let _ = writeln!(
            out,
            "| `{name}` bootstrap (arm64, release) | {} |",
            size.map_or(
                "not built (run `sam build` or `cargo lambda build --release --arm64`)".into(),
                |bytes| { format!("{:.1} MB", bytes as f64 / 1_000_000.0) }
            )
        );
    }
    out
}

/// A bar chart of records per second: each bulk load, the ceiling, the naive pattern.
pub fn svg(results: &Results) -> String {
    let mut bars: Vec<(String, f64, &str)> = results
        .ceiling
        .iter()
        .map(|b| {
            (
                format!("crm-sync, {} records", b.records),
                b.records_per_sec(),
                "#1f5fd1",
            )
        })
        .collect();
    bars.push((
        format!("end to end via moto, {}", results.end_to_end.records),
        results.end_to_end.records_per_sec(),
        "#6c8ed6",
    ));
    bars.push(("HubSpot Pro ceiling".into(), CEILING_RECORDS_PER_SEC, "#9aa5b5"));
    bars.push((
        "naive, one call per record".into(),
        results.naive.records_per_sec(),
        "#c0392b",
    ));
    let max = bars.iter().map(|(_, v, _)| *v).fold(1.0, f64::max);
    let (width, row, left) = (760.0, 44.0, 230.0);
    let height = 60.0 + row * bars.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
         <text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">Contacts written to the CRM per second (HubSpot Pro: 190 calls / 10 s)</text>"
    );
    for (i, (label, value, color)) in bars.iter().enumerate() {
        let y = 44.0 + row * i as f64;
        let length = (width - left - 90.0) * value / max;
        let _ = write!(
            svg,
            "<text x=\"10\" y=\"{:.0}\">{label}</text><rect x=\"{left}\" y=\"{y:.0}\" width=\"{length:.1}\" height=\"26\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\">{value:.0}/s</text>",
            y + 18.0,
            left + length + 6.0,
            y + 18.0
        );
    }
    svg.push_str("</svg>");
    svg
}
