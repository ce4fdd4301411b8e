//! One delivery attempt of one message: gather (read it, DKIM-sign it once, hand it to the
//! transport), let [`decide`] say what the outcomes mean, and carry that out (metrics, DSNs,
//! spool records, the next attempt's delay).

use super::{
    decide::{After, Decision, Dsn, DsnKind, Inputs, decide, overall},
    delivery::Delivery,
    runner::{Finished, Item, Next},
    trail::{Event, Line, Trail},
};
use crate::{
    message::{Envelope, MessageId, MessageWriter, Recipient, SinkError, domain_of, now_secs},
    metrics::Metrics,
    outbound::{Outcome, RcptResult, ReplyClass, Route, Transport},
    spool::Spool,
};
use std::time::Duration;

/// How soon to retry when the spool could not be read or a bounce could not be queued.
const DSN_RETRY: Duration = Duration::from_secs(60);

/// Runs one attempt and says what comes next: gather (read, sign once, deliver), [`decide`],
/// carry out (metrics, DSNs, spool records).
pub async fn run<T: Transport>(mut item: Item, spool: &Spool, d: &Delivery<T>, metrics: &Metrics) -> Next {
    let id = item.id;
    let mut bytes = match spool.read(id).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Next::Dropped,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            // The checksum failed: delivering damaged bytes would be worse than not delivering.
            tracing::error!(message_id = %id, error = %e, "spooled message is corrupt; setting it aside");
            metrics.spool_quarantined.inc();
            spool.set_aside(id).await;
            return Next::Dropped;
        }
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "cannot read spooled message; will retry");
            return Next::Retry(item, DSN_RETRY, false);
        }
    };
    if item.meta.signature.is_none()
        && let Some(header) = sign(d, &bytes, metrics)
    {
        let shared = spool.set_signature(id, header.clone()).await;
        bytes.splice(0..0, header.bytes());
        item.adopt(shared, |m| m.signature = Some(header));
    }
    let env = item.meta.envelope.clone();
    let tried: Vec<u32> = (0..env.recipients.len() as u32)
        .filter(|i| !item.meta.done.contains(i))
        .collect();
    if tried.is_empty() {
        spool.remove(id).await;
        return Next::Done(Finished {
            attempts: item.attempts,
            ..item.finished
        });
    }
    let rcpts: Vec<Recipient> = tried.iter().filter_map(|&i| env.recipient(i as usize)).collect();
    let started = std::time::Instant::now();
    let (mut results, mut routes) = d.transport.deliver_routed(&env, &rcpts, &bytes).await;
    let route = d.transport.route();
    routes.resize(rcpts.len(), route);
    results.resize_with(rcpts.len(), || RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Protocol,
        diagnostic: "transport returned no result for this recipient".into(),
        next_hop_dsn: false,
        remote: None,
    });
    // The route that answered last: the backup's when it took any recipient.
    let used = routes.iter().copied().find(|r| *r != route).unwrap_or(route);
    metrics
        .delivery_duration
        .with_label_values(&[used.as_str(), overall(&results).as_str()])
        .observe(started.elapsed().as_secs_f64());
    item.attempts += 1;
    if let Some(r) = results.iter().find(|r| r.outcome == Outcome::Deferred) {
        item.last_error = Some(
            r.diagnostic
                .chars()
                .take(super::control::LAST_ERROR_CHARS)
                .collect(),
        );
    }

    let decision = decide(&Inputs {
        envelope: &env,
        tried: &tried,
        results: &results,
        attempts: item.attempts,
        now: now_secs(),
        retry: &d.retry,
        delay_notice_after: d.bounces.delay_notice_after_seconds,
        delay_notice_sent: item.delay_notice_sent,
        route,
        jitter: rand::random::<f64>(),
    });
    count(&decision, &results, &routes, route, d.sender_label(&env), metrics);
    item.finished.delivered += decision.delivered.len() as u32;
    item.finished.failed += (decision.bounced.len() + decision.expired.len()) as u32;
    let line = Line {
        id,
        envelope: &env,
        route,
        attempt: item.attempts,
    };
    trail(&d.trail, &line, &decision, &tried, &results, &routes);
    if !decision.dropped.is_empty() {
        // RFC 3461 6.2 / RFC 5321 6.1: a bounce is never bounced; it is dropped and logged.
        tracing::warn!(message_id = %id, recipients = decision.dropped.len(), "bounce could not be delivered; dropping it");
    }
    for dsn in &decision.dsns {
        match (dsn.kind, queue_dsn(spool, d, id, &env, dsn, &bytes).await) {
            (DsnKind::Delay, Ok(())) => {
                metrics.dsn_sent.with_label_values(&["delay"]).inc();
                item.delay_notice_sent = true;
            }
            (DsnKind::Delay, Err(e)) => {
                tracing::warn!(message_id = %id, error = %e, "cannot queue delay notice");
            }
            (DsnKind::Failure | DsnKind::Expiry, Ok(())) => {
                metrics.dsn_sent.with_label_values(&["failure"]).inc();
            }
            (DsnKind::Failure | DsnKind::Expiry, Err(e)) => {
                // Nothing is recorded yet, so the whole attempt is retried and no failure goes
                // unreported.
                tracing::warn!(message_id = %id, error = %e, "cannot queue bounce; will retry");
                return Next::Retry(item, DSN_RETRY, false);
            }
            (DsnKind::Relayed | DsnKind::Delivered, Ok(())) => {
                metrics.dsn_sent.with_label_values(&["success"]).inc();
            }
            (DsnKind::Relayed | DsnKind::Delivered, Err(e)) => {
                // Never worth a second delivery of the message itself.
                tracing::warn!(message_id = %id, error = %e, "cannot queue success notice");
            }
        }
    }
    if !decision.unreported.is_empty() {
        tracing::info!(message_id = %id, recipients = decision.unreported.len(), "failure not reported: the recipients asked for no failure notice (NOTIFY)");
    }
    match decision.after {
        After::Done => {
            // Straight to one Done record: every write between the upstream's 250 and the record
            // of it widens the window in which a crash makes a duplicate (RFC 5321 6.1).
            spool.remove(id).await;
            Next::Done(Finished {
                attempts: item.attempts,
                ..item.finished
            })
        }
        After::Retry {
            delay,
            connection_failure,
        } => {
            let shared = spool.recipients_done(id, &decision.finished).await;
            item.adopt(shared, |m| m.done.extend_from_slice(&decision.finished));
            Next::Retry(item, delay, connection_failure)
        }
    }
}

