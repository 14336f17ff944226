//! `mechanica-delivery lambda` against a real Lambda Runtime API: the
//! emulator of `cargo-lambda` (PyPI, installed by `scripts/lib.sh`), the
//! built binary polling it as a function, and invocations sent to it as AWS
//! sends them: SQS event JSON made from messages the relay really published,
//! and EventBridge scheduled events (SPEC §12).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::*;

/// The Runtime API emulator and the function polling it.
struct Function {
    invoke: String,
    client: reqwest::Client,
    _emulator: Child,
    _function: Child,
    /// What the function wrote to stdout (its log in Lambda), line by line.
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn cargo_lambda() -> String {
    std::env::var("CARGO_LAMBDA").expect(
        "CARGO_LAMBDA is not set: run the tests with scripts/test, which installs cargo-lambda",
    )
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

impl Function {
    async fn start(database_url: &str, queue_url: &str) -> Function {
        Function::start_with(database_url, queue_url, &[]).await
    }

    /// `start`, with more settings for the function.
    async fn start_with(database_url: &str, queue_url: &str, extra: &[(&str, String)]) -> Function {
        let port = free_port().await;
        let emulator = Command::new(cargo_lambda())
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cargo-lambda starts");
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut function = function_process(
            &format!("http://127.0.0.1:{port}/.rt"),
            database_url,
            queue_url,
            extra,
        );
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = function.stdout.take().expect("stdout is piped");
        let lines = output.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        Function {
            invoke: format!("http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"),
            client: reqwest::Client::new(),
            _emulator: emulator,
            _function: function,
            output,
        }
    }

    /// The Embedded Metric Format lines written so far.
    async fn emf(&self) -> Vec<Value> {
        // stdout is read by another task: let it catch up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    async fn invoke(&self, event: &Value) -> Value {
        let response = self
            .client
            .post(&self.invoke)
            .json(event)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the emulator answers");
        assert_eq!(response.status(), StatusCode::OK, "the invocation failed");
        response.json().await.unwrap()
    }
}

/// `mechanica-delivery lambda` polling the Runtime API at `runtime_api`.
fn function_process(
    runtime_api: &str,
    database_url: &str,
    queue_url: &str,
    extra: &[(&str, String)],
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mechanica-delivery"));
    for (key, value) in extra {
        command.env(key, value);
    }
    command
        .arg("lambda")
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("DATABASE_URL", database_url)
        .env("SQS_QUEUE_URL", queue_url)
        .env("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
        .env("WEBHOOK_RETRY_SCHEDULE", "300ms,300ms")
        .env("WEBHOOK_TIMEOUT", "2s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the function starts")
}

/// A Lambda Runtime API that keeps deadlines as AWS does: each invocation
/// carries `Lambda-Runtime-Deadline-Ms` (epoch milliseconds), and an answer
/// after it is lost (the invoke times out). cargo-lambda's emulator always
/// announces 600 s, so a deadline cannot be tested with it.
struct DeadlineRuntime {
    base: String,
    queued: tokio::sync::mpsc::Sender<(Value, u64, tokio::sync::oneshot::Sender<Value>)>,
}

type Pending = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
>;

impl DeadlineRuntime {
    async fn start() -> DeadlineRuntime {
        use axum::extract::{Path, State};
        use axum::routing::{get, post};
        type Queue = std::sync::Arc<
            tokio::sync::Mutex<
                tokio::sync::mpsc::Receiver<(Value, u64, tokio::sync::oneshot::Sender<Value>)>,
            >,
        >;
        async fn next(
            State((queue, pending)): State<(Queue, Pending)>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let Some((event, deadline_ms, answer)) = queue.lock().await.recv().await else {
                return StatusCode::GONE.into_response();
            };
            let id = uuid::Uuid::new_v4().to_string();
            pending.lock().unwrap().insert(id.clone(), answer);
            (
                [
                    ("lambda-runtime-aws-request-id", id),
                    ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:_".to_string(),
                    ),
                    ("content-type", "application/json".to_string()),
                ],
                event.to_string(),
            )
                .into_response()
        }
        async fn response(
            State((_, pending)): State<(Queue, Pending)>,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> StatusCode {
            if let Some(answer) = pending.lock().unwrap().remove(&id) {
                let _ = answer.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            StatusCode::ACCEPTED
        }
        let (queued, waiting) = tokio::sync::mpsc::channel(8);
        let state: (Queue, Pending) = (
            std::sync::Arc::new(tokio::sync::Mutex::new(waiting)),
            Pending::default(),
        );
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(response))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        DeadlineRuntime {
            base: format!("http://127.0.0.1:{port}"),
            queued,
        }
    }

    /// Invokes the function with `timeout`: its answer, or `None` if it did
    /// not answer by the deadline.
    async fn invoke(&self, event: &Value, timeout: Duration) -> Option<Value> {
        let deadline_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + timeout.as_millis() as u64;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queued
            .send((event.clone(), deadline_ms, answer))
            .await
            .unwrap();
        tokio::time::timeout(timeout, answered).await.ok()?.ok()
    }
}

/// An SQS event as Lambda's event source mapping delivers it.
fn sqs_event(arn: &str, bodies: &[(String, String)]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .map(|(id, body)| {
            json!({
                "messageId": id,
                "receiptHandle": format!("handle-{id}"),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1764230400000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1764230400001"
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-27T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/mechanica-due"],
        "detail": {}
    })
}

/// The messages the relay published, as (message id, body) pairs.
async fn published(system: &System, count: usize) -> Vec<(String, String)> {
    let received = system.queue.receive(count, Duration::from_secs(20)).await;
    assert_eq!(received.len(), count, "the relay published every event");
    received
        .iter()
        .enumerate()
        .map(|(n, m)| (format!("message-{n}"), m.body.to_string()))
        .collect()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_delivered_and_only_the_record_that_cannot_be_recorded_fails() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Serverless").await;
    let (_, secret) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let mut orders = vec![];
    for _ in 0..4 {
        orders.push(system.app.new_order(&tenant).await);
    }
    let mut records = published(&system, 4).await;
    // The database refuses every delivery of one event: its record alone
    // cannot be recorded.
    let refused: Value = serde_json::from_str(&records[2].1).unwrap();
    let refused_id = refused["id"].as_str().unwrap().to_string();
    sqlx::raw_sql(&format!(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_deliveries FOR EACH ROW
         IF NEW.event_id = UNHEX(REPLACE('{refused_id}', '-', '')) THEN
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test';
         END IF"
    ))
    .execute(&system.app.db)
    .await
    .unwrap();
    // A duplicate record (SQS delivers at least once) and one naming an
    // event that never committed.
    records.push(("message-dup".into(), records[0].1.clone()));
    records.push((
        "message-forged".into(),
        json!({"id": uuid::Uuid::now_v7(), "type": "order.created"}).to_string(),
    ));
    let arn = system.queue.arn().await;
    let function = Function::start(
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
    )
    .await;

    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "message-2"}]}),
        "only the record that could not be recorded comes back"
    );
    // The others were delivered within the invocation, once each, signed.
    let hits = receiver.hits_on("/hooks");
    assert_eq!(
        hits.len(),
        3,
        "{:?}",
        hits.iter()
            .map(|h| h.json()["id"].clone())
            .collect::<Vec<_>>()
    );
    assert!(hits.iter().all(|h| h.verifies_with(&secret)));
    assert!(hits.iter().all(|h| h.json()["id"] != refused_id.as_str()));
    assert_eq!(
        count(
            &system.app,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded'"
        )
        .await,
        3
    );

