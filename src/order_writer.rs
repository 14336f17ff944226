//! Group commit for order writes. Orders created at the same moment are
//! written together (`batch`): one transaction, one multi-row `INSERT` into
//! `orders` and one into `order_events`, one commit, instead of a
//! transaction each. Status changes arriving together likewise: one locking
//! read of all their orders, each change decided in arrival order (two
//! changes to one order apply one after the other), one `UPDATE`, one
//! `INSERT` of their events, one commit. A refused change (a stale
//! `If-Match`, a transition the status machine forbids) is answered alone
//! and writes nothing.
//!
//! If a group fails (a duplicate reference, a deadlock, a lost connection)
//! it is written again one request at a time, each in its own transaction,
//! so each request gets its own answer and one bad request never fails
//! another.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use crate::batch::Batcher;
use crate::db;
use crate::db::orders::InsertError;
use crate::domain::{time, Event, Order, OrderStatus};
use crate::error::{ApiError, ApiResult};
use crate::principal::Principal;
use crate::signals::Signals;

/// At most this many orders per transaction. A valid order is at most
/// about 25 KB of text (100 parcels, 2,000 characters of notes), so a full
/// group stays far below any server's packet limit.
const MAX_GROUP: usize = 32;

/// Hands order writes to the group writers; cheap to clone.
#[derive(Clone)]
pub struct OrderWriter {
    creates: Batcher<Order, Result<Order, InsertError>>,
    changes: Batcher<StatusChange, ApiResult<Order>>,
}

/// A requested status change, checked for form but not yet against the order.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub order_id: Uuid,
    pub principal: Principal,
    pub target: OrderStatus,
    /// `If-Match`: the versions the caller accepts.
    pub expected: Option<Vec<u32>>,
    pub note: Option<String>,
    pub location: Option<String>,
}

impl OrderWriter {
    /// Starts the writers (within a Tokio runtime).
    pub fn start(db: MySqlPool, signals: Arc<Signals>) -> OrderWriter {
        let (pool, woken) = (db.clone(), signals.clone());
        let creates = Batcher::start(MAX_GROUP, move |orders| {
            let (db, signals) = (pool.clone(), woken.clone());
            async move {
                let written = write(&db, orders).await;
                signals.events_committed();
                written
            }
        });
        let changes = Batcher::start(MAX_GROUP, move |changes| {
            let (db, signals) = (db.clone(), signals.clone());
            async move {
                let written = write_changes(&db, changes).await;
                signals.events_committed();
                written
            }
        });
        OrderWriter { creates, changes }
    }

    /// Writes the order and its `order.created` event; returns the order
    /// once both are committed.
    pub async fn create(&self, order: Order) -> Result<Order, InsertError> {
        (self.creates.call(order).await)
            .unwrap_or_else(|| Err(InsertError::Db(sqlx::Error::PoolClosed)))
    }

    /// Applies the change and writes its event; returns the order as it now
    /// is, once committed.
    pub async fn change_status(&self, change: StatusChange) -> ApiResult<Order> {
        // Built only when needed: turning it into an `ApiError` logs it.
        (self.changes.call(change).await).unwrap_or_else(|| Err(sqlx::Error::PoolClosed.into()))
    }
}

/// Checks `change` against `order` (as the caller may see it) and applies
/// it: the status machine, `If-Match`, who may ask for what. Returns the
/// event to record; on error the order is untouched.
pub fn apply(order: &mut Order, change: &StatusChange) -> ApiResult<Event> {
    if !change.principal.can_see(order.customer_id) {
        return Err(ApiError::NotFound("order"));
    }
    if let Some(versions) = &change.expected {
        if !versions.contains(&order.version) {
            return Err(ApiError::PreconditionFailed(format!(
                "the order is at version {}, not the one in If-Match",
                order.version
            )));
        }
    }
    if matches!(change.principal, Principal::Customer(_)) && change.target != OrderStatus::Cancelled
    {
        return Err(ApiError::Forbidden(
            "customers may only move their orders to `cancelled`".into(),
        ));
    }
    let (previous, target) = (order.status, change.target);
    if target == previous {
        return Err(ApiError::conflict(
            "invalid-transition",
            format!("the order is already `{previous}`"),
        ));
    }
    if !previous.can_move_to(target) {
        return Err(ApiError::conflict(
            "invalid-transition",
            format!("cannot move an order from `{previous}` to `{target}`"),
        ));
    }
    order.status = target;
    order.version += 1;
    order.updated_at = time::now().max(order.updated_at);
    Ok(Event::status_changed(
        order,
        previous,
        change.note.clone(),
        change.location.clone(),
    ))
}

