//! The delivery worker: stateless loops over the database and the queue, so
//! any number of workers can run and any can be killed.
//!
//! - **Ingest** (several long polls at once): a batch of SQS messages is
//!   fanned out in one transaction (`fan_out`), the deliveries that can go
//!   now are created leased to this worker and attempted at once, and the
//!   batch is deleted. A message naming no committed event is deleted and
//!   counted. While the database is unreachable, ingest stops receiving, so
//!   no message climbs towards the dead-letter queue because of the outage.
//! - **Attempts** sign and POST; their outcomes go to one **settle** task,
//!   which writes whatever has finished meanwhile in one transaction (the
//!   attempts, the new states fenced by lease, the release of deliveries
//!   that waited behind a settled one). Attempts never hold a connection,
//!   so no number of them in flight can starve the pool.
//! - **Dispatch** claims what the hot path did not take: retries that fell
//!   due, manual retries, released deliveries, leases that ran out. Idle, it
//!   sleeps until the next retry falls due (at most a second).
//! - **Reconcile** gives every committed event its deliveries even if its
//!   message was lost or dead-lettered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::client::WebhookClient;
use super::fan_out::{fan_out, FanOut, Lease, Leased as LeasedDelivery};
use super::metrics::WorkerMetrics;
use super::outcome::{self, Before, Decision, Response};
use super::signing;
use crate::config::DeliveryConfig;
use crate::db;
use crate::db::deliveries::{AttemptRow, DeliveryRow, Leased, Settled, FAILED, PENDING, SUCCEEDED};
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::time;
use crate::domain::webhook::SigningSecret;
use crate::domain::webhook_headers::CustomHeaders;
use crate::queue::{Queue, Received};
use crate::secrets::SecretBox;

/// Longest an idle dispatcher sleeps (another worker's rows, manual retries).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often waiting deliveries are checked for a missed release.
const SWEEP: Duration = Duration::from_secs(60);
/// Outcomes written in one transaction at most.
const SETTLE_GROUP: usize = 256;
/// Leased deliveries a worker (and an endpoint) may hold in memory per
/// attempt slot: enough to keep the slots busy between batches, few enough
/// that a slow endpoint's backlog stays in the database.
const HELD_PER_SLOT: usize = 4;
/// Longest a held delivery waits for a slot before its lease is given back.
const HOLD_WAIT: Duration = Duration::from_secs(20);

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
    /// Wakes the dispatcher: something may be claimable.
    wake: Notify,
    metrics: WorkerMetrics,
    /// Attempts in flight, all endpoints.
    in_flight: Arc<Semaphore>,
    /// Leased deliveries held in memory (waiting for a slot or in flight).
    held: Arc<Semaphore>,
    lanes: Mutex<HashMap<Uuid, Lane>>,
    settles: mpsc::UnboundedSender<Outcome>,
    /// A receiver found the database away: every receiver pauses.
    database_down: AtomicBool,
    /// The dispatcher's last pass left deliveries for lack of room: the
    /// next place freed wakes it (`room_freed`) rather than its idle poll.
    short_of_room: AtomicBool,
}

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
        let (shared, settles) = shared(config)?;
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
        for _ in 0..shared.config.receivers {
            loops.spawn(ingest(shared.clone(), self.queue.clone(), stopped.clone()));
        }
        loops.spawn(dispatch(shared.clone(), stopped.clone()));
        loops.spawn(reconcile(shared.clone(), stopped.clone()));
        let settle = tokio::spawn(settle_loop(shared.clone(), self.settles, finished));
        let metrics = metrics_router(shared.clone());
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
        // Every leased delivery in memory holds a slot of `held`: all back
        // means every attempt is done.
        let all = (shared.config.max_in_flight * HELD_PER_SLOT) as u32;
        let _ = shared.held.acquire_many(all).await;
        let _ = done.send(true);
        let _ = settle.await;
        let _ = server.await;
    }
}

/// What every loop shares, and where attempts' outcomes arrive.
fn shared(
    config: DeliveryConfig,
) -> Result<(Arc<Shared>, mpsc::UnboundedReceiver<Outcome>), WorkerStartError> {
    let pool = db::read_committed_pool(&config.database_url, config.database_max_connections)
        .map_err(WorkerStartError::Database)?;
    let secrets = SecretBox::new(config.secrets_encryption_key.as_deref())
        .map_err(WorkerStartError::Config)?;
    let client = WebhookClient::new(
        config.timeout,
        config.allow_private_networks,
        config.webhook_proxy_url.as_deref(),
    )
    .map_err(WorkerStartError::Config)?;
    let (settles, settled) = mpsc::unbounded_channel();
    let shared = Shared {
        pool,
        client,
        secrets,
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        held: Arc::new(Semaphore::new(config.max_in_flight * HELD_PER_SLOT)),
        lanes: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        short_of_room: AtomicBool::new(false),
        metrics: WorkerMetrics::default(),
        settles,
        database_down: AtomicBool::new(false),
        config,
    };
    Ok((Arc::new(shared), settled))
}

