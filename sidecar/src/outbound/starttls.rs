//! A lettre connection over a stream we own: TCP_NODELAY on every socket, and TLS (STARTTLS,
//! RFC 3207, or implicit, RFC 8314) with our own rustls config and the negotiated version.

use super::{
    Outcome, RcptResult, ReplyClass,
    classify::{self, Phase},
    client::step,
};
use crate::sync::lock;
use lettre::transport::smtp::{
    client::{AsyncSmtpConnection, AsyncTokioStream},
    commands::{Ehlo, Starttls},
    extension::{ClientId, ServerInfo},
    response::Response,
};
use rustls::{
    ClientConfig, ProtocolVersion,
    pki_types::{CertificateDer, ServerName},
};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

enum Slot {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Moving,
}

/// The stream, and a copy of what is read while `tap` is set.
struct Shared {
    slot: Slot,
    /// lettre reads the greeting and the EHLO reply itself and keeps only the extensions it
    /// knows; the tap keeps the bytes, so that DSN and PIPELINING are learned from the same reply.
    tap: Option<Vec<u8>>,
}

/// Most bytes the tap keeps: a greeting and an EHLO reply fit many times over.
const TAP_LIMIT: usize = 16 << 10;

/// The socket under a lettre connection, swappable from plain to TLS in place. The transaction
/// writes through it directly (pipelined command groups and the message in one write each) and
/// reads the replies through lettre.
#[derive(Clone)]
pub(crate) struct Handoff {
    shared: Arc<Mutex<Shared>>,
    peer: SocketAddr,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn moving() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is being upgraded to TLS")
}

macro_rules! with_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut lock(&$self.shared).slot {
            Slot::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Slot::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Slot::Moving => Poll::Ready(Err(moving())),
        }
    };
}

impl AsyncRead for Handoff {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        let before = buf.filled().len();
        let polled = match &mut shared.slot {
            Slot::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Slot::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Slot::Moving => Poll::Ready(Err(moving())),
        };
        if let (Poll::Ready(Ok(())), Some(tap)) = (&polled, &mut shared.tap) {
            let read = &buf.filled()[before..];
            let room = TAP_LIMIT.saturating_sub(tap.len());
            tap.extend_from_slice(&read[..read.len().min(room)]);
        }
        polled
    }
}

impl Handoff {
    fn new(slot: Slot, peer: SocketAddr) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared { slot, tap: None })),
            peer,
        }
    }

    /// Starts keeping a copy of what is read.
    fn start_tap(&self) {
        lock(&self.shared).tap = Some(Vec::new());
    }

    /// Stops the tap and gives back what it kept.
    fn take_tap(&self) -> Vec<u8> {
        lock(&self.shared).tap.take().unwrap_or_default()
    }

    /// Whether the connection still looks usable without a round trip: nothing unsolicited has
    /// arrived (a `421` before closing, RFC 5321 3.8) and the server has not closed it. Looks at
    /// the TCP socket only, so it costs no syscall while the socket has nothing to read.
    pub(crate) fn quiet(&self) -> bool {
        let mut shared = lock(&self.shared);
        let tcp = match &mut shared.slot {
            Slot::Plain(s) => s,
            Slot::Tls(s) => &mut s.get_mut().0,
            Slot::Moving => return false,
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncWrite for Handoff {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        with_stream!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(self, s => s.poll_shutdown(cx))
    }
}

impl AsyncTokioStream for Handoff {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// A connection after greeting and EHLO, with the socket handle for STARTTLS.
pub(crate) struct Opened {
    pub conn: AsyncSmtpConnection,
    pub info: ServerInfo,
    pub handoff: Handoff,
    /// What the last EHLO reply offered beyond what lettre knows.
    pub offers: Offers,
    /// Taken from the pool: a connection the server may have closed while it was idle.
    pub reused: bool,
}

/// Extensions of the last EHLO reply that lettre's `ServerInfo` does not keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offers {
    /// RFC 3461 3.
    pub dsn: bool,
    /// RFC 2920 3.
    pub pipelining: bool,
    /// RFC 3030 2.
    pub chunking: bool,
    /// Our XHANDOFF: the next hop is this Relay's hub (docs/hub.md).
    pub handoff: bool,
    /// Our XSHADOW: that hub holds shadow copies.
    pub shadow: bool,
}

impl Offers {
    /// From an EHLO reply.
    pub(crate) fn of(reply: &Response) -> Self {
        Self {
            dsn: offers(reply, "DSN"),
            pipelining: offers(reply, "PIPELINING"),
            chunking: offers(reply, "CHUNKING"),
            handoff: offers(reply, crate::message::handoff::KEYWORD),
            shadow: offers(reply, crate::message::handoff::SHADOW_KEYWORD),
        }
    }

    /// From the bytes read while connecting: the greeting, then the reply to EHLO (or to HELO,
    /// which offers nothing).
    fn from_transcript(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let Some(at) = text
            .match_indices("\r\n")
            .map(|(i, _)| i + 2)
            .find(|&i| text[i..].starts_with("250"))
        else {
            return Self::default();
        };
        text[at..]
            .parse::<Response>()
            .map(|r| Self::of(&r))
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("handoff", &self.handoff)
            .finish_non_exhaustive()
    }
}

/// TLS from the first byte (RFC 8314 3): the config and the name the certificate must match.
pub(crate) struct Implicit<'a> {
    pub config: Arc<ClientConfig>,
    pub server_name: &'a str,
}

