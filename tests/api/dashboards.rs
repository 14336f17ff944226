//! `deploy/datadog/`: every metric the dashboard and the monitors name is
//! one the binaries export, read from the real `/metrics` of a running API
//! and worker, under the names Datadog's OpenMetrics check gives them
//! (namespace `mechanica`; a counter's `_total` becomes `.count`; a
//! histogram, with `histogram_buckets_as_distributions`, a distribution
//! of its own name). SQS's come from the AWS integration.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::*;

/// What the AWS integration reports for SQS that the dashboard uses.
const AWS_SQS: [&str; 2] = [
    "aws.sqs.approximate_age_of_oldest_message",
    "aws.sqs.approximate_number_of_messages_visible",
];

/// `# TYPE name kind` lines: name → kind.
fn exported(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The metric names in a Datadog query: what stands before each `{`.
fn names_in(query: &str) -> Vec<String> {
    let mut names = vec![];
    for (i, _) in query.match_indices('{') {
        let before = &query[..i];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |p| p + 1);
        let name = &before[start..];
        if !name.is_empty() && name.contains('.') {
            names.push(name.to_string());
        }
    }
    names
}

/// Every string under a "q" or "query" key.
fn queries(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("q" | "query", Value::String(q)) => into.push(q.clone()),
                    _ => queries(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, into)),
        _ => {}
    }
}

/// Whether Datadog's name `name` is one of `exported` (Prometheus names).
fn is_exported(name: &str, exported: &BTreeMap<String, String>) -> bool {
    if AWS_SQS.contains(&name) {
        return true;
    }
    let Some(base) = name.strip_prefix("mechanica.") else {
        return false;
    };
    let kind = |n: &str| exported.get(n).map(String::as_str);
    match base.strip_suffix(".count") {
        Some(counter) => kind(&format!("{counter}_total")) == Some("counter"),
        None => matches!(kind(base), Some("gauge" | "histogram")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_monitors_name_is_exported() {
    let system = System::start().await;
    let api = system
        .app
        .get("/metrics", ADMIN)
        .await
        .text()
        .await
        .unwrap();
    let port = system.worker.as_ref().unwrap().metrics_port;
    let worker = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut names = exported(&api);
    names.extend(exported(&worker));
    assert!(names.len() > 10, "{names:?}");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/datadog");
    let mut all = vec![];
    for file in ["dashboard.json", "monitors.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut found = vec![];
        queries(&doc, &mut found);
        assert!(!found.is_empty(), "{file}: no queries");
        for query in found {
            let in_query = names_in(&query);
            assert!(!in_query.is_empty(), "{file}: no metric in {query:?}");
            for name in in_query {
                assert!(
                    is_exported(&name, &names),
                    "{file}: {name} (in {query:?}) is not exported; exported: {:?}",
                    names.keys().collect::<Vec<_>>()
                );
                all.push(name);
            }
        }
    }
    // What the issue asks the dashboard to show is there.
    for wanted in [
        "mechanica.outbox_oldest_age_seconds",
        "mechanica.outbox_backlog",
        "mechanica.outbox_parked",
        "mechanica.webhook_end_to_end_seconds",
        "mechanica.webhook_attempts.count",
        "mechanica.webhook_endpoints_disabled",
        "mechanica.http_requests.count",
        "mechanica.http_request_duration_seconds",
        "aws.sqs.approximate_age_of_oldest_message",
        "aws.sqs.approximate_number_of_messages_visible",
    ] {
        assert!(all.iter().any(|n| n == wanted), "{wanted} is on no widget");
    }
    // The check itself refuses what is not exported.
    for wrong in [
        "mechanica.outbox_backlog.count",
        "mechanica.webhook_attempts_total",
        "mechanica.nothing",
        "outbox_backlog",
    ] {
        assert!(!is_exported(wrong, &names), "{wrong}");
    }
}
