//! SQL for `webhook_deliveries` and `webhook_attempts`.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

use crate::db::{padded, push_ids};

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
    pub lease_until: Option<DateTime<Utc>>,
    /// The claim an attempt in progress belongs to (see `settle`).
    pub lease_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The trace of its fan-out, which every attempt of it joins.
    pub traceparent: Option<String>,
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
            lease_until: None,
            lease_id: None,
            created_at: now,
            updated_at: now,
            traceparent: None,
        }
    }
}

const COLUMNS: &str = "id, endpoint_id, customer_id, event_id, event_type, order_id, sequence, \
     payload, event_created_at, status, attempts, last_response_status, last_error, \
     next_attempt_at, manual_requested_at, lease_until, lease_id, created_at, updated_at, traceparent";

/// Creates the delivery unless one exists for this (event, endpoint);
/// true if it did.
pub async fn insert_ignore(db: impl MySqlExecutor<'_>, row: &DeliveryRow) -> sqlx::Result<bool> {
    Ok(insert_many(db, std::slice::from_ref(row)).await? == 1)
}

/// Creates deliveries in one statement, skipping any (event, endpoint)
/// that has one; returns how many it created.
pub async fn insert_many(db: impl MySqlExecutor<'_>, rows: &[DeliveryRow]) -> sqlx::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sql = QueryBuilder::new(format!(
        "INSERT IGNORE INTO webhook_deliveries ({COLUMNS}) "
    ));
    sql.push_values(rows, |mut b, row| {
        b.push_bind(row.id)
            .push_bind(row.endpoint_id)
            .push_bind(row.customer_id)
            .push_bind(row.event_id)
            .push_bind(&row.event_type)
            .push_bind(row.order_id)
            .push_bind(row.sequence)
            .push_bind(&row.payload)
            .push_bind(row.event_created_at)
            .push_bind(&row.status)
            .push_bind(row.attempts)
            .push_bind(row.last_response_status)
            .push_bind(&row.last_error)
            .push_bind(row.next_attempt_at)
            .push_bind(row.manual_requested_at)
            .push_bind(row.lease_until)
            .push_bind(row.lease_id)
            .push_bind(row.created_at)
            .push_bind(row.updated_at)
            .push_bind(&row.traceparent);
    });
    Ok(sql.build().execute(db).await?.rows_affected())
}

/// Which of these delivery ids exist.
pub async fn existing_ids(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new("SELECT id FROM webhook_deliveries WHERE id IN (");
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build_query_scalar().fetch_all(db).await
}

/// The (event, endpoint) pairs that have a delivery, for these events.
/// Served by `webhook_deliveries_event_endpoint`.
pub async fn pairs_for_events(
    db: impl MySqlExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new(
        "SELECT event_id, endpoint_id FROM webhook_deliveries WHERE event_id IN (",
    );
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build_query_as().fetch_all(db).await
}

/// A delivery as ordering sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderSlot {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub order_id: Uuid,
    pub sequence: u32,
    pub event_id: Uuid,
    pub status: String,
    /// Pending but waiting for an earlier event of its order.
    pub waiting: bool,
}

