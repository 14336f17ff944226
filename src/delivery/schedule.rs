//! Durations in settings (`250ms`, `5s`, `5m`, `2h`, `5d`) and the retry
//! schedule with its ±20 % jitter.

use std::time::Duration;

use rand::Rng;

/// Parses one duration: an integer and a unit (ms, s, m, h, d).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 5s, 5m, 2h or 5d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{raw}` is not a duration like 5s, 5m, 2h or 5d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Delays before retries 1..n, after the first attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl RetrySchedule {
    pub fn parse(raw: &str) -> Result<RetrySchedule, String> {
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()
            .map(RetrySchedule)
    }

    /// The delay before the next attempt once `attempts` have failed, or
    /// `None` when the schedule is spent.
    pub fn after(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.0.get(index).map(|d| jitter(*d))
    }
}

/// ±20 %, so endpoints that failed together are not retried in lockstep.
fn jitter(delay: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..=1.2);
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        for bad in ["", "5", "s", "5w", "-5s", "5.5s", "five s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schedule_is_followed_with_jitter_then_spent() {
        let schedule = RetrySchedule::parse("5s,5m,30m,2h,5h,10h,10h").unwrap();
        assert_eq!(schedule.0.len(), 7);
        for (attempts, base) in [(1u32, 5.0), (2, 300.0), (7, 36_000.0)] {
            let delay = schedule.after(attempts).unwrap().as_secs_f64();
            assert!(
                (base * 0.8..=base * 1.2).contains(&delay),
                "{attempts}: {delay}"
            );
        }
        assert_eq!(schedule.after(8), None);
        assert_eq!(schedule.after(0), None);
        assert!(RetrySchedule::parse("5s,soon").is_err());
    }
}
