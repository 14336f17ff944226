//! `mechanica-delivery`: consumes events from SQS and delivers them to the
//! subscribed webhook endpoints (see `mechanica::delivery`). `lambda` as the
//! first argument, or `AWS_LAMBDA_RUNTIME_API` in the environment, runs the
//! same core as an AWS Lambda function instead (`delivery::lambda`).

use std::process::ExitCode;

use mechanica::app::shutdown_signal;
use mechanica::config::DeliveryConfig;
use mechanica::delivery::worker::Worker;
use mechanica::telemetry;

/// As the API: glibc's allocator (`malloc`, `_int_malloc`,
/// `malloc_consolidate`) took about a seventh of the worker's CPU at 800
/// webhooks a second (`perf record -a` during the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Lambda container's pool when `DATABASE_MAX_CONNECTIONS` is unset: one
/// invocation at a time needs few, and concurrency × this must stay within
/// the database's connection budget.
const LAMBDA_CONNECTIONS: u32 = 2;

fn main() -> ExitCode {
    let lambda = std::env::args().nth(1).as_deref() == Some("lambda")
        || std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    // A Lambda container runs one invocation at a time on a share of a
    // core: one thread drives it, with no hand-offs between threads.
    let mut runtime = if lambda {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(lambda)),
        Err(e) => {
            eprintln!("mechanica-delivery: starting the runtime failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(lambda: bool) -> ExitCode {
    let mut config = match DeliveryConfig::from_env() {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("configuration error: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let traces = telemetry::init(config.log_format, "mechanica-delivery");
    if lambda {
        if std::env::var_os("DATABASE_MAX_CONNECTIONS").is_none() {
            config.database_max_connections = LAMBDA_CONNECTIONS;
        }
        let code = run_lambda(config).await;
        tokio::task::spawn_blocking(move || traces.shutdown())
            .await
            .ok();
        return code;
    }
    let worker = match Worker::build(config.clone()).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("mechanica-delivery: {e}");
            traces.shutdown();
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        queue = %config.sqs_queue_url,
        metrics_port = worker.metrics_port(),
        "mechanica-delivery running"
    );
    worker.run_until_stopped(shutdown_signal()).await;
    tokio::task::spawn_blocking(move || traces.shutdown())
        .await
        .ok();
    ExitCode::SUCCESS
}

#[cfg(feature = "lambda")]
async fn run_lambda(config: DeliveryConfig) -> ExitCode {
    match mechanica::delivery::lambda::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mechanica-delivery lambda: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "lambda"))]
async fn run_lambda(_: DeliveryConfig) -> ExitCode {
    eprintln!("mechanica-delivery was built without the `lambda` feature");
    ExitCode::from(2)
}
