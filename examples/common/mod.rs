//! What the release-binary benchmarks share: settings from the environment,
//! child processes of the binaries, and their memory and descriptors.

#![allow(dead_code)] // each example uses its own part

use std::process::{Child, Command};

/// The statuses an order moves through after `pending`.
pub const LIFE: [&str; 5] = [
    "confirmed",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
];

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A binary under test, killed when dropped.
pub struct Proc(Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// A `/proc/<pid>/status` field in KiB.
    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the API and the worker of a benchmark share (its database and
/// queue, loopback receivers allowed), then `extra`.
pub fn pipeline_vars(
    database: &str,
    queue_url: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("DATABASE_URL", database.to_string()),
        ("SQS_QUEUE_URL", queue_url.to_string()),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_string()),
    ];
    vars.extend(extra.iter().cloned());
    vars
}

/// Starts `bin` with `args` and these variables on top of the environment.
pub fn spawn(bin: &str, args: &[&str], vars: &[(&str, String)]) -> Proc {
    let mut command = Command::new(bin);
    command.args(args).env("RUST_LOG", "warn");
    for (k, v) in vars {
        command.env(k, v);
    }
    Proc(command.spawn().expect("binary starts"))
}

/// POSTs JSON to `url` as `token`, asserts a 2xx and returns the body.
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let r = client
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// MariaDB's statement counter, server-wide (`server`: a URL without a
/// database).
pub async fn questions(server: &str) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(server)
        .await
        .expect("MariaDB reachable");
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Questions'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    value.parse().unwrap()
}

/// The `p` quantile (0..=1) of sorted durations, in milliseconds.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Waits until `done()`, polling every 2 ms; panics after `within`.
pub async fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Waits until the API at `base` answers `/readyz` with a 2xx.
pub async fn api_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the API did not become ready");
}

/// Creates `count` orders at concurrency 32 through the API at `base`;
/// their ids.
pub async fn make_orders(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
) -> Vec<String> {
    let body = serde_json::json!({
        "pickup": { "name": "A", "line1": "1 Road", "city": "Rotterdam", "postal_code": "3011", "country": "NL" },
        "delivery": { "name": "B", "line1": "2 Road", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 100, "length_mm": 10, "width_mm": 10, "height_mm": 10 }]
    });
    let mut set = tokio::task::JoinSet::new();
    for chunk in 0..32 {
        let (client, url, token, body) = (
            client.clone(),
            format!("{base}/v1/orders"),
            token.to_string(),
            body.clone(),
        );
        set.spawn(async move {
            let mut ids = vec![];
            for _ in (chunk..count).step_by(32) {
                let o = post_json(&client, url.clone(), &token, body.clone()).await;
                ids.push(o["id"].as_str().unwrap().to_string());
            }
            ids
        });
    }
    let mut ids = vec![];
    while let Some(r) = set.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}
