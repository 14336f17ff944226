//! What every stage of the delivery core shares: the pool, the HTTP client,
//! the slots that bound the work in memory, the channel to the settle task,
//! and the small database helpers every stage uses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio::sync::{mpsc, Notify, Semaphore};
use uuid::Uuid;

use super::client::WebhookClient;
use super::metrics::WorkerMetrics;
use super::outcome::Outcome;
use super::pace::Lane;
use super::refusals::Refusals;
use crate::config::DeliveryConfig;
use crate::db;
use crate::ops_notify::Notifier;
use crate::secrets::SecretBox;

/// Leased deliveries a worker (and an endpoint) may hold in memory per
/// attempt slot: enough to keep the slots busy between batches, few enough
/// that a slow endpoint's backlog stays in the database.
pub(super) const HELD_PER_SLOT: usize = 4;

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

pub(super) struct Shared {
    pub(super) pool: MySqlPool,
    pub(super) client: WebhookClient,
    pub(super) secrets: SecretBox,
    pub(super) config: DeliveryConfig,
    /// Wakes the dispatcher: something may be claimable.
    pub(super) wake: Notify,
    pub(super) metrics: WorkerMetrics,
    /// Attempts in flight, all endpoints.
    pub(super) in_flight: Arc<Semaphore>,
    /// Leased deliveries held in memory (waiting for a slot or in flight).
    pub(super) held: Arc<Semaphore>,
    pub(super) lanes: Mutex<HashMap<Uuid, Lane>>,
    pub(super) settles: mpsc::UnboundedSender<Outcome>,
    /// A receiver found the database away: every receiver pauses.
    pub(super) database_down: AtomicBool,
    /// The database refused fan-outs, answering: receivers pause a while.
    pub(super) refusals: Refusals,
    /// The dispatcher's last pass left deliveries for lack of room: the
    /// next place freed wakes it (`room_freed`) rather than its idle poll.
    pub(super) short_of_room: AtomicBool,
    /// Told when an endpoint is disabled.
    pub(super) notifier: Notifier,
}

/// What every loop shares, and where attempts' outcomes arrive.
pub(super) fn build(
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
    let notifier =
        Notifier::start(&config.ops_notify, pool.clone()).map_err(WorkerStartError::Config)?;
    let (settles, settled) = mpsc::unbounded_channel();
    let shared = Shared {
        notifier,
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
        refusals: Refusals::default(),
        config,
    };
    Ok((Arc::new(shared), settled))
}

pub(super) fn lease_until(shared: &Shared, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(shared.config.timeout + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::minutes(5))
}

/// Runs a database step again after a deadlock or lock wait timeout.
pub(super) async fn with_retries<F, Fut, T>(mut step: F) -> sqlx::Result<T>
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
