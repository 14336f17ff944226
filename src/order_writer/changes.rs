//! Changes to orders in groups (status changes, tracking updates,
//! amendments): one locking read of their orders, each change decided in
//! arrival order by `apply`, one `UPDATE`, one `INSERT` of their events,
//! one commit.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use super::group::{conflict_pause, Answers, GroupFailed, CONFLICT_RETRIES};
use crate::batch::Group;
use crate::db;
use crate::db::order_events::OutboxEvent;
use crate::domain::event::Change;
use crate::domain::order::Amendment;
use crate::domain::order_status::list_of;
use crate::domain::{time, Event, EventType, Order, OrderStatus};
use crate::error::{ApiError, ApiResult};
use crate::principal::Principal;
use crate::sequencer;

/// A requested change to an order, checked for form but not yet against
/// the order.
#[derive(Debug, Clone)]
pub struct OrderChange {
    pub order_id: Uuid,
    pub principal: Principal,
    /// `If-Match`: the versions the caller accepts.
    pub expected: Option<Vec<u32>>,
    pub kind: ChangeKind,
    /// The trace of the request that asks for it (`telemetry`).
    pub trace: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ChangeKind {
    /// A move through the status machine.
    Status {
        target: OrderStatus,
        note: Option<String>,
        location: Option<String>,
    },
    /// Where the parcel is, and when it should arrive (operator only).
    Tracking {
        location: String,
        note: Option<String>,
        /// `None`: keep the eta; `Some(None)`: clear it.
        eta: Option<Option<DateTime<Utc>>>,
    },
    /// New contents before pickup.
    Amend(Amendment),
}

/// Checks `change` against `order` (as the caller may see it) and applies
/// it: who may ask for what, `If-Match`, the status machine. Returns the
/// event to record, or `None` for an amendment that changes nothing (the
/// order keeps its version); on error the order is untouched.
pub fn apply(order: &mut Order, change: &OrderChange) -> ApiResult<Option<Event>> {
    if !change.principal.can_see(order.customer_id) {
        return Err(ApiError::NotFound("order"));
    }
    let customer = matches!(change.principal, Principal::Customer(_));
    match &change.kind {
        ChangeKind::Status { target, .. } if customer && *target != OrderStatus::Cancelled => {
            return Err(ApiError::Forbidden(
                "customers may only move their orders to `cancelled`".into(),
            ));
        }
        ChangeKind::Tracking { .. } if customer => {
            return Err(ApiError::Forbidden(
                "tracking updates come from the operator".into(),
            ));
        }
        _ => {}
    }
    if let Some(versions) = &change.expected {
        if !versions.contains(&order.version) {
            return Err(ApiError::PreconditionFailed(format!(
                "the order is at version {}, not the one in If-Match",
                order.version
            )));
        }
    }
    let (event_type, detail) = match &change.kind {
        ChangeKind::Status {
            target,
            note,
            location,
        } => {
            let (previous, target) = (order.status, *target);
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
            if location.is_some() {
                order.last_location.clone_from(location);
            }
            let detail = Change::Status {
                previous_status: Some(previous),
                status: target,
                note: note.clone(),
                location: location.clone(),
            };
            (EventType::OrderStatusChanged, detail)
        }
        ChangeKind::Tracking {
            location,
            note,
            eta,
        } => {
            refuse_unless(order.status, &OrderStatus::TRACKABLE, "tracking updates")?;
            let previous_eta = order.eta;
            if let Some(eta) = eta {
                order.eta = *eta;
            }
            order.last_location = Some(location.clone());
            let detail = Change::Tracking {
                status: order.status,
                location: location.clone(),
                note: note.clone(),
                eta: order.eta,
                previous_eta,
            };
            (EventType::OrderTrackingUpdated, detail)
        }
        ChangeKind::Amend(amendment) => {
            refuse_unless(order.status, &OrderStatus::AMENDABLE, "amendments")?;
            let (changed, previous) = amendment.apply(order);
            if changed.is_empty() {
                return Ok(None);
            }
            let detail = Change::Amended {
                status: order.status,
                changed,
                previous,
            };
            (EventType::OrderUpdated, detail)
        }
    };
    order.version += 1;
    order.updated_at = time::now().max(order.updated_at);
    Ok(Some(
        Event::of(event_type, order, detail).traced(change.trace.clone()),
    ))
}

/// 409 `wrong-status` unless the order is in one of `allowed`.
fn refuse_unless(status: OrderStatus, allowed: &[OrderStatus], what: &str) -> ApiResult<()> {
    if allowed.contains(&status) {
        return Ok(());
    }
    Err(ApiError::conflict(
        "wrong-status",
        format!(
            "the order is `{status}`; {what} are accepted while it is {}",
            list_of(allowed)
        ),
    ))
}

/// Locks the order, applies the change and writes it and its event, in the
/// caller's transaction: the path of a change that shares its transaction
/// (an idempotency key's claim). The event written holds the feed clock:
/// commit soon (`sequencer::record`).
pub async fn change_one(
    tx: &mut MySqlConnection,
    change: &OrderChange,
) -> ApiResult<(Order, Vec<OutboxEvent>)> {
    let mut order = db::orders::find_for_update(&mut *tx, change.order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let mut recorded = vec![];
    if let Some(event) = apply(&mut order, change)? {
        let amended = event.event_type == EventType::OrderUpdated;
        db::orders::update_many(&mut *tx, &[&order], amended).await?;
        recorded = sequencer::record(&mut *tx, &[&event]).await?;
    }
    Ok((order, recorded))
}

/// Applies the group's changes; see the module doc for the failures. The
/// events written are added to `committed`.
pub(super) async fn write_changes(
    db: &MySqlPool,
    changes: Vec<OrderChange>,
    group: &Group,
    committed: &mut Vec<OutboxEvent>,
) -> Vec<Result<ApiResult<Order>, OrderChange>> {
    let mut answers = Answers::new(changes.len());
    // Changes to orders another transaction holds: their callers make them
    // (`OrderWriter::change_status`), so that no group task waits on a lock.
    let mut held_elsewhere = vec![];
    let mut left: Vec<usize> = (0..changes.len()).collect();
    let mut conflicts = 0;
    while !left.is_empty() {
        match change_group(db, &changes, &left, group).await {
            Ok((decided, recorded)) => {
                committed.extend(recorded);
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
    let mut changes: Vec<Option<OrderChange>> = changes.into_iter().map(Some).collect();
    let mut answers: Vec<Result<ApiResult<Order>, OrderChange>> =
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
    changes: &[OrderChange],
    indexes: &[usize],
    group: &Group,
) -> Result<(Vec<Option<ApiResult<Order>>>, Vec<OutboxEvent>), GroupFailed> {
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
                if let Some(event) = event {
                    events.push(event);
                    applied.push(i);
                }
                order.clone()
            }))
        })
        .collect();
    if applied.is_empty() {
        return Ok((answers, vec![]));
    }
    let changed: Vec<&Order> = ids
        .iter()
        .filter_map(|id| orders.get(id))
        .filter(|o| events.iter().any(|e| e.data.order_id == o.id))
        .collect();
    let amended = events
        .iter()
        .any(|e| e.event_type == EventType::OrderUpdated);
    db::orders::update_many(&mut *tx, &changed, amended).await?;
    let recorded = sequencer::record(&mut tx, &events.iter().collect::<Vec<_>>()).await?;
    group.hold(&applied).map_err(GroupFailed::CallersGone)?;
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)?;
    Ok((answers, recorded))
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
            eta: None,
            last_location: None,
            version,
            created_at: now,
            updated_at: now,
        }
    }

    fn status(target: OrderStatus) -> ChangeKind {
        ChangeKind::Status {
            target,
            note: None,
            location: Some("Rotterdam hub".into()),
        }
    }

    fn tracking() -> ChangeKind {
        ChangeKind::Tracking {
            location: "Antwerp depot".into(),
            note: None,
            eta: Some(Some(time::now())),
        }
    }

    fn amend(notes: &str) -> ChangeKind {
        ChangeKind::Amend(Amendment {
            delivery: None,
            parcels: None,
            notes: Some(Some(notes.into())),
        })
    }

    /// Who asks, the order's customer, its status, the change, `If-Match`,
    /// and the answer: `Ok(true)` applied with an event, `Ok(false)`
    /// nothing to change, `Err(status)` refused.
    type Case = (
        Principal,
        Uuid,
        OrderStatus,
        ChangeKind,
        Option<Vec<u32>>,
        Result<bool, u16>,
    );

    #[test]
    fn a_change_applies_only_when_every_check_passes() {
        use OrderStatus::*;
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        let customer = Principal::Customer(own);
        let operator = Principal::Operator;
        let cases: Vec<Case> = vec![
            (operator, own, Pending, status(Confirmed), None, Ok(true)),
            (
                operator,
                own,
                Pending,
                status(Confirmed),
                Some(vec![3]),
                Ok(true),
            ),
            (
                operator,
                own,
                Pending,
                status(Confirmed),
                Some(vec![2]),
                Err(412),
            ),
            (operator, own, Pending, status(Pending), None, Err(409)),
            (operator, own, Delivered, status(Pending), None, Err(409)),
            (customer, own, Pending, status(Cancelled), None, Ok(true)),
            (customer, own, Pending, status(Confirmed), None, Err(403)),
            (customer, other, Pending, status(Cancelled), None, Err(404)),
            // Not seeing the order comes before every other check.
            (
                customer,
                other,
                Pending,
                status(Confirmed),
                Some(vec![9]),
                Err(404),
            ),
            // Tracking: the operator's, while the order is on its way.
            (operator, own, InTransit, tracking(), None, Ok(true)),
            (
                operator,
                own,
                Confirmed,
                tracking(),
                Some(vec![3]),
                Ok(true),
            ),
            (operator, own, Exception, tracking(), None, Ok(true)),
            (
                operator,
                own,
                InTransit,
                tracking(),
                Some(vec![2]),
                Err(412),
            ),
            (operator, own, Pending, tracking(), None, Err(409)),
            (operator, own, Delivered, tracking(), None, Err(409)),
            (operator, own, Cancelled, tracking(), None, Err(409)),
            (customer, own, InTransit, tracking(), None, Err(403)),
            (customer, other, InTransit, tracking(), None, Err(404)),
            // Amendments: before pickup; the same value is no change.
            (customer, own, Pending, amend("Ring twice"), None, Ok(true)),
            (
                operator,
                own,
                Confirmed,
                amend("Ring twice"),
                None,
                Ok(true),
            ),
            (customer, own, Pending, amend("as before"), None, Ok(false)),
            (
                customer,
                own,
                Pending,
                amend("as before"),
                Some(vec![2]),
                Err(412),
            ),
            (customer, own, PickedUp, amend("Ring twice"), None, Err(409)),
            (
                customer,
                own,
                Cancelled,
                amend("Ring twice"),
                None,
                Err(409),
            ),
            (
                customer,
                other,
                Pending,
                amend("Ring twice"),
                None,
                Err(404),
            ),
        ];
        for (n, (principal, owner, from, kind, expected, answer)) in cases.into_iter().enumerate() {
            let mut before = order(owner, from, 3);
            before.notes = Some("as before".into());
            let mut after = before.clone();
            let change = OrderChange {
                order_id: before.id,
                principal,
                expected,
                kind,
                trace: None,
            };
            match (apply(&mut after, &change), answer) {
                (Ok(Some(event)), Ok(true)) => {
                    assert_eq!(after.version, 4, "case {n}");
                    assert_eq!(event.data.sequence, 4, "case {n}");
                    assert_eq!(event.data.order, after, "case {n}");
                }
                (Ok(None), Ok(false)) => assert_eq!(after, before, "case {n}"),
                (Err(e), Err(status)) => {
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

    #[test]
    fn each_kind_records_what_it_changed() {
        let mut order = order(Uuid::now_v7(), OrderStatus::InTransit, 3);
        let order_id = order.id;
        let change = |kind| OrderChange {
            order_id,
            principal: Principal::Operator,
            expected: None,
            kind,
            trace: None,
        };
        let event = apply(&mut order, &change(tracking())).unwrap().unwrap();
        assert_eq!(event.event_type, EventType::OrderTrackingUpdated);
        assert_eq!(order.last_location.as_deref(), Some("Antwerp depot"));
        let Change::Tracking {
            previous_eta,
            eta: now_eta,
            ..
        } = event.data.change
        else {
            panic!("{:?}", event.data.change);
        };
        assert_eq!((previous_eta, now_eta.is_some()), (None, true));
        // Leaving `eta` out keeps it; `null` clears it.
        let keep = ChangeKind::Tracking {
            location: "Ghent".into(),
            note: None,
            eta: None,
        };
        apply(&mut order, &change(keep)).unwrap();
        assert!(order.eta.is_some());
        let clear = ChangeKind::Tracking {
            location: "Ghent".into(),
            note: None,
            eta: Some(None),
        };
        let event = apply(&mut order, &change(clear)).unwrap().unwrap();
        assert_eq!(order.eta, None);
        assert!(matches!(
            event.data.change,
            Change::Tracking {
                eta: None,
                previous_eta: Some(_),
                ..
            }
        ));
        // A status change with a location moves `last_location`; without, keeps it.
        apply(&mut order, &change(status(OrderStatus::OutForDelivery))).unwrap();
        assert_eq!(order.last_location.as_deref(), Some("Rotterdam hub"));

        let mut pending = self::order(order.customer_id, OrderStatus::Pending, 1);
        let mut parcels = pending.parcels.clone();
        parcels.push(crate::domain::Parcel {
            weight_grams: 5,
            length_mm: 5,
            width_mm: 5,
            height_mm: 5,
        });
        let amendment = Amendment {
            delivery: Some(pending.delivery.clone()),
            parcels: Some(parcels),
            notes: Some(Some("Back door".into())),
        };
        let change = OrderChange {
            order_id: pending.id,
            principal: Principal::Customer(pending.customer_id),
            expected: None,
            kind: ChangeKind::Amend(amendment),
            trace: None,
        };
        let event = apply(&mut pending, &change).unwrap().unwrap();
        let Change::Amended {
            changed, previous, ..
        } = event.data.change
        else {
            panic!("{:?}", event.data.change);
        };
        assert_eq!(
            changed,
            ["notes", "parcels"],
            "the same delivery is no change"
        );
        assert_eq!(previous["notes"], serde_json::Value::Null);
        assert_eq!(previous["parcels"], serde_json::json!([]));
    }
}
