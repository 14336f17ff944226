//! SQL for `feed_clock`, the one row that orders the pipeline: the next feed
//! position to hand out (the sequencer's counter and lock), the relay's
//! lease and how far it has published, and how far the worker has
//! reconciled. Times are the database's (`NOW(3)`), so instances with
//! skewed clocks agree on who holds the lease.

use sqlx::{MySqlConnection, MySqlExecutor, MySqlPool, QueryBuilder};
use uuid::Uuid;

use crate::db::order_events::Unsequenced;

/// The clock as a sequencer pass found it, locked until its transaction ends.
#[derive(Debug, sqlx::FromRow)]
pub struct Clock {
    pub next_position: u64,
    pub published_through: u64,
    /// The relay's turn is free (lapsed, given up or never taken) or
    /// already the caller's.
    pub relay_free: bool,
    /// Another relay held the turn and its lease lapsed without being given
    /// up: that instance stopped or hung.
    pub lapsed_holder: Option<Uuid>,
}

/// Creates the row if missing (a database whose schema came through a
/// deploy request has none) and fills in marks an older version did not
/// keep. Idempotent; any number of instances may run it at once.
pub async fn ensure(db: &MySqlPool) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT IGNORE INTO feed_clock (id, next_position)
         SELECT 1, COALESCE(MAX(feed_position), 0) + 1 FROM order_events",
    )
    .execute(db)
    .await?;
    // The relay used to mark each event; its mark starts below the first
    // sequenced event that it had not published.
    sqlx::query(
        "UPDATE feed_clock SET published_through = COALESCE(
             (SELECT MIN(feed_position) - 1 FROM order_events
              WHERE published_at IS NULL AND feed_position IS NOT NULL),
             next_position - 1)
         WHERE id = 1 AND published_through IS NULL",
    )
    .execute(db)
    .await?;
    sqlx::query(
        "UPDATE feed_clock SET reconciled_through = published_through
         WHERE id = 1 AND reconciled_through IS NULL",
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Locks the clock until the transaction ends.
pub async fn lock(db: impl MySqlExecutor<'_>, relay: Uuid) -> sqlx::Result<Clock> {
    sqlx::query_as(
        "SELECT next_position, published_through,
                (relay_holder IS NULL OR relay_holder = ? OR relay_lease_until IS NULL
                 OR relay_lease_until < NOW(3)) AS relay_free,
                CASE WHEN relay_holder <> ? AND relay_lease_until < NOW(3)
                     THEN relay_holder END AS lapsed_holder
         FROM feed_clock WHERE id = 1 FOR UPDATE",
    )
    .bind(relay)
    .bind(relay)
    .fetch_one(db)
    .await
}

/// Takes `count` feed positions for events the caller's transaction is
/// about to write, and locks the clock until that transaction ends, so that
/// positions appear in commit order. Returns the first. One statement where
/// the server reports `LAST_INSERT_ID(expr)` in its answer (MySQL, MariaDB,
/// an unsharded Vitess keyspace); two where it does not.
pub async fn take_positions(db: &mut MySqlConnection, count: u64) -> sqlx::Result<u64> {
    let taken = sqlx::query(
        "UPDATE feed_clock SET next_position = LAST_INSERT_ID(next_position + ?) WHERE id = 1",
    )
    .bind(count)
    .execute(&mut *db)
    .await?;
    if taken.rows_affected() != 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    let next = match taken.last_insert_id() {
        0 => {
            sqlx::query_scalar::<_, u64>("SELECT next_position FROM feed_clock WHERE id = 1")
                .fetch_one(&mut *db)
                .await?
        }
        next => next,
    };
    Ok(next - count)
}

/// The relay's turn, renewed in the clock's own update.
pub struct RelayTurn {
    pub holder: Uuid,
    pub lease_ms: u64,
    /// How far the holder has published since it last wrote its mark.
    pub published_through: Option<u64>,
}

/// Gives `numbered` (ascending by position) feed positions from `base` up,
/// in the same order, moves the counter past them and, with `relay`, gives
/// the turn to its holder for `lease_ms` and moves the published mark. One
/// statement, the events' update and the clock's together, so a pass costs
/// one round trip less. Returns the next free feed position.
pub async fn advance(
    db: impl MySqlExecutor<'_>,
    base: u64,
    numbered: &mut [Unsequenced],
    relay: Option<RelayTurn>,
) -> sqlx::Result<u64> {
    let mut sql = QueryBuilder::new("UPDATE feed_clock c ");
    let next_position = match (numbered.first(), numbered.last()) {
        (Some(first), Some(last)) => {
            let (first, last) = (first.position, last.position);
            sql.push("JOIN order_events e ON e.position IN (");
            let mut list = sql.separated(", ");
            for event in crate::db::padded(numbered) {
                list.push_bind(event.position);
            }
            sql.push(") SET e.feed_position = ")
                .push_bind(base)
                .push(" + (e.position - ")
                .push_bind(first)
                .push("), ");
            for event in numbered.iter_mut() {
                event.event.feed_position = base + (event.position - first);
            }
            base + (last - first) + 1
        }
        _ => {
            sql.push("SET ");
            base
        }
    };
    sql.push("c.next_position = ").push_bind(next_position);
    if let Some(turn) = relay {
        sql.push(", c.relay_holder = ")
            .push_bind(turn.holder)
            .push(", c.relay_lease_until = NOW(3) + INTERVAL ")
            .push_bind(turn.lease_ms)
            .push(" * 1000 MICROSECOND, c.published_through = GREATEST(c.published_through, ")
            .push_bind(turn.published_through.unwrap_or(0))
            .push(")");
    }
    sql.push(" WHERE c.id = 1");
    sql.build().execute(db).await?;
    Ok(next_position)
}

/// Records that every event up to `through` is published (or parked),
/// if `relay` still holds the turn; false if it lost it.
pub async fn mark_published(
    db: impl MySqlExecutor<'_>,
    relay: Uuid,
    through: u64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE feed_clock SET published_through = GREATEST(published_through, ?)
         WHERE id = 1 AND relay_holder = ?",
    )
    .bind(through)
    .bind(relay)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the turn up (at shutdown), so another instance takes it at once.
pub async fn release_relay(db: impl MySqlExecutor<'_>, relay: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE feed_clock SET relay_lease_until = NULL WHERE id = 1 AND relay_holder = ?")
        .bind(relay)
        .execute(db)
        .await?;
    Ok(())
}

/// What an idle loop needs to know in one statement: are there events to
/// number, events numbered but not published, or parked events to retry?
#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    pub unsequenced: bool,
    pub unpublished: bool,
    pub retries: bool,
}

