//! Route parking: a circuit breaker that stops connecting to a smarthost that keeps failing at
//! the connection level, and lets one probe through when the parking period ends.

use std::time::{Duration, Instant};

/// When to park a route and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkPolicy {
    /// Consecutive connection-level failures that park the route. Default 3.
    pub threshold: u32,
    /// First parking period. Default 30 s.
    pub initial: Duration,
    /// Longest parking period; each failed probe doubles the period up to this. Default 5 min.
    pub max: Duration,
}

impl Default for ParkPolicy {
    fn default() -> Self {
        Self {
            threshold: 3,
            initial: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

/// What [`Breaker::admit`] decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The route is healthy: go ahead.
    Open,
    /// The parking period is over and this attempt is the probe.
    Probe,
    /// Parked (or a probe is already under way): do not connect.
    Parked,
}

/// Circuit-breaker state; pure, with the clock passed in.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: ParkPolicy,
    failures: u32,
    parked_until: Option<Instant>,
    period: Duration,
    probing: bool,
}

// === impl Breaker ===

impl Breaker {
    /// A healthy route.
    pub fn new(policy: ParkPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            parked_until: None,
            period: policy.initial,
            probing: false,
        }
    }

    /// Whether an attempt now would be refused.
    pub fn is_parked(&self, now: Instant) -> bool {
        match self.parked_until {
            None => false,
            Some(until) => now < until || self.probing,
        }
    }

    /// Decides whether an attempt may connect now; the first attempt after the parking period
    /// becomes the probe, and others wait for its result.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.parked_until {
            None => Admission::Open,
            Some(until) if now < until || self.probing => Admission::Parked,
            Some(_) => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// A connection was established: the route is healthy again. Returns whether it was parked.
    pub fn success(&mut self) -> bool {
        let was_parked = self.parked_until.is_some();
        *self = Self::new(self.policy);
        was_parked
    }

    /// A connection-level failure. Returns whether the route is (still) parked afterwards.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.probing {
            // The probe failed: park again, twice as long (capped).
            self.probing = false;
            self.period = (self.period * 2).min(self.policy.max);
            self.parked_until = Some(now + self.period);
        } else if self.parked_until.is_none() && self.failures >= self.policy.threshold {
            self.parked_until = Some(now + self.period);
        }
        self.parked_until.is_some()
    }

    /// An admitted probe ended without telling anything about the route (e.g. it was cancelled);
    /// let the next attempt probe instead.
    pub fn probe_abandoned(&mut self) {
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> ParkPolicy {
        ParkPolicy {
            threshold: 2,
            initial: 10 * S,
            max: 25 * S,
        }
    }

    #[test]
    fn parks_after_threshold_and_lets_one_probe_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        assert_eq!(b.admit(t0), Admission::Open);
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "second failure parks");
        assert!(b.is_parked(t0 + 9 * S));
        assert_eq!(b.admit(t0 + 9 * S), Admission::Parked);
        assert!(!b.is_parked(t0 + 10 * S), "period over");
        assert_eq!(b.admit(t0 + 10 * S), Admission::Probe);
        assert_eq!(
            b.admit(t0 + 10 * S),
            Admission::Parked,
            "only one probe at a time"
        );
        assert!(b.is_parked(t0 + 10 * S));
    }

    #[test]
    fn failed_probes_double_the_period_up_to_the_cap() {
        struct Case {
            probe_at: u32,
            want_parked_until: u32,
        }
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        b.failure(t0);
        b.failure(t0); // parked until 10
        let cases = [
            Case {
                probe_at: 10,
                want_parked_until: 30,
            },
            Case {
                probe_at: 30,
                want_parked_until: 55,
            },
            Case {
                probe_at: 55,
                want_parked_until: 80,
            },
        ];
        for c in cases {
            let at = t0 + c.probe_at * S;
            assert_eq!(b.admit(at), Admission::Probe);
            assert!(b.failure(at));
            let until = t0 + c.want_parked_until * S;
            assert!(
                b.is_parked(until - S) && !b.is_parked(until),
                "probe at {}",
                c.probe_at
            );
        }
    }

    #[test]
    fn a_successful_probe_unparks_and_resets() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.admit(t0 + 10 * S), Admission::Probe);
        assert!(b.success(), "was parked");
        assert!(!b.is_parked(t0 + 10 * S));
        assert!(!b.failure(t0 + 11 * S), "counter was reset");
        assert!(!b.success());
    }
}
