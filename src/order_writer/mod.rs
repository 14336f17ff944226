//! Group commit for order writes. Orders created at the same moment are
//! written together (`batch`): one transaction, one multi-row `INSERT` into
//! `orders` and one into `order_events`, one commit, instead of a
//! transaction each. Changes arriving together (status changes, tracking
//! updates, amendments) likewise: one locking
//! read of their orders (`SKIP LOCKED`: a change to an order another
//! transaction holds is handed back to its caller, which waits for that
//! lock on its own, so one locked order holds up no group), each change
//! decided in arrival order (two changes to one order apply one after the
//! other), one `UPDATE`, one `INSERT` of their events, one commit. A
//! refused change (a stale `If-Match`, a transition the status machine
//! forbids) is answered alone and writes nothing.
//!
//! Answers are final (SPEC §14). A group commits only if every caller it
//! writes for is still waiting (`Group::hold`); otherwise it is written
//! again without those gone. A failure that says nothing about any one
//! request (the database unreachable, a pool timeout, contention twice)
//! answers the whole group 503, not written. Only a duplicate reference is
//! about one order: those orders are found and answered 409, and the rest
//! written as a group again. A commit whose answer was lost is answered
//! `outcome-unknown`.

mod changes;
mod creates;
mod group;

use std::sync::Arc;

use sqlx::MySqlPool;

use crate::batch::{Batcher, NotDone};
use crate::domain::Order;
use crate::error::{ApiError, ApiResult};
use crate::signals::Signals;

use changes::write_changes;
pub use changes::{apply, change_one, ChangeKind, OrderChange};
use creates::write;
pub use creates::{insert_error, insert_one};

/// At most this many orders per transaction. A valid order is at most
/// about 25 KB of text (100 parcels, 2,000 characters of notes), so a full
/// group stays far below any server's packet limit.
const MAX_GROUP: usize = 32;

/// Hands order writes to the group writers; cheap to clone.
#[derive(Clone)]
pub struct OrderWriter {
    /// Each new order with the trace of the request that places it.
    creates: Batcher<(Order, Option<String>), ApiResult<Order>>,
    /// `Err(change)`: its order is held by another transaction; the
    /// change comes back and its caller makes it on its own.
    changes: Batcher<OrderChange, Result<ApiResult<Order>, OrderChange>>,
    db: MySqlPool,
    signals: Arc<Signals>,
}

impl OrderWriter {
    /// Starts the writers (within a Tokio runtime).
    pub fn start(db: MySqlPool, signals: Arc<Signals>) -> OrderWriter {
        let (pool_for_alone, signals_for_alone) = (db.clone(), signals.clone());
        let (pool, woken) = (db.clone(), signals.clone());
        let creates = Batcher::start(MAX_GROUP, move |orders, group| {
            let (db, signals) = (pool.clone(), woken.clone());
            async move {
                let mut committed = vec![];
                let written = write(&db, orders, &group, &mut committed).await;
                signals.events_committed(committed);
                written
            }
        });
        let changes = Batcher::start(MAX_GROUP, move |changes, group| {
            let (db, signals) = (db.clone(), signals.clone());
            async move {
                let mut committed = vec![];
                let written = write_changes(&db, changes, &group, &mut committed).await;
                signals.events_committed(committed);
                written
            }
        });
        OrderWriter {
            creates,
            changes,
            db: pool_for_alone,
            signals: signals_for_alone,
        }
    }

    /// Writes the order and its `order.created` event; returns the order
    /// once both are committed.
    pub async fn create(&self, order: Order) -> ApiResult<Order> {
        let trace = crate::telemetry::current_traceparent();
        self.creates
            .call((order, trace))
            .await
            .unwrap_or_else(not_done)
    }

    /// Applies the change and writes its event; returns the order as it now
    /// is, once committed.
    pub async fn change(&self, change: OrderChange) -> ApiResult<Order> {
        match self.changes.call(change).await {
            Ok(Ok(answer)) => answer,
            // Its order is held by another transaction: waiting for that
            // lock here, not in a group task, holds up no other change.
            Ok(Err(change)) => {
                let mut tx = self.db.begin().await?;
                let (order, events) = change_one(&mut tx, &change).await?;
                tx.commit().await?;
                self.signals.events_committed(events);
                Ok(order)
            }
            Err(why) => not_done(why),
        }
    }
}

fn not_done(why: NotDone) -> ApiResult<Order> {
    Err(match why {
        NotDone::Overloaded => ApiError::Unavailable("the server is overloaded; retry shortly"),
        NotDone::Failed => ApiError::Unavailable("the server is shutting down; retry shortly"),
    })
}
