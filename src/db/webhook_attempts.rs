//! SQL for `webhook_attempts`: every attempt made, kept for the delivery log.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// Records attempts in one statement. Every attempt made is recorded, a
/// stale one too: the request was sent.
pub async fn insert_many(db: impl MySqlExecutor<'_>, rows: &[AttemptRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = QueryBuilder::new(
        "INSERT INTO webhook_attempts (id, delivery_id, attempt, started_at, duration_ms,
             response_status, response_body, error) ",
    );
    sql.push_values(rows, |mut b, row| {
        b.push_bind(row.id)
            .push_bind(row.delivery_id)
            .push_bind(row.attempt)
            .push_bind(row.started_at)
            .push_bind(row.duration_ms)
            .push_bind(row.response_status)
            .push_bind(&row.response_body)
            .push_bind(&row.error);
    });
    sql.build().execute(db).await?;
    Ok(())
}

/// Whether this attempt is recorded. A group's attempts are written in one
/// transaction, so one of them tells whether the group was.
pub async fn recorded(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM webhook_attempts WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// A delivery's attempts, oldest first, after the given attempt number.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    delivery_id: Uuid,
    after: Option<u32>,
    limit: i64,
) -> sqlx::Result<Vec<AttemptRow>> {
    let mut sql = QueryBuilder::new(
        "SELECT id, delivery_id, attempt, started_at, duration_ms, response_status, response_body, error
         FROM webhook_attempts WHERE delivery_id = ",
    );
    sql.push_bind(delivery_id);
    if let Some(after) = after {
        sql.push(" AND attempt > ").push_bind(after);
    }
    sql.push(" ORDER BY attempt LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}
