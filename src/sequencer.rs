//! Gives events their feed position, in commit order.
//!
//! Auto-increment ids are handed out at insert time, not at commit: a
//! transaction holding id 41 can commit after one holding 42 was already
//! read, and a reader that moved past 42 would never see 41. So the feed
//! does not use them. Instead every transaction that writes events takes
//! their feed positions from the `feed_clock` row as its last step before
//! committing (`record`), and holds the row's lock until it commits: the
//! next transaction's positions come only after this one's commit, so a
//! feed position only ever appears above all earlier ones, once, and a
//! reader following positions upwards sees every event exactly once. An
//! order's events keep their order: the next one can only be written after
//! the previous one committed (the order row is locked).
//!
//! The events come back numbered, so that the relay can publish them as
//! soon as they commit without reading them again (`Signals`).
//!
//! Events committed without a position (by a version that left numbering to
//! the relay, during a rolling deploy) are numbered by a pass (`begin`),
//! which is also the relay's turn: one transaction takes or renews the
//! relay's lease on the same row and numbers what it finds.
//!
//! Passes run on a pool whose sessions read committed data (see
//! `db::read_committed_pool`): a pass sees every event committed before it
//! took the lock.

use std::time::Duration;

use sqlx::{MySql, MySqlConnection, MySqlPool, Transaction};
use uuid::Uuid;

use crate::db;
use crate::db::order_events::OutboxEvent;
use crate::domain::Event;

/// Writes `events` at the next feed positions, in the caller's
/// transaction, which holds the clock until it ends: call it last before
/// the commit. Returns them as the relay publishes them.
pub async fn record(tx: &mut MySqlConnection, events: &[&Event]) -> sqlx::Result<Vec<OutboxEvent>> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let first = db::feed_clock::take_positions(&mut *tx, events.len() as u64).await?;
    db::order_events::insert_many(&mut *tx, events, first).await
}

/// Events numbered per pass at most.
pub const BATCH: i64 = 1000;

/// The relay's part in a pass: who asks for the turn, for how long, and
/// the mark it reached since its last pass (written in the same statement).
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    pub relay: Uuid,
    pub lease: Duration,
    pub published_through: Option<u64>,
}

pub struct Pass {
    /// What this pass numbered, in feed order.
    pub numbered: Vec<OutboxEvent>,
    /// Every event at or below this feed position is published (or parked).
    pub published_through: u64,
    /// The next feed position to hand out: every event below it is numbered.
    pub next_position: u64,
    /// The caller holds the relay's turn (it asked for it, and it was free
    /// or already the caller's).
    pub relay: bool,
    /// The caller took the turn from a relay whose lease lapsed.
    pub took_over_from: Option<Uuid>,
}

/// Numbers up to `BATCH` committed events; with a `turn`, also takes or
/// renews the relay's turn if it is free or already the caller's, and
/// writes the caller's mark.
pub async fn pass(pool: &MySqlPool, turn: Option<Turn>) -> sqlx::Result<Pass> {
    let (pass, numbering) = begin(pool, turn).await?;
    numbering.commit().await?;
    Ok(pass)
}

/// A pass's transaction, done but for its commit: what `Pass` says holds
/// once `commit` succeeds, and the `feed_clock` row stays locked until then.
pub struct Numbering(Transaction<'static, MySql>);

impl Numbering {
    pub async fn commit(self) -> sqlx::Result<()> {
        self.0.commit().await
    }
}

/// `pass` up to its commit, which the caller makes, so that it can publish
/// the events while the commit is on its way to disk: if the commit fails,
/// they go out again with the next pass (SQS delivers at least once anyway,
/// and fan-out is idempotent), and nothing learnt from them may be kept.
pub async fn begin(pool: &MySqlPool, turn: Option<Turn>) -> sqlx::Result<(Pass, Numbering)> {
    let mut tx = pool.begin().await?;
    let me = turn.map_or(Uuid::nil(), |t| t.relay);
    let clock = db::feed_clock::lock(&mut *tx, me).await?;
    let mut numbered = db::order_events::unsequenced(&mut *tx, BATCH).await?;
    let ours = turn.filter(|_| clock.relay_free);
    let mut next_position = clock.next_position;
    if !numbered.is_empty() || ours.is_some() {
        let relay = ours.map(|t| db::feed_clock::RelayTurn {
            holder: t.relay,
            lease_ms: t.lease.as_millis() as u64,
            published_through: t.published_through,
        });
        next_position =
            db::feed_clock::advance(&mut *tx, next_position, &mut numbered, relay).await?;
    }
    let mark = ours.and_then(|t| t.published_through).unwrap_or(0);
    let pass = Pass {
        numbered: numbered.into_iter().map(|u| u.event).collect(),
        published_through: clock.published_through.max(mark),
        next_position,
        relay: ours.is_some(),
        took_over_from: ours.and(clock.lapsed_holder),
    };
    Ok((pass, Numbering(tx)))
}

/// Numbers every event committed before the call (for read-your-writes in
/// the feed); one statement when there is nothing to number.
pub async fn catch_up(pool: &MySqlPool) -> sqlx::Result<()> {
    if !db::order_events::any_unsequenced(pool).await? {
        return Ok(());
    }
    while pass(pool, None).await?.numbered.len() as i64 == BATCH {}
    Ok(())
}
