//! SQL for `ops_notifications`: one row per subject, when its last
//! operator notification went.

use chrono::{DateTime, Utc};
use sqlx::MySqlExecutor;

/// Takes the right to notify about `subject` at `now`, unless a
/// notification about it went within `window` (from any instance): true if
/// taken. Two statements at most, each atomic: the first notification
/// inserts the row, a later one moves it only if the window has passed.
pub async fn claim(
    db: &mut sqlx::MySqlConnection,
    subject: &str,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> sqlx::Result<bool> {
    let inserted =
        sqlx::query("INSERT IGNORE INTO ops_notifications (subject, last_sent_at) VALUES (?, ?)")
            .bind(subject)
            .bind(now)
            .execute(&mut *db)
            .await?;
    if inserted.rows_affected() == 1 {
        return Ok(true);
    }
    let moved = sqlx::query(
        "UPDATE ops_notifications SET last_sent_at = ? WHERE subject = ? AND last_sent_at <= ?",
    )
    .bind(now)
    .bind(subject)
    .bind(now - window)
    .execute(&mut *db)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Gives a claim back (its notification could not be sent), so that the
/// next occurrence may try again.
pub async fn release(
    db: impl MySqlExecutor<'_>,
    subject: &str,
    claimed_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM ops_notifications WHERE subject = ? AND last_sent_at = ?")
        .bind(subject)
        .bind(claimed_at)
        .execute(db)
        .await?;
    Ok(())
}
