//! What a group's failure answers, and how a group that lost a race is
//! tried again: shared by the create and the status-change writers.

use crate::db::orders::InsertError;
use crate::domain::Order;
use crate::error::{ApiError, ApiResult};

/// What happened to a group's transaction.
pub(super) enum GroupFailed {
    /// Nothing was written, for a reason that is no one request's.
    BeforeCommit(sqlx::Error),
    /// Nothing was written: an order's reference is taken.
    Duplicate,
    /// Nothing was written: these callers left before the commit.
    CallersGone(Vec<usize>),
    /// The commit failed, so the group may or may not be written.
    AtCommit,
}

impl From<sqlx::Error> for GroupFailed {
    fn from(e: sqlx::Error) -> GroupFailed {
        GroupFailed::BeforeCommit(e)
    }
}

impl From<InsertError> for GroupFailed {
    fn from(e: InsertError) -> GroupFailed {
        match e {
            InsertError::DuplicateReference => GroupFailed::Duplicate,
            InsertError::Db(e) => GroupFailed::BeforeCommit(e),
        }
    }
}

/// A group that loses a race (deadlock, lock wait) is written again, its
/// callers still waiting, this many times before they are answered 503.
pub(super) const CONFLICT_RETRIES: u32 = 5;

/// A few milliseconds, growing, with jitter so that two instances' groups
/// that deadlocked do not meet again.
pub(super) fn conflict_pause(conflicts: u32) -> std::time::Duration {
    let base = 5 * u64::from(conflicts);
    std::time::Duration::from_millis(base + rand::random_range(0..=base))
}

/// Answers for a group's items, filled in as they are settled.
pub(super) struct Answers(Vec<Option<ApiResult<Order>>>);

impl Answers {
    pub(super) fn new(count: usize) -> Answers {
        Answers((0..count).map(|_| None).collect())
    }

    pub(super) fn set(&mut self, i: usize, answer: ApiResult<Order>) {
        self.0[i] = Some(answer);
    }

    /// Every item left is answered with the failure of its group.
    pub(super) fn fail(&mut self, left: &mut Vec<usize>, failed: GroupFailed) {
        let unexpected = match &failed {
            GroupFailed::BeforeCommit(e) if !crate::error::is_transient_error(e) => {
                Some(e.to_string())
            }
            GroupFailed::Duplicate | GroupFailed::CallersGone(_) => {
                Some("unexpected outcome".into())
            }
            _ => None,
        };
        if let Some(error) = unexpected {
            tracing::error!(%error, count = left.len(), "writing a group failed");
        }
        for i in left.drain(..) {
            let answer = match &failed {
                GroupFailed::AtCommit => ApiError::OutcomeUnknown,
                GroupFailed::BeforeCommit(e) if crate::error::is_transient_error(e) => {
                    ApiError::Unavailable(
                        "the database is busy; nothing was written, retry shortly",
                    )
                }
                _ => ApiError::Internal,
            };
            self.set(i, Err(answer));
        }
    }

    pub(super) fn into_vec(self) -> Vec<ApiResult<Order>> {
        self.0
            .into_iter()
            .map(|a| a.unwrap_or(Err(ApiError::Unavailable("the request was abandoned"))))
            .collect()
    }
}
