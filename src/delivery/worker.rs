//! The delivery worker: ingest (SQS → delivery rows) and dispatch (due
//! delivery rows → HTTP attempts), both stateless; the schedule is in the
//! database, so any number of workers can run and any can be killed.
//!
//! Ordering: a delivery is only claimed while no earlier event of the same
//! order is still pending for the same endpoint (`claim_due`), so one
//! endpoint receives an order's events in `sequence` order; a later event
//! waits while an earlier one is retried, and goes once it succeeded or
//! finally failed. Other orders and other endpoints are not held up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::client::WebhookClient;
use super::metrics::WorkerMetrics;
use super::signing;
use crate::config::DeliveryConfig;
use crate::db;
use crate::db::deliveries::{DeliveryRow, NewDelivery, Outcome, FAILED, PENDING, SUCCEEDED};
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::time;
use crate::domain::webhook::{EventFilter, SigningSecret};
use crate::domain::EventType;
use crate::queue::{describe, Queue};
use crate::secrets::SecretBox;

/// How often dispatch looks for due retries and other workers' rows.
const TICK: Duration = Duration::from_millis(200);
/// How often waiting deliveries are checked for a missed release.
const SWEEP: Duration = Duration::from_secs(10);
/// Longest `Retry-After` honored.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum WorkerStartError {
    #[error("DATABASE_URL: {0}")]
    Database(#[source] sqlx::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

struct Shared {
    pool: MySqlPool,
    client: WebhookClient,
    secrets: SecretBox,
    config: DeliveryConfig,
    wake: Notify,
    metrics: WorkerMetrics,
    in_flight: Arc<Semaphore>,
    per_endpoint: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

pub struct Worker {
    shared: Arc<Shared>,
    queue: Queue,
    metrics_listener: TcpListener,
}

/// The part of an envelope the worker reads; the body is kept as received.
#[derive(Clone, Deserialize)]
struct Incoming {
    id: Uuid,
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(with = "crate::domain::time::millis")]
    timestamp: DateTime<Utc>,
    data: IncomingData,
}

#[derive(Clone, Deserialize)]
struct IncomingData {
    customer_id: Uuid,
    #[serde(default)]
    order_id: Option<Uuid>,
    #[serde(default)]
    sequence: Option<u32>,
}

impl Worker {
    pub async fn build(config: DeliveryConfig) -> Result<Worker, WorkerStartError> {
        let pool = db::pool(&config.database_url, config.database_max_connections)
            .map_err(WorkerStartError::Database)?;
        let secrets = SecretBox::new(config.secrets_encryption_key.as_deref())
            .map_err(WorkerStartError::Config)?;
        let queue = Queue::connect(&config.sqs_queue_url, config.aws_endpoint_url.as_deref()).await;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|source| WorkerStartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        Ok(Worker {
            shared: Arc::new(Shared {
                pool,
                client: WebhookClient::new(config.timeout, config.allow_private_networks),
                secrets,
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                per_endpoint: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                metrics: WorkerMetrics::default(),
                config,
            }),
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

    /// Runs until `shutdown`; then stops receiving, lets attempts in flight
    /// finish (each is bounded by `WEBHOOK_TIMEOUT`) and leaves the rest to
    /// SQS visibility and the database schedule.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop, stopped) = watch::channel(false);
        let mut loops = JoinSet::new();
        // Two receivers, so one batch's database work overlaps the next receive.
        loops.spawn(ingest(
            self.shared.clone(),
            self.queue.clone(),
            stopped.clone(),
        ));
        loops.spawn(ingest(self.shared.clone(), self.queue, stopped.clone()));
        loops.spawn(dispatch(self.shared.clone(), stopped.clone()));
        let metrics = metrics_router(self.shared.clone());
        let mut metrics_stop = stopped.clone();
        loops.spawn(async move {
            let stopped = async move {
                let _ = metrics_stop.changed().await;
            };
            let drain = Duration::from_secs(5);
            let _ = crate::server::serve(self.metrics_listener, metrics, stopped, drain).await;
        });
        shutdown.await;
        tracing::info!("shutting down: finishing attempts in flight");
        let _ = stop.send(true);
        while loops.join_next().await.is_some() {}
    }
}

fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let shared = shared.clone();
                async move {
                    let pending = db::deliveries::pending_count(&shared.pool).await.ok();
                    let disabled = db::webhook_endpoints::disabled_count(&shared.pool)
                        .await
                        .ok();
                    shared.metrics.render(pending, disabled)
                }
            }),
        )
}

