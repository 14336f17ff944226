//! SQL for `order_events`: the history, the outbox and the feed source.

use sqlx::{FromRow, MySqlExecutor, QueryBuilder, Row};
use uuid::Uuid;

use crate::db::webhook_endpoints::{EndpointRow, COLUMNS as ENDPOINT_COLUMNS};
use crate::db::{padded, push_ids};
use crate::domain::Event;

/// Records events in one statement, at feed positions `first_feed_position`
/// and up in slice order (taken from the clock in the same transaction:
/// `sequencer::record`); call it in the transaction of the changes they
/// record. Returns them as the relay publishes them.
pub async fn insert_many(
    db: impl MySqlExecutor<'_>,
    events: &[&Event],
    first_feed_position: u64,
) -> sqlx::Result<Vec<OutboxEvent>> {
    let mut sql = QueryBuilder::new(
        "INSERT INTO order_events (id, order_id, customer_id, sequence, event_type, status, payload, created_at,
                                   traceparent, feed_position) ",
    );
    let mut recorded = Vec::with_capacity(events.len());
    for (event, feed_position) in events.iter().zip(first_feed_position..) {
        recorded.push(OutboxEvent {
            feed_position,
            id: event.id,
            order_id: event.data.order_id,
            customer_id: event.data.customer_id,
            event_type: event.event_type.as_str().to_owned(),
            payload: serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            traceparent: event.traceparent.clone(),
        });
    }
    sql.push_values(events.iter().zip(&recorded), |mut row, (event, out)| {
        row.push_bind(event.id)
            .push_bind(event.data.order_id)
            .push_bind(event.data.customer_id)
            .push_bind(event.data.sequence)
            .push_bind(event.event_type.as_str())
            .push_bind(event.data.order.status.as_str())
            .push_bind(out.payload.as_str())
            .push_bind(event.timestamp)
            .push_bind(event.traceparent.as_deref())
            .push_bind(out.feed_position);
    });
    sql.build().execute(db).await?;
    Ok(recorded)
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

/// Committed events not yet in the feed, oldest first, with what the
/// relay publishes (`feed_position` is 0 until assigned). The index is
/// named: with statistics taken during a backlog (most events unnumbered)
/// the optimizer walks the primary key in order instead, reading the whole
/// table on every pass.
/// A committed event without a feed position (written by a version that
/// left numbering to the relay), with its insert position.
#[derive(Debug, sqlx::FromRow)]
pub struct Unsequenced {
    pub position: u64,
    #[sqlx(flatten)]
    pub event: OutboxEvent,
}

