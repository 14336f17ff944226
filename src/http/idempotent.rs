//! `Idempotency-Key` on POST routes (SPEC §6, §10). The key is claimed in
//! the transaction that does the work and the response is stored in that
//! same transaction (see `db::idempotency`), so a request that fails leaves
//! no claim, and a replay returns the first response having done nothing.
//!
//! Routes whose answer holds a secret (an API key, a portal token, a
//! signing secret) use the `sealed` pair. With `SECRETS_ENCRYPTION_KEY` set,
//! the `Idempotency-Key` is stored only as an HMAC of it, and the answer
//! encrypted under another HMAC of it, both keyed by a key derived from
//! `SECRETS_ENCRYPTION_KEY`, which is kept outside the database: a copy of
//! the database, with every `Idempotency-Key` ever used, opens nothing
//! (clients derive keys from business ids, so keys are no secret). Without
//! it, the answer is not kept: a replay is refused with 409
//! `replay-withheld`, naming what the first request made, and nothing is
//! done twice.

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
/// is stored under and the cipher its answer is sealed with (none: the
/// answer is withheld), both derived from the key, separately.
struct Sealed {
    stored_key: String,
    cipher: Option<Aes256Gcm>,
}

/// What is stored in place of an answer that is withheld.
const WITHHELD: &str = "withheld:";

impl Sealed {
    fn new(key: &str, replay_key: Option<&[u8; 32]>) -> Sealed {
        let hex = |bytes: [u8; 32]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match replay_key {
            Some(server) => {
                let derive = |purpose: &[u8]| {
                    crate::tokens::hmac_sha256(server, &[purpose, key.as_bytes()].concat())
                };
                Sealed {
                    stored_key: format!(
                        "hmac:{}",
                        hex(derive(b"mechanica idempotency lookup v2\0"))
                    ),
                    cipher: Some(Aes256Gcm::new(
                        &derive(b"mechanica idempotency seal v2\0").into(),
                    )),
                }
            }
            None => Sealed {
                stored_key: format!("sha256:{}", hex(request_hash(&[b"lookup", key.as_bytes()]))),
                cipher: None,
            },
        }
    }

    fn seal(&self, body: &str) -> String {
        let Some(cipher) = &self.cipher else {
            // Only the id of what was made, for the refusal to name it.
            let id = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(String::from))
                .unwrap_or_default();
            return format!("{WITHHELD}{id}");
        };
        let nonce = crate::tokens::random_bytes::<12>();
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), body.as_bytes())
            .expect("AES-GCM encrypts any length we store");
        STANDARD.encode([nonce.as_slice(), &sealed].concat())
    }

    /// The answer, or `Err` with the id of what the first request made
    /// when it was withheld (or cannot be opened any more: the key changed).
    fn open(&self, stored: &str) -> Result<String, String> {
        if let Some(id) = stored.strip_prefix(WITHHELD) {
            return Err(id.to_string());
        }
        let cipher = self.cipher.as_ref().ok_or_else(String::new)?;
        let bytes = STANDARD.decode(stored).map_err(|_| String::new())?;
        let (nonce, sealed) = bytes.split_at_checked(12).ok_or_else(String::new)?;
        let body = cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| String::new())?;
        String::from_utf8(body).map_err(|_| String::new())
    }
}

fn withheld(id: &str) -> ApiError {
    let made = if id.is_empty() {
        String::new()
    } else {
        format!(" (it made {id})")
    };
    ApiError::conflict(
        "replay-withheld",
        format!(
            "the first request with this Idempotency-Key succeeded{made}, but its answer holds a \
             secret this server does not keep for replays (SECRETS_ENCRYPTION_KEY is not set): \
             read the resource instead; a token cannot be shown again, so revoke it and make \
             another"
        ),
    )
}

/// `claim` for a route whose answer holds a secret (see the module's note).
pub async fn claim_sealed(
    tx: &mut MySqlConnection,
    owner: Uuid,
    key: Option<&str>,
    request: [u8; 32],
    replay_key: Option<&[u8; 32]>,
) -> ApiResult<Option<Response>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let sealed = Sealed::new(key, replay_key);
    match claim(tx, owner, Some(&sealed.stored_key), request).await? {
        Some(response) => {
            let (parts, body) = response.into_parts();
            let stored = axum::body::to_bytes(body, usize::MAX)
                .await
                .map_err(|e| ApiError::internal("a stored response", e))?;
            let opened = sealed
                .open(&String::from_utf8_lossy(&stored))
                .map_err(|id| withheld(&id))?;
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
    replay_key: Option<&[u8; 32]>,
) -> ApiResult<()> {
    let Some(key) = key else {
        return Ok(());
    };
    let sealed = Sealed::new(key, replay_key);
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
    fn a_sealed_answer_opens_only_with_its_key_and_the_servers() {
        let server = [7u8; 32];
        let sealed = Sealed::new("order-42", Some(&server));
        let stored = sealed.seal(r#"{"token":"mps_secret"}"#);
        assert!(!stored.contains("mps_secret"));
        assert!(!sealed.stored_key.contains("order-42"));
        assert_eq!(sealed.open(&stored).unwrap(), r#"{"token":"mps_secret"}"#);
        assert!(Sealed::new("order-43", Some(&server))
            .open(&stored)
            .is_err());
        // A copy of the database, and the client's key, without the server's.
        let other = [8u8; 32];
        assert!(Sealed::new("order-42", Some(&other)).open(&stored).is_err());
        assert!(Sealed::new("order-42", None).open(&stored).is_err());
        assert_ne!(
            Sealed::new("order-42", Some(&other)).stored_key,
            sealed.stored_key
        );
        assert_ne!(Sealed::new("order-42", None).stored_key, sealed.stored_key);
        let same = Sealed::new("order-42", Some(&server)).stored_key;
        assert_eq!(same, sealed.stored_key);
        assert_ne!(
            Sealed::new("order-43", Some(&server)).stored_key,
            sealed.stored_key
        );
    }

    #[test]
    fn without_the_servers_key_an_answer_is_withheld_keeping_only_its_id() {
        let sealed = Sealed::new("order-42", None);
        let stored = sealed.seal(r#"{"id":"01a2","token":"mk_secret"}"#);
        assert_eq!(stored, "withheld:01a2");
        assert_eq!(sealed.open(&stored), Err("01a2".to_string()));
    }
}
