//! End-to-end delivery benchmark, all on this machine: API → MariaDB →
//! relay → SQS emulator → worker → a local receiver that verifies every
//! signature (with the `standardwebhooks` crate). Starts release binaries
//! itself; run it through `scripts/bench`.
//!
//! 1. sustained: COUNT status changes at concurrency 32; events delivered/s;
//! 2. latency: status changes at a steady RATE/s for SECONDS; time from the
//!    change's response to the webhook's arrival;
//! 3. drain: DRAIN events queued with the worker stopped, then the worker
//!    started; deliveries/s;
//! 4. ceiling: the receiver driven directly by an HTTP client at concurrency 32.
//!
//! It also reports the peak RSS of both binaries.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use common::{env, percentile, spawn, wait_until, LIFE};

const ADMIN: &str = "bench-admin-token-0123456789";
const API_PORT: u16 = 18090;
const METRICS_PORT: u16 = 18091;

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{API_PORT}{path}")
}

/// Arrival time of each event id, and how many signatures failed.
#[derive(Default)]
struct Inbox {
    arrived: Mutex<HashMap<String, Instant>>,
    bad: AtomicUsize,
    secret: Mutex<Option<standardwebhooks::Webhook>>,
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let verified = inbox
        .secret
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|wh| wh.verify(&body, &headers).is_ok());
    if !verified {
        inbox.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers["webhook-id"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    inbox.arrived.lock().unwrap().entry(id).or_insert(now);
    StatusCode::NO_CONTENT
}

async fn json_post(client: &reqwest::Client, path: &str, token: &str, body: Value) -> Value {
    common::post_json(client, url(path), token, body).await
}

/// Moves every order through `steps` statuses at concurrency 32.
async fn move_all(client: &reqwest::Client, orders: &[String], steps: &[&'static str]) {
    let next = Arc::new(AtomicUsize::new(0));
    let orders = Arc::new(orders.to_vec());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next, orders) = (client.clone(), next.clone(), orders.clone());
        let steps = steps.to_vec();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders.len() {
                    break;
                }
                for status in &steps {
                    json_post(
                        &client,
                        &format!("/v1/orders/{}/status", orders[i]),
                        ADMIN,
                        json!({ "status": status }),
                    )
                    .await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[tokio::main]
async fn main() {
    let target = env("CARGO_TARGET_DIR", "target");
    let api_bin = format!("{target}/release/mechanica-api");
    let worker_bin = format!("{target}/release/mechanica-delivery");
    let count: usize = env("COUNT", "3000").parse().unwrap();
    let rate: u64 = env("RATE", "200").parse().unwrap();
    let seconds: u64 = env("SECONDS", "10").parse().unwrap();
    let drain: usize = env("DRAIN", "3000").parse().unwrap();
    let queue_url = env("E2E_QUEUE_URL", "");
    let database = "mysql://root@127.0.0.1:3306/mechanica_bench_e2e".to_string();
    {
        use sqlx::Connection;
        let mut conn = sqlx::MySqlConnection::connect("mysql://root@127.0.0.1:3306")
            .await
            .unwrap();
        sqlx::query("DROP DATABASE IF EXISTS mechanica_bench_e2e")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let inbox = Arc::new(Inbox::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(inbox.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let vars =
        |extra: &[(&'static str, String)]| common::pipeline_vars(&database, &queue_url, extra);
    let api = spawn(
        &api_bin,
        &["serve"],
        &vars(&[
            ("ADMIN_TOKEN", ADMIN.into()),
            ("BIND_ADDR", format!("127.0.0.1:{API_PORT}")),
        ]),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    common::api_ready(&client, &url("")).await;
    let worker_vars = vars(&[("DELIVERY_METRICS_ADDR", format!("127.0.0.1:{METRICS_PORT}"))]);
    let mut worker = Some(spawn(&worker_bin, &[], &worker_vars));

    let customer = json_post(&client, "/v1/customers", ADMIN, json!({ "name": "E2E" })).await;
    let customer_id = customer["id"].as_str().unwrap().to_string();
    let key = json_post(
        &client,
        &format!("/v1/customers/{customer_id}/api-keys"),
        ADMIN,
        json!({}),
    )
    .await;
    let token = key["token"].as_str().unwrap().to_string();
    let endpoint = json_post(
        &client,
        "/v1/webhooks",
        &token,
        json!({ "url": receiver_url }),
    )
    .await;
    *inbox.secret.lock().unwrap() =
        Some(standardwebhooks::Webhook::new(endpoint["secret"].as_str().unwrap()).unwrap());

    // 1. Sustained: orders created first (their events delivered too), then
    //    COUNT status changes; throughput over the changes' events.
    let orders = common::make_orders(&client, &url(""), &token, count / LIFE.len()).await;
    let created = orders.len();
    wait_until("creation events", Duration::from_secs(120), || {
        inbox.arrived.lock().unwrap().len() >= created
    })
    .await;
    let started = Instant::now();
    move_all(&client, &orders, &LIFE).await;
    let total = created + orders.len() * LIFE.len();
    wait_until("sustained deliveries", Duration::from_secs(300), || {
        inbox.arrived.lock().unwrap().len() >= total
    })
    .await;
    let took = started.elapsed();
    println!(
        "sustained: {} status changes at concurrency 32 delivered and verified in {:.2} s = {:.0} events/s end to end",
        orders.len() * LIFE.len(),
        took.as_secs_f64(),
        (orders.len() * LIFE.len()) as f64 / took.as_secs_f64()
    );

    // 2. Latency at a steady rate.
    let n = (rate * seconds) as usize;
    let before = inbox.arrived.lock().unwrap().len();
    let paced = common::make_orders(&client, &url(""), &token, n.div_ceil(LIFE.len())).await;
    wait_until("paced creations", Duration::from_secs(120), || {
        inbox.arrived.lock().unwrap().len() >= before + paced.len()
    })
    .await;
    let responded: Arc<Mutex<HashMap<(String, u64), Instant>>> = Default::default();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (client, responded) = (client.clone(), responded.clone());
        let order = paced[i % paced.len()].clone();
        let step = i / paced.len();
        set.spawn(async move {
            let o = json_post(
                &client,
                &format!("/v1/orders/{order}/status"),
                ADMIN,
                json!({ "status": LIFE[step] }),
            )
            .await;
            responded
                .lock()
                .unwrap()
                .insert((order, o["version"].as_u64().unwrap()), Instant::now());
        });
    }
    while set.join_next().await.is_some() {}
    let expected = before + paced.len() + n;
    wait_until("paced deliveries", Duration::from_secs(120), || {
        inbox.arrived.lock().unwrap().len() >= expected
    })
    .await;
    // Map event ids to (order, sequence) through the history of each order.
    let mut by_key: HashMap<(String, u64), String> = HashMap::new();
    for order in &paced {
        let h: Value = client
            .get(url(&format!("/v1/orders/{order}/events?limit=100")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in h["data"].as_array().unwrap() {
            by_key.insert(
                (order.clone(), e["data"]["sequence"].as_u64().unwrap()),
                e["id"].as_str().unwrap().to_string(),
            );
        }
    }
    let arrived = inbox.arrived.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = responded
        .lock()
        .unwrap()
        .iter()
        .map(|(key, at)| arrived[&by_key[key]].saturating_duration_since(*at))
        .collect();
    latencies.sort();
    println!(
        "latency at {rate} changes/s ({n} changes): response to webhook arrival p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    let api_rss = api.peak_rss_mib();
    let worker_rss = worker.as_ref().unwrap().peak_rss_mib();

    // 3. Drain: the worker stopped, DRAIN events queued, then started.
    drop(worker.take());
    // A long poll the stopped worker left open would be handed the first
    // messages and hide them for the visibility timeout: let it run out.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let before = inbox.arrived.lock().unwrap().len();
    let queued = common::make_orders(&client, &url(""), &token, drain).await;
    wait_until("the outbox to empty", Duration::from_secs(120), || {
        std::process::Command::new("curl")
            .args(["-fsS", &url("/metrics")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\noutbox_backlog 0\n"))
    })
    .await;
    let started = Instant::now();
    let worker = spawn(&worker_bin, &[], &worker_vars);
    wait_until("the drain", Duration::from_secs(300), || {
        inbox.arrived.lock().unwrap().len() >= before + queued.len()
    })
    .await;
    let took = started.elapsed();
    println!(
        "drain: {} queued events delivered in {:.2} s = {:.0} deliveries/s (including worker start-up)",
        queued.len(),
        took.as_secs_f64(),
        queued.len() as f64 / took.as_secs_f64()
    );
    println!(
        "peak RSS under load: API {api_rss:.1} MiB, worker {worker_rss:.1} MiB (drain worker {:.1} MiB); bad signatures: {}",
        worker.peak_rss_mib(),
        inbox.bad.load(Ordering::Relaxed)
    );

    // 4. Ceiling: the receiver alone, driven by a plain client.
    let body = r#"{"type":"ceiling"}"#;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next, receiver_url) = (client.clone(), next.clone(), receiver_url.clone());
        let wh = standardwebhooks::Webhook::new(&secret).unwrap();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let id = format!("ceiling-{i}");
                let ts = chrono::Utc::now().timestamp();
                let sig = wh.sign(&id, ts, body.as_bytes()).unwrap();
                let r = client
                    .post(&receiver_url)
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 204);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let _ = wh;
    println!(
        "ceiling: the receiver alone at concurrency 32: {:.0} requests/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
}
