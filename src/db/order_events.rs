//! SQL for `order_events`: the history, the outbox and the feed source.

use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

use crate::domain::Event;

/// Records an event; call it in the transaction of the change it records.
pub async fn insert(db: impl MySqlExecutor<'_>, event: &Event) -> sqlx::Result<()> {
    let payload = serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO order_events (id, order_id, customer_id, sequence, event_type, payload, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.id)
    .bind(event.data.order_id)
    .bind(event.data.customer_id)
    .bind(event.data.sequence)
    .bind(event.event_type.as_str())
    .bind(payload)
    .bind(event.timestamp)
    .execute(db)
    .await?;
    Ok(())
}

/// One stored event: its sequence within the order and its envelope JSON.
#[derive(sqlx::FromRow)]
pub struct StoredEvent {
    pub sequence: u32,
    pub payload: String,
}

/// An order's events, oldest first, after the given sequence.
pub async fn history(
    db: impl MySqlExecutor<'_>,
    order_id: Uuid,
    after_sequence: Option<u32>,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    let mut sql = QueryBuilder::new("SELECT sequence, payload FROM order_events WHERE order_id = ");
    sql.push_bind(order_id);
    if let Some(after) = after_sequence {
        sql.push(" AND sequence > ").push_bind(after);
    }
    sql.push(" ORDER BY sequence LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

/// Positions of committed events not yet in the feed, oldest first.
pub async fn unsequenced(db: impl MySqlExecutor<'_>, limit: i64) -> sqlx::Result<Vec<u64>> {
    sqlx::query_scalar(
        "SELECT position FROM order_events WHERE feed_position IS NULL ORDER BY position LIMIT ?",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Gives `positions` (ascending) feed positions from `base` up, in the same
/// order, and returns the next free feed position.
pub async fn assign_feed_positions(
    db: impl MySqlExecutor<'_>,
    base: u64,
    positions: &[u64],
) -> sqlx::Result<u64> {
    let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
        return Ok(base);
    };
    let mut sql = QueryBuilder::new("UPDATE order_events SET feed_position = ");
    sql.push_bind(base)
        .push(" + (position - ")
        .push_bind(first)
        .push(") WHERE position IN (");
    let mut list = sql.separated(", ");
    for position in positions {
        list.push_bind(*position);
    }
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(base + (last - first) + 1)
}

/// One feed item: its position in the feed and its envelope.
#[derive(sqlx::FromRow)]
pub struct FeedEvent {
    pub feed_position: u64,
    pub payload: String,
}

/// Events after a feed position, in feed (commit) order; one customer's,
/// or everyone's for `None`.
pub async fn feed(
    db: impl MySqlExecutor<'_>,
    customer_id: Option<Uuid>,
    after: u64,
    limit: i64,
) -> sqlx::Result<Vec<FeedEvent>> {
    let mut sql = QueryBuilder::new("SELECT feed_position, payload FROM order_events WHERE ");
    if let Some(customer_id) = customer_id {
        sql.push("customer_id = ")
            .push_bind(customer_id)
            .push(" AND ");
    }
    sql.push("feed_position > ")
        .push_bind(after)
        .push(" ORDER BY feed_position LIMIT ")
        .push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

/// An event waiting in the outbox.
#[derive(sqlx::FromRow)]
pub struct OutboxEvent {
    pub position: u64,
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub event_type: String,
    pub payload: String,
}

/// The oldest unpublished events.
pub async fn unpublished(db: impl MySqlExecutor<'_>, limit: i64) -> sqlx::Result<Vec<OutboxEvent>> {
    sqlx::query_as(
        "SELECT position, id, order_id, customer_id, event_type, payload FROM order_events
         WHERE published_at IS NULL ORDER BY position LIMIT ?",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn mark_published(db: impl MySqlExecutor<'_>, positions: &[u64]) -> sqlx::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut sql =
        QueryBuilder::new("UPDATE order_events SET published_at = NOW(3) WHERE position IN (");
    let mut list = sql.separated(", ");
    for position in positions {
        list.push_bind(*position);
    }
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(())
}

/// How many events wait in the outbox, and the age of the oldest in seconds.
pub async fn outbox_backlog(db: impl MySqlExecutor<'_>) -> sqlx::Result<(i64, f64)> {
    let (count, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM order_events WHERE published_at IS NULL",
    )
    .fetch_one(db)
    .await?;
    let age = oldest
        .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok((count, age))
}

/// An order's events between two sequences (exclusive), for the worker to
/// create deliveries of events whose SQS messages have not arrived yet.
#[derive(sqlx::FromRow)]
pub struct EarlierEvent {
    pub sequence: u32,
    pub payload: String,
}

pub async fn between(
    db: impl MySqlExecutor<'_>,
    order_id: Uuid,
    after: u32,
    before: u32,
) -> sqlx::Result<Vec<EarlierEvent>> {
    sqlx::query_as(
        "SELECT sequence, payload FROM order_events
         WHERE order_id = ? AND sequence > ? AND sequence < ? ORDER BY sequence",
    )
    .bind(order_id)
    .bind(after)
    .bind(before)
    .fetch_all(db)
    .await
}
