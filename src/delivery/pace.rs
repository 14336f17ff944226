//! Pace: an endpoint's lane in this worker (its attempt slots, the leased
//! deliveries it may hold) and its `rate_limit_per_second`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// One endpoint's slots in this worker: attempts in flight, and leased
/// deliveries held (waiting or in flight).
#[derive(Clone)]
pub(super) struct Lane {
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) held: Arc<Semaphore>,
    pub(super) pace: Arc<Pace>,
}

/// An endpoint's `rate_limit_per_second` in this worker: attempts start at
/// least 1/limit apart (plus a little, so that arrivals jittered by the
/// network still fit in any one-second window).
#[derive(Default)]
pub(super) struct Pace(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Pace {
    /// When the next attempt may start, if that is no later than `latest`:
    /// that moment is then reserved. A moment past `latest` is not reserved,
    /// so a delivery that gives its lease back takes no one's place (else
    /// the pace would drift ever further ahead of the clock and nothing
    /// would be sent).
    pub(super) fn reserve(
        &self,
        per_second: u32,
        latest: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let interval = interval + (interval / 50).min(Duration::from_millis(5));
        let now = tokio::time::Instant::now();
        let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = next.map_or(now, |n| n.max(now));
        if at > latest {
            return None;
        }
        *next = Some(at + interval);
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spaces_attempts_and_reserves_only_turns_that_come_in_time() {
        let pace = Pace::default();
        let start = tokio::time::Instant::now();
        let latest = start + Duration::from_millis(2500);
        let turns: Vec<_> = (0..3).map(|_| pace.reserve(1, latest).unwrap()).collect();
        let interval = Duration::from_millis(1005);
        assert_eq!(turns[1] - turns[0], interval);
        assert_eq!(turns[2] - turns[1], interval);
        // Too late for this delivery: nothing reserved, so the next one
        // still gets the turn right after the last.
        assert_eq!(pace.reserve(1, latest), None);
        assert_eq!(pace.reserve(1, latest), None);
        let later = pace.reserve(1, start + Duration::from_secs(60)).unwrap();
        assert_eq!(later - turns[2], interval);
        // 2 % more than 1/limit, at most 5 ms more (1 s + 5 ms above).
        let fast = Pace::default();
        let a = fast.reserve(100, latest).unwrap();
        let b = fast.reserve(100, latest).unwrap();
        assert_eq!(b - a, Duration::from_micros(10_200));
    }
}
