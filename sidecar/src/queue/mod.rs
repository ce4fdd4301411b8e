//! Queued messages: the envelope, per-recipient state and the scheduler that hands due messages
//! to delivery.

pub mod attempt;
pub mod retry;
pub mod runner;

use std::time::SystemTime;

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
}

impl Envelope {
    /// Whether this is a bounce (null reverse-path); bounces are never bounced (RFC 3461 6.2).
    pub fn is_bounce(&self) -> bool {
        self.sender.is_empty()
    }

    /// Domain part of the sender, lowercased; empty for the null sender.
    pub fn sender_domain(&self) -> String {
        domain_of(&self.sender).to_ascii_lowercase()
    }
}

/// The domain part of an address (after the last `@`), or "" if there is none.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
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
