//! Settle: one task writes the outcomes of finished attempts, whatever has
//! finished meanwhile in one transaction (the attempts, the new states fenced
//! by lease, the release of deliveries that waited behind a settled one),
//! then the endpoints' health. Attempts never hold a connection, so no
//! number of them in flight can starve the pool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::notices;
use super::outcome::{Health, Outcome};
use super::release::{after_settle, to_release};
use super::shared::{with_retries, Shared};
use crate::db;
use crate::db::deliveries::{Settled, PENDING};
use crate::db::webhook_attempts::AttemptRow;
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::notice::{without_query, FailedDelivery};
use crate::domain::time;

/// Outcomes written in one transaction at most.
pub(super) const SETTLE_GROUP: usize = 256;

/// How long a group gathers outcomes after its first. Settling is off the
/// path to the endpoint, so waiting costs a webhook nothing, while each
/// group costs about six statements and a commit whatever its size: at
/// 800 webhooks a second, groups of about 9 became groups of about 18
/// (half the transactions). An order's next event, when it waited behind
/// this one, is released this much later.
const SETTLE_GATHER: Duration = Duration::from_millis(10);

/// Writes outcomes as they come, each group in one transaction.
pub(super) async fn settle_loop(
    shared: Arc<Shared>,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    mut finished: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            outcome = outcomes.recv() => match outcome {
                Some(outcome) => outcome,
                None => return,
            },
            _ = finished.changed() => {
                let mut rest = vec![];
                while let Ok(outcome) = outcomes.try_recv() {
                    rest.push(outcome);
                }
                for group in rest.chunks(SETTLE_GROUP) {
                    write_group(&shared, group, leases_last(&shared)).await;
                }
                return;
            }
        };
        let mut group = vec![first];
        let gathered = tokio::time::Instant::now() + SETTLE_GATHER;
        while group.len() < SETTLE_GROUP {
            match tokio::time::timeout_at(gathered, outcomes.recv()).await {
                Ok(Some(outcome)) => group.push(outcome),
                // Closed (the next turn returns), or the time is up.
                Ok(None) | Err(_) => break,
            }
        }
        write_group(&shared, &group, leases_last(&shared)).await;
    }
}

/// How long the leases of a group just finished last: the worker's bound
/// on writing it.
fn leases_last(shared: &Shared) -> tokio::time::Instant {
    tokio::time::Instant::now() + shared.config.timeout + Duration::from_secs(30)
}