/// The deliveries of these orders to these endpoints (every combination:
/// callers keep the pairs they asked about), locked until the transaction
/// ends. Fan-out and settle both lock what they look at, so a delivery
/// written to wait behind a pending one is always released when that one
/// settles. The index is forced and nothing else is filtered in SQL: a
/// locking read that wandered onto another index (`status = 'pending'`
/// would pick the due index) would lock every delivery in flight and
/// serialize all fan-outs and settles behind each other.
pub async fn order_slots(
    db: impl MySqlExecutor<'_>,
    endpoints: &[Uuid],
    orders: &[Uuid],
) -> sqlx::Result<Vec<OrderSlot>> {
    if endpoints.is_empty() || orders.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new(
        "SELECT id, endpoint_id, order_id, sequence, event_id, status,
                (status = 'pending' AND next_attempt_at IS NULL) AS waiting
         FROM webhook_deliveries FORCE INDEX (webhook_deliveries_order) WHERE endpoint_id IN (",
    );
    push_ids(&mut sql, endpoints);
    sql.push(") AND order_id IN (");
    push_ids(&mut sql, orders);
    sql.push(") FOR UPDATE");
    sql.build_query_as().fetch_all(db).await
}

/// Waiting deliveries become due (each was the lowest pending of its order).
pub async fn release_waiting(
    db: impl MySqlExecutor<'_>,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql = QueryBuilder::new("UPDATE webhook_deliveries SET next_attempt_at = ");
    sql.push_bind(now)
        .push(" WHERE status = 'pending' AND next_attempt_at IS NULL AND id IN (");
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(())
}

pub async fn find(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<DeliveryRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// What the dispatcher may claim: due deliveries and manual retries whose
/// lease is free (up to `limit` of each), in one statement, plus when the
/// next scheduled one falls due, so an idle dispatcher sleeps until then.
/// Manual retries of one order to one endpoint go one at a time, lowest
/// sequence first (a recovery asks for many at once).
/// A waiting delivery (no `next_attempt_at`) is never a candidate, not even
/// for a manual retry: an earlier event of its order is still pending.
pub async fn candidates(
    db: impl MySqlExecutor<'_>,
    now: DateTime<Utc>,
    limit: i64,
    skip: &[Uuid],
) -> sqlx::Result<(Vec<Uuid>, Option<DateTime<Utc>>)> {
    let mut sql = QueryBuilder::new(
        "(SELECT d.id, d.next_attempt_at AS due FROM webhook_deliveries d
          WHERE d.status = 'pending' AND d.next_attempt_at IS NOT NULL
            AND (d.lease_until IS NULL OR d.lease_until < ",
    );
    sql.push_bind(now).push(")");
    push_skip(&mut sql, skip);
    sql.push(" ORDER BY d.next_attempt_at LIMIT ")
        .push_bind(limit + 1)
        .push(
            ") UNION ALL (SELECT d.id, NULL AS due FROM webhook_deliveries d
              WHERE d.manual_requested_at IS NOT NULL
                AND (d.status <> 'pending' OR d.next_attempt_at IS NOT NULL)
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                    WHERE e.endpoint_id = d.endpoint_id AND e.order_id = d.order_id
                      AND e.sequence < d.sequence AND e.manual_requested_at IS NOT NULL
                      AND (e.status <> 'pending' OR e.next_attempt_at IS NOT NULL))
                AND (d.lease_until IS NULL OR d.lease_until < ",
        )
        .push_bind(now)
        .push(")");
    push_skip(&mut sql, skip);
    sql.push(" ORDER BY d.manual_requested_at LIMIT ")
        .push_bind(limit)
        .push(")");
    let rows: Vec<(Uuid, Option<DateTime<Utc>>)> = sql.build_query_as().fetch_all(db).await?;
    let mut ids = vec![];
    let mut next_due = None;
    for (id, due) in rows {
        match due {
            Some(due) if due > now => {
                next_due = Some(next_due.map_or(due, |n: DateTime<Utc>| n.min(due)));
            }
            _ => ids.push(id),
        }
    }
    ids.sort();
    ids.dedup();
    ids.truncate(limit as usize);
    Ok((ids, next_due))
}

/// Leases candidates that are still claimable (another worker may have
/// taken or settled one since they were read), skipping rows another
/// worker holds; run it in a transaction. Every row gets `lease_id`.
pub async fn claim(
    db: &mut sqlx::MySqlConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    lease_id: Uuid,
) -> sqlx::Result<Vec<DeliveryRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut lock = QueryBuilder::new("SELECT id FROM webhook_deliveries WHERE id IN (");
    push_ids(&mut lock, ids);
    lock.push(") AND (lease_until IS NULL OR lease_until < ")
        .push_bind(now)
        .push(") AND ((status = 'pending' AND next_attempt_at <= ")
        .push_bind(now)
        .push(") OR (manual_requested_at IS NOT NULL AND (status <> 'pending' OR next_attempt_at IS NOT NULL))) FOR UPDATE SKIP LOCKED");
    let locked: Vec<Uuid> = lock.build_query_scalar().fetch_all(&mut *db).await?;
    if locked.is_empty() {
        return Ok(vec![]);
    }
    let mut lease = QueryBuilder::new("UPDATE webhook_deliveries SET lease_until = ");
    lease
        .push_bind(lease_until)
        .push(", lease_id = ")
        .push_bind(lease_id)
        .push(" WHERE id IN (");
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
    let mut sql = QueryBuilder::new(
        "UPDATE webhook_deliveries SET lease_until = NULL, lease_id = NULL WHERE id IN (",
    );
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(())
}

/// The rows a lease was taken on, by their ids or by their events' ids.
pub enum Leased<'a> {
    /// A claim's rows.
    Rows(&'a [Uuid]),
    /// A fan-out's rows (served by `webhook_deliveries_event_endpoint`).
    Events(&'a [Uuid]),
}

/// Gives back the leases taken as `lease_id` when the taker cannot tell
/// whether its transaction committed (its connection died at `COMMIT`): the
/// rows, if they exist, go to the dispatcher now instead of when the lease
/// ends.
pub async fn release_lease(
    db: impl MySqlExecutor<'_>,
    rows: Leased<'_>,
    lease_id: Uuid,
) -> sqlx::Result<u64> {
    let (column, ids) = match rows {
        Leased::Rows(ids) => ("id", ids),
        Leased::Events(ids) => ("event_id", ids),
    };
    if ids.is_empty() {
        return Ok(0);
    }
    let mut sql = QueryBuilder::new(
        "UPDATE webhook_deliveries SET lease_until = NULL, lease_id = NULL WHERE lease_id = ",
    );
    sql.push_bind(lease_id).push(format!(" AND {column} IN ("));
    push_ids(&mut sql, ids);
    sql.push(")");
    Ok(sql.build().execute(db).await?.rows_affected())
}

/// A safety net for the release a settle makes: waiting deliveries with no
/// earlier pending event become due. Returns how many.
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

/// The new state of a delivery after an attempt (or a decision not to
/// make one), written only under the lease that made it.
#[derive(Debug, Clone)]
pub struct Settled {
    pub id: Uuid,
    pub lease_id: Uuid,
    /// When the lease was taken: a manual retry asked for after it still
    /// stands once this settle is written.
    pub leased_at: DateTime<Utc>,
    pub status: &'static str,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Which of these deliveries are `failed` now, with their attempt counts.
pub async fn failed_among(
    db: impl MySqlExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, u32)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new("SELECT id, attempts FROM webhook_deliveries WHERE id IN (");
    push_ids(&mut sql, ids);
    sql.push(") AND status = 'failed'");
    sql.build_query_as().fetch_all(db).await
}

/// Writes outcomes in one statement. A row whose lease has since passed to
/// another claim (a stale attempt, a lease that ran out) is left as it is;
/// returns how many rows were written.
pub async fn settle(
    db: impl MySqlExecutor<'_>,
    rows: &[Settled],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sql = QueryBuilder::new("UPDATE webhook_deliveries SET status = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.status);
    }
    sql.push(" END, attempts = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.attempts);
    }
    sql.push(" END, last_response_status = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.last_response_status);
    }
    sql.push(" END, last_error = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.last_error.clone());
    }
    sql.push(" END, next_attempt_at = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.next_attempt_at);
    }
    sql.push(" END, manual_requested_at = IF(manual_requested_at <= CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.leased_at);
    }
    sql.push(
        " END, NULL, manual_requested_at), lease_until = NULL, lease_id = NULL, updated_at = ",
    )
    .push_bind(now)
    .push(" WHERE id IN (");
    push_ids(&mut sql, &rows.iter().map(|r| r.id).collect::<Vec<_>>());
    sql.push(") AND lease_id = CASE id");
    for r in padded(rows) {
        sql.push(" WHEN ")
            .push_bind(r.id)
            .push(" THEN ")
            .push_bind(r.lease_id);
    }
    sql.push(" END");
    Ok(sql.build().execute(db).await?.rows_affected())
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

/// Asks for one more attempt of every failed delivery of an endpoint whose
/// event happened in `[since, until)`; returns how many.
pub async fn request_recovery(
    db: impl MySqlExecutor<'_>,
    endpoint_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE webhook_deliveries SET manual_requested_at = ?, updated_at = ?
         WHERE endpoint_id = ? AND status = 'failed' AND event_created_at >= ? AND event_created_at < ?",
    )
    .bind(now)
    .bind(now)
    .bind(endpoint_id)
    .bind(since)
    .bind(until)
    .execute(db)
    .await?
    .rows_affected())
}

/// An order's deliveries to every endpoint, newest first.
pub async fn list_for_order(
    db: impl MySqlExecutor<'_>,
    order_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    let mut sql = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE order_id = "
    ));
    sql.push_bind(order_id);
    if let Some(before) = before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
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