/// SQS → delivery rows. A message is deleted only once every delivery it
/// implies is recorded; a malformed one is left for the redrive policy.
async fn ingest(shared: Arc<Shared>, queue: Queue, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let receive = queue
            .client()
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .wait_time_seconds(20)
            .send();
        let output = tokio::select! {
            _ = stop.changed() => return,
            output = receive => output,
        };
        let messages = match output {
            Ok(output) => {
                failures = 0;
                output.messages.unwrap_or_default()
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(200 * u64::from(failures.min(50)));
                tracing::warn!(error = %describe(e), retry_in = ?pause, "receiving from SQS failed");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // The batch's messages are fanned out concurrently (their commits
        // share the database's group commit), each retried after a deadlock.
        let outcomes = futures_util::future::join_all(messages.iter().map(|message| {
            let body = message.body().unwrap_or_default();
            let shared = &shared;
            async move {
                let mut tries = 0;
                loop {
                    match fan_out(shared, body).await {
                        Err(FanOutError::Db(e)) if tries < 5 && crate::error::is_retryable(&e) => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(5 * tries)).await;
                        }
                        other => return other,
                    }
                }
            }
        }))
        .await;
        for (message, outcome) in messages.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    if let Some(handle) = message.receipt_handle() {
                        if let Err(e) = queue
                            .client()
                            .delete_message()
                            .queue_url(queue.url())
                            .receipt_handle(handle)
                            .send()
                            .await
                        {
                            // Received again later: fan-out is idempotent.
                            tracing::warn!(error = %describe(e), "deleting an SQS message failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    message_id = message.message_id().unwrap_or_default(),
                    error = %e,
                    "message not processed; left for SQS to redeliver or dead-letter"
                ),
            }
        }
        shared.wake.notify_one();
    }
}

