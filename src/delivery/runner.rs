//! The delivery core run to completion, one call at a time: what a Lambda
//! invocation does (`lambda` speaks the Runtime API around it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::dispatch::{claim_and_start, sweep};
use super::ingest::{attempt_while_committing, give_back, record_batch, Named};
use super::outcome::Outcome;
use super::reconcile::reconcile_once;
use super::settle::{write_group, SETTLE_GROUP};
use super::shared::{self, with_retries, Shared, WorkerStartError, HELD_PER_SLOT};
use crate::config::DeliveryConfig;
use crate::db;
use crate::error::{is_transient_error, is_unreachable};

/// The same core run to completion, one call at a time: what a Lambda
/// invocation does (see `delivery::lambda`). Each call fans out, attempts and
/// writes every outcome before it returns, so nothing is left running when
/// the function is frozen.
pub struct Runner {
    shared: Arc<Shared>,
    outcomes: tokio::sync::Mutex<mpsc::UnboundedReceiver<Outcome>>,
}

/// How long after its last attempt's timeout an invocation may still write
/// outcomes: within the margin `lambda` leaves before the deadline.
const WRITE_MARGIN: std::time::Duration = std::time::Duration::from_secs(3);

/// What `Runner::deliver` did with a batch of messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Indexes (into the batch) of messages whose deliveries could not be
    /// recorded: to be received again.
    pub failed: Vec<usize>,
    /// Messages naming no committed event (dropped, like the worker does).
    pub unknown: usize,
    pub attempted: usize,
    pub phases: Phases,
}

/// Where a call's time went, for its log line.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Phases {
    /// Fanning out (deliveries recorded, leased) and claiming.
    pub recording: Duration,
    /// Waiting for the attempts to end.
    pub attempting: Duration,
    /// Writing their outcomes.
    pub writing: Duration,
}

impl Runner {
    pub fn build(config: DeliveryConfig) -> Result<Runner, WorkerStartError> {
        let (shared, outcomes) = shared::build(config)?;
        Ok(Runner {
            shared,
            outcomes: tokio::sync::Mutex::new(outcomes),
        })
    }

    /// The metrics since the last call, as CloudWatch Embedded Metric Format
    /// lines (namespace `Mechanica`, the names of `/metrics`); with
    /// `gauges`, also the pending deliveries and disabled endpoints: two
    /// statements, for the scheduled pass (once a minute), not every batch.
    pub async fn metrics_emf(&self, gauges: bool) -> String {
        let (pending, disabled) = if gauges {
            (
                db::deliveries::pending_count(&self.shared.pool).await.ok(),
                db::webhook_endpoints::disabled_count(&self.shared.pool)
                    .await
                    .ok(),
            )
        } else {
            (None, None)
        };
        let now_ms = crate::domain::time::now().timestamp_millis().max(0) as u64;
        self.shared
            .metrics
            .emf_flush("Mechanica", now_ms, pending, disabled)
    }

