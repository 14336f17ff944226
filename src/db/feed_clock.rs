//! SQL for `feed_clock` (the sequencer's lock and counter), `relay_lock`
//! and `server_secrets`.

use sqlx::MySqlExecutor;

/// Locks the clock until the transaction ends and returns the next position.
pub async fn lock(db: impl MySqlExecutor<'_>) -> sqlx::Result<u64> {
    sqlx::query_scalar("SELECT next_position FROM feed_clock WHERE id = 1 FOR UPDATE")
        .fetch_one(db)
        .await
}

pub async fn advance(db: impl MySqlExecutor<'_>, next_position: u64) -> sqlx::Result<()> {
    sqlx::query("UPDATE feed_clock SET next_position = ? WHERE id = 1")
        .bind(next_position)
        .execute(db)
        .await?;
    Ok(())
}

/// Takes the relay lock for this transaction, or `false` if another relay has it.
pub async fn try_lock_relay(db: impl MySqlExecutor<'_>) -> sqlx::Result<bool> {
    let row: Option<u8> =
        sqlx::query_scalar("SELECT id FROM relay_lock WHERE id = 1 FOR UPDATE SKIP LOCKED")
            .fetch_optional(db)
            .await?;
    Ok(row.is_some())
}

/// The named secret, made from `candidate` by whichever instance asks first.
pub async fn server_secret(
    db: &sqlx::MySqlPool,
    name: &str,
    candidate: &[u8],
) -> sqlx::Result<Vec<u8>> {
    sqlx::query("INSERT IGNORE INTO server_secrets (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(candidate)
        .execute(db)
        .await?;
    sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
        .bind(name)
        .fetch_one(db)
        .await
}
