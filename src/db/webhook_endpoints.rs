//! SQL for `webhook_endpoints`. Secrets go in and out sealed (see `secrets`).

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

use crate::domain::webhook::{EventFilter, StatusFilter};
use crate::domain::{EventType, OrderStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// The `order.*` types it receives (see `EventFilter`).
    pub event_mask: u32,
    /// The notices it receives (see `EventFilter`).
    pub notice_mask: u32,
    /// The statuses it gets status changes for; `None`: all.
    pub status_mask: Option<u32>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Since when every delivery has failed; set by the worker.
    #[sqlx(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Attempts a second at most; `None`: as fast as the worker goes.
    pub rate_limit_per_second: Option<u32>,
    /// Custom headers as JSON (see `domain::webhook_headers`); `None`: none.
    pub headers: Option<String>,
}

pub(crate) const COLUMNS: &str = "id, customer_id, url, description, event_mask, notice_mask, status_mask, \
                       enabled, disabled_reason, secret, previous_secret, previous_secret_expires_at, \
                       created_at, updated_at, failing_since, rate_limit_per_second, headers";

impl EndpointRow {
    pub fn event_filter(&self) -> EventFilter {
        EventFilter {
            orders: self.event_mask,
            notices: self.notice_mask,
        }
    }

    pub fn status_filter(&self) -> StatusFilter {
        StatusFilter(self.status_mask)
    }

    /// Whether the endpoint receives an event of this type (unknown: no)
    /// leaving its order in `status`.
    pub fn receives(&self, event_type: &str, status: Option<OrderStatus>) -> bool {
        EventType::parse(event_type).is_some_and(|t| {
            self.event_filter().includes(t) && self.status_filter().passes(t, status)
        })
    }
}

pub async fn insert(db: impl MySqlExecutor<'_>, row: &EndpointRow) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO webhook_endpoints ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(row.id)
    .bind(row.customer_id)
    .bind(&row.url)
    .bind(&row.description)
    .bind(row.event_mask)
    .bind(row.notice_mask)
    .bind(row.status_mask)
    .bind(row.enabled)
    .bind(&row.disabled_reason)
    .bind(&row.secret)
    .bind(&row.previous_secret)
    .bind(row.previous_secret_expires_at)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(row.failing_since)
    .bind(row.rate_limit_per_second)
    .bind(&row.headers)
    .execute(db)
    .await?;
    Ok(())
}

