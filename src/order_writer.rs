//! Group commit for order writes. Orders created at the same moment are
//! written together (`batch`): one transaction, one multi-row `INSERT` into
//! `orders` and one into `order_events`, one commit, instead of a
//! transaction each. Status changes arriving together likewise: one locking
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use crate::batch::{Batcher, Group, NotDone};
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
    creates: Batcher<Order, ApiResult<Order>>,
    /// `None`: the order is held by another transaction; the caller makes
    /// the change on its own.
    changes: Batcher<StatusChange, Option<ApiResult<Order>>>,
    db: MySqlPool,
    signals: Arc<Signals>,
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
        let (pool_for_alone, signals_for_alone) = (db.clone(), signals.clone());
        let (pool, woken) = (db.clone(), signals.clone());
        let creates = Batcher::start(MAX_GROUP, move |orders, group| {
            let (db, signals) = (pool.clone(), woken.clone());
            async move {
                let written = write(&db, orders, &group).await;
                signals.events_committed();
                written
            }
        });
        let changes = Batcher::start(MAX_GROUP, move |changes, group| {
            let (db, signals) = (db.clone(), signals.clone());
            async move {
                let written = write_changes(&db, changes, &group).await;
                signals.events_committed();
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
        self.creates.call(order).await.unwrap_or_else(not_done)
    }

    /// Applies the change and writes its event; returns the order as it now
    /// is, once committed.
    pub async fn change_status(&self, change: StatusChange) -> ApiResult<Order> {
        match self.changes.call(change.clone()).await {
            Ok(Some(answer)) => answer,
            // Its order is held by another transaction: waiting for that
            // lock here, not in a group task, holds up no other change.
            Ok(None) => {
                let mut tx = self.db.begin().await?;
                let order = change_one(&mut tx, &change).await?;
                tx.commit().await?;
                self.signals.events_committed();
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

/// The answer to a failed insert of `order`.
pub fn insert_error(e: InsertError, order: &Order) -> ApiError {
    match e {
        InsertError::DuplicateReference => duplicate(order),
        InsertError::Db(e) => e.into(),
    }
}

fn duplicate(order: &Order) -> ApiError {
    ApiError::conflict(
        "duplicate-reference",
        format!(
            "an order with reference {:?} already exists",
            order.reference.as_deref().unwrap_or_default()
        ),
    )
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
/// (an idempotency key's claim).
pub async fn change_one(tx: &mut MySqlConnection, change: &StatusChange) -> ApiResult<Order> {
    let mut order = db::orders::find_for_update(&mut *tx, change.order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let event = apply(&mut order, change)?;
    db::orders::update_status(&mut *tx, &order).await?;
    db::order_events::insert(&mut *tx, &event).await?;
    Ok(order)
}

/// What happened to a group's transaction.
enum GroupFailed {
    /// Nothing was written, for a reason that is no one request's.
    BeforeCommit(sqlx::Error),
    /// Nothing was written: an order's reference is taken.
    Duplicate,
    /// Nothing was written: these callers left before the commit.
    CallersGone(Vec<usize>),
    /// The commit failed, so the group may or may not be written.
    AtCommit,
}

impl From<sqlx::Error> for GroupFailed {
    fn from(e: sqlx::Error) -> GroupFailed {
        GroupFailed::BeforeCommit(e)
    }
}

impl From<InsertError> for GroupFailed {
    fn from(e: InsertError) -> GroupFailed {
        match e {
            InsertError::DuplicateReference => GroupFailed::Duplicate,
            InsertError::Db(e) => GroupFailed::BeforeCommit(e),
        }
    }
}

/// A group that loses a race (deadlock, lock wait) is written again, its
/// callers still waiting, this many times before they are answered 503.
const CONFLICT_RETRIES: u32 = 5;

/// A few milliseconds, growing, with jitter so that two instances' groups
/// that deadlocked do not meet again.
fn conflict_pause(conflicts: u32) -> std::time::Duration {
    let base = 5 * u64::from(conflicts);
    std::time::Duration::from_millis(base + rand::random_range(0..=base))
}

/// Answers for a group's items, filled in as they are settled.
struct Answers(Vec<Option<ApiResult<Order>>>);

impl Answers {
    fn new(count: usize) -> Answers {
        Answers((0..count).map(|_| None).collect())
    }

    fn set(&mut self, i: usize, answer: ApiResult<Order>) {
        self.0[i] = Some(answer);
    }

    /// Every item left is answered with the failure of its group.
    fn fail(&mut self, left: &mut Vec<usize>, failed: GroupFailed) {
        let unexpected = match &failed {
            GroupFailed::BeforeCommit(e) if !crate::error::is_transient_error(e) => {
                Some(e.to_string())
            }
            GroupFailed::Duplicate | GroupFailed::CallersGone(_) => {
                Some("unexpected outcome".into())
            }
            _ => None,
        };
        if let Some(error) = unexpected {
            tracing::error!(%error, count = left.len(), "writing a group failed");
        }
        for i in left.drain(..) {
            let answer = match &failed {
                GroupFailed::AtCommit => ApiError::OutcomeUnknown,
                GroupFailed::BeforeCommit(e) if crate::error::is_transient_error(e) => {
                    ApiError::Unavailable(
                        "the database is busy; nothing was written, retry shortly",
                    )
                }
                _ => ApiError::Internal,
            };
            self.set(i, Err(answer));
        }
    }

    fn into_vec(self) -> Vec<ApiResult<Order>> {
        self.0
            .into_iter()
            .map(|a| a.unwrap_or(Err(ApiError::Unavailable("the request was abandoned"))))
            .collect()
    }
}

/// Writes the group; see the module doc for what each failure answers.
async fn write(db: &MySqlPool, orders: Vec<Order>, group: &Group) -> Vec<ApiResult<Order>> {
    let mut answers = Answers::new(orders.len());
    let mut left: Vec<usize> = (0..orders.len()).collect();
    let mut conflicts = 0;
    let mut duplicates_found = false;
    while !left.is_empty() {
        match write_group(db, &orders, &left, group).await {
            Ok(()) => {
                for i in left.drain(..) {
                    answers.set(i, Ok(orders[i].clone()));
                }
            }
            Err(GroupFailed::CallersGone(gone)) => left.retain(|i| !gone.contains(i)),
            Err(GroupFailed::Duplicate) if !duplicates_found => {
                duplicates_found = true;
                match taken_references(db, &orders, &left).await {
                    Ok(taken) => {
                        for &i in &taken {
                            answers.set(i, Err(duplicate(&orders[i])));
                        }
                        left.retain(|i| !taken.contains(i));
                    }
                    Err(e) => answers.fail(&mut left, GroupFailed::BeforeCommit(e)),
                }
            }
            // Taken again meanwhile: each alone, so each gets its own answer.
            Err(GroupFailed::Duplicate) => {
                for i in left.drain(..) {
                    let written = write_one(db, &orders[i], group, i).await;
                    answers.set(i, written.map(|()| orders[i].clone()));
                }
            }
            Err(GroupFailed::BeforeCommit(e))
                if crate::error::is_retryable(&e) && conflicts < CONFLICT_RETRIES =>
            {
                conflicts += 1;
                tracing::info!(error = %e, count = left.len(), "a group of new orders met a conflict; writing it again");
                tokio::time::sleep(conflict_pause(conflicts)).await;
            }
            Err(failed) => {
                if let GroupFailed::BeforeCommit(e) = &failed {
                    tracing::warn!(error = %e, count = left.len(), "writing a group of new orders failed; none was written");
                }
                answers.fail(&mut left, failed);
            }
        }
    }
    answers.into_vec()
}

async fn write_group(
    db: &MySqlPool,
    orders: &[Order],
    indexes: &[usize],
    group: &Group,
) -> Result<(), GroupFailed> {
    let chosen: Vec<&Order> = indexes.iter().map(|&i| &orders[i]).collect();
    let events: Vec<Event> = chosen.iter().map(|o| Event::created(o)).collect();
    let mut tx = db.begin().await?;
    db::orders::insert_many(&mut *tx, &chosen).await?;
    db::order_events::insert_many(&mut *tx, &events.iter().collect::<Vec<_>>()).await?;
    group.hold(indexes).map_err(GroupFailed::CallersGone)?;
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)
}

/// The orders among `indexes` whose reference is taken, by an order
/// already written or by an earlier one of the group.
async fn taken_references(
    db: &MySqlPool,
    orders: &[Order],
    indexes: &[usize],
) -> sqlx::Result<Vec<usize>> {
    let with_reference: Vec<(Uuid, &str)> = indexes
        .iter()
        .filter_map(|&i| {
            orders[i]
                .reference
                .as_deref()
                .map(|r| (orders[i].customer_id, r))
        })
        .collect();
    let mut taken: HashSet<(Uuid, String)> = db::orders::existing_references(db, &with_reference)
        .await?
        .into_iter()
        .collect();
    let mut culprits = vec![];
    for &i in indexes {
        let Some(reference) = &orders[i].reference else {
            continue;
        };
        if !taken.insert((orders[i].customer_id, reference.clone())) {
            culprits.push(i);
        }
    }
    Ok(culprits)
}

/// Writes an order and its first event in the caller's transaction: the
/// path of a creation that must share its transaction (an idempotency key's
/// claim).
pub async fn insert_one(tx: &mut MySqlConnection, order: &Order) -> Result<(), InsertError> {
    db::orders::insert(&mut *tx, order).await?;
    db::order_events::insert(&mut *tx, &Event::created(order))
        .await
        .map_err(InsertError::Db)
}

async fn write_one(db: &MySqlPool, order: &Order, group: &Group, i: usize) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    insert_one(&mut tx, order)
        .await
        .map_err(|e| insert_error(e, order))?;
    if group.hold(&[i]).is_err() {
        return Err(ApiError::Unavailable("the request was abandoned"));
    }
    tx.commit().await.map_err(|_| ApiError::OutcomeUnknown)
}

/// Applies the group's changes; see the module doc for the failures.
async fn write_changes(
    db: &MySqlPool,
    changes: Vec<StatusChange>,
    group: &Group,
) -> Vec<Option<ApiResult<Order>>> {
    let mut answers = Answers::new(changes.len());
    // Changes to orders another transaction holds: their callers make them
    // (`OrderWriter::change_status`), so that no group task waits on a lock.
    let mut held_elsewhere = vec![];
    let mut left: Vec<usize> = (0..changes.len()).collect();
    let mut conflicts = 0;
    while !left.is_empty() {
        match change_group(db, &changes, &left, group).await {
            Ok(decided) => {
                for (i, answer) in left.drain(..).zip(decided) {
                    match answer {
                        Some(answer) => answers.set(i, answer),
                        None => held_elsewhere.push(i),
                    }
                }
            }
            Err(GroupFailed::CallersGone(gone)) => left.retain(|i| !gone.contains(i)),
            Err(GroupFailed::BeforeCommit(e))
                if crate::error::is_retryable(&e) && conflicts < CONFLICT_RETRIES =>
            {
                conflicts += 1;
                tracing::info!(error = %e, count = left.len(), "a group of status changes met a conflict; writing it again");
                tokio::time::sleep(conflict_pause(conflicts)).await;
            }
            Err(failed) => {
                if let GroupFailed::BeforeCommit(e) = &failed {
                    tracing::warn!(error = %e, count = left.len(), "writing a group of status changes failed; none was written");
                }
                answers.fail(&mut left, failed);
            }
        }
    }
    let mut answers: Vec<Option<ApiResult<Order>>> =
        answers.into_vec().into_iter().map(Some).collect();
    for i in held_elsewhere {
        answers[i] = None;
    }
    answers
}

/// One transaction for the changes at `indexes`; refused changes are
/// answered in the result and write nothing. A change to an order another
/// transaction holds is left out (`None`): one locked order must not hold
/// up the group.
async fn change_group(
    db: &MySqlPool,
    changes: &[StatusChange],
    indexes: &[usize],
    group: &Group,
) -> Result<Vec<Option<ApiResult<Order>>>, GroupFailed> {
    let mut ids: Vec<Uuid> = indexes.iter().map(|&i| changes[i].order_id).collect();
    ids.sort();
    ids.dedup();
    let mut tx = db.begin().await?;
    let mut orders: HashMap<Uuid, Order> = db::orders::lock_free_ones(&mut *tx, &ids)
        .await?
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    let absent: Vec<Uuid> = ids
        .iter()
        .filter(|id| !orders.contains_key(id))
        .copied()
        .collect();
    let held_elsewhere: HashSet<Uuid> = if absent.is_empty() {
        HashSet::new()
    } else {
        db::orders::existing(&mut *tx, &absent)
            .await?
            .into_iter()
            .collect()
    };
    let mut events = vec![];
    let mut applied = vec![];
    let answers: Vec<Option<ApiResult<Order>>> = indexes
        .iter()
        .map(|&i| {
            let change = &changes[i];
            if held_elsewhere.contains(&change.order_id) {
                return None;
            }
            let Some(order) = orders.get_mut(&change.order_id) else {
                return Some(Err(ApiError::NotFound("order")));
            };
            // A refused change leaves the order as it was.
            Some(apply(order, change).map(|event| {
                events.push(event);
                applied.push(i);
                order.clone()
            }))
        })
        .collect();
    if applied.is_empty() {
        return Ok(answers);
    }
    let changed: Vec<&Order> = ids
        .iter()
        .filter_map(|id| orders.get(id))
        .filter(|o| events.iter().any(|e| e.data.order_id == o.id))
        .collect();
    db::orders::update_statuses(&mut *tx, &changed).await?;
    db::order_events::insert_many(&mut *tx, &events.iter().collect::<Vec<_>>()).await?;
    group.hold(&applied).map_err(GroupFailed::CallersGone)?;
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)?;
    Ok(answers)
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