/// Connects to the first of `addrs` that answers (TLS first with `implicit`) and reads the
/// greeting and the EHLO reply.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    implicit: Option<Implicit<'_>>,
    client_id: &ClientId,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<Opened, RcptResult> {
    let (tcp, peer) = tcp(addrs, connect_timeout).await?;
    let slot = match implicit {
        None => Slot::Plain(tcp),
        Some(i) => Slot::Tls(Box::new(
            handshake(tcp, i.config, i.server_name, command_timeout).await?,
        )),
    };
    let handoff = Handoff::new(slot, peer);
    let stream: Box<dyn AsyncTokioStream> = Box::new(handoff.clone());
    handoff.start_tap();
    let conn = step(
        command_timeout,
        Phase::Connect,
        AsyncSmtpConnection::connect_with_transport(stream, client_id),
    )
    .await?;
    let offers = Offers::from_transcript(&handoff.take_tap());
    let info = conn.server_info().clone();
    Ok(Opened {
        conn,
        info,
        handoff,
        offers,
        reused: false,
    })
}

/// Tries `addrs` in order, each under `limit`; the last failure when none answers.
async fn tcp(addrs: &[SocketAddr], limit: Duration) -> Result<(TcpStream, SocketAddr), RcptResult> {
    let mut last = connection_failed("no address to connect to");
    for &addr in addrs {
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                // lettre writes the final "." line on its own after the body; with Nagle it
                // would wait for the server's delayed ACK (~40 ms) on every message.
                if let Err(error) = s.set_nodelay(true) {
                    tracing::debug!(%error, %addr, "cannot set TCP_NODELAY");
                }
                return Ok((s, addr));
            }
            Ok(Err(e)) => last = connection_failed(&e.to_string()),
            Err(_) => last = classify::timeout(Phase::Connect),
        }
    }
    Err(last)
}

/// The TLS handshake on `plain` with `config`, verifying against `server_name`.
async fn handshake(
    plain: TcpStream,
    config: Arc<ClientConfig>,
    server_name: &str,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, RcptResult> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| tls_failed(&format!("{server_name:?} is not a TLS server name")))?;
    match tokio::time::timeout(limit, TlsConnector::from(config).connect(name, plain)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(tls_failed(&e.to_string())),
        Err(_) => Err(classify::timeout(Phase::Tls)),
    }
}

/// The negotiated protocol version, for the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
    /// Anything else rustls may negotiate in future.
    Other,
}

impl TlsVersion {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
            Self::Other => "other",
        }
    }
}

/// STARTTLS, the handshake with `config` for `server_name`, and EHLO again (RFC 3207 4.2:
/// everything learned before TLS is discarded). Updates `opened.info`.
pub(crate) async fn upgrade(
    opened: &mut Opened,
    config: Arc<ClientConfig>,
    server_name: &str,
    client_id: &ClientId,
    limit: Duration,
) -> Result<(TlsVersion, Vec<CertificateDer<'static>>), RcptResult> {
    step(limit, Phase::Tls, opened.conn.command(Starttls)).await?;
    let plain = match std::mem::replace(&mut lock(&opened.handoff.shared).slot, Slot::Moving) {
        Slot::Plain(s) => s,
        _ => return Err(tls_failed("STARTTLS on a stream that is not plain text")),
    };
    let tls = handshake(plain, config, server_name, limit).await?;
    let version = match tls.get_ref().1.protocol_version() {
        Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
        Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
        _ => TlsVersion::Other,
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    lock(&opened.handoff.shared).slot = Slot::Tls(Box::new(tls));
    let reply = step(
        limit,
        Phase::Tls,
        opened.conn.command(Ehlo::new(client_id.clone())),
    )
    .await?;
    opened.info = ServerInfo::from_response(&reply).map_err(|e| classify::result(Phase::Tls, &e))?;
    opened.offers = Offers::of(&reply);
    Ok((version, chain))
}

/// Whether an EHLO reply lists `keyword` (RFC 5321 4.1.1.1: one ehlo-line per extension after
/// the first line, which names the server).
pub(crate) fn offers(reply: &Response, keyword: &str) -> bool {
    reply.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
    })
}

/// A connection failure result (deferred, and it counts toward parking).
pub(crate) fn connection_failed(detail: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Connection,
        diagnostic: format!("connection failed: {detail}"),
        next_hop_dsn: false,
        remote: None,
    }
}

/// A TLS failure result (deferred: RFC 3207 4.1 leaves the decision to retry to the client).
pub(crate) fn tls_failed(detail: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Tls,
        diagnostic: format!("TLS failed: {detail}"),
        next_hop_dsn: false,
        remote: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extension_is_offered_only_as_an_ehlo_keyword() {
        struct Case {
            reply: &'static str,
            want: bool,
        }
        let cases = [
            Case {
                reply: "250-mx.example.net Hello\r\n250-SIZE 10\r\n250-DSN\r\n250 HELP\r\n",
                want: true,
            },
            Case {
                reply: "250-mx.example.net\r\n250 dsn\r\n",
                want: true,
            },
            Case {
                reply: "250-DSN\r\n250 HELP\r\n",
                want: false,
            },
            Case {
                reply: "250-mx.example.net\r\n250-DSNX\r\n250 X-DSN\r\n",
                want: false,
            },
        ];
        for c in cases {
            let reply: Response = c.reply.parse().expect("reply parses");
            assert_eq!(offers(&reply, "DSN"), c.want, "{:?}", c.reply);
        }
    }
}
