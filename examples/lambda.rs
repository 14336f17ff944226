//! Delivery on Lambda beside the long-running worker, all on this machine,
//! with the webhook benchmark's receiver (`../shared/bench/webhook_receiver.py`,
//! signatures verified, keyed on `webhook-id`, at RECEIVER). API → MariaDB →
//! relay → SQS emulator → then, by MODE:
//!
//! - `lambda`: an event source mapping played by this program (long polls,
//!   batches of 10, partial batch failures honoured, one delete per batch) → cargo-lambda's Runtime
//!   API emulator → FUNCTIONS `mechanica-delivery lambda` processes;
//! - `worker`: one long-running `mechanica-delivery`.
//!
//! 1. latency: status changes at a steady RATE/s for SECONDS; time from the
//!    change's response to the webhook's arrival (the first attempt);
//! 2. drain: DRAIN events queued with delivery stopped, then started;
//!    deliveries/s.
//!
//! Run it through `scripts/bench-lambda`, which starts the receiver and runs
//! both modes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{env, percentile, spawn, wait_until, LIFE};

const ADMIN: &str = "bench-admin-token-0123456789";
const API_PORT: u16 = 18190;
const RUNTIME_PORT: u16 = 18191;

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{API_PORT}{path}")
}

/// Where the Runtime API emulator takes invocations.
fn invocations_url() -> String {
    format!("http://127.0.0.1:{RUNTIME_PORT}/2015-03-31/functions/_/invocations")
}

/// The benchmark's receiver, through its control API.
struct Receiver {
    base: String,
    http: reqwest::Client,
}

impl Receiver {
    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the receiver answers")
            .json()
            .await
            .unwrap()
    }

    async fn reset(&self, secret: &str) {
        self.http
            .post(format!("{}/_reset", self.base))
            .json(&json!({ "secret": secret, "key": "header:webhook-id" }))
            .send()
            .await
            .expect("the receiver answers");
    }

    async fn unique(&self) -> usize {
        self.get("/_stats").await["unique"].as_u64().unwrap_or(0) as usize
    }

    /// Waits until `count` distinct webhooks arrived.
    async fn wait_for(&self, what: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.unique().await < count {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// First arrival of each webhook id, in nanoseconds since the epoch.
    async fn arrivals(&self) -> HashMap<String, u128> {
        let all = self.get("/_arrivals").await;
        all["arrivals"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as u128))
            .collect()
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn post(client: &reqwest::Client, path: &str, token: &str, body: Value) -> Value {
    common::post_json(client, url(path), token, body).await
}

/// The event source mapping: `pollers` long polls, each batch invoked
/// through the Runtime API emulator, the records not reported failed
/// deleted in one call. Runs while `on` is true. Like AWS's mapping, it
/// polls apart from the invocations: with twice as many polls as
/// functions, a batch waits in the emulator when a function frees up.
async fn mapping(
    queue: aws_sdk_sqs::Client,
    queue_url: String,
    pollers: usize,
    on: Arc<AtomicBool>,
) -> Mapped {
    let invoke = invocations_url();
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
            // How long each invocation of a full batch took, as the mapping
            // saw it (the Runtime API's round trip included).
            let mut mapped = Mapped::default();
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
                let received = now_ns();
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
                let invoked = Instant::now();
                let answer: Value = http
                    .post(&invoke)
                    .json(&json!({ "Records": records }))
                    .send()
                    .await
                    .expect("the Runtime API emulator answers")
                    .json()
                    .await
                    .expect("a JSON answer");
                let answered = now_ns();
                if messages.len() == 10 {
                    mapped.full.push(invoked.elapsed());
                }
                for m in messages {
                    let named: Value =
                        serde_json::from_str(m.body().unwrap_or("{}")).unwrap_or_default();
                    if let Some(id) = named["id"].as_str() {
                        mapped.times.insert(id.to_string(), (received, answered));
                    }
                }
                let failed: Vec<&str> = answer["batchItemFailures"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|i| i["itemIdentifier"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                // As the real mapping does: one DeleteMessageBatch for the
                // records not reported failed.
                let done: Vec<_> = messages
                    .iter()
                    .filter(|m| !failed.contains(&m.message_id().unwrap_or_default()))
                    .enumerate()
                    .filter_map(|(i, m)| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .ok()
                    })
                    .collect();
                if !done.is_empty() {
                    let _ = queue
                        .delete_message_batch()
                        .queue_url(&queue_url)
                        .set_entries(Some(done))
                        .send()
                        .await;
                }
            }
            mapped
        });
    }
    let mut all = Mapped::default();
    while let Some(joined) = set.join_next().await {
        let mapped = joined.unwrap_or_default();
        all.full.extend(mapped.full);
        all.times.extend(mapped.times);
    }
    all
}

