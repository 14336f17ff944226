//! API-key lookups, grouped and briefly remembered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::db;

/// API-key lookups. A key found is trusted for `KEY_MEMORY` from the moment
/// its lookup began, so a busy client's requests do not each wait for the
/// database; revoking a key waits that long before it answers
/// (`http::api_keys::revoke`), so once the operator has the 204 no instance
/// takes the key. Keys not yet known are looked up in groups (`batch`): while
/// one query is in the database, the keys of the requests arriving meanwhile
/// wait to share the next. Unknown keys are never remembered.
#[derive(Clone)]
pub struct KeyLookups {
    grouped: Batcher<[u8; 32], sqlx::Result<Option<Uuid>>>,
    found: Arc<Mutex<HashMap<[u8; 32], Found>>>,
}

#[derive(Clone, Copy)]
struct Found {
    customer: Uuid,
    asked: Instant,
}

/// How long a key found is trusted without asking the database again.
pub const KEY_MEMORY: Duration = Duration::from_millis(500);

/// Keys remembered at most (a few hundred bytes of memory each at most).
const MAX_KEYS_REMEMBERED: usize = 10_000;

/// Keys looked up per query at most.
const MAX_KEY_LOOKUPS: usize = 64;

impl KeyLookups {
    pub fn start(db: MySqlPool) -> KeyLookups {
        let grouped = Batcher::start(MAX_KEY_LOOKUPS, move |hashes, _| {
            let db = db.clone();
            async move { look_up_keys(&db, hashes).await }
        });
        KeyLookups {
            grouped,
            found: Arc::default(),
        }
    }

    /// The customer whose key has this hash, if any.
    pub async fn customer(&self, hash: [u8; 32]) -> sqlx::Result<Option<Uuid>> {
        let asked = Instant::now();
        if let Some(found) = self.remembered(&hash, asked) {
            return Ok(Some(found));
        }
        // Not looked up (overload, shutdown): a 503 the client may retry.
        let customer = (self.grouped.call(hash).await).unwrap_or(Err(sqlx::Error::PoolTimedOut))?;
        if let Some(customer) = customer {
            self.remember(hash, Found { customer, asked });
        }
        Ok(customer)
    }

    fn remembered(&self, hash: &[u8; 32], now: Instant) -> Option<Uuid> {
        let found = self.lock().get(hash).copied()?;
        (now.duration_since(found.asked) < KEY_MEMORY).then_some(found.customer)
    }

    fn remember(&self, hash: [u8; 32], found: Found) {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS_REMEMBERED {
            keys.retain(|_, kept| kept.asked.elapsed() < KEY_MEMORY);
        }
        if keys.len() < MAX_KEYS_REMEMBERED {
            keys.insert(hash, found);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Found>> {
        // Nothing panics while holding it; a poisoned map is still a map.
        self.found
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One query for the group; if it fails, one each, so that each request
/// gets its own error.
async fn look_up_keys(db: &MySqlPool, hashes: Vec<[u8; 32]>) -> Vec<sqlx::Result<Option<Uuid>>> {
    if hashes.len() > 1 {
        if let Ok(found) = db::api_keys::customers_for_hashes(db, &hashes).await {
            let customer = |hash: &[u8; 32]| {
                let found = found.iter().find(|(h, _)| h[..] == hash[..]);
                Ok(found.map(|(_, customer)| *customer))
            };
            return hashes.iter().map(customer).collect();
        }
    }
    let mut customers = Vec::with_capacity(hashes.len());
    for hash in &hashes {
        customers.push(db::api_keys::customer_for_hash(db, hash).await);
    }
    customers
}
