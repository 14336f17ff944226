//! The relay from the outbox (committed events) to SQS.
//!
//! One relay publishes at a time across all API instances. Its turn is a
//! lease on the `feed_clock` row, taken and renewed inside the sequencer's
//! short transaction (`sequencer::begin`), never a lock held while SQS is
//! called: a relay that dies or hangs loses the turn when the lease lapses.
//! A full round renews the turn and publishes, in feed order, everything
//! above the `published_through` mark; then it moves the mark to the
//! highest position below which everything went out. Between full rounds
//! (at most `RENEW` apart), the holder publishes the events its own
//! instance's commits hand it (`Signals`, numbered at write by
//! `sequencer::record`) without touching the database, as long as they are
//! the very next positions after what it published; anything else (another
//! instance's events in between, a failure, no turn) takes a full round.
//! A relay that finds another holding the turn leaves its own instance's
//! commits to the holder, which reads them by position, and looks at the
//! clock again once `WATCH` is over, to take the turn over if the holder's
//! lease has lapsed: not a pass per commit on the clock every writer needs.
//! A holder whose instance committed nothing since its last round, and
//! which published other instances' events, gives the turn up: the turn
//! follows the commits, so that they go out as they are handed.
//! The mark is written with the next full round or when the turn is given
//! up: a crash before then sends those events again (delivery is at least
//! once; fan-out finds the deliveries made, and FIFO queues drop the repeat
//! by its deduplication id).
//!
//! How a round's events go out (in waves, several batches at once) is
//! `publish`; the operator's alarm on the outbox's age is `age`.
//!
//! An event SQS refuses for what it holds (too large, characters it will not
//! carry) is parked (`outbox_parked`): the mark passes it, so it holds back
//! nobody else, while the later events of its order are parked behind it so
//! that they never overtake it. The operator lists parked events and asks
//! for a retry (`/v1/admin/outbox/parked`). A transient failure (SQS down,
//! throttling) leaves the mark where it is and the round is tried again with
//! backoff.

mod age;
mod publish;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::db;
use crate::db::order_events::OutboxEvent;
use crate::db::outbox_parked::Park;
use crate::domain::time;
use crate::metrics::Metrics;
use crate::ops_notify::Notifier;
use crate::queue::{Queue, Sent};
use crate::sequencer;
use crate::signals::Signals;
use publish::{outgoing, publish};

pub use age::watch_age;

/// How long a turn lasts without renewal: when the holder dies, another
/// instance publishes within about this long. The holder renews it with
/// every round, and gives it up when it has nothing to do.
const LEASE: Duration = Duration::from_millis(1500);
/// How long the holder publishes handed events before a full round renews
/// the turn, writes the mark and looks for other instances' events.
const RENEW: Duration = Duration::from_millis(200);
/// How often an idle relay looks for other instances' events: often while
/// it holds the turn (other instances' commits wait for it), rarely when not.
const TICK_HOLDING: Duration = Duration::from_millis(200);
const TICK_IDLE: Duration = Duration::from_secs(1);
/// How long a relay that found another holding the turn leaves its own
/// instance's commits to the holder before it looks at the clock again:
/// it takes the turn over within about this long of the lease lapsing, and
/// its instance's writers do not queue behind a pass for every commit.
const WATCH: Duration = Duration::from_millis(100);
/// How often the holder looks for parked events the operator asked to retry.
const RETRY_CHECK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    pub numbered: usize,
    pub published: usize,
    pub parked: usize,
    /// A transient failure: the mark stopped before the event it names.
    pub failure: Option<String>,
    /// More events wait than one round takes.
    pub more: bool,
}

