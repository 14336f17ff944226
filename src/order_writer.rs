//! Group commit for new orders. Orders created at the same moment are
//! written together (`batch`): one transaction, one multi-row `INSERT` into
//! `orders` and one into `order_events`, one commit, instead of a
//! transaction each.
//!
//! If a group fails (a duplicate reference, a deadlock, a lost connection)
//! it is written again one order at a time, each in its own transaction, so
//! each request gets its own answer and one bad order never fails another.

use std::sync::Arc;

use sqlx::{MySqlConnection, MySqlPool};

use crate::batch::Batcher;
use crate::db;
use crate::db::orders::InsertError;
use crate::domain::{Event, Order};
use crate::signals::Signals;

/// At most this many orders per transaction. A valid order is at most
/// about 25 KB of text (100 parcels, 2,000 characters of notes), so a full
/// group stays far below any server's packet limit.
const MAX_GROUP: usize = 32;

/// Hands new orders to the group writer; cheap to clone.
#[derive(Clone)]
pub struct OrderWriter {
    batcher: Batcher<Order, Result<Order, InsertError>>,
}

impl OrderWriter {
    /// Starts the writer (within a Tokio runtime).
    pub fn start(db: MySqlPool, signals: Arc<Signals>) -> OrderWriter {
        let batcher = Batcher::start(MAX_GROUP, move |orders| {
            let (db, signals) = (db.clone(), signals.clone());
            async move {
                let written = write(&db, orders).await;
                signals.events_committed();
                written
            }
        });
        OrderWriter { batcher }
    }

    /// Writes the order and its `order.created` event; returns the order
    /// once both are committed.
    pub async fn create(&self, order: Order) -> Result<Order, InsertError> {
        (self.batcher.call(order).await).unwrap_or(Err(InsertError::Db(sqlx::Error::PoolClosed)))
    }
}

/// Writes an order and its first event in the caller's transaction: the
/// path of a creation that must share its transaction (an idempotency key's
/// claim), and of each order of a failed group.
pub async fn insert_one(tx: &mut MySqlConnection, order: &Order) -> Result<(), InsertError> {
    db::orders::insert(&mut *tx, order).await?;
    db::order_events::insert(&mut *tx, &Event::created(order))
        .await
        .map_err(InsertError::Db)
}

async fn write(db: &MySqlPool, orders: Vec<Order>) -> Vec<Result<Order, InsertError>> {
    if orders.len() > 1 && write_group(db, &orders).await.is_ok() {
        return orders.into_iter().map(Ok).collect();
    }
    let mut written = Vec::with_capacity(orders.len());
    for order in orders {
        written.push(write_one(db, &order).await.map(|()| order));
    }
    written
}

async fn write_group(db: &MySqlPool, orders: &[Order]) -> Result<(), InsertError> {
    let events: Vec<Event> = orders.iter().map(Event::created).collect();
    let mut tx = db.begin().await?;
    db::orders::insert_many(&mut *tx, &orders.iter().collect::<Vec<_>>()).await?;
    db::order_events::insert_many(&mut *tx, &events.iter().collect::<Vec<_>>()).await?;
    tx.commit().await?;
    Ok(())
}

async fn write_one(db: &MySqlPool, order: &Order) -> Result<(), InsertError> {
    let mut tx = db.begin().await?;
    insert_one(&mut tx, order).await?;
    tx.commit().await?;
    Ok(())
}
