//! Ingest: SQS messages → deliveries → attempts. A batch of messages is
//! fanned out in one transaction (`fan_out`); the deliveries that can go now
//! are created leased to this worker and attempted at once, and the batch is
//! handed over to be deleted (`deletes`). A message naming no committed
//! event is deleted and counted.
//! While the database is unreachable, ingest stops receiving, so no message
//! climbs towards the dead-letter queue because of the outage. A database
//! that answers but refuses the fan-out is no outage: receipt pauses a
//! while, longer after each refusal in a row (`refusals`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::attempt::{hold, spawn_attempt, Held};
use super::deletes::Deletes;
use super::fan_out::{fan_out_uncommitted, FanOut, Lease};
use super::polls::Polls;
use super::recording::{Commit, Recording};
use super::shared::{lease_until, with_retries, Shared};
use crate::db;
use crate::db::deliveries::Leased;
use crate::domain::time;
use crate::error::is_transient_error;
use crate::queue::{Queue, Received};

/// The only part of a message that is read: the event's id.
#[derive(Deserialize)]
pub(super) struct Named {
    pub(super) id: Uuid,
}

/// SQS → deliveries → attempts.
pub(super) async fn ingest(
    shared: Arc<Shared>,
    queue: Queue,
    polls: Arc<Polls>,
    deletes: Deletes,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // A batch whose commit went unanswered: its leases, to give back.
    let mut unanswered: Option<(Vec<Uuid>, Uuid)> = None;
    loop {
        if shared.database_down.load(Ordering::Relaxed) {
            // Every receiver stops while the database is away, so an outage
            // spends no receive counts on the way to the dead-letter queue.
            wait_for_database(&shared.pool, &mut stop).await;
            if *stop.borrow() {
                return;
            }
            shared.database_down.store(false, Ordering::Relaxed);
        }
        if let Some(pause) = shared.refusals.paused_for(Instant::now()) {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Some((ids, lease_id)) = unanswered.take() {
            give_back(&shared, &ids, lease_id).await;
        }
        let received = tokio::select! {
            _ = stop.changed() => return,
            received = poll(&polls, &queue) => received,
        };
        let messages = match received {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(200 * u64::from(failures.min(50)));
                tracing::warn!(error = %e, retry_in = ?pause, "receiving from SQS failed");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        if shared.database_down.load(Ordering::Relaxed) {
            // Received while another receiver found the database away: kept
            // out of sight until it is back, not processed.
            hide(&queue, &messages, HIDE).await;
            continue;
        }
        if let Some(pause) = shared.refusals.paused_for(Instant::now()) {
            // Received while another receiver's fan-out was refused.
            hide(&queue, &messages, pause).await;
            continue;
        }
        let ids = named_events(&shared, &messages);
        let lease_id = Uuid::now_v7();
        let recorded = match with_retries(|| record_batch(&shared, &ids, lease_id)).await {
            Ok((mut out, recording)) => {
                let give_up = Instant::now() + REWRITE_FOR;
                let (started, done) =
                    attempt_while_committing(&shared, &mut out, recording, None, give_up).await;
                match done.result {
                    Ok(()) => Ok((out, started)),
                    Err(e) if done.rewritten => {
                        // The database answers: the batch is fanned out
                        // again at once for the rest of its deliveries.
                        tracing::warn!(error = %e, "a fan-out's commit failed; its messages are received again");
                        show(&queue, &messages).await;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok((out, started)) => {
                shared.refusals.held();
                if !out.unknown.is_empty() {
                    shared.metrics.unknown_events(out.unknown.len());
                    tracing::warn!(
                        count = out.unknown.len(),
                        "messages naming no committed event were dropped"
                    );
                }
                if out.created > started {
                    shared.wake.notify_one();
                }
                deletes.delete(messages.into_iter().map(|m| m.receipt));
            }
            Err(e) => {
                // Not deleted: the messages come back once visible again.
                if is_transient_error(&e) {
                    tracing::warn!(error = %e, "recording deliveries failed; pausing receipt until the database answers");
                    shared.database_down.store(true, Ordering::Relaxed);
                    hide(&queue, &messages, HIDE).await;
                } else {
                    let pause = shared.refusals.refused(Instant::now());
                    shared.metrics.fan_out_refused();
                    tracing::error!(
                        error = %e,
                        events = ids.len(),
                        retry_in = ?pause,
                        "the database answers but refused a fan-out (a schema changed ahead of the code?); pausing receipt"
                    );
                    hide(&queue, &messages, pause).await;
                }
                // The batch may have committed before its answer was lost:
                // leases it took would hold those deliveries until they ran out.
                unanswered = Some((ids, lease_id));
            }
        }
    }
}

/// One long poll, in a slot of `polls`.
async fn poll(polls: &Polls, queue: &Queue) -> Result<Vec<Received>, String> {
    let slot = polls.slot().await;
    let received = queue.receive(Duration::from_secs(20)).await;
    if let Ok(messages) = &received {
        polls.received(slot, messages.len());
    }
    received
}

/// Starts the attempts of a fan-out's leased deliveries (by `start_by`, if
/// given), then commits it: the request's round trip and the disk's flush
/// overlap. What comes of each attempt is written once its delivery is
/// known to exist (`Recording::commit_or_rewrite`, tried until `give_up`).
/// How many attempts started, and what the commit left.
pub(super) async fn attempt_while_committing(
    shared: &Arc<Shared>,
    out: &mut FanOut<Held>,
    recording: Recording,
    start_by: Option<Instant>,
    give_up: Instant,
) -> (usize, Commit) {
    let (told, committed) = watch::channel(None);
    let leased = std::mem::take(&mut out.leased);
    let started = leased.len();
    for leased in leased {
        spawn_attempt(shared, leased, start_by, Some(committed.clone()));
    }
    let done = recording.commit_or_rewrite(&shared.pool, give_up).await;
    told.send_replace(Some(done.kept.clone()));
    (started, done)
}

/// How long the deliveries of a fan-out whose commit failed are tried
/// again, their attempts waiting to be recorded: within the leases.
const REWRITE_FOR: Duration = Duration::from_secs(10);

/// How long messages received during a database outage stay out of sight:
/// long enough that another receiver does not take them again meanwhile.
const HIDE: Duration = Duration::from_secs(10);

/// Keeps messages out of sight for `pause`, while receipt pauses.
async fn hide(queue: &Queue, messages: &[Received], pause: Duration) {
    let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
    if let Err(e) = queue.change_visibility(&receipts, pause).await {
        tracing::warn!(error = %e, "hiding messages while receipt pauses failed");
    }
}

/// Makes messages visible again at once, to be received again.
async fn show(queue: &Queue, messages: &[Received]) {
    let receipts: Vec<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
    if let Err(e) = queue.change_visibility(&receipts, Duration::ZERO).await {
        tracing::warn!(error = %e, "making messages visible again failed; they come back when their visibility ends");
    }
}

/// Gives back the leases of a batch whose commit went unanswered.
pub(super) async fn give_back(shared: &Shared, ids: &[Uuid], lease_id: Uuid) {
    match with_retries(|| {
        db::deliveries::release_lease(&shared.pool, Leased::Events(ids), lease_id)
    })
    .await
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                count = n,
                "gave back the leases of a batch whose commit went unanswered"
            );
            shared.wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(error = %e, "giving back a batch's leases failed; they run out by themselves")
        }
    }
}

/// The event ids messages name; a message that names none is counted
/// and deleted with its batch.
fn named_events(shared: &Shared, messages: &[Received]) -> Vec<Uuid> {
    let mut ids = vec![];
    for message in messages {
        match serde_json::from_str::<Named>(&message.body) {
            Ok(named) => ids.push(named.id),
            Err(_) => {
                shared.metrics.unknown_events(1);
                tracing::warn!(message_id = %message.message_id, "a message that names no event was dropped");
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

pub(super) async fn ingest_batch(
    shared: &Shared,
    ids: &[Uuid],
    lease_id: Uuid,
) -> sqlx::Result<FanOut<Held>> {
    let (out, recording) = record_batch(shared, ids, lease_id).await?;
    recording.commit().await?;
    Ok(out)
}

/// `ingest_batch` short of its commit.
pub(super) async fn record_batch(
    shared: &Shared,
    ids: &[Uuid],
    lease_id: Uuid,
) -> sqlx::Result<(FanOut<Held>, Recording)> {
    let now = time::now();
    let lease = Lease {
        until: lease_until(shared, now),
        id: lease_id,
    };
    fan_out_uncommitted(&shared.pool, ids, now, &lease, |endpoint| {
        hold(shared, endpoint.id)
    })
    .await
}

async fn wait_for_database(pool: &MySqlPool, stop: &mut watch::Receiver<bool>) {
    let mut pause = Duration::from_millis(250);
    loop {
        if sqlx::query("SELECT 1").execute(pool).await.is_ok() {
            tracing::info!("the database answers again; receiving");
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