/// Records one delivery per subscribed endpoint; idempotent per (event, endpoint).
///
/// Ordering: a delivery whose order has an earlier event still pending for
/// the same endpoint is written without `next_attempt_at` (waiting); when
/// that earlier one settles, `release_next` makes the next one due. Both
/// sides lock the rows they look at, so they cannot miss each other.
///
/// SQS may hand an order's events to workers out of order. So that the
/// check sees every earlier event, deliveries of earlier events of the order
/// that this endpoint would receive (its filter, sent after it existed) and
/// that have none yet are created here too, from the outbox; their own
/// messages then add nothing.
#[derive(Debug, thiserror::Error)]
enum FanOutError {
    #[error("malformed event: {0}")]
    Malformed(serde_json::Error),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

async fn fan_out(shared: &Shared, body: &str) -> Result<(), FanOutError> {
    let event: Incoming = serde_json::from_str(body).map_err(FanOutError::Malformed)?;
    let endpoints = db::webhook_endpoints::subscribed(
        &shared.pool,
        event.data.customer_id,
        EventFilter::bit(event.event_type),
    )
    .await?;
    let now = time::now();
    let mut conn = shared.pool.acquire().await?;
    // Read committed: no gap locks between workers fanning out one order.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for endpoint in endpoints {
        let (Some(order_id), Some(sequence)) = (event.data.order_id, event.data.sequence) else {
            let row = new_delivery(&endpoint, &event, body, now, true);
            db::deliveries::insert_ignore(&mut *tx, &row).await?;
            continue;
        };
        // This event and any earlier ones not yet recorded, oldest first.
        let last = db::deliveries::last_sequence(&mut *tx, endpoint.id, order_id)
            .await?
            .unwrap_or(0);
        let mut events: Vec<(Incoming, String)> = vec![];
        if last + 1 < sequence {
            for missing in db::order_events::between(&mut *tx, order_id, last, sequence).await? {
                if let Ok(earlier) = serde_json::from_str::<Incoming>(&missing.payload) {
                    if EventFilter(endpoint.event_mask).includes(earlier.event_type)
                        && earlier.timestamp >= endpoint.created_at
                    {
                        events.push((earlier, missing.payload));
                    }
                }
            }
        }
        events.push((event.clone(), body.to_string()));
        let first = events[0].0.data.sequence.unwrap_or(sequence);
        let mut blocked =
            db::deliveries::earlier_pending(&mut *tx, endpoint.id, order_id, first).await?;
        for (incoming, payload) in &events {
            let row = new_delivery(&endpoint, incoming, payload, now, !blocked);
            let created = db::deliveries::insert_ignore(&mut *tx, &row).await?;
            let pending = created
                || db::deliveries::status_of(&mut *tx, incoming.id, endpoint.id)
                    .await?
                    .is_some_and(|s| s == PENDING);
            blocked = blocked || pending;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn new_delivery(
    endpoint: &EndpointRow,
    event: &Incoming,
    body: &str,
    now: DateTime<Utc>,
    due: bool,
) -> DeliveryRow {
    let new = NewDelivery {
        endpoint_id: endpoint.id,
        customer_id: endpoint.customer_id,
        event_id: event.id,
        event_type: event.event_type.as_str(),
        order_id: event.data.order_id,
        sequence: event.data.sequence,
        payload: body,
        event_created_at: event.timestamp,
    };
    DeliveryRow::pending(new, now, due)
}

/// Due delivery rows → attempts, bounded overall and per endpoint.
async fn dispatch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut attempts = JoinSet::new();
    let mut last_sweep = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        if last_sweep.elapsed() > SWEEP {
            last_sweep = std::time::Instant::now();
            if let Ok(mut conn) = shared.pool.acquire().await {
                match db::deliveries::release_stranded(&mut conn, time::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(count = n, "released deliveries left waiting"),
                    Err(e) => tracing::warn!(error = %e, "sweeping waiting deliveries failed"),
                }
            }
        }
        let free = shared.in_flight.available_permits();
        let mut claimed_any = false;
        if free > 0 {
            match claim(&shared, free, &saturated(&shared)).await {
                Ok(rows) => {
                    claimed_any = !rows.is_empty();
                    let mut busy = vec![];
                    for row in rows {
                        let Some(permits) = permits_for(&shared, row.endpoint_id) else {
                            busy.push(row.id);
                            continue;
                        };
                        let shared = shared.clone();
                        attempts.spawn(async move {
                            deliver(&shared, row).await;
                            drop(permits);
                            shared.wake.notify_one();
                        });
                    }
                    if !busy.is_empty() {
                        release(&shared, &busy).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming deliveries failed"),
            }
        }
        while attempts.try_join_next().is_some() {}
        if claimed_any && shared.in_flight.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
    }
    // Shutdown: attempts in flight finish and are recorded.
    while attempts.join_next().await.is_some() {}
}

struct Permits(
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] OwnedSemaphorePermit,
);

fn permits_for(shared: &Shared, endpoint_id: Uuid) -> Option<Permits> {
    let endpoint = {
        let mut map = shared
            .per_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(endpoint_id)
            .or_insert_with(|| Arc::new(Semaphore::new(shared.config.max_in_flight_per_endpoint)))
            .clone()
    };
    let one = endpoint.try_acquire_owned().ok()?;
    let all = shared.in_flight.clone().try_acquire_owned().ok()?;
    Some(Permits(one, all))
}

async fn claim(shared: &Shared, limit: usize, skip: &[Uuid]) -> sqlx::Result<Vec<DeliveryRow>> {
    let now = time::now();
    let lease = chrono::Duration::from_std(shared.config.timeout + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::minutes(5));
    let mut tx = shared.pool.begin().await?;
    let rows = db::deliveries::claim_due(&mut tx, now, now + lease, limit as i64, skip).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Endpoints with every one of their attempt slots in use here.
fn saturated(shared: &Shared) -> Vec<Uuid> {
    let map = shared
        .per_endpoint
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.iter()
        .filter(|(_, s)| s.available_permits() == 0)
        .map(|(id, _)| *id)
        .collect()
}

/// Gives back leases of rows whose endpoint is at its concurrency limit.
/// Retried on deadlock: a lease left in place holds its row back for the
/// whole lease (the benchmark saw 45 s stalls).
async fn release(shared: &Shared, ids: &[Uuid]) {
    if let Err(e) = with_retries(|| db::deliveries::release(&shared.pool, ids)).await {
        tracing::warn!(error = %e, "releasing leases failed; they run out by themselves");
    }
}

/// One attempt of one delivery, recorded with its outcome.
async fn deliver(shared: &Shared, row: DeliveryRow) {
    let manual = row.manual_requested_at.is_some();
    let endpoint = match db::webhook_endpoints::find(&shared.pool, row.endpoint_id).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::warn!(error = %e, "loading an endpoint failed; the lease will expire and retry");
            return;
        }
    };
    let endpoint = match endpoint {
        Some(endpoint) if endpoint.enabled || manual => endpoint,
        other => {
            let reason = if other.is_some() {
                "the endpoint is disabled"
            } else {
                "the endpoint was deleted"
            };
            settle_without_attempt(shared, &row, reason).await;
            return;
        }
    };
    let secrets = match live_secrets(&shared.secrets, &endpoint, time::now()) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(error = %e, endpoint_id = %endpoint.id, "cannot open the endpoint's secret");
            return;
        }
    };
    let started_at = time::now();
    let timestamp = started_at.timestamp();
    let id = row.event_id.to_string();
    let signature = signing::signature_header(
        &secrets.iter().collect::<Vec<_>>(),
        &id,
        timestamp,
        row.payload.as_bytes(),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let result = shared
        .client
        .attempt(&endpoint.url, headers, row.payload.clone())
        .await;
    let succeeded = result.succeeded();
    let now = time::now();
    let since_commit = succeeded
        .then(|| (now - row.event_created_at).to_std().ok())
        .flatten();
    shared
        .metrics
        .attempt(succeeded, result.duration, since_commit);

    let attempts = row.attempts + 1;
    let gone = result.response_status == Some(410);
    let (status, next_attempt_at) = if succeeded {
        (SUCCEEDED, None)
    } else if manual && row.status != PENDING {
        // One more attempt by hand, not a new schedule.
        (
            if row.status == SUCCEEDED {
                SUCCEEDED
            } else {
                FAILED
            },
            None,
        )
    } else if manual {
        (PENDING, row.next_attempt_at)
    } else if gone {
        (FAILED, None)
    } else {
        let scheduled = shared.config.retry_schedule.after(attempts);
        let asked = result
            .retry_after
            .filter(|_| matches!(result.response_status, Some(429 | 503)))
            .map(|d| d.min(MAX_RETRY_AFTER));
        match scheduled {
            None => (FAILED, None),
            Some(delay) => {
                let delay = asked.map_or(delay, |a| a.max(Duration::from_secs(1)));
                (
                    PENDING,
                    Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
                )
            }
        }
    };
    let outcome = Outcome {
        status,
        attempts,
        last_response_status: result.response_status,
        last_error: result.error.clone(),
        next_attempt_at,
    };
    let attempt = db::deliveries::AttemptRow {
        id: Uuid::now_v7(),
        delivery_id: row.id,
        attempt: attempts,
        started_at,
        duration_ms: u32::try_from(result.duration.as_millis()).unwrap_or(u32::MAX),
        response_status: result.response_status,
        response_body: result.response_body,
        error: result.error,
    };
    let disable_after = chrono::Duration::from_std(shared.config.disable_after)
        .unwrap_or(chrono::Duration::days(5));
    let recorded = with_retries(|| async {
        let mut conn = shared.pool.acquire().await?;
        // Read committed: settles of one endpoint's deliveries lock only
        // the rows they change.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        db::deliveries::insert_attempt(&mut *tx, &attempt).await?;
        db::deliveries::record_outcome(&mut *tx, row.id, &outcome, now).await?;
        if let (Some(order_id), true) = (row.order_id, outcome.status != PENDING) {
            db::deliveries::release_next(&mut *tx, row.endpoint_id, order_id, now).await?;
        }
        tx.commit().await
    })
    .await;
    // The endpoint's health, apart: one row every settle of it touches.
    let health = with_retries(|| async {
        if succeeded && endpoint.failing_since.is_none() {
            Ok(())
        } else if succeeded {
            db::webhook_endpoints::mark_succeeding(&shared.pool, endpoint.id).await
        } else if gone {
            db::webhook_endpoints::disable(
                &shared.pool,
                endpoint.id,
                "the endpoint answered 410 Gone",
                now,
            )
            .await
        } else {
            let mut conn = shared.pool.acquire().await?;
            db::webhook_endpoints::mark_failing(&mut conn, endpoint.id, now, disable_after).await
        }
    })
    .await;
    if let Err(e) = health {
        tracing::warn!(error = %e, endpoint_id = %endpoint.id, "recording the endpoint's health failed");
    }
    if let Err(e) = recorded {
        // The lease runs out and the delivery is attempted again: at least once.
        tracing::error!(error = %e, delivery_id = %row.id, "recording an attempt failed");
    }
}

