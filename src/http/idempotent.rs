//! `Idempotency-Key` on POST routes (SPEC §6, §10). The key is claimed in
//! the transaction that does the work and the response is stored in that
//! same transaction (see `db::idempotency`), so a request that fails leaves
//! no claim, and a replay returns the first response having done nothing.
//!
//! Routes whose answer holds a secret (an API key, a portal token, a
//! signing secret) use the `sealed` pair: the key is stored only as a hash
//! and the answer encrypted with a key derived from the `Idempotency-Key`
//! itself, so the database holds neither the secret nor what opens it; the
//! client's replay, carrying the key, opens it.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::db;
use crate::db::idempotency::Claim;
use crate::domain::time;
use crate::error::{ApiError, ApiResult};

const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What makes two requests "the same": the route, the ids in its path and
/// the parsed body, as parts hashed together.
pub fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Claims `key` (if the request sent one) in `tx`: `None` means do the
/// work and `complete` it in `tx`; `Some` is the answer to give now.
pub async fn claim(
    tx: &mut MySqlConnection,
    owner: Uuid,
    key: Option<&str>,
    request: [u8; 32],
) -> ApiResult<Option<Response>> {
    let Some(key) = key else {
        return Ok(None);
    };
    match db::idempotency::claim(tx, owner, key, &request, time::now()).await? {
        Claim::Claimed => Ok(None),
        Claim::Replay { status, body } => Ok(Some(replay(status, body))),
        Claim::Mismatch => Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was already used with a different request",
        )),
        Claim::Busy => Err(ApiError::Unavailable("the database is busy; retry shortly")),
    }
}

/// Stores the response for replays; run it in the work's transaction.
pub async fn complete(
    tx: &mut MySqlConnection,
    owner: Uuid,
    key: Option<&str>,
    status: StatusCode,
    body: &impl serde::Serialize,
) -> ApiResult<()> {
    if let Some(key) = key {
        let body =
            serde_json::to_string(body).map_err(|e| ApiError::internal("response JSON", e))?;
        db::idempotency::complete(tx, owner, key, status.as_u16(), &body).await?;
    }
    Ok(())
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (
        status,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
        ],
        body,
    )
        .into_response()
}

/// An `Idempotency-Key` for a route whose answer holds a secret: the name it
/// is stored under (a hash) and the cipher its answer is sealed with, both
/// derived from the key, separately.
struct Sealed {
    stored_key: String,
    cipher: Aes256Gcm,
}

impl Sealed {
    fn new(key: &str) -> Sealed {
        let derive = |purpose: &[u8]| -> [u8; 32] {
            let mut hasher = Sha256::new();
            hasher.update(purpose);
            hasher.update(key.as_bytes());
            hasher.finalize().into()
        };
        let lookup = derive(b"mechanica idempotency lookup v1\0");
        let stored_key = lookup
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Sealed {
            stored_key: format!("sha256:{stored_key}"),
            cipher: Aes256Gcm::new(&derive(b"mechanica idempotency seal v1\0").into()),
        }
    }

    fn seal(&self, body: &str) -> String {
        let nonce = crate::tokens::random_bytes::<12>();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), body.as_bytes())
            .expect("AES-GCM encrypts any length we store");
        STANDARD.encode([nonce.as_slice(), &sealed].concat())
    }

    fn open(&self, stored: &str) -> Option<String> {
        let bytes = STANDARD.decode(stored).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(12)?;
        let body = self.cipher.decrypt(Nonce::from_slice(nonce), sealed).ok()?;
        String::from_utf8(body).ok()
    }
}

/// `claim` for a route whose answer holds a secret (see the module's note).
pub async fn claim_sealed(
    tx: &mut MySqlConnection,
    owner: Uuid,
    key: Option<&str>,
    request: [u8; 32],
) -> ApiResult<Option<Response>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let sealed = Sealed::new(key);
    match claim(tx, owner, Some(&sealed.stored_key), request).await? {
        Some(response) => {
            let (parts, body) = response.into_parts();
            let stored = axum::body::to_bytes(body, usize::MAX)
                .await
                .map_err(|e| ApiError::internal("a stored response", e))?;
            let opened = sealed
                .open(&String::from_utf8_lossy(&stored))
                .ok_or_else(|| ApiError::internal("a sealed response", "does not open"))?;
            Ok(Some(Response::from_parts(parts, opened.into())))
        }
        None => Ok(None),
    }
}

/// `complete` for a route whose answer holds a secret.
pub async fn complete_sealed(
    tx: &mut MySqlConnection,
    owner: Uuid,
    key: Option<&str>,
    status: StatusCode,
    body: &impl serde::Serialize,
) -> ApiResult<()> {
    let Some(key) = key else {
        return Ok(());
    };
    let sealed = Sealed::new(key);
    let body = serde_json::to_string(body).map_err(|e| ApiError::internal("response JSON", e))?;
    db::idempotency::complete(
        tx,
        owner,
        &sealed.stored_key,
        status.as_u16(),
        &sealed.seal(&body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_answer_opens_only_with_its_key() {
        let sealed = Sealed::new("order-42");
        let stored = sealed.seal(r#"{"token":"mps_secret"}"#);
        assert!(!stored.contains("mps_secret"));
        assert!(!sealed.stored_key.contains("order-42"));
        assert_eq!(sealed.open(&stored).unwrap(), r#"{"token":"mps_secret"}"#);
        assert_eq!(Sealed::new("order-43").open(&stored), None);
        assert_eq!(Sealed::new("order-42").stored_key, sealed.stored_key);
        assert_ne!(Sealed::new("order-43").stored_key, sealed.stored_key);
    }
}
