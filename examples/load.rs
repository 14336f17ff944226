//! Load generator: creates orders over HTTP at a fixed concurrency, then
//! measures the bare database baseline (single-row INSERT transactions
//! through sqlx at the same concurrency) against the same MariaDB.
//!
//! Run it through `scripts/bench`, which starts a release API for it.
//! Settings (environment): API_URL, API_PID, ADMIN_TOKEN, BASELINE_DATABASE_URL,
//! COUNT (default 5000), CONCURRENCY (default 32), DUPLICATES (default 0:
//! the percentage of creations that reuse a reference already taken, and
//! must be answered 409 while the rest of their group is written).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection};

mod common;
use common::env;

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }

    fn report(&self, name: &str) {
        println!(
            "{name:<22} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} in {:.2} s)",
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.latencies.len(),
            self.elapsed.as_secs_f64()
        );
    }
}

/// Runs `op` `count` times from `concurrency` tasks; every call must succeed.
async fn drive<F, Fut>(count: usize, concurrency: usize, op: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = vec![];
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let t = Instant::now();
                    op().await.expect("operation failed");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    Run {
        elapsed: started.elapsed(),
        latencies,
    }
}

fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let api = env("API_URL", "http://127.0.0.1:8080");
    let admin = env("ADMIN_TOKEN", "dev-admin-token-change-me");
    let baseline_url = env(
        "BASELINE_DATABASE_URL",
        "mysql://root@127.0.0.1:3306/mechanica_bench_baseline",
    );
    let count: usize = env("COUNT", "5000").parse().expect("COUNT");
    let concurrency: usize = env("CONCURRENCY", "32").parse().expect("CONCURRENCY");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();

    let customer: Value = client
        .post(format!("{api}/v1/customers"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "Load generator" }))
        .send()
        .await
        .expect("API reachable")
        .json()
        .await
        .unwrap();
    let key: Value = client
        .post(format!(
            "{api}/v1/customers/{}/api-keys",
            customer["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = key["token"].as_str().unwrap().to_string();
    let body = Arc::new(json!({
        "pickup": { "name": "Empress Products", "line1": "12 Dock Road", "city": "Rotterdam", "postal_code": "3011 AA", "country": "NL" },
        "delivery": { "name": "Jane Doe", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100 }]
    }));

    let duplicates: u64 = env("DUPLICATES", "0").parse().expect("DUPLICATES");
    println!(
        "{count} operations at concurrency {concurrency}, {duplicates} % duplicate references"
    );
    let statements_before = common::questions(&api_database_server()).await;
    let refused = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(AtomicUsize::new(0));
    let orders = {
        let (client, api, token, body) = (client.clone(), api.clone(), token.clone(), body.clone());
        let (refused, issued) = (refused.clone(), issued.clone());
        drive(count, concurrency, move || {
            let (client, api, token, body) =
                (client.clone(), api.clone(), token.clone(), body.clone());
            let (refused, issued) = (refused.clone(), issued.clone());
            async move {
                // A reference taken by an order created long enough ago
                // to have been answered, or a fresh one.
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let settled = n.saturating_sub(1000).min(1000);
                let duplicate = settled > 0 && rand::random_range(0..100) < duplicates;
                let reference = if duplicate {
                    format!("LOAD-{}", rand::random_range(0..settled))
                } else {
                    format!("LOAD-{n}")
                };
                let mut body = (*body).clone();
                body["reference"] = json!(reference);
                let response = client
                    .post(format!("{api}/v1/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match response.status() {
                    reqwest::StatusCode::CREATED => Ok(()),
                    reqwest::StatusCode::CONFLICT if duplicate => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    status => Err(format!("status {status} (duplicate: {duplicate})")),
                }
            }
        })
        .await
    };
    orders.report("create order (HTTP)");
    let statements = common::questions(&api_database_server()).await - statements_before;
    println!(
        "                       {} refused as duplicates; {:.2} database statements per request (server-wide, the relay's included)",
        refused.load(Ordering::Relaxed),
        statements as f64 / count as f64
    );
    if env("BASELINE", "run") == "skip" {
        report_rss();
        return;
    }

    let server = baseline_url.rsplit_once('/').unwrap().0.to_string();
    let mut admin_conn = MySqlConnection::connect(&server)
        .await
        .expect("MariaDB reachable");
    sqlx::query("DROP DATABASE IF EXISTS mechanica_bench_baseline")
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE mechanica_bench_baseline")
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect(&baseline_url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE rows_ (id BINARY(16) PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let baseline = {
        let pool = pool.clone();
        drive(count, concurrency, move || {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO rows_ (id, body) VALUES (?, ?)")
                    .bind(uuid::Uuid::now_v7())
                    .bind("x")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())
            }
        })
        .await
    };
    baseline.report("baseline INSERT (sqlx)");
    sqlx::query("DROP DATABASE mechanica_bench_baseline")
        .execute(&mut admin_conn)
        .await
        .unwrap();

    println!(
        "ratio                  {:.0}% of the baseline",
        100.0 * orders.per_second() / baseline.per_second()
    );
    report_rss();
}

/// The server of the API's database (the baseline's server too).
fn api_database_server() -> String {
    let url = env(
        "BASELINE_DATABASE_URL",
        "mysql://root@127.0.0.1:3306/mechanica_bench_baseline",
    );
    url.rsplit_once('/').unwrap().0.to_string()
}

fn report_rss() {
    if let Ok(pid) = std::env::var("API_PID") {
        match peak_rss_mib(&pid) {
            Some(mib) => println!("API peak RSS           {mib:.1} MiB"),
            None => println!("API peak RSS           unknown (pid {pid})"),
        }
    }
}