/// The relay of one API instance. With no queue it only numbers events
/// for the feed.
pub struct Relay {
    pool: MySqlPool,
    queue: Option<Queue>,
    id: Uuid,
    /// Orders with a parked event, while this relay holds the turn.
    parked_orders: Option<HashSet<Uuid>>,
    /// Counts turns taken from a relay whose lease lapsed.
    metrics: Arc<Metrics>,
    /// When a pass last gave this relay the turn.
    held_at: Option<Instant>,
    /// When a pass last found another relay holding the turn.
    others_turn: Option<Instant>,
    /// Commits were left to the other relay since that pass.
    left_to_holder: bool,
    /// How far this relay has published, not yet written: the next pass
    /// writes it with the clock (one statement fewer per round).
    mark: Option<u64>,
    /// While it holds the turn and no round failed: every event at or
    /// below this feed position is published or parked.
    through: Option<u64>,
    last_retry_check: Instant,
    /// Told when an event is parked.
    notifier: Notifier,
}

impl Relay {
    /// `pool` must read committed data (`db::read_committed_pool`).
    pub fn new(
        pool: MySqlPool,
        queue: Option<Queue>,
        metrics: Arc<Metrics>,
        notifier: Notifier,
    ) -> Relay {
        Relay {
            pool,
            queue,
            metrics,
            notifier,
            id: Uuid::now_v7(),
            parked_orders: None,
            held_at: None,
            others_turn: None,
            left_to_holder: false,
            mark: None,
            through: None,
            last_retry_check: Instant::now(),
        }
    }

    /// One round, given the events this instance's commits handed over
    /// since the last: with the turn, publish them, or a full round (number
    /// what a pass finds, renew the turn, publish everything above the mark).
    pub async fn round(&mut self, handed: Vec<OutboxEvent>) -> sqlx::Result<Round> {
        if self.queue.is_none() && !handed.is_empty() {
            // Numbered at write, and nothing to publish them to.
            return Ok(Round::default());
        }
        // With the turn renewed within `RENEW`, no failure since (`through`)
        // and the parked orders known, handed events next in line go out
        // without a full round.
        let any_handed = !handed.is_empty();
        let renewed = self.held_at.is_some_and(|t| t.elapsed() < RENEW);
        if let (Some(queue), Some(through), true) = (self.queue.clone(), self.through, renewed) {
            if let Some(parked_orders) = self.parked_orders.take() {
                match next_after(through, handed) {
                    Some(events) => {
                        return self.publish_handed(&queue, parked_orders, events).await
                    }
                    None => self.parked_orders = Some(parked_orders),
                }
            }
        }
        if any_handed && self.others_turn.is_some_and(|t| t.elapsed() < WATCH) {
            // Numbered at write: the holder publishes them.
            self.left_to_holder = true;
            return Ok(Round::default());
        }
        self.metrics.relay_round(false);
        self.through = None;
        self.left_to_holder = false;
        let turn = self.queue.as_ref().map(|_| sequencer::Turn {
            relay: self.id,
            lease: LEASE,
            published_through: self.mark.take(),
        });
        let (pass, numbering) = sequencer::begin(&self.pool, turn).await?;
        // The events just numbered are next after the mark: they go out
        // while the numbering commits, one disk flush sooner. Anything else
        // (a backlog, no turn) waits for the commit.
        let fresh = pass.relay
            && pass.numbered.first().map(|e| e.feed_position) == Some(pass.published_through + 1);
        let numbering = if fresh {
            Some(numbering)
        } else {
            numbering.commit().await?;
            None
        };
        self.metrics.relay_holding(pass.relay);
        let mut round = Round {
            numbered: pass.numbered.len(),
            more: pass.numbered.len() as i64 == sequencer::BATCH,
            ..Round::default()
        };
        let Some(queue) = self.queue.clone().filter(|_| pass.relay) else {
            // Another instance's turn: what it knew of parked orders may change.
            self.parked_orders = None;
            self.held_at = None;
            self.others_turn = self.queue.is_some().then(Instant::now);
            return Ok(round);
        };
        self.held_at = Some(Instant::now());
        self.others_turn = None;
        if let Some(previous) = pass.took_over_from {
            self.metrics.relay_handover();
            tracing::warn!(%previous, "took over publishing: the relay that held the turn let its lease lapse (it stopped, hung or is backing off)");
        }
        let mut parked_orders = match self.parked_orders.take() {
            Some(known) => known,
            None => db::outbox_parked::orders(&self.pool)
                .await?
                .into_iter()
                .collect(),
        };
        let events = if fresh {
            pass.numbered
        } else if pass.published_through + 1 < pass.next_position {
            // Left over from a failure or another relay: read back by position.
            let backlog = db::order_events::numbered_between(
                &self.pool,
                pass.published_through,
                pass.next_position,
                sequencer::BATCH,
            )
            .await?;
            round.more |= backlog.len() as i64 == sequencer::BATCH;
            backlog
        } else {
            vec![]
        };
        let published_through = pass.published_through;
        self.send(&queue, events, numbering, &mut parked_orders, &mut round)
            .await?;
        if round.failure.is_none() {
            self.through = Some(self.mark.unwrap_or(0).max(published_through));
        }
        if self.last_retry_check.elapsed() >= RETRY_CHECK {
            self.last_retry_check = Instant::now();
            if let Err(reason) = self.retry_parked(&queue, &mut parked_orders).await? {
                round.failure.get_or_insert(reason);
            }
        }
        self.parked_orders = Some(parked_orders);
        if !any_handed && round.published > 0 && !round.more && round.failure.is_none() {
            // No commit of this instance's since its last round: what it
            // published came from others. The turn goes to one of them,
            // which publishes its commits as they are handed, not at this
            // relay's next tick.
            self.release().await;
        }
        Ok(round)
    }

