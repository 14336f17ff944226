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
