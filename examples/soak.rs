//! Soak: status changes at a steady RATE/s for SECONDS with the worker
//! delivering to a local receiver. Every minute (and at the start) it reports
//! RSS and open file descriptors of both binaries, the database connections
//! they hold, the p99 of the API's answer and of change-to-arrival, and how
//! far delivery lags. Starts release binaries itself; run it through
//! `scripts/soak`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{json, Value};

use common::{env, spawn, LIFE};

const ADMIN: &str = "soak-admin-token-0123456789";
const API_PORT: u16 = 18190;
const DB: &str = "mechanica_soak";

/// A status change: (order id, version), when the API answered, how long it took.
type Answer = ((String, u64), Instant, Duration);

/// Arrival time of each (order id, sequence).
type Arrivals = Arc<Mutex<HashMap<(String, u64), Instant>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    if let Ok(event) = serde_json::from_slice::<Value>(&body) {
        let order = event["data"]["order_id"].as_str().unwrap_or_default();
        let sequence = event["data"]["sequence"].as_u64().unwrap_or_default();
        arrivals
            .lock()
            .unwrap()
            .entry((order.to_string(), sequence))
            .or_insert(now);
    }
    StatusCode::NO_CONTENT
}

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{API_PORT}{path}")
}

async fn post(client: &reqwest::Client, path: &str, token: &str, body: Value) -> Value {
    common::post_json(client, url(path), token, body).await
}

fn p99(values: &mut [Duration]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort();
    let i = ((values.len() as f64 * 0.99).ceil() as usize).clamp(1, values.len()) - 1;
    values[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let target = env("CARGO_TARGET_DIR", "target");
    let rate: u32 = env("RATE", "200").parse().unwrap();
    let seconds: u32 = env("SECONDS", "180").parse().unwrap();
    let queue_url = env("SOAK_QUEUE_URL", "");
    let server = "mysql://root@127.0.0.1:3306";
    let admin_db = sqlx::MySqlPool::connect(server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DB}"))
        .execute(&admin_db)
        .await
        .unwrap();

    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let common = vec![
        ("DATABASE_URL", format!("{server}/{DB}")),
        ("SQS_QUEUE_URL", queue_url),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_string()),
    ];
    let mut api_vars = common.clone();
    api_vars.push(("ADMIN_TOKEN", ADMIN.into()));
    api_vars.push(("BIND_ADDR", format!("127.0.0.1:{API_PORT}")));
    let api = spawn(&format!("{target}/release/mechanica-api"), &[], &api_vars);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    for _ in 0..200 {
        if client
            .get(url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let worker = spawn(
        &format!("{target}/release/mechanica-delivery"),
        &[],
        &common,
    );

    let customer = post(&client, "/v1/customers", ADMIN, json!({ "name": "Soak" })).await;
    let customer_id = customer["id"].as_str().unwrap();
    let key = post(
        &client,
        &format!("/v1/customers/{customer_id}/api-keys"),
        ADMIN,
        json!({}),
    )
    .await;
    let token = key["token"].as_str().unwrap().to_string();
    post(&client, "/v1/webhooks", &token, json!({ "url": receiver })).await;

    // Orders for every change, created before the clock starts.
    let changes = (rate * seconds) as usize;
    let order_count = changes.div_ceil(LIFE.len());
    let body = json!({
        "pickup": { "name": "A", "line1": "1 Road", "city": "Rotterdam", "postal_code": "3011", "country": "NL" },
        "delivery": { "name": "B", "line1": "2 Road", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 100, "length_mm": 10, "width_mm": 10, "height_mm": 10 }]
    });
    let mut orders = Vec::with_capacity(order_count);
    for chunk in (0..order_count).collect::<Vec<_>>().chunks(32) {
        let created = futures::future::join_all(
            chunk
                .iter()
                .map(|_| post(&client, "/v1/orders", &token, body.clone())),
        )
        .await;
        orders.extend(
            created
                .into_iter()
                .map(|o| o["id"].as_str().unwrap().to_string()),
        );
    }
    // Let the creation events drain before measuring.
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < order_count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report = |label: &str,
                  answers: &mut Vec<Duration>,
                  deliveries: &mut Vec<Duration>,
                  lag: usize,
                  connections: i64| {
        println!(
            "{label:>8} | API RSS {:6.1} MiB fds {:3} | worker RSS {:6.1} MiB fds {:3} | DB connections {connections:3} | API p99 {:6.1} ms | change→arrival p99 {:7.1} ms | undelivered {lag}",
            api.rss_mib(),
            api.fds(),
            worker.rss_mib(),
            worker.fds(),
            p99(answers),
            p99(deliveries),
        );
    };
    let connections = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?")
                .bind(DB)
                .fetch_one(&admin_db)
                .await
                .unwrap();
        n
    };
    println!("soak: {rate} status changes/s for {seconds} s ({changes} changes over {order_count} orders)");
    let start_rss = (api.rss_mib(), worker.rss_mib());
    report("start", &mut vec![], &mut vec![], 0, connections().await);

    // (order, version) → when the API answered, and how long it took.
    let answered: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs(1) / rate;
    let mut tasks = tokio::task::JoinSet::new();
    let mut minute_start = 0usize;
    let mut reported_minutes = 0;
    for i in 0..changes {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (client, answers) = (client.clone(), answered.clone());
        let order = orders[i % order_count].clone();
        let step = LIFE[i / order_count];
        tasks.spawn(async move {
            let sent = Instant::now();
            let o = post(
                &client,
                &format!("/v1/orders/{order}/status"),
                ADMIN,
                json!({ "status": step }),
            )
            .await;
            let version = o["version"].as_u64().unwrap();
            answers
                .lock()
                .unwrap()
                .push(((order, version), Instant::now(), sent.elapsed()));
        });
        while tasks.try_join_next().is_some() {}
        let elapsed = start.elapsed().as_secs();
        if elapsed / 60 > reported_minutes || i + 1 == changes {
            // The last window may end a moment before its minute does.
            reported_minutes += 1;
            let done = answered.lock().unwrap().clone();
            let window = &done[minute_start.min(done.len())..];
            minute_start = done.len();
            let arrived = arrivals.lock().unwrap().clone();
            let mut answers: Vec<Duration> = window.iter().map(|(_, _, took)| *took).collect();
            let mut deliveries: Vec<Duration> = window
                .iter()
                .filter_map(|(key, at, _)| {
                    arrived.get(key).map(|a| a.saturating_duration_since(*at))
                })
                .collect();
            let lag = window.len() - deliveries.len();
            report(
                &format!("min {reported_minutes}"),
                &mut answers,
                &mut deliveries,
                lag,
                connections().await,
            );
        }
    }
    while tasks.join_next().await.is_some() {}
    let expected = order_count + changes;
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = arrivals.lock().unwrap().len();
    let end_rss = (api.rss_mib(), worker.rss_mib());
    println!(
        "end: {delivered} of {expected} events delivered; RSS API {:.1} → {:.1} MiB ({:+.1} %), worker {:.1} → {:.1} MiB ({:+.1} %)",
        start_rss.0,
        end_rss.0,
        (end_rss.0 / start_rss.0 - 1.0) * 100.0,
        start_rss.1,
        end_rss.1,
        (end_rss.1 / start_rss.1 - 1.0) * 100.0,
    );
}
