//! RFC 3464 delivery status notifications: failure (bounce), expiry, delay and success
//! ("relayed", "delivered") notices, built as pure functions from the envelope (with its RFC 3461
//! DSN parameters), the per-recipient diagnostics and the original message.

use crate::message::{Envelope, MessageId, Ret};
use std::fmt::Write as _;

/// RFC 5322 2.1.1: lines must not exceed 998 octets; long diagnostics are cut well below that.
const MAX_DIAGNOSTIC: usize = 900;

/// What the notice reports for each listed recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Permanent failure (5xx): `Action: failed`.
    Failed,
    /// Gave up after `retry.maxAgeSeconds`: `Action: failed`, `Status: 4.4.7` (RFC 3463).
    Expired,
    /// Still being retried: `Action: delayed`, with `Will-Retry-Until` (RFC 3464 2.3.8).
    Delayed {
        /// When the sidecar gives up (seconds since the epoch).
        will_retry_until: u64,
    },
    /// NOTIFY=SUCCESS, handed to a next hop without DSN: `Action: relayed` (RFC 3461 5.2.2).
    Relayed,
    /// NOTIFY=SUCCESS, final delivery: `Action: delivered` (RFC 3461 5.2.3).
    Delivered,
}

impl Kind {
    /// The RFC 3464 2.3.3 `Action` value.
    pub fn action(self) -> &'static str {
        match self {
            Self::Failed | Self::Expired => "failed",
            Self::Delayed { .. } => "delayed",
            Self::Relayed => "relayed",
            Self::Delivered => "delivered",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Expired)
    }
}

/// One recipient a notice reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address as accepted (`Final-Recipient`).
    pub recipient: String,
    /// What happened, as in [`crate::outbound::RcptResult`]'s diagnostic.
    pub diagnostic: String,
    /// The client's ORCPT (`addr-type;xtext`, as received): `Original-Recipient`.
    pub orcpt: Option<String>,
}

impl Entry {
    /// An entry without ORCPT.
    pub fn new(recipient: impl Into<String>, diagnostic: impl Into<String>) -> Self {
        Self {
            recipient: recipient.into(),
            diagnostic: diagnostic.into(),
            orcpt: None,
        }
    }
}

/// The message being reported on and who reports it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// This sidecar's host name: `Reporting-MTA: dns; <hostname>` and the Message-ID domain.
    pub hostname: &'a str,
    /// The original envelope; the notice goes to its sender.
    pub envelope: &'a Envelope,
    /// The original's queue id (`X-Mailroom-Queue-ID`, and part of the notice's Message-ID).
    pub message_id: MessageId,
    /// The original message; only its header section is returned (`text/rfc822-headers`).
    pub original: &'a [u8],
    /// The smarthost, for `Remote-MTA` (RFC 3464 2.3.5), when one was involved.
    pub remote_mta: Option<&'a str>,
    /// Now (seconds since the epoch): Date, Last-Attempt-Date.
    pub now: u64,
}

/// A failure notice (bounce) for recipients that failed permanently.
pub fn failure(report: &Report<'_>, failed: &[Entry]) -> Vec<u8> {
    build(report, Kind::Failed, failed)
}

/// A failure notice for recipients still deferred when the message expired.
pub fn expiry(report: &Report<'_>, failed: &[Entry]) -> Vec<u8> {
    build(report, Kind::Expired, failed)
}

/// A delay notice (RFC 3464 `Action: delayed`) for recipients still being retried.
pub fn delay(report: &Report<'_>, delayed: &[Entry], will_retry_until: u64) -> Vec<u8> {
    build(report, Kind::Delayed { will_retry_until }, delayed)
}

/// A success notice for recipients that asked for one (NOTIFY=SUCCESS): `relayed` to a next hop
/// without DSN, or `delivered` (RFC 3461 5.2.2, 5.2.3).
pub fn success(report: &Report<'_>, delivered: &[Entry], relayed: bool) -> Vec<u8> {
    let kind = if relayed { Kind::Relayed } else { Kind::Delivered };
    build(report, kind, delivered)
}

