//! Per-API-key request limits: a token bucket per key, kept in memory.
//!
//! Each key may make `per_second` requests a second on average and up to
//! `burst` at once. The buckets live in each API instance, so with N
//! instances behind a balancer a key gets up to N times the figure.
//! The operator token is not limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The configured limit; `per_second == 0` turns limiting off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets beyond this many trigger a sweep of the full (idle) ones, so
/// memory follows the number of recently active keys; at most one sweep a
/// second, so many active keys do not make every request walk the map.
const SWEEP_ABOVE: usize = 10_000;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<Buckets>,
}

struct Buckets {
    by_key: HashMap<[u8; 32], Bucket>,
    swept: Option<Instant>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            state: Mutex::new(Buckets {
                by_key: HashMap::new(),
                swept: None,
            }),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there.
    pub fn check(&self, key: &[u8; 32]) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &[u8; 32], now: Instant) -> Result<(), Duration> {
        if self.limit.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst.max(1));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY);
        if state.by_key.len() > SWEEP_ABOVE && due {
            state.by_key.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
            state.swept = Some(now);
        }
        let bucket = state.by_key.entry(*key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst })
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limiter = limiter(10, 3);
        let key = [1u8; 32];
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(&key, start).is_ok());
        }
        let wait = limiter.check_at(&key, start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // A tenth of a second later one more token has come.
        let later = start + Duration::from_millis(100);
        assert!(limiter.check_at(&key, later).is_ok());
        assert!(limiter.check_at(&key, later).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        assert!(limiter.check_at(&[1; 32], now).is_ok());
        assert!(limiter.check_at(&[1; 32], now).is_err());
        assert!(limiter.check_at(&[2; 32], now).is_ok());
    }

    #[test]
    fn an_idle_key_refills_only_to_the_burst() {
        let limiter = limiter(100, 5);
        let key = [3u8; 32];
        let start = Instant::now();
        assert!(limiter.check_at(&key, start).is_ok());
        let much_later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check_at(&key, much_later).is_ok());
        }
        assert!(limiter.check_at(&key, much_later).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = RateLimiter::new(RateLimit::OFF);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert!(limiter.check_at(&[0; 32], now).is_ok());
        }
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limiter = limiter(1000, 1);
        let start = Instant::now();
        for i in 0..=SWEEP_ABOVE as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let _ = limiter.check_at(&key, start);
        }
        let _ = limiter.check_at(&[9; 32], start + Duration::from_secs(1));
        assert_eq!(limiter.state.lock().unwrap().by_key.len(), 1);
    }
}
