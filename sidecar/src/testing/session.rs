//! Session test helpers: a test config, a line-oriented SMTP client, one session over
//! `tokio::io::duplex` ([`Harness`]) and `inbound::serve` on loopback ([`Server`]), both with a
//! [`MemorySink`]. They panic on failure: they serve `#[test]` functions directly.

use super::MemorySink;
use crate::{
    config::Config,
    inbound::Session,
    metrics::{Metrics, SessionEnd},
};
use std::{path::Path, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream},
    sync::watch,
    task::JoinHandle,
};

/// Config used by the tests: domains `example.com` and `example.org`, hostname `relay.test`.
pub const CONFIG: &str = "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
hostname: relay.test
domains:
  - domain: example.com
  - domain: example.org
spool:
  dir: /nonexistent/spool
delivery:
  capture:
    dir: /nonexistent/capture
";

/// The test config with default limits.
pub fn config() -> Config {
    Config::parse(Path::new("test.yaml"), CONFIG).expect("test config is valid")
}

/// Splits a stored message into its first (our) `Received:` field and the rest.
pub fn split_received(bytes: &[u8]) -> (String, Vec<u8>) {
    assert!(
        bytes.starts_with(b"Received: "),
        "message starts with our Received field"
    );
    let mut end = 0;
    while let Some(pos) = bytes[end..].windows(2).position(|w| w == b"\r\n") {
        end += pos + 2;
        if !matches!(bytes.get(end), Some(b'\t' | b' ')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&bytes[..end]).into_owned(),
        bytes[end..].to_vec(),
    )
}

/// A line-oriented SMTP client for tests; keeps every reply line it read in `transcript`.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    buf: Vec<u8>,
    /// Every reply line read so far, without CRLF.
    pub transcript: Vec<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("send to server");
    }

    /// Reads one line (without CRLF); `None` at EOF.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&line[..pos]).into_owned();
                self.transcript.push(line.clone());
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("server answered within 10 s")
                .unwrap_or(0);
            if read == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await.expect("a reply, not EOF");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Reads one reply and checks that its last line starts with `prefix`; returns that line.
    pub async fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply().await;
        let last = reply.last().cloned().unwrap_or_default();
        assert!(last.starts_with(prefix), "expected {prefix:?}, got {reply:?}");
        last
    }

    /// Sends `command` (CRLF added) and expects a reply starting with `prefix`.
    pub async fn command(&mut self, command: &str, prefix: &str) -> String {
        self.send(format!("{command}\r\n")).await;
        self.expect(prefix).await
    }

    /// Whether the server closed the connection (after any unread replies were consumed).
    pub async fn is_closed(&mut self) -> bool {
        self.line().await.is_none()
    }

    /// Reads everything currently available with one read call (for the pipelining test).
    pub async fn read_once(&mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 64 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("server answered within 10 s")
            .expect("read");
        chunk.truncate(read);
        chunk
    }
}

/// Whether a reply line carries an enhanced status code of its class (`^\d{3}[ -]\d\.\d{1,3}\.\d{1,3} `),
/// or is one of the lines RFC 5321/2034 exempt: greeting, EHLO/HELO reply, 354.
pub fn reply_line_is_well_formed(line: &str) -> bool {
    let b = line.as_bytes();
    if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) || !matches!(b[3], b' ' | b'-') {
        return false;
    }
    let rest = &line[4..];
    let exempt = line.starts_with("220 relay.test ")
        || line.starts_with("354 ")
        // RFC 4954 4: a challenge (base64, empty for PLAIN), like 354 an intermediate reply.
        || line.starts_with("334 ")
        || (line.starts_with("250") && (rest.starts_with("relay.test Hello ") || is_ehlo_keyword(rest)));
    if exempt {
        return true;
    }
    let Some((code, _text)) = rest.split_once(' ') else {
        return false;
    };
    let parts: Vec<&str> = code.split('.').collect();
    parts.len() == 3
        && parts[0].len() == 1
        && parts[0].as_bytes()[0] == b[0]
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
}

fn is_ehlo_keyword(rest: &str) -> bool {
    [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "DSN",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "AUTH PLAIN",
        "XHANDOFF",
    ]
    .contains(&rest)
        || rest
            .strip_prefix("SIZE ")
            .is_some_and(|n| n.bytes().all(|c| c.is_ascii_digit()))
}

/// A session on one end of a duplex pipe and a client on the other.
#[derive(Debug)]
pub struct Harness {
    /// The client end.
    pub client: Client<DuplexStream>,
    /// Where accepted messages go.
    pub sink: Arc<MemorySink>,
    /// The session's metrics.
    pub metrics: Metrics,
    /// Send `true` to shut the session down.
    pub shutdown: watch::Sender<bool>,
    /// The running session.
    pub session: JoinHandle<SessionEnd>,
}

impl Harness {
    /// Starts a session with `config`; the greeting is not read yet.
    pub fn start(config: Config) -> Self {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let sink = MemorySink::new();
        let metrics = Metrics::new();
        let (shutdown, signal) = watch::channel(false);
        let session = Session::new(server, Arc::new(config), sink.clone(), metrics.clone(), signal);
        let session = tokio::spawn(session.run());
        Self {
            client: Client::new(client),
            sink,
            metrics,
            shutdown,
            session,
        }
    }

    /// Starts a session and completes greeting and EHLO.
    pub async fn ready(config: Config) -> Self {
        let mut h = Self::start(config);
        h.client.expect("220 ").await;
        h.client.command("EHLO client.test", "250 ").await;
        h
    }

    /// Waits for the session to end, checks every reply line's format, and says how it ended.
    pub async fn end(&mut self) -> SessionEnd {
        while self.client.line().await.is_some() {}
        let end = tokio::time::timeout(Duration::from_secs(10), &mut self.session)
            .await
            .expect("session ends")
            .expect("session task did not panic");
        for line in &self.client.transcript {
            assert!(
                reply_line_is_well_formed(line),
                "reply line without enhanced status code: {line:?}"
            );
        }
        end
    }
}

/// `inbound::serve` running on `127.0.0.1:0` with a [`MemorySink`].
#[derive(Debug)]
pub struct Server {
    /// The bound port.
    pub port: u16,
    /// Where accepted messages go.
    pub sink: Arc<MemorySink>,
    /// The server's metrics.
    pub metrics: Metrics,
    /// Send a new config here to hot-reload it.
    pub config: watch::Sender<Arc<Config>>,
    /// Send `true` to stop accepting and drain.
    pub stop: watch::Sender<bool>,
    /// The `serve` task; ends once every session has ended after `stop`.
    pub task: JoinHandle<()>,
}

impl Server {
    /// Binds `127.0.0.1:0` and spawns `serve` with `config`.
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("bound address").port();
        let sink = MemorySink::new();
        let metrics = Metrics::new();
        let (config, config_rx) = watch::channel(Arc::new(config));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(crate::inbound::serve(
            listener,
            config_rx,
            sink.clone(),
            metrics.clone(),
            stopped,
        ));
        Self {
            port,
            sink,
            metrics,
            config,
            stop,
            task,
        }
    }

    /// A test client connected to the server.
    pub async fn connect(&self) -> Client<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        Client::new(stream)
    }
}
