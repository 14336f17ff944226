//! Relay benchmark, against a release `mechanica-api` it starts itself and
//! the local SQS emulator (run it through `scripts/bench`).
//!
//! 1. Commit-to-queue latency: status changes at a steady RATE per second
//!    for SECONDS; each event's latency is from the moment its change's
//!    response arrived (the commit is just before) to its arrival in the queue.
//! 2. Backlog drain: DRAIN events committed with publishing off, then the
//!    API restarted with publishing on; events/s until the outbox is empty.
//!
//! Settings: API_BIN, DATABASE_SERVER (mysql://root@127.0.0.1:3306),
//! AWS_ENDPOINT_URL, RATE (200), SECONDS (10), DRAIN (2000). With APIS=2
//! the latency is measured against two APIs on one database: WRITES=
//! `alternate` (default) sends the changes to each in turn, `second` sends
//! them all to the second just after the first published (and so holds
//! the relay's turn). It also prints the database statements per change.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use serde_json::{json, Value};

mod common;
use common::{env, percentile, questions};

/// When each (order, sequence) was committed or arrived.
type Times = Arc<Mutex<HashMap<(String, u64), Instant>>>;

const ADMIN: &str = "bench-admin-token-0123456789";
const PORT: u16 = 18089;

struct Api(Child);

impl Api {
    async fn start(database: &str, queue_url: Option<&str>) -> Api {
        Api::start_on(PORT, database, queue_url).await
    }