/// The trail line of each recipient tried in this attempt: what the decision made of it, with
/// what the server said.
fn trail(
    trail: &Trail,
    line: &Line<'_>,
    decision: &Decision,
    tried: &[u32],
    results: &[RcptResult],
    routes: &[Route],
) {
    let position = |index: u32| tried.iter().position(|&t| t == index);
    let result = |index: u32| position(index).and_then(|p| results.get(p));
    // Each recipient's line names the route that answered it.
    let line_for = |index: u32| Line {
        route: position(index)
            .and_then(|p| routes.get(p).copied())
            .unwrap_or(line.route),
        ..*line
    };
    let address = |index: u32| {
        line.envelope
            .recipients
            .get(index as usize)
            .map_or("", String::as_str)
    };
    for &i in &decision.delivered {
        trail.log(&line_for(i), address(i), Event::Delivered, result(i));
    }
    for (failed, event) in [
        (&decision.bounced, Event::Bounced),
        (&decision.deferred, Event::Deferred),
        (&decision.expired, Event::Expired),
    ] {
        for f in failed {
            trail.log(&line_for(f.index), &f.recipient, event, result(f.index));
        }
    }
}

/// Per-recipient counters for one attempt, each under the route that answered it.
fn count(
    decision: &Decision,
    results: &[RcptResult],
    routes: &[Route],
    route: Route,
    sender: &str,
    metrics: &Metrics,
) {
    for (r, via) in results.iter().zip(routes) {
        let labels = [via.as_str(), sender, r.class.as_str()];
        match r.outcome {
            Outcome::Delivered => metrics.delivered.with_label_values(&labels).inc(),
            Outcome::Bounced => metrics.bounced.with_label_values(&labels).inc(),
            Outcome::Deferred => metrics.deferred.with_label_values(&labels).inc(),
        }
    }
    for _ in &decision.expired {
        metrics
            .bounced
            .with_label_values(&[route.as_str(), sender, "expired"])
            .inc();
    }
}

