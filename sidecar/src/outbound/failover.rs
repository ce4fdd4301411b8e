//! A smarthost with a backup (`delivery.smarthost.backup`): the backup takes, within the same
//! attempt, every recipient the primary did not (a temporary refusal, `4xx`, or no connection;
//! a parked primary answers that at once without connecting). A permanent refusal (`5xx`) is
//! final: another smarthost would not make the address exist. The primary's breaker decides when
//! it is tried again; its first attempt after the parking period is the probe, so delivery goes
//! back to it as soon as it answers.

use super::{Outcome, RcptResult, Route, Transport, smarthost::SmarthostTransport};
use crate::message::{Envelope, Recipient};

/// The primary smarthost and its backup.
#[derive(Debug)]
pub struct FailoverTransport {
    primary: SmarthostTransport,
    backup: SmarthostTransport,
}

impl FailoverTransport {
    /// `primary` first, `backup` for what it does not take.
    pub fn new(primary: SmarthostTransport, backup: SmarthostTransport) -> Self {
        Self { primary, backup }
    }

    /// The primary's connections (the runner's concurrency).
    pub fn max_connections(&self) -> usize {
        self.primary.max_connections().max(self.backup.max_connections())
    }
}

impl Transport for FailoverTransport {
    fn route(&self) -> Route {
        Route::Smarthost
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        self.deliver_routed(envelope, rcpts, message).await.0
    }

    async fn deliver_routed(
        &self,
        envelope: &Envelope,
        rcpts: &[Recipient],
        message: &[u8],
    ) -> (Vec<RcptResult>, Vec<Route>) {
        let mut results = self.primary.deliver(envelope, rcpts, message).await;
        let mut routes = vec![Route::Smarthost; results.len()];
        let again: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.outcome == Outcome::Deferred)
            .map(|(i, _)| i)
            .collect();
        if again.is_empty() {
            return (results, routes);
        }
        let subset: Vec<Recipient> = again.iter().filter_map(|&i| rcpts.get(i).cloned()).collect();
        let backup = self.backup.deliver(envelope, &subset, message).await;
        for (&i, mut b) in again.iter().zip(backup) {
            if b.outcome == Outcome::Deferred {
                // Both said no for now: the report names both.
                b.diagnostic = format!("{}; smarthost: {}", b.diagnostic, results[i].diagnostic);
            }
            results[i] = b;
            routes[i] = Route::Backup;
        }
        (results, routes)
    }

    /// Mail waits only when neither can be tried.
    fn parked(&self) -> bool {
        self.primary.parked() && self.backup.parked()
    }

    fn close_stale(&self) {
        self.primary.close_stale();
        self.backup.close_stale();
    }

    fn unpark(&self) -> bool {
        let primary = self.primary.unpark();
        let backup = self.backup.unpark();
        primary || backup
    }
}
