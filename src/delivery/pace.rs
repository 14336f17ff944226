//! Pace: an endpoint's lane in this worker (its attempt slots, the leased
//! deliveries it may hold) and its `rate_limit_per_second`, which holds
//! across every worker and Lambda container: each attempt to a limited
//! endpoint reserves its turn on the endpoint's row
//! (`db::webhook_endpoints::reserve_turn`), at least `interval` after the
//! turn before it, once it holds its slots and is about to start. In one
//! worker, one delivery per endpoint at a time reserves and waits for its
//! turn (`Lane::pacer`), so turns are taken in order and none is wasted.

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
/// 1/limit, plus a little (2 %, at most 5 ms), so that arrivals jittered by
/// the network still fit in any one-second window.
pub(super) fn interval(per_second: u32) -> Duration {
    let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    interval + (interval / 50).min(Duration::from_millis(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_a_little_more_than_one_over_the_limit_apart() {
        for (per_second, micros) in [(1, 1_005_000), (4, 255_000), (100, 10_200), (10_000, 102)] {
            assert_eq!(
                interval(per_second),
                Duration::from_micros(micros),
                "{per_second}/s"
            );
        }
        assert_eq!(interval(0), interval(1));
    }
}
