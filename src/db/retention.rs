//! Retention (SPEC §9): what is purged, in small batches. Deliveries that
//! settled longer ago than the retention period go with their attempts;
//! idempotency keys go once they can no longer be replayed, portal sessions
//! once they have expired. Order events
//! (the history and the feed) are kept.

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, QueryBuilder};
use uuid::Uuid;

use super::idempotency::RETENTION as KEY_RETENTION;

/// Rows per statement, so no purge holds locks for long.
pub const BATCH: i64 = 500;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub deliveries: u64,
    pub attempts: u64,
    pub idempotency_keys: u64,
    pub portal_sessions: u64,
}

/// One batch of each; call again while it purges a full batch.
pub async fn purge(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    keep: chrono::Duration,
) -> sqlx::Result<Purged> {
    let settled_before = now - keep;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries
         WHERE status IN ('succeeded', 'failed') AND updated_at < ? LIMIT ?",
    )
    .bind(settled_before)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut purged = Purged::default();
    if !ids.is_empty() {
        let mut attempts = QueryBuilder::new("DELETE FROM webhook_attempts WHERE delivery_id IN (");
        let mut list = attempts.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        attempts.push(")");
        purged.attempts = attempts.build().execute(pool).await?.rows_affected();
        let mut deliveries = QueryBuilder::new(
            "DELETE FROM webhook_deliveries WHERE status IN ('succeeded', 'failed') AND id IN (",
        );
        let mut list = deliveries.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        deliveries.push(")");
        purged.deliveries = deliveries.build().execute(pool).await?.rows_affected();
    }
    purged.idempotency_keys =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ? LIMIT ?")
            .bind(now - KEY_RETENTION)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
    purged.portal_sessions =
        sqlx::query("DELETE FROM portal_sessions WHERE expires_at < ? LIMIT ?")
            .bind(now)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(purged)
}
