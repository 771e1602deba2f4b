//! The run's results: a table for the terminal and the README, JSON, and an SVG chart.

use std::fmt::Write as _;

use serde_json::json;

use crate::footprint::Memory;
use crate::outbound::{Bulk, Naive, CEILING_RECORDS_PER_SEC};
use crate::webhook::Latencies;

pub struct Results {
    pub machine: String,
    pub bulk: Vec<Bulk>,
    pub naive: Naive,
    pub webhooks: Vec<Latencies>,
    pub memory: Memory,
    pub sizes: Vec<(String, Option<u64>)>,
}

/// The CPU and core count this ran on.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {memory_gb:.0} GiB")
}

fn per_record(bulk: &Bulk, operation: &str) -> f64 {
    bulk.aws_calls.get(operation).copied().unwrap_or(0) as f64 / bulk.records as f64
}

impl Results {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "machine": self.machine,
            "ceiling_records_per_sec": CEILING_RECORDS_PER_SEC,
            "bulk": self.bulk.iter().map(|b| json!({
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
            })).collect::<Vec<_>>(),
            "naive": {
                "records": self.naive.records,
                "seconds": self.naive.seconds,
                "records_per_sec": self.naive.records_per_sec(),
                "throttled_429": self.naive.throttled,
            },
            "webhooks": self.webhooks.iter().map(|w| json!({
                "events": w.events,
                "deliveries": w.deliveries,
                "handler_p50_ms": w.handler_p50_ms,
                "handler_p99_ms": w.handler_p99_ms,
                "raw_p50_ms": w.raw_p50_ms,
                "raw_p99_ms": w.raw_p99_ms,
                "ratio_p50": w.handler_p50_ms / w.raw_p50_ms,
            })).collect::<Vec<_>>(),
            "memory": {
                "messages": self.memory.messages,
                "before_mb": self.memory.before_mb,
                "peak_mb": self.memory.peak_mb,
                "handled": self.memory.applied,
                "seconds": self.memory.seconds,
            },
            "binary_bytes": self.sizes.iter().map(|(name, size)| (name.clone(), json!(size))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// A Markdown table, as pasted into the README.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", results.machine);
    let _ = writeln!(
        out,
        "| outbound bulk load | records/s | of the 1,900/s ceiling | records per call | 429s | vs naive |\n|---|---|---|---|---|---|"
    );
    for bulk in &results.bulk {
        let _ = writeln!(
            out,
            "| {} contact upserts in {:.1} s | {:.0} | {:.1}% | {:.1} | {} | {:.0}x |",
            bulk.records,
            bulk.seconds,
            bulk.records_per_sec(),
            100.0 * bulk.records_per_sec() / CEILING_RECORDS_PER_SEC,
            bulk.records_per_call(),
            bulk.throttled,
            bulk.records_per_sec() / results.naive.records_per_sec()
        );
    }
    let _ = writeln!(
        out,
        "| naive: {} records, one call each, in {:.1} s | {:.1} | {:.1}% | 1 | {} | 1x |",
        results.naive.records,
        results.naive.seconds,
        results.naive.records_per_sec(),
        100.0 * results.naive.records_per_sec() / CEILING_RECORDS_PER_SEC,
        results.naive.throttled
    );
    let _ = writeln!(
        out,
        "\n| AWS requests per synced change | {} |\n|---|---|",
        results
            .bulk
            .iter()
            .map(|b| format!("{} records", b.records))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let mut operations: Vec<&String> = results.bulk.iter().flat_map(|b| b.aws_calls.keys()).collect();
    operations.sort();
    operations.dedup();
    for operation in operations {
        let _ = writeln!(
            out,
            "| {operation} | {} |",
            results
                .bulk
                .iter()
                .map(|b| format!("{:.3}", per_record(b, operation)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(
        out,
        "| sync invocations (their summed duration) | {} |",
        results
            .bulk
            .iter()
            .map(|b| format!("{} ({:.1} s)", b.invocations, b.busy_seconds))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "\n| webhook ingest | handler p50 | handler p99 | raw calls p50 | raw calls p99 | handler / raw (p50) |\n|---|---|---|---|---|---|"
    );
    for w in &results.webhooks {
        let _ = writeln!(
            out,
            "| {} event{} × {} deliveries | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}x |",
            w.events,
            if w.events == 1 { "" } else { "s" },
            w.deliveries,
            w.handler_p50_ms,
            w.handler_p99_ms,
            w.raw_p50_ms,
            w.raw_p99_ms,
            w.handler_p50_ms / w.raw_p50_ms
        );
    }
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
        .bulk
        .iter()
        .map(|b| {
            (
                format!("crm-sync, {} records", b.records),
                b.records_per_sec(),
                "#1f5fd1",
            )
        })
        .collect();
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
