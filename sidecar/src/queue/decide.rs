//! The delivery decision, pure: from one attempt's per-recipient outcomes, the message's age and
//! the retry and bounce policy and each recipient's RFC 3461 NOTIFY, what to record, which DSNs
//! to send, and when to try again.
//! [`super::attempt`] gathers the inputs and carries the decision out; nothing here does I/O.

use super::retry;
use crate::{
    config::Retry,
    message::{Envelope, Notify},
    outbound::{Outcome, RcptResult, ReplyClass, Route},
};
use std::time::Duration;

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The message's envelope (all recipients, sender, arrival time).
    pub envelope: &'a Envelope,
    /// Indices (into `envelope.recipients`) of the recipients this attempt tried.
    pub tried: &'a [u32],
    /// One result per entry of `tried`, in order.
    pub results: &'a [RcptResult],
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// The retry schedule and maximum age.
    pub retry: &'a Retry,
    /// `bounces.delayNoticeAfterSeconds`.
    pub delay_notice_after: Option<u64>,
    /// Whether a delay notice already went out for this message.
    pub delay_notice_sent: bool,
    /// The route the attempt took.
    pub route: Route,
    /// Uniform in [0, 1): spreads retries of messages deferred together.
    pub jitter: f64,
}

/// One recipient that did not get its message (yet), or, in a success notice, one that did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// Index into `envelope.recipients`.
    pub index: u32,
    /// The address.
    pub recipient: String,
    /// Why, for the DSN and the log.
    pub diagnostic: String,
}

/// Which report a DSN is (RFC 3464 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Permanent failure (5xx): `Action: failed`.
    Failure,
    /// Still deferred at `maxAgeSeconds`: `Action: failed`, status 4.4.7.
    Expiry,
    /// Still deferred at `delayNoticeAfterSeconds`: `Action: delayed`.
    Delay,
    /// NOTIFY=SUCCESS, handed to a next hop that does not offer DSN: `Action: relayed` (RFC 3461
    /// 5.2.2).
    Relayed,
    /// NOTIFY=SUCCESS, and this was the final delivery (capture): `Action: delivered`.
    Delivered,
}

/// A DSN to queue to the envelope sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Which report.
    pub kind: DsnKind,
    /// The recipients it reports on.
    pub recipients: Vec<Failed>,
}

/// What comes after the attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    /// Every recipient is finished: remove the message.
    Done,
    /// Some recipients remain: record the finished ones and try again.
    Retry {
        /// How long to wait.
        delay: Duration,
        /// The attempt failed before reaching the next hop (connection, TLS, timeout), so the
        /// route may be down: the runner probes with one message at a time.
        connection_failure: bool,
    },
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Recipients the next hop accepted.
    pub delivered: Vec<u32>,
    /// Recipients refused permanently.
    pub bounced: Vec<Failed>,
    /// Recipients still deferred when the message reached `maxAgeSeconds`.
    pub expired: Vec<Failed>,
    /// Recipients to try again.
    pub deferred: Vec<Failed>,
    /// DSNs to queue, in order. Failure and expiry DSNs must be queued before the recipients
    /// are recorded as finished: if queueing fails, the attempt is retried as a whole.
    pub dsns: Vec<Dsn>,
    /// Failed recipients of a bounce: never reported (RFC 3461 6.2, RFC 5321 6.1), only logged.
    pub dropped: Vec<Failed>,
    /// Failed recipients whose NOTIFY leaves out FAILURE (RFC 3461 4.1): not reported.
    pub unreported: Vec<Failed>,
    /// Recipients to record as finished when the message stays queued.
    pub finished: Vec<u32>,
    /// What comes next.
    pub after: After,
}

