//! CHUNKING (RFC 3030): a message sent as `BDAT <size> [LAST]` chunks instead of DATA. Each
//! chunk is read to its exact size whatever the reply will be (RFC 3030 2: otherwise its bytes
//! would be read as commands), through the same checks as DATA (bare line endings, NUL, line
//! length, size) and into the same sink; `LAST` ends the message with the same single reply as
//! the end of DATA. The hub's shadow copies and hand-offs use it to save a round trip.

use super::{
    data::DataReceiver,
    headers::{HeaderCapture, MAX_HEADER_BYTES},
    reply::{self, Reply},
    session::{Flow, Read, Session, Transaction, sink_reject_reason, sink_reply},
    transfer::{CHUNK, Incoming},
};
use crate::{
    message::{MessageSink, MessageWriter},
    metrics::SessionEnd,
};
use bytes::Buf;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// A message arriving in BDAT chunks, between its first chunk and `LAST`.
pub(super) struct Chunks<W> {
    tx: Transaction,
    message: Incoming<W>,
    rx: DataReceiver,
    capture: HeaderCapture,
    /// Checked bytes not yet handed to the writer.
    pending: Vec<u8>,
}

impl<W> std::fmt::Debug for Chunks<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    /// `BDAT size [LAST]`.
    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        let refused = match self.chunks {
            Some(_) => None,
            None => self.first_chunk().await.err(),
        };
        let mut chunks = self.chunks.take();
        if let Err(end) = self.read_chunk(size as u64, chunks.as_mut()).await {
            return Flow::End(end);
        }
        match refused {
            Some(Refusal::Bad(r)) => return self.bad(r),
            Some(Refusal::Reply(r)) => return self.reply(r),
            None => {}
        }
        let Some(mut c) = chunks else {
            return self.bad(reply::NEED_MAIL);
        };
        if !last {
            self.chunks = Some(c);
            return self.reply(reply::chunk_received(size));
        }
        let before = c.pending.len();
        c.rx.finish(&mut c.pending);
        c.capture.push(&c.pending[before..]);
        if !c.rx.is_rejected() {
            c.message.write(&c.pending).await;
        }
        let reply = self
            .decide(c.tx, c.rx.verdict(), &c.capture, c.message, Instant::now())
            .await;
        self.reply(reply)
    }

    /// Starts a chunked message as DATA would start one, or says how to refuse the chunk once
    /// it has been read. The transaction stays open after a refusal, as after a refused DATA.
    async fn first_chunk(&mut self) -> Result<(), Refusal> {
        let Some(tx) = &self.tx else {
            return Err(Refusal::Bad(if self.helo.is_none() {
                reply::NEED_HELO
            } else {
                reply::NEED_MAIL
            }));
        };
        if tx.recipients.is_empty() {
            return Err(Refusal::Reply(reply::NO_VALID_RECIPIENTS));
        }
        let writer = self.sink.begin().await.map_err(|e| {
            self.metrics.rejected(sink_reject_reason(e));
            Refusal::Reply(sink_reply(e))
        })?;
        let tx = self.tx.take().ok_or(Refusal::Bad(reply::NEED_MAIL))?;
        let limits = &self.config.limits;
        let rx = DataReceiver::chunked(limits.max_message_bytes, limits.bare_line_endings);
        let received = self.received_field(&tx, writer.id());
        let mut message = Incoming::new(writer);
        message.write(received.as_bytes()).await;
        self.chunks = Some(Chunks {
            tx,
            message,
            rx,
            capture: HeaderCapture::new(MAX_HEADER_BYTES),
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Reads exactly `size` octets of chunk data into `chunks`, or drops them when there is no
    /// message to put them in. Times each read like DATA (RFC 5321 4.5.3.2.6), with the same
    /// deadline that grows with what arrived.
    async fn read_chunk(
        &mut self,
        size: u64,
        mut chunks: Option<&mut Chunks<K::Writer>>,
    ) -> Result<(), SessionEnd> {
        let timeout = self.config.limits.data_timeout();
        let started = Instant::now();
        let mut left = size;
        loop {
            let n = (self.input.len() as u64).min(left) as usize;
            if let Some(c) = chunks.as_deref_mut() {
                c.take(&self.input[..n]).await;
            }
            self.input.advance(n);
            left -= n as u64;
            if left == 0 {
                return Ok(());
            }
            self.flush().await?;
            let deadline = self
                .config
                .limits
                .data_deadline(size - left)
                .saturating_sub(started.elapsed());
            // No shutdown watch: like a message in DATA, a chunk is allowed to finish.
            match self.read(timeout.min(deadline), false).await {
                Read::Data | Read::Shutdown => {}
                Read::Closed => return Err(SessionEnd::Disconnected),
                Read::TimedOut => {
                    let reply = if deadline < timeout {
                        reply::TOO_SLOW
                    } else {
                        reply::TIMEOUT
                    };
                    self.push(&reply);
                    return Err(SessionEnd::Timeout);
                }
            }
        }
    }
}

impl<W: MessageWriter> Chunks<W> {
    /// Checks `bytes` and writes them on in pieces of [`CHUNK`]; once the message is sure to be
    /// refused, nothing more is kept.
    async fn take(&mut self, bytes: &[u8]) {
        let before = self.pending.len();
        self.rx.feed(bytes, &mut self.pending);
        if self.rx.is_rejected() {
            self.message.discard();
            self.pending.clear();
            return;
        }
        self.capture.push(&self.pending[before..]);
        if self.pending.len() >= CHUNK {
            self.message.write(&self.pending).await;
            self.pending.clear();
        }
    }
}

/// How a chunk is answered when there is no message to put it in.
enum Refusal {
    /// A protocol error by the client (counts towards `limits.maxBadCommands`).
    Bad(Reply),
    /// A refusal of the transaction as it stands.
    Reply(Reply),
}
