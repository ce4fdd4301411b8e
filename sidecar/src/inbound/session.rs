//! SMTP server state machine for one connection (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, DSN, CHUNKING, ENHANCEDSTATUSCODES), generic over the stream so tests drive it over
//! `tokio::io::duplex`. Commands are parsed by `smtp-proto`, except MAIL and RCPT
//! ([`super::path`], which keeps the path as written); message data by [`super::data`].

use super::{
    ShutdownSignal, is_shutdown,
    reply::{self, Reply},
};
use crate::{
    config::Config,
    message::{
        DsnRequest, MessageSink, SinkError,
        handoff::{Handoff, Owner},
    },
    metrics::{Metrics, RejectReason, SessionEnd},
};
use bytes::{Bytes, BytesMut};
use smtp_proto::Request;
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Below this much spare room the input buffer is grown before a read.
const MIN_READ: usize = 4 * 1024;

/// One inbound SMTP connection. Build it with [`Session::new`], then [`Session::run`] it to the end.
pub struct Session<S, K: MessageSink> {
    pub(super) stream: S,
    pub(super) config: Arc<Config>,
    pub(super) sink: Arc<K>,
    pub(super) metrics: Metrics,
    pub(super) shutdown: ShutdownSignal,
    pub(super) peer: IpAddr,
    /// Bytes received and not yet consumed (pipelined commands, message data).
    pub(super) input: BytesMut,
    /// Replies not yet sent; flushed when `input` is drained (RFC 2920 3.2).
    pub(super) output: Vec<u8>,
    pub(super) helo: Option<Helo>,
    pub(super) tx: Option<Transaction>,
    /// A message arriving in BDAT chunks (RFC 3030); its transaction moved in with it.
    pub(super) chunks: Option<super::chunking::Chunks<K::Writer>>,
    bad_commands: u32,
    /// The client passed AUTH (only on a listener with `listen.auth`).
    pub(super) authenticated: bool,
    /// We sent `334` and the next line is the AUTH response, not a command.
    pub(super) auth_pending: bool,
    /// Inside an over-long line that was already answered; skip to its LF.
    discarding: bool,
    /// When the command line now in `input` started to arrive (see `limits.commandDeadlineSeconds`).
    partial_since: Option<Instant>,
}

/// What the client said in EHLO/HELO.
#[derive(Debug, Clone)]
pub(super) struct Helo {
    pub(super) name: String,
    /// EHLO (true) or HELO (false).
    pub(super) extended: bool,
}

/// A mail transaction between MAIL and the end of DATA (RFC 5321 3.3).
#[derive(Debug, Clone)]
pub(super) struct Transaction {
    pub(super) sender: String,
    pub(super) recipients: Vec<String>,
    pub(super) smtputf8: bool,
    /// RET, ENVID and each recipient's NOTIFY/ORCPT (RFC 3461).
    pub(super) dsn: DsnRequest,
    /// XHANDOFF: a sidecar handing this message to us, its hub.
    pub(super) handoff: Option<Handoff>,
    /// XSHADOW: the hand-off is a shadow copy held for this pod.
    pub(super) shadow: Option<Owner>,
    /// DATA was refused (rate limit, full spool): DATA may be tried again, and a new MAIL
    /// starts over instead of getting `503` (see `commands::data`).
    pub(super) data_refused: bool,
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    End(SessionEnd),
}

/// What a read from the client gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    Data,
    Closed,
    TimedOut,
    Shutdown,
}

enum Line {
    Command(Bytes),
    TooLong,
}

