//! SMTP session fuzzing: a client byte stream in, the replies and the committed messages checked.

use crate::{
    config::{BareLineEndings, Config},
    inbound::Session,
    message::{self, Envelope, SinkError},
    testing::MemorySink,
};
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// The config with `bareLineEndings` reject and normalize; parsed once, not per input.
    static CONFIGS: [Arc<Config>; 2] = {
        let mut config = crate::testing::config();
        // Small limits, so that short inputs reach the size, line and recipient limits.
        config.limits.max_message_bytes = 4096;
        config.limits.max_recipients = 3;
        config.limits.max_line_bytes = 512;
        config.limits.max_bad_commands = 20;
        let mut normalize = config.clone();
        normalize.limits.bare_line_endings = BareLineEndings::Normalize;
        [Arc::new(config), Arc::new(normalize)]
    };
}

/// Runs one inbound session over `input`. The first byte picks the variant: bits 0-1 a sink
/// failure (none, `begin` full, `commit` I/O error, rate limited), bit 2 `bareLineEndings:
/// normalize`, bit 3 shutdown already requested, bits 4-7 how many bytes each read returns
/// (0: all at once, n: 2^(n-1)), so that commands and the end of data split across reads.
///
/// Invariants: every reply line is `ddd` + space or hyphen, CRLF-terminated; 4xx/5xx replies
/// carry an enhanced code of the same class (RFC 3463); the session ends; every committed
/// message was answered `250 2.0.0 ... queued` and vice versa; committed messages have a sender
/// in a configured domain, 1..=maxRecipients recipients and CRLF-only line endings.
/// Returns the number of messages committed.
pub fn smtp_session(input: &[u8]) -> usize {
    let Some((&mode, stream)) = input.split_first() else {
        return 0;
    };
    let config = CONFIGS.with(|c| c[usize::from(mode & 4 != 0)].clone());
    let sink = MemorySink::new();
    match mode & 3 {
        1 => sink.fail_begin(Some(SinkError::Full)),
        2 => sink.fail_commit(Some(SinkError::Io)),
        3 => sink.fail_begin(Some(SinkError::RateLimited)),
        _ => {}
    }
    let chunk = match mode >> 4 {
        0 => usize::MAX,
        n => 1 << (n - 1),
    };
    let io = FuzzStream {
        input: stream,
        chunk,
        output: Vec::new(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(mode & 8 != 0);
    let mut io = super::block_on(async {
        let mut io = io;
        Session::new(&mut io, config.clone(), sink.clone(), super::metrics(), stopped)
            .run()
            .await;
        io
    });
    drop(stop);
    let committed = sink.messages();
    check_replies(&std::mem::take(&mut io.output), committed.len());
    for stored in &committed {
        check_message(&config, &stored.envelope, &stored.bytes);
    }
    committed.len()
}

fn check_replies(output: &[u8], committed: usize) {
    let text = String::from_utf8_lossy(output);
    assert!(text.ends_with("\r\n"), "output does not end with CRLF: {text:?}");
    let mut queued = 0;
    for line in text.strip_suffix("\r\n").unwrap_or_default().split("\r\n") {
        let b = line.as_bytes();
        assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'),
            "malformed reply line {line:?}"
        );
        assert!(!line.contains(['\r', '\n']), "bare CR or LF in reply {line:?}");
        let class = b[0];
        assert!(
            (b'2'..=b'5').contains(&class),
            "reply class out of range: {line:?}"
        );
        if class == b'4' || class == b'5' {
            let status = &b[4..];
            assert!(
                status.len() >= 6 && status[0] == class && status[1] == b'.',
                "{line:?}: a 4xx/5xx reply needs an enhanced status code of its class"
            );
        }
        if line.starts_with("250 2.0.0 Ok: queued as ") {
            queued += 1;
        }
    }
    assert_eq!(queued, committed, "queued replies != committed messages\n{text}");
}

fn check_message(config: &Config, envelope: &Envelope, body: &[u8]) {
    let domain = message::domain_of(&envelope.sender);
    assert!(
        envelope.sender.is_empty() || config.domain(domain).is_some(),
        "committed sender {:?}",
        envelope.sender
    );
    let n = envelope.recipients.len();
    assert!((1..=config.limits.max_recipients).contains(&n), "{n} recipients");
    for (i, &b) in body.iter().enumerate() {
        let crlf = match b {
            b'\r' => body.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && body[i - 1] == b'\r',
            _ => true,
        };
        assert!(crlf, "bare CR or LF at {i} of a committed message");
    }
    assert!(!body.contains(&0), "NUL octet in a committed message");
    assert!(
        body.ends_with(b"\r\n"),
        "committed message does not end with CRLF"
    );
}

/// Reads `input` `chunk` bytes at a time, then EOF; keeps everything written.
#[derive(Debug)]
struct FuzzStream<'a> {
    input: &'a [u8],
    chunk: usize,
    output: Vec<u8>,
}

impl AsyncRead for FuzzStream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(self.chunk).min(buf.remaining());
        let (now, rest) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FuzzStream<'_> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
