//! Token bucket for `limits.ratePerMinute` (inbound) and `shaping` (per destination): a full
//! minute's worth may go at once, then the configured rate (pure; the caller passes the clock).

use std::time::Instant;

/// A token bucket refilled continuously at `per_minute / 60` tokens a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        Self {
            per_minute,
            tokens: f64::from(per_minute),
            last: now,
        }
    }

    /// The configured rate.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// How long from `now` until a token is there (zero when one is).
    pub fn wait(&self, now: Instant) -> std::time::Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let per_second = f64::from(self.per_minute) / 60.0;
        let tokens = (self.tokens + elapsed * per_second).min(f64::from(self.per_minute));
        if tokens >= 1.0 || per_second <= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64((1.0 - tokens) / per_second)
        }
    }

    /// Whether the bucket is full at `now` (as a new one would be).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(self.per_minute) / 60.0 >= f64::from(self.per_minute)
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let cap = f64::from(self.per_minute);
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_minute_of_burst_then_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, t0);
        assert_eq!(
            (0..100).filter(|_| b.try_take(t0)).count(),
            60,
            "burst of one minute's worth"
        );
        assert!(
            !b.try_take(t0 + Duration::from_millis(500)),
            "half a token is not enough"
        );
        assert!(
            b.try_take(t0 + Duration::from_millis(1000)),
            "one per second after that"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(1100)));
        // A long pause refills to the cap, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.try_take(later)).count(), 60);
    }
}
