//! Refusals: the database answers, but refuses a fan-out for a reason that
//! is no outage: a statement it will not run, or a row this code cannot
//! read (a deploy request changed the schema ahead of the code, say).
//! Receiving again at once would fail the same way and pull the whole
//! queue through the failing statement, so every receiver pauses, longer
//! after each refusal in a row, until a fan-out holds again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long receipt pauses after `in_a_row` refusals in a row: a second,
/// doubling, at most a minute (how late a mended schema is noticed).
pub(super) fn pause_after(in_a_row: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);
    FIRST
        .saturating_mul(1 << in_a_row.saturating_sub(1).min(16))
        .min(LONGEST)
}

#[derive(Default)]
pub(super) struct Refusals {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_a_row: u32,
    until: Option<Instant>,
}

impl Refusals {
    /// A fan-out was refused at `now`: how long receipt pauses.
    pub(super) fn refused(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_a_row += 1;
        let pause = pause_after(state.in_a_row);
        state.until = Some(now + pause);
        pause
    }

    /// A fan-out held: receipt goes on as usual.
    pub(super) fn held(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.in_a_row > 0 {
            tracing::info!(
                refused_in_a_row = state.in_a_row,
                "a fan-out held again after refusals"
            );
        }
        *state = State::default();
    }

    /// What is left at `now` of the pause, if receipt is paused.
    pub(super) fn paused_for(&self, now: Instant) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let left = state.until?.checked_duration_since(now)?;
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_a_second_to_a_minute() {
        let s = Duration::from_secs;
        for (in_a_row, pause) in [
            (0, s(1)),
            (1, s(1)),
            (2, s(2)),
            (3, s(4)),
            (6, s(32)),
            (7, s(60)),
            (40, s(60)),
            (u32::MAX, s(60)),
        ] {
            assert_eq!(pause_after(in_a_row), pause, "after {in_a_row} in a row");
        }
    }

    #[test]
    fn receipt_pauses_after_each_refusal_until_a_fan_out_holds() {
        let refusals = Refusals::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(refusals.paused_for(t0), None);
        assert_eq!(refusals.refused(t0), Duration::from_secs(1));
        assert_eq!(refusals.refused(t0), Duration::from_secs(2));
        assert_eq!(refusals.paused_for(t0), Some(Duration::from_secs(2)));
        assert_eq!(
            refusals.paused_for(at(1500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(refusals.paused_for(at(2000)), None, "the pause is over");
        assert_eq!(refusals.refused(at(2000)), Duration::from_secs(4));
        refusals.held();
        assert_eq!(refusals.paused_for(at(2000)), None);
        assert_eq!(
            refusals.refused(at(2000)),
            Duration::from_secs(1),
            "counted anew"
        );
    }
}
