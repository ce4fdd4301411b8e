//! The ground floor: the vocabulary every other part speaks. A message's id and envelope, address
//! helpers, the clock, and the [`MessageSink`] port through which accepted mail is stored (the
//! spool implements it; inbound sessions and the DSN writer call it). Imports nothing of ours.

mod dsn;
pub mod handoff;

pub use dsn::{DsnRequest, MAX_ENVID, Notify, RcptDsn, Ret, is_orcpt, is_xtext};
use std::{future::Future, time::SystemTime};

/// Spool-unique message id; also the `.eml` name in capture mode and the Received `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The SMTP envelope of one message as accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// MAIL FROM address; empty for the null sender `<>` (bounces only).
    pub sender: String,
    /// RCPT TO addresses, in order.
    pub recipients: Vec<String>,
    /// Whether the client declared SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// When the final `250` was sent (seconds since the epoch).
    pub received_at: u64,
    /// The RFC 3461 DSN parameters. Absent in records written before DSN support and when the
    /// client gave none, so that such records read the same in older and newer versions.
    #[serde(default, skip_serializing_if = "DsnRequest::is_empty")]
    pub dsn: DsnRequest,
    /// The hand-off key, when a sidecar handed this message to us, its hub (the XHANDOFF
    /// extension, docs/hub.md): the hub takes each key once, and never signs such a message
    /// again. `received_at` is then the sidecar's, so that the age still counts from the app's
    /// `250`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The pod this is a shadow copy for, on a hub (`durability: replicated`, docs/hub.md): held,
    /// not delivered, until that pod is gone without having released it. Boxed: it is rare,
    /// and inline it made every queued message's envelope 40 bytes larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<handoff::Owner>>,
}

/// One recipient as a transport sees it: the address as accepted and its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The mailbox, exactly as the client wrote it (RFC 5321 4.1.2).
    pub address: String,
    /// Its `NOTIFY` and `ORCPT`.
    pub dsn: RcptDsn,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            dsn: RcptDsn::default(),
        }
    }
}

impl Envelope {
    /// Whether this is a bounce (null reverse-path); bounces are never bounced (RFC 3461 6.2).
    pub fn is_bounce(&self) -> bool {
        self.sender.is_empty()
    }

    /// Recipient `i` with its DSN parameters.
    pub fn recipient(&self, i: usize) -> Option<Recipient> {
        Some(Recipient {
            address: self.recipients.get(i)?.clone(),
            dsn: self.dsn.rcpt(i),
        })
    }

    /// Every recipient with its DSN parameters, in order.
    pub fn all_recipients(&self) -> Vec<Recipient> {
        (0..self.recipients.len())
            .filter_map(|i| self.recipient(i))
            .collect()
    }

    /// Domain part of the sender, lowercased; empty for the null sender.
    pub fn sender_domain(&self) -> String {
        domain_of(&self.sender).to_ascii_lowercase()
    }
}

/// The domain part of an address (after the last `@`), or "" if there is none. The last `@`,
/// because a quoted local part may hold one (`"a@b"@example.net`, RFC 5321 4.1.2) and a domain
/// or address literal never does.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Parses a message's header section for its originator fields alone (From:, Sender:,
/// Resent-From:, Resent-Sender:, RFC 5322 3.6.2 and 3.6.6), as addresses; every other field is
/// skipped unparsed. The inbound policy and the DKIM signer need nothing else, and a full parse
/// (Received: fields tokenised, dates, MIME) was about 2 % of the relay's CPU per message.
pub fn parse_originators(header: &[u8]) -> Option<mail_parser::Message<'_>> {
    use mail_parser::{HeaderName, MessageParser};
    static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
        MessageParser::new()
            .header_address(HeaderName::From)
            .header_address(HeaderName::Sender)
            .header_address(HeaderName::ResentFrom)
            .header_address(HeaderName::ResentSender)
            .default_header_ignore()
    });
    PARSER.parse_headers(header)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the sink could not take a message. Mapped to SMTP replies by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Spool limit reached or disk full: `452 4.3.1` (RFC 3463 "mail system full").
    #[error("spool full")]
    Full,
    /// Any other storage failure: `451 4.3.0`.
    #[error("spool write failed")]
    Io,
    /// Over `limits.ratePerMinute`: `451 4.7.1`, the client should try again later.
    #[error("rate limit reached")]
    RateLimited,
    /// The same hand-off key is being committed on another connection: `451 4.3.0`, and the
    /// retry finds the message held (docs/hub.md).
    #[error("hand-off in progress on another connection")]
    HandoffInProgress,
    /// `durability: replicated` and no hub took the shadow copy: `451 4.4.1`; the message is
    /// not kept.
    #[error("no hub took the shadow copy")]
    ShadowFailed,
}

/// Where accepted messages go: the spool in production, a `Vec` in unit tests.
pub trait MessageSink: Send + Sync + 'static {
    /// Streams one message.
    type Writer: MessageWriter;
    /// Starts a new message; fails fast with [`SinkError::Full`] when no more mail fits.
    fn begin(&self) -> impl Future<Output = Result<Self::Writer, SinkError>> + Send;
    /// Drops the shadow copies held under `keys` (a hub, `XRELEASE`); returns how many there
    /// were. A sink that holds none has nothing to drop.
    fn release_shadows(&self, keys: Vec<String>) -> impl Future<Output = usize> + Send {
        let _ = keys;
        async { 0 }
    }
}

/// One message being received. Dropping it without `commit` discards the message.
pub trait MessageWriter: Send + Sync + 'static {
    /// The id the message will have once committed (used in the Received header).
    fn id(&self) -> MessageId;
    /// Appends message bytes (already dot-unstuffed, CRLF line endings).
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Makes the message durable with its envelope. Returns only once it is on disk (fsync'd):
    /// the session answers `250` after this and never before.
    fn commit(self, envelope: Envelope) -> impl Future<Output = Result<MessageId, SinkError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_is_after_the_last_at_sign() {
        struct Case {
            input: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                input: "a@example.net",
                want: "example.net",
            },
            Case {
                input: "\"a@b\"@example.net",
                want: "example.net",
            },
            Case {
                input: "\"@\"@[192.0.2.1]",
                want: "[192.0.2.1]",
            },
            Case {
                input: "postmaster",
                want: "",
            },
            Case { input: "", want: "" },
        ];
        for c in cases {
            assert_eq!(domain_of(c.input), c.want, "{:?}", c.input);
        }
    }
}
