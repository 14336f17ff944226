//! SQL for `outbox_parked`: events SQS refused for good, and the later
//! events of their orders held behind them.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParkedRow {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub feed_position: u64,
    pub reason: String,
    pub parked_at: DateTime<Utc>,
    pub retry_requested_at: Option<DateTime<Utc>>,
}

/// One event to park.
pub struct Park<'a> {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub feed_position: u64,
    pub reason: &'a str,
}

/// Parks events (again: a row already there keeps its first reason).
pub async fn insert(
    db: impl MySqlExecutor<'_>,
    rows: &[Park<'_>],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = QueryBuilder::new(
        "INSERT IGNORE INTO outbox_parked (event_id, order_id, feed_position, reason, parked_at) ",
    );
    sql.push_values(rows, |mut b, row| {
        b.push_bind(row.event_id)
            .push_bind(row.order_id)
            .push_bind(row.feed_position)
            .push_bind(truncate(row.reason))
            .push_bind(now);
    });
    sql.build().execute(db).await?;
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(1000).collect()
}

/// Orders with a parked event: their later events wait behind it.
pub async fn orders(db: impl MySqlExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT DISTINCT order_id FROM outbox_parked")
        .fetch_all(db)
        .await
}

/// Parked events, by feed position, after `after`.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    after: Option<u64>,
    limit: i64,
) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT event_id, order_id, feed_position, reason, parked_at, retry_requested_at
         FROM outbox_parked WHERE feed_position > ? ORDER BY feed_position LIMIT ?",
    )
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn count(db: impl MySqlExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_parked")
        .fetch_one(db)
        .await
}

/// Asks the relay to try an event again, with every parked event of its
/// order (they were held behind it); false if the event is not parked.
pub async fn request_retry(
    db: &mut sqlx::MySqlConnection,
    event_id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let order: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM outbox_parked WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&mut *db)
            .await?;
    let Some(order) = order else {
        return Ok(false);
    };
    sqlx::query("UPDATE outbox_parked SET retry_requested_at = ? WHERE order_id = ?")
        .bind(now)
        .bind(order)
        .execute(&mut *db)
        .await?;
    Ok(true)
}

/// Parked events someone asked to retry, by order then position.
pub async fn retries(db: impl MySqlExecutor<'_>, limit: i64) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT event_id, order_id, feed_position, reason, parked_at, retry_requested_at
         FROM outbox_parked WHERE order_id IN
             (SELECT order_id FROM outbox_parked WHERE retry_requested_at IS NOT NULL)
         ORDER BY order_id, feed_position LIMIT ?",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Published after all: no longer parked.
pub async fn remove(db: impl MySqlExecutor<'_>, event_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox_parked WHERE event_id = ?")
        .bind(event_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Refused again: the new reason, and no retry pending for its order.
pub async fn refused_again(
    db: impl MySqlExecutor<'_>,
    order_id: Uuid,
    event_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox_parked SET retry_requested_at = NULL,
             reason = IF(event_id = ?, ?, reason)
         WHERE order_id = ?",
    )
    .bind(event_id)
    .bind(truncate(reason))
    .bind(order_id)
    .execute(db)
    .await?;
    Ok(())
}
