//! The sender policy, in one place: who may send as whom, and how fast. Applied by the session at
//! `MAIL FROM` ([`envelope_sender`]), after the header section ([`header_from`]), and when a
//! message starts ([`RateLimited`], a sink wrapper around the spool). The sidecar's own DSNs go
//! to the spool directly and are not rate limited.

use super::reply::{self, Reply};
use crate::rate::TokenBucket;
use crate::{
    config::Config,
    message::{self, MessageSink, SinkError},
    metrics::RejectReason,
    sync::lock,
};
use mail_parser::HeaderName;
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

/// Sender policy on the envelope (RFC 5321 4.1.1.2): a reverse-path in a configured domain, and
/// ASCII unless the client declared SMTPUTF8 (RFC 6531 3.4). `Err` carries the reply, and the
/// reject reason when the refusal is counted.
///
/// The null reverse-path `<>` is accepted: RFC 1123 5.2.9 says it MUST be supported, and apps
/// use it for their own DSNs and RFC 3834 auto-replies. It opens no spoofing hole, because the
/// header `From:` is held to the same domains ([`header_from`]), and such a message is never
/// bounced when it fails (RFC 5321 6.1; `queue::decide` drops the report).
pub fn envelope_sender(
    sender: &str,
    smtputf8: bool,
    config: &Config,
) -> Result<(), (Reply, Option<RejectReason>)> {
    if sender.is_empty() {
        return Ok(());
    }
    if !smtputf8 && !sender.is_ascii() {
        return Err((reply::NEED_SMTPUTF8, None));
    }
    let domain = message::domain_of(sender);
    if config.domain(domain).is_none() {
        return Err((
            reply::sender_domain_denied(domain),
            Some(RejectReason::SenderDomain),
        ));
    }
    Ok(())
}

/// Sender policy on the header: exactly one From: field (RFC 5322 3.6) whose every address is
/// in a configured domain. `Err` carries the reply to send after DATA.
pub fn header_from(header: &[u8], config: &Config) -> Result<(), Reply> {
    let parsed = crate::message::parse_originators(header);
    let Some(message) = parsed else {
        return Err(reply::BAD_HEADER_FROM);
    };
    let mut froms = message.header_values(HeaderName::From);
    let (Some(from), None) = (froms.next(), froms.next()) else {
        return Err(reply::BAD_HEADER_FROM);
    };
    let Some(addresses) = from.as_address() else {
        return Err(reply::BAD_HEADER_FROM);
    };
    let mut seen = false;
    for addr in addresses.iter() {
        let address = addr.address().unwrap_or_default();
        let domain = crate::message::domain_of(address);
        if config.domain(domain).is_none() {
            return Err(reply::header_from_denied(domain));
        }
        seen = true;
    }
    if !seen {
        return Err(reply::BAD_HEADER_FROM);
    }
    // RFC 5322 3.6.2 and 3.6.6: Sender:, Resent-From: and Resent-Sender: name originators too. A
    // relay that sends only as its domains puts no other domain into any originator field.
    for (name, field) in [
        (HeaderName::Sender, "Sender"),
        (HeaderName::ResentFrom, "Resent-From"),
        (HeaderName::ResentSender, "Resent-Sender"),
    ] {
        for value in message.header_values(name) {
            let Some(addresses) = value.as_address() else {
                return Err(reply::originator_denied(field, ""));
            };
            for addr in addresses.iter() {
                let domain = crate::message::domain_of(addr.address().unwrap_or_default());
                if config.domain(domain).is_none() {
                    return Err(reply::originator_denied(field, domain));
                }
            }
        }
    }
    Ok(())
}

/// `limits.ratePerMinute`, shared by every session of the process. Cheap to clone; clones share
/// the bucket, so a reload that changes the rate applies to all of them.
#[derive(Debug, Clone, Default)]
pub struct RateLimit(Arc<Mutex<Option<TokenBucket>>>);

impl RateLimit {
    /// Applies `per_minute` (`None`: no limit). An unchanged rate keeps the bucket's state, so a
    /// reload does not hand out a fresh burst.
    pub fn set(&self, per_minute: Option<u32>) {
        let mut bucket = lock(&self.0);
        if bucket.as_ref().map(TokenBucket::per_minute) != per_minute {
            *bucket = per_minute.map(|n| TokenBucket::new(n, Instant::now()));
        }
    }

    /// Takes a token for one new message; `false` when over the rate.
    pub fn try_admit(&self) -> bool {
        lock(&self.0).as_mut().is_none_or(|b| b.try_take(Instant::now()))
    }
}

/// A sink that applies a [`RateLimit`] before its inner sink starts a message: over the rate,
/// `begin` fails with [`SinkError::RateLimited`] (`451 4.7.1`) and nothing is written.
#[derive(Debug)]
pub struct RateLimited<K> {
    inner: K,
    rate: RateLimit,
}

impl<K> RateLimited<K> {
    /// Wraps `inner`.
    pub fn new(inner: K, rate: RateLimit) -> Self {
        Self { inner, rate }
    }
}

impl<K: MessageSink> MessageSink for RateLimited<K> {
    type Writer = K::Writer;

    async fn begin(&self) -> Result<K::Writer, SinkError> {
        if !self.rate.try_admit() {
            return Err(SinkError::RateLimited);
        }
        self.inner.begin().await
    }

    async fn release_shadows(&self, keys: Vec<String>) -> usize {
        self.inner.release_shadows(keys).await
    }
}

#[cfg(test)]
mod tests;
