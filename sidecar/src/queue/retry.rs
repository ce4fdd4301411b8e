//! Pure retry schedule: jittered exponential backoff between attempts, and when to give up.

use crate::config::Retry;
use std::time::Duration;

/// Lowest jitter factor; the factor is `JITTER_LOW + JITTER_SPAN * jitter`, i.e. in [0.8, 1.2).
pub const JITTER_LOW: f64 = 0.8;
/// Width of the jitter band (±20 % around the nominal delay).
pub const JITTER_SPAN: f64 = 0.4;

/// The wait before the next attempt, after `attempt` attempts have failed (0 = none yet).
///
/// The nominal delay is `initial_seconds × multiplier^(attempt-1)`, capped at `max_seconds`. It
/// is then multiplied by a factor in [0.8, 1.2) chosen by `jitter` (uniform in [0, 1)), so that
/// messages deferred together do not retry together. The jitter is applied after the cap on
/// purpose: capped retries still spread out, so a delay may exceed `max_seconds` by up to 20 %.
/// `attempt == 0` gives zero: the first attempt is immediate.
pub fn next_delay(attempt: u32, cfg: &Retry, jitter: f64) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
    let nominal = (cfg.initial_seconds as f64 * cfg.multiplier.powi(exponent)).min(cfg.max_seconds as f64);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let secs = nominal * (JITTER_LOW + JITTER_SPAN * jitter);
    // NaN (a zero×inf multiplier) or negative values cannot come from a validated config.
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs)
    } else {
        Duration::ZERO
    }
}

/// Whether a message received at `received_at` has been queued longer than `max_age_seconds`
/// at `now` (both seconds since the epoch); it then bounces with status 4.4.7 (RFC 3463).
pub fn expired(received_at: u64, now: u64, cfg: &Retry) -> bool {
    now.saturating_sub(received_at) >= cfg.max_age_seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Retry {
        Retry {
            initial_seconds: 60,
            multiplier: 2.0,
            max_seconds: 3600,
            max_age_seconds: 5 * 86400,
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        struct Case {
            attempt: u32,
            jitter: f64,
            want_ms: u64,
        }
        let cases = [
            Case {
                attempt: 0,
                jitter: 0.5,
                want_ms: 0,
            },
            Case {
                attempt: 1,
                jitter: 0.5,
                want_ms: 60_000,
            },
            Case {
                attempt: 2,
                jitter: 0.5,
                want_ms: 120_000,
            },
            Case {
                attempt: 3,
                jitter: 0.5,
                want_ms: 240_000,
            },
            Case {
                attempt: 7,
                jitter: 0.5,
                want_ms: 3_600_000,
            },
            Case {
                attempt: 1000,
                jitter: 0.5,
                want_ms: 3_600_000,
            },
            Case {
                attempt: u32::MAX,
                jitter: 0.5,
                want_ms: 3_600_000,
            },
            Case {
                attempt: 1,
                jitter: 0.0,
                want_ms: 48_000,
            },
            Case {
                attempt: 1,
                jitter: 0.999_999,
                want_ms: 71_999,
            },
            Case {
                attempt: 7,
                jitter: 0.0,
                want_ms: 2_880_000,
            },
            Case {
                attempt: 1,
                jitter: f64::NAN,
                want_ms: 60_000,
            },
            Case {
                attempt: 1,
                jitter: 7.0,
                want_ms: 72_000,
            },
        ];
        for c in cases {
            let got = next_delay(c.attempt, &cfg(), c.jitter).as_millis() as u64;
            assert_eq!(got, c.want_ms, "attempt {} jitter {}", c.attempt, c.jitter);
        }
    }

    #[test]
    fn multiplier_one_is_a_constant_interval() {
        let cfg = Retry {
            multiplier: 1.0,
            ..cfg()
        };
        for attempt in 1..20 {
            assert_eq!(next_delay(attempt, &cfg, 0.5), Duration::from_secs(60));
        }
    }

    #[test]
    fn messages_expire_at_max_age() {
        struct Case {
            received_at: u64,
            now: u64,
            want: bool,
        }
        let max = 5 * 86400;
        let cases = [
            Case {
                received_at: 1000,
                now: 1000,
                want: false,
            },
            Case {
                received_at: 1000,
                now: 1000 + max - 1,
                want: false,
            },
            Case {
                received_at: 1000,
                now: 1000 + max,
                want: true,
            },
            Case {
                received_at: 1000,
                now: 500,
                want: false,
            }, // clock went backwards
        ];
        for c in cases {
            assert_eq!(
                expired(c.received_at, c.now, &cfg()),
                c.want,
                "{} {}",
                c.received_at,
                c.now
            );
        }
    }
}
