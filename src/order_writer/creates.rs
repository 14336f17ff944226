//! New orders in groups: one multi-row `INSERT` into `orders` and one into
//! `order_events`, one commit; a duplicate reference is answered alone.

use std::collections::HashSet;

use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use super::group::{conflict_pause, Answers, GroupFailed, CONFLICT_RETRIES};
use crate::batch::Group;
use crate::db;
use crate::db::order_events::OutboxEvent;
use crate::db::orders::InsertError;
use crate::domain::{Event, Order};
use crate::error::{ApiError, ApiResult};
use crate::sequencer;

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

/// Writes the group; see the module doc for what each failure answers.
/// The events written are added to `committed`.
pub(super) async fn write(
    db: &MySqlPool,
    orders: Vec<(Order, Option<String>)>,
    group: &Group,
    committed: &mut Vec<OutboxEvent>,
) -> Vec<ApiResult<Order>> {
    let (orders, traces): (Vec<Order>, Vec<Option<String>>) = orders.into_iter().unzip();
    let mut answers = Answers::new(orders.len());
    let mut left: Vec<usize> = (0..orders.len()).collect();
    let mut conflicts = 0;
    let mut duplicates_found = false;
    while !left.is_empty() {
        match write_group(db, &orders, &traces, &left, group).await {
            Ok(events) => {
                committed.extend(events);
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
                    let written = write_one(db, &orders[i], &traces[i], group, i).await;
                    answers.set(
                        i,
                        written.map(|events| {
                            committed.extend(events);
                            orders[i].clone()
                        }),
                    );
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
    traces: &[Option<String>],
    indexes: &[usize],
    group: &Group,
) -> Result<Vec<OutboxEvent>, GroupFailed> {
    let chosen: Vec<&Order> = indexes.iter().map(|&i| &orders[i]).collect();
    let events: Vec<Event> = indexes
        .iter()
        .map(|&i| Event::created(&orders[i]).traced(traces[i].clone()))
        .collect();
    let mut tx = db.begin().await?;
    db::orders::insert_many(&mut *tx, &chosen).await?;
    let events = sequencer::record(&mut tx, &events.iter().collect::<Vec<_>>()).await?;
    group.hold(indexes).map_err(GroupFailed::CallersGone)?;
    tx.commit().await.map_err(|_| GroupFailed::AtCommit)?;
    Ok(events)
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
/// claim). The event holds the feed clock: commit soon (`sequencer::record`).
pub async fn insert_one(
    tx: &mut MySqlConnection,
    order: &Order,
    trace: Option<String>,
) -> Result<Vec<OutboxEvent>, InsertError> {
    db::orders::insert(&mut *tx, order).await?;
    sequencer::record(&mut *tx, &[&Event::created(order).traced(trace)])
        .await
        .map_err(InsertError::Db)
}

async fn write_one(
    db: &MySqlPool,
    order: &Order,
    trace: &Option<String>,
    group: &Group,
    i: usize,
) -> ApiResult<Vec<OutboxEvent>> {
    let mut tx = db.begin().await?;
    let events = insert_one(&mut tx, order, trace.clone())
        .await
        .map_err(|e| insert_error(e, order))?;
    if group.hold(&[i]).is_err() {
        return Err(ApiError::Unavailable("the request was abandoned"));
    }
    tx.commit().await.map_err(|_| ApiError::OutcomeUnknown)?;
    Ok(events)
}