/// Writes every mutable column back.
pub async fn update(db: impl MySqlExecutor<'_>, row: &EndpointRow) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_endpoints SET url = ?, description = ?, event_mask = ?, notice_mask = ?,
             status_mask = ?, enabled = ?,
             disabled_reason = ?, secret = ?, previous_secret = ?, previous_secret_expires_at = ?,
             updated_at = ?, failing_since = ?, rate_limit_per_second = ?, headers = ?
         WHERE id = ?",
    )
    .bind(&row.url)
    .bind(&row.description)
    .bind(row.event_mask)
    .bind(row.notice_mask)
    .bind(row.status_mask)
    .bind(row.enabled)
    .bind(&row.disabled_reason)
    .bind(&row.secret)
    .bind(&row.previous_secret)
    .bind(row.previous_secret_expires_at)
    .bind(row.updated_at)
    .bind(row.failing_since)
    .bind(row.rate_limit_per_second)
    .bind(&row.headers)
    .bind(row.id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Reads the endpoint and locks it until the transaction ends.
pub async fn find_for_update(
    db: impl MySqlExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = ? FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn count_for_customer(
    db: impl MySqlExecutor<'_>,
    customer_id: Uuid,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE customer_id = ?")
        .bind(customer_id)
        .fetch_one(db)
        .await
}

/// Newest first; one customer's, or everyone's for `None`.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    customer_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<EndpointRow>> {
    let mut sql = QueryBuilder::new(format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE 1=1"));
    if let Some(customer_id) = customer_id {
        sql.push(" AND customer_id = ").push_bind(customer_id);
    }
    if let Some(before) = before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

pub async fn delete(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM webhook_endpoints WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The delivery worker's lookup: the enabled endpoints of `customers`
/// customers (it filters them by event type), one placeholder each. Served
/// by `webhook_endpoints_subscribed`; `tests/api/webhooks.rs` checks the plan.
pub fn enabled_for_sql(customers: usize) -> String {
    let placeholders = vec!["?"; customers].join(", ");
    format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE enabled = 1 AND customer_id IN ({placeholders})")
}

pub async fn enabled_for(
    db: impl MySqlExecutor<'_>,
    customers: &[Uuid],
) -> sqlx::Result<Vec<EndpointRow>> {
    if customers.is_empty() {
        return Ok(vec![]);
    }
    let sql = enabled_for_sql(customers.len());
    let mut query = sqlx::query_as(&sql);
    for id in customers {
        query = query.bind(*id);
    }
    query.fetch_all(db).await
}

/// Endpoints by id (the worker's retries); missing ones were deleted.
pub async fn find_many(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<EndpointRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id IN ("
    ));
    let mut list = sql.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    sql.push(")");
    sql.build_query_as().fetch_all(db).await
}

/// Reserves the next turn to start an attempt to a rate-limited endpoint,
/// `interval` after the turn reserved before it (by any worker or Lambda
/// container) and not before now. `None` if that
/// turn is more than `within` away (or the endpoint is gone): nothing is
/// reserved then, so a delivery that cannot wait takes no one's turn. The
/// reservation is one atomic `UPDATE` on the endpoint's row; both
/// statements run on one connection (`LAST_INSERT_ID` is per connection),
/// and times are the database's, so workers with skewed clocks share one
/// pace.
pub async fn reserve_turn(
    db: &mut sqlx::MySqlConnection,
    id: Uuid,
    interval: std::time::Duration,
    within: std::time::Duration,
) -> sqlx::Result<Option<Turn>> {
    let interval_us = interval.as_micros() as u64;
    let reserved = sqlx::query(
        "UPDATE webhook_endpoints SET pace_next_us = LAST_INSERT_ID(
             GREATEST(COALESCE(pace_next_us, 0), CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS UNSIGNED)) + ?)
         WHERE id = ? AND COALESCE(pace_next_us, 0)
               <= CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS UNSIGNED) + ?",
    )
    .bind(interval_us)
    .bind(id)
    .bind(within.as_micros() as u64)
    .execute(&mut *db)
    .await?;
    if reserved.rows_affected() == 0 {
        return Ok(None);
    }
    let asked = std::time::Instant::now();
    let (next, now): (u64, u64) = sqlx::query_as(
        "SELECT CAST(LAST_INSERT_ID() AS UNSIGNED), CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS UNSIGNED)",
    )
    .fetch_one(&mut *db)
    .await?;
    let turn = next.saturating_sub(interval_us);
    Ok(Some(Turn {
        in_us: turn as i64 - now as i64,
        read_in: asked.elapsed(),
    }))
}

/// A reserved turn, as the database's clock saw it when answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Microseconds until it; negative if it had passed (the answer was
    /// held up, the database paused).
    pub in_us: i64,
    /// How long the read-back took: the database's clock was read at some
    /// moment of it, so the turn may be up to that much nearer than
    /// `in_us` says by the time the answer is here.
    pub read_in: std::time::Duration,
}

/// After a 2xx: the endpoint is healthy again.
pub async fn mark_succeeding(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// After a failed attempt: remembers since when it fails, and disables it
/// once every delivery has failed for `disable_after`; the reason, if this
/// call disabled it.
pub async fn mark_failing(
    db: &mut sqlx::MySqlConnection,
    id: Uuid,
    now: DateTime<Utc>,
    disable_after: chrono::Duration,
) -> sqlx::Result<Option<String>> {
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, ?) WHERE id = ?",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *db)
    .await?;
    let reason = format!("every delivery failed for {}", human(disable_after));
    let disabled = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?
         WHERE id = ? AND enabled = 1 AND failing_since <= ?",
    )
    .bind(&reason)
    .bind(now)
    .bind(id)
    .bind(now - disable_after)
    .execute(&mut *db)
    .await?;
    Ok((disabled.rows_affected() > 0).then_some(reason))
}

/// "5 days", "12 hours", "90 seconds".
fn human(period: chrono::Duration) -> String {
    let seconds = period.num_seconds();
    match seconds {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{} seconds", s.max(1)),
    }
}

/// Disables an enabled endpoint; true if this call did.
pub async fn disable(
    db: impl MySqlExecutor<'_>,
    id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let disabled = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?
         WHERE id = ? AND enabled = 1",
    )
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(db)
    .await?;
    Ok(disabled.rows_affected() > 0)
}

pub async fn disabled_count(db: impl MySqlExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE enabled = 0")
        .fetch_one(db)
        .await
}
