//! One trace per event across processes (SPEC §15): the real binaries,
//! exporting OTLP/HTTP protobuf to a receiver here that decodes it. The
//! client's `traceparent` is honoured; the API's request, the fan-out and
//! the attempt share its trace id with the right parents; the relay's
//! publish links to it; no attribute holds a secret or a URL's query; JSON
//! log lines inside a span carry its ids.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::helpers::*;

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
pub struct Got {
    pub service: String,
    pub span: Span,
}

impl Got {
    pub fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                Any::StringValue(s) => s.clone(),
                Any::IntValue(i) => i.to_string(),
                Any::BoolValue(b) => b.to_string(),
                Any::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: decodes each `POST /v1/traces` body.
pub async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    use axum::body::Bytes;
    use axum::extract::State;
    type Spans = Arc<Mutex<Vec<Got>>>;
    async fn traces(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let mut got = spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    got.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        axum::http::StatusCode::OK
    }
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// A binary of this crate with the environment a deployment would give it;
/// its stderr (the log) is kept line by line.
fn start(binary: &str, env: &[(&str, String)], log: Arc<Mutex<Vec<String>>>) -> Child {
    let mut command = Command::new(binary);
    command
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line);
        }
    });
    child
}

/// The trace as a tree (`cargo test -- --nocapture traces` prints it;
/// docs/pipeline.md shows one): each span under its parent, the relay's publish
/// beside it with its link.
fn tree(all: &[Got], trace: &str) -> String {
    let in_trace: Vec<&Got> = all.iter().filter(|g| g.trace() == trace).collect();
    let ids: std::collections::HashSet<String> =
        in_trace.iter().map(|g| hex(&g.span.span_id)).collect();
    let mut out = format!("trace {trace}\n");
    fn walk(out: &mut String, all: &[&Got], parent: &str, depth: usize) {
        let mut children: Vec<&&Got> = all
            .iter()
            .filter(|g| hex(&g.span.parent_span_id) == parent)
            .collect();
        children.sort_by_key(|g| g.span.start_time_unix_nano);
        for child in children {
            let took =
                (child.span.end_time_unix_nano - child.span.start_time_unix_nano) as f64 / 1e6;
            let mut attributes: Vec<String> = [
                "http.route",
                "http.response.status_code",
                "event_type",
                "sequence",
                "attempt",
                "host",
            ]
            .iter()
            .filter_map(|k| child.attribute(k).map(|v| format!("{k}={v}")))
            .collect();
            attributes.dedup();
            out.push_str(&format!(
                "{}└─ {:<18} {:<18} {:>6.1} ms  {}\n",
                "   ".repeat(depth),
                child.service,
                child.span.name,
                took,
                attributes.join(" ")
            ));
            walk(out, all, &hex(&child.span.span_id), depth + 1);
        }
    }
    let roots: std::collections::BTreeSet<String> = in_trace
        .iter()
        .map(|g| hex(&g.span.parent_span_id))
        .filter(|p| !ids.contains(p))
        .collect();
    for root in roots {
        out.push_str(&format!("(parent {root}, the client's)\n"));
        walk(&mut out, &in_trace, &root, 0);
    }
    for publish in all
        .iter()
        .filter(|g| g.span.links.iter().any(|l| hex(&l.trace_id) == trace))
    {
        out.push_str(&format!(
            "linked from trace {}: {} {} ({} message(s))\n",
            publish.trace(),
            publish.service,
            publish.span.name,
            publish
                .attribute("messaging.batch.message_count")
                .unwrap_or_default()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_to_the_attempt() {
    let (otlp, spans) = otlp_receiver().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let queue = TestQueue::create(false).await;
    let db_name = fresh_db_name();
    let database_url = format!("{}/{db_name}", server_url());
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let api_log = Arc::new(Mutex::new(vec![]));
    let common = [
        ("DATABASE_URL", database_url.clone()),
        ("SQS_QUEUE_URL", queue.url.clone()),
        ("AWS_ENDPOINT_URL", sqs_endpoint()),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
    ];
    let mut api_env = common.to_vec();
    api_env.push(("BIND_ADDR", format!("127.0.0.1:{port}")));
    api_env.push(("ADMIN_TOKEN", ADMIN.to_string()));
    let _api = start(
        env!("CARGO_BIN_EXE_mechanica-api"),
        &api_env,
        api_log.clone(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the API did not start: {:?}",
            api_log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut worker_env = common.to_vec();
    worker_env.push(("DELIVERY_METRICS_ADDR", "127.0.0.1:0".to_string()));
    let _worker = start(
        env!("CARGO_BIN_EXE_mechanica-delivery"),
        &worker_env,
        Arc::new(Mutex::new(vec![])),
    );

    let post = |path: &str, token: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
    };
    let customer: Value = post("/v1/customers", ADMIN, json!({"name": "Traced"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: Value = post(
        &format!(
            "/v1/customers/{}/api-keys",
            customer["id"].as_str().unwrap()
        ),
        ADMIN,
        json!({}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = key["token"].as_str().unwrap().to_string();
    let hook: Value = post(
        "/v1/webhooks",
        &token,
        json!({"url": format!("{}/hooks?token=s3cret-query", receiver.base)}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let secret = hook["secret"].as_str().unwrap().to_string();

    // The client's own trace: the API joins it.
    let (trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let created = post("/v1/orders", &token, order_body())
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    receiver
        .wait_for_successes("/hooks", 1, Duration::from_secs(20))
        .await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let find = |name: &str, service: &str| -> Option<Got> {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|g| g.span.name == name && g.service == service && g.trace() == trace)
            .cloned()
    };
    let attempt = loop {
        if let Some(found) = find("webhook attempt", "mechanica-delivery") {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt span in the client's trace; got {:?}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|g| (&g.service, &g.span.name, g.trace()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = spans.lock().unwrap().clone();
    let by_id: HashMap<String, &Got> = all.iter().map(|g| (hex(&g.span.span_id), g)).collect();

    // The API's request: a server span, child of the client's.
    let request = all
        .iter()
        .find(|g| {
            g.service == "mechanica-api" && g.trace() == trace && g.span.name == "POST /v1/orders"
        })
        .unwrap_or_else(|| panic!("no request span: {all:?}"));
    assert_eq!(hex(&request.span.parent_span_id), client_span);
    assert_eq!(request.span.kind, 2, "SERVER");
    assert_eq!(
        request.attribute("http.route").as_deref(),
        Some("/v1/orders")
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("201")
    );

    // The fan-out, in the worker, a child of a span of the request's trace;
    // the attempt a child of the fan-out.
    let fan_out = by_id
        .get(&hex(&attempt.span.parent_span_id))
        .unwrap_or_else(|| panic!("the attempt's parent was not exported: {attempt:?}"));
    assert_eq!(fan_out.span.name, "fan-out");
    assert_eq!(fan_out.service, "mechanica-delivery");
    let fan_out_parent = by_id
        .get(&hex(&fan_out.span.parent_span_id))
        .expect("the fan-out's parent was exported");
    assert_eq!(fan_out_parent.service, "mechanica-api");
    assert_eq!(fan_out_parent.trace(), trace);
    assert_eq!(
        attempt.attribute("endpoint_id"),
        hook["id"].as_str().map(String::from)
    );
    assert_eq!(
        attempt.attribute("event_type").as_deref(),
        Some("order.created")
    );
    assert_eq!(attempt.attribute("attempt").as_deref(), Some("1"));
    assert_eq!(
        attempt.attribute("http.response.status_code").as_deref(),
        Some("200")
    );

    // The relay's publish is a trace of its own, linked to the request's.
    let publish = all
        .iter()
        .find(|g| {
            g.span.name == "outbox publish"
                && g.span.links.iter().any(|l| hex(&l.trace_id) == trace)
        })
        .unwrap_or_else(|| panic!("no publish span linked to the trace: {all:?}"));
    assert_ne!(publish.trace(), trace);
    assert_eq!(publish.service, "mechanica-api");

    println!("{}", tree(&all, trace));

    // Nothing secret in any attribute of any span.
    for got in &all {
        for kv in &got.span.attributes {
            let value = format!("{:?}", kv.value);
            for secret in ["s3cret-query", token.as_str(), secret.as_str(), ADMIN] {
                assert!(
                    !value.contains(secret),
                    "{} {}={value}",
                    got.span.name,
                    kv.key
                );
            }
        }
    }

    // The API's JSON log lines written inside the request carry its ids.
    let lines = api_log.lock().unwrap().clone();
    let joined: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["trace_id"] == trace)
        .collect();
    assert!(
        !joined.is_empty(),
        "no log line carries the trace id: {lines:?}"
    );
    assert!(joined
        .iter()
        .all(|l| l["span_id"].as_str().is_some_and(|s| s.len() == 16)));
    let _ = queue;
    drop_database(&db_name).await;
}
