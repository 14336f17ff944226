//! The Lambda mode's benchmark, all on this machine: API → MariaDB → relay →
//! SQS emulator → an event source mapping played by this program (long
//! polls, batches of 10, partial batch failures honoured) → cargo-lambda's
//! Runtime API emulator → FUNCTIONS `mechanica-delivery lambda` processes →
//! a local receiver that verifies every signature. Run it through
//! `scripts/bench-lambda`.
//!
//! 1. latency: status changes at a steady RATE/s for SECONDS; time from the
//!    change's response to the webhook's arrival (the first attempt);
//! 2. drain: DRAIN events queued with the mapping stopped, then started;
//!    deliveries/s.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use common::{env, percentile, spawn, LIFE};

const ADMIN: &str = "bench-admin-token-0123456789";
const API_PORT: u16 = 18190;
const RUNTIME_PORT: u16 = 18191;

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{API_PORT}{path}")
}

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

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn post(client: &reqwest::Client, path: &str, token: &str, body: Value) -> Value {
    common::post_json(client, url(path), token, body).await
}

async fn make_orders(client: &reqwest::Client, token: &str, count: usize) -> Vec<String> {
    let body = json!({
        "pickup": { "name": "A", "line1": "1 Road", "city": "Rotterdam", "postal_code": "3011", "country": "NL" },
        "delivery": { "name": "B", "line1": "2 Road", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 100, "length_mm": 10, "width_mm": 10, "height_mm": 10 }]
    });
    let mut set = tokio::task::JoinSet::new();
    for chunk in 0..32 {
        let (client, token, body) = (client.clone(), token.to_string(), body.clone());
        set.spawn(async move {
            let mut ids = vec![];
            for _ in (chunk..count).step_by(32) {
                let o = post(&client, "/v1/orders", &token, body.clone()).await;
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

/// The event source mapping: `pollers` long polls, each batch invoked
/// through the Runtime API emulator, the records not reported failed
/// deleted. Runs while `on` is true.
async fn mapping(
    queue: aws_sdk_sqs::Client,
    queue_url: String,
    pollers: usize,
    on: Arc<AtomicBool>,
) {
    let invoke = format!("http://127.0.0.1:{RUNTIME_PORT}/2015-03-31/functions/_/invocations");
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..pollers {
        let (queue, queue_url, on, invoke, http) = (
            queue.clone(),
            queue_url.clone(),
            on.clone(),
            invoke.clone(),
            http.clone(),
        );
        set.spawn(async move {
            while on.load(Ordering::Relaxed) {
                let Ok(out) = queue
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                else {
                    continue;
                };
                let messages = out.messages();
                if messages.is_empty() {
                    continue;
                }
                let records: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        json!({
                            "messageId": m.message_id(),
                            "receiptHandle": m.receipt_handle(),
                            "body": m.body(),
                            "attributes": {"ApproximateReceiveCount": "1"},
                            "messageAttributes": {},
                            "eventSource": "aws:sqs",
                            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:bench",
                            "awsRegion": "us-east-1"
                        })
                    })
                    .collect();
                let answer: Value = http
                    .post(&invoke)
                    .json(&json!({ "Records": records }))
                    .send()
                    .await
                    .expect("the Runtime API emulator answers")
                    .json()
                    .await
                    .expect("a JSON answer");
                let failed: Vec<&str> = answer["batchItemFailures"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|i| i["itemIdentifier"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for m in messages {
                    if !failed.contains(&m.message_id().unwrap_or_default()) {
                        let _ = queue
                            .delete_message()
                            .queue_url(&queue_url)
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .send()
                            .await;
                    }
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
    let function_bin = format!("{target}/release/mechanica-delivery");
    let rate: u64 = env("RATE", "200").parse().unwrap();
    let seconds: u64 = env("SECONDS", "10").parse().unwrap();
    let drain: usize = env("DRAIN", "3000").parse().unwrap();
    let functions: usize = env("FUNCTIONS", "4").parse().unwrap();
    let queue_url = env("LAMBDA_QUEUE_URL", "");
    let cargo_lambda = env("CARGO_LAMBDA", "cargo-lambda");
    let database = "mysql://root@127.0.0.1:3306/mechanica_bench_lambda".to_string();
    {
        use sqlx::Connection;
        let mut conn = sqlx::MySqlConnection::connect("mysql://root@127.0.0.1:3306")
            .await
            .unwrap();
        sqlx::query("DROP DATABASE IF EXISTS mechanica_bench_lambda")
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

    let vars = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("DATABASE_URL", database.clone()),
            ("SQS_QUEUE_URL", queue_url.clone()),
            ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_string()),
        ];
        vars.extend(extra.iter().cloned());
        vars
    };
    let _api = spawn(
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
    wait_until_ready(&client).await;
    let _emulator = spawn(
        &cargo_lambda,
        &[
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
            &RUNTIME_PORT.to_string(),
        ],
        &[],
    );
    let runtime = format!("http://127.0.0.1:{RUNTIME_PORT}/.rt");
    let _functions: Vec<_> = (0..functions)
        .map(|_| {
            spawn(
                &function_bin,
                &["lambda"],
                &vars(&[
                    ("AWS_LAMBDA_RUNTIME_API", runtime.clone()),
                    ("AWS_LAMBDA_FUNCTION_NAME", "_".into()),
                    ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
                    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
                ]),
            )
        })
        .collect();

    let customer = post(&client, "/v1/customers", ADMIN, json!({ "name": "Lambda" })).await;
    let customer_id = customer["id"].as_str().unwrap().to_string();
    let key = post(
        &client,
        &format!("/v1/customers/{customer_id}/api-keys"),
        ADMIN,
        json!({}),
    )
    .await;
    let token = key["token"].as_str().unwrap().to_string();
    let endpoint = post(
        &client,
        "/v1/webhooks",
        &token,
        json!({ "url": receiver_url }),
    )
    .await;
    *inbox.secret.lock().unwrap() =
        Some(standardwebhooks::Webhook::new(endpoint["secret"].as_str().unwrap()).unwrap());

    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
        .load()
        .await;
    let queue = aws_sdk_sqs::Client::new(&aws);
    let on = Arc::new(AtomicBool::new(true));
    let mut running = Some(tokio::spawn(mapping(
        queue.clone(),
        queue_url.clone(),
        functions,
        on.clone(),
    )));

    // 1. First-attempt latency at a steady rate.
    let n = (rate * seconds) as usize;
    let paced = make_orders(&client, &token, n.div_ceil(LIFE.len())).await;
    wait_until("the creations", Duration::from_secs(120), || {
        inbox.arrived.lock().unwrap().len() >= paced.len()
    })
    .await;
    let before = inbox.arrived.lock().unwrap().len();
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
            let o = post(
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
    wait_until("the paced deliveries", Duration::from_secs(120), || {
        inbox.arrived.lock().unwrap().len() >= before + n
    })
    .await;
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
        "lambda latency at {rate} changes/s ({n} changes, {functions} functions): response to webhook arrival p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );

    // 2. Drain: the mapping stopped, DRAIN events queued, then started.
    on.store(false, Ordering::Relaxed);
    if let Some(running) = running.take() {
        let _ = running.await;
    }
    let before = inbox.arrived.lock().unwrap().len();
    let queued = make_orders(&client, &token, drain).await;
    wait_until("the outbox to empty", Duration::from_secs(120), || {
        std::process::Command::new("curl")
            .args(["-fsS", &url("/metrics")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\noutbox_backlog 0\n"))
    })
    .await;
    on.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let running = tokio::spawn(mapping(queue, queue_url, functions, on.clone()));
    wait_until("the drain", Duration::from_secs(300), || {
        inbox.arrived.lock().unwrap().len() >= before + queued.len()
    })
    .await;
    let took = started.elapsed();
    println!(
        "lambda drain: {} queued events delivered in {:.2} s = {:.0} deliveries/s ({functions} functions, batches of 10); bad signatures: {}",
        queued.len(),
        took.as_secs_f64(),
        queued.len() as f64 / took.as_secs_f64(),
        inbox.bad.load(Ordering::Relaxed)
    );
    on.store(false, Ordering::Relaxed);
    let _ = running.await;
}

async fn wait_until_ready(client: &reqwest::Client) {
    for _ in 0..200 {
        if client
            .get(url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the API did not become ready");
}