pub async fn pending(db: impl MySqlExecutor<'_>) -> sqlx::Result<Pending> {
    sqlx::query_as(
        "SELECT EXISTS(SELECT 1 FROM order_events WHERE feed_position IS NULL) AS unsequenced,
                COALESCE(published_through < next_position - 1, TRUE) AS unpublished,
                EXISTS(SELECT 1 FROM outbox_parked WHERE retry_requested_at IS NOT NULL) AS retries
         FROM feed_clock WHERE id = 1",
    )
    .fetch_one(db)
    .await
}

/// The worker's reconciliation mark and how far the relay has published.
pub async fn reconcile_marks(db: impl MySqlExecutor<'_>) -> sqlx::Result<(u64, u64)> {
    sqlx::query_as(
        "SELECT COALESCE(reconciled_through, CAST(0 AS UNSIGNED)), COALESCE(published_through, CAST(0 AS UNSIGNED)) FROM feed_clock WHERE id = 1",
    )
        .fetch_one(db)
        .await
}

/// Moves the reconciliation mark from `from` to `to`; false if another
/// worker moved it first.
pub async fn mark_reconciled(db: impl MySqlExecutor<'_>, from: u64, to: u64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE feed_clock SET reconciled_through = ? WHERE id = 1 AND reconciled_through = ?",
    )
    .bind(to)
    .bind(from)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
