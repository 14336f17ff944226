//! Bearer tokens: the operator's, customer API keys and customer portal
//! sessions (both stored only as a SHA-256). `Principal` is the extractor
//! every protected handler takes; a portal session is refused here on any
//! route outside its reach (`domain::portal::access`).

use axum::extract::Request;
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::db;
use crate::domain::portal::{self, Access, Capabilities};
use crate::domain::time;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;
pub use crate::tokens::{generate_token, hash_token, ADMIN_PREFIX, API_KEY_PREFIX, PORTAL_PREFIX};

/// How much of a key is kept in clear to tell keys apart: `mk_` + 8 chars.
pub const DISPLAY_PREFIX_LEN: usize = 11;

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