/// Builds the `multipart/report; report-type=delivery-status` message (RFC 6522), CRLF
/// throughout. The notice's envelope sender must be `<>` (RFC 3464 2, RFC 5321 4.5.5).
///
/// The third part returns the original's header section, or the whole message for a failure
/// when the client asked `RET=FULL` (RFC 3461 4.3; other notices return headers only).
pub fn build(report: &Report<'_>, kind: Kind, recipients: &[Entry]) -> Vec<u8> {
    let full = kind.is_failure() && report.envelope.dsn.ret == Some(Ret::Full);
    let returned = if full {
        report.original.to_vec()
    } else {
        header_section(report.original)
    };
    let boundary = boundary(report, &returned);
    let sender_domain = report.envelope.sender_domain();
    let from_domain = if sender_domain.is_empty() {
        report.hostname
    } else {
        sender_domain.as_str()
    };
    let subject = match kind {
        Kind::Failed | Kind::Expired => "Undelivered Mail Returned to Sender",
        Kind::Delayed { .. } => "Delayed Mail (still being retried)",
        Kind::Relayed => "Relayed Mail (no further delivery reports)",
        Kind::Delivered => "Successful Mail Delivery Report",
    };
    let mut out = String::with_capacity(2048);
    let mut line = |s: &str| {
        out.push_str(s);
        out.push_str("\r\n");
    };
    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{from_domain}>"
    ));
    line(&format!("To: <{}>", report.envelope.sender));
    line(&format!("Subject: {subject}"));
    line(&format!("Date: {}", rfc5322_date(report.now)));
    line(&format!(
        "Message-ID: <{}.{}.dsn@{}>",
        report.message_id, report.now, report.hostname
    ));
    // RFC 3834 5: automatic responses are marked so that nobody auto-replies to them.
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line("Content-Type: multipart/report; report-type=delivery-status;");
    line(&format!("\tboundary=\"{boundary}\""));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=utf-8");
    line("Content-Description: Notification");
    line("");
    human_readable(&mut line, report, kind, recipients);
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("Content-Description: Delivery report");
    line("");
    delivery_status(&mut line, report, kind, recipients);
    line(&format!("--{boundary}"));
    if full {
        line("Content-Type: message/rfc822");
        line("Content-Description: Undelivered Message");
        // RFC 2046 5.2.1: message/rfc822 allows 7bit, 8bit or binary only.
        if !returned.is_ascii() {
            line("Content-Transfer-Encoding: 8bit");
        }
    } else {
        line("Content-Type: text/rfc822-headers");
        line(if kind.is_failure() {
            "Content-Description: Undelivered Message Headers"
        } else {
            "Content-Description: Message Headers"
        });
    }
    line("");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&returned);
    if !returned.is_empty() && !returned.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    // RFC 2046 5.1.1: the CRLF before a boundary belongs to the boundary.
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn human_readable(line: &mut impl FnMut(&str), report: &Report<'_>, kind: Kind, rcpts: &[Entry]) {
    line(&format!("This is the mail system at host {}.", report.hostname));
    line("");
    match kind {
        Kind::Failed => {
            line("Your message could not be delivered to the recipients below. It was rejected");
            line("permanently and will not be retried.");
        }
        Kind::Expired => {
            line("Your message could not be delivered to the recipients below before it expired");
            line("from the queue. It will not be retried.");
        }
        Kind::Delayed { will_retry_until } => {
            line("Your message has not yet been delivered to the recipients below. The mail");
            line(&format!(
                "system will keep trying until {}.",
                rfc5322_date(will_retry_until)
            ));
            line("You do not need to send it again.");
        }
        Kind::Relayed => {
            line("Your message was handed on to the recipients below. The next mail system does");
            line("not send delivery reports, so you will get no further report of success.");
        }
        Kind::Delivered => {
            line("Your message was delivered to the recipients below.");
        }
    }
    line("");
    for e in rcpts {
        line(&format!("<{}>: {}", e.recipient, one_line(&e.diagnostic)));
    }
}