/// Keeps `sessions_active` right even if the task is aborted.
struct Active(prometheus::IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Session ===

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    /// A session on `stream` with a config snapshot; the peer address defaults to 127.0.0.1.
    /// When `shutdown` turns `true` (or its sender is dropped) the session answers `421 4.3.2`
    /// at the next command boundary; a message in DATA is received to its end first.
    pub fn new(
        stream: S,
        config: Arc<Config>,
        sink: Arc<K>,
        metrics: Metrics,
        shutdown: ShutdownSignal,
    ) -> Self {
        Self {
            stream,
            config,
            sink,
            metrics,
            shutdown,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::new(),
            helo: None,
            tx: None,
            chunks: None,
            bad_commands: 0,
            authenticated: false,
            auth_pending: false,
            discarding: false,
            partial_since: None,
        }
    }

    /// Sets the client address shown in the `Received:` field.
    pub fn with_peer(mut self, peer: IpAddr) -> Self {
        self.peer = peer;
        self
    }

    /// Runs the session to its end and says how it ended; never panics on client input.
    /// Counts `sessions_total{end}` and keeps `sessions_active` up to date.
    pub async fn run(mut self) -> SessionEnd {
        self.metrics.sessions_active.inc();
        let _active = Active(self.metrics.sessions_active.clone());
        let end = self.serve().await;
        self.metrics.sessions.with_label_values(&[end.as_str()]).inc();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        end
    }

    async fn serve(&mut self) -> SessionEnd {
        // RFC 5321 4.2: the greeting starts with our domain (no enhanced code, RFC 2034 3).
        self.output
            .extend_from_slice(format!("220 {} ESMTP mailroom\r\n", self.config.hostname).as_bytes());
        loop {
            while let Some(line) = self.next_line() {
                let flow = match line {
                    Line::TooLong => self.bad(reply::LINE_TOO_LONG),
                    Line::Command(_) if is_shutdown(&self.shutdown) => {
                        self.push(&reply::SHUTTING_DOWN);
                        Flow::End(SessionEnd::Shutdown)
                    }
                    Line::Command(bytes) => self.command(&bytes).await,
                };
                if let Flow::End(end) = flow {
                    let _ = self.flush().await;
                    return end;
                }
            }
            // RFC 2920 3.2: send the batch of replies only once the pipelined input is drained.
            if let Err(end) = self.flush().await {
                return end;
            }
            // RFC 5321 4.5.3.2 times each read, so a client could trickle a command line byte by
            // byte for ever. A partial line gets a deadline counted from its first byte.
            let idle = self.config.limits.idle_timeout();
            let (limit, partial) = if self.input.is_empty() && !self.discarding {
                self.partial_since = None;
                (idle, false)
            } else {
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                let left = self
                    .config
                    .limits
                    .command_deadline()
                    .saturating_sub(since.elapsed());
                (idle.min(left), left < idle)
            };
            let end = match self.read(limit, true).await {
                Read::Data => continue,
                Read::Closed => return SessionEnd::Disconnected,
                Read::TimedOut if partial => {
                    self.push(&reply::TOO_SLOW);
                    SessionEnd::Timeout
                }
                // RFC 5321 4.5.3.2.7: a server may close an idle connection, with 421.
                Read::TimedOut => {
                    self.push(&reply::TIMEOUT);
                    SessionEnd::Timeout
                }
                Read::Shutdown => {
                    self.push(&reply::SHUTTING_DOWN);
                    SessionEnd::Shutdown
                }
            };
            let _ = self.flush().await;
            return end;
        }
    }

    /// The next complete command line in `input`, enforcing `limits.maxLineBytes`
    /// (RFC 5321 4.5.3.1.4; 4.2.3 answers an over-long line with 500).
    fn next_line(&mut self) -> Option<Line> {
        let max = self.config.limits.max_line_bytes;
        loop {
            let Some(pos) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() >= max {
                    self.input.clear();
                    if !self.discarding {
                        self.discarding = true;
                        return Some(Line::TooLong);
                    }
                }
                return None;
            };
            let line = self.input.split_to(pos + 1);
            self.partial_since = None;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            return Some(if line.len() > max {
                Line::TooLong
            } else {
                Line::Command(line.freeze())
            });
        }
    }

    /// Reads more input within `limit`; while waiting for a command, a shutdown ends the wait.
    pub(super) async fn read(&mut self, limit: Duration, watch_shutdown: bool) -> Read {
        // Only when the room is low: command lines are handed out as shared `Bytes`, so growing
        // the buffer while one is alive allocates a fresh one. Reserving on every read did that
        // once per message.
        if self.input.capacity() - self.input.len() < MIN_READ {
            self.input.reserve(READ_CHUNK);
        }
        let read = tokio::time::timeout(limit, self.stream.read_buf(&mut self.input));
        let result = if watch_shutdown {
            tokio::select! {
                r = read => r,
                () = super::shutdown_requested(&mut self.shutdown) => return Read::Shutdown,
            }
        } else {
            read.await
        };
        match result {
            Err(_) => Read::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
            Ok(Ok(_)) => Read::Data,
        }
    }

    /// Sends the queued replies; a client that does not read them is cut off after the idle timeout.
    pub(super) async fn flush(&mut self) -> Result<(), SessionEnd> {
        if self.output.is_empty() {
            return Ok(());
        }
        let limit = self.config.limits.idle_timeout();
        let (stream, output) = (&mut self.stream, &self.output);
        let sent = tokio::time::timeout(limit, async {
            stream.write_all(output).await?;
            stream.flush().await
        })
        .await;
        self.output.clear();
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SessionEnd::Disconnected),
            Err(_) => Err(SessionEnd::Timeout),
        }
    }

    pub(super) fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    pub(super) fn reply(&mut self, reply: Reply) -> Flow {
        self.push(&reply);
        Flow::Continue
    }

    /// A protocol error by the client; too many of them end the session.
    pub(super) fn bad(&mut self, reply: Reply) -> Flow {
        self.bad_commands += 1;
        if self.bad_commands > self.config.limits.max_bad_commands {
            self.push(&reply::TOO_MANY_ERRORS);
            return Flow::End(SessionEnd::ProtocolError);
        }
        self.reply(reply)
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        if self.auth_pending {
            return self.auth_response(line);
        }
        // MAIL and RCPT are parsed here, not by smtp-proto, which unquotes local parts: the
        // path must reach the next hop exactly as the client wrote it (RFC 5321 4.1.2).
        match line.get(..5).map(|verb| verb.to_ascii_uppercase()).as_deref() {
            Some(b"MAIL ") => return self.mail(line),
            Some(b"RCPT ") => return self.rcpt(line),
            _ => {}
        }
        if line
            .get(..9)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"XRELEASE "))
        {
            return self.release(&line[9..]).await;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return self.bad(super::commands::parse_error(&e)),
        };
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            // Unreachable: MAIL and RCPT lines never get here.
            Request::Mail { .. } | Request::Rcpt { .. } => self.bad(reply::SYNTAX_ERROR),
            Request::Data => self.data().await,
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.tx = None;
                self.chunks = None;
                self.reply(reply::OK)
            }
            Request::Noop { .. } => self.reply(reply::OK),
            Request::Vrfy { .. } => self.reply(reply::CANNOT_VRFY),
            Request::Help { .. } => self.reply(reply::HELP),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Quit => {
                self.push(&reply::CLOSING);
                Flow::End(SessionEnd::Quit)
            }
            // Not offered in EHLO: STARTTLS (loopback, or TLS from the first byte), EXPN, ETRN, ...
            _ => self.bad(reply::NOT_IMPLEMENTED),
        }
    }
}

impl<S, K: MessageSink> std::fmt::Debug for Session<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("helo", &self.helo)
            .field("tx", &self.tx)
            .field("bad_commands", &self.bad_commands)
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

/// The reply for a sink failure: full is `452 4.3.1`, rate limited `451 4.7.1`, anything else
/// `451 4.3.0`.
pub(super) fn sink_reply(e: SinkError) -> Reply {
    match e {
        SinkError::Full => reply::SPOOL_FULL,
        SinkError::Io => reply::SPOOL_ERROR,
        SinkError::RateLimited => reply::RATE_LIMITED,
        SinkError::HandoffInProgress => reply::HANDOFF_IN_PROGRESS,
        SinkError::ShadowFailed => reply::SHADOW_FAILED,
    }
}

pub(super) fn sink_reject_reason(e: SinkError) -> RejectReason {
    match e {
        SinkError::Full => RejectReason::SpoolFull,
        SinkError::Io => RejectReason::SpoolError,
        SinkError::RateLimited => RejectReason::RateLimited,
        SinkError::HandoffInProgress => RejectReason::HandoffInProgress,
        SinkError::ShadowFailed => RejectReason::ShadowFailed,
    }
}
