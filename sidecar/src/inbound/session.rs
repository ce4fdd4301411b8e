//! SMTP server state machine for one connection (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES), generic over the stream so tests drive it over
//! `tokio::io::duplex`. Commands are parsed by `smtp-proto`; message data by [`super::data`].

use super::{
    MessageSink, ShutdownSignal, SinkError, is_shutdown,
    reply::{self, Reply},
};
use crate::{
    config::Config,
    metrics::{Metrics, RejectReason, SessionEnd},
    queue,
};
use bytes::{Bytes, BytesMut};
use smtp_proto::{
    Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request,
};
use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK: usize = 16 * 1024;

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
    bad_commands: u32,
    /// Inside an over-long line that was already answered; skip to its LF.
    discarding: bool,
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
            bad_commands: 0,
            discarding: false,
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
            let idle = self.config.limits.idle_timeout();
            let end = match self.read(idle, true).await {
                Read::Data => continue,
                Read::Closed => return SessionEnd::Disconnected,
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
        self.input.reserve(READ_CHUNK);
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

    fn reply(&mut self, reply: Reply) -> Flow {
        self.push(&reply);
        Flow::Continue
    }

    /// A protocol error by the client; too many of them end the session.
    fn bad(&mut self, reply: Reply) -> Flow {
        self.bad_commands += 1;
        if self.bad_commands > self.config.limits.max_bad_commands {
            self.push(&reply::TOO_MANY_ERRORS);
            return Flow::End(SessionEnd::ProtocolError);
        }
        self.reply(reply)
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return self.bad(parse_error(&e)),
        };
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data().await,
            Request::Rset => {
                self.tx = None;
                self.reply(reply::OK)
            }
            Request::Noop { .. } => self.reply(reply::OK),
            Request::Vrfy { .. } => self.reply(reply::CANNOT_VRFY),
            Request::Help { .. } => self.reply(reply::HELP),
            Request::Quit => {
                self.push(&reply::CLOSING);
                Flow::End(SessionEnd::Quit)
            }
            // Not offered in EHLO: STARTTLS (loopback), AUTH, BDAT (no CHUNKING), EXPN, ETRN, ...
            _ => self.bad(reply::NOT_IMPLEMENTED),
        }
    }

    fn hello(&mut self, host: &str, extended: bool) -> Flow {
        // The name goes into our Received field: printable, no comment delimiters.
        if !host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'(' && b != b')')
        {
            return self.bad(reply::BAD_HELO);
        }
        // RFC 5321 4.1.4: EHLO/HELO clears any transaction in progress.
        self.tx = None;
        self.helo = Some(Helo {
            name: host.to_owned(),
            extended,
        });
        let me = &self.config.hostname;
        let text = if extended {
            // RFC 5321 4.1.1.1 ehlo-ok-rsp: domain first, then one keyword per line.
            format!(
                "250-{me} Hello {host}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n\
                 250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n",
                self.config.limits.max_message_bytes
            )
        } else {
            format!("250 {me} Hello {host}\r\n")
        };
        self.output.extend_from_slice(text.as_bytes());
        Flow::Continue
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Flow {
        if self.helo.is_none() {
            return self.bad(reply::NEED_HELO);
        }
        if self.tx.is_some() {
            return self.bad(reply::NESTED_MAIL);
        }
        if !mail_parameters_offered(&from) {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        let max = self.config.limits.max_message_bytes;
        // RFC 1870 6.1: a declared SIZE over the limit is refused at MAIL.
        if from.size as u64 > max {
            self.metrics.rejected(RejectReason::Size);
            return self.reply(reply::too_big(max));
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = from.address.as_ref();
        if sender.is_empty() {
            self.metrics.rejected(RejectReason::SenderDomain);
            return self.reply(reply::NULL_SENDER);
        }
        if !smtputf8 && !sender.is_ascii() {
            return self.reply(reply::NEED_SMTPUTF8);
        }
        let domain = queue::domain_of(sender);
        if self.config.domain(domain).is_none() {
            self.metrics.rejected(RejectReason::SenderDomain);
            return self.reply(reply::sender_domain_denied(domain));
        }
        self.tx = Some(Transaction {
            sender: sender.to_owned(),
            recipients: Vec::new(),
            smtputf8,
        });
        self.reply(reply::SENDER_OK)
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Flow {
        // No DSN extension is offered, so NOTIFY/ORCPT/RRVS are not acceptable (RFC 5321 4.1.1.11).
        let offered = to.flags == 0 && to.orcpt.is_none() && to.rrvs == 0;
        let max = self.config.limits.max_recipients;
        let outcome = match self.tx.as_mut() {
            None => Err(reply::NEED_MAIL),
            Some(_) if !offered => Err(reply::UNSUPPORTED_PARAMETER),
            Some(tx) => Ok(if to.address.is_empty() {
                // `<>` or a bare `<postmaster>`: there is no local mailbox to deliver to.
                reply::BAD_RECIPIENT_SYNTAX
            } else if !tx.smtputf8 && !to.address.is_ascii() {
                reply::NEED_SMTPUTF8
            } else if tx.recipients.len() >= max {
                // RFC 5321 4.5.3.1.10: 452 and the client sends the rest in another transaction.
                reply::TOO_MANY_RECIPIENTS
            } else {
                tx.recipients.push(to.address.into_owned());
                reply::RECIPIENT_OK
            }),
        };
        match outcome {
            Ok(reply) => self.reply(reply),
            Err(reply) => self.bad(reply),
        }
    }

    async fn data(&mut self) -> Flow {
        let Some(tx) = &self.tx else {
            let reply = if self.helo.is_none() {
                reply::NEED_HELO
            } else {
                reply::NEED_MAIL
            };
            return self.bad(reply);
        };
        if tx.recipients.is_empty() {
            return self.reply(reply::NO_VALID_RECIPIENTS);
        }
        // Ask the spool first, so that a full spool answers DATA itself (no 354).
        let writer = match self.sink.begin().await {
            Ok(writer) => writer,
            Err(e) => {
                self.metrics.rejected(sink_reject_reason(e));
                return self.reply(sink_reply(e));
            }
        };
        let Some(tx) = self.tx.take() else {
            return Flow::Continue;
        };
        self.output.extend_from_slice(reply::START_DATA);
        self.receive(tx, writer).await
    }
}

impl<S, K: MessageSink> std::fmt::Debug for Session<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("helo", &self.helo)
            .field("tx", &self.tx)
            .field("bad_commands", &self.bad_commands)
            .finish_non_exhaustive()
    }
}

