//! The delivery trail: one log line per recipient outcome (delivered, deferred, bounced,
//! expired, handed off), what Postfix's `status=` lines give its admins. Each names the message,
//! the Relay, the route, the server that answered, its reply code and enhanced status (RFC
//! 3463), the attempt and the time since the app's `250`. Recipient addresses are logged as
//! `***@domain` unless `trail.fullRecipients` says otherwise, in the reply text too (servers
//! often repeat the address there). Bodies never reach a log.

use crate::{
    message::{Envelope, MessageId, domain_of, now_secs},
    outbound::{RcptResult, Route},
};

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The next hop took it (`250`).
    Delivered,
    /// Tried again later.
    Deferred,
    /// Refused for good; a failure notice goes to the sender unless it asked for none.
    Bounced,
    /// Past `retry.maxAgeSeconds`.
    Expired,
    /// Given to the Relay's hub, which delivers it from here on.
    HandedOff,
}

impl Event {
    /// The log line's message.
    fn text(self) -> &'static str {
        match self {
            Self::Delivered => "recipient delivered",
            Self::Deferred => "recipient deferred",
            Self::Bounced => "recipient bounced",
            Self::Expired => "recipient expired",
            Self::HandedOff => "recipient handed off",
        }
    }
}

/// Writes the trail for one Relay.
#[derive(Debug)]
pub struct Trail {
    relay: String,
    full_recipients: bool,
}

/// One line's facts besides the recipient.
#[derive(Debug)]
pub struct Line<'a> {
    /// The message.
    pub id: MessageId,
    /// Its envelope (arrival time, addresses).
    pub envelope: &'a Envelope,
    /// The route it went by.
    pub route: Route,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

impl Trail {
    /// The trail of Relay `relay` (a config's `relay`), per `config`.
    pub fn new(relay: &str, config: &crate::config::Trail) -> Self {
        Self {
            relay: relay.to_owned(),
            full_recipients: config.full_recipients,
        }
    }

    /// Logs `event` for `recipient`, with what the server said, if anything.
    pub fn log(&self, line: &Line<'_>, recipient: &str, event: Event, result: Option<&RcptResult>) {
        let shown = self.recipient(recipient);
        let reply = result.map(|r| self.redact(&r.diagnostic, recipient));
        let (code, status) = reply.as_deref().map(codes).unwrap_or_default();
        let remote = result.and_then(|r| r.remote.as_deref()).unwrap_or("");
        let delay = now_secs().saturating_sub(line.envelope.received_at);
        tracing::info!(
            message_id = %line.id,
            relay = %self.relay,
            route = line.route.as_str(),
            recipient = %shown,
            remote,
            code,
            status,
            reply = reply.as_deref().unwrap_or(""),
            attempt = line.attempt,
            delay_seconds = delay,
            "{}",
            event.text()
        );
    }

    /// `***@domain`, or the address itself with `fullRecipients`.
    fn recipient(&self, address: &str) -> String {
        if self.full_recipients {
            address.to_owned()
        } else {
            format!("***@{}", domain_of(address))
        }
    }

    /// `text` with every occurrence of `address` (any case) shown as [`Self::recipient`] shows it.
    fn redact(&self, text: &str, address: &str) -> String {
        if self.full_recipients || address.is_empty() {
            return text.to_owned();
        }
        let lower = text.to_ascii_lowercase();
        let needle = address.to_ascii_lowercase();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while let Some(found) = lower[at..].find(&needle) {
            out.push_str(&text[at..at + found]);
            out.push_str(&self.recipient(address));
            at += found + needle.len();
        }
        out.push_str(&text[at..]);
        out
    }
}

/// The reply code and enhanced status code at the start of a diagnostic (`550 5.1.1 …`), or
/// empty strings when it has none (a connection failure, say).
fn codes(reply: &str) -> (&str, &str) {
    let mut words = reply.split_ascii_whitespace();
    let code = words
        .next()
        .filter(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("");
    if code.is_empty() {
        return ("", "");
    }
    let status = words
        .next()
        .filter(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("");
    (code, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_the_start_of_a_reply() {
        assert_eq!(codes("550 5.1.1 <a@b>: no such user"), ("550", "5.1.1"));
        assert_eq!(codes("250 Ok"), ("250", ""));
        assert_eq!(codes("connection refused"), ("", ""));
        assert_eq!(codes("4.4.1 x"), ("", ""));
    }

    #[test]
    fn addresses_are_left_out_unless_asked_for() {
        let t = Trail::new("shop/outbound", &Default::default());
        assert_eq!(t.recipient("Jane.Doe@Example.net"), "***@Example.net");
        assert_eq!(
            t.redact(
                "550 5.1.1 <jane.doe@example.net>: no such user jane.doe@EXAMPLE.net",
                "Jane.Doe@Example.net"
            ),
            "550 5.1.1 <***@Example.net>: no such user ***@Example.net"
        );
        let full = Trail::new(
            "shop/outbound",
            &crate::config::Trail {
                full_recipients: true,
            },
        );
        assert_eq!(full.recipient("jane@example.net"), "jane@example.net");
        assert_eq!(
            full.redact("550 <jane@example.net>", "jane@example.net"),
            "550 <jane@example.net>"
        );
    }
}
