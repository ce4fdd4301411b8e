//! SMTP replies of the inbound side: constants and builders, each with an enhanced status code
//! (RFC 3463, registry in RFC 5248). Replies are protocol data, not Rust errors.
//!
//! Exceptions, on purpose: the 220 greeting and the HELO/EHLO replies start with a domain
//! (RFC 5321 4.2, 4.1.1.1 `ehlo-ok-rsp`; RFC 2034 3 exempts them), and 354 has no enhanced code
//! because RFC 3463 2 defines only the classes 2, 4 and 5.

use std::borrow::Cow;

/// One SMTP reply: basic code, enhanced status code and human text (one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic reply code (RFC 5321 4.2).
    pub code: u16,
    /// Enhanced status code, `class.subject.detail` (RFC 3463).
    pub status: &'static str,
    /// Text after the codes; never contains CR or LF.
    pub text: Cow<'static, str>,
}

// === impl Reply ===

impl Reply {
    /// A reply with static text.
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Self {
        Self {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with built text; anything but printable ASCII is replaced so that a value echoed
    /// from the client (a domain) can never break the reply line.
    pub fn dynamic(code: u16, status: &'static str, text: String) -> Self {
        let clean: String = text
            .chars()
            .take(400)
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        Self {
            code,
            status,
            text: Cow::Owned(clean),
        }
    }

    /// Appends the reply line, CRLF-terminated, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("{} {} {}\r\n", self.code, self.status, self.text).as_bytes());
    }

    /// Whether this is a positive completion (2xx) reply.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

// --- Positive replies ---

/// Generic success (RSET, NOOP).
pub const OK: Reply = Reply::new(250, "2.0.0", "Ok");
/// MAIL accepted (RFC 3463 X.1.0: other address status).
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender ok");
/// RCPT accepted (RFC 3463 X.1.5: destination address valid).
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient ok");
/// VRFY: RFC 5321 3.5.3 recommends 252 when the server will not verify.
pub const CANNOT_VRFY: Reply = Reply::new(
    252,
    "2.1.5",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// HELP (RFC 5321 4.1.1.8).
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP; see RFC 5321",
);
/// QUIT (RFC 5321 4.1.1.10).
pub const CLOSING: Reply = Reply::new(221, "2.0.0", "Bye");
/// 354 has no enhanced code (RFC 3463 2: classes are 2, 4 and 5 only).
pub const START_DATA: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";

/// `250 2.0.0 Ok: queued as <id>`: sent only after the message is durable.
pub fn queued(id: impl std::fmt::Display) -> Reply {
    Reply::dynamic(250, "2.0.0", format!("Ok: queued as {id}"))
}

/// `250 2.0.0 <n> octets received`: a BDAT chunk other than the last (RFC 3030 2).
pub fn chunk_received(size: usize) -> Reply {
    Reply::dynamic(250, "2.0.0", format!("{size} octets received"))
}

// --- Transient failures ---

/// Spool full (RFC 3463 X.3.1: mail system full).
pub const SPOOL_FULL: Reply = Reply::new(452, "4.3.1", "Insufficient system storage, try again later");
/// Spool write failed (RFC 3463 X.3.0: other or undefined mail system status).
pub const SPOOL_ERROR: Reply = Reply::new(451, "4.3.0", "Local error in processing, try again later");
/// The same hand-off is being committed on another connection (docs/hub.md).
pub const HANDOFF_IN_PROGRESS: Reply = Reply::new(
    451,
    "4.3.0",
    "This message is being handed off on another connection, try again later",
);
/// `durability: replicated`: no hub took the shadow copy, so the message is not acknowledged
/// (RFC 3463 X.4.1: no answer from host).
pub const SHADOW_FAILED: Reply = Reply::new(
    451,
    "4.4.1",
    "Cannot store the replica copy on the Relay's hub, try again later",
);
/// Over `limits.ratePerMinute` (RFC 3463 X.7.1: delivery not authorized, here for now).
pub const RATE_LIMITED: Reply = Reply::new(451, "4.7.1", "Rate limit reached, try again later");
/// RFC 5321 4.5.3.1.10: too many recipients is 452, and X.5.3 says so (RFC 3463).
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
/// Idle or DATA timeout (RFC 3463 X.4.2: bad connection), then close (RFC 5321 4.5.3.2).
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout exceeded, closing connection");
/// A command line or a message that arrives too slowly (`limits.commandDeadlineSeconds`,
/// `limits.dataDeadlineFloorSeconds` and `dataMinBytesPerSecond`): X.4.2, bad connection.
pub const TOO_SLOW: Reply = Reply::new(421, "4.4.2", "Too slow, closing connection");
/// Shutting down (RFC 3463 X.3.2: system not accepting network messages).
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "Service shutting down, closing connection");
/// Connection limit reached (X.3.2 as for shutdown: the system is not accepting mail now).
pub const OVERLOADED: Reply = Reply::new(421, "4.3.2", "Too many connections, try again later");
/// Bad-command limit reached (X.7.0: other security status, as Postfix's hard error limit).
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Too many errors, closing connection");

// --- Permanent failures: protocol ---

/// RFC 5321 4.2.4: unrecognized command (X.5.2: syntax error).
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.2", "Command unrecognized");
/// RFC 5321 4.2.3 lists "command line too long" under 500; X.5.2 is syntax error. (X.5.6 is
/// reserved for AUTH exchanges, RFC 4954.)
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Line too long");
/// Syntax error in arguments (X.5.4: invalid command arguments).
pub const SYNTAX_ERROR: Reply = Reply::new(501, "5.5.4", "Syntax error in parameters or arguments");
/// Bad EHLO/HELO argument.
pub const BAD_HELO: Reply = Reply::new(501, "5.5.4", "Invalid EHLO/HELO domain");
/// Bad reverse-path (X.1.7: bad sender's mailbox address syntax).
pub const BAD_SENDER_SYNTAX: Reply = Reply::new(501, "5.1.7", "Bad sender address syntax");
/// Bad forward-path (X.1.3: bad destination mailbox address syntax).
pub const BAD_RECIPIENT_SYNTAX: Reply = Reply::new(501, "5.1.3", "Bad recipient address syntax");
/// Commands we do not offer: STARTTLS, EXPN, ETRN, ... (X.5.1: invalid command).
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Command not implemented");
/// MAIL/RCPT parameter not advertised (RFC 5321 4.1.1.11: 555).
pub const UNSUPPORTED_PARAMETER: Reply = Reply::new(
    555,
    "5.5.4",
    "MAIL FROM/RCPT TO parameters not recognized or not implemented",
);
/// RFC 5321 4.1.4: MAIL before EHLO/HELO (X.5.1: invalid command).
pub const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Send EHLO or HELO first");
/// RFC 5321 4.1.4: MAIL inside a transaction.
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Nested MAIL command");
/// RFC 5321 4.1.4: RCPT or DATA without MAIL.
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Need MAIL command first");
/// RFC 2920 3.1 / RFC 5321 3.3: DATA when every RCPT was rejected.
pub const NO_VALID_RECIPIENTS: Reply = Reply::new(554, "5.5.1", "No valid recipients");
/// RCPT or DATA in a transaction whose message is already arriving in BDAT chunks (RFC 3030 2).
pub const AFTER_BDAT: Reply = Reply::new(503, "5.5.1", "Bad sequence of commands: send BDAT or RSET");
/// RFC 6531 3.7.4.1: non-ASCII address without SMTPUTF8 (X.6.7, RFC 6531 4).
pub const NEED_SMTPUTF8: Reply = Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
/// Bare CR or LF in DATA (RFC 5321 2.3.8 forbids them). It is a violation of the SMTP data
/// transfer itself, so X.5.2 (protocol: syntax error), as Postfix's `smtpd_forbid_bare_newline`.
/// (There is no X.6.11 in the RFC 5248 registry.)
pub const BARE_LINE_ENDING: Reply = Reply::new(
    550,
    "5.5.2",
    "Bare CR or LF in message data (RFC 5321 2.3.8), message rejected",
);

/// NUL octets in DATA: some next hops drop them, so `CRLF NUL . CRLF` would end the message
/// there and run the rest as commands (SMTP smuggling). X.6.0: other or undefined media error
/// (RFC 3463).
pub const NUL_IN_DATA: Reply = Reply::new(550, "5.6.0", "NUL octet in message data, message rejected");

/// A line over 998 octets in DATA (RFC 5322 2.1.1): refused at the door rather than bounced later
/// by a strict next hop. X.6.0: other or undefined media error (RFC 3463).
pub const LINE_TOO_LONG_IN_DATA: Reply = Reply::new(
    550,
    "5.6.0",
    "Message line longer than 998 octets (RFC 5322 2.1.1), message rejected",
);

// --- Permanent failures: policy and content ---

/// A recipient at an address literal (`user@[192.0.2.1]`) under direct delivery, which routes
/// only domain names (X.7.1: delivery not authorized).
pub const LITERAL_NOT_ROUTED: Reply = Reply::new(
    550,
    "5.7.1",
    "Address literals are not routed by this relay in direct delivery; use a domain name",
);

/// Header section bigger than we buffer for the From: check (X.3.4: message too big for system).
pub const HEADERS_TOO_BIG: Reply = Reply::new(552, "5.3.4", "Header section too large");
/// RFC 5322 3.6: a message has exactly one From: field. A content defect, hence X.6.0 (other or
/// undefined media error) rather than a policy code.
pub const BAD_HEADER_FROM: Reply = Reply::new(
    550,
    "5.6.0",
    "Message must have exactly one From: header with an address (RFC 5322 3.6)",
);

/// RFC 1870 6: declared or actual size over the limit (X.3.4: message too big for system).
pub fn too_big(limit: u64) -> Reply {
    Reply::dynamic(
        552,
        "5.3.4",
        format!("Message size exceeds fixed limit of {limit} bytes"),
    )
}

/// MAIL FROM domain not configured (X.7.1: delivery not authorized).
pub fn sender_domain_denied(domain: &str) -> Reply {
    Reply::dynamic(
        550,
        "5.7.1",
        format!("Sender domain {domain:?} is not allowed to send through this relay"),
    )
}

/// An originator field other than From: (`Sender:`, `Resent-From:`, `Resent-Sender:`) names a
/// domain this relay does not send for (X.7.1: delivery not authorized).
pub fn originator_denied(field: &str, domain: &str) -> Reply {
    Reply::dynamic(
        550,
        "5.7.1",
        format!("{field}: header domain {domain:?} is not allowed to send through this relay"),
    )
}

/// Header From: domain not configured (X.7.1: delivery not authorized).
pub fn header_from_denied(domain: &str) -> Reply {
    Reply::dynamic(
        550,
        "5.7.1",
        format!("From: header domain {domain:?} is not allowed to send through this relay"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_text_cannot_inject_a_line_break() {
        let r = sender_domain_denied("evil.com\r\n250 2.0.0 ok");
        let mut out = Vec::new();
        r.write_to(&mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(out.starts_with(b"550 5.7.1 "));
    }

    #[test]
    fn every_constant_has_a_class_matching_its_code() {
        for r in [
            OK,
            SENDER_OK,
            RECIPIENT_OK,
            CANNOT_VRFY,
            HELP,
            CLOSING,
            SPOOL_FULL,
            SPOOL_ERROR,
            RATE_LIMITED,
            TOO_MANY_RECIPIENTS,
            TIMEOUT,
            SHUTTING_DOWN,
            TOO_SLOW,
            OVERLOADED,
            TOO_MANY_ERRORS,
            UNKNOWN_COMMAND,
            LINE_TOO_LONG,
            SYNTAX_ERROR,
            BAD_HELO,
            BAD_SENDER_SYNTAX,
            BAD_RECIPIENT_SYNTAX,
            NOT_IMPLEMENTED,
            UNSUPPORTED_PARAMETER,
            NEED_HELO,
            NESTED_MAIL,
            NEED_MAIL,
            NO_VALID_RECIPIENTS,
            NEED_SMTPUTF8,
            LITERAL_NOT_ROUTED,
            BARE_LINE_ENDING,
            NUL_IN_DATA,
            LINE_TOO_LONG_IN_DATA,
            HEADERS_TOO_BIG,
            BAD_HEADER_FROM,
            too_big(1),
            queued(1),
        ] {
            let class = r.status.as_bytes()[0];
            assert_eq!(u16::from(class - b'0'), r.code / 100, "{r}");
        }
    }
}
