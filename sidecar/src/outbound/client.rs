//! One connection with lettre's connection-level API over our own socket: connect, TLS, AUTH
//! (smarthost), and one mail transaction with a result per recipient (shared by the smarthost and
//! direct routes). Every step runs under a timeout.

use super::{
    Outcome, RcptResult, ReplyClass,
    classify::{self, Phase},
    command::{InvalidPath, PathCommand},
    starttls::{self, Implicit, Opened},
};
use crate::{
    config::{self, AuthMechanism, TlsMode},
    message::{Envelope, Recipient},
};
use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism},
    client::AsyncSmtpConnection,
    commands::{Auth, Data, Ehlo, Rset},
    extension::{ClientId, Extension, ServerInfo},
};
use rustls::ClientConfig;
use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};
use tokio::time::timeout;

pub use super::smarthost::{DeliveryError, SmarthostTransport};

/// Everything needed to open a connection, prepared once from the config.
#[derive(Clone)]
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Built once: verifying against the system roots or only the configured CA file.
    pub tls_config: Option<Arc<ClientConfig>>,
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
pub(crate) async fn open(s: &Settings) -> Result<Opened, OpenFailure> {
    let fail = |result: RcptResult| OpenFailure {
        parks: parks(&result),
        result,
    };
    let config = match (s.tls, &s.tls_config) {
        (TlsMode::None, _) => None,
        (_, Some(config)) => Some(config.clone()),
        (_, None) => return Err(fail(tls_unavailable("no TLS config"))),
    };
    let addrs = resolve(&s.host, s.port, s.connect_timeout).await.map_err(fail)?;
    // RFC 8314 3: implicit TLS starts the handshake before the greeting.
    let implicit = config
        .clone()
        .filter(|_| s.tls == TlsMode::Implicit)
        .map(|config| Implicit {
            config,
            server_name: &s.host,
        });
    let (id, limit) = (&s.client_id, s.command_timeout);
    let mut opened = starttls::connect(&addrs, implicit, id, s.connect_timeout, limit)
        .await
        .map_err(fail)?;
    if let (TlsMode::Starttls, Some(config)) = (s.tls, config) {
        if !opened.info.supports_feature(Extension::StartTls) {
            // RFC 3207 4: a client that requires TLS must not go on in clear text.
            let _ = timeout(limit, opened.conn.quit()).await;
            return Err(fail(tls_unavailable(
                "the smarthost does not offer STARTTLS (RFC 3207)",
            )));
        }
        starttls::upgrade(&mut opened, config, &s.host, id, limit)
            .await
            .map_err(fail)?;
    }
    if let Some(auth) = &s.auth {
        // A rejected AUTH is our configuration's problem, not the route's: it does not park.
        authenticate(&mut opened, auth, limit)
            .await
            .map_err(|result| OpenFailure {
                parks: result.class == ReplyClass::Timeout,
                result,
            })?;
    }
    Ok(opened)
}

/// The addresses of `host`, in the resolver's order.
async fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, RcptResult> {
    match timeout(limit, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(starttls::connection_failed(&format!(
            "cannot resolve {host}: {e}"
        ))),
        Err(_elapsed) => Err(classify::timeout(Phase::Connect)),
    }
}

fn tls_unavailable(why: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Tls,
        diagnostic: why.to_owned(),
        next_hop_dsn: false,
    }
}

/// Challenges answered before giving up, as lettre does (RFC 4954 4 sets no limit).
const MAX_AUTH_CHALLENGES: usize = 10;

/// RFC 4954: AUTH with credentials read now, so that a rotated Secret applies at once. The
/// values are never logged nor put in a diagnostic.
///
/// The mechanism is checked against `opened.info`, not lettre's own copy of the EHLO reply: after
/// our STARTTLS that copy is the one from before TLS, which RFC 3207 4.2 says to discard (and
/// servers often offer AUTH only over TLS).
async fn authenticate(opened: &mut Opened, auth: &config::Auth, limit: Duration) -> Result<(), RcptResult> {
    let username = read_secret(&auth.username_file)?;
    let password = read_secret(&auth.password_file)?;
    let mechanism = match auth.mechanism {
        AuthMechanism::Plain => Mechanism::Plain,
        AuthMechanism::Login => Mechanism::Login,
        AuthMechanism::Xoauth2 => Mechanism::Xoauth2,
    };
    if !opened.info.supports_auth_mechanism(mechanism) {
        return Err(auth_failed(&format!(
            "the smarthost does not offer AUTH {mechanism}"
        )));
    }
    let credentials = Credentials::new(username, password);
    let lettre_err = |e| classify::result(Phase::Auth, &e);
    let mut command = Auth::new(mechanism, credentials.clone(), None).map_err(lettre_err)?;
    for _ in 0..=MAX_AUTH_CHALLENGES {
        let reply = step(limit, Phase::Auth, opened.conn.command(command)).await?;
        // RFC 4954 4: 334 carries a challenge; anything else positive ends the exchange.
        if !reply.has_code(334) {
            return Ok(());
        }
        command = Auth::new_from_response(mechanism, credentials.clone(), &reply).map_err(lettre_err)?;
    }
    Err(auth_failed("too many AUTH challenges"))
}

