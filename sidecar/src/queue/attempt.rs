//! One delivery attempt of one message: read it, DKIM-sign it once, hand it to the transport,
//! and apply the per-recipient outcomes (metrics, bounces, retry schedule).

use super::{
    delivery::Delivery,
    retry,
    runner::{Item, Next},
};
use crate::{
    message::{Envelope, MessageId, MessageWriter, domain_of, now_secs},
    metrics::Metrics,
    outbound::{Outcome, RcptResult, ReplyClass, Route, Transport},
    spool::Spool,
};
use std::time::Duration;

/// How soon to retry when the spool could not be read or a bounce could not be queued.
const DSN_RETRY: Duration = Duration::from_secs(60);

/// Runs one attempt and says what comes next.
pub async fn run(mut item: Item, spool: &Spool, d: &Delivery, metrics: &Metrics) -> Next {
    let id = item.id;
    let mut bytes = match spool.read(id).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Next::Dropped,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            // The checksum failed: delivering damaged bytes would be worse than not delivering.
            tracing::error!(message = %id, error = %e, "spooled message is corrupt; setting it aside");
            metrics.spool_quarantined.inc();
            spool.remove(id).await;
            return Next::Dropped;
        }
        Err(e) => {
            tracing::error!(message = %id, error = %e, "cannot read spooled message; will retry");
            return Next::Retry(item, DSN_RETRY, false);
        }
    };
    if item.meta.signature.is_none()
        && let Some(header) = sign(d, &bytes, metrics)
    {
        spool.set_signature(id, header.clone()).await;
        bytes.splice(0..0, header.bytes());
        item.meta.signature = Some(header);
    }
    let env = item.meta.envelope.clone();
    let pending: Vec<u32> = (0..env.recipients.len() as u32)
        .filter(|i| !item.meta.done.contains(i))
        .collect();
    if pending.is_empty() {
        spool.remove(id).await;
        return Next::Done;
    }
    let rcpts: Vec<String> = pending
        .iter()
        .map(|&i| env.recipients[i as usize].clone())
        .collect();
    let started = std::time::Instant::now();
    let mut results = d.transport.deliver(&env, &rcpts, &bytes).await;
    results.resize_with(rcpts.len(), || RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Protocol,
        diagnostic: "transport returned no result for this recipient".into(),
    });
    let route = d.transport.route().as_str();
    let attempt_outcome = overall(&results);
    metrics
        .delivery_duration
        .with_label_values(&[route, attempt_outcome.as_str()])
        .observe(started.elapsed().as_secs_f64());
    item.attempts += 1;

    let sender_label = d.sender_label(&env);
    let mut finished = Vec::new();
    let mut failed = Vec::new();
    let mut deferred = Vec::new();
    for ((&idx, rcpt), r) in pending.iter().zip(&rcpts).zip(&results) {
        let labels = [route, sender_label, r.class.as_str()];
        match r.outcome {
            Outcome::Delivered => {
                metrics.delivered.with_label_values(&labels).inc();
                finished.push(idx);
            }
            Outcome::Bounced => {
                metrics.bounced.with_label_values(&labels).inc();
                tracing::info!(message = %id, route, diagnostic = %r.diagnostic, "recipient bounced");
                failed.push((idx, rcpt.clone(), r.diagnostic.clone()));
            }
            Outcome::Deferred => {
                metrics.deferred.with_label_values(&labels).inc();
                tracing::info!(message = %id, route, diagnostic = %r.diagnostic, "recipient deferred");
                deferred.push((idx, rcpt.clone(), r.diagnostic.clone()));
            }
        }
    }
    let mut expired = Vec::new();
    if !deferred.is_empty() && retry::expired(env.received_at, now_secs(), &d.retry) {
        for (idx, rcpt, diag) in deferred.drain(..) {
            metrics
                .bounced
                .with_label_values(&[route, sender_label, "expired"])
                .inc();
            let diag = format!(
                "message expired after {} attempts; last error: {diag}",
                item.attempts
            );
            expired.push((idx, rcpt, diag));
        }
    }
    for (list, kind) in [(&failed, DsnKind::Failure), (&expired, DsnKind::Expiry)] {
        if list.is_empty() {
            continue;
        }
        if env.is_bounce() {
            // RFC 3461 6.2 / RFC 5321 6.1: a bounce is never bounced; it is dropped and logged.
            tracing::warn!(message = %id, "bounce could not be delivered; dropping it");
        } else if let Err(e) = queue_dsn(spool, d, id, &env, list, &bytes, kind).await {
            tracing::warn!(message = %id, error = %e, "cannot queue bounce; will retry");
            return Next::Retry(item, DSN_RETRY, false);
        } else {
            metrics.dsn_sent.with_label_values(&["failure"]).inc();
        }
        finished.extend(list.iter().map(|(idx, ..)| *idx));
    }
    if deferred.is_empty() {
        // Straight to one Done record: every write between the upstream's 250 and the record of
        // it widens the window in which a crash makes a duplicate (RFC 5321 6.1).
        spool.remove(id).await;
        return Next::Done;
    }
    spool.recipients_done(id, &finished).await;
    item.meta.done.extend_from_slice(&finished);
    maybe_delay_notice(&mut item, spool, d, &deferred, &bytes, metrics).await;
    // With direct delivery one unreachable domain says nothing about the others, so it must not
    // slow the whole queue down to probing.
    let connection_failure = d.transport.route() != Route::Direct
        && results.iter().all(|r| {
            r.outcome == Outcome::Deferred
                && matches!(
                    r.class,
                    ReplyClass::Connection | ReplyClass::Tls | ReplyClass::Timeout
                )
        });
    let delay = retry::next_delay(item.attempts, &d.retry, rand::random::<f64>());
    Next::Retry(item, delay, connection_failure)
}

