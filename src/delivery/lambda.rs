//! `mechanica-delivery lambda`: the delivery core as an AWS Lambda function
//! (SPEC §12), speaking the Lambda Runtime API through `lambda_runtime`.
//!
//! - An **SQS event** (an event source mapping with `ReportBatchItemFailures`)
//!   is one batch for `Runner::deliver`: every record's deliveries recorded
//!   and first attempts made within the invocation; a record that could not
//!   be recorded comes back in `batchItemFailures`, never the whole batch.
//! - A **scheduled event** (EventBridge) runs `Runner::run_due`: lost
//!   messages reconciled, then due retries, manual retries and released
//!   deliveries attempted until none is left or the time budget is spent.
//!
//! The runner (its database pool, its HTTP client) is made once per
//! container and reused by every invocation.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{service_fn, Context, LambdaEvent};
use serde_json::{json, Value};

use super::runner::Runner;
use crate::config::DeliveryConfig;

/// Kept free before the function's deadline: room for the last attempt's
/// timeout and for writing outcomes.
const MARGIN: Duration = Duration::from_secs(5);

/// What an invocation carries.
#[derive(Debug)]
pub enum Invocation {
    Sqs(SqsEvent),
    Scheduled,
}

impl Invocation {
    pub fn of(payload: Value) -> Result<Invocation, String> {
        if payload.get("Records").is_some_and(Value::is_array) {
            return serde_json::from_value(payload)
                .map(Invocation::Sqs)
                .map_err(|e| format!("an SQS event that does not parse: {e}"));
        }
        let scheduled = payload.get("source").and_then(Value::as_str) == Some("aws.events")
            || payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event");
        if scheduled {
            return Ok(Invocation::Scheduled);
        }
        Err("neither an SQS event nor a scheduled event".into())
    }
}

/// Runs the function until the Runtime API stops answering.
pub async fn run(config: DeliveryConfig) -> Result<(), lambda_runtime::Error> {
    let timeout = config.timeout;
    let runner = Arc::new(Runner::build(config)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let runner = runner.clone();
        async move { handle(&runner, timeout, event).await }
    }))
    .await
}

async fn handle(
    runner: &Runner,
    attempt_timeout: Duration,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let deadline = work_deadline(&event.context, attempt_timeout);
    let (answer, gauges) = match Invocation::of(event.payload)? {
        Invocation::Sqs(sqs) => (deliver(runner, &sqs, deadline).await, false),
        Invocation::Scheduled => {
            let attempted = runner.run_due(deadline).await;
            tracing::info!(attempted, "scheduled pass done");
            (json!({ "attempted": attempted }), true)
        }
    };
    // One flush per invocation: stdout is the function's log, which
    // CloudWatch (and Datadog's forwarder) read EMF from.
    println!("{}", runner.metrics_emf(gauges).await);
    if crate::telemetry::exporting_traces() {
        // Frozen until the next invocation: the spans go now.
        tokio::task::spawn_blocking(crate::telemetry::flush)
            .await
            .ok();
    }
    Ok(answer)
}

/// An SQS batch: its answer names the records to be received again.
async fn deliver(runner: &Runner, sqs: &SqsEvent, deadline: tokio::time::Instant) -> Value {
    let bodies: Vec<&str> = sqs
        .records
        .iter()
        .map(|r| r.body.as_deref().unwrap_or_default())
        .collect();
    let delivered = runner.deliver(&bodies, deadline).await;
    let failures: Vec<Value> = delivered
        .failed
        .iter()
        .filter_map(|&i| sqs.records[i].message_id.clone())
        .map(|id| json!({ "itemIdentifier": id }))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    tracing::info!(
        records = bodies.len(),
        attempted = delivered.attempted,
        unknown = delivered.unknown,
        failed = failures.len(),
        recording_ms = ms(delivered.phases.recording),
        attempting_ms = ms(delivered.phases.attempting),
        writing_ms = ms(delivered.phases.writing),
        "SQS batch delivered"
    );
    json!({ "batchItemFailures": failures })
}

/// When to stop starting work: the invocation's deadline, less one
/// attempt's timeout and a margin.
fn work_deadline(context: &Context, attempt_timeout: Duration) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let left = remaining(context.deadline, now_ms);
    tokio::time::Instant::now() + left.saturating_sub(attempt_timeout + MARGIN)
}

/// Time left before `deadline_ms`. Lambda sends an epoch time in
/// milliseconds; a value too small to be one (cargo-lambda's emulator sends
/// its 600,000 ms timeout) is read as the time left itself.
fn remaining(deadline_ms: u64, now_ms: u64) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        Duration::from_millis(deadline_ms)
    } else {
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_read_from_either_kind_of_deadline() {
        let now = 1_764_244_800_000; // 2025-11-27T12:00:00Z
        for (deadline, left) in [
            (now + 60_000, 60_000),
            (now + 1, 1),
            (now - 5, 0),
            (600_000, 600_000),
            (0, 0),
        ] {
            assert_eq!(
                remaining(deadline, now),
                Duration::from_millis(left),
                "{deadline}"
            );
        }
    }

    #[test]
    fn invocations_are_told_apart() {
        let sqs = json!({"Records": [{"messageId": "m1", "body": "{}", "eventSource": "aws:sqs"}]});
        match Invocation::of(sqs).unwrap() {
            Invocation::Sqs(event) => {
                assert_eq!(event.records[0].message_id.as_deref(), Some("m1"));
            }
            other => panic!("{other:?}"),
        }
        let empty = json!({"Records": []});
        assert!(matches!(Invocation::of(empty), Ok(Invocation::Sqs(_))));
        let scheduled =
            json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert!(matches!(
            Invocation::of(scheduled),
            Ok(Invocation::Scheduled)
        ));
        for other in [
            json!({}),
            json!({"Records": "no"}),
            json!({"source": "aws.s3"}),
            json!([1]),
        ] {
            assert!(Invocation::of(other.clone()).is_err(), "{other}");
        }
    }
}
