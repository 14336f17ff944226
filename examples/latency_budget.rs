//! Where the time from an API answer to its webhook goes, measured from
//! the traces the binaries export (SPEC §15): an OTLP/HTTP receiver that
//! keeps each span's name, trace, times and links, and on Ctrl-C (SIGINT)
//! prints the median and p90 of each stage over every event whose trace
//! holds all of them. Run it through `scripts/latency-budget`, which runs
//! the webhook benchmark at a fixed rate with the binaries exporting here.
//!
//! An event's stages, by its spans: the API's request span (ends when the
//! answer is written), the relay's `outbox publish` span (linked to the
//! event's trace), the worker's `fan-out` span (in the event's trace,
//! started once the event's deliveries are planned, ended after their
//! commit) and its `webhook attempt` span (ends with the receiver's answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

/// A span as kept: its name, trace, start and end (ns since the epoch),
/// and the traces it links to.
struct Kept {
    name: String,
    trace: Vec<u8>,
    start: u64,
    end: u64,
    links: Vec<Vec<u8>>,
    /// `http.route`, on the API's request spans.
    route: Option<String>,
}

type Spans = Arc<Mutex<Vec<Kept>>>;

async fn traces(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut kept = spans.lock().unwrap();
    for span in request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
    {
        let route = span
            .attributes
            .iter()
            .find(|kv| kv.key == "http.route")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => Some(s.clone()),
                _ => None,
            });
        kept.push(Kept {
            route,
            name: span.name,
            trace: span.trace_id,
            start: span.start_time_unix_nano,
            end: span.end_time_unix_nano,
            links: span.links.into_iter().map(|l| l.trace_id).collect(),
        });
    }
    axum::http::StatusCode::OK
}

/// An event's (start, end) of request, publish, fan-out and attempt.
type Spans4 = [(u64, u64); 4];

/// A stage's time, in ns, from an event's spans.
type Stage = fn(&Spans4) -> i64;

/// One event's spans: (start, end) of each stage.
#[derive(Default)]
struct Event {
    request: Option<(u64, u64)>,
    publish: Option<(u64, u64)>,
    fan_out: Option<(u64, u64)>,
    attempt: Option<(u64, u64)>,
}

fn quantile(values: &mut [i64], q: f64) -> f64 {
    values.sort();
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[i] as f64 / 1e6
}

fn report(spans: &[Kept]) {
    let mut events: HashMap<&[u8], Event> = HashMap::new();
    for span in spans {
        let times = Some((span.start, span.end));
        match span.name.as_str() {
            "outbox publish" => {
                for trace in &span.links {
                    events.entry(trace.as_slice()).or_default().publish = times;
                }
            }
            "fan-out" => events.entry(&span.trace).or_default().fan_out = times,
            // The first attempt only.
            "webhook attempt" => {
                let e = events.entry(&span.trace).or_default();
                if e.attempt.is_none_or(|(start, _)| span.start < start) {
                    e.attempt = times;
                }
            }
            // The benchmark's timed calls: status changes (not the
            // orders its set-up creates as fast as it can).
            _ if span.route.as_deref() == Some("/v1/orders/{id}/status") => {
                events.entry(&span.trace).or_default().request = times;
            }
            _ => {}
        }
    }
    let complete: Vec<Spans4> = events
        .values()
        .filter_map(|e| Some([e.request?, e.publish?, e.fan_out?, e.attempt?]))
        .collect();
    println!(
        "{} spans, {} events with all four stages\n",
        spans.len(),
        complete.len()
    );
    if complete.is_empty() {
        return;
    }
    let stages: [(&str, Stage); 7] = [
        ("API: request received → answer written", |s| {
            s[0].1 as i64 - s[0].0 as i64
        }),
        ("answer → relay's publish starts", |s| {
            s[1].0 as i64 - s[0].1 as i64
        }),
        ("SQS SendMessageBatch", |s| s[1].1 as i64 - s[1].0 as i64),
        (
            "published → worker has read and planned it (receive, read, lock)",
            |s| s[2].0 as i64 - s[1].1 as i64,
        ),
        ("planned → attempt starts (insert, commit, slot)", |s| {
            s[3].0 as i64 - s[2].0 as i64
        }),
        ("attempt: POST → receiver's answer", |s| {
            s[3].1 as i64 - s[3].0 as i64
        }),
        ("total: answer → receiver's answer", |s| {
            s[3].1 as i64 - s[0].1 as i64
        }),
    ];
    println!("| stage | p50 | p90 |\n|---|---|---|");
    for (name, delta) in stages {
        let mut values: Vec<i64> = complete.iter().map(delta).collect();
        println!(
            "| {name} | {:.2} ms | {:.2} ms |",
            quantile(&mut values, 0.5),
            quantile(&mut values, 0.9)
        );
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("LATENCY_BUDGET_ADDR").unwrap_or_else(|_| "127.0.0.1:4318".into());
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!("latency budget: receiving OTLP/HTTP on http://{addr}; Ctrl-C prints the budget");
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::signal::ctrl_c().await.unwrap();
    report(&spans.lock().unwrap());
}
