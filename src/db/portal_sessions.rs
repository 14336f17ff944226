//! SQL for `portal_sessions`. Only the SHA-256 of a token is stored.

use chrono::{DateTime, Utc};
use sqlx::MySqlExecutor;
use uuid::Uuid;

pub struct NewSession<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub token_hash: &'a [u8; 32],
    pub capabilities: u32,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(db: impl MySqlExecutor<'_>, new: &NewSession<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO portal_sessions (id, customer_id, token_hash, capabilities, expires_at, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(new.id)
    .bind(new.customer_id)
    .bind(&new.token_hash[..])
    .bind(new.capabilities)
    .bind(new.expires_at)
    .bind(new.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// A live session's customer, capabilities and expiry, by the token's
/// hash; expired and ended sessions are not found.
pub async fn find_live(
    db: impl MySqlExecutor<'_>,
    token_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> sqlx::Result<Option<(Uuid, u32, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT customer_id, capabilities, expires_at FROM portal_sessions
         WHERE token_hash = ? AND expires_at > ?",
    )
    .bind(&token_hash[..])
    .bind(now)
    .fetch_optional(db)
    .await
}

/// Ends every session of a customer; returns how many there were.
pub async fn delete_for_customer(
    db: impl MySqlExecutor<'_>,
    customer_id: Uuid,
) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM portal_sessions WHERE customer_id = ?")
            .bind(customer_id)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
