//! The worker's metrics, in the Prometheus text format.

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

#[derive(Default)]
struct Inner {
    succeeded: u64,
    failed: u64,
    attempt: Histogram,
    end_to_end: Histogram,
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

    pub fn render(&self, pending: Option<i64>, disabled: Option<i64>) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP webhook_attempts_total Delivery attempts by outcome.\n# TYPE webhook_attempts_total counter\n\
             webhook_attempts_total{{outcome=\"succeeded\"}} {}\nwebhook_attempts_total{{outcome=\"failed\"}} {}",
            inner.succeeded, inner.failed
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
