//! `AppState`: what every handler shares. Below `http/` and `auth`, which
//! take it; built by `app`.

use std::sync::Arc;

use sqlx::MySqlPool;

use crate::key_lookups::KeyLookups;
use crate::metrics::Metrics;
use crate::order_writer::OrderWriter;
use crate::rate_limit::RateLimiter;
use crate::secrets::SecretBox;
use crate::signals::Signals;

/// Cheap to clone, as every extractor and middleware does per request:
/// one shared allocation, not a copy of each handle in it.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(shared: SharedState) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

pub struct SharedState {
    pub db: MySqlPool,
    /// Sessions that read committed data: the feed's read-your-writes
    /// numbering pass (see `sequencer`).
    pub pipeline_db: MySqlPool,
    pub admin_token_hash: [u8; 32],
    pub metrics_token_hash: Option<[u8; 32]>,
    pub metrics: Arc<Metrics>,
    pub signals: Arc<Signals>,
    /// Signs feed cursors; the same in every instance (kept in the database).
    pub cursor_key: Arc<[u8]>,
    pub secrets: Arc<SecretBox>,
    pub allow_private_networks: bool,
    pub rate_limiter: Arc<RateLimiter>,
    /// Writes new orders and status changes, several to a transaction.
    pub orders: OrderWriter,
    /// Looks up API keys, several to a query, and remembers them briefly.
    pub api_keys: KeyLookups,
    /// The base of links handed out (`PUBLIC_URL`).
    pub public_base: Arc<str>,
    /// Origins that may frame the portal (`PORTAL_FRAME_ANCESTORS`).
    pub portal_frame_ancestors: Arc<[String]>,
}
