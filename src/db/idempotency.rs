//! SQL for `idempotency_keys`: a key is claimed in its own short transaction
//! before the work starts, and completed in the work's transaction, so a
//! concurrent request with the same key sees it as running (409) and a later
//! one sees the stored response.

use chrono::{DateTime, Duration, Utc};
use sqlx::{MySqlExecutor, MySqlPool};
use uuid::Uuid;

use crate::error::is_duplicate_key;

/// How long a response is replayed.
pub const RETENTION: Duration = Duration::hours(24);
/// A claim older than this whose request never finished (its process died)
/// may be taken over.
pub const ABANDONED_AFTER: Duration = Duration::minutes(2);

pub enum Claim {
    /// The key is ours: do the work, then `complete` it.
    Claimed,
    /// The same key and body finished before: answer this again.
    Replay { status: u16, body: String },
    /// The same key is still being worked on by another request.
    InProgress,
    /// The key was used with a different body.
    Mismatch,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    response_status: Option<u16>,
    response_body: Option<String>,
    created_at: DateTime<Utc>,
}

pub async fn claim(
    db: &MySqlPool,
    owner_id: Uuid,
    key: &str,
    request_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> sqlx::Result<Claim> {
    // Two rounds: the second follows the removal of an expired or abandoned row.
    for _ in 0..2 {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (owner_id, idempotency_key, request_hash, created_at)
             VALUES (?, ?, ?, ?)",
        )
        .bind(owner_id)
        .bind(key)
        .bind(&request_hash[..])
        .bind(now)
        .execute(db)
        .await;
        match inserted {
            Ok(_) => return Ok(Claim::Claimed),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e),
        }
        let existing: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, response_status, response_body, created_at
             FROM idempotency_keys WHERE owner_id = ? AND idempotency_key = ?",
        )
        .bind(owner_id)
        .bind(key)
        .fetch_optional(db)
        .await?;
        let Some(row) = existing else { continue };
        let expired = row.created_at < now - RETENTION;
        let abandoned = row.response_status.is_none() && row.created_at < now - ABANDONED_AFTER;
        if expired || abandoned {
            sqlx::query(
                "DELETE FROM idempotency_keys
                 WHERE owner_id = ? AND idempotency_key = ? AND created_at = ?",
            )
            .bind(owner_id)
            .bind(key)
            .bind(row.created_at)
            .execute(db)
            .await?;
            continue;
        }
        if row.request_hash.as_slice() != request_hash.as_slice() {
            return Ok(Claim::Mismatch);
        }
        return Ok(match (row.response_status, row.response_body) {
            (Some(status), Some(body)) => Claim::Replay { status, body },
            _ => Claim::InProgress,
        });
    }
    Ok(Claim::InProgress)
}

/// Stores the response; run it in the same transaction as the work.
pub async fn complete(
    db: impl MySqlExecutor<'_>,
    owner_id: Uuid,
    key: &str,
    status: u16,
    body: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = ?, response_body = ?
         WHERE owner_id = ? AND idempotency_key = ?",
    )
    .bind(status)
    .bind(body)
    .bind(owner_id)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}

/// Gives the key up after the work failed, so the client may try again.
pub async fn release(db: impl MySqlExecutor<'_>, owner_id: Uuid, key: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE owner_id = ? AND idempotency_key = ? AND response_status IS NULL",
    )
    .bind(owner_id)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}
