//! The worker's metrics: in the Prometheus text format for `/metrics`, and
//! for Lambda, which has no `/metrics`, as CloudWatch Embedded Metric
//! Format lines with the same names (what happened since the last flush).

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// What was observed since `before`, as EMF's values and counts: each
    /// bucket's upper bound with the observations in it (those past the
    /// last bound at twice it).
    fn emf_since(&self, before: &Histogram) -> serde_json::Value {
        let mut values = vec![];
        let mut counts = vec![];
        let mut below = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            let cumulative = self.buckets[i] - before.buckets[i];
            if cumulative > below {
                values.push(*bound);
                counts.push(cumulative - below);
            }
            below = cumulative;
        }
        let over = (self.count - before.count).saturating_sub(below);
        if over > 0 {
            values.push(BUCKETS[BUCKETS.len() - 1] * 2.0);
            counts.push(over);
        }
        serde_json::json!({ "Values": values, "Counts": counts })
    }

    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (count, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Default, Clone)]
struct Inner {
    succeeded: u64,
    failed: u64,
    /// Messages naming no committed event (forged, rolled back, malformed).
    unknown: u64,
    /// Events fanned out again by reconciliation (their message was lost).
    reconciled: u64,
    /// Turns under a rate limit left unused: their delivery came too late.
    turns_missed: u64,
    /// Fan-outs the database refused though it answered (not an outage).
    refused: u64,
    attempt: Histogram,
    end_to_end: Histogram,
    /// What the last EMF flush reported.
    flushed: Option<Box<Inner>>,
}

#[derive(Default)]
pub struct WorkerMetrics {
    inner: Mutex<Inner>,
}

impl WorkerMetrics {
    pub fn attempt(&self, succeeded: bool, took: Duration, since_commit: Option<Duration>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if succeeded {
            inner.succeeded += 1;
        } else {
            inner.failed += 1;
        }
        inner.attempt.observe(took.as_secs_f64());
        if let Some(latency) = since_commit {
            inner.end_to_end.observe(latency.as_secs_f64());
        }
    }

    pub fn unknown_events(&self, count: usize) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).unknown += count as u64;
    }

    /// A turn under an endpoint's rate limit passed before its delivery
    /// could take it (see `pace::LATE_AT_MOST`).
    pub fn turn_missed(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .turns_missed += 1;
    }

    /// The database answered but refused a fan-out (see `refusals`).
    pub fn fan_out_refused(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
    }

    pub fn reconciled(&self, count: usize) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconciled += count as u64;
    }

    /// What happened since the last flush (the first: since start), as
    /// CloudWatch Embedded Metric Format lines under `namespace`, one per
    /// set of dimensions; the gauges when given. Names as on `/metrics`.
    pub fn emf_flush(
        &self,
        namespace: &str,
        now_ms: u64,
        pending: Option<i64>,
        disabled: Option<i64>,
    ) -> String {
        use serde_json::{json, Map, Value};
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = inner.flushed.take().map(|b| *b).unwrap_or_default();
        let line =
            |dimensions: &[&str], metrics: Vec<(&str, &str, Value)>, tags: &[(&str, &str)]| {
                let mut root = Map::new();
                let definitions: Vec<Value> = metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect();
                root.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [dimensions],
                            "Metrics": definitions,
                        }]
                    }),
                );
                root.insert("service".into(), json!("mechanica-delivery"));
                for (key, value) in tags {
                    root.insert((*key).into(), json!(value));
                }
                for (name, _, value) in metrics {
                    root.insert(name.into(), value);
                }
                Value::Object(root).to_string()
            };
        let mut lines = vec![];
        for (outcome, count) in [
            ("succeeded", inner.succeeded - before.succeeded),
            ("failed", inner.failed - before.failed),
        ] {
            lines.push(line(
                &["service", "outcome"],
                vec![("webhook_attempts_total", "Count", json!(count))],
                &[("outcome", outcome)],
            ));
        }
        let mut metrics = vec![
            (
                "webhook_messages_unknown_total",
                "Count",
                json!(inner.unknown - before.unknown),
            ),
            (
                "webhook_events_reconciled_total",
                "Count",
                json!(inner.reconciled - before.reconciled),
            ),
            (
                "webhook_rate_limit_turns_missed_total",
                "Count",
                json!(inner.turns_missed - before.turns_missed),
            ),
            (
                "webhook_fan_outs_refused_total",
                "Count",
                json!(inner.refused - before.refused),
            ),
            (
                "webhook_attempt_duration_seconds",
                "Seconds",
                inner.attempt.emf_since(&before.attempt),
            ),
            (
                "webhook_end_to_end_seconds",
                "Seconds",
                inner.end_to_end.emf_since(&before.end_to_end),
            ),
        ];
        if let Some(pending) = pending {
            metrics.push(("webhook_deliveries_pending", "Count", json!(pending)));
        }
        if let Some(disabled) = disabled {
            metrics.push(("webhook_endpoints_disabled", "Count", json!(disabled)));
        }
        lines.push(line(&["service"], metrics, &[]));
        let mut now = inner.clone();
        now.flushed = None;
        inner.flushed = Some(Box::new(now));
        lines.join("\n")
    }

    pub fn render(&self, pending: Option<i64>, disabled: Option<i64>) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP webhook_attempts_total Delivery attempts by outcome.\n# TYPE webhook_attempts_total counter\n\
             webhook_attempts_total{{outcome=\"succeeded\"}} {}\nwebhook_attempts_total{{outcome=\"failed\"}} {}",
            inner.succeeded, inner.failed
        );
        let _ = writeln!(
            out,
            "# HELP webhook_messages_unknown_total SQS messages naming no committed event, dropped.\n# TYPE webhook_messages_unknown_total counter\n\
             webhook_messages_unknown_total {}\n\
             # HELP webhook_events_reconciled_total Events given their deliveries by reconciliation (message lost or dead-lettered).\n# TYPE webhook_events_reconciled_total counter\n\
             webhook_events_reconciled_total {}\n\
             # HELP webhook_rate_limit_turns_missed_total Turns under an endpoint's rate limit left unused because the delivery came too late for them.\n# TYPE webhook_rate_limit_turns_missed_total counter\n\
             webhook_rate_limit_turns_missed_total {}\n\
             # HELP webhook_fan_outs_refused_total Fan-outs the database refused though it answered (a statement or a row this code cannot use), not outages.\n# TYPE webhook_fan_outs_refused_total counter\n\
             webhook_fan_outs_refused_total {}",
            inner.unknown, inner.reconciled, inner.turns_missed, inner.refused
        );
        inner.attempt.render(
            &mut out,
            "webhook_attempt_duration_seconds",
            "Time of one HTTP attempt.",
        );
        inner.end_to_end.render(
            &mut out,
            "webhook_end_to_end_seconds",
            "From the event's commit to the endpoint's 2xx.",
        );
        if let Some(pending) = pending {
            let _ = writeln!(out, "# HELP webhook_deliveries_pending Deliveries not yet settled.\n# TYPE webhook_deliveries_pending gauge\nwebhook_deliveries_pending {pending}");
        }
        if let Some(disabled) = disabled {
            let _ = writeln!(out, "# HELP webhook_endpoints_disabled Endpoints disabled.\n# TYPE webhook_endpoints_disabled gauge\nwebhook_endpoints_disabled {disabled}");
        }
        out
    }
}