    /// A batch of message bodies: each event's deliveries are recorded and
    /// their first attempts made before this returns. If the batch cannot be
    /// recorded as one, each message is tried alone, so one bad message
    /// never fails the others.
    pub async fn deliver(&self, bodies: &[&str], deadline: tokio::time::Instant) -> Delivered {
        let shared = &self.shared;
        let named: Vec<Option<Uuid>> = bodies
            .iter()
            .map(|body| serde_json::from_str::<Named>(body).ok().map(|n| n.id))
            .collect();
        let mut delivered = Delivered {
            unknown: named.iter().filter(|n| n.is_none()).count(),
            ..Delivered::default()
        };
        let mut ids: Vec<Uuid> = named.iter().flatten().copied().collect();
        ids.sort();
        ids.dedup();
        let recording = Instant::now();
        match self.fan_out(&ids, deadline).await {
            Ok((unknown, started)) => {
                delivered.unknown += named
                    .iter()
                    .flatten()
                    .filter(|id| unknown.contains(id))
                    .count();
                delivered.attempted += started;
            }
            Err(e) if is_unreachable(&e) => {
                // Alone they would fail the same way, each after its own wait.
                tracing::warn!(error = %e, "the database is unreachable; every message will be received again");
                delivered.failed = (0..bodies.len()).collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording a batch failed; recording its messages one by one");
                for id in &ids {
                    match self.fan_out(std::slice::from_ref(id), deadline).await {
                        Ok((unknown, started)) => {
                            delivered.unknown += usize::from(!unknown.is_empty());
                            delivered.attempted += started;
                        }
                        Err(e) => {
                            if is_transient_error(&e) {
                                tracing::warn!(error = %e, event_id = %id, "recording a message failed; it will be received again");
                            } else {
                                shared.metrics.fan_out_refused();
                                tracing::error!(error = %e, event_id = %id, "the database answers but refused this fan-out (a schema changed ahead of the code?); the message will be received again");
                            }
                            delivered.failed.extend(
                                named
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, n)| **n == Some(*id))
                                    .map(|(i, _)| i),
                            );
                        }
                    }
                }
            }
        }
        delivered.phases.recording = recording.elapsed();
        if delivered.unknown > 0 {
            shared.metrics.unknown_events(delivered.unknown);
        }
        // Deliveries this call could not hold, and those released by the
        // ones it settled (the next event of an order), go now too.
        delivered.attempted += self.drain(deadline, false, &mut delivered.phases).await;
        delivered
    }

    /// Finishes what is in flight, then claims and runs what fell due
    /// meanwhile, until nothing is left or `deadline`. How many it started.
    /// After the first pass (or from the start unless `claim`), it claims
    /// only when something asked for it (`claim_wanted`): a batch whose
    /// deliveries all went and were taken costs no claim.
    async fn drain(
        &self,
        deadline: tokio::time::Instant,
        mut claim: bool,
        phases: &mut Phases,
    ) -> usize {
        let mut started = 0;
        let mut last = 0;
        loop {
            let settled = self.finish(deadline, phases).await;
            if tokio::time::Instant::now() >= deadline || (last > 0 && settled == 0) {
                // Out of time, or all it claimed went back (no turn under a
                // rate limit came in time): claiming again would only spin.
                return started;
            }
            if !std::mem::take(&mut claim) && !self.claim_wanted() {
                return started;
            }
            let claiming = Instant::now();
            last = self.start_due(deadline).await;
            phases.recording += claiming.elapsed();
            if last == 0 {
                return started;
            }
            started += last;
        }
    }

    /// Fans out and starts the attempts while the fan-out commits: the
    /// unknown ids, and how many attempts started. Every attempt made is
    /// recorded even if the commit fails (`Recording::commit_or_rewrite`),
    /// unless the database stays away until `deadline`; the batch is then
    /// fanned out again for the rest of its deliveries.
    async fn fan_out(
        &self,
        ids: &[Uuid],
        deadline: tokio::time::Instant,
    ) -> sqlx::Result<(Vec<Uuid>, usize)> {
        let mut started = 0;
        let mut tries = 0;
        let failed = loop {
            tries += 1;
            let lease_id = Uuid::now_v7();
            let (mut out, recording) =
                match with_retries(|| record_batch(&self.shared, ids, lease_id)).await {
                    Ok(recorded) => recorded,
                    Err(e) => break (e, Some(lease_id)),
                };
            let (count, done) = attempt_while_committing(
                &self.shared,
                &mut out,
                recording,
                Some(deadline),
                deadline,
            )
            .await;
            started += count;
            let created = out.created > count;
            match done.result {
                Ok(()) => {
                    if created {
                        // Made but not leased (an order's earlier event is
                        // pending, or no room): for `drain` to claim.
                        self.shared.wake.notify_one();
                    }
                    return Ok((out.unknown, started));
                }
                // Its leased deliveries exist, all of them ours: nothing to
                // give back, the rest is made by fanning out again.
                Err(e) if done.rewritten && tries < 3 => {
                    tracing::warn!(error = %e, "a fan-out's commit failed; fanning the batch out again");
                }
                Err(e) if done.rewritten => break (e, None),
                Err(e) => break (e, Some(lease_id)),
            }
        };
        let (e, unanswered) = failed;
        if let Some(lease_id) = unanswered.filter(|_| !matches!(e, sqlx::Error::PoolTimedOut)) {
            // It may have committed before its answer was lost.
            give_back(&self.shared, ids, lease_id).await;
        }
        Err(e)
    }

    /// The scheduled pass: events whose messages were lost get their
    /// deliveries, then due retries, manual retries and released deliveries
    /// are attempted until none is left or `deadline` (leave room for one
    /// attempt's timeout after it). Returns how many were attempted.
    pub async fn run_due(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            match reconcile_once(&self.shared, Some(deadline)).await {
                Ok(true) if tokio::time::Instant::now() < deadline => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling deliveries failed");
                    break;
                }
            }
        }
        sweep(&self.shared).await;
        self.drain(deadline, true, &mut Phases::default()).await
    }

    /// Whether anything asked for a claim since the last look: the
    /// dispatcher's wake-up (`Shared::wake`), which a runner has no
    /// dispatcher to take. A fan-out that made deliveries it could not
    /// lease, an outcome that released an order's next event or falls due
    /// again within a second, room freed after a claim ran short of it.
    fn claim_wanted(&self) -> bool {
        let mut asked = std::pin::pin!(self.shared.wake.notified());
        asked.as_mut().enable()
    }

    /// Claims and starts due deliveries until none is left or `deadline`.
    async fn start_due(&self, deadline: tokio::time::Instant) -> usize {
        let mut started = 0;
        while tokio::time::Instant::now() < deadline {
            match claim_and_start(&self.shared, Some(deadline)).await {
                Ok((0, _)) => break,
                Ok((n, _)) => started += n,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming deliveries failed");
                    break;
                }
            }
            if self.shared.held.available_permits() == 0 {
                // Full: what is in flight finishes before more is claimed.
                break;
            }
        }
        started
    }

    /// Waits for every attempt started to finish (each started by `deadline`
    /// and bounded by `WEBHOOK_TIMEOUT`), then writes their outcomes, trying
    /// no later than the invocation's own end allows. How many it wrote.
    async fn finish(&self, deadline: tokio::time::Instant, phases: &mut Phases) -> usize {
        let shared = &self.shared;
        let all = (shared.config.max_in_flight * HELD_PER_SLOT) as u32;
        let attempting = Instant::now();
        drop(shared.held.acquire_many(all).await);
        phases.attempting += attempting.elapsed();
        let writing = Instant::now();
        let mut outcomes = self.outcomes.lock().await;
        let mut finished = vec![];
        while let Ok(outcome) = outcomes.try_recv() {
            finished.push(outcome);
        }
        let give_up = deadline + shared.config.timeout + WRITE_MARGIN;
        for group in finished.chunks(SETTLE_GROUP) {
            write_group(shared, group, give_up).await;
        }
        phases.writing += writing.elapsed();
        finished.len()
    }
}