    async fn start_on(port: u16, database: &str, queue_url: Option<&str>) -> Api {
        let mut command = Command::new(env("API_BIN", "target/release/mechanica-api"));
        command
            .arg("serve")
            .env(
                "DATABASE_URL",
                format!(
                    "{}/{database}",
                    env("DATABASE_SERVER", "mysql://root@127.0.0.1:3306")
                ),
            )
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .env_remove("SQS_QUEUE_URL");
        if let Some(url) = queue_url {
            command.env("SQS_QUEUE_URL", url);
        }
        let api = Api(command.spawn().expect("API binary starts"));
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if r.status().is_success() {
                    return api;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the API did not become ready");
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url(path: &str) -> String {
    url_on(PORT, path)
}

fn url_on(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

async fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

async fn create_queue(client: &aws_sdk_sqs::Client) -> String {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let out = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("queue");
    out.queue_url().unwrap().to_string()
}

async fn reset_database(name: &str) {
    use sqlx::Connection;
    let mut conn =
        sqlx::MySqlConnection::connect(&env("DATABASE_SERVER", "mysql://root@127.0.0.1:3306"))
            .await
            .expect("MariaDB");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn customer_token(client: &reqwest::Client) -> String {
    let customer: Value = client
        .post(url("/v1/customers"))
        .bearer_auth(ADMIN)
        .json(&json!({ "name": "Relay bench" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: Value = client
        .post(url(&format!(
            "/v1/customers/{}/api-keys",
            customer["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["token"].as_str().unwrap().to_string()
}

fn order_body() -> Value {
    json!({
        "pickup": { "name": "A", "line1": "1 Road", "city": "Rotterdam", "postal_code": "3011", "country": "NL" },
        "delivery": { "name": "B", "line1": "2 Road", "city": "Berlin", "postal_code": "10115", "country": "DE" },
        "parcels": [{ "weight_grams": 100, "length_mm": 10, "width_mm": 10, "height_mm": 10 }]
    })
}

async fn latency(rate: u64, seconds: u64) {
    let sqs = sqs().await;
    let queue = create_queue(&sqs).await;
    reset_database("mechanica_bench_relay").await;
    let _api = Api::start("mechanica_bench_relay", Some(&queue)).await;
    let two = env("APIS", "1") == "2";
    let _second = match two {
        true => Some(Api::start_on(PORT + 1, "mechanica_bench_relay", Some(&queue)).await),
        false => None,
    };
    let all_to_second = two && env("WRITES", "alternate") == "second";
    let client = reqwest::Client::new();
    let token = customer_token(&client).await;
    let total = (rate * seconds) as usize;
    // Enough orders that each is moved at most 5 times (its whole life),
    // and one more to warm the first API with.
    let mut orders = vec![];
    for _ in 0..total.div_ceil(5) + usize::from(all_to_second) {
        let o: Value = client
            .post(url("/v1/orders"))
            .bearer_auth(&token)
            .json(&order_body())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        orders.push(o["id"].as_str().unwrap().to_string());
    }
    // Drain the creations first: only status changes are measured.
    let mut drained = 0;
    while drained < orders.len() {
        drained += receive(&sqs, &queue, None).await;
    }
    if all_to_second {
        // The first API publishes a change of its own, and so holds the turn.
        let warm = client
            .post(url(&format!("/v1/orders/{}/status", orders.pop().unwrap())))
            .bearer_auth(ADMIN)
            .json(&json!({ "status": "confirmed" }))
            .send()
            .await
            .unwrap();
        assert!(warm.status().is_success());
        while receive(&sqs, &queue, None).await == 0 {}
    }
    let statements_before = questions(&env("DATABASE_SERVER", "mysql://root@127.0.0.1:3306")).await;

    let committed: Times = Default::default();
    let arrived: Times = Default::default();
    let consumer = {
        let (sqs, queue, arrived) = (sqs.clone(), queue.clone(), arrived.clone());
        tokio::spawn(async move {
            let mut got = 0;
            while got < total {
                got += receive(&sqs, &queue, Some(&arrived)).await;
            }
        })
    };
    let statuses = [
        "confirmed",
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let order = orders[i % orders.len()].clone();
        let step = i / orders.len();
        let port = match (two, all_to_second) {
            (true, true) => PORT + 1,
            (true, false) => PORT + (i % 2) as u16,
            (false, _) => PORT,
        };
        let (client, committed) = (client.clone(), committed.clone());
        senders.spawn(async move {
            let r = client
                .post(url_on(port, &format!("/v1/orders/{order}/status")))
                .bearer_auth(ADMIN)
                .json(&json!({ "status": statuses[step] }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            committed
                .lock()
                .unwrap()
                .insert((order, step as u64 + 2), Instant::now());
        });
    }
    while senders.join_next().await.is_some() {}
    let sent_in = start.elapsed();
    tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("all events arrive")
        .unwrap();
    let statements =
        questions(&env("DATABASE_SERVER", "mysql://root@127.0.0.1:3306")).await - statements_before;
    let committed = committed.lock().unwrap();
    let arrived = arrived.lock().unwrap();
    let mut latencies: Vec<Duration> = committed
        .iter()
        .map(|(k, t)| arrived[k].saturating_duration_since(*t))
        .collect();
    latencies.sort();
    let apis = match (two, all_to_second) {
        (false, _) => "one API",
        (true, false) => "two APIs, changes alternating",
        (true, true) => "two APIs, changes all to the one without the turn",
    };
    println!(
        "commit-to-queue at {:.0} changes/s ({total} changes, {apis}): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms; {:.2} database statements per change",
        total as f64 / sent_in.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        statements as f64 / total as f64
    );
}

/// Receives one batch; records arrivals by (order, sequence).
async fn receive(sqs: &aws_sdk_sqs::Client, queue: &str, arrived: Option<&Times>) -> usize {
    let out = sqs
        .receive_message()
        .queue_url(queue)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive");
    let now = Instant::now();
    let messages = out.messages();
    if messages.is_empty() {
        return 0;
    }
    let mut delete = sqs.delete_message_batch().queue_url(queue);
    for (i, m) in messages.iter().enumerate() {
        if let Some(arrived) = arrived {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let key = (
                body["data"]["order_id"].as_str().unwrap().to_string(),
                body["data"]["sequence"].as_u64().unwrap(),
            );
            arrived.lock().unwrap().insert(key, now);
        }
        delete = delete.entries(
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .build()
                .unwrap(),
        );
    }
    delete.send().await.expect("delete");
    messages.len()
}

async fn drain(count: usize) {
    let sqs = sqs().await;
    let queue = create_queue(&sqs).await;
    reset_database("mechanica_bench_drain").await;
    {
        let _api = Api::start("mechanica_bench_drain", None).await;
        let client = reqwest::Client::new();
        let token = customer_token(&client).await;
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in 0..16 {
            let (client, token) = (client.clone(), token.clone());
            tasks.spawn(async move {
                for _ in (chunk..count).step_by(16) {
                    client
                        .post(url("/v1/orders"))
                        .bearer_auth(&token)
                        .json(&order_body())
                        .send()
                        .await
                        .unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    let started = Instant::now();
    let _api = Api::start("mechanica_bench_drain", Some(&queue)).await;
    let client = reqwest::Client::new();
    loop {
        let metrics = client
            .get(url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("\noutbox_backlog 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "backlog drain: {count} events in {:.2} s = {:.0} events/s (includes the API's start-up)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let rate: u64 = env("RATE", "200").parse().unwrap();
    let seconds: u64 = env("SECONDS", "10").parse().unwrap();
    let count: usize = env("DRAIN", "2000").parse().unwrap();
    latency(rate, seconds).await;
    if env("APIS", "1") == "1" {
        drain(count).await;
    }
}