/// The same core run to completion, one call at a time: what a Lambda
/// invocation does (see `delivery::lambda`). Each call fans out, attempts and
/// writes every outcome before it returns, so nothing is left running when
/// the function is frozen.
pub struct Runner {
    shared: Arc<Shared>,
    outcomes: tokio::sync::Mutex<mpsc::UnboundedReceiver<Outcome>>,
}

/// What `Runner::deliver` did with a batch of messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Indexes (into the batch) of messages whose deliveries could not be
    /// recorded: to be received again.
    pub failed: Vec<usize>,
    /// Messages naming no committed event (dropped, like the worker does).
    pub unknown: usize,
    pub attempted: usize,
}

impl Runner {
    pub fn build(config: DeliveryConfig) -> Result<Runner, WorkerStartError> {
        let (shared, outcomes) = shared(config)?;
        Ok(Runner {
            shared,
            outcomes: tokio::sync::Mutex::new(outcomes),
        })
    }

    /// A batch of message bodies: each event's deliveries are recorded and
    /// their first attempts made before this returns. If the batch cannot be
    /// recorded as one, each message is tried alone, so one bad message
    /// never fails the others.
    pub async fn deliver(&self, bodies: &[&str], deadline: tokio::time::Instant) -> Delivered {
        let shared = &self.shared;
        let named: Vec<Option<Uuid>> = bodies
            .iter()
            .map(|body| serde_json::from_str::<Named>(body).ok().map(|n| n.id))
            .collect();
        let mut delivered = Delivered {
            unknown: named.iter().filter(|n| n.is_none()).count(),
            ..Delivered::default()
        };
        let mut ids: Vec<Uuid> = named.iter().flatten().copied().collect();
        ids.sort();
        ids.dedup();
        match self.fan_out(&ids).await {
            Ok((unknown, started)) => {
                delivered.unknown += named
                    .iter()
                    .flatten()
                    .filter(|id| unknown.contains(id))
                    .count();
                delivered.attempted += started;
            }
            Err(e) if unreachable(&e) => {
                // Alone they would fail the same way, each after its own wait.
                tracing::warn!(error = %e, "the database is unreachable; every message will be received again");
                delivered.failed = (0..bodies.len()).collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording a batch failed; recording its messages one by one");
                for id in &ids {
                    match self.fan_out(std::slice::from_ref(id)).await {
                        Ok((unknown, started)) => {
                            delivered.unknown += usize::from(!unknown.is_empty());
                            delivered.attempted += started;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, event_id = %id, "recording a message failed; it will be received again");
                            delivered.failed.extend(
                                named
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, n)| **n == Some(*id))
                                    .map(|(i, _)| i),
                            );
                        }
                    }
                }
            }
        }
        if delivered.unknown > 0 {
            shared.metrics.unknown_events(delivered.unknown);
        }
        // Deliveries this call could not hold, and those released by the
        // ones it settled (the next event of an order), go now too.
        delivered.attempted += self.drain(deadline).await;
        delivered
    }

    /// Finishes what is in flight, then claims and runs what fell due
    /// meanwhile, until nothing is left or `deadline`. How many it started.
    async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        let mut started = 0;
        loop {
            self.finish().await;
            if tokio::time::Instant::now() >= deadline {
                return started;
            }
            match self.start_due(deadline).await {
                0 => return started,
                n => started += n,
            }
        }
    }

    /// Fans out and starts the attempts: the unknown ids, and how many
    /// attempts started.
    async fn fan_out(&self, ids: &[Uuid]) -> sqlx::Result<(Vec<Uuid>, usize)> {
        let lease_id = Uuid::now_v7();
        match with_retries(|| ingest_batch(&self.shared, ids, lease_id)).await {
            Ok(out) => {
                let started = out.leased.len();
                for leased in out.leased {
                    spawn_attempt(&self.shared, leased);
                }
                Ok((out.unknown, started))
            }
            Err(e) => {
                if !matches!(e, sqlx::Error::PoolTimedOut) {
                    // It may have committed before its answer was lost.
                    give_back(&self.shared, ids, lease_id).await;
                }
                Err(e)
            }
        }
    }

    /// The scheduled pass: events whose messages were lost get their
    /// deliveries, then due retries, manual retries and released deliveries
    /// are attempted until none is left or `deadline` (leave room for one
    /// attempt's timeout after it). Returns how many were attempted.
    pub async fn run_due(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            match reconcile_once(&self.shared).await {
                Ok(true) if tokio::time::Instant::now() < deadline => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling deliveries failed");
                    break;
                }
            }
        }
        sweep(&self.shared).await;
        self.drain(deadline).await
    }

    /// Claims and starts due deliveries until none is left or `deadline`.
    async fn start_due(&self, deadline: tokio::time::Instant) -> usize {
        let mut started = 0;
        while tokio::time::Instant::now() < deadline {
            match claim_and_start(&self.shared).await {
                Ok((0, _)) => break,
                Ok((n, _)) => started += n,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming deliveries failed");
                    break;
                }
            }
            if self.shared.held.available_permits() == 0 {
                // Full: what is in flight finishes before more is claimed.
                break;
            }
        }
        started
    }

    /// Waits for every attempt started to finish, then writes their outcomes.
    async fn finish(&self) {
        let shared = &self.shared;
        let all = (shared.config.max_in_flight * HELD_PER_SLOT) as u32;
        drop(shared.held.acquire_many(all).await);
        let mut outcomes = self.outcomes.lock().await;
        let mut finished = vec![];
        while let Ok(outcome) = outcomes.try_recv() {
            finished.push(outcome);
        }
        for group in finished.chunks(SETTLE_GROUP) {
            write_group(shared, group).await;
        }
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

/// The only part of a message that is read: the event's id.
#[derive(Deserialize)]
struct Named {
    id: Uuid,
}

/// SQS → deliveries → attempts.
async fn ingest(shared: Arc<Shared>, queue: Queue, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    // A batch whose commit went unanswered: its leases, to give back.
    let mut unanswered: Option<(Vec<Uuid>, Uuid)> = None;
    loop {
        if shared.database_down.load(Ordering::Relaxed) {
            // Every receiver stops while the database is away, so an outage
            // spends no receive counts on the way to the dead-letter queue.
            wait_for_database(&shared.pool, &mut stop).await;
            if *stop.borrow() {
                return;
            }
            shared.database_down.store(false, Ordering::Relaxed);
        }
        if let Some((ids, lease_id)) = unanswered.take() {
            give_back(&shared, &ids, lease_id).await;
        }
        let received = tokio::select! {
            _ = stop.changed() => return,
            received = queue.receive(Duration::from_secs(20)) => received,
        };
        let messages = match received {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(200 * u64::from(failures.min(50)));
                tracing::warn!(error = %e, retry_in = ?pause, "receiving from SQS failed");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        if shared.database_down.load(Ordering::Relaxed) {
            // Received while another receiver found the database away: kept
            // out of sight until it is back, not processed.
            hide(&queue, &messages).await;
            continue;
        }
        let ids = named_events(&shared, &messages);
        let lease_id = Uuid::now_v7();
        match with_retries(|| ingest_batch(&shared, &ids, lease_id)).await {
            Ok(out) => {
                if !out.unknown.is_empty() {
                    shared.metrics.unknown_events(out.unknown.len());
                    tracing::warn!(
                        count = out.unknown.len(),
                        "messages naming no committed event were dropped"
                    );
                }
                if out.created > out.leased.len() {
                    shared.wake.notify_one();
                }
                for leased in out.leased {
                    spawn_attempt(&shared, leased);
                }
                let queue = queue.clone();
                tokio::spawn(async move {
                    let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
                    if let Err(e) = queue.delete(&receipts).await {
                        // Received again later: fan-out is idempotent.
                        tracing::warn!(error = %e, "deleting SQS messages failed");
                    }
                });
            }
            Err(e) => {
                // Not deleted: the messages come back once visible again.
                tracing::warn!(error = %e, "recording deliveries failed; pausing receipt until the database answers");
                shared.database_down.store(true, Ordering::Relaxed);
                hide(&queue, &messages).await;
                // The batch may have committed before its answer was lost:
                // leases it took would hold those deliveries until they ran out.
                unanswered = Some((ids, lease_id));
            }
        }
    }
}

/// How long messages received during a database outage stay out of sight:
/// long enough that another receiver does not take them again meanwhile.
const HIDE: Duration = Duration::from_secs(10);

async fn hide(queue: &Queue, messages: &[Received]) {
    let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
    if let Err(e) = queue.change_visibility(&receipts, HIDE).await {
        tracing::warn!(error = %e, "hiding messages during a database outage failed");
    }
}

/// Gives back the leases of a batch whose commit went unanswered.
async fn give_back(shared: &Shared, ids: &[Uuid], lease_id: Uuid) {
    match with_retries(|| {
        db::deliveries::release_lease(&shared.pool, Leased::Events(ids), lease_id)
    })
    .await
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                count = n,
                "gave back the leases of a batch whose commit went unanswered"
            );
            shared.wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(error = %e, "giving back a batch's leases failed; they run out by themselves")
        }
    }
}

