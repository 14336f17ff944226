//! What an attempt's result makes of a delivery: a pure function of the
//! delivery's state, the response and the schedule, with its table beside it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::deliveries::{DeliveryRow, Settled, FAILED, PENDING, SUCCEEDED};
use crate::db::webhook_attempts::AttemptRow;
use crate::domain::notice::FailedDelivery;

/// Longest `Retry-After` honored.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delivery as it was claimed.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    pub status: &'static str,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Asked for by hand (`…/retry`): one more attempt, not a new schedule.
    pub manual: bool,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// What the endpoint answered.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// `None`: no answer (refused, timed out, …).
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// `scheduled` is the schedule's delay after this many attempts (with its
/// jitter), `None` when the schedule is spent.
pub fn decide(
    before: Before,
    response: Response,
    scheduled: Option<Duration>,
    now: DateTime<Utc>,
) -> Decision {
    let attempts = before.attempts + 1;
    let settle = |status, next_attempt_at| Decision {
        status,
        attempts,
        next_attempt_at,
    };
    let succeeded = response.status.is_some_and(|s| (200..300).contains(&s));
    if succeeded {
        return settle(SUCCEEDED, None);
    }
    if before.manual && before.status != PENDING {
        // A settled delivery tried once more by hand keeps its verdict.
        return settle(
            if before.status == SUCCEEDED {
                SUCCEEDED
            } else {
                FAILED
            },
            None,
        );
    }
    if before.manual {
        return settle(PENDING, before.next_attempt_at);
    }
    if response.status == Some(410) {
        return settle(FAILED, None);
    }
    let Some(scheduled) = scheduled else {
        return settle(FAILED, None);
    };
    // Retry-After (429, 503) can only push the next attempt later.
    let asked = response
        .retry_after
        .filter(|_| matches!(response.status, Some(429 | 503)))
        .map(|d| d.min(MAX_RETRY_AFTER))
        .unwrap_or_default();
    let delay = scheduled.max(asked);
    settle(
        PENDING,
        Some(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1))),
    )
}

/// What an attempt (or the decision not to make one) leaves to write.
pub struct Outcome {
    pub settled: Settled,
    pub attempt: Option<AttemptRow>,
    pub endpoint_id: Uuid,
    pub order_id: Option<Uuid>,
    pub health: Health,
    /// The delivery of an order event failed for good with this attempt:
    /// what `delivery.failed` tells the customer's other endpoints.
    pub failed: Option<FailedDelivery>,
}

pub enum Health {
    Unchanged,
    Succeeded { was_failing: bool },
    Failed,
    Gone,
}

/// A delivery that cannot be attempted fails visibly, unattempted.
pub(super) fn unattempted(row: &DeliveryRow, leased_at: DateTime<Utc>, reason: String) -> Outcome {
    Outcome {
        settled: Settled {
            id: row.id,
            lease_id: row.lease_id.unwrap_or_default(),
            leased_at,
            status: FAILED,
            attempts: row.attempts,
            last_response_status: None,
            last_error: Some(reason),
            next_attempt_at: None,
        },
        attempt: None,
        endpoint_id: row.endpoint_id,
        order_id: row.order_id,
        health: Health::Unchanged,
        // Not attempted: its endpoint was deleted (by the customer) or
        // disabled (`endpoint.disabled` told them).
        failed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_table() {
        let now = crate::domain::time::now();
        let later = now + chrono::Duration::minutes(30);
        let at = |d: Duration| Some(now + chrono::Duration::from_std(d).unwrap());
        let pending = Before {
            status: PENDING,
            attempts: 0,
            manual: false,
            next_attempt_at: Some(now),
        };
        let answer = |status: Option<u16>, retry_after: Option<u64>| Response {
            status,
            retry_after: retry_after.map(S),
        };
        type Row = (
            &'static str,
            Before,
            Response,
            Option<Duration>,
            &'static str,
            Option<DateTime<Utc>>,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("2xx succeeds", pending, answer(Some(204), None), Some(S(5)), SUCCEEDED, None),
            ("5xx follows the schedule", pending, answer(Some(500), None), Some(S(5)), PENDING, at(S(5))),
            ("no answer follows the schedule", pending, answer(None, None), Some(S(300)), PENDING, at(S(300))),
            ("spent schedule fails", pending, answer(Some(500), None), None, FAILED, None),
            ("410 fails at once", pending, answer(Some(410), None), Some(S(5)), FAILED, None),
            ("Retry-After longer than the schedule wins", pending, answer(Some(503), Some(60)), Some(S(5)), PENDING, at(S(60))),
            ("Retry-After never shortens the schedule", pending, answer(Some(503), Some(1)), Some(S(7200)), PENDING, at(S(7200))),
            ("Retry-After is capped at an hour", pending, answer(Some(429), Some(86_400)), Some(S(5)), PENDING, at(MAX_RETRY_AFTER)),
            ("Retry-After counts only on 429 and 503", pending, answer(Some(500), Some(600)), Some(S(5)), PENDING, at(S(5))),
            ("Retry-After cannot save a spent schedule", pending, answer(Some(503), Some(1)), None, FAILED, None),
            ("manual retry of a failed one fails again", Before { status: FAILED, attempts: 8, manual: true, next_attempt_at: None }, answer(Some(500), None), Some(S(5)), FAILED, None),
            ("manual retry of a succeeded one stays succeeded", Before { status: SUCCEEDED, attempts: 1, manual: true, next_attempt_at: None }, answer(None, None), Some(S(5)), SUCCEEDED, None),
            ("manual retry of a failed one can succeed", Before { status: FAILED, attempts: 8, manual: true, next_attempt_at: None }, answer(Some(200), None), None, SUCCEEDED, None),
            ("manual retry of a pending one keeps its schedule", Before { status: PENDING, attempts: 2, manual: true, next_attempt_at: Some(later) }, answer(Some(500), None), Some(S(5)), PENDING, Some(later)),
        ];
        for (name, before, response, scheduled, status, next) in table {
            let decision = decide(before, response, scheduled, now);
            assert_eq!(decision.status, status, "{name}");
            assert_eq!(decision.next_attempt_at, next, "{name}");
            assert_eq!(decision.attempts, before.attempts + 1, "{name}");
        }
    }

    /// Seven 503s with `Retry-After: 1` used to fail a delivery in 8 s; the
    /// default schedule's ~28 h must stand.
    #[test]
    fn short_retry_after_keeps_the_whole_schedule() {
        let schedule =
            crate::delivery::schedule::RetrySchedule::parse("5s,5m,30m,2h,5h,10h,10h").unwrap();
        let mut now = crate::domain::time::now();
        let start = now;
        let mut before = Before {
            status: PENDING,
            attempts: 0,
            manual: false,
            next_attempt_at: Some(now),
        };
        loop {
            let d = decide(
                before,
                Response {
                    status: Some(503),
                    retry_after: Some(S(1)),
                },
                schedule.after(before.attempts + 1),
                now,
            );
            match d.next_attempt_at {
                Some(next) => {
                    now = next;
                    before = Before {
                        status: d.status,
                        attempts: d.attempts,
                        manual: false,
                        next_attempt_at: d.next_attempt_at,
                    };
                }
                None => {
                    assert_eq!(d.status, FAILED);
                    assert_eq!(d.attempts, 8);
                    break;
                }
            }
        }
        let took = (now - start).num_hours();
        assert!((22..=34).contains(&took), "failed after {took} h");
    }
}