    // Redelivered once the database accepts it: that record only.
    sqlx::raw_sql("DROP TRIGGER refuse_one")
        .execute(&system.app.db)
        .await
        .unwrap();
    let again = function
        .invoke(&sqs_event(&arn, &[records[2].clone(), records[0].clone()]))
        .await;
    assert_eq!(again, json!({"batchItemFailures": []}));
    let hits = receiver.hits_on("/hooks");
    assert_eq!(
        hits.len(),
        4,
        "the redelivered duplicate was not sent again"
    );
    assert!(hits.iter().any(|h| h.json()["id"] == refused_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_pass_makes_the_retry_that_fell_due() {
    let system = System::without_worker().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let receiver = Receiver::start(move |_, _, _| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    let tenant = system.app.tenant("Scheduled").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    let records = published(&system, 1).await;
    let function = Function::start(
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
    )
    .await;
    let arn = system.queue.arn().await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(
        receiver.hits_on("/hooks").len(),
        1,
        "the first attempt, refused"
    );
    let pending =
        count(&system.app, "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at IS NOT NULL").await;
    assert_eq!(pending, 1, "a retry is scheduled");

    // Nothing runs between invocations: the retry waits for the schedule.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.hits_on("/hooks").len(), 1);
    let answer = function.invoke(&scheduled_event()).await;
    assert_eq!(answer, json!({"attempted": 1}));
    let hits = receiver.hits_on("/hooks");
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].status, 200);
    assert_eq!(hits[0].json()["id"], hits[1].json()["id"]);
    assert_eq!(
        count(
            &system.app,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded' AND attempts = 2"
        )
        .await,
        1
    );
    // A scheduled pass with nothing due does nothing.
    assert_eq!(
        function.invoke(&scheduled_event()).await,
        json!({"attempted": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_the_database_away_fails_the_records_then_recovers() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Cold").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    system.app.new_order(&tenant).await;
    let records = published(&system, 2).await;
    let arn = system.queue.arn().await;

    // The function starts while its database is unreachable.
    let mut tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    let port = tunnel.port;
    tunnel.cut();
    let function = Function::start(
        &format!("mysql://root@127.0.0.1:{port}/{}", system.db_name),
        &system.queue.url,
    )
    .await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "message-0"}, {"itemIdentifier": "message-1"}]}),
        "nothing could be recorded: every record comes back for SQS to redeliver"
    );
    assert!(receiver.hits_on("/hooks").is_empty());

