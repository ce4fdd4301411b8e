//! Per-object exponential backoff for transient reconcile errors: 5 s, doubling, capped at 5 min,
//! reset by the next successful reconcile (so one flapping object never slows the others).

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// First retry after a transient error.
pub const INITIAL: Duration = Duration::from_secs(5);
/// Longest wait between retries.
pub const MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per object key (`kind/namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        delay(*n)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The wait after `failures` consecutive failures (pure).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    INITIAL.saturating_mul(1 << doublings).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let want = [5, 10, 20, 40, 80, 160, 300, 300];
        let got: Vec<u64> = (1..=8).map(|n| delay(n).as_secs()).collect();
        assert_eq!(got, want);
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn success_resets_only_that_object() {
        let b = Backoff::default();
        b.failed("Relay/a/x");
        assert_eq!(b.failed("Relay/a/x"), Duration::from_secs(10));
        assert_eq!(b.failed("Relay/a/y"), INITIAL);
        b.succeeded("Relay/a/x");
        assert_eq!(b.failed("Relay/a/x"), INITIAL);
        assert_eq!(b.failed("Relay/a/y"), Duration::from_secs(10));
    }
}
