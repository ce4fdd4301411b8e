//! The DATA phase of a session: stream the message (behind one `Received:` field) to the sink in
//! bounded chunks, then decide the single reply after the end of data (RFC 5321 4.1.1.4).

use super::{
    data::{DataReceiver, Verdict},
    headers::{self, HeaderCapture, MAX_HEADER_BYTES},
    policy,
    reply::{self, Reply},
    session::{Flow, Read, Session, Transaction, sink_reject_reason, sink_reply},
};
use crate::{
    message::{Envelope, MessageSink, MessageWriter, SinkError, now_secs},
    metrics::{RejectReason, SessionEnd},
};
use bytes::Buf;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// Message bytes gathered before one `MessageWriter::write`.
pub(super) const CHUNK: usize = 64 * 1024;

/// The decoded-data buffer's first size.
const FIRST_CHUNK: usize = 4 * 1024;

/// The message being received: its writer until something goes wrong.
pub(super) struct Incoming<W> {
    writer: Option<W>,
    error: Option<SinkError>,
    written: u64,
}

// === impl Incoming ===

impl<W: MessageWriter> Incoming<W> {
    pub(super) fn new(writer: W) -> Self {
        Self {
            writer: Some(writer),
            error: None,
            written: 0,
        }
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(writer) = self.writer.as_mut() {
            match writer.write(bytes).await {
                Ok(()) => self.written += bytes.len() as u64,
                Err(e) => {
                    self.error = Some(e);
                    self.writer = None;
                }
            }
        }
    }

    /// Drops the writer, which discards the message in the sink.
    pub(super) fn discard(&mut self) {
        self.writer = None;
    }
}

// === impl Session (DATA) ===

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    /// Receives message data after `354` up to the real end of data, then queues the one reply.
    pub(super) async fn receive(&mut self, tx: Transaction, writer: K::Writer) -> Flow {
        let limits = &self.config.limits;
        let mut rx = DataReceiver::new(limits.max_message_bytes, limits.bare_line_endings);
        let timeout = limits.data_timeout();
        let received = self.received_field(&tx, writer.id());
        let mut message = Incoming::new(writer);
        message.write(received.as_bytes()).await;
        let mut capture = HeaderCapture::new(MAX_HEADER_BYTES);
        // Grown as data arrives: most mail is a few KiB, and a buffer sized for the largest
        // chunk (96 KiB) per message kept megabytes of the allocator's pages busy at 50
        // sessions.
        let mut chunk = Vec::with_capacity(FIRST_CHUNK);
        // RFC 5321 4.5.3.2.6 times each read; a client that trickles keeps every read short. The
        // whole transfer gets a deadline that grows with what arrived (a minimum average rate
        // past a floor), so honest large messages always fit and tricklers do not.
        let started = Instant::now();
        let mut arrived: u64 = 0;
        loop {
            let before = chunk.len();
            let done = rx.feed(&self.input, &mut chunk);
            let used = done.unwrap_or(self.input.len());
            arrived = arrived.saturating_add(used as u64);
            self.input.advance(used);
            if rx.is_rejected() {
                message.discard();
                chunk.clear();
            } else {
                capture.push(&chunk[before..]);
                if chunk.len() >= CHUNK || done.is_some() {
                    message.write(&chunk).await;
                    chunk.clear();
                }
            }
            if done.is_some() {
                break;
            }
            if let Err(end) = self.flush().await {
                return Flow::End(end);
            }
            let left = self
                .config
                .limits
                .data_deadline(arrived)
                .saturating_sub(started.elapsed());
            // No shutdown watch here: a message in DATA is allowed to finish.
            match self.read(timeout.min(left), false).await {
                Read::Data | Read::Shutdown => {}
                Read::Closed => return Flow::End(SessionEnd::Disconnected),
                Read::TimedOut if left < timeout => {
                    self.push(&reply::TOO_SLOW);
                    return Flow::End(SessionEnd::Timeout);
                }
                // RFC 5321 4.5.3.2.6: data block timeout; the message is dropped with the writer.
                Read::TimedOut => {
                    self.push(&reply::TIMEOUT);
                    return Flow::End(SessionEnd::Timeout);
                }
            }
        }
        let end_of_data = Instant::now();
        let reply = self
            .decide(tx, rx.verdict(), &capture, message, end_of_data)
            .await;
        self.push(&reply);
        Flow::Continue
    }

    pub(super) fn received_field(&self, tx: &Transaction, id: crate::message::MessageId) -> String {
        let (helo, extended) = match &self.helo {
            Some(h) => (h.name.as_str(), h.extended),
            None => ("unknown", false),
        };
        let protocol = headers::protocol(extended, tx.smtputf8);
        headers::received(
            helo,
            self.peer,
            &self.config.hostname,
            protocol,
            id,
            &headers::now_rfc5322(),
        )
    }

    /// The reply after the end of data; `250` only once the sink has committed the message.
    pub(super) async fn decide<W: MessageWriter>(
        &self,
        tx: Transaction,
        verdict: Verdict,
        capture: &HeaderCapture,
        message: Incoming<W>,
        end_of_data: Instant,
    ) -> Reply {
        let rejected = match verdict {
            Verdict::BareLineEnding => Some((RejectReason::BareLineEnding, reply::BARE_LINE_ENDING)),
            Verdict::Nul => Some((RejectReason::Nul, reply::NUL_IN_DATA)),
            Verdict::LineTooLong => Some((RejectReason::LineTooLong, reply::LINE_TOO_LONG_IN_DATA)),
            Verdict::TooBig => Some((
                RejectReason::Size,
                reply::too_big(self.config.limits.max_message_bytes),
            )),
            Verdict::Complete { .. } => None,
        };
        let rejected = rejected
            .or_else(|| message.error.map(|e| (sink_reject_reason(e), sink_reply(e))))
            .or_else(|| {
                capture
                    .overflowed()
                    .then_some((RejectReason::Malformed, reply::HEADERS_TOO_BIG))
            })
            .or_else(|| {
                policy::header_from(capture.bytes(), &self.config)
                    .err()
                    .map(|r| (RejectReason::HeaderFrom, r))
            });
        if let Some((reason, reply)) = rejected {
            self.metrics.rejected(reason);
            return reply;
        }
        let Some(writer) = message.writer else {
            self.metrics.rejected(RejectReason::SpoolError);
            return reply::SPOOL_ERROR;
        };
        // A hand-off keeps the time of the app's 250, never later than now.
        let received_at = match &tx.handoff {
            Some(h) => h.arrived.min(now_secs()),
            None => now_secs(),
        };
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            smtputf8: tx.smtputf8,
            received_at,
            dsn: tx.dsn,
            origin: tx.handoff.map(|h| h.key),
            shadow: tx.shadow.map(Box::new),
        };
        match writer.commit(envelope).await {
            Ok(id) => {
                self.metrics
                    .accept_duration
                    .observe(end_of_data.elapsed().as_secs_f64());
                self.metrics.accepted(message.written);
                reply::queued(id)
            }
            Err(e) => {
                self.metrics.rejected(sink_reject_reason(e));
                sink_reply(e)
            }
        }
    }
}