/// Runs a database step again after a deadlock or lock wait timeout.
async fn with_retries<F, Fut>(mut step: F) -> sqlx::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<()>>,
{
    let mut tries = 0;
    loop {
        match step().await {
            Err(e) if tries < 5 && crate::error::is_retryable(&e) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5 * tries)).await;
            }
            other => return other,
        }
    }
}

/// A delivery whose endpoint is gone or disabled fails visibly, unattempted.
async fn settle_without_attempt(shared: &Shared, row: &DeliveryRow, reason: &str) {
    let outcome = Outcome {
        status: FAILED,
        attempts: row.attempts,
        last_response_status: None,
        last_error: Some(reason.to_string()),
        next_attempt_at: None,
    };
    if let Err(e) =
        db::deliveries::record_outcome(&shared.pool, row.id, &outcome, time::now()).await
    {
        tracing::warn!(error = %e, "settling a delivery failed");
    }
}

/// The current secret, and the previous one during its grace period.
pub fn live_secrets(
    secrets: &SecretBox,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
) -> Result<Vec<SigningSecret>, String> {
    let mut live = vec![secrets.open(&endpoint.secret)?];
    if let (Some(previous), Some(until)) = (
        &endpoint.previous_secret,
        endpoint.previous_secret_expires_at,
    ) {
        if until > now {
            live.push(secrets.open(previous)?);
        }
    }
    Ok(live)
}
