//! The one classifier: every delivery failure becomes an [`Outcome`], a [`ReplyClass`] and a
//! diagnostic here, and nowhere else (Stalwart `Status::from_smtp_error`).

use super::{Outcome, RcptResult, ReplyClass};
use lettre::transport::smtp::Error as SmtpError;
use std::{error::Error as _, io};

/// The step of a delivery attempt a failure happened in; it decides the class of errors that
/// carry no reply (a reset connection during STARTTLS is a TLS problem, not a network one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect, greeting and EHLO.
    Connect,
    /// STARTTLS and the TLS handshake (RFC 3207).
    Tls,
    /// AUTH (RFC 4954).
    Auth,
    /// MAIL, RCPT, DATA and the message (RFC 5321 3.3).
    Transaction,
}

/// Maps a lettre error to an outcome and a reply class.
///
/// RFC 5321 4.2.1: a 4xx reply is transient, a 5xx reply permanent. Everything without a reply
/// (connect, I/O, TLS, timeouts, garbage) is transient: the next attempt may work.
pub fn classify(err: &SmtpError) -> (Outcome, ReplyClass) {
    if err.is_timeout() {
        (Outcome::Deferred, ReplyClass::Timeout)
    } else if err.is_transient() {
        (Outcome::Deferred, ReplyClass::Transient)
    } else if err.is_permanent() {
        (Outcome::Bounced, ReplyClass::Permanent)
    } else if is_tls_io(err) {
        (Outcome::Deferred, ReplyClass::Tls)
    } else if err.is_response() || err.is_client() {
        (Outcome::Deferred, ReplyClass::Protocol)
    } else {
        (Outcome::Deferred, ReplyClass::Connection)
    }
}

/// Like [`classify`], then adjusted for the step it happened in, with a diagnostic.
///
/// RFC 4954 6: a failed AUTH is a problem of our credentials, not of the message, so it is
/// deferred (with class `auth`) even for 535, never bounced.
pub fn result(phase: Phase, err: &SmtpError) -> RcptResult {
    let (mut outcome, mut class) = classify(err);
    match (phase, class) {
        (Phase::Auth | Phase::Tls, ReplyClass::Timeout) => {}
        (Phase::Auth, _) => (outcome, class) = (Outcome::Deferred, ReplyClass::Auth),
        // RFC 3207 4: 454 (or a broken handshake) means no TLS now; never a reason to bounce.
        (Phase::Tls, _) => (outcome, class) = (Outcome::Deferred, ReplyClass::Tls),
        // A 5xx before any transaction (greeting 554, EHLO refused) says nothing about the
        // recipients; RFC 5321 3.1 lets us try again later.
        (Phase::Connect, ReplyClass::Permanent) => outcome = Outcome::Deferred,
        _ => {}
    }
    RcptResult {
        outcome,
        class,
        diagnostic: diagnostic(phase, err),
        next_hop_dsn: false,
        remote: None,
    }
}

/// The diagnostic for an error: `"<code> <text>"` as the server sent it when there is a reply
/// (DSNs quote it, RFC 3464 2.3.6), a short sentence otherwise.
pub fn diagnostic(phase: Phase, err: &SmtpError) -> String {
    let detail = err.source().map(|s| s.to_string()).unwrap_or_default();
    if let Some(code) = err.status() {
        return format!("{code} {detail}").trim_end().to_owned();
    }
    let what = match phase {
        Phase::Connect => "connection to the next hop failed",
        Phase::Tls => "TLS with the next hop failed",
        Phase::Auth => "authentication with the smarthost failed",
        Phase::Transaction => "the connection to the next hop failed",
    };
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

/// The result for a step that ran out of time (RFC 5321 4.5.3.2: the client times out).
pub fn timeout(phase: Phase) -> RcptResult {
    let step = match phase {
        Phase::Connect => "connect, greeting or EHLO",
        Phase::Tls => "STARTTLS",
        Phase::Auth => "AUTH",
        Phase::Transaction => "a reply",
    };
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Timeout,
        diagnostic: format!("timed out waiting for {step} from the next hop"),
        next_hop_dsn: false,
        remote: None,
    }
}

/// rustls reports failures on an established TLS stream as `io::ErrorKind::InvalidData`, and
/// lettre wraps them as connection errors; look through the chain to tell them apart.
fn is_tls_io(err: &SmtpError) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::InvalidData;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lettre builds reply errors only from the wire, so a loopback peer sends the reply.
    async fn reply_error(reply: &str) -> SmtpError {
        use lettre::transport::smtp::{client::AsyncSmtpConnection, commands::Rset, extension::ClientId};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reply = reply.to_owned();
        let peer = tokio::spawn(async move {
            let (mut server, _) = listener.accept().await.expect("accept");
            server.write_all(b"220 test ESMTP\r\n").await.expect("greeting");
            let mut buf = [0u8; 512];
            let _ = server.read(&mut buf).await;
            server.write_all(b"250 test\r\n").await.expect("ehlo");
            let _ = server.read(&mut buf).await;
            server.write_all(reply.as_bytes()).await.expect("reply");
            server
        });
        let me = ClientId::Domain("me".into());
        let mut conn = AsyncSmtpConnection::connect_tokio1(addr, None, &me, None, None)
            .await
            .expect("connects");
        let err = conn.command(Rset).await.expect_err("negative reply");
        drop(peer.await);
        err
    }

    #[tokio::test]
    async fn replies_classify_by_their_first_digit() {
        struct Case {
            reply: &'static str,
            phase: Phase,
            want: (Outcome, ReplyClass),
            diagnostic: &'static str,
        }
        let cases = [
            Case {
                reply: "450 4.2.0 mailbox busy\r\n",
                phase: Phase::Transaction,
                want: (Outcome::Deferred, ReplyClass::Transient),
                diagnostic: "450 4.2.0 mailbox busy",
            },
            Case {
                reply: "550-5.1.1 no such\r\n550 5.1.1 user\r\n",
                phase: Phase::Transaction,
                want: (Outcome::Bounced, ReplyClass::Permanent),
                diagnostic: "550 5.1.1 no such user",
            },
            Case {
                reply: "535 5.7.8 bad credentials\r\n",
                phase: Phase::Auth,
                want: (Outcome::Deferred, ReplyClass::Auth),
                diagnostic: "535 5.7.8 bad credentials",
            },
            Case {
                reply: "554 5.7.0 go away\r\n",
                phase: Phase::Connect,
                want: (Outcome::Deferred, ReplyClass::Permanent),
                diagnostic: "554 5.7.0 go away",
            },
        ];
        for case in cases {
            let err = reply_error(case.reply).await;
            let got = result(case.phase, &err);
            assert_eq!((got.outcome, got.class), case.want, "{}", case.reply);
            assert_eq!(got.diagnostic, case.diagnostic);
        }
    }

    #[test]
    fn timeouts_are_deferred_with_a_sentence() {
        for phase in [Phase::Connect, Phase::Tls, Phase::Auth, Phase::Transaction] {
            let got = timeout(phase);
            assert_eq!((got.outcome, got.class), (Outcome::Deferred, ReplyClass::Timeout));
            assert!(
                got.diagnostic.starts_with("timed out waiting for"),
                "{}",
                got.diagnostic
            );
        }
    }
}
