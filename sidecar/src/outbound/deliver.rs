//! One connection with lettre's connection-level API: connect, STARTTLS, AUTH (smarthost), and
//! one mail transaction with a result per recipient (shared by the smarthost and direct routes). Every step runs under a timeout, because
//! lettre's own timeout covers only the TCP connect.

use super::{
    Outcome, RcptResult, ReplyClass,
    classify::{self, Phase},
};
use crate::{
    config::{self, AuthMechanism, TlsMode},
    queue::Envelope,
};
use lettre::{
    Address,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        commands::{Data, Mail, Rcpt, Rset},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter, ServerInfo},
    },
};
use std::{future::Future, path::Path, str::FromStr, time::Duration};
use tokio::time::timeout;

pub use super::smarthost::{DeliveryError, SmarthostTransport};

/// Everything needed to open a connection, prepared once from the config.
#[derive(Clone)]
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Built once: verifying against the system roots or only the configured CA file.
    pub tls_params: Option<TlsParameters>,
    pub client_id: ClientId,
    pub auth: Option<config::Auth>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A connection could not be set up; `result` applies to every recipient of the attempt.
#[derive(Debug)]
pub(crate) struct OpenFailure {
    pub result: RcptResult,
    /// Connection-level (connect refused, TLS, timeout, 421 greeting): counts toward parking.
    pub parks: bool,
}

/// How a transaction left the connection.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub results: Vec<RcptResult>,
    /// Still in a known state; may be pooled (after RSET).
    pub reusable: bool,
    /// A reply did not come in time: counts toward parking.
    pub timed_out: bool,
}

pub(crate) async fn step<T>(
    limit: Duration,
    phase: Phase,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, RcptResult> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify::result(phase, &e)),
        Err(_elapsed) => Err(classify::timeout(phase)),
    }
}

fn parks(r: &RcptResult) -> bool {
    matches!(r.class, ReplyClass::Connection | ReplyClass::Tls | ReplyClass::Timeout)
        // RFC 5321 3.8: 421 means the service is shutting down the channel.
        || r.diagnostic.starts_with("421")
}

/// Connects, greets, secures and authenticates one connection.
pub(crate) async fn open(s: &Settings) -> Result<AsyncSmtpConnection, OpenFailure> {
    let fail = |result: RcptResult| OpenFailure {
        parks: parks(&result),
        result,
    };
    // RFC 8314 3: implicit TLS starts the handshake before the greeting.
    let implicit = match s.tls {
        TlsMode::Implicit => s.tls_params.clone(),
        _ => None,
    };
    let connect = AsyncSmtpConnection::connect_tokio1(
        (s.host.as_str(), s.port),
        Some(s.connect_timeout),
        &s.client_id,
        implicit,
        None,
    );
    // The classifier tells a handshake failure (implicit TLS) from a refused connect.
    let mut conn = step(s.connect_timeout + s.command_timeout, Phase::Connect, connect)
        .await
        .map_err(fail)?;
    if s.tls == TlsMode::Starttls {
        let Some(params) = s.tls_params.clone() else {
            return Err(fail(tls_unavailable("no TLS parameters")));
        };
        if !conn.can_starttls() {
            // RFC 3207 4: a client that requires TLS must not go on in clear text.
            let _ = timeout(s.command_timeout, conn.quit()).await;
            return Err(fail(tls_unavailable(
                "the smarthost does not offer STARTTLS (RFC 3207)",
            )));
        }
        step(s.command_timeout, Phase::Tls, conn.starttls(params, &s.client_id))
            .await
            .map_err(fail)?;
    }
    if let Some(auth) = &s.auth {
        // A rejected AUTH is our configuration's problem, not the route's: it does not park.
        authenticate(&mut conn, auth, s.command_timeout)
            .await
            .map_err(|result| OpenFailure {
                parks: result.class == ReplyClass::Timeout,
                result,
            })?;
    }
    Ok(conn)
}

fn tls_unavailable(why: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Tls,
        diagnostic: why.to_owned(),
    }
}

/// RFC 4954: AUTH with credentials read now, so that a rotated Secret applies at once. The
/// values are never logged nor put in a diagnostic.
async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    auth: &config::Auth,
    limit: Duration,
) -> Result<(), RcptResult> {
    let username = read_secret(&auth.username_file)?;
    let password = read_secret(&auth.password_file)?;
    let mechanism = match auth.mechanism {
        AuthMechanism::Plain => Mechanism::Plain,
        AuthMechanism::Login => Mechanism::Login,
        AuthMechanism::Xoauth2 => Mechanism::Xoauth2,
    };
    let credentials = Credentials::new(username, password);
    step(limit, Phase::Auth, conn.auth(&[mechanism], &credentials))
        .await
        .map(drop)
}

fn read_secret(path: &Path) -> Result<String, RcptResult> {
    match std::fs::read_to_string(path) {
        // Secrets mounted from files usually end with a newline that is not part of the value.
        Ok(s) => Ok(s.trim_end_matches(['\r', '\n']).to_owned()),
        Err(e) => Err(RcptResult {
            outcome: Outcome::Deferred,
            class: ReplyClass::Auth,
            diagnostic: format!(
                "cannot read smarthost credentials file {}: {}",
                path.display(),
                e.kind()
            ),
        }),
    }
}

/// RFC 5321 4.1.1.5: RSET before reusing a pooled connection; also tells a dead one.
pub(crate) async fn reset(conn: &mut AsyncSmtpConnection, limit: Duration) -> bool {
    !conn.has_broken() && matches!(timeout(limit, conn.command(Rset)).await, Ok(Ok(_)))
}

