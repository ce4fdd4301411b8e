//! Inbound SMTP: the accept loop (one task per connection, connection limit) and the seam between
//! a session and the spool ([`MessageSink`]).

pub mod data;
pub mod reply;
pub mod session;

use crate::queue::{Envelope, MessageId};
use std::future::Future;

/// Why the sink could not take a message. Mapped to SMTP replies by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Spool limit reached or disk full: `452 4.3.1` (RFC 3463 "mail system full").
    #[error("spool full")]
    Full,
    /// Any other storage failure: `451 4.3.0`.
    #[error("spool write failed")]
    Io,
}

/// Where accepted messages go: the spool in production, a `Vec` in unit tests.
pub trait MessageSink: Send + Sync + 'static {
    /// Streams one message.
    type Writer: MessageWriter;
    /// Starts a new message; fails fast with [`SinkError::Full`] when no more mail fits.
    fn begin(&self) -> impl Future<Output = Result<Self::Writer, SinkError>> + Send;
}

/// One message being received. Dropping it without `commit` discards the message.
pub trait MessageWriter: Send + 'static {
    /// The id the message will have once committed (used in the Received header).
    fn id(&self) -> MessageId;
    /// Appends message bytes (already dot-unstuffed, CRLF line endings).
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Makes the message durable with its envelope. Returns only once it is on disk (fsync'd):
    /// the session answers `250` after this and never before.
    fn commit(self, envelope: Envelope) -> impl Future<Output = Result<MessageId, SinkError>> + Send;
}
