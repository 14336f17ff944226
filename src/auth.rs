//! Bearer tokens: the operator's, and customer API keys (stored only as a
//! SHA-256). `Principal` is the extractor every protected handler takes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::db;
use crate::error::ApiError;
pub use crate::tokens::{generate_token, hash_token, ADMIN_PREFIX, API_KEY_PREFIX};

/// How much of a key is kept in clear to tell keys apart: `mk_` + 8 chars.
pub const DISPLAY_PREFIX_LEN: usize = 11;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Customer(Uuid),
}

impl Principal {
    /// The customer this caller acts for: itself, or whom the operator names.
    /// `None` for an operator that named nobody.
    pub fn scope(self, requested: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
        match (self, requested) {
            (Principal::Operator, requested) => Ok(requested),
            (Principal::Customer(own), None) => Ok(Some(own)),
            (Principal::Customer(own), Some(other)) if other == own => Ok(Some(own)),
            (Principal::Customer(_), Some(_)) => Err(ApiError::invalid(
                "customer_id",
                "only the operator may name a customer",
            )),
        }
    }

    /// May this caller see a resource owned by `customer_id`?
    pub fn can_see(self, customer_id: Uuid) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Customer(own) => own == customer_id,
        }
    }

    /// The key under which this caller's idempotency keys are kept.
    pub fn owner_id(self) -> Uuid {
        match self {
            Principal::Operator => Uuid::nil(),
            Principal::Customer(id) => id,
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts).ok_or(ApiError::Unauthorized)?;
        let hash = hash_token(token);
        if bool::from(hash.ct_eq(&state.admin_token_hash)) {
            return Ok(Principal::Operator);
        }
        if !token.starts_with(API_KEY_PREFIX) || token.len() > 128 {
            return Err(ApiError::Unauthorized);
        }
        // Looked up by its hash, so timing reveals nothing about the token.
        let customer_id = db::api_keys::customer_for_hash(&state.db, &hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        // Limited per key, after the lookup, so unknown tokens make no buckets.
        state
            .rate_limiter
            .check(&hash)
            .map_err(|wait| ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })?;
        Ok(Principal::Customer(customer_id))
    }
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
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
            Principal::Customer(_) => Err(ApiError::Forbidden(
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
