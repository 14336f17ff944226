//! `TestApp`: the real app, started through `App::build` on port 0 against
//! a fresh database of its own on the local MariaDB, with one method per route.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mechanica::app::App;
use mechanica::config::{Config, LogFormat};
use mechanica::rate_limit::RateLimit;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// The server without a database name; `MECHANICA_TEST_MYSQL` overrides it.
pub fn server_url() -> String {
    std::env::var("MECHANICA_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn test_config(database_url: String) -> Config {
    Config {
        database_url,
        database_max_connections: 8,
        auto_migrate: true,
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: ADMIN.into(),
        admin_token_generated: false,
        metrics_token: None,
        cors_allowed_origins: vec![],
        log_format: LogFormat::Pretty,
        request_timeout: Duration::from_secs(30),
        sqs_queue_url: None,
        aws_endpoint_url: None,
        webhook_allow_private_networks: false,
        secrets_encryption_key: None,
        // Off here; tests/api/rate_limit.rs turns it on.
        rate_limit: RateLimit::OFF,
        public_url: None,
        portal_frame_ancestors: vec![],
        ops_notify: Default::default(),
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: MySqlPool,
    pub db_name: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A customer with an API key.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    pub token: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let db_name = format!("mechanica_test_{}", Uuid::new_v4().simple());
        let config = test_config(format!("{}/{db_name}", server_url()));
        TestApp::spawn_with(config, db_name).await
    }

    pub async fn spawn_with(config: Config, db_name: String) -> TestApp {
        let app = App::build(&config).await.expect("the app starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let db = app.db.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            address,
            client: reqwest::Client::new(),
            db,
            db_name,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the instance as a deploy does (graceful shutdown: the relay
    /// gives its turn up); the database stays for the other instances.
    pub async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.db_name.clear();
    }

    /// Stops the instance as a crash would: no graceful shutdown, nothing
    /// given up (the relay's turn stays with it until its lease lapses).
    /// The database stays for the other instances on it.
    pub fn crash(mut self) {
        self.stop = None;
        self.task.abort();
        self.db_name.clear();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PATCH, path, token, body, &[])
            .await
    }

    /// Any method, a JSON body and extra headers (`If-Match`, `Idempotency-Key`).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request sent")
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create_customer(&self, name: &str) -> Value {
        let response = self
            .post("/v1/customers", ADMIN, &json!({ "name": name }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn create_api_key(&self, customer_id: &str) -> Value {
        let path = format!("/v1/customers/{customer_id}/api-keys");
        let response = self.post(&path, ADMIN, &json!({})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
        let customer = self.create_customer(name).await;
        let id = customer["id"].as_str().unwrap().to_string();
        let key = self.create_api_key(&id).await;
        Tenant {
            id,
            token: key["token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn create_order(&self, token: &str, body: &Value) -> Response {
        self.post("/v1/orders", token, body).await
    }

    /// Creates a valid order and returns it.
    pub async fn new_order(&self, tenant: &Tenant) -> Value {
        let response = self.create_order(&tenant.token, &order_body()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn change_status(&self, token: &str, order_id: &str, status: &str) -> Response {
        let path = format!("/v1/orders/{order_id}/status");
        self.post(&path, token, &json!({ "status": status })).await
    }

    /// Moves an order (as the operator) along `path`, asserting each step.
    pub async fn drive(&self, order_id: &str, path: &[&str]) {
        for status in path {
            let response = self.change_status(ADMIN, order_id, status).await;
            assert_eq!(response.status(), StatusCode::OK, "moving to {status}");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Drop the test's database on a thread of its own: Drop cannot await.
        // Tests run on a multi-threaded runtime, so while this worker waits,
        // the app's loops finish their transactions on the other and release
        // the locks DROP DATABASE waits for. If it still cannot, the next
        // `scripts/test` run removes the database.
        let db_name = self.db_name.clone();
        if db_name.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(drop_database(&db_name));
        })
        .join();
    }
}

/// Drops a test's database, if it can within 10 s (else the next
/// `scripts/test` run does).
pub async fn drop_database(db_name: &str) {
    if let Ok(mut conn) = MySqlConnection::connect(&server_url()).await {
        let _ = sqlx::query("SET SESSION lock_wait_timeout = 10")
            .execute(&mut conn)
            .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db_name}`"))
            .execute(&mut conn)
            .await;
    }
}

/// An endpoint's deliveries (up to 100), newest first; `query` is appended
/// to the query string (`&status=failed`).
pub async fn deliveries(app: &TestApp, token: &str, endpoint: &str, query: &str) -> Vec<Value> {
    let page: Value = app
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries?limit=100{query}"),
            token,
        )
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

pub fn address(name: &str, country: &str) -> Value {
    json!({
        "name": name,
        "line1": "12 Dock Road",
        "city": "Rotterdam",
        "postal_code": "3011 AA",
        "country": country
    })
}

pub fn order_body() -> Value {
    json!({
        "pickup": address("Empress Products", "NL"),
        "delivery": address("Jane Doe", "DE"),
        "parcels": [{ "weight_grams": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100 }]
    })
}

/// Asserts an RFC 9457 problem with this status and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    for member in ["type", "title", "detail"] {
        assert!(body[member].is_string(), "problem without {member}: {body}");
    }
    body
}

/// The `field`s named by a validation problem.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("errors[]")
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

/// A TCP proxy the test can cut and restore, so an outage of MariaDB or
/// SQS is real for the app without stopping the shared server.
pub struct Tunnel {
    pub port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    paused: tokio::sync::watch::Sender<bool>,
    lose_commit: Arc<AtomicBool>,
    drop_commit: Arc<AtomicBool>,
}

/// MySQL's `COM_QUERY "COMMIT"` packet, as sqlx sends it.
const COMMIT_PACKET: &[u8] = b"\x07\x00\x00\x00\x03COMMIT";

impl Tunnel {
    /// Listens on `port` (0: any free port below the kernel's ephemeral
    /// range) and forwards every connection to `target`.
    pub async fn open(port: u16, target: &'static str) -> Tunnel {
        let listener = match port {
            0 => bind_below_ephemeral().await,
            port => tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap(),
        };
        let port = listener.local_addr().unwrap().port();
        let (paused, pause) = tokio::sync::watch::channel(false);
        let lose_commit = Arc::new(AtomicBool::new(false));
        let drop_commit = Arc::new(AtomicBool::new(false));
        let armed = lose_commit.clone();
        let dropper = drop_commit.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                let pause = pause.clone();
                let armed = armed.clone();
                let dropper = dropper.clone();
                connections.spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        // Set once this connection's COMMIT went through
                        // with its answer to be lost.
                        let dropping = Arc::new(AtomicBool::new(false));
                        let seen = dropping.clone();
                        tokio::join!(
                            pump(from_client, to_server, pause.clone(), move |bytes| {
                                let commit = bytes
                                    .windows(COMMIT_PACKET.len())
                                    .any(|w| w == COMMIT_PACKET);
                                if commit && armed.swap(false, Ordering::SeqCst) {
                                    seen.store(true, Ordering::SeqCst);
                                    Flow::ForwardThenClose
                                } else if commit && dropper.swap(false, Ordering::SeqCst) {
                                    Flow::Close
                                } else {
                                    Flow::Forward
                                }
                            }),
                            pump(from_server, to_client, pause, move |_| {
                                if dropping.load(Ordering::SeqCst) {
                                    Flow::Close
                                } else {
                                    Flow::Forward
                                }
                            })
                        );
                    }
                });
            }
        });
        Tunnel {
            port,
            task: Some(task),
            paused,
            lose_commit,
            drop_commit,
        }
    }

    /// Holds every byte in both directions until `resume`: the connections
    /// stay open, as across a stalled network or a frozen server.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Drops the listener and every connection through it.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Once set, the next COMMIT through the tunnel reaches the server and
    /// its connection is cut before the answer comes back: the client
    /// cannot tell whether it committed (it did).
    pub fn commit_answer_loser(&self) -> Arc<AtomicBool> {
        self.lose_commit.clone()
    }

    /// Once set, the next COMMIT through the tunnel never reaches the
    /// server: its connection is closed instead, so the server rolls the
    /// transaction back and the client gets an error.
    pub fn commit_dropper(&self) -> Arc<AtomicBool> {
        self.drop_commit.clone()
    }
}

/// A listener on a free port below the kernel's ephemeral range (32768
/// and up here). A tunnel cut and reopened on its port needs the port to
/// stay free meanwhile; in the ephemeral range, any test's outgoing
/// connection could take it as its source port (seen once: `AddrInUse`).
async fn bind_below_ephemeral() -> tokio::net::TcpListener {
    loop {
        let port = rand::random_range(20_000..32_000);
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
}

/// What a pump does with what it read.
enum Flow {
    Forward,
    ForwardThenClose,
    Close,
}

/// Copies `from` to `to`, holding what it read while the tunnel is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut pause: tokio::sync::watch::Receiver<bool>,
    flow: impl Fn(&[u8]) -> Flow,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if pause.wait_for(|paused| !paused).await.is_err() {
            break;
        }
        let flow = flow(&buffer[..read]);
        if matches!(flow, Flow::Close) || to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        if matches!(flow, Flow::ForwardThenClose) {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The SQS emulator `scripts/test` starts.
pub fn sqs_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL is not set: run the tests with scripts/test, which starts the SQS emulator")
}

/// The emulator's address without the scheme, for a `Tunnel`.
pub fn sqs_address() -> &'static str {
    let endpoint = sqs_endpoint();
    Box::leak(
        endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
            .into_boxed_str(),
    )
}

/// A `moto_server` of the test's own (another SQS implementation: it
/// refuses messages in other shapes than fauxqs), on a free port, from
/// the virtualenv `scripts/test` installs; stopped when dropped.
pub struct Moto {
    pub endpoint: String,
    process: std::process::Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tools/.venv-deploy/bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run the tests with scripts/test, which installs it",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            process,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/moto-api/", moto.endpoint))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A queue of the test's own on the SQS emulator, read with the SDK.
pub struct TestQueue {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
    /// The SQS implementation it lives on.
    pub endpoint: String,
}

/// A received message: body, attributes, FIFO ids.
#[derive(Debug)]
pub struct Received {
    pub body: Value,
    pub event_type: Option<String>,
    pub customer_id: Option<String>,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    /// When SQS accepted it (`SentTimestamp`): the moment it was published,
    /// whatever the reader's own pace.
    pub sent_at: Option<std::time::SystemTime>,
}

impl TestQueue {
    pub async fn create(fifo: bool) -> TestQueue {
        TestQueue::create_with(fifo, &[]).await
    }

    /// A queue with these attributes (e.g. a small `MaximumMessageSize`).
    pub async fn create_with(
        fifo: bool,
        attributes: &[(aws_sdk_sqs::types::QueueAttributeName, String)],
    ) -> TestQueue {
        TestQueue::create_on(&sqs_endpoint(), fifo, attributes).await
    }

    /// A queue on the SQS implementation at `endpoint` (see `Moto`).
    pub async fn create_on(
        endpoint: &str,
        fifo: bool,
        attributes: &[(aws_sdk_sqs::types::QueueAttributeName, String)],
    ) -> TestQueue {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        use aws_sdk_sqs::types::QueueAttributeName;
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build();
        let client = aws_sdk_sqs::Client::from_conf(config);
        let mut name = format!("test-{}", Uuid::new_v4().simple());
        let mut request = client.create_queue();
        if fifo {
            name.push_str(".fifo");
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        for (name, value) in attributes {
            request = request.attributes(name.clone(), value);
        }
        let created = request
            .queue_name(name)
            .send()
            .await
            .expect("queue created");
        TestQueue {
            client,
            url: created.queue_url().unwrap().to_string(),
            endpoint: endpoint.to_string(),
        }
    }

    /// How many messages the queue holds (visible and in flight).
    pub async fn depth(&self) -> u64 {
        let (visible, in_flight) = self.counts().await;
        visible + in_flight
    }

    /// How many messages wait visible, received by no one.
    pub async fn visible(&self) -> u64 {
        self.counts().await.0
    }

    /// Messages visible, and in flight (received, not deleted).
    async fn counts(&self) -> (u64, u64) {
        use aws_sdk_sqs::types::QueueAttributeName;
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes");
        let count = |name: QueueAttributeName| -> u64 {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Sends a raw message, as anyone allowed to send to the queue could.
    pub async fn send(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// The queue's ARN (for a redrive policy).
    pub async fn arn(&self) -> String {
        use aws_sdk_sqs::types::QueueAttributeName;
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .expect("an ARN")
    }

    /// Receives (and deletes) messages until `count` arrived or `within` passed.
    pub async fn receive(&self, count: usize, within: Duration) -> Vec<Received> {
        use aws_sdk_sqs::types::MessageSystemAttributeName;
        let deadline = tokio::time::Instant::now() + within;
        let mut received = vec![];
        while received.len() < count && tokio::time::Instant::now() < deadline {
            let output = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            for message in output.messages() {
                let attribute = |name: &str| {
                    message
                        .message_attributes()
                        .and_then(|a| a.get(name))
                        .and_then(|v| v.string_value())
                        .map(str::to_string)
                };
                let system = |name: MessageSystemAttributeName| {
                    message.attributes().and_then(|a| a.get(&name)).cloned()
                };
                received.push(Received {
                    body: serde_json::from_str(message.body().unwrap()).expect("JSON body"),
                    event_type: attribute("event_type"),
                    customer_id: attribute("customer_id"),
                    group_id: system(MessageSystemAttributeName::MessageGroupId),
                    dedup_id: system(MessageSystemAttributeName::MessageDeduplicationId),
                    sent_at: system(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
                });
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(message.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("delete");
            }
        }
        received
    }

    /// Receives `count` messages within `within`, and asserts that exactly
    /// `count` came and that no event came twice.
    pub async fn receive_each_once(&self, count: usize, within: Duration) -> Vec<Received> {
        let received = self.receive(count, within).await;
        assert_eq!(received.len(), count, "events received");
        let unique: HashSet<&str> = received
            .iter()
            .map(|m| m.body["id"].as_str().unwrap())
            .collect();
        assert_eq!(unique.len(), count, "an event was published twice");
        received
    }
}

/// Asserts that the events received are those of the orders `ids`, each
/// order's with the sequences `expected`, in that order.
pub fn assert_in_order(received: &[Received], ids: &[String], expected: &[u64]) {
    let mut by_order: HashMap<&str, Vec<u64>> = HashMap::new();
    for message in received {
        let data = &message.body["data"];
        by_order
            .entry(data["order_id"].as_str().unwrap())
            .or_default()
            .push(data["sequence"].as_u64().unwrap());
    }
    assert_eq!(by_order.len(), ids.len(), "orders whose events came");
    for id in ids {
        assert_eq!(by_order[id.as_str()], expected, "order {id} out of order");
    }
}

impl TestApp {
    /// An app publishing to `queue_url` through `endpoint`, on database `db_name`.
    pub async fn spawn_publishing(db_name: &str, queue_url: &str, endpoint: &str) -> TestApp {
        let mut config = test_config(format!("{}/{db_name}", server_url()));
        config.sqs_queue_url = Some(queue_url.to_string());
        config.aws_endpoint_url = Some(endpoint.to_string());
        TestApp::spawn_with(config, db_name.to_string()).await
    }
}

pub fn fresh_db_name() -> String {
    format!("mechanica_test_{}", Uuid::new_v4().simple())
}

/// What a webhook receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_string()
    }

    /// Verifies the signature with the independent `standardwebhooks` crate.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(self.body.as_bytes(), &self.headers)
            .is_ok()
    }
}

/// Decides a receiver's answer: (status, delay) for the nth hit on a path.
pub type Script = dyn Fn(&str, usize, &Value) -> (u16, Duration) + Send + Sync;

/// A real HTTP receiver on loopback that records every request.
pub struct Receiver {
    pub base: String,
    hits: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
}

impl Receiver {
    pub async fn start(
        script: impl Fn(&str, usize, &Value) -> (u16, Duration) + Send + Sync + 'static,
    ) -> Receiver {
        use axum::body::Bytes;
        use axum::extract::{OriginalUri, State};
        use axum::http::HeaderMap;
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
            std::sync::Arc<Script>,
        );
        async fn handle(
            State((hits, script)): State<Shared>,
            OriginalUri(uri): OriginalUri,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::http::StatusCode {
            let at = std::time::Instant::now();
            let path = uri.path().to_string();
            let body = String::from_utf8_lossy(&body).into_owned();
            let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let nth = hits
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.path == path)
                .count();
            let (status, delay) = script(&path, nth, &value);
            tokio::time::sleep(delay).await;
            let mut copied = reqwest::header::HeaderMap::new();
            for (name, value) in headers.iter() {
                copied.insert(name.clone(), value.clone());
            }
            hits.lock().unwrap().push(Hit {
                path,
                headers: copied,
                body,
                status,
                at,
            });
            axum::http::StatusCode::from_u16(status).unwrap()
        }
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let script: std::sync::Arc<Script> = std::sync::Arc::new(script);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state((hits.clone(), script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base, hits }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Waits until `path` has `count` hits answered with a 2xx, or panics.
    pub async fn wait_for_successes(&self, path: &str, count: usize, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ok: Vec<Hit> = self
                .hits_on(path)
                .into_iter()
                .filter(|h| (200..300).contains(&h.status))
                .collect();
            if ok.len() >= count {
                return ok;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{path}: {} of {count} successful deliveries; all hits: {:?}",
                    ok.len(),
                    self.hits_on(path)
                        .iter()
                        .map(|h| h.status)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A delivery worker in this process, with a compressed retry schedule.
pub struct TestWorker {
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
    /// Where its `/metrics` and `/healthz` listen.
    pub metrics_port: u16,
}

pub fn worker_config(db_name: &str, queue_url: &str) -> mechanica::config::DeliveryConfig {
    mechanica::config::DeliveryConfig {
        database_url: format!("{}/{db_name}", server_url()),
        database_max_connections: 8,
        sqs_queue_url: queue_url.to_string(),
        aws_endpoint_url: Some(sqs_endpoint()),
        retry_schedule: mechanica::delivery::schedule::RetrySchedule::parse("300ms,300ms,300ms")
            .unwrap(),
        timeout: Duration::from_secs(2),
        allow_private_networks: true,
        max_in_flight: 32,
        max_in_flight_per_endpoint: 8,
        disable_after: Duration::from_secs(5 * 86_400),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        secrets_encryption_key: None,
        log_format: LogFormat::Pretty,
        receivers: 2,
        reconcile_every: Duration::from_secs(60),
        reconcile_after: Duration::from_secs(120),
        webhook_proxy_url: None,
        retention: Duration::from_secs(30 * 86_400),
        ops_notify: Default::default(),
    }
}

impl TestWorker {
    pub async fn start(config: mechanica::config::DeliveryConfig) -> TestWorker {
        let worker = mechanica::delivery::worker::Worker::build(config)
            .await
            .expect("worker starts");
        let metrics_port = worker.metrics_port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestWorker {
            stop: Some(stop),
            task,
            metrics_port,
        }
    }

    /// Like SIGTERM: asks the worker to stop and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Like `kill -9`: the worker stops mid-whatever, recording nothing more.
    pub fn kill(mut self) {
        self.stop.take();
        self.task.abort();
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// API + worker + queue on one fresh database, private networks allowed.
pub struct System {
    pub app: TestApp,
    pub worker: Option<TestWorker>,
    pub queue: TestQueue,
    pub db_name: String,
}

impl System {
    pub async fn start() -> System {
        let mut system = System::without_worker().await;
        system.worker =
            Some(TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await);
        system
    }

    /// Starts the worker with its database reached through `tunnel`.
    pub async fn start_worker_through(&mut self, tunnel: &Tunnel) {
        let mut config = worker_config(&self.db_name, &self.queue.url);
        config.database_url = format!("mysql://root@127.0.0.1:{}/{}", tunnel.port, self.db_name);
        self.worker = Some(TestWorker::start(config).await);
    }

    pub async fn without_worker() -> System {
        System::on_queue(TestQueue::create(false).await).await
    }

    /// API on `queue`, no worker.
    pub async fn on_queue(queue: TestQueue) -> System {
        let db_name = fresh_db_name();
        let mut config = test_config(format!("{}/{db_name}", server_url()));
        config.sqs_queue_url = Some(queue.url.clone());
        config.aws_endpoint_url = Some(queue.endpoint.clone());
        config.webhook_allow_private_networks = true;
        let app = TestApp::spawn_with(config, db_name.clone()).await;
        System {
            app,
            worker: None,
            queue,
            db_name,
        }
    }

    /// Registers an endpoint; returns (id, secret).
    pub async fn endpoint(&self, token: &str, url: &str, types: Option<Value>) -> (String, String) {
        let mut body = serde_json::json!({ "url": url });
        if let Some(types) = types {
            body["event_types"] = types;
        }
        let response = self.app.post("/v1/webhooks", token, &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        (
            created["id"].as_str().unwrap().to_string(),
            created["secret"].as_str().unwrap().to_string(),
        )
    }
}

/// A fresh database made from a `mysqldump` of `source` (with `options`,
/// e.g. `--no-data`): its name, and the dump's text.
pub async fn copy_database(source: &str, options: &[&str]) -> (String, String) {
    let copy = fresh_db_name();
    let dump = std::process::Command::new("mysqldump")
        .args(["--host=127.0.0.1", "--user=root"])
        .args(options)
        .arg(source)
        .output()
        .expect("mysqldump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut admin = MySqlConnection::connect(&server_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE `{copy}`"))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut load = std::process::Command::new("mysql")
        .args(["--host=127.0.0.1", "--user=root", &copy])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mysql runs");
    use std::io::Write;
    load.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    assert!(load.wait().unwrap().success());
    (copy, String::from_utf8_lossy(&dump.stdout).into_owned())
}

/// The most arrivals in any one-second window.
pub fn busiest_second(arrivals: &[std::time::Instant]) -> usize {
    arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// One value of a Prometheus text page.
pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
        .parse()
        .unwrap()
}

impl System {
    /// Registers an endpoint limited to `per_second` requests a second.
    pub async fn paced_endpoint(&self, token: &str, url: &str, per_second: u32) {
        let response = self
            .app
            .post(
                "/v1/webhooks",
                token,
                &json!({"url": url, "rate_limit_per_second": per_second}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}
