//! Reconcile: gives every committed event its deliveries even if its SQS
//! message was lost or dead-lettered.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::attempt::spawn_attempt;
use super::ingest::ingest_batch;
use super::shared::{with_retries, Shared};
use crate::db;
use crate::domain::{time, OrderStatus};

/// Gives every committed event its deliveries, even if its SQS message was
/// lost or dead-lettered: events older than `reconcile_after` are walked in
/// feed order behind a mark, and any (event, subscribed endpoint) without a
/// delivery is fanned out again.
pub(super) async fn reconcile(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(shared.config.reconcile_every) => {}
        }
        loop {
            match reconcile_once(&shared, None).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling deliveries failed");
                    break;
                }
            }
        }
    }
}

/// One window; true if more may follow at once. Attempts start by
/// `start_by` if given.
pub(super) async fn reconcile_once(
    shared: &Arc<Shared>,
    start_by: Option<tokio::time::Instant>,
) -> sqlx::Result<bool> {
    const WINDOW: i64 = 500;
    let (mark, published) = db::feed_clock::reconcile_marks(&shared.pool).await?;
    if published <= mark {
        return Ok(false);
    }
    let old_enough =
        time::now() - chrono::Duration::from_std(shared.config.reconcile_after).unwrap_or_default();
    let window = db::order_events::settled_window(&shared.pool, mark, published, WINDOW).await?;
    let full = window.len() as i64 == WINDOW;
    let window: Vec<_> = window
        .into_iter()
        .take_while(|e| e.created_at < old_enough)
        .collect();
    let Some(last) = window.last().map(|e| e.feed_position) else {
        return Ok(false);
    };
    let mut customers: Vec<Uuid> = window.iter().map(|e| e.customer_id).collect();
    customers.sort();
    customers.dedup();
    let endpoints = db::webhook_endpoints::enabled_for(&shared.pool, &customers).await?;
    let ids: Vec<Uuid> = window.iter().map(|e| e.id).collect();
    let have: HashSet<(Uuid, Uuid)> = db::deliveries::pairs_for_events(&shared.pool, &ids)
        .await?
        .into_iter()
        .collect();
    let missing: Vec<Uuid> = window
        .iter()
        .filter(|event| {
            let status = event.status.as_deref().and_then(OrderStatus::parse);
            endpoints.iter().any(|e| {
                e.customer_id == event.customer_id
                    && e.receives(&event.event_type, status)
                    && e.created_at <= event.created_at
                    && !have.contains(&(event.id, e.id))
            })
        })
        .map(|e| e.id)
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            count = missing.len(),
            "events without their deliveries (message lost or dead-lettered); fanning out again"
        );
        shared.metrics.reconciled(missing.len());
        for chunk in missing.chunks(50) {
            let out = with_retries(|| ingest_batch(shared, chunk, Uuid::now_v7())).await?;
            for leased in out.leased {
                spawn_attempt(shared, leased, start_by, None);
            }
            shared.wake.notify_one();
        }
    }
    db::feed_clock::mark_reconciled(&shared.pool, mark, last).await?;
    Ok(full)
}
