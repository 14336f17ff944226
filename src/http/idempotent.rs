//! `Idempotency-Key` on POST routes (SPEC §6, §10). The key is claimed in
//! the transaction that does the work and the response is stored in that
//! same transaction (see `db::idempotency`), so a request that fails leaves
//! no claim, and a replay returns the first response having done nothing.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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