    // The database is back: the same container carries on, no restart.
    let _tunnel = Tunnel::open(port, "127.0.0.1:3306").await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(receiver.hits_on("/hooks").len(), 2);
}

/// The first attempts of an invocation go out while its fan-out commits.
/// When the answer to that commit is lost (it did commit), every attempt
/// made is still recorded, nothing is sent twice, and no record fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_whose_fan_out_commit_went_unanswered_records_every_attempt() {
    fan_out_commit_fails(|tunnel| tunnel.commit_answer_loser()).await;
}

/// The same when that commit never reaches the server (it rolls back): the
/// delivery whose attempt went out is written again, the batch is fanned
/// out again, and no record fails (before, every record came back and
/// nothing was delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_whose_fan_out_commit_rolled_back_records_every_attempt() {
    fan_out_commit_fails(|tunnel| tunnel.commit_dropper()).await;
}

async fn fan_out_commit_fails(armed: impl Fn(&Tunnel) -> Arc<std::sync::atomic::AtomicBool>) {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Failed commit").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let first = system.app.new_order(&tenant).await;
    let second = system.app.new_order(&tenant).await;
    let records = published(&system, 2).await;
    let arn = system.queue.arn().await;
    let tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    let function = Function::start(
        &format!("mysql://root@127.0.0.1:{}/{}", tunnel.port, system.db_name),
        &system.queue.url,
    )
    .await;
    let (one, other) = records.split_at(1);
    // Warm: the first record goes through as usual.
    let answer = function.invoke(&sqs_event(&arn, one)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));

    // The function's next commit is the fan-out of the second record.
    armed(&tunnel).store(true, Ordering::SeqCst);
    let answer = function.invoke(&sqs_event(&arn, other)).await;
    assert!(
        !armed(&tunnel).load(Ordering::SeqCst),
        "the fan-out's commit went through the tunnel"
    );
    assert_eq!(
        answer,
        json!({"batchItemFailures": []}),
        "the record was recorded"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits_on("/hooks");
    let orders: Vec<String> = hits
        .iter()
        .map(|h| h.json()["data"]["order_id"].as_str().unwrap().to_string())
        .collect();
    let mut expected = vec![
        first["id"].as_str().unwrap().to_string(),
        second["id"].as_str().unwrap().to_string(),
    ];
    let mut sorted = orders.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "each order's webhook sent once: {orders:?}"
    );
    let recorded = count(&system.app, "SELECT COUNT(*) FROM webhook_attempts").await;
    assert_eq!(recorded, 2, "every request sent is recorded");
    let settled = count(
        &system.app,
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded' AND attempts = 1",
    )
    .await;
    assert_eq!(settled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_events_in_one_batch_arrive_in_order_within_the_invocation() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Ordered").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    system
        .app
        .drive(id, &["confirmed", "picked_up", "in_transit"])
        .await;
    let mut records = published(&system, 4).await;
    records.reverse();
    let function = Function::start(
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
    )
    .await;
    let arn = system.queue.arn().await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    // Each later event waited for the one before it, and went within the
    // same invocation, not at the next scheduled pass.
    let sequences: Vec<u64> = receiver
        .hits_on("/hooks")
        .iter()
        .map(|h| h.json()["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4]);

    // Its metrics, as Embedded Metric Format lines: one flush for the
    // invocation, the names of /metrics, what happened in it.
    let emf = function.emf().await;
    let attempts = |lines: &[Value], outcome: &str| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l["outcome"] == outcome)
            .map(|l| l["webhook_attempts_total"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(attempts(&emf, "succeeded"), [4], "{emf:?}");
    assert_eq!(attempts(&emf, "failed"), [0], "{emf:?}");
    let main = emf
        .iter()
        .find(|l| l.get("webhook_end_to_end_seconds").is_some())
        .unwrap();
    let directive = &main["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Mechanica");
    let counts: u64 = main["webhook_attempt_duration_seconds"]["Counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 4);
    let declared: Vec<&str> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in &declared {
        assert!(main.get(*name).is_some(), "{name} declared, not given");
    }
    // The scheduled pass flushes again: nothing new, and the gauges.
    function.invoke(&scheduled_event()).await;
    let emf = function.emf().await;
    assert_eq!(attempts(&emf, "succeeded"), [4, 0], "{emf:?}");
    let last = emf.last().unwrap();
    assert_eq!(last["webhook_deliveries_pending"], 0);
    assert_eq!(last["webhook_endpoints_disabled"], 0);
}

/// Every wait of an invocation is bounded by its deadline: an endpoint
/// limited to 1/s and a backlog of 25 events in one batch, with a 9 s
/// deadline. The invocation answers in time, every request the endpoint
/// got is a recorded attempt, and no request was sent twice. The old code
/// let a delivery wait 20 s for its turn and its outcome's write retry for
/// 32 s: the function ran past its deadline with attempts not recorded,
/// and their leases lapsed into sending them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_answers_before_its_deadline_with_every_attempt_recorded() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Deadline").await;
    system
        .paced_endpoint(&tenant.token, &format!("{}/paced", receiver.base), 1)
        .await;
    for _ in 0..25 {
        system.app.new_order(&tenant).await;
    }
    let records = published(&system, 25).await;
    let arn = system.queue.arn().await;
    let runtime = DeadlineRuntime::start().await;
    let _function = function_process(
        &runtime.base,
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
        &[],
    );

    let answer = runtime
        .invoke(&sqs_event(&arn, &records), Duration::from_secs(9))
        .await
        .expect("the invocation answered before its deadline");
    assert_eq!(
        answer,
        json!({"batchItemFailures": []}),
        "every record was recorded"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits_on("/paced");
    assert!(!hits.is_empty(), "nothing was sent");
    let recorded = count(&system.app, "SELECT COUNT(*) FROM webhook_attempts").await;
    assert_eq!(
        hits.len() as i64,
        recorded,
        "requests sent but not recorded"
    );
    let mut sent: Vec<(String, String)> = hits
        .iter()
        .map(|h| (h.header("webhook-id"), h.header("webhook-timestamp")))
        .collect();
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), hits.len(), "a request was sent twice");
    // What it could not send waits, pending, for the next invocation.
    let pending = count(
        &system.app,
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending' AND lease_until IS NULL",
    )
    .await;
    assert_eq!(pending + recorded, 25);
}

/// An endpoint's rate limit holds across Lambda containers: two function
/// processes, each invoked with half of a backlog, together send an
/// endpoint limited to 4/s at most 4 requests in any one second (each kept
/// its own pace before: two sent 6 in one second to an endpoint limited to
/// 3/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_function_containers_share_an_endpoints_rate_limit() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Two containers").await;
    system
        .paced_endpoint(&tenant.token, &format!("{}/paced", receiver.base), 4)
        .await;
    for _ in 0..16 {
        system.app.new_order(&tenant).await;
    }
    let records = published(&system, 16).await;
    let arn = system.queue.arn().await;
    let database_url = format!("{}/{}", server_url(), system.db_name);
    let (first, second) = (
        DeadlineRuntime::start().await,
        DeadlineRuntime::start().await,
    );
    let _functions = [
        function_process(&first.base, &database_url, &system.queue.url, &[]),
        function_process(&second.base, &database_url, &system.queue.url, &[]),
    ];
    let (a, b) = records.split_at(8);
    let (a, b) = (sqs_event(&arn, a), sqs_event(&arn, b));
    let (a, b) = tokio::join!(
        first.invoke(&a, Duration::from_secs(30)),
        second.invoke(&b, Duration::from_secs(30))
    );
    assert!(a.is_some() && b.is_some(), "both answered");

    let hits = receiver.hits_on("/paced");
    assert_eq!(hits.len(), 16, "each container sent its half");
    let arrivals: Vec<std::time::Instant> = hits.iter().map(|h| h.at).collect();
    let busiest = busiest_second(&arrivals);
    assert!(busiest <= 4, "{busiest} requests in one second");
}

/// Every order type goes through the function as a status change does, in
/// order; and the news of a 410 (the endpoint disabled, its delivery
/// failed) reaches the endpoint that listens, at the next scheduled pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_type_and_the_news_about_webhooks_go_through_the_function() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/gone" => (410, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let tenant = system.app.tenant("Serverless").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let (gone, _) = system
        .endpoint(&tenant.token, &format!("{}/gone", receiver.base), None)
        .await;
    let news = json!(["endpoint.disabled", "delivery.failed"]);
    system
        .endpoint(
            &tenant.token,
            &format!("{}/news", receiver.base),
            Some(news),
        )
        .await;
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let amended = system
        .app
        .patch(
            &format!("/v1/orders/{id}"),
            &tenant.token,
            &json!({"notes": "Back door"}),
        )
        .await;
    assert_eq!(amended.status(), reqwest::StatusCode::OK);
    system.app.drive(id, &["confirmed"]).await;
    let tracked = system
        .app
        .post(
            &format!("/v1/orders/{id}/tracking"),
            ADMIN,
            &json!({"location": "Depot"}),
        )
        .await;
    assert_eq!(tracked.status(), reqwest::StatusCode::OK);
    let mut records = published(&system, 4).await;
    records.reverse();
    let function = Function::start(
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
    )
    .await;
    let arn = system.queue.arn().await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let hooks: Vec<(String, u64)> = receiver
        .hits_on("/hooks")
        .iter()
        .map(|h| {
            let e = h.json();
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            ("order.created".to_string(), 1),
            ("order.updated".to_string(), 2),
            ("order.status_changed".to_string(), 3),
            ("order.tracking_updated".to_string(), 4),
        ]
    );
    // The news was written with the outcomes; the scheduled pass sends it.
    function.invoke(&scheduled_event()).await;
    let notices: Vec<Value> = receiver.hits_on("/news").iter().map(|h| h.json()).collect();
    let kinds: std::collections::BTreeSet<&str> = notices
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["delivery.failed", "endpoint.disabled"],
        "{notices:?}"
    );
    for notice in &notices {
        assert_eq!(notice["data"]["endpoint_id"], gone.as_str());
    }
}

