//! Bearer tokens: the operator's, customer API keys and customer portal
//! sessions (both stored only as a SHA-256). `Principal` is the extractor
//! every protected handler takes; a portal session is refused here on any
//! route outside its reach (`domain::portal::access`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::batch::Batcher;
use crate::db;
use crate::domain::portal::{self, Access, Capabilities};
use crate::domain::time;
use crate::error::ApiError;
pub use crate::tokens::{generate_token, hash_token, ADMIN_PREFIX, API_KEY_PREFIX, PORTAL_PREFIX};

/// How much of a key is kept in clear to tell keys apart: `mk_` + 8 chars.
pub const DISPLAY_PREFIX_LEN: usize = 11;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Customer(Uuid),
    /// A customer portal session: the customer's webhooks, within its capabilities.
    Portal {
        customer: Uuid,
        capabilities: Capabilities,
    },
}

impl Principal {
    /// The customer this caller acts for: itself, or whom the operator names.
    /// `None` for an operator that named nobody.
    pub fn scope(self, requested: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
        match (self.customer(), requested) {
            (None, requested) => Ok(requested),
            (Some(own), None) => Ok(Some(own)),
            (Some(own), Some(other)) if other == own => Ok(Some(own)),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "customer_id",
                "only the operator may name a customer",
            )),
        }
    }

    /// May this caller see a resource owned by `customer_id`?
    pub fn can_see(self, customer_id: Uuid) -> bool {
        self.customer().is_none_or(|own| own == customer_id)
    }

    /// The customer this caller is; `None` for the operator.
    pub fn customer(self) -> Option<Uuid> {
        match self {
            Principal::Operator => None,
            Principal::Customer(id) | Principal::Portal { customer: id, .. } => Some(id),
        }
    }

    /// The key under which this caller's idempotency keys are kept.
    pub fn owner_id(self) -> Uuid {
        self.customer().unwrap_or(Uuid::nil())
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if token_in_query(parts.uri.query()) {
            return Err(ApiError::BadRequest(
                "send the token in the `Authorization` header, never in a URL (URLs are logged)"
                    .into(),
            ));
        }
        let token = bearer_token(parts).ok_or(ApiError::Unauthorized)?;
        let hash = hash_token(token);
        if bool::from(hash.ct_eq(&state.admin_token_hash)) {
            return Ok(Principal::Operator);
        }
        if token.len() > 128 {
            return Err(ApiError::Unauthorized);
        }
        // Looked up by its hash, so timing reveals nothing about the token.
        let principal = if token.starts_with(API_KEY_PREFIX) {
            let customer_id =
                (state.api_keys.customer(hash).await?).ok_or(ApiError::Unauthorized)?;
            Principal::Customer(customer_id)
        } else if token.starts_with(PORTAL_PREFIX) {
            let (customer, capabilities, expires_at) =
                db::portal_sessions::find_live(&state.db, &hash, time::now())
                    .await?
                    .ok_or(ApiError::Unauthorized)?;
            let capabilities = Capabilities(capabilities);
            if let Some(slot) = parts.extensions.get::<PortalSlot>() {
                slot.fill(capabilities, expires_at);
            }
            portal_reach(parts, capabilities)?;
            Principal::Portal {
                customer,
                capabilities,
            }
        } else {
            return Err(ApiError::Unauthorized);
        };
        // Limited per token, after the lookup, so unknown tokens make no buckets.
        state
            .rate_limiter
            .check(&hash)
            .map_err(|wait| ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })?;
        Ok(principal)
    }
}

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
        let grouped = Batcher::start(MAX_KEY_LOOKUPS, move |hashes| {
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
        let customer =
            (self.grouped.call(hash).await).unwrap_or_else(|| Err(sqlx::Error::PoolClosed))?;
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

/// Refuses (403) a portal session on a route outside its reach or its
/// capabilities.
fn portal_reach(parts: &Parts, capabilities: Capabilities) -> Result<(), ApiError> {
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or_default();
    match portal::access(parts.method.as_str(), route) {
        Access::Read => Ok(()),
        Access::Needs(capability) if capabilities.has(capability) => Ok(()),
        Access::Needs(capability) => Err(ApiError::Forbidden(format!(
            "this portal session does not have the `{}` capability",
            capability.as_str()
        ))),
        Access::Outside => Err(ApiError::Forbidden(
            "a portal session may call only /v1/webhooks and /v1/event-types".into(),
        )),
    }
}

/// A token sent in the query string would be logged by every proxy on the
/// way: refused, even beside a good `Authorization` header.
pub fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            ["token", "access_token", "api_key"].contains(&name.to_ascii_lowercase().as_str())
        })
    })
}

/// Where the extractor leaves a portal session's capabilities and expiry,
/// so that `portal_headers` can tell the portal page what it may offer.
#[derive(Clone, Default)]
pub struct PortalSlot(std::sync::Arc<std::sync::Mutex<Option<PortalGrant>>>);

/// What a portal session may do, and until when.
type PortalGrant = (Capabilities, DateTime<Utc>);

impl PortalSlot {
    fn fill(&self, capabilities: Capabilities, expires_at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((capabilities, expires_at));
    }
}

/// Middleware: answers to a portal session carry `Portal-Capabilities`
/// and `Portal-Expires-At`.
pub async fn portal_headers(mut request: Request, next: Next) -> Response {
    let portal = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|token| token.starts_with(PORTAL_PREFIX));
    if !portal {
        return next.run(request).await;
    }
    let slot = PortalSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    let filled = *slot.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((capabilities, expires_at)) = filled {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&capabilities.names().join(", ")) {
            headers.insert(PORTAL_CAPABILITIES, value);
        }
        if let Ok(value) =
            HeaderValue::from_str(&expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        {
            headers.insert(PORTAL_EXPIRES_AT, value);
        }
    }
    response
}

const PORTAL_CAPABILITIES: HeaderName = HeaderName::from_static("portal-capabilities");
const PORTAL_EXPIRES_AT: HeaderName = HeaderName::from_static("portal-expires-at");

fn bearer_token(parts: &Parts) -> Option<&str> {
    bearer(parts.headers.get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Extracts the operator; anyone else is refused with 403.
pub struct Operator;

impl Operator {
    /// The key under which the operator's idempotency keys are kept.
    pub fn owner_id(&self) -> Uuid {
        Principal::Operator.owner_id()
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Operator => Ok(Operator),
            Principal::Customer(_) | Principal::Portal { .. } => Err(ApiError::Forbidden(
                "this route is for the operator only".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_cannot_act_for_others() {
        let own = Uuid::now_v7();
        let other = Uuid::now_v7();
        let customer = Principal::Customer(own);
        assert_eq!(customer.scope(None).unwrap(), Some(own));
        assert_eq!(customer.scope(Some(own)).unwrap(), Some(own));
        assert!(customer.scope(Some(other)).is_err());
        assert_eq!(Principal::Operator.scope(Some(other)).unwrap(), Some(other));
        assert!(!customer.can_see(other));
        assert!(Principal::Operator.can_see(other));
    }
}
