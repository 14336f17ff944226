//! The long-running delivery worker: the conductor that wires the stages
//! (see the `delivery` module doc for the path of one event). Stateless over
//! the database and the queue, so any number of workers can run and any can
//! be killed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::deletes::{Deleted, Deletes};
use super::dispatch::dispatch;
use super::ingest::ingest;
use super::outcome::Outcome;
use super::polls::Polls;
use super::reconcile::reconcile;
use super::settle::settle_loop;
pub use super::shared::WorkerStartError;
use super::shared::{Shared, HELD_PER_SLOT};
use crate::config::DeliveryConfig;
use crate::db;
use crate::queue::Queue;

pub struct Worker {
    shared: Arc<Shared>,
    settles: mpsc::UnboundedReceiver<Outcome>,
    queue: Queue,
    metrics_listener: TcpListener,
}

impl Worker {
    pub async fn build(config: DeliveryConfig) -> Result<Worker, WorkerStartError> {
        let queue = Queue::connect(&config.sqs_queue_url, config.aws_endpoint_url.as_deref()).await;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|source| WorkerStartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        let (shared, settles) = super::shared::build(config)?;
        Ok(Worker {
            shared,
            settles,
            queue,
            metrics_listener,
        })
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Runs until `shutdown`; then stops receiving and claiming, lets
    /// attempts in flight finish (each is bounded by `WEBHOOK_TIMEOUT`),
    /// writes their outcomes and leaves the rest to SQS and the schedule.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop, stopped) = watch::channel(false);
        let (done, finished) = watch::channel(false);
        let shared = self.shared;
        let mut loops = JoinSet::new();
        let polls = Arc::new(Polls::new(shared.config.receivers));
        let (deletes, deleted, deleting) = Deletes::start(self.queue.clone());
        for _ in 0..shared.config.receivers {
            loops.spawn(ingest(
                shared.clone(),
                self.queue.clone(),
                polls.clone(),
                deletes.clone(),
                stopped.clone(),
            ));
        }
        drop(deletes);
        loops.spawn(dispatch(shared.clone(), stopped.clone()));
        loops.spawn(reconcile(shared.clone(), stopped.clone()));
        let settle = tokio::spawn(settle_loop(shared.clone(), self.settles, finished));
        let metrics = metrics_router(shared.clone(), polls, deleted);
        let mut metrics_stop = stopped.clone();
        let metrics_listener = self.metrics_listener;
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = metrics_stop.changed().await;
            };
            let drain = Duration::from_secs(5);
            let _ = crate::server::serve(metrics_listener, metrics, stopped, drain).await;
        });
        shutdown.await;
        tracing::info!("shutting down: finishing attempts in flight");
        let _ = stop.send(true);
        while loops.join_next().await.is_some() {}
        // The receivers are done: what they handed over is deleted while
        // the attempts finish. Every leased delivery in memory holds a slot
        // of `held`: all back means every attempt is done.
        let all = (shared.config.max_in_flight * HELD_PER_SLOT) as u32;
        let _ = tokio::join!(
            super::deletes::finish(deleting),
            shared.held.acquire_many(all)
        );
        let _ = done.send(true);
        let _ = settle.await;
        let _ = server.await;
    }
}

fn metrics_router(shared: Arc<Shared>, polls: Arc<Polls>, deleted: Arc<Deleted>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let shared = shared.clone();
                let polls = polls.clone();
                let deleted = deleted.clone();
                async move {
                    let pending = db::deliveries::pending_count(&shared.pool).await.ok();
                    let disabled = db::webhook_endpoints::disabled_count(&shared.pool)
                        .await
                        .ok();
                    shared.metrics.render(pending, disabled) + &polls.render() + &deleted.render()
                }
            }),
        )
}