/// The event ids messages name; a message that names none is counted
/// and deleted with its batch.
fn named_events(shared: &Shared, messages: &[Received]) -> Vec<Uuid> {
    let mut ids = vec![];
    for message in messages {
        match serde_json::from_str::<Named>(&message.body) {
            Ok(named) => ids.push(named.id),
            Err(_) => {
                shared.metrics.unknown_events(1);
                tracing::warn!(message_id = %message.message_id, "a message that names no event was dropped");
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

async fn ingest_batch(shared: &Shared, ids: &[Uuid], lease_id: Uuid) -> sqlx::Result<FanOut<Held>> {
    let now = time::now();
    let lease = Lease {
        until: lease_until(shared, now),
        id: lease_id,
    };
    fan_out(&shared.pool, ids, now, &lease, |endpoint| {
        hold(shared, endpoint.id)
    })
    .await
}

async fn wait_for_database(pool: &MySqlPool, stop: &mut watch::Receiver<bool>) {
    let mut pause = Duration::from_millis(250);
    loop {
        if sqlx::query("SELECT 1").execute(pool).await.is_ok() {
            tracing::info!("the database answers again; receiving");
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn lease_until(shared: &Shared, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(shared.config.timeout + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::minutes(5))
}

/// One endpoint's slots in this worker: attempts in flight, and leased
/// deliveries held (waiting or in flight).
#[derive(Clone)]
struct Lane {
    in_flight: Arc<Semaphore>,
    held: Arc<Semaphore>,
    pace: Arc<Pace>,
}

/// An endpoint's `rate_limit_per_second` in this worker: attempts start at
/// least 1/limit apart (plus a little, so that arrivals jittered by the
/// network still fit in any one-second window).
#[derive(Default)]
struct Pace(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Pace {
    /// When the next attempt may start, if that is no later than `latest`:
    /// that moment is then reserved. A moment past `latest` is not reserved,
    /// so a delivery that gives its lease back takes no one's place (else
    /// the pace would drift ever further ahead of the clock and nothing
    /// would be sent).
    fn reserve(
        &self,
        per_second: u32,
        latest: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let interval = interval + (interval / 50).min(Duration::from_millis(5));
        let now = tokio::time::Instant::now();
        let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = next.map_or(now, |n| n.max(now));
        if at > latest {
            return None;
        }
        *next = Some(at + interval);
        Some(at)
    }
}

/// A leased delivery's place in memory: its endpoint's and the worker's.
struct Held {
    lane: Lane,
    _endpoint: OwnedSemaphorePermit,
    _worker: OwnedSemaphorePermit,
}

/// A place for one more leased delivery of this endpoint, if there is room.
fn hold(shared: &Shared, endpoint_id: Uuid) -> Option<Held> {
    let per_endpoint = shared.config.max_in_flight_per_endpoint;
    let lane = shared
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(endpoint_id)
        .or_insert_with(|| Lane {
            in_flight: Arc::new(Semaphore::new(per_endpoint)),
            held: Arc::new(Semaphore::new(per_endpoint * HELD_PER_SLOT)),
            pace: Arc::default(),
        })
        .clone();
    let endpoint = lane.held.clone().try_acquire_owned().ok()?;
    let worker = shared.held.clone().try_acquire_owned().ok()?;
    Some(Held {
        lane,
        _endpoint: endpoint,
        _worker: worker,
    })
}

fn spawn_attempt(shared: &Arc<Shared>, leased: LeasedDelivery<Held>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        run_held(
            &shared,
            leased.permit,
            leased.row,
            Some(leased.endpoint),
            None,
        )
        .await;
    });
}

/// Waits for an attempt slot (its endpoint's, then the worker's), attempts
/// and hands the outcome to the settle task; gives the lease back if no
/// slot frees up in time.
async fn run_held(
    shared: &Shared,
    held: Held,
    row: DeliveryRow,
    endpoint: Option<EndpointRow>,
    leased_at: Option<DateTime<Utc>>,
) {
    let rate_limit = endpoint.as_ref().and_then(|e| e.rate_limit_per_second);
    let deadline = tokio::time::Instant::now() + HOLD_WAIT;
    let slots = tokio::time::timeout_at(deadline, async {
        let endpoint = held.lane.in_flight.clone().acquire_owned().await;
        if let Some(per_second) = rate_limit {
            // Its turn under the endpoint's rate limit, if it comes in time.
            let turn = held.lane.pace.reserve(per_second, deadline)?;
            tokio::time::sleep_until(turn).await;
        }
        let worker = shared.in_flight.clone().acquire_owned().await;
        Some((endpoint, worker))
    })
    .await;
    let Ok(Some((Ok(_endpoint_slot), Ok(_worker_slot)))) = slots else {
        let ids = [row.id];
        if let Err(e) = with_retries(|| db::deliveries::release(&shared.pool, &ids)).await {
            tracing::warn!(error = %e, "giving a lease back failed; it runs out by itself");
        }
        drop(held);
        room_freed(shared);
        return;
    };
    let leased_at = leased_at.unwrap_or_else(time::now);
    let outcome = attempt(shared, row, endpoint, leased_at).await;
    let _ = shared.settles.send(outcome);
    drop(held);
    room_freed(shared);
}

/// Wakes the dispatcher if its last pass left deliveries for lack of room.
fn room_freed(shared: &Shared) {
    if shared.short_of_room.swap(false, Ordering::SeqCst) {
        shared.wake.notify_one();
    }
}

/// Due delivery rows → attempts, bounded overall and per endpoint.
async fn dispatch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if last_sweep.elapsed() > SWEEP {
            last_sweep = std::time::Instant::now();
            sweep(&shared).await;
        }
        let mut pause = IDLE_POLL;
        let mut claimed_any = false;
        match claim_and_start(&shared).await {
            Ok((started, next_due)) => {
                claimed_any = started > 0;
                if let Some(next_due) = next_due {
                    let until = (next_due - time::now()).to_std().unwrap_or_default();
                    pause = pause.min(until.max(Duration::from_millis(10)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming deliveries failed"),
        }
        if claimed_any && shared.held.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Claims what there is room for and starts its attempts: how many were
/// started, and when the next scheduled delivery falls due.
async fn claim_and_start(shared: &Arc<Shared>) -> sqlx::Result<(usize, Option<DateTime<Utc>>)> {
    // Raised before room is looked at, so that a place freed from now on
    // wakes the dispatcher; lowered below if room did not limit this pass.
    shared.short_of_room.store(true, Ordering::SeqCst);
    let free = shared.held.available_permits();
    if free == 0 {
        return Ok((0, None));
    }
    let saturated = saturated(shared);
    let (jobs, next_due) = claim(shared, free, &saturated).await?;
    let claimed = jobs.len();
    let mut started = 0;
    let mut busy = vec![];
    for (row, endpoint, leased_at) in jobs {
        let Some(held) = hold(shared, row.endpoint_id) else {
            busy.push(row.id);
            continue;
        };
        started += 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            run_held(&shared, held, row, endpoint, Some(leased_at)).await;
        });
    }
    if saturated.is_empty() && busy.is_empty() && claimed < free {
        shared.short_of_room.store(false, Ordering::SeqCst);
    }
    if !busy.is_empty() {
        if let Err(e) = with_retries(|| db::deliveries::release(&shared.pool, &busy)).await {
            tracing::warn!(error = %e, "releasing leases failed; they run out by themselves");
        }
    }
    Ok((started, next_due))
}

type Job = (DeliveryRow, Option<EndpointRow>, DateTime<Utc>);

/// Claims up to `limit` claimable deliveries, with their endpoints (`None`:
/// deleted); also says when the next scheduled one falls due.
async fn claim(
    shared: &Shared,
    limit: usize,
    saturated: &[Uuid],
) -> sqlx::Result<(Vec<Job>, Option<DateTime<Utc>>)> {
    let now = time::now();
    let (ids, next_due) =
        db::deliveries::candidates(&shared.pool, now, limit as i64, saturated).await?;
    if ids.is_empty() {
        return Ok((vec![], next_due));
    }
    let lease_id = Uuid::now_v7();
    let claimed = async {
        let mut tx = shared.pool.begin().await?;
        let rows =
            db::deliveries::claim(&mut tx, &ids, now, lease_until(shared, now), lease_id).await?;
        tx.commit().await?;
        let mut endpoint_ids: Vec<Uuid> = rows.iter().map(|r| r.endpoint_id).collect();
        endpoint_ids.sort();
        endpoint_ids.dedup();
        let endpoints = db::webhook_endpoints::find_many(&shared.pool, &endpoint_ids).await?;
        Ok::<_, sqlx::Error>((rows, endpoints))
    }
    .await;
    let (rows, endpoints) = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            // The claim may have committed before its answer was lost: give
            // its leases back rather than hold those rows until they run out.
            let _ = with_retries(|| {
                db::deliveries::release_lease(&shared.pool, Leased::Rows(&ids), lease_id)
            })
            .await;
            return Err(e);
        }
    };
    let endpoints: HashMap<Uuid, EndpointRow> = endpoints.into_iter().map(|e| (e.id, e)).collect();
    let jobs = rows
        .into_iter()
        .map(|row| {
            let endpoint = endpoints.get(&row.endpoint_id).cloned();
            (row, endpoint, now)
        })
        .collect();
    Ok((jobs, next_due))
}

/// Endpoints that hold as many deliveries here as they may.
fn saturated(shared: &Shared) -> Vec<Uuid> {
    let lanes = shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
    lanes
        .iter()
        .filter(|(_, lane)| lane.held.available_permits() == 0)
        .map(|(id, _)| *id)
        .collect()
}

/// The safety net for releases, retention, and forgetting idle endpoints'
/// slots.
async fn sweep(shared: &Shared) {
    let keep =
        chrono::Duration::from_std(shared.config.retention).unwrap_or(chrono::Duration::days(30));
    for _ in 0..20 {
        match db::retention::purge(&shared.pool, time::now(), keep).await {
            Ok(purged) => {
                let full = purged.deliveries as i64 == db::retention::BATCH
                    || purged.idempotency_keys as i64 == db::retention::BATCH;
                if !full {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging old deliveries failed");
                break;
            }
        }
    }
    if let Ok(mut conn) = shared.pool.acquire().await {
        match db::deliveries::release_stranded(&mut conn, time::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "released deliveries left waiting"),
            Err(e) => tracing::warn!(error = %e, "sweeping waiting deliveries failed"),
        }
    }
    let idle = shared.config.max_in_flight_per_endpoint * HELD_PER_SLOT;
    shared
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, lane| lane.held.available_permits() < idle);
}

/// What an attempt (or the decision not to make one) leaves to write.
struct Outcome {
    settled: Settled,
    attempt: Option<AttemptRow>,
    endpoint_id: Uuid,
    order_id: Option<Uuid>,
    health: Health,
}

enum Health {
    Unchanged,
    Succeeded { was_failing: bool },
    Failed,
    Gone,
}

/// One attempt of one leased delivery.
async fn attempt(
    shared: &Shared,
    row: DeliveryRow,
    endpoint: Option<EndpointRow>,
    leased_at: DateTime<Utc>,
) -> Outcome {
    let manual = row.manual_requested_at.is_some();
    let endpoint = match endpoint {
        Some(endpoint) if endpoint.enabled || manual => endpoint,
        other => {
            let reason = if other.is_some() {
                "the endpoint is disabled"
            } else {
                "the endpoint was deleted"
            };
            return unattempted(row, leased_at, reason.into());
        }
    };
    let secrets = match live_secrets(&shared.secrets, &endpoint, time::now()) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(error = %e, endpoint_id = %endpoint.id, "cannot open the endpoint's signing secret");
            return unattempted(
                row,
                leased_at,
                format!("the endpoint's signing secret cannot be opened: {e}"),
            );
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
    for (name, value) in CustomHeaders::from_stored(endpoint.headers.as_deref()).iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in [
        ("webhook-id", id),
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
    let before = Before {
        status: status_name(&row.status),
        attempts: row.attempts,
        manual,
        next_attempt_at: row.next_attempt_at,
    };
    let Decision {
        status,
        attempts,
        next_attempt_at,
    } = outcome::decide(
        before,
        Response {
            status: result.response_status,
            retry_after: result.retry_after,
        },
        shared.config.retry_schedule.after(row.attempts + 1),
        now,
    );
    let health = if succeeded {
        Health::Succeeded {
            was_failing: endpoint.failing_since.is_some(),
        }
    } else if result.response_status == Some(410) {
        Health::Gone
    } else {
        Health::Failed
    };
    Outcome {
        settled: Settled {
            id: row.id,
            lease_id: row.lease_id.unwrap_or_default(),
            leased_at,
            status,
            attempts,
            last_response_status: result.response_status,
            last_error: result.error.clone(),
            next_attempt_at,
        },
        attempt: Some(AttemptRow {
            id: Uuid::now_v7(),
            delivery_id: row.id,
            attempt: attempts,
            started_at,
            duration_ms: u32::try_from(result.duration.as_millis()).unwrap_or(u32::MAX),
            response_status: result.response_status,
            response_body: result.response_body,
            error: result.error,
        }),
        endpoint_id: row.endpoint_id,
        order_id: row.order_id,
        health,
    }
}

fn status_name(status: &str) -> &'static str {
    match status {
        SUCCEEDED => SUCCEEDED,
        FAILED => FAILED,
        _ => PENDING,
    }
}

/// A delivery that cannot be attempted fails visibly, unattempted.
fn unattempted(row: DeliveryRow, leased_at: DateTime<Utc>, reason: String) -> Outcome {
    Outcome {
        settled: Settled {
            id: row.id,
            lease_id: row.lease_id.unwrap_or_default(),
            leased_at,
            status: FAILED,
            attempts: row.attempts,
            last_response_status: None,
            last_error: Some(reason),
            next_attempt_at: None,
        },
        attempt: None,
        endpoint_id: row.endpoint_id,
        order_id: row.order_id,
        health: Health::Unchanged,
    }
}

/// Writes outcomes as they come, each group in one transaction.
async fn settle_loop(
    shared: Arc<Shared>,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    mut finished: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            outcome = outcomes.recv() => match outcome {
                Some(outcome) => outcome,
                None => return,
            },
            _ = finished.changed() => {
                let mut rest = vec![];
                while let Ok(outcome) = outcomes.try_recv() {
                    rest.push(outcome);
                }
                for group in rest.chunks(SETTLE_GROUP) {
                    write_group(&shared, group).await;
                }
                return;
            }
        };
        let mut group = vec![first];
        while group.len() < SETTLE_GROUP {
            match outcomes.try_recv() {
                Ok(outcome) => group.push(outcome),
                Err(_) => break,
            }
        }
        write_group(&shared, &group).await;
    }
}

/// Writes a group, retrying while the database is away for as long as the
/// leases last (then the deliveries are attempted again: at least once).
async fn write_group(shared: &Shared, group: &[Outcome]) {
    let give_up = std::time::Instant::now() + shared.config.timeout + Duration::from_secs(30);
    let mut pause = Duration::from_millis(20);
    let released = loop {
        match write_outcomes(&shared.pool, group).await {
            Ok(released) => break released,
            Err(e) if std::time::Instant::now() < give_up => {
                // A deadlock with a concurrent fan-out is InnoDB's ordinary
                // answer to contention, and the retry settles it: not worth
                // a warning unless it keeps happening.
                if crate::error::is_retryable(&e) && pause < Duration::from_millis(200) {
                    tracing::info!(error = %e, count = group.len(), retry_in = ?pause, "recording attempts met a conflict; retrying");
                } else {
                    tracing::warn!(error = %e, count = group.len(), retry_in = ?pause, "recording attempts failed; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, count = group.len(), "recording attempts failed; their leases will run out and they will be attempted again");
                return;
            }
        }
    };
    let soon = time::now() + chrono::Duration::seconds(1);
    if released
        || group.iter().any(|o| {
            o.settled.status == PENDING && o.settled.next_attempt_at.is_some_and(|t| t <= soon)
        })
    {
        shared.wake.notify_one();
    }
    record_health(shared, group).await;
}

/// Attempts, new states and releases of one group, in one transaction;
/// true if a waiting delivery was released.
async fn write_outcomes(pool: &MySqlPool, group: &[Outcome]) -> sqlx::Result<bool> {
    let now = time::now();
    let attempts: Vec<AttemptRow> = group.iter().filter_map(|o| o.attempt.clone()).collect();
    let settled: Vec<Settled> = group.iter().map(|o| o.settled.clone()).collect();
    // The (endpoint, order) pairs where a delivery stopped being pending:
    // the next one of each may now go.
    let pairs: HashSet<(Uuid, Uuid)> = group
        .iter()
        .filter(|o| o.settled.status != PENDING)
        .filter_map(|o| o.order_id.map(|order| (o.endpoint_id, order)))
        .collect();
    let touched: HashSet<(Uuid, Uuid)> = group
        .iter()
        .filter_map(|o| o.order_id.map(|order| (o.endpoint_id, order)))
        .collect();
    let mut tx = pool.begin().await?;
    // Index records before rows, the order a fan-out takes them in: a
    // settle that wrote a row first, then read its order's deliveries,
    // deadlocked with a fan-out holding that order's index record.
    if !touched.is_empty() {
        let (endpoints, orders) = endpoints_and_orders(&touched);
        db::deliveries::order_slots(&mut *tx, &endpoints, &orders).await?;
    }
    db::deliveries::insert_attempts(&mut *tx, &attempts).await?;
    db::deliveries::settle(&mut *tx, &settled, now).await?;
    let mut release = vec![];
    if !pairs.is_empty() {
        // As they are now (the rows are this transaction's already).
        let (endpoints, orders) = endpoints_and_orders(&pairs);
        let slots = db::deliveries::order_slots(&mut *tx, &endpoints, &orders).await?;
        // Only the lowest pending delivery of a pair may go, and only if it
        // is the one waiting: a later one never overtakes an earlier one.
        let mut lowest: HashMap<(Uuid, Uuid), &db::deliveries::OrderSlot> = HashMap::new();
        for slot in slots
            .iter()
            .filter(|s| s.status == PENDING && pairs.contains(&(s.endpoint_id, s.order_id)))
        {
            let entry = lowest
                .entry((slot.endpoint_id, slot.order_id))
                .or_insert(slot);
            if slot.sequence < entry.sequence {
                *entry = slot;
            }
        }
        release = lowest
            .values()
            .filter(|s| s.waiting)
            .map(|s| s.id)
            .collect();
        db::deliveries::release_waiting(&mut *tx, &release, now).await?;
    }
    tx.commit().await?;
    Ok(!release.is_empty())
}

/// The endpoints and the orders of these pairs, sorted, once each.
fn endpoints_and_orders(pairs: &HashSet<(Uuid, Uuid)>) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut endpoints: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    let mut orders: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
    endpoints.sort();
    endpoints.dedup();
    orders.sort();
    orders.dedup();
    (endpoints, orders)
}

/// The endpoints' health, apart from the group's transaction.
async fn record_health(shared: &Shared, group: &[Outcome]) {
    let now = time::now();
    let disable_after = chrono::Duration::from_std(shared.config.disable_after)
        .unwrap_or(chrono::Duration::days(5));
    let mut seen: HashMap<Uuid, &Health> = HashMap::new();
    for outcome in group {
        let entry = seen.entry(outcome.endpoint_id).or_insert(&outcome.health);
        // Gone beats failed beats succeeded beats nothing.
        let rank = |h: &Health| match h {
            Health::Unchanged => 0,
            Health::Succeeded { .. } => 1,
            Health::Failed => 2,
            Health::Gone => 3,
        };
        if rank(&outcome.health) > rank(entry) {
            *entry = &outcome.health;
        }
    }
    for (endpoint_id, health) in seen {
        let result = with_retries(|| async {
            match health {
                Health::Unchanged | Health::Succeeded { was_failing: false } => Ok(()),
                Health::Succeeded { was_failing: true } => {
                    db::webhook_endpoints::mark_succeeding(&shared.pool, endpoint_id).await
                }
                Health::Gone => {
                    db::webhook_endpoints::disable(
                        &shared.pool,
                        endpoint_id,
                        "the endpoint answered 410 Gone",
                        now,
                    )
                    .await
                }
                Health::Failed => {
                    let mut conn = shared.pool.acquire().await?;
                    db::webhook_endpoints::mark_failing(&mut conn, endpoint_id, now, disable_after)
                        .await
                }
            }
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, %endpoint_id, "recording the endpoint's health failed");
        }
    }
}

/// Gives every committed event its deliveries, even if its SQS message was
/// lost or dead-lettered: events older than `reconcile_after` are walked in
/// feed order behind a mark, and any (event, subscribed endpoint) without a
/// delivery is fanned out again.
async fn reconcile(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(shared.config.reconcile_every) => {}
        }
        loop {
            match reconcile_once(&shared).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling deliveries failed");
                    break;
                }
            }
        }
    }
}

