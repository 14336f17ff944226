//! Request counts and latency by method, route and status, rendered in the
//! Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

type Labels = (String, String, u16);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<Labels, Series>>,
    /// Relay turns this instance took from one whose lease lapsed.
    relay_handovers: AtomicU64,
    /// This instance's relay holds the turn (publishes for every instance).
    relay_holding: AtomicBool,
    /// The relay's rounds that published what this instance's commits
    /// handed it, without a database round trip.
    relay_rounds_handed: AtomicU64,
    /// The relay's full rounds (a pass on the clock, a backlog read).
    relay_rounds_full: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let series = requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        series.count += 1;
        series.sum += seconds;
        for (bucket, bound) in series.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    pub fn relay_handover(&self) {
        self.relay_handovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_holding(&self, holding: bool) {
        self.relay_holding.store(holding, Ordering::Relaxed);
    }

    pub fn relay_round(&self, handed: bool) {
        let rounds = if handed {
            &self.relay_rounds_handed
        } else {
            &self.relay_rounds_full
        };
        rounds.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = write!(
            out,
            "# HELP relay_handovers_total Times this instance took over publishing from a relay whose lease lapsed.\n\
             # TYPE relay_handovers_total counter\n\
             relay_handovers_total {}\n\
             # HELP relay_holding 1 while this instance's relay holds the turn to publish for every instance.\n\
             # TYPE relay_holding gauge\n\
             relay_holding {}\n\
             # HELP relay_rounds_total The relay's rounds: handed (this instance's commits, published without a database round trip) or full (the clock's pass, renewing the turn).\n\
             # TYPE relay_rounds_total counter\n\
             relay_rounds_total{{kind=\"handed\"}} {}\n\
             relay_rounds_total{{kind=\"full\"}} {}\n",
            self.relay_handovers.load(Ordering::Relaxed),
            u8::from(self.relay_holding.load(Ordering::Relaxed)),
            self.relay_rounds_handed.load(Ordering::Relaxed),
            self.relay_rounds_full.load(Ordering::Relaxed),
        );
        out.push_str("# HELP http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for ((method, route, status), series) in requests.iter() {
            let _ = writeln!(
                out,
                "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                series.count
            );
        }
        out.push_str("# HELP http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for ((method, route, status), series) in requests.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (count, bound) in series.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{{labels}}} {}",
                series.sum
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {}",
                series.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.observe("GET", "/v1/orders", 200, Duration::from_millis(3));
        metrics.observe("GET", "/v1/orders", 200, Duration::from_millis(30));
        let text = metrics.render();
        assert!(text
            .contains("http_requests_total{method=\"GET\",route=\"/v1/orders\",status=\"200\"} 2"));
        assert!(text.contains("route=\"/v1/orders\",status=\"200\",le=\"0.005\"} 1"));
        assert!(text.contains("route=\"/v1/orders\",status=\"200\",le=\"0.05\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
