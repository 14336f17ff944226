//! The relay from the outbox (`order_events` rows not yet published) to SQS.
//!
//! One relay publishes at a time across all API instances: each round takes
//! the `relay_lock` row with `FOR UPDATE SKIP LOCKED` (an instance that finds
//! it taken just waits for its next round), reads the oldest unpublished
//! events, sends them in batches of up to 10, marks the accepted ones
//! published and commits. A single publisher, rather than rows claimed with
//! SKIP LOCKED by many, is what keeps each order's events in order on the
//! queue; one relay is far from the bottleneck (SQS takes thousands of
//! messages a second in batches). A batch never holds two events of one
//! order, and a round stops at the first failure, so a refused event is
//! never overtaken by a later event of its order. If the process dies
//! between sending and committing, the events are sent again: delivery is
//! at least once, and FIFO queues drop the repeat by its deduplication id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::db;
use crate::db::order_events::OutboxEvent;
use crate::queue::{Outgoing, Queue};
use crate::signals::Signals;

/// Events read per round.
const ROUND: i64 = 100;
/// SQS's batch limit.
const BATCH: usize = 10;
/// How often to look for events committed by other instances.
const TICK: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub enum Round {
    /// Published this many events (0: nothing to do, or another relay's turn).
    Published(usize),
    /// SQS refused or was unreachable after publishing this many.
    Failed(usize, String),
}

/// One round: lock, read, publish, mark.
pub async fn publish_once(pool: &MySqlPool, queue: &Queue) -> sqlx::Result<Round> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !db::feed_clock::try_lock_relay(&mut *tx).await? {
        tx.commit().await?;
        return Ok(Round::Published(0));
    }
    let events = db::order_events::unpublished(&mut *tx, ROUND).await?;
    let mut published = Vec::with_capacity(events.len());
    let mut failure = None;
    for batch in batches(&events) {
        let messages: Vec<Outgoing> = batch
            .iter()
            .map(|e| Outgoing {
                id: e.id.to_string(),
                body: &e.payload,
                event_type: &e.event_type,
                customer_id: e.customer_id.to_string(),
                group: e.order_id.to_string(),
            })
            .collect();
        match queue.publish(&messages).await {
            Ok(accepted) => {
                let accepted: HashSet<String> = accepted.into_iter().collect();
                published.extend(
                    batch
                        .iter()
                        .filter(|e| accepted.contains(&e.id.to_string()))
                        .map(|e| e.position),
                );
                if accepted.len() < batch.len() {
                    failure = Some(format!(
                        "SQS refused {} of {} messages",
                        batch.len() - accepted.len(),
                        batch.len()
                    ));
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    db::order_events::mark_published(&mut *tx, &published).await?;
    tx.commit().await?;
    Ok(match failure {
        None => Round::Published(published.len()),
        Some(reason) => Round::Failed(published.len(), reason),
    })
}

/// Splits events (oldest first) into batches of at most 10 in which no
/// order appears twice; an order's later event goes into a later batch.
fn batches(events: &[OutboxEvent]) -> Vec<Vec<&OutboxEvent>> {
    let mut batches: Vec<Vec<&OutboxEvent>> = vec![];
    let mut current: Vec<&OutboxEvent> = vec![];
    for event in events {
        let repeats = current.iter().any(|e| e.order_id == event.order_id);
        if current.len() == BATCH || repeats {
            batches.push(std::mem::take(&mut current));
        }
        current.push(event);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Runs until `stop` turns true.
pub async fn run(
    pool: MySqlPool,
    queue: Queue,
    signals: Arc<Signals>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let pause = match publish_once(&pool, &queue).await {
            Ok(Round::Published(n)) => {
                if backoff > Duration::ZERO {
                    tracing::info!("publishing to SQS again");
                }
                backoff = Duration::ZERO;
                if n > 0 {
                    continue;
                }
                TICK
            }
            Ok(Round::Failed(_, reason)) => {
                backoff = next_backoff(backoff);
                tracing::warn!(%reason, retry_in = ?backoff, "publishing to SQS failed; events stay in the outbox");
                backoff
            }
            Err(e) => {
                backoff = next_backoff(backoff);
                tracing::warn!(error = %e, retry_in = ?backoff, "reading the outbox failed");
                backoff
            }
        };
        tokio::select! {
            _ = signals.relay_woken(), if backoff.is_zero() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(position: u64, order: Uuid) -> OutboxEvent {
        OutboxEvent {
            position,
            id: Uuid::now_v7(),
            order_id: order,
            customer_id: Uuid::nil(),
            event_type: "order.created".into(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn batches_hold_at_most_ten_and_one_event_per_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut events = vec![event(1, a), event(2, b), event(3, a), event(4, b)];
        events.extend((5..30).map(|p| event(p, Uuid::now_v7())));
        let batches = batches(&events);
        let positions: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.iter().map(|e| e.position).collect())
            .collect();
        assert_eq!(positions[0], [1, 2]);
        assert_eq!(positions[1], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(batches.iter().all(|b| b.len() <= 10));
        let flattened: Vec<u64> = positions.concat();
        assert_eq!(flattened, (1..30).collect::<Vec<u64>>());
    }
}
