//! SQL for `idempotency_keys`. A key is claimed by inserting its row in
//! the work's own transaction and completed in that same transaction. So
//! the claim and the work commit or vanish together: a request that fails
//! in any way, its connection killed included, leaves no claim behind. A
//! concurrent request with the same key waits on the row's lock and then
//! replays the stored response.

use chrono::{DateTime, Duration, Utc};
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::error::is_duplicate_key;

/// How long a response is replayed.
pub const RETENTION: Duration = Duration::hours(24);

pub enum Claim {
    /// The key is ours: do the work, then `complete` it, in this transaction.
    Claimed,
    /// The same key and body finished before: answer this again.
    Replay { status: u16, body: String },
    /// The key was used with a different body.
    Mismatch,
    /// Other requests kept taking the key: retry.
    Busy,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    response_status: Option<u16>,
    response_body: Option<String>,
    created_at: DateTime<Utc>,
}

/// Run it inside the transaction that does the work.
pub async fn claim(
    tx: &mut MySqlConnection,
    owner_id: Uuid,
    key: &str,
    request_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> sqlx::Result<Claim> {
    // Two rounds: the second follows the removal of an expired row.
    for _ in 0..2 {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (owner_id, idempotency_key, request_hash, created_at)
             VALUES (?, ?, ?, ?)",
        )
        .bind(owner_id)
        .bind(key)
        .bind(&request_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => return Ok(Claim::Claimed),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e),
        }
        // A locking read sees the latest committed row, not a snapshot.
        let existing: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, response_status, response_body, created_at
             FROM idempotency_keys WHERE owner_id = ? AND idempotency_key = ?
             LOCK IN SHARE MODE",
        )
        .bind(owner_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = existing else { continue };
        match (row.response_status, row.response_body) {
            (Some(status), Some(body)) if row.created_at >= now - RETENTION => {
                return Ok(if row.request_hash.as_slice() == request_hash.as_slice() {
                    Claim::Replay { status, body }
                } else {
                    Claim::Mismatch
                });
            }
            // Expired, or left without a response by the earlier design:
            // removed, and the key claimed afresh.
            _ => {
                sqlx::query(
                    "DELETE FROM idempotency_keys
                     WHERE owner_id = ? AND idempotency_key = ? AND created_at = ?",
                )
                .bind(owner_id)
                .bind(key)
                .bind(row.created_at)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    Ok(Claim::Busy)
}

/// Stores the response; run it in the same transaction as the work.
pub async fn complete(
    db: &mut MySqlConnection,
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