/// Decides what one attempt's results mean for the message.
pub fn decide(i: &Inputs<'_>) -> Decision {
    let mut d = Decision {
        delivered: Vec::new(),
        bounced: Vec::new(),
        expired: Vec::new(),
        deferred: Vec::new(),
        dsns: Vec::new(),
        dropped: Vec::new(),
        unreported: Vec::new(),
        finished: Vec::new(),
        after: After::Done,
    };
    let mut succeeded = Vec::new();
    for (n, &index) in i.tried.iter().enumerate() {
        // A transport that returned too few results has not finished the rest: retry them.
        let (outcome, diagnostic, next_hop_dsn) = match i.results.get(n) {
            Some(r) => (r.outcome, r.diagnostic.clone(), r.next_hop_dsn),
            None => (
                Outcome::Deferred,
                "transport returned no result for this recipient".to_string(),
                false,
            ),
        };
        let recipient = i
            .envelope
            .recipients
            .get(index as usize)
            .cloned()
            .unwrap_or_default();
        let failed = Failed {
            index,
            recipient,
            diagnostic,
        };
        match outcome {
            Outcome::Delivered => {
                d.delivered.push(index);
                // RFC 3461 5.2.1: a next hop that offers DSN was given NOTIFY and reports itself.
                if !next_hop_dsn && wants(i, index).success {
                    succeeded.push(failed);
                }
            }
            Outcome::Bounced => d.bounced.push(failed),
            Outcome::Deferred => d.deferred.push(failed),
        }
    }
    if !d.deferred.is_empty() && retry::expired(i.envelope.received_at, i.now, i.retry) {
        d.expired = std::mem::take(&mut d.deferred)
            .into_iter()
            .map(|f| Failed {
                diagnostic: format!(
                    "message expired after {} attempts; last error: {}",
                    i.attempts, f.diagnostic
                ),
                ..f
            })
            .collect();
    }
    for (list, kind) in [(&d.bounced, DsnKind::Failure), (&d.expired, DsnKind::Expiry)] {
        if i.envelope.is_bounce() {
            d.dropped.extend(list.iter().cloned());
            continue;
        }
        let (report, quiet): (Vec<Failed>, Vec<Failed>) =
            list.iter().cloned().partition(|f| wants(i, f.index).failure);
        d.unreported.extend(quiet);
        if !report.is_empty() {
            d.dsns.push(Dsn {
                kind,
                recipients: report,
            });
        }
    }
    if !succeeded.is_empty() && !i.envelope.is_bounce() {
        // RFC 3461 5.2.2 ("relayed"); capture is the final delivery (5.2.3, "delivered").
        let kind = if i.route == Route::Capture {
            DsnKind::Delivered
        } else {
            DsnKind::Relayed
        };
        d.dsns.push(Dsn {
            kind,
            recipients: succeeded,
        });
    }
    if d.deferred.is_empty() {
        return d;
    }
    d.finished = d
        .delivered
        .iter()
        .copied()
        .chain(d.bounced.iter().chain(&d.expired).map(|f| f.index))
        .collect();
    let age = i.now.saturating_sub(i.envelope.received_at);
    let delayed: Vec<Failed> = d
        .deferred
        .iter()
        .filter(|f| wants(i, f.index).delay)
        .cloned()
        .collect();
    if let Some(after) = i.delay_notice_after
        && !i.delay_notice_sent
        && !i.envelope.is_bounce()
        && age >= after
        && !delayed.is_empty()
    {
        d.dsns.push(Dsn {
            kind: DsnKind::Delay,
            recipients: delayed,
        });
    }
    // With direct delivery one unreachable domain says nothing about the others, so it must not
    // slow the whole queue down to probing.
    let connection_failure = i.route != Route::Direct
        && !i.results.is_empty()
        && i.results.iter().all(|r| {
            r.outcome == Outcome::Deferred
                && matches!(
                    r.class,
                    ReplyClass::Connection | ReplyClass::Tls | ReplyClass::Timeout
                )
        });
    d.after = After::Retry {
        delay: retry::next_delay(i.attempts, i.retry, i.jitter),
        connection_failure,
    };
    d
}

/// What recipient `index` asked to be told (RFC 3461 4.1; the default without NOTIFY).
fn wants(i: &Inputs<'_>, index: u32) -> Notify {
    i.envelope.dsn.rcpt(index as usize).wants()
}

/// The attempt's overall outcome, for the duration histogram: delivered if any recipient was.
pub fn overall(results: &[RcptResult]) -> Outcome {
    if results.iter().any(|r| r.outcome == Outcome::Delivered) {
        Outcome::Delivered
    } else if results.iter().any(|r| r.outcome == Outcome::Deferred) {
        Outcome::Deferred
    } else {
        Outcome::Bounced
    }
}

#[cfg(test)]
mod tests;
