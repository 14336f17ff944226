//! SQL for `webhook_deliveries` and `webhook_attempts`.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

pub const PENDING: &str = "pending";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub customer_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub order_id: Option<Uuid>,
    pub sequence: Option<u32>,
    pub payload: String,
    pub event_created_at: DateTime<Utc>,
    pub status: String,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub manual_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a new delivery is of: one event, for one endpoint.
pub struct NewDelivery<'a> {
    pub endpoint_id: Uuid,
    pub customer_id: Uuid,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub order_id: Option<Uuid>,
    pub sequence: Option<u32>,
    /// The envelope, sent as is on every attempt.
    pub payload: &'a str,
    pub event_created_at: DateTime<Utc>,
}

impl DeliveryRow {
    /// A pending delivery; `due` false makes it wait for an earlier event
    /// of its order (it gets no `next_attempt_at`).
    pub fn pending(new: NewDelivery<'_>, now: DateTime<Utc>, due: bool) -> DeliveryRow {
        DeliveryRow {
            id: Uuid::now_v7(),
            endpoint_id: new.endpoint_id,
            customer_id: new.customer_id,
            event_id: new.event_id,
            event_type: new.event_type.to_string(),
            order_id: new.order_id,
            sequence: new.sequence,
            payload: new.payload.to_string(),
            event_created_at: new.event_created_at,
            status: PENDING.to_string(),
            attempts: 0,
            last_response_status: None,
            last_error: None,
            next_attempt_at: due.then_some(now),
            manual_requested_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

const COLUMNS: &str = "id, endpoint_id, customer_id, event_id, event_type, order_id, sequence, \
     payload, event_created_at, status, attempts, last_response_status, last_error, \
     next_attempt_at, manual_requested_at, created_at, updated_at";

/// Creates the delivery unless one exists for this (event, endpoint);
/// true if it did.
pub async fn insert_ignore(db: impl MySqlExecutor<'_>, row: &DeliveryRow) -> sqlx::Result<bool> {
    let result = sqlx::query(&format!(
        "INSERT IGNORE INTO webhook_deliveries ({COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(row.id)
    .bind(row.endpoint_id)
    .bind(row.customer_id)
    .bind(row.event_id)
    .bind(&row.event_type)
    .bind(row.order_id)
    .bind(row.sequence)
    .bind(&row.payload)
    .bind(row.event_created_at)
    .bind(&row.status)
    .bind(row.attempts)
    .bind(row.last_response_status)
    .bind(&row.last_error)
    .bind(row.next_attempt_at)
    .bind(row.manual_requested_at)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(db)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn find(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<DeliveryRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Takes up to `limit` deliveries that are due (or asked for by hand) and
/// whose endpoint is not in `skip` (endpoints this worker has saturated);
/// leases them until `lease_until`. Run in a transaction. A delivery
/// waiting for an earlier event of its order has no `next_attempt_at`, so
/// it is not due.
pub async fn claim_due(
    db: &mut sqlx::MySqlConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
    skip: &[Uuid],
) -> sqlx::Result<Vec<DeliveryRow>> {
    // Candidates, read without locks; then locked by id, skipping rows that
    // another worker holds, and re-checked.
    let mut due = QueryBuilder::new(
        "SELECT d.id FROM webhook_deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= ",
    );
    due.push_bind(now)
        .push(" AND (d.lease_until IS NULL OR d.lease_until < ")
        .push_bind(now)
        .push(")");
    push_skip(&mut due, skip);
    due.push(" ORDER BY d.next_attempt_at LIMIT ")
        .push_bind(limit);
    let mut ids: Vec<Uuid> = due.build_query_scalar().fetch_all(&mut *db).await?;

    let mut manual = QueryBuilder::new(
        "SELECT d.id FROM webhook_deliveries d WHERE d.manual_requested_at IS NOT NULL \
         AND (d.lease_until IS NULL OR d.lease_until < ",
    );
    manual.push_bind(now).push(")");
    push_skip(&mut manual, skip);
    manual
        .push(" ORDER BY d.manual_requested_at LIMIT ")
        .push_bind(limit);
    ids.extend(
        manual
            .build_query_scalar::<Uuid>()
            .fetch_all(&mut *db)
            .await?,
    );
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(vec![]);
    }

    // The candidates came from a snapshot: another worker may since have
    // attempted and settled one (its lease cleared), so the locking read,
    // which sees the latest rows, checks again that each is still due.
    let mut lock = QueryBuilder::new("SELECT id FROM webhook_deliveries WHERE id IN (");
    push_ids(&mut lock, &ids);
    lock.push(") AND (lease_until IS NULL OR lease_until < ")
        .push_bind(now)
        .push(") AND ((status = 'pending' AND next_attempt_at <= ")
        .push_bind(now)
        .push(") OR manual_requested_at IS NOT NULL) FOR UPDATE SKIP LOCKED");
    let locked: Vec<Uuid> = lock.build_query_scalar().fetch_all(&mut *db).await?;
    if locked.is_empty() {
        return Ok(vec![]);
    }
    let mut lease = QueryBuilder::new("UPDATE webhook_deliveries SET lease_until = ");
    lease.push_bind(lease_until).push(" WHERE id IN (");
    push_ids(&mut lease, &locked);
    lease.push(")");
    lease.build().execute(&mut *db).await?;
    let mut select = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE id IN ("
    ));
    push_ids(&mut select, &locked);
    select.push(")");
    select.build_query_as().fetch_all(&mut *db).await
}

fn push_ids(sql: &mut QueryBuilder<'_, sqlx::MySql>, ids: &[Uuid]) {
    let mut list = sql.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
}

fn push_skip(sql: &mut QueryBuilder<'_, sqlx::MySql>, skip: &[Uuid]) {
    if !skip.is_empty() {
        sql.push(" AND d.endpoint_id NOT IN (");
        push_ids(sql, skip);
        sql.push(")");
    }
}

/// Gives back leases (rows claimed but not attempted).
pub async fn release(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql =
        QueryBuilder::new("UPDATE webhook_deliveries SET lease_until = NULL WHERE id IN (");
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(())
}

/// Is an earlier event of this order still pending for this endpoint?
/// Locks what it reads, so a concurrent settle and this check serialize.
pub async fn earlier_pending(
    db: impl MySqlExecutor<'_>,
    endpoint_id: Uuid,
    order_id: Uuid,
    sequence: u32,
) -> sqlx::Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries
         WHERE endpoint_id = ? AND order_id = ? AND sequence < ? AND status = 'pending'
         LIMIT 1 FOR UPDATE",
    )
    .bind(endpoint_id)
    .bind(order_id)
    .bind(sequence)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

/// The state of the delivery of an event to an endpoint, if it exists.
pub async fn status_of(
    db: impl MySqlExecutor<'_>,
    event_id: Uuid,
    endpoint_id: Uuid,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT status FROM webhook_deliveries WHERE event_id = ? AND endpoint_id = ? FOR UPDATE",
    )
    .bind(event_id)
    .bind(endpoint_id)
    .fetch_optional(db)
    .await
}

/// After a delivery settled: the next waiting event of its order for its
/// endpoint becomes due.
pub async fn release_next(
    db: impl MySqlExecutor<'_>,
    endpoint_id: Uuid,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = ?
         WHERE endpoint_id = ? AND order_id = ? AND status = 'pending' AND next_attempt_at IS NULL
         ORDER BY sequence LIMIT 1",
    )
    .bind(now)
    .bind(endpoint_id)
    .bind(order_id)
    .execute(db)
    .await?;
    Ok(())
}

/// A safety net for `release_next`: waiting deliveries with no earlier
/// pending event become due. Returns how many.
pub async fn release_stranded(
    db: &mut sqlx::MySqlConnection,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT d.id FROM webhook_deliveries d
         WHERE d.status = 'pending' AND d.next_attempt_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                           WHERE e.endpoint_id = d.endpoint_id AND e.order_id = d.order_id
                             AND e.sequence < d.sequence AND e.status = 'pending')
         LIMIT 100",
    )
    .fetch_all(&mut *db)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = QueryBuilder::new("UPDATE webhook_deliveries SET next_attempt_at = ");
    sql.push_bind(now)
        .push(" WHERE next_attempt_at IS NULL AND id IN (");
    push_ids(&mut sql, &ids);
    sql.push(")");
    Ok(sql.build().execute(&mut *db).await?.rows_affected())
}