/// Locks the order, applies the change and writes it and its event, in the
/// caller's transaction: the path of a change that shares its transaction
/// (an idempotency key's claim), and of each change of a failed group.
pub async fn change_one(tx: &mut MySqlConnection, change: &StatusChange) -> ApiResult<Order> {
    let mut order = db::orders::find_for_update(&mut *tx, change.order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let event = apply(&mut order, change)?;
    db::orders::update_status(&mut *tx, &order).await?;
    db::order_events::insert(&mut *tx, &event).await?;
    Ok(order)
}

async fn write_changes(db: &MySqlPool, changes: Vec<StatusChange>) -> Vec<ApiResult<Order>> {
    if changes.len() > 1 {
        match change_group(db, &changes).await {
            Ok(answers) => return answers,
            Err(GroupFailed::AtCommit) => {
                let unknown = || Err(ApiError::Unavailable(OUTCOME_UNKNOWN));
                return changes.iter().map(|_| unknown()).collect();
            }
            Err(GroupFailed::BeforeCommit) => {}
        }
    }
    let mut answers = Vec::with_capacity(changes.len());
    for change in &changes {
        answers.push(change_alone(db, change).await);
    }
    answers
}

/// One transaction for the group; refused changes are answered in the
/// result and write nothing. Any database error fails the whole group.
async fn change_group(
    db: &MySqlPool,
    changes: &[StatusChange],
) -> Result<Vec<ApiResult<Order>>, GroupFailed> {
    let mut ids: Vec<Uuid> = changes.iter().map(|c| c.order_id).collect();
    ids.sort();
    ids.dedup();
    let mut tx = db.begin().await?;
    let mut orders: HashMap<Uuid, Order> = db::orders::find_many_for_update(&mut *tx, &ids)
        .await?
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    let mut events = vec![];
    let answers: Vec<ApiResult<Order>> = changes
        .iter()
        .map(|change| {
            let order = orders
                .get_mut(&change.order_id)
                .ok_or(ApiError::NotFound("order"))?;
            // A refused change leaves the order as it was.
            events.push(apply(order, change)?);
            Ok(order.clone())
        })
        .collect();
    let changed: Vec<&Order> = ids
        .iter()
        .filter_map(|id| orders.get(id))
        .filter(|o| events.iter().any(|e| e.data.order_id == o.id))
        .collect();
    if !changed.is_empty() {
        db::orders::update_statuses(&mut *tx, &changed).await?;
        db::order_events::insert_many(&mut *tx, &events.iter().collect::<Vec<_>>()).await?;
    }
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)?;
    Ok(answers)
}

async fn change_alone(db: &MySqlPool, change: &StatusChange) -> ApiResult<Order> {
    let mut tx = db.begin().await?;
    let order = change_one(&mut tx, change).await?;
    tx.commit().await?;
    Ok(order)
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
    if orders.len() > 1 {
        match write_group(db, &orders).await {
            Ok(()) => return orders.into_iter().map(Ok).collect(),
            Err(GroupFailed::AtCommit) => {
                let unknown = || InsertError::Db(sqlx::Error::Protocol(OUTCOME_UNKNOWN.into()));
                return orders.iter().map(|_| Err(unknown())).collect();
            }
            Err(GroupFailed::BeforeCommit) => {}
        }
    }
    let mut written = Vec::with_capacity(orders.len());
    for order in orders {
        written.push(write_one(db, &order).await.map(|()| order));
    }
    written
}

