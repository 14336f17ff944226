//! Pace: an endpoint's lane in this worker (its attempt slots, the leased
//! deliveries it may hold) and its `rate_limit_per_second`, which holds
//! across every worker and Lambda container: each attempt to a limited
//! endpoint reserves its turn on the endpoint's row
//! (`db::webhook_endpoints::reserve_turn`), at least `interval` after the
//! turn before it, once it holds its slots and is about to start. In one
//! worker, one delivery per endpoint at a time reserves and waits for its
//! turn (`Lane::pacer`), so turns are taken in order and none is wasted; a
//! delivery whose request was held up past its turn, and not sent, reserves
//! its next one without the pacer (it already holds a worker slot).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};

/// One endpoint's slots in this worker: attempts in flight, and leased
/// deliveries held (waiting or in flight).
#[derive(Clone)]
pub(super) struct Lane {
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) held: Arc<Semaphore>,
    /// Held by the delivery of this endpoint that reserves and awaits the
    /// next turn under its rate limit.
    pub(super) pacer: Arc<Mutex<()>>,
}

/// How far apart attempts to an endpoint limited to `per_second` start:
/// 5 % more than 1/limit. Any `per_second + 1` turns then span 1.05 s, so
/// requests that start up to 50 ms after their turn (a busy process, the
/// network, the receiver's own clock) still never make `per_second + 1` in
/// one second.
pub(super) fn interval(per_second: u32) -> Duration {
    Duration::from_nanos(1_050_000_000 / u64::from(per_second.max(1)))
}

/// How late a delivery's request may leave after its turn: half of the
/// 50 ms the interval leaves, the other half for the network and the
/// receiver. Later than that (the database paused between the reservation
/// and its answer, a process starved of CPU, a request held up in the HTTP
/// client), sending would crowd the turns after it: the turn is left
/// unused and another reserved. Checked when the turn comes, and again by
/// the connection as it writes the request (`WebhookClient::attempt_by`).
pub(super) const LATE_AT_MOST: Duration = Duration::from_millis(25);

/// Whether a turn found `late` after its time may still be taken.
pub(super) fn still_on_time(late: Duration) -> bool {
    late <= LATE_AT_MOST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_five_percent_more_than_one_over_the_limit_apart() {
        for (per_second, micros) in [(1, 1_050_000), (4, 262_500), (100, 10_500), (10_000, 105)] {
            assert_eq!(
                interval(per_second),
                Duration::from_micros(micros),
                "{per_second}/s"
            );
        }
        assert_eq!(interval(0), interval(1));
    }

    #[test]
    fn a_late_turn_is_left_once_it_would_crowd_the_next_second() {
        // `per_second + 1` turns span `per_second` intervals: what a late
        // first one may use up without the last one joining its second.
        for per_second in [1, 4, 10, 1000] {
            let span = interval(per_second) * per_second;
            assert!(
                span >= Duration::from_secs(1) + LATE_AT_MOST * 2,
                "{per_second}/s"
            );
        }
        for (late, takes) in [
            (0, true),
            (10, true),
            (25, true),
            (26, false),
            (8000, false),
        ] {
            assert_eq!(
                still_on_time(Duration::from_millis(late)),
                takes,
                "{late} ms"
            );
        }
    }
}
