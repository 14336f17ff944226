//! A fan-out's commit, made while the attempts of the deliveries it leased
//! are under way: what it left in the database, so that an attempt's
//! outcome is written only if its delivery exists, and so that a commit
//! that failed still leaves every attempt made recorded.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::{MySql, MySqlPool, Transaction};
use uuid::Uuid;

use crate::db;
use crate::db::deliveries::DeliveryRow;

/// A fan-out's transaction, done but for its commit: its deliveries exist
/// (and the rows it locked stay locked) once `commit` succeeds.
pub struct Recording {
    tx: Option<Transaction<'static, MySql>>,
    /// Copies of its leased deliveries, to write again if the commit fails
    /// while their attempts are under way (`commit_or_rewrite`).
    leased: Vec<DeliveryRow>,
}

/// Which leased deliveries of a fan-out exist once its commit answered: an
/// attempt made meanwhile is recorded only if its delivery is among them.
#[derive(Debug)]
pub enum Kept {
    All,
    These(HashSet<Uuid>),
}

impl Kept {
    pub fn holds(&self, delivery: Uuid) -> bool {
        match self {
            Kept::All => true,
            Kept::These(ids) => ids.contains(&delivery),
        }
    }
}

/// What `Recording::commit_or_rewrite` left in the database.
#[derive(Debug)]
pub struct Commit {
    pub kept: Arc<Kept>,
    /// `Ok`: the whole fan-out is recorded. `Err`: the commit failed, and
    /// the batch's events are to be fanned out again for the rest.
    pub result: sqlx::Result<()>,
    /// After the failed commit, its leased deliveries were written again:
    /// the database answers.
    pub rewritten: bool,
}

impl Recording {
    /// `tx` (none if the fan-out wrote nothing) and copies of the
    /// deliveries it leased.
    pub(super) fn new(
        tx: Option<Transaction<'static, MySql>>,
        leased: Vec<DeliveryRow>,
    ) -> Recording {
        Recording { tx, leased }
    }

    pub async fn commit(self) -> sqlx::Result<()> {
        match self.tx {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }

    /// Commits while the leased deliveries' attempts are under way. If the
    /// commit fails, those deliveries are written again as they were, in a
    /// transaction of their own (tried until `give_up`), so that what comes
    /// of their attempts is recorded all the same:
    /// - found all there (only the answer to the commit was lost): the
    ///   whole fan-out is recorded;
    /// - written again (it rolled back): the attempts are recorded, and the
    ///   rest of the fan-out (deliveries made waiting, or not leased) is
    ///   made when the events are fanned out again, which finds these;
    /// - another worker made a delivery of the same event to the same
    ///   endpoint meanwhile: that attempt goes unrecorded (logged).
    ///
    /// The write waits for the failed commit's row locks if its session
    /// still holds them, so it never takes a commit still under way for a
    /// rollback.
    pub async fn commit_or_rewrite(
        self,
        pool: &MySqlPool,
        give_up: tokio::time::Instant,
    ) -> Commit {
        let Some(tx) = self.tx else {
            return Commit::all(false);
        };
        let error = match tx.commit().await {
            Ok(()) => return Commit::all(false),
            Err(e) => e,
        };
        let leased = self.leased;
        if leased.is_empty() {
            // No attempt under way: the caller gives the leases back.
            return Commit::failed(error, HashSet::new(), false);
        }
        let mut pause = std::time::Duration::from_millis(20);
        let mut first = true;
        loop {
            match rewrite(pool, &leased).await {
                // Found as the fan-out wrote them: it committed. Only on the
                // first try: a later one may find an earlier try's rows.
                Ok((0, kept)) if first && kept.len() == leased.len() => {
                    tracing::info!(count = kept.len(), "a fan-out whose commit went unanswered had committed; its attempts are recorded");
                    return Commit::all(true);
                }
                Ok((_, kept)) => {
                    if kept.len() < leased.len() {
                        tracing::warn!(
                            count = leased.len() - kept.len(),
                            "requests went out while their fan-out's commit failed, and another worker made the same deliveries meanwhile: not recorded"
                        );
                    }
                    tracing::info!(error = %error, count = kept.len(), "a fan-out's commit failed while its attempts were under way; their deliveries were written again");
                    return Commit::failed(error, kept, true);
                }
                Err(e) if tokio::time::Instant::now() + pause < give_up => {
                    tracing::warn!(error = %e, retry_in = ?pause, "writing again the deliveries of a fan-out whose commit failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                    first = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, count = leased.len(), "requests went out while their fan-out's commit failed, and their deliveries could not be written again: not recorded; their events are fanned out and sent again");
                    return Commit::failed(error, HashSet::new(), false);
                }
            }
        }
    }
}

impl Commit {
    fn all(rewritten: bool) -> Commit {
        Commit {
            kept: Arc::new(Kept::All),
            result: Ok(()),
            rewritten,
        }
    }

    fn failed(error: sqlx::Error, kept: HashSet<Uuid>, rewritten: bool) -> Commit {
        Commit {
            kept: Arc::new(Kept::These(kept)),
            result: Err(error),
            rewritten,
        }
    }
}

/// Writes `rows` unless they exist, in one transaction: how many it wrote,
/// and which of them exist now.
async fn rewrite(pool: &MySqlPool, rows: &[DeliveryRow]) -> sqlx::Result<(u64, HashSet<Uuid>)> {
    let mut tx = pool.begin().await?;
    let created = db::deliveries::insert_many(&mut *tx, rows).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let existing = db::deliveries::existing_ids(&mut *tx, &ids).await?;
    tx.commit().await?;
    Ok((created, existing.into_iter().collect()))
}