/// The highest sequence of an order this endpoint has a delivery for.
pub async fn last_sequence(
    db: impl MySqlExecutor<'_>,
    endpoint_id: Uuid,
    order_id: Uuid,
) -> sqlx::Result<Option<u32>> {
    sqlx::query_scalar(
        "SELECT MAX(sequence) FROM webhook_deliveries WHERE endpoint_id = ? AND order_id = ?",
    )
    .bind(endpoint_id)
    .bind(order_id)
    .fetch_one(db)
    .await
}

/// The outcome of one attempt, written with its attempt row.
pub struct Outcome {
    pub status: &'static str,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

pub async fn record_outcome(
    db: impl MySqlExecutor<'_>,
    id: Uuid,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_response_status = ?,
             last_error = ?, next_attempt_at = ?, manual_requested_at = NULL, lease_until = NULL,
             updated_at = ?
         WHERE id = ?",
    )
    .bind(outcome.status)
    .bind(outcome.attempts)
    .bind(outcome.last_response_status)
    .bind(&outcome.last_error)
    .bind(outcome.next_attempt_at)
    .bind(now)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Asks for one more attempt now, whatever the state.
pub async fn request_manual(
    db: impl MySqlExecutor<'_>,
    id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET manual_requested_at = ?, updated_at = ? WHERE id = ?",
    )
    .bind(now)
    .bind(now)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// An endpoint's deliveries, newest first.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    endpoint_id: Uuid,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    let mut sql = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE endpoint_id = "
    ));
    sql.push_bind(endpoint_id);
    if let Some(status) = status {
        sql.push(" AND status = ").push_bind(status.to_string());
    }
    if let Some(before) = before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

pub async fn pending_count(db: impl MySqlExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
        .fetch_one(db)
        .await
}

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

pub async fn insert_attempt(db: impl MySqlExecutor<'_>, row: &AttemptRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (id, delivery_id, attempt, started_at, duration_ms,
             response_status, response_body, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id)
    .bind(row.delivery_id)
    .bind(row.attempt)
    .bind(row.started_at)
    .bind(row.duration_ms)
    .bind(row.response_status)
    .bind(&row.response_body)
    .bind(&row.error)
    .execute(db)
    .await?;
    Ok(())
}

/// A delivery's attempts, oldest first, after the given attempt number.
pub async fn attempts(
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