fn auth_failed(why: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Auth,
        diagnostic: format!("authentication with the smarthost failed: {why}"),
        next_hop_dsn: false,
    }
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
            next_hop_dsn: false,
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
/// `opened.info` is what the last EHLO reply said (after STARTTLS, the second one; RFC 3207
/// 4.2). The DSN parameters go to a next hop that offers DSN (RFC 3461 5.2.1) and to no other.
pub(crate) async fn transaction(
    opened: &mut Opened,
    client_id: &ClientId,
    limit: Duration,
    envelope: &Envelope,
    recipients: &[Recipient],
    message: &[u8],
) -> Transaction {
    let all = |r: RcptResult| vec![r; recipients.len()];
    let asked = !envelope.dsn.is_empty() || recipients.iter().any(|r| !r.dsn.is_empty());
    let dsn = if asked {
        match learn_dsn(opened, client_id, limit).await {
            Ok(dsn) => dsn,
            // A server that refuses the EHLO still takes the message, without the parameters.
            Err(r) if is_reply(&r) => false,
            Err(r) => return broken_unless_reply(all(r.clone()), &r),
        }
    } else {
        false
    };
    let conn = &mut opened.conn;
    let mail = match mail_from(&opened.info, dsn, envelope, recipients, message) {
        Ok(v) => v,
        Err(r) => {
            return Transaction {
                results: all(r),
                reusable: true,
                timed_out: false,
            };
        }
    };
    if let Err(r) = step(limit, Phase::Transaction, conn.command(mail)).await {
        return broken_unless_reply(all(r.clone()), &r);
    }
    let mut results: Vec<Option<RcptResult>> = vec![None; recipients.len()];
    let mut accepted = Vec::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        let command = match rcpt_to(rcpt, dsn) {
            Ok(command) => command,
            Err(e) => {
                results[i] = Some(invalid_address(&e));
                continue;
            }
        };
        match step(limit, Phase::Transaction, conn.command(command)).await {
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
            next_hop_dsn: dsn,
        },
        Err(r) if is_reply(&r) => r,
        Err(r) => return broken_unless_reply(fill(results, &r), &r),
    };
    for i in accepted {
        results[i] = Some(result.clone());
    }
    finish(results, true, false)
}

/// Whether the next hop offers DSN: known from the EHLO after STARTTLS, else asked with one
/// more EHLO (RFC 5321 4.1.4 allows it at any time; it also resets the transaction state).
async fn learn_dsn(opened: &mut Opened, client_id: &ClientId, limit: Duration) -> Result<bool, RcptResult> {
    if let Some(dsn) = opened.dsn {
        return Ok(dsn);
    }
    let ehlo = Ehlo::new(client_id.clone());
    let reply = step(limit, Phase::Transaction, opened.conn.command(ehlo)).await?;
    if let Ok(info) = ServerInfo::from_response(&reply) {
        opened.info = info;
    }
    let dsn = starttls::offers(&reply, "DSN");
    opened.dsn = Some(dsn);
    Ok(dsn)
}

/// MAIL FROM with SMTPUTF8 (RFC 6531 3.4) and BODY=8BITMIME (RFC 6152 3) when the message needs
/// them, and RET and ENVID as the client gave them when the next hop offers DSN (RFC 3461 4.3,
/// 4.4); a message the next hop cannot take unchanged is bounced rather than mangled.
fn mail_from<'a>(
    info: &ServerInfo,
    dsn: bool,
    envelope: &'a Envelope,
    recipients: &[Recipient],
    message: &[u8],
) -> Result<PathCommand<'a>, RcptResult> {
    let bad = |e: InvalidPath| invalid_address(&e);
    let mut mail = PathCommand::mail_from(&envelope.sender).map_err(bad)?;
    let utf8 =
        envelope.smtputf8 || !envelope.sender.is_ascii() || recipients.iter().any(|r| !r.address.is_ascii());
    if utf8 {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(unsupported("SMTPUTF8 (RFC 6531)"));
        }
        mail = mail.param("SMTPUTF8").map_err(bad)?;
    }
    if !message.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(unsupported("8BITMIME (RFC 6152)"));
        }
        mail = mail.param("BODY=8BITMIME").map_err(bad)?;
    }
    if dsn {
        if let Some(ret) = envelope.dsn.ret {
            mail = mail.param(format!("RET={}", ret.as_str())).map_err(bad)?;
        }
        if let Some(envid) = &envelope.dsn.envid {
            mail = mail.param(format!("ENVID={envid}")).map_err(bad)?;
        }
    }
    Ok(mail)
}

/// RCPT TO with NOTIFY and ORCPT as the client gave them when the next hop offers DSN
/// (RFC 3461 4.1, 4.2).
fn rcpt_to(rcpt: &Recipient, dsn: bool) -> Result<PathCommand<'_>, InvalidPath> {
    let mut command = PathCommand::rcpt_to(&rcpt.address)?;
    if dsn {
        if let Some(notify) = rcpt.dsn.notify {
            command = command.param(format!("NOTIFY={}", notify.to_param()))?;
        }
        if let Some(orcpt) = &rcpt.dsn.orcpt {
            command = command.param(format!("ORCPT={orcpt}"))?;
        }
    }
    Ok(command)
}

fn unsupported(what: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Bounced,
        class: ReplyClass::Protocol,
        diagnostic: format!("the next hop does not support {what}, which this message needs"),
        next_hop_dsn: false,
    }
}

/// Only for data that did not come through the inbound session (a spool written by an older
/// version): what the session accepts always passes.
fn invalid_address(e: &InvalidPath) -> RcptResult {
    RcptResult {
        outcome: Outcome::Bounced,
        class: ReplyClass::Protocol,
        diagnostic: e.to_string(),
        next_hop_dsn: false,
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
        next_hop_dsn: false,
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