async fn write_group(db: &MySqlPool, orders: &[Order]) -> Result<(), GroupFailed> {
    let events: Vec<Event> = orders.iter().map(Event::created).collect();
    let mut tx = db.begin().await?;
    db::orders::insert_many(&mut *tx, &orders.iter().collect::<Vec<_>>()).await?;
    db::order_events::insert_many(&mut *tx, &events.iter().collect::<Vec<_>>()).await?;
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)
}

/// Why a group was not written.
enum GroupFailed {
    /// Nothing was written: each request may be written alone.
    BeforeCommit,
    /// The commit failed, so the group may or may not be written: writing
    /// it again could answer "duplicate" for an order that was created, so
    /// every request is told to retry (with its `Idempotency-Key`).
    AtCommit,
}

impl From<sqlx::Error> for GroupFailed {
    fn from(_: sqlx::Error) -> GroupFailed {
        GroupFailed::BeforeCommit
    }
}

impl From<InsertError> for GroupFailed {
    fn from(_: InsertError) -> GroupFailed {
        GroupFailed::BeforeCommit
    }
}

const OUTCOME_UNKNOWN: &str = "the connection failed during the commit; its outcome is unknown";

async fn write_one(db: &MySqlPool, order: &Order) -> Result<(), InsertError> {
    let mut tx = db.begin().await?;
    insert_one(&mut tx, order).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Address;

    fn order(customer: Uuid, status: OrderStatus, version: u32) -> Order {
        let address = Address {
            name: "A".into(),
            line1: "1 Road".into(),
            line2: None,
            city: "Rotterdam".into(),
            postal_code: "3011".into(),
            country: "NL".into(),
        };
        let now = time::now();
        Order {
            id: Uuid::now_v7(),
            customer_id: customer,
            reference: None,
            status,
            pickup: address.clone(),
            delivery: address,
            parcels: vec![],
            notes: None,
            version,
            created_at: now,
            updated_at: now,
        }
    }

    /// Who asks, the order's customer, from, to, `If-Match`, and the
    /// refusal's status (`None`: applied).
    type Case = (
        Principal,
        Uuid,
        OrderStatus,
        OrderStatus,
        Option<Vec<u32>>,
        Option<u16>,
    );

    #[test]
    fn a_change_applies_only_when_every_check_passes() {
        use OrderStatus::*;
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        let customer = Principal::Customer(own);
        let operator = Principal::Operator;
        let cases: [Case; 9] = [
            (operator, own, Pending, Confirmed, None, None),
            (operator, own, Pending, Confirmed, Some(vec![3]), None),
            (operator, own, Pending, Confirmed, Some(vec![2]), Some(412)),
            (operator, own, Pending, Pending, None, Some(409)),
            (operator, own, Delivered, Pending, None, Some(409)),
            (customer, own, Pending, Cancelled, None, None),
            (customer, own, Pending, Confirmed, None, Some(403)),
            (customer, other, Pending, Cancelled, None, Some(404)),
            // Not seeing the order comes before every other check.
            (
                customer,
                other,
                Pending,
                Confirmed,
                Some(vec![9]),
                Some(404),
            ),
        ];
        for (n, (principal, owner, from, to, expected, refused)) in cases.into_iter().enumerate() {
            let before = order(owner, from, 3);
            let mut after = before.clone();
            let change = StatusChange {
                order_id: before.id,
                principal,
                target: to,
                expected,
                note: None,
                location: None,
            };
            match (apply(&mut after, &change), refused) {
                (Ok(event), None) => {
                    assert_eq!((after.status, after.version), (to, 4), "case {n}");
                    assert_eq!(event.data.sequence, 4, "case {n}");
                }
                (Err(e), Some(status)) => {
                    assert_eq!(e.status().as_u16(), status, "case {n}: {e}");
                    assert_eq!(
                        after, before,
                        "case {n}: a refused change altered the order"
                    );
                }
                (answer, expected) => panic!("case {n}: {answer:?}, expected {expected:?}"),
            }
        }
    }
}