/// The function continues the trace the API stored with the event, and
/// its spans leave before the invocation answers (Lambda freezes the
/// container after: a batch exporter's timer would never fire). The
/// function logs at `RUST_LOG=warn`: spans do not depend on the log level
/// (they did, at first: every span was an info span the filter dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_continues_the_events_trace_and_flushes_before_it_answers() {
    let (otlp, spans) = crate::traces::otlp_receiver().await;
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Traced function").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    let records = published(&system, 1).await;
    // What the API stores when it exports traces (this in-process API does not).
    let (trace, parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    sqlx::query("UPDATE order_events SET traceparent = ?")
        .bind(format!("00-{trace}-{parent}-01"))
        .execute(&system.app.db)
        .await
        .unwrap();
    // The batch exporter's own timer is a minute away: only the flush can
    // send the spans in time.
    let function = Function::start_with(
        &format!("{}/{}", server_url(), system.db_name),
        &system.queue.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string()),
        ],
    )
    .await;
    let arn = system.queue.arn().await;
    let answer = function.invoke(&sqs_event(&arn, &records)).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = spans.lock().unwrap().clone();
    let fan_out = got
        .iter()
        .find(|g| g.span.name == "fan-out")
        .unwrap_or_else(|| {
            panic!("no fan-out span exported by the end of the invocation: {got:?}")
        });
    assert_eq!(fan_out.service, "mechanica-delivery");
    assert_eq!(fan_out.trace(), trace);
    assert_eq!(crate::traces::hex(&fan_out.span.parent_span_id), parent);
    let attempt = got
        .iter()
        .find(|g| g.span.name == "webhook attempt")
        .expect("the attempt's span was exported too");
    assert_eq!(attempt.trace(), trace);
    assert_eq!(attempt.span.parent_span_id, fan_out.span.span_id);
}
