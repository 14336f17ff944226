//! Gives committed events their feed position, in commit order.
//!
//! Auto-increment ids are handed out at insert time, not at commit: a
//! transaction holding id 41 can commit after one holding 42 was already
//! read, and a reader that moved past 42 would never see 41. So the feed
//! does not use them. Instead, after events commit, one sequencer at a time
//! (serialized by the `feed_clock` row lock, across every API instance)
//! takes the committed events that have no feed position yet and numbers
//! them above every number handed out before, in one transaction. A feed
//! position therefore only ever appears above all earlier ones, once, and
//! a reader following positions upwards sees every event exactly once. An
//! order's events keep their order: the next one can only be written after
//! the previous one committed (the order row is locked), so it is numbered
//! in the same pass or a later one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::db;
use crate::signals::Signals;

/// Events numbered per pass at most.
const BATCH: i64 = 1000;
/// How often to look for events committed by other instances.
const TICK: Duration = Duration::from_millis(100);

/// Numbers one batch; returns how many events it numbered.
pub async fn sequence_once(pool: &MySqlPool) -> sqlx::Result<usize> {
    let mut conn = pool.acquire().await?;
    // Read committed: see every event committed before the lock was ours.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let base = db::feed_clock::lock(&mut *tx).await?;
    let positions = db::order_events::unsequenced(&mut *tx, BATCH).await?;
    if positions.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let next = db::order_events::assign_feed_positions(&mut *tx, base, &positions).await?;
    db::feed_clock::advance(&mut *tx, next).await?;
    tx.commit().await?;
    Ok(positions.len())
}

/// Runs until `stop` turns true.
pub async fn run(pool: MySqlPool, signals: Arc<Signals>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        match sequence_once(&pool).await {
            Ok(0) => failures = 0,
            Ok(n) => {
                failures = 0;
                signals.feed_advanced();
                if n as i64 == BATCH {
                    continue;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 50 == 0 {
                    tracing::warn!(error = %e, failures, "sequencing events failed; retrying");
                }
            }
        }
        let pause = if failures == 0 {
            TICK
        } else {
            Duration::from_millis(100 * u64::from(failures.min(50)))
        };
        tokio::select! {
            _ = signals.sequencer_woken(), if failures == 0 => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}