/// Signs with the key of the header From: domain (what DMARC aligns with), if it has one.
pub(crate) fn sign<T: Transport>(d: &Delivery<T>, message: &[u8], metrics: &Metrics) -> Option<String> {
    if d.signer.is_empty() {
        return None;
    }
    let parsed = crate::message::parse_originators(message)?;
    let from = parsed.from()?.first()?.address()?;
    let domain = domain_of(from).to_ascii_lowercase();
    let result = d.signer.sign(&domain, message)?;
    let algorithm = d.signer.algorithm(&domain).map_or("none", crate::dkim::label);
    let label = d.domain_label(&domain);
    match result {
        Ok(header) => {
            metrics.dkim.with_label_values(&[label, algorithm, "ok"]).inc();
            String::from_utf8(header).ok()
        }
        Err(e) => {
            // Unsigned mail may still be delivered; the metric and log say why it went unsigned.
            tracing::error!(domain = %domain, error = %e, "dkim signing failed");
            metrics.dkim.with_label_values(&[label, algorithm, "error"]).inc();
            None
        }
    }
}

/// Queues a DSN about `dsn.recipients` to the envelope sender (null reverse-path, RFC 3461 6.2).
async fn queue_dsn<T: Transport>(
    spool: &Spool,
    d: &Delivery<T>,
    id: MessageId,
    env: &Envelope,
    dsn: &Dsn,
    original: &[u8],
) -> Result<(), SinkError> {
    let list: Vec<crate::dsn::Entry> = dsn
        .recipients
        .iter()
        .map(|f| crate::dsn::Entry {
            recipient: f.recipient.clone(),
            diagnostic: f.diagnostic.clone(),
            orcpt: env.dsn.rcpt(f.index as usize).orcpt,
        })
        .collect();
    let report = crate::dsn::Report {
        hostname: &d.hostname,
        envelope: env,
        message_id: id,
        original,
        remote_mta: d.remote_mta(),
        now: now_secs(),
    };
    let body = match dsn.kind {
        DsnKind::Failure => crate::dsn::failure(&report, &list),
        DsnKind::Expiry => crate::dsn::expiry(&report, &list),
        DsnKind::Delay => crate::dsn::delay(&report, &list, env.received_at + d.retry.max_age_seconds),
        DsnKind::Relayed => crate::dsn::success(&report, &list, true),
        DsnKind::Delivered => crate::dsn::success(&report, &list, false),
    };
    queue_notice(spool, &body, env).await
}

/// Queues notice `body` to the sender of `env` with the null reverse-path (RFC 3461 6.2: a
/// notice is never answered with another).
pub(crate) async fn queue_notice(spool: &Spool, body: &[u8], env: &Envelope) -> Result<(), SinkError> {
    let mut w = spool.begin_internal()?;
    w.write(body).await?;
    let notice = Envelope {
        sender: String::new(),
        recipients: vec![env.sender.clone()],
        smtputf8: env.smtputf8,
        received_at: now_secs(),
        dsn: Default::default(),
        origin: None,
        shadow: None,
    };
    w.commit(notice).await?;
    Ok(())
}