/// Only what EHLO advertises: SIZE, BODY=7BIT|8BITMIME and SMTPUTF8.
fn mail_parameters_offered(from: &MailFrom<Cow<'_, str>>) -> bool {
    from.flags & !(MAIL_SMTPUTF8 | MAIL_BODY_8BITMIME | MAIL_BODY_7BIT) == 0
        && from.trans_id.is_none()
        && from.env_id.is_none()
        && from.solicit.is_none()
        && from.mtrk.is_none()
        && from.auth.is_none()
        && from.by == 0
        && from.hold_for == 0
        && from.hold_until == 0
        && from.mt_priority == 0
}

fn parse_error(e: &ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ParseError::InvalidSenderAddress => reply::BAD_SENDER_SYNTAX,
        ParseError::InvalidRecipientAddress => reply::BAD_RECIPIENT_SYNTAX,
        ParseError::UnsupportedParameter { .. } => reply::UNSUPPORTED_PARAMETER,
        ParseError::SyntaxError { .. } | ParseError::InvalidParameter { .. } => reply::SYNTAX_ERROR,
        _ => reply::UNKNOWN_COMMAND,
    }
}

/// The reply for a sink failure: full is `452 4.3.1`, anything else `451 4.3.0`.
pub(super) fn sink_reply(e: SinkError) -> Reply {
    match e {
        SinkError::Full => reply::SPOOL_FULL,
        SinkError::Io => reply::SPOOL_ERROR,
    }
}

pub(super) fn sink_reject_reason(e: SinkError) -> RejectReason {
    match e {
        SinkError::Full => RejectReason::SpoolFull,
        SinkError::Io => RejectReason::SpoolError,
    }
}