/// RFC 3464 2.2 (per-message fields) and 2.3 (per-recipient fields). ENVID and ORCPT appear as
/// the client sent them, xtext-encoded: printable ASCII without spaces, so nothing a client
/// sends can break a field (RFC 3461 4: they are never decoded).
fn delivery_status(line: &mut impl FnMut(&str), report: &Report<'_>, kind: Kind, rcpts: &[Entry]) {
    if let Some(envid) = &report.envelope.dsn.envid {
        line(&format!("Original-Envelope-Id: {envid}"));
    }
    line(&format!("Reporting-MTA: dns; {}", report.hostname));
    line(&format!("X-Mailroom-Queue-ID: {}", report.message_id));
    line(&format!(
        "Arrival-Date: {}",
        rfc5322_date(report.envelope.received_at)
    ));
    for e in rcpts {
        let (rcpt, diagnostic) = (&e.recipient, &e.diagnostic);
        line("");
        if let Some(orcpt) = &e.orcpt {
            line(&format!("Original-Recipient: {orcpt}"));
        }
        // RFC 6533 3: the utf-8 address type for internationalized addresses.
        let addr_type = if rcpt.is_ascii() { "rfc822" } else { "utf-8" };
        line(&format!("Final-Recipient: {addr_type}; {rcpt}"));
        line(&format!("Action: {}", kind.action()));
        line(&format!("Status: {}", status(kind, diagnostic)));
        if let Some(mta) = report.remote_mta {
            line(&format!("Remote-MTA: dns; {mta}"));
        }
        let diagnostic = one_line(diagnostic);
        if !diagnostic.is_empty() {
            // RFC 3464 2.3.6: "smtp" only for SMTP replies; other text uses an X- type.
            let dtype = if reply_code(&diagnostic).is_some() {
                "smtp"
            } else {
                "X-Mailroom"
            };
            line(&format!("Diagnostic-Code: {dtype}; {diagnostic}"));
        }
        line(&format!("Last-Attempt-Date: {}", rfc5322_date(report.now)));
        if let Kind::Delayed { will_retry_until } = kind {
            line(&format!("Will-Retry-Until: {}", rfc5322_date(will_retry_until)));
        }
    }
    line("");
}

/// The `Status` field (RFC 3463 enhanced code): taken from the reply when it carries one of the
/// right class, else derived from the reply code or the kind of notice.
pub fn status(kind: Kind, diagnostic: &str) -> String {
    let want = match kind {
        Kind::Expired => return "4.4.7".into(),
        Kind::Failed => '5',
        Kind::Delayed { .. } => '4',
        Kind::Relayed | Kind::Delivered => '2',
    };
    let mut words = diagnostic.split_whitespace();
    let code = words.next().and_then(reply_code);
    let enhanced = words.next().filter(|w| is_enhanced(w));
    match (code, enhanced) {
        (Some(c), Some(e)) if c == want && e.starts_with(want) => e.to_owned(),
        _ => format!("{want}.0.0"),
    }
}

/// The class digit of a diagnostic that starts with an SMTP reply code (`550 ...`).
fn reply_code(s: &str) -> Option<char> {
    let code = s.split_whitespace().next()?;
    let b = code.as_bytes();
    (b.len() == 3 && b.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&b[0])).then(|| b[0] as char)
}

/// RFC 3463 2: `class "." subject "." detail`, 1-3 digits each, class 2, 4 or 5.
fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Diagnostics go into header-like fields: no line breaks, bounded length.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if out.len() > MAX_DIAGNOSTIC {
        let mut cut = MAX_DIAGNOSTIC;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// The original header section (without the empty line), with every line ending in CRLF.
fn header_section(original: &[u8]) -> Vec<u8> {
    let end = original.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
    let end = end.or_else(|| original.windows(2).position(|w| w == b"\n\n").map(|p| p + 1));
    let section = &original[..end.unwrap_or(original.len())];
    let mut out = Vec::with_capacity(section.len() + 2);
    for (i, &b) in section.iter().enumerate() {
        // RFC 5322 2.3: CR and LF only together.
        match b {
            b'\n' if i == 0 || section[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if section.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 2046 5.1.1: the boundary must not occur in the enclosed parts.
fn boundary(report: &Report<'_>, enclosed: &[u8]) -> String {
    let mut n = 0u32;
    loop {
        let mut b = format!("=_mailroom-{}-{}", report.message_id, report.now);
        if n > 0 {
            let _ = write!(b, "-{n}");
        }
        if !enclosed.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
        n += 1;
    }
}

/// RFC 5322 3.3 date-time in UTC.
fn rfc5322_date(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

#[cfg(test)]
mod tests;