    /// Publishes `events` (in feed order), parks what SQS refuses for good,
    /// and keeps the mark; `numbering`, the pass that numbered them, commits
    /// meanwhile.
    async fn send(
        &mut self,
        queue: &Queue,
        events: Vec<OutboxEvent>,
        numbering: Option<sequencer::Numbering>,
        parked_orders: &mut HashSet<Uuid>,
        round: &mut Round,
    ) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // One publish serves many requests' events: it links to
        // their traces rather than joining one (SPEC §15).
        let span = if crate::telemetry::exporting_traces() {
            let span = tracing::info_span!(
                "outbox publish",
                otel.kind = "producer",
                messaging.system = "aws_sqs",
                messaging.batch.message_count = events.len(),
            );
            crate::telemetry::link_traces(
                &span,
                events.iter().filter_map(|e| e.traceparent.as_deref()),
            );
            span
        } else {
            tracing::Span::none()
        };
        let publishing = publish(queue, &events, parked_orders).instrument(span);
        let published = match numbering {
            Some(numbering) => {
                let (committed, published) = tokio::join!(numbering.commit(), publishing);
                if let Err(e) = committed {
                    // The numbering and the turn did not hold: nothing
                    // learnt from this publish is kept (the mark, parked
                    // orders); its events go out again with the next pass.
                    self.held_at = None;
                    self.metrics.relay_holding(false);
                    return Err(e);
                }
                published
            }
            None => publishing.await,
        };
        let parks: Vec<Park<'_>> = published
            .parked
            .iter()
            .map(|(i, reason)| Park {
                event_id: events[*i].id,
                order_id: events[*i].order_id,
                feed_position: events[*i].feed_position,
                reason,
            })
            .collect();
        db::outbox_parked::insert(&self.pool, &parks, time::now()).await?;
        if let Some(first) = parks.first() {
            self.notifier.tell(
                "event-parked",
                format!(
                    "Mechanica: {} event(s) parked: SQS refused event {} of order {} ({}), and holds back only that order's later events. List them: GET /v1/admin/outbox/parked; send one again: POST /v1/admin/outbox/parked/{}/retry.",
                    parks.len(),
                    first.event_id,
                    first.order_id,
                    first.reason,
                    first.event_id
                ),
            );
        }
        // Parked rows are written before the mark passes them.
        if published.through.is_some() {
            self.mark = published.through;
        }
        round.published = published.sent;
        round.parked = parks.len();
        round.failure = published.failure;
        Ok(())
    }

    /// Publishes handed events that are next in line (`next_after`).
    async fn publish_handed(
        &mut self,
        queue: &Queue,
        mut parked_orders: HashSet<Uuid>,
        events: Vec<OutboxEvent>,
    ) -> sqlx::Result<Round> {
        self.metrics.relay_round(true);
        let mut round = Round::default();
        if !events.is_empty() {
            self.through = None;
            self.send(queue, events, None, &mut parked_orders, &mut round)
                .await?;
            if round.failure.is_none() {
                self.through = self.mark;
            }
        }
        self.parked_orders = Some(parked_orders);
        Ok(round)
    }

    /// Parked events the operator asked to retry, each order's in feed
    /// order; an order's chain stops at its first event refused again.
    async fn retry_parked(
        &self,
        queue: &Queue,
        parked_orders: &mut HashSet<Uuid>,
    ) -> sqlx::Result<Result<(), String>> {
        let rows = db::outbox_parked::retries(&self.pool, 100).await?;
        if rows.is_empty() {
            return Ok(Ok(()));
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        let events: HashMap<Uuid, OutboxEvent> = db::order_events::outbox_by_ids(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        let mut stopped: HashSet<Uuid> = HashSet::new();
        for row in rows {
            if stopped.contains(&row.order_id) {
                continue;
            }
            let Some(event) = events.get(&row.event_id) else {
                db::outbox_parked::remove(&self.pool, row.event_id).await?;
                continue;
            };
            match queue.publish(&[outgoing(event)]).await.pop() {
                Some(Sent::Accepted) => {
                    db::outbox_parked::remove(&self.pool, row.event_id).await?;
                }
                Some(Sent::Refused(reason)) => {
                    db::outbox_parked::refused_again(
                        &self.pool,
                        row.order_id,
                        row.event_id,
                        &reason,
                    )
                    .await?;
                    stopped.insert(row.order_id);
                }
                Some(Sent::Failed(reason)) => {
                    return Ok(Err(format!("retrying a parked event failed: {reason}")));
                }
                None => return Ok(Err("retrying a parked event got no answer".into())),
            }
        }
        parked_orders.clear();
        parked_orders.extend(db::outbox_parked::orders(&self.pool).await?);
        Ok(Ok(()))
    }

    /// Writes the mark and gives the turn up, so another instance takes it
    /// at once without publishing again what this one did.
    pub async fn release(&mut self) {
        self.through = None;
        if let Some(through) = self.mark.take() {
            let _ = db::feed_clock::mark_published(&self.pool, self.id, through).await;
        }
        if self.held_at.take().is_some() {
            self.metrics.relay_holding(false);
            let _ = db::feed_clock::release_relay(&self.pool, self.id).await;
        }
    }

    /// Holds the turn (its lease has not lapsed).
    fn holding(&self) -> bool {
        self.held_at.is_some_and(|t| t.elapsed() < LEASE)
    }

    /// How long to wait before the next look at the clock.
    fn pause(&self) -> Duration {
        if self.holding() {
            return TICK_HOLDING;
        }
        match self.others_turn.filter(|_| self.left_to_holder) {
            // Commits left to the holder: look again once `WATCH` is over,
            // whether more come or not, in case the holder has gone.
            Some(seen) => WATCH.saturating_sub(seen.elapsed()),
            None => TICK_IDLE,
        }
    }
}

/// Runs until `stop` turns true, then gives the turn up.
pub async fn run(mut relay: Relay, signals: Arc<Signals>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::ZERO;
    let mut check_first = false;
    loop {
        // A tick (not a commit of ours) first asks, in one statement, whether
        // there is anything to do: an idle API costs one statement a second.
        let idle = check_first
            && match db::feed_clock::pending(&relay.pool).await {
                Ok(p) => !(p.unsequenced || (p.unpublished && relay.queue.is_some()) || p.retries),
                Err(_) => false,
            };
        let pause = if idle {
            if relay.holding() {
                // Nothing to do: the turn goes back, so that the next
                // instance with work takes it at once, and a lease that
                // lapses later means a holder that stopped mid-work.
                relay.release().await;
            }
            TICK_IDLE
        } else {
            match relay.round(signals.take_committed()).await {
                Ok(round) => {
                    if round.numbered > 0 {
                        signals.feed_advanced();
                    }
                    match round.failure {
                        Some(reason) => {
                            backoff = next_backoff(backoff);
                            tracing::warn!(%reason, retry_in = ?backoff, "publishing to SQS failed; events stay in the outbox");
                            backoff
                        }
                        None => {
                            if backoff > Duration::ZERO {
                                tracing::info!("publishing to SQS again");
                            }
                            backoff = Duration::ZERO;
                            if round.more {
                                continue;
                            }
                            relay.pause()
                        }
                    }
                }
                Err(e) => {
                    backoff = next_backoff(backoff);
                    tracing::warn!(error = %e, retry_in = ?backoff, "numbering or publishing events failed");
                    backoff
                }
            }
        };
        tokio::select! {
            _ = signals.relay_woken(), if backoff.is_zero() => check_first = false,
            _ = tokio::time::sleep(pause) => check_first = backoff.is_zero(),
            _ = stop.changed() => {
                relay.release().await;
                return;
            }
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
}

/// Of the events handed over (in any order), those above `through`, in feed
/// order, if they are the very next positions with none missing; `None` if
/// none was handed or one is missing (another instance's event between, or
/// one not yet handed): a full round reads them back by position.
fn next_after(through: u64, mut handed: Vec<OutboxEvent>) -> Option<Vec<OutboxEvent>> {
    if handed.is_empty() {
        return None;
    }
    handed.retain(|e| e.feed_position > through);
    handed.sort_unstable_by_key(|e| e.feed_position);
    let in_line = handed
        .iter()
        .zip(through + 1..)
        .all(|(e, position)| e.feed_position == position);
    in_line.then_some(handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(positions: &[u64]) -> Vec<OutboxEvent> {
        positions
            .iter()
            .map(|&feed_position| OutboxEvent {
                feed_position,
                id: Uuid::now_v7(),
                order_id: Uuid::nil(),
                customer_id: Uuid::nil(),
                event_type: "order.created".into(),
                payload: "{}".into(),
                traceparent: None,
            })
            .collect()
    }

    #[test]
    fn handed_events_go_out_only_when_next_in_line() {
        /// Published through, handed positions, what goes out without a full round.
        type Case = (u64, &'static [u64], Option<&'static [u64]>);
        let cases: &[Case] = &[
            (10, &[], None),
            (10, &[11], Some(&[11])),
            (10, &[11, 12, 13], Some(&[11, 12, 13])),
            (10, &[13, 11, 12], Some(&[11, 12, 13])),
            (0, &[1, 2], Some(&[1, 2])),
            // Already published (a full round read them back): dropped.
            (10, &[9, 10, 11], Some(&[11])),
            (10, &[9, 10], Some(&[])),
            // One missing, before or between: a full round.
            (10, &[12], None),
            (10, &[11, 13], None),
            (10, &[10, 12], None),
        ];
        for (through, positions, expected) in cases {
            let out = next_after(*through, handed(positions))
                .map(|events| events.iter().map(|e| e.feed_position).collect::<Vec<_>>());
            assert_eq!(
                out.as_deref(),
                *expected,
                "through {through}, handed {positions:?}"
            );
        }
    }
}
