//! Per-destination shaping (config `shaping`): how many attempts may run at once, and how many
//! messages a minute may start, per recipient domain. The runner asks before it starts an
//! attempt; a message to several domains needs room at every one of them. Pure: the caller passes
//! the clock.

use crate::{config, rate::TokenBucket};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// What the runner may do with a message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Start the attempt (the shaper counted it).
    Go,
    /// This destination has all the attempts it may have; wait for one to end.
    Full(String),
    /// This destination is over its rate; try again after this long.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    concurrency: usize,
    rate_per_minute: Option<u32>,
}

/// The shaping state of one runner.
#[derive(Debug)]
pub struct Shaper {
    default: Limits,
    domains: HashMap<String, Limits>,
    in_flight: HashMap<String, usize>,
    buckets: HashMap<String, TokenBucket>,
}

impl Shaper {
    /// Shaping per `cfg`; a destination without a concurrency of its own may have
    /// `route_concurrency` attempts at once.
    pub fn new(cfg: &config::Shaping, route_concurrency: usize) -> Self {
        let mut s = Self {
            default: Limits {
                concurrency: 1,
                rate_per_minute: None,
            },
            domains: HashMap::new(),
            in_flight: HashMap::new(),
            buckets: HashMap::new(),
        };
        s.configure(cfg, route_concurrency);
        s
    }

    /// Applies a new config generation; attempts under way stay counted, and a destination whose
    /// rate did not change keeps its bucket (a reload hands out no new burst).
    pub fn configure(&mut self, cfg: &config::Shaping, route_concurrency: usize) {
        let resolve = |l: &config::DestinationLimits, fallback: usize| Limits {
            concurrency: l.concurrency.unwrap_or(fallback).max(1),
            rate_per_minute: l.rate_per_minute,
        };
        self.default = resolve(&cfg.default, route_concurrency);
        let default_concurrency = self.default.concurrency;
        self.domains = cfg
            .domains
            .iter()
            .map(|(d, l)| (d.clone(), resolve(l, default_concurrency)))
            .map(|(d, mut l)| {
                if cfg.domains[&d].rate_per_minute.is_none() {
                    l.rate_per_minute = self.default.rate_per_minute;
                }
                (d, l)
            })
            .collect();
        let (domains, default) = (&self.domains, self.default);
        self.buckets
            .retain(|d, b| domains.get(d).unwrap_or(&default).rate_per_minute == Some(b.per_minute()));
    }

    fn limits(&self, domain: &str) -> Limits {
        self.domains.get(domain).copied().unwrap_or(self.default)
    }

    /// Whether an attempt to `domains` may start now; on [`Admission::Go`] it is counted (and a
    /// token taken at each rate-limited destination) until [`Shaper::done`].
    pub fn admit(&mut self, domains: &[String], now: Instant) -> Admission {
        let mut longest = Duration::ZERO;
        for d in domains {
            let l = self.limits(d);
            if self.in_flight.get(d).copied().unwrap_or(0) >= l.concurrency {
                return Admission::Full(d.clone());
            }
            if let Some(rate) = l.rate_per_minute {
                let bucket = self
                    .buckets
                    .entry(d.clone())
                    .or_insert_with(|| TokenBucket::new(rate, now));
                longest = longest.max(bucket.wait(now));
            }
        }
        if !longest.is_zero() {
            return Admission::Wait(longest);
        }
        for d in domains {
            if let Some(b) = self.buckets.get_mut(d) {
                b.try_take(now);
            }
            *self.in_flight.entry(d.clone()).or_default() += 1;
        }
        Admission::Go
    }

    /// An attempt admitted for `domains` ended.
    pub fn done(&mut self, domains: &[String]) {
        for d in domains {
            if let Some(n) = self.in_flight.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.in_flight.remove(d);
                }
            }
        }
    }

    /// Forgets the buckets that are full again (they would start full anyway), so that one
    /// burst of mail to many domains does not stay in memory.
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaping(yaml: &str) -> config::Shaping {
        serde_yaml_ng::from_str(yaml).expect("shaping")
    }

    fn d(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_destination_gets_its_concurrency_and_no_more_while_others_go_on() {
        let t0 = Instant::now();
        let mut s = Shaper::new(&shaping("domains:\n  slow.example: {concurrency: 2}\n"), 4);
        assert_eq!(s.admit(&d(&["slow.example"]), t0), Admission::Go);
        assert_eq!(s.admit(&d(&["slow.example"]), t0), Admission::Go);
        assert_eq!(
            s.admit(&d(&["slow.example"]), t0),
            Admission::Full("slow.example".into())
        );
        for _ in 0..4 {
            assert_eq!(
                s.admit(&d(&["fast.example"]), t0),
                Admission::Go,
                "the default is the route's 4"
            );
        }
        assert_eq!(
            s.admit(&d(&["fast.example"]), t0),
            Admission::Full("fast.example".into())
        );
        // A message to both needs room at both.
        s.done(&d(&["fast.example"]));
        assert_eq!(
            s.admit(&d(&["fast.example", "slow.example"]), t0),
            Admission::Full("slow.example".into())
        );
        s.done(&d(&["slow.example"]));
        assert_eq!(s.admit(&d(&["fast.example", "slow.example"]), t0), Admission::Go);
    }

    #[test]
    fn a_rate_lets_a_minutes_worth_go_then_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut s = Shaper::new(&shaping("domains:\n  rated.example: {ratePerMinute: 3}\n"), 10);
        for _ in 0..3 {
            assert_eq!(s.admit(&d(&["rated.example"]), t0), Admission::Go);
            s.done(&d(&["rated.example"]));
        }
        let Admission::Wait(wait) = s.admit(&d(&["rated.example"]), t0) else {
            panic!("over the rate")
        };
        assert!(
            (19.9..=20.1).contains(&wait.as_secs_f64()),
            "one token every 20 s: {wait:?}"
        );
        assert_eq!(
            s.admit(&d(&["other.example"]), t0),
            Admission::Go,
            "others are not limited"
        );
        assert_eq!(s.admit(&d(&["rated.example"]), t0 + wait), Admission::Go);
    }

    #[test]
    fn the_default_applies_to_every_unlisted_domain_and_a_listed_one_inherits_its_rate() {
        let t0 = Instant::now();
        let cfg = shaping(
            "default: {concurrency: 1, ratePerMinute: 60}\ndomains:\n  big.example: {concurrency: 5}\n",
        );
        let mut s = Shaper::new(&cfg, 10);
        assert_eq!(s.admit(&d(&["a.example"]), t0), Admission::Go);
        assert_eq!(
            s.admit(&d(&["a.example"]), t0),
            Admission::Full("a.example".into())
        );
        for _ in 0..5 {
            assert_eq!(s.admit(&d(&["big.example"]), t0), Admission::Go);
        }
        assert_eq!(s.limits("big.example").rate_per_minute, Some(60));
        s.prune(t0 + Duration::from_secs(120));
        assert!(s.buckets.is_empty(), "full buckets are forgotten");
    }
}
