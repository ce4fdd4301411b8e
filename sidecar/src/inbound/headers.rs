//! Header work of the inbound side, all pure: capture the header section (bounded) for the
//! sender policy, and build the one `Received:` field we prepend.

use crate::message::MessageId;
use std::net::IpAddr;

/// Most header bytes buffered for the From: check; a larger header section is refused.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Copies the start of a message until the blank line that ends the header section
/// (RFC 5322 2.1), and never more than its limit.
#[derive(Debug, Clone)]
pub struct HeaderCapture {
    buf: Vec<u8>,
    limit: usize,
    complete: bool,
    overflow: bool,
}

// === impl HeaderCapture ===

impl HeaderCapture {
    /// A capture that holds at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            complete: false,
            overflow: false,
        }
    }

    /// Offers the next message bytes (already unstuffed, CRLF line endings).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.complete || self.overflow || bytes.is_empty() {
            return;
        }
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(bytes);
        if self.buf.starts_with(b"\r\n") {
            // No header fields at all: the message starts with the blank line.
            self.buf.truncate(2);
            self.complete = true;
        } else if let Some(pos) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            self.buf.truncate(from + pos + 4);
            self.complete = true;
        } else if self.buf.len() > self.limit {
            self.overflow = true;
            self.buf = Vec::new();
        }
    }

    /// Whether the header section outgrew the limit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The header section (the whole message if it had no body).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The `with` keyword of the Received field (RFC 3848, RFC 6531 3.7.3).
pub fn protocol(ehlo: bool, smtputf8: bool) -> &'static str {
    match (ehlo, smtputf8) {
        (true, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    }
}

/// The trace field we prepend (RFC 5321 4.4):
/// `Received: from <helo> (localhost [127.0.0.1])\r\n\tby <host> (mailroom) with ESMTP id <id>;\r\n\t<date>\r\n`.
/// No `for` clause: it would copy one recipient into mail that reaches all of them.
pub fn received(
    helo: &str,
    peer: IpAddr,
    hostname: &str,
    protocol: &str,
    id: MessageId,
    date: &str,
) -> String {
    // RFC 5321 4.1.3: IPv6 address literals carry the "IPv6:" tag. Loopback needs no DNS to name.
    let literal = match peer {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let tcp_info = if peer.is_loopback() {
        format!("localhost {literal}")
    } else {
        literal
    };
    format!(
        "Received: from {helo} ({tcp_info})\r\n\tby {hostname} (mailroom) with {protocol} id {id};\r\n\t{date}\r\n"
    )
}

/// The current time as an RFC 5322 3.3 date-time.
pub fn now_rfc5322() -> String {
    chrono::Utc::now().to_rfc2822()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_stops_at_the_blank_line_across_chunks() {
        let mut c = HeaderCapture::new(100);
        for piece in [&b"From: a@b\r"[..], b"\n\r", b"\nbody\r\n"] {
            c.push(piece);
        }
        assert_eq!(c.bytes(), b"From: a@b\r\n\r\n");
    }

    #[test]
    fn capture_overflows_beyond_its_limit() {
        let mut c = HeaderCapture::new(10);
        c.push(b"X-Long: 0123456789\r\n");
        assert!(c.overflowed());
    }

    #[test]
    fn received_field_has_the_rfc_5321_shape() {
        let r = received(
            "client.test",
            [127, 0, 0, 1].into(),
            "relay.test",
            "ESMTP",
            MessageId(1),
            "D",
        );
        assert_eq!(
            r,
            "Received: from client.test (localhost [127.0.0.1])\r\n\tby relay.test (mailroom) with ESMTP id 0000000000000001;\r\n\tD\r\n"
        );
        let v6 = received(
            "c",
            "2001:db8::1".parse().expect("ip"),
            "h",
            "SMTP",
            MessageId(2),
            "D",
        );
        assert!(
            v6.starts_with("Received: from c ([IPv6:2001:db8::1])\r\n"),
            "{v6}"
        );
    }
}