fn overall(results: &[RcptResult]) -> Outcome {
    if results.iter().any(|r| r.outcome == Outcome::Delivered) {
        Outcome::Delivered
    } else if results.iter().any(|r| r.outcome == Outcome::Deferred) {
        Outcome::Deferred
    } else {
        Outcome::Bounced
    }
}

/// Signs with the key of the header From: domain (what DMARC aligns with), if it has one.
fn sign(d: &Delivery, message: &[u8], metrics: &Metrics) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DsnKind {
    Failure,
    Expiry,
    Delay,
}

async fn queue_dsn(
    spool: &Spool,
    d: &Delivery,
    id: MessageId,
    env: &Envelope,
    rcpts: &[(u32, String, String)],
    original: &[u8],
    kind: DsnKind,
) -> Result<(), crate::message::SinkError> {
    let list: Vec<(String, String)> = rcpts
        .iter()
        .map(|(_, r, diag)| (r.clone(), diag.clone()))
        .collect();
    let report = crate::dsn::Report {
        hostname: &d.hostname,
        envelope: env,
        message_id: id,
        original,
        remote_mta: d.remote_mta(),
        now: now_secs(),
    };
    let body = match kind {
        DsnKind::Failure => crate::dsn::failure(&report, &list),
        DsnKind::Expiry => crate::dsn::expiry(&report, &list),
        DsnKind::Delay => crate::dsn::delay(&report, &list, env.received_at + d.retry.max_age_seconds),
    };
    let mut w = spool.begin_internal()?;
    w.write(&body).await?;
    let dsn_env = Envelope {
        sender: String::new(),
        recipients: vec![env.sender.clone()],
        smtputf8: env.smtputf8,
        received_at: now_secs(),
    };
    w.commit(dsn_env).await?;
    Ok(())
}

async fn maybe_delay_notice(
    item: &mut Item,
    spool: &Spool,
    d: &Delivery,
    deferred: &[(u32, String, String)],
    original: &[u8],
    metrics: &Metrics,
) {
    let Some(after) = d.bounces.delay_notice_after_seconds else {
        return;
    };
    let env = &item.meta.envelope;
    if item.delay_notice_sent || env.is_bounce() || now_secs().saturating_sub(env.received_at) < after {
        return;
    }
    match queue_dsn(spool, d, item.id, env, deferred, original, DsnKind::Delay).await {
        Ok(()) => {
            metrics.dsn_sent.with_label_values(&["delay"]).inc();
            item.delay_notice_sent = true;
        }
        Err(e) => tracing::warn!(message = %item.id, error = %e, "cannot queue delay notice"),
    }
}