/// One window; true if more may follow at once.
async fn reconcile_once(shared: &Arc<Shared>) -> sqlx::Result<bool> {
    const WINDOW: i64 = 500;
    let (mark, published) = db::feed_clock::reconcile_marks(&shared.pool).await?;
    if published <= mark {
        return Ok(false);
    }
    let old_enough =
        time::now() - chrono::Duration::from_std(shared.config.reconcile_after).unwrap_or_default();
    let window = db::order_events::settled_window(&shared.pool, mark, published, WINDOW).await?;
    let full = window.len() as i64 == WINDOW;
    let window: Vec<_> = window
        .into_iter()
        .take_while(|(_, _, _, _, created_at)| *created_at < old_enough)
        .collect();
    let Some(&(last, ..)) = window.last() else {
        return Ok(false);
    };
    let mut customers: Vec<Uuid> = window.iter().map(|w| w.2).collect();
    customers.sort();
    customers.dedup();
    let endpoints = db::webhook_endpoints::enabled_for(&shared.pool, &customers).await?;
    let ids: Vec<Uuid> = window.iter().map(|w| w.1).collect();
    let have: HashSet<(Uuid, Uuid)> = db::deliveries::pairs_for_events(&shared.pool, &ids)
        .await?
        .into_iter()
        .collect();
    let missing: Vec<Uuid> = window
        .iter()
        .filter(|(_, id, customer, kind, created_at)| {
            let Some(kind) = crate::domain::EventType::parse(kind) else {
                return false;
            };
            endpoints.iter().any(|e| {
                e.customer_id == *customer
                    && crate::domain::webhook::EventFilter(e.event_mask).includes(kind)
                    && e.created_at <= *created_at
                    && !have.contains(&(*id, e.id))
            })
        })
        .map(|w| w.1)
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            count = missing.len(),
            "events without their deliveries (message lost or dead-lettered); fanning out again"
        );
        shared.metrics.reconciled(missing.len());
        for chunk in missing.chunks(50) {
            let out = with_retries(|| ingest_batch(shared, chunk, Uuid::now_v7())).await?;
            for leased in out.leased {
                spawn_attempt(shared, leased);
            }
            shared.wake.notify_one();
        }
    }
    db::feed_clock::mark_reconciled(&shared.pool, mark, last).await?;
    Ok(full)
}