/// Writes a group, retrying while the database is away until `give_up`:
/// for the worker, as long as the leases last (then the deliveries are
/// attempted again: at least once); for a Lambda invocation, its deadline.
pub(super) async fn write_group(shared: &Shared, group: &[Outcome], give_up: tokio::time::Instant) {
    let mut pause = Duration::from_millis(20);
    let mut tried = false;
    let released = loop {
        if tried && written_before(shared, group).await {
            break true;
        }
        tried = true;
        match write_outcomes(&shared.pool, group).await {
            Ok(released) => break released,
            Err(e) if tokio::time::Instant::now() + pause < give_up => {
                // A deadlock with a concurrent fan-out is InnoDB's ordinary
                // answer to contention, and the retry settles it: not worth
                // a warning unless it keeps happening.
                if crate::error::is_retryable(&e) && pause < Duration::from_millis(200) {
                    tracing::info!(error = %e, count = group.len(), retry_in = ?pause, "recording attempts met a conflict; retrying");
                } else {
                    tracing::warn!(error = %e, count = group.len(), retry_in = ?pause, "recording attempts failed; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, count = group.len(), "recording attempts failed; their leases will run out and they will be attempted again");
                return;
            }
        }
    };
    let soon = time::now() + chrono::Duration::seconds(1);
    if released
        || group.iter().any(|o| {
            o.settled.status == PENDING && o.settled.next_attempt_at.is_some_and(|t| t <= soon)
        })
    {
        shared.wake.notify_one();
    }
    record_health(shared, group).await;
}

/// Whether a try that failed had written the group after all: the answer
/// to its commit was lost (a cut connection). Written again, its attempts
/// would meet themselves as duplicate keys until the leases ran out, every
/// other outcome waiting behind it.
async fn written_before(shared: &Shared, group: &[Outcome]) -> bool {
    let Some(attempt) = group.iter().find_map(|o| o.attempt.as_ref()) else {
        return false;
    };
    match db::webhook_attempts::recorded(&shared.pool, attempt.id).await {
        Ok(true) => {
            tracing::info!(
                count = group.len(),
                "a group of attempts whose commit went unanswered had been recorded"
            );
            true
        }
        _ => false,
    }
}

/// Attempts, new states, releases and `delivery.failed` notices of one
/// group, in one transaction; true if a delivery became due (released, or
/// a notice).
async fn write_outcomes(pool: &MySqlPool, group: &[Outcome]) -> sqlx::Result<bool> {
    let now = time::now();
    let attempts: Vec<AttemptRow> = group.iter().filter_map(|o| o.attempt.clone()).collect();
    let settled: Vec<Settled> = group.iter().map(|o| o.settled.clone()).collect();
    // The (endpoint, order) pairs where a delivery stopped being pending:
    // the next one of each may now go.
    let pairs: HashSet<(Uuid, Uuid)> = group
        .iter()
        .filter(|o| o.settled.status != PENDING)
        .filter_map(|o| o.order_id.map(|order| (o.endpoint_id, order)))
        .collect();
    let touched: HashSet<(Uuid, Uuid)> = group
        .iter()
        .filter_map(|o| o.order_id.map(|order| (o.endpoint_id, order)))
        .collect();
    let mut tx = pool.begin().await?;
    // Index records before rows, the order a fan-out takes them in: a
    // settle that wrote a row first, then read its order's deliveries,
    // deadlocked with a fan-out holding that order's index record.
    let mut slots = vec![];
    if !touched.is_empty() {
        let (endpoints, orders) = endpoints_and_orders(&touched);
        slots = db::deliveries::order_slots(&mut *tx, &endpoints, &orders).await?;
    }
    db::webhook_attempts::insert_many(&mut *tx, &attempts).await?;
    let written = db::deliveries::settle(&mut *tx, &settled, now).await?;
    let mut told = 0;
    let failing: Vec<&FailedDelivery> = group.iter().filter_map(|o| o.failed.as_ref()).collect();
    if !failing.is_empty() {
        // Only those this settle failed (a stale one wrote nothing).
        let ids: Vec<Uuid> = failing.iter().map(|f| f.delivery_id).collect();
        let failed: HashSet<(Uuid, u32)> = db::deliveries::failed_among(&mut *tx, &ids)
            .await?
            .into_iter()
            .collect();
        let ours: Vec<&FailedDelivery> = failing
            .into_iter()
            .filter(|f| failed.contains(&(f.delivery_id, f.attempts)))
            .collect();
        told = notices::deliveries_failed(&mut tx, &ours, now).await?;
    }
    let mut release = vec![];
    if !pairs.is_empty() {
        // As they are now. The rows read above are locked, so if every
        // outcome was written (none stale), they are known without reading
        // them again; a notice has no order, so it is not among them.
        let slots = match after_settle(slots, &settled, written) {
            Some(slots) => slots,
            None => {
                let (endpoints, orders) = endpoints_and_orders(&pairs);
                db::deliveries::order_slots(&mut *tx, &endpoints, &orders).await?
            }
        };
        release = to_release(&slots, &pairs);
        db::deliveries::release_waiting(&mut *tx, &release, now).await?;
    }
    tx.commit().await?;
    Ok(!release.is_empty() || told > 0)
}

/// The endpoints and the orders of these pairs, sorted, once each.
fn endpoints_and_orders(pairs: &HashSet<(Uuid, Uuid)>) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut endpoints: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    let mut orders: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
    endpoints.sort();
    endpoints.dedup();
    orders.sort();
    orders.dedup();
    (endpoints, orders)
}

/// The endpoints' health, apart from the group's transaction.
async fn record_health(shared: &Shared, group: &[Outcome]) {
    let now = time::now();
    let disable_after = chrono::Duration::from_std(shared.config.disable_after)
        .unwrap_or(chrono::Duration::days(5));
    let mut seen: HashMap<Uuid, &Health> = HashMap::new();
    for outcome in group {
        let entry = seen.entry(outcome.endpoint_id).or_insert(&outcome.health);
        // Gone beats failed beats succeeded beats nothing.
        let rank = |h: &Health| match h {
            Health::Unchanged => 0,
            Health::Succeeded { .. } => 1,
            Health::Failed => 2,
            Health::Gone => 3,
        };
        if rank(&outcome.health) > rank(entry) {
            *entry = &outcome.health;
        }
    }
    for (endpoint_id, health) in seen {
        let result = with_retries(|| async {
            match health {
                Health::Unchanged | Health::Succeeded { was_failing: false } => Ok(None),
                Health::Succeeded { was_failing: true } => {
                    db::webhook_endpoints::mark_succeeding(&shared.pool, endpoint_id).await?;
                    Ok(None)
                }
                Health::Gone => gone(shared, endpoint_id, now).await,
                Health::Failed => failing(shared, endpoint_id, now, disable_after).await,
            }
        })
        .await;
        match result {
            Ok(Some(disabled)) => {
                if disabled.told > 0 {
                    shared.wake.notify_one();
                }
                let endpoint = &disabled.endpoint;
                shared.notifier.tell(
                    format!("endpoint-disabled:{}", endpoint.id),
                    format!(
                        "Mechanica: webhook endpoint {} of customer {} ({}) was disabled: {}. Its deliveries wait; the customer re-enables it with PATCH /v1/webhooks/{} {{\"enabled\": true}}.",
                        endpoint.id,
                        endpoint.customer_id,
                        without_query(&endpoint.url),
                        disabled.reason,
                        endpoint.id
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, %endpoint_id, "recording the endpoint's health failed")
            }
        }
    }
}

/// An endpoint this settle disabled, and how many of the customer's other
/// endpoints were told.
struct Disabled {
    endpoint: EndpointRow,
    reason: String,
    told: usize,
}

/// A 410 disables the endpoint; if this did, `endpoint.disabled` goes out
/// in the same transaction.
async fn gone(
    shared: &Shared,
    endpoint_id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Disabled>> {
    let reason = "the endpoint answered 410 Gone";
    let mut tx = shared.pool.begin().await?;
    let disabled = if db::webhook_endpoints::disable(&mut *tx, endpoint_id, reason, now).await? {
        tell_disabled(&mut tx, endpoint_id, reason, now).await?
    } else {
        None
    };
    tx.commit().await?;
    Ok(disabled)
}

/// A failed attempt: the endpoint's failure clock, and, once it has failed
/// long enough, its disabling and `endpoint.disabled`, in one transaction.
async fn failing(
    shared: &Shared,
    endpoint_id: Uuid,
    now: DateTime<Utc>,
    disable_after: chrono::Duration,
) -> sqlx::Result<Option<Disabled>> {
    let mut tx = shared.pool.begin().await?;
    let disabled = match db::webhook_endpoints::mark_failing(
        &mut tx,
        endpoint_id,
        now,
        disable_after,
    )
    .await?
    {
        Some(reason) => tell_disabled(&mut tx, endpoint_id, &reason, now).await?,
        None => None,
    };
    tx.commit().await?;
    Ok(disabled)
}

async fn tell_disabled(
    tx: &mut sqlx::MySqlConnection,
    endpoint_id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Disabled>> {
    let Some(endpoint) = db::webhook_endpoints::find(&mut *tx, endpoint_id).await? else {
        return Ok(None);
    };
    let told = notices::endpoint_disabled(tx, &endpoint, reason, now).await?;
    Ok(Some(Disabled {
        endpoint,
        reason: reason.to_string(),
        told,
    }))
}