pub async fn unsequenced(db: impl MySqlExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Unsequenced>> {
    sqlx::query_as(
        "SELECT position, CAST(0 AS UNSIGNED) AS feed_position, id, order_id, customer_id, event_type, payload,
                traceparent
         FROM order_events FORCE INDEX (order_events_feed)
         WHERE feed_position IS NULL ORDER BY position LIMIT ?",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn any_unsequenced(db: impl MySqlExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS(SELECT 1 FROM order_events WHERE feed_position IS NULL)")
        .fetch_one(db)
        .await
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

/// An event as the relay publishes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    pub feed_position: u64,
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub event_type: String,
    pub payload: String,
    /// The request's trace (see `Event::traceparent`).
    pub traceparent: Option<String>,
}

/// Numbered events in `(after, before)`, in feed order: what the relay has
/// still to publish.
pub async fn numbered_between(
    db: impl MySqlExecutor<'_>,
    after: u64,
    before: u64,
    limit: i64,
) -> sqlx::Result<Vec<OutboxEvent>> {
    sqlx::query_as(
        "SELECT feed_position, id, order_id, customer_id, event_type, payload, traceparent
         FROM order_events WHERE feed_position > ? AND feed_position < ?
         ORDER BY feed_position LIMIT ?",
    )
    .bind(after)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Events by id, as the relay publishes them.
pub async fn outbox_by_ids(
    db: impl MySqlExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<OutboxEvent>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new(
        "SELECT COALESCE(feed_position, CAST(0 AS UNSIGNED)) AS feed_position, id, order_id, customer_id,
                event_type, payload, traceparent
         FROM order_events WHERE id IN (",
    );
    push_ids(&mut sql, ids);
    sql.push(") ORDER BY position");
    sql.build_query_as().fetch_all(db).await
}

/// How many events are not yet published (numbered or not), and the age of
/// the oldest in seconds.
pub async fn outbox_backlog(db: impl MySqlExecutor<'_>) -> sqlx::Result<(i64, f64)> {
    let (count, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM (
             SELECT created_at FROM order_events WHERE feed_position IS NULL
             UNION ALL
             SELECT created_at FROM order_events
             WHERE feed_position > (SELECT published_through FROM feed_clock WHERE id = 1)
         ) waiting",
    )
    .fetch_one(db)
    .await?;
    let age = oldest
        .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok((count, age))
}

/// The order's status after event `e`: its column, or, for events written
/// before the column, its payload's.
const STATUS: &str = "COALESCE(e.status, JSON_VALUE(e.payload, '$.data.status'))";

/// An event as fan-out reads it: the events a batch names, with their
/// payloads, and every other event of their orders without.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FanOutEvent {
    #[sqlx(rename = "event_id")]
    pub id: Uuid,
    pub order_id: Uuid,
    #[sqlx(rename = "event_customer_id")]
    pub customer_id: Uuid,
    pub sequence: u32,
    pub event_type: String,
    /// The order's status after it.
    pub status: Option<String>,
    #[sqlx(rename = "event_created_at")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub payload: Option<String>,
    /// The trace of the request that made it.
    pub traceparent: Option<String>,
}

/// What a fan-out reads before its transaction.
pub struct FanOutRead {
    /// The events named and every event of their orders; only the named
    /// ones carry their payload. An event appears once per named event of
    /// its order: callers de-duplicate. An id that names no committed event
    /// is simply absent.
    pub events: Vec<FanOutEvent>,
    /// The enabled endpoints of the named events' customers.
    pub endpoints: Vec<EndpointRow>,
}

/// The endpoint columns' places in the event rows, and the event columns'
/// in the endpoint rows: the two halves of `for_fan_out_sql`'s union. An
/// unsigned column's NULL is cast so that the union keeps it an unsigned
/// integer (MariaDB makes `INT UNSIGNED` and a bare NULL a `DECIMAL`).
const FAN_OUT_EVENT_NULLS: &str =
    "NULL, NULL, NULL, CAST(NULL AS UNSIGNED), NULL, NULL, NULL, NULL, NULL";
const FAN_OUT_ENDPOINT_NULLS: &str = "NULL AS id, NULL AS customer_id, NULL AS url, \
    NULL AS description, CAST(NULL AS UNSIGNED) AS event_mask, \
    CAST(NULL AS UNSIGNED) AS notice_mask, CAST(NULL AS UNSIGNED) AS status_mask, \
    NULL AS enabled, NULL AS disabled_reason, NULL AS secret, NULL AS previous_secret, \
    NULL AS previous_secret_expires_at, NULL AS created_at, NULL AS updated_at, \
    NULL AS failing_since, CAST(NULL AS UNSIGNED) AS rate_limit_per_second, NULL AS headers";

/// The events named by `ids`, every event of their orders, and their
/// customers' enabled endpoints, in one statement (`for_fan_out_sql`).
pub async fn for_fan_out(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<FanOutRead> {
    let mut read = FanOutRead {
        events: vec![],
        endpoints: vec![],
    };
    if ids.is_empty() {
        return Ok(read);
    }
    let ids: Vec<Uuid> = padded(ids).copied().collect();
    let sql = for_fan_out_sql(ids.len());
    let mut query = sqlx::query(&sql);
    for _ in 0..3 {
        for id in &ids {
            query = query.bind(*id);
        }
    }
    for row in query.fetch_all(db).await? {
        if row.try_get::<i64, _>("endpoint")? == 0 {
            read.events.push(FanOutEvent::from_row(&row)?);
        } else {
            read.endpoints.push(EndpointRow::from_row(&row)?);
        }
    }
    Ok(read)
}

/// `for_fan_out`'s statement for `ids` ids, each list bound in turn: a
/// union of the events (a join on the order, no temporary table) and the
/// endpoints (served by `webhook_endpoints_subscribed`), each row saying
/// which it is. `tests/api/webhooks.rs` checks the plan.
pub fn for_fan_out_sql(ids: usize) -> String {
    let list = vec!["?"; ids].join(", ");
    format!(
        "SELECT 0 AS endpoint, e.id AS event_id, e.order_id, e.customer_id AS event_customer_id,
                e.sequence, e.event_type, {STATUS} AS status, e.created_at AS event_created_at,
                e.traceparent, IF(e.id IN ({list}), e.payload, NULL) AS payload,
                {FAN_OUT_ENDPOINT_NULLS}
         FROM order_events n JOIN order_events e ON e.order_id = n.order_id
         WHERE n.id IN ({list})
         UNION ALL
         SELECT 1, {FAN_OUT_EVENT_NULLS}, {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE enabled = 1
           AND customer_id IN (SELECT customer_id FROM order_events WHERE id IN ({list}))"
    )
}

/// Payloads by event id.
pub async fn payloads(
    db: impl MySqlExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new("SELECT id, payload FROM order_events WHERE id IN (");
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build_query_as().fetch_all(db).await
}

/// A numbered event as reconciliation checks it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SettledEvent {
    pub feed_position: u64,
    pub id: Uuid,
    pub customer_id: Uuid,
    pub event_type: String,
    pub status: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Numbered events in `(after, through]`, in feed order, without
/// payloads: what reconciliation checks.
pub async fn settled_window(
    db: impl MySqlExecutor<'_>,
    after: u64,
    through: u64,
    limit: i64,
) -> sqlx::Result<Vec<SettledEvent>> {
    sqlx::query_as(&format!(
        "SELECT e.feed_position, e.id, e.customer_id, e.event_type, {STATUS} AS status, e.created_at
         FROM order_events e
         WHERE e.feed_position > ? AND e.feed_position <= ? ORDER BY e.feed_position LIMIT ?"
    ))
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_all(db)
    .await
}