/// No connection to the database could be had or kept: nothing was done.
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// Runs a database step again after a deadlock or lock wait timeout.
async fn with_retries<F, Fut, T>(mut step: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<T>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spaces_attempts_and_reserves_only_turns_that_come_in_time() {
        let pace = Pace::default();
        let start = tokio::time::Instant::now();
        let latest = start + Duration::from_millis(2500);
        let turns: Vec<_> = (0..3).map(|_| pace.reserve(1, latest).unwrap()).collect();
        let interval = Duration::from_millis(1005);
        assert_eq!(turns[1] - turns[0], interval);
        assert_eq!(turns[2] - turns[1], interval);
        // Too late for this delivery: nothing reserved, so the next one
        // still gets the turn right after the last.
        assert_eq!(pace.reserve(1, latest), None);
        assert_eq!(pace.reserve(1, latest), None);
        let later = pace.reserve(1, start + Duration::from_secs(60)).unwrap();
        assert_eq!(later - turns[2], interval);
        // 2 % more than 1/limit, at most 5 ms more (1 s + 5 ms above).
        let fast = Pace::default();
        let a = fast.reserve(100, latest).unwrap();
        let b = fast.reserve(100, latest).unwrap();
        assert_eq!(b - a, Duration::from_micros(10_200));
    }
}
