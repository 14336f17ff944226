//! Status changes in groups: one locking read of their orders, each change
//! decided in arrival order by `apply`, one `UPDATE`, one `INSERT` of their
//! events, one commit.

use std::collections::{HashMap, HashSet};

use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use super::group::{conflict_pause, Answers, GroupFailed, CONFLICT_RETRIES};
use crate::batch::Group;
use crate::db;
use crate::domain::{time, Event, Order, OrderStatus};
use crate::error::{ApiError, ApiResult};
use crate::principal::Principal;

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

/// Applies the group's changes; see the module doc for the failures.
pub(super) async fn write_changes(
    db: &MySqlPool,
    changes: Vec<StatusChange>,
    group: &Group,
) -> Vec<Result<ApiResult<Order>, StatusChange>> {
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
    // Each held-elsewhere change goes back to its caller, moved, not copied.
    let mut changes: Vec<Option<StatusChange>> = changes.into_iter().map(Some).collect();
    let mut answers: Vec<Result<ApiResult<Order>, StatusChange>> =
        answers.into_vec().into_iter().map(Ok).collect();
    for i in held_elsewhere {
        if let Some(change) = changes[i].take() {
            answers[i] = Err(change);
        }
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