/// What the event source mapping saw.
#[derive(Default)]
struct Mapped {
    /// How long each invocation of a full batch took.
    full: Vec<Duration>,
    /// By event id: when its message was received, and when the invocation
    /// that carried it answered (nanoseconds since the epoch).
    times: HashMap<String, (u128, u128)>,
}

/// Delivery, started in the chosen mode; dropping it stops it.
enum Delivery {
    Lambda {
        on: Arc<AtomicBool>,
        mapping: tokio::task::JoinHandle<Mapped>,
    },
    Worker(common::Proc),
}

impl Delivery {
    fn start(
        mode: &str,
        worker: &dyn Fn() -> common::Proc,
        queue: &aws_sdk_sqs::Client,
        queue_url: &str,
        functions: usize,
    ) -> Delivery {
        if mode == "worker" {
            return Delivery::Worker(worker());
        }
        let on = Arc::new(AtomicBool::new(true));
        let mapping = tokio::spawn(mapping(
            queue.clone(),
            queue_url.to_string(),
            functions * 2,
            on.clone(),
        ));
        Delivery::Lambda { on, mapping }
    }

    /// Stops it; in Lambda mode, what the mapping saw.
    async fn stop(self) -> Mapped {
        match self {
            Delivery::Lambda { on, mapping } => {
                on.store(false, Ordering::Relaxed);
                mapping.await.unwrap_or_default()
            }
            Delivery::Worker(process) => {
                drop(process);
                // A long poll the stopped worker left open would be handed
                // the first messages and hide them: let it run out.
                tokio::time::sleep(Duration::from_secs(21)).await;
                Mapped::default()
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let target = env("CARGO_TARGET_DIR", "target");
    let api_bin = format!("{target}/release/mechanica-api");
    let delivery_bin = format!("{target}/release/mechanica-delivery");
    let mode = env("MODE", "lambda");
    let rate: u64 = env("RATE", "200").parse().unwrap();
    let seconds: u64 = env("SECONDS", "10").parse().unwrap();
    let drain: usize = env("DRAIN", "3000").parse().unwrap();
    let functions: usize = env("FUNCTIONS", "4").parse().unwrap();
    let queue_url = env("LAMBDA_QUEUE_URL", "");
    let cargo_lambda = env("CARGO_LAMBDA", "cargo-lambda");
    let receiver = Receiver {
        base: env("RECEIVER", "http://127.0.0.1:9911"),
        http: reqwest::Client::new(),
    };
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
    let vars =
        |extra: &[(&'static str, String)]| common::pipeline_vars(&database, &queue_url, extra);
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
    common::api_ready(&client, &url("")).await;

    // The Lambda mode's Runtime API emulator and functions.
    let mut lambda_processes = vec![];
    if mode == "lambda" {
        lambda_processes.push(spawn(
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
        ));
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", RUNTIME_PORT))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let runtime = format!("http://127.0.0.1:{RUNTIME_PORT}/.rt");
        for _ in 0..functions {
            lambda_processes.push(spawn(
                &delivery_bin,
                &["lambda"],
                &vars(&[
                    ("AWS_LAMBDA_RUNTIME_API", runtime.clone()),
                    ("AWS_LAMBDA_FUNCTION_NAME", "_".into()),
                    ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
                    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
                    // Each invocation's split, with FUNCTION_LOG set to
                    // `mechanica::delivery::lambda=info` (JSON lines).
                    ("RUST_LOG", env("FUNCTION_LOG", "warn")),
                    ("LOG_FORMAT", "json".into()),
                ]),
            ));
        }
    }
    let worker = || {
        spawn(
            &delivery_bin,
            &[],
            &vars(&[("DELIVERY_METRICS_ADDR", "127.0.0.1:0".into())]),
        )
    };
    let label = if mode == "lambda" {
        format!("lambda ({functions} functions, batches of 10)")
    } else {
        "worker".to_string()
    };

    let customer = post(&client, "/v1/customers", ADMIN, json!({ "name": "Modes" })).await;
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
        json!({ "url": format!("{}/hook", receiver.base) }),
    )
    .await;
    receiver.reset(endpoint["secret"].as_str().unwrap()).await;

    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
        .load()
        .await;
    let queue = aws_sdk_sqs::Client::new(&aws);
    let delivery = Delivery::start(&mode, &worker, &queue, &queue_url, functions);

    if mode == "lambda" {
        // The hop Lambda adds, alone: an empty batch's round trip through
        // the Runtime API emulator to a function and back.
        let invoke = invocations_url();
        let http = reqwest::Client::new();
        let mut trips = vec![];
        for _ in 0..200 {
            let sent = Instant::now();
            http.post(&invoke)
                .json(&json!({ "Records": [] }))
                .send()
                .await
                .expect("the Runtime API emulator answers")
                .bytes()
                .await
                .expect("an answer");
            trips.push(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        trips.sort();
        println!(
            "{label}: an empty batch's round trip through the Runtime API p50 {:.2} ms, p90 {:.2} ms",
            percentile(&trips, 0.5),
            percentile(&trips, 0.9)
        );
    }

    // 1. First-attempt latency at a steady rate.
    let n = (rate * seconds) as usize;
    let paced = common::make_orders(&client, &url(""), &token, n.div_ceil(LIFE.len())).await;
    receiver
        .wait_for("the creations", paced.len(), Duration::from_secs(120))
        .await;
    let before = receiver.unique().await;
    let responded: Arc<Mutex<HashMap<(String, u64), u128>>> = Default::default();
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
                .insert((order, o["version"].as_u64().unwrap()), now_ns());
        });
    }
    while set.join_next().await.is_some() {}
    receiver
        .wait_for("the paced deliveries", before + n, Duration::from_secs(120))
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
    let arrived = receiver.arrivals().await;
    let responded = responded.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = responded
        .iter()
        .map(|(key, at)| Duration::from_nanos(arrived[&by_key[key]].saturating_sub(*at) as u64))
        .collect();
    latencies.sort();
    println!(
        "{label}: latency at {rate} changes/s ({n} changes): response to webhook arrival p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );

    // 2. Drain: delivery stopped, DRAIN events queued, then started again.
    let mapped = delivery.stop().await;
    if !mapped.times.is_empty() {
        // Where the first attempt's time went, as the mapping saw it.
        let mut polled = vec![];
        let mut invoked = vec![];
        let mut answered = vec![];
        for (key, at) in &responded {
            let id = &by_key[key];
            let Some(&(received, answer)) = mapped.times.get(id) else {
                continue;
            };
            let ms = |from: u128, to: u128| Duration::from_nanos(to.saturating_sub(from) as u64);
            polled.push(ms(*at, received));
            invoked.push(ms(received, arrived[id]));
            answered.push(ms(arrived[id], answer));
        }
        for v in [&mut polled, &mut invoked, &mut answered] {
            v.sort();
        }
        println!(
            "{label}: first attempt, p50 (p90): response to the mapping's receipt {:.1} ({:.1}) ms, receipt to the webhook's arrival {:.1} ({:.1}) ms, arrival to the invocation's answer {:.1} ({:.1}) ms; {} of {n}",
            percentile(&polled, 0.5),
            percentile(&polled, 0.9),
            percentile(&invoked, 0.5),
            percentile(&invoked, 0.9),
            percentile(&answered, 0.5),
            percentile(&answered, 0.9),
            polled.len()
        );
    }
    let before = receiver.unique().await;
    let queued = common::make_orders(&client, &url(""), &token, drain).await;
    wait_until("the outbox to empty", Duration::from_secs(120), || {
        std::process::Command::new("curl")
            .args(["-fsS", &url("/metrics")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\noutbox_backlog 0\n"))
    })
    .await;
    let started = Instant::now();
    let started_ns = now_ns();
    let delivery = Delivery::start(&mode, &worker, &queue, &queue_url, functions);
    receiver
        .wait_for("the drain", before + queued.len(), Duration::from_secs(300))
        .await;
    let took = started.elapsed();
    let stats = receiver.get("/_stats").await;
    println!(
        "{label}: drain: {} queued events delivered in {:.2} s = {:.0} deliveries/s; duplicates {}, signatures bad {} of {}",
        queued.len(),
        took.as_secs_f64(),
        queued.len() as f64 / took.as_secs_f64(),
        stats["duplicates"],
        stats["sig_bad"],
        stats["received"]
    );
    // The figure above counts the worker's start (a process, its pool, its
    // first receive), while the functions are already warm: the same drain
    // from its first arrival to its last leaves both starts out.
    let drained: Vec<u128> = receiver
        .arrivals()
        .await
        .into_values()
        .filter(|&at| at >= started_ns)
        .collect();
    if let (Some(first), Some(last)) = (drained.iter().min(), drained.iter().max()) {
        let span = Duration::from_nanos((last - first) as u64);
        println!(
            "{label}: drain from its first arrival to its last: {} deliveries in {:.2} s = {:.0} deliveries/s (the first {:.0} ms after the start)",
            drained.len(),
            span.as_secs_f64(),
            (drained.len() - 1) as f64 / span.as_secs_f64(),
            Duration::from_nanos((first - started_ns) as u64).as_secs_f64() * 1000.0
        );
    }
    if let Delivery::Lambda { .. } = delivery {
        let mut full = delivery.stop().await.full;
        full.sort();
        if full.is_empty() {
            return;
        }
        // The functions' own split of the same time is in their
        // "SQS batch delivered" lines (RUST_LOG=mechanica=info).
        println!(
            "{label}: drain: an invocation of 10 records took p50 {:.1} ms, p90 {:.1} ms through the Runtime API ({} invocations)",
            percentile(&full, 0.5),
            percentile(&full, 0.9),
            full.len()
        );
    }
    drop(lambda_processes);
}
