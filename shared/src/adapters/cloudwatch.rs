//! CloudWatch metrics in Embedded Metric Format: one JSON line on stdout per batch, which
//! CloudWatch Logs turns into metrics. No API call, so nothing is added to a batch's time.

use serde_json::{json, Map, Value};

/// A metric's unit, as CloudWatch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// Writes metrics of one stack under one namespace, by `Stack` and by `Stack` and `Lane`.
#[derive(Debug, Clone)]
pub struct EmbeddedMetrics {
    namespace: String,
    stack: String,
}

impl EmbeddedMetrics {
    pub fn new(namespace: impl Into<String>, stack: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            stack: stack.into(),
        }
    }

    /// The EMF line for one batch of `lane` (at most 100 metrics, as EMF allows).
    pub fn line(&self, timestamp_ms: i64, lane: &str, metrics: &[(&str, f64, Unit)]) -> String {
        let definitions: Vec<Value> = metrics
            .iter()
            .take(100)
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Stack"], ["Stack", "Lane"]],
                    "Metrics": definitions,
                }]
            }),
        );
        root.insert("Stack".into(), Value::String(self.stack.clone()));
        root.insert("Lane".into(), Value::String(lane.to_string()));
        for (name, value, _) in metrics.iter().take(100) {
            root.insert((*name).to_string(), json!(value));
        }
        Value::Object(root).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_every_metric_and_carries_its_value_and_dimensions() {
        let metrics = EmbeddedMetrics::new("crm-sync", "prod");
        let line = metrics.line(
            1_700_000_000_000,
            "outbound",
            &[("Applied", 97.0, Unit::Count), ("CrmThrottled", 0.0, Unit::Count)],
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert!(!line.contains('\n'), "one line");
        let declared = &value["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "crm-sync");
        assert_eq!(declared["Dimensions"], json!([["Stack"], ["Stack", "Lane"]]));
        assert_eq!(
            declared["Metrics"][1],
            json!({"Name": "CrmThrottled", "Unit": "Count"})
        );
        assert_eq!(value["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        assert_eq!(
            (value["Stack"].clone(), value["Lane"].clone()),
            (json!("prod"), json!("outbound"))
        );
        assert_eq!(value["Applied"], 97.0);
    }
}
