//! Dispatch: claims what ingest did not take (retries that fell due, manual
//! retries, released deliveries, leases that ran out) and starts their
//! attempts, bounded overall and per endpoint. Idle, it sleeps until the
//! next retry falls due (at most a second). Its sweep is the safety net for
//! releases, retention, and forgetting idle endpoints' lanes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::attempt::{hold, run_held};
use super::shared::{lease_until, with_retries, Shared, HELD_PER_SLOT};
use crate::db;
use crate::db::deliveries::{DeliveryRow, Leased};
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::time;

/// Longest an idle dispatcher sleeps (another worker's rows, manual retries).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often waiting deliveries are checked for a missed release.
const SWEEP: Duration = Duration::from_secs(60);

/// Due delivery rows → attempts, bounded overall and per endpoint.
pub(super) async fn dispatch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if last_sweep.elapsed() > SWEEP {
            last_sweep = std::time::Instant::now();
            sweep(&shared).await;
        }
        let mut pause = IDLE_POLL;
        let mut claimed_any = false;
        match claim_and_start(&shared, None).await {
            Ok((started, next_due)) => {
                claimed_any = started > 0;
                if let Some(next_due) = next_due {
                    let until = (next_due - time::now()).to_std().unwrap_or_default();
                    pause = pause.min(until.max(Duration::from_millis(10)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming deliveries failed"),
        }
        if claimed_any && shared.held.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Claims what there is room for and starts its attempts: how many were
/// started, and when the next scheduled delivery falls due.
pub(super) async fn claim_and_start(
    shared: &Arc<Shared>,
    start_by: Option<tokio::time::Instant>,
) -> sqlx::Result<(usize, Option<DateTime<Utc>>)> {
    // Raised before room is looked at, so that a place freed from now on
    // wakes the dispatcher; lowered below if room did not limit this pass.
    shared.short_of_room.store(true, Ordering::SeqCst);
    let free = shared.held.available_permits();
    if free == 0 {
        return Ok((0, None));
    }
    let saturated = saturated(shared);
    let (jobs, next_due) = claim(shared, free, &saturated).await?;
    let claimed = jobs.len();
    let mut started = 0;
    let mut busy = vec![];
    for (row, endpoint, leased_at) in jobs {
        let Some(held) = hold(shared, row.endpoint_id) else {
            busy.push(row.id);
            continue;
        };
        started += 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            run_held(
                &shared,
                held,
                row,
                endpoint,
                Some(leased_at),
                start_by,
                None,
            )
            .await;
        });
    }
    if saturated.is_empty() && busy.is_empty() && claimed < free {
        shared.short_of_room.store(false, Ordering::SeqCst);
    }
    if !busy.is_empty() {
        if let Err(e) = with_retries(|| db::deliveries::release(&shared.pool, &busy)).await {
            tracing::warn!(error = %e, "releasing leases failed; they run out by themselves");
        }
    }
    Ok((started, next_due))
}

type Job = (DeliveryRow, Option<EndpointRow>, DateTime<Utc>);

/// Claims up to `limit` claimable deliveries, with their endpoints (`None`:
/// deleted); also says when the next scheduled one falls due.
async fn claim(
    shared: &Shared,
    limit: usize,
    saturated: &[Uuid],
) -> sqlx::Result<(Vec<Job>, Option<DateTime<Utc>>)> {
    let now = time::now();
    let (ids, next_due) =
        db::deliveries::candidates(&shared.pool, now, limit as i64, saturated).await?;
    if ids.is_empty() {
        return Ok((vec![], next_due));
    }
    let lease_id = Uuid::now_v7();
    let claimed = async {
        let mut tx = shared.pool.begin().await?;
        let rows =
            db::deliveries::claim(&mut tx, &ids, now, lease_until(shared, now), lease_id).await?;
        tx.commit().await?;
        let mut endpoint_ids: Vec<Uuid> = rows.iter().map(|r| r.endpoint_id).collect();
        endpoint_ids.sort();
        endpoint_ids.dedup();
        let endpoints = db::webhook_endpoints::find_many(&shared.pool, &endpoint_ids).await?;
        Ok::<_, sqlx::Error>((rows, endpoints))
    }
    .await;
    let (rows, endpoints) = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            // The claim may have committed before its answer was lost: give
            // its leases back rather than hold those rows until they run out.
            let _ = with_retries(|| {
                db::deliveries::release_lease(&shared.pool, Leased::Rows(&ids), lease_id)
            })
            .await;
            return Err(e);
        }
    };
    let endpoints: HashMap<Uuid, EndpointRow> = endpoints.into_iter().map(|e| (e.id, e)).collect();
    let jobs = rows
        .into_iter()
        .map(|row| {
            let endpoint = endpoints.get(&row.endpoint_id).cloned();
            (row, endpoint, now)
        })
        .collect();
    Ok((jobs, next_due))
}

/// Endpoints that hold as many deliveries here as they may.
fn saturated(shared: &Shared) -> Vec<Uuid> {
    let lanes = shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
    lanes
        .iter()
        .filter(|(_, lane)| lane.held.available_permits() == 0)
        .map(|(id, _)| *id)
        .collect()
}

/// The safety net for releases, retention, and forgetting idle endpoints'
/// slots.
pub(super) async fn sweep(shared: &Shared) {
    let keep =
        chrono::Duration::from_std(shared.config.retention).unwrap_or(chrono::Duration::days(30));
    for _ in 0..20 {
        match db::retention::purge(&shared.pool, time::now(), keep).await {
            Ok(purged) => {
                let full = purged.deliveries as i64 == db::retention::BATCH
                    || purged.idempotency_keys as i64 == db::retention::BATCH;
                if !full {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging old deliveries failed");
                break;
            }
        }
    }
    if let Ok(mut conn) = shared.pool.acquire().await {
        match db::deliveries::release_stranded(&mut conn, time::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "released deliveries left waiting"),
            Err(e) => tracing::warn!(error = %e, "sweeping waiting deliveries failed"),
        }
    }
    let idle = shared.config.max_in_flight_per_endpoint * HELD_PER_SLOT;
    shared
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, lane| lane.held.available_permits() < idle);
}