/// Sends one message to `recipients`, each RCPT on its own so that one rejection does not fail
/// the others (RFC 5321 3.3).
///
/// `info` is what the last EHLO reply said (after STARTTLS, the second one; RFC 3207 4.2).
pub(crate) async fn transaction(
    conn: &mut AsyncSmtpConnection,
    info: &ServerInfo,
    limit: Duration,
    envelope: &Envelope,
    recipients: &[String],
    message: &[u8],
) -> Transaction {
    let all = |r: RcptResult| vec![r; recipients.len()];
    let (from, params) = match mail_from(info, envelope, recipients, message) {
        Ok(v) => v,
        Err(r) => {
            return Transaction {
                results: all(r),
                reusable: true,
                timed_out: false,
            };
        }
    };
    if let Err(r) = step(limit, Phase::Transaction, conn.command(Mail::new(from, params))).await {
        return broken_unless_reply(all(r.clone()), &r);
    }
    let mut results: Vec<Option<RcptResult>> = vec![None; recipients.len()];
    let mut accepted = Vec::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        let Ok(address) = Address::from_str(rcpt) else {
            results[i] = Some(invalid_address(rcpt));
            continue;
        };
        match step(
            limit,
            Phase::Transaction,
            conn.command(Rcpt::new(address, vec![])),
        )
        .await
        {
            Ok(_) => accepted.push(i),
            Err(r) if is_reply(&r) => results[i] = Some(r),
            Err(r) => return broken_unless_reply(fill(results, &r), &r),
        }
    }
    if accepted.is_empty() {
        return finish(results, true, false);
    }
    // RFC 5321 4.1.1.4: the reply to DATA end applies to every accepted recipient.
    let sent = match step(limit, Phase::Transaction, conn.command(Data)).await {
        // lettre appends CRLF.CRLF; drop the message's own final CRLF so the bytes arrive unchanged.
        Ok(_) => step(limit, Phase::Transaction, conn.message(strip_final_crlf(message))).await,
        Err(r) => Err(r),
    };
    let result = match sent {
        Ok(reply) => RcptResult {
            outcome: Outcome::Delivered,
            class: ReplyClass::Ok,
            diagnostic: format!(
                "{} {}",
                reply.code(),
                reply.message().collect::<Vec<_>>().join(" ")
            ),
        },
        Err(r) if is_reply(&r) => r,
        Err(r) => return broken_unless_reply(fill(results, &r), &r),
    };
    for i in accepted {
        results[i] = Some(result.clone());
    }
    finish(results, true, false)
}

/// MAIL FROM with SMTPUTF8 (RFC 6531 3.4) and BODY=8BITMIME (RFC 6152 3) when the message needs
/// them; a message the smarthost cannot take unchanged is bounced rather than mangled.
fn mail_from(
    info: &ServerInfo,
    envelope: &Envelope,
    recipients: &[String],
    message: &[u8],
) -> Result<(Option<Address>, Vec<MailParameter>), RcptResult> {
    let mut params = Vec::new();
    let utf8 = envelope.smtputf8 || !envelope.sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    if utf8 {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(unsupported("SMTPUTF8 (RFC 6531)"));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(unsupported("8BITMIME (RFC 6152)"));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    // RFC 5321 4.5.5: the null reverse-path `<>` for notifications.
    let from = match envelope.sender.as_str() {
        "" => None,
        s => Some(Address::from_str(s).map_err(|_| invalid_address(s))?),
    };
    Ok((from, params))
}

fn unsupported(what: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Bounced,
        class: ReplyClass::Protocol,
        diagnostic: format!("the next hop does not support {what}, which this message needs"),
    }
}

fn invalid_address(address: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Bounced,
        class: ReplyClass::Protocol,
        diagnostic: format!("address {address:?} is not valid for SMTP (RFC 5321 4.1.2)"),
    }
}

fn is_reply(r: &RcptResult) -> bool {
    matches!(r.class, ReplyClass::Transient | ReplyClass::Permanent)
}

fn fill(results: Vec<Option<RcptResult>>, r: &RcptResult) -> Vec<RcptResult> {
    results
        .into_iter()
        .map(|x| x.unwrap_or_else(|| r.clone()))
        .collect()
}

fn finish(results: Vec<Option<RcptResult>>, reusable: bool, timed_out: bool) -> Transaction {
    let unknown = RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Protocol,
        diagnostic: "no result for this recipient".into(),
    };
    Transaction {
        results: fill(results, &unknown),
        reusable,
        timed_out,
    }
}

fn broken_unless_reply(results: Vec<RcptResult>, r: &RcptResult) -> Transaction {
    let reply = is_reply(r);
    Transaction {
        results,
        reusable: reply,
        timed_out: r.class == ReplyClass::Timeout,
    }
}

fn strip_final_crlf(message: &[u8]) -> &[u8] {
    message.strip_suffix(b"\r\n").unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_final_crlf_is_dropped() {
        struct Case {
            input: &'static [u8],
            want: &'static [u8],
        }
        let cases = [
            Case {
                input: b"a\r\n",
                want: b"a",
            },
            Case {
                input: b"a\r\n\r\n",
                want: b"a\r\n",
            },
            Case {
                input: b"a",
                want: b"a",
            },
        ];
        for c in cases {
            assert_eq!(strip_final_crlf(c.input), c.want);
        }
    }
}
