//! `mechanica-delivery`: consumes events from SQS and delivers them to the
//! subscribed webhook endpoints (see `mechanica::delivery`).

use std::process::ExitCode;

use mechanica::app::shutdown_signal;
use mechanica::config::DeliveryConfig;
use mechanica::delivery::worker::Worker;
use mechanica::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match DeliveryConfig::from_env() {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("configuration error: {error}");
            }
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let worker = match Worker::build(config.clone()).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("mechanica-delivery: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        queue = %config.sqs_queue_url,
        metrics_port = worker.metrics_port(),
        "mechanica-delivery running"
    );
    worker.run_until_stopped(shutdown_signal()).await;
    ExitCode::SUCCESS
}
