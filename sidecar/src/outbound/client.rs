//! One connection with lettre's connection-level API over our own socket: connect, TLS, AUTH
//! (smarthost), and one mail transaction with a result per recipient (shared by the smarthost and
//! direct routes). Every step runs under a timeout.

use super::{
    Outcome, RcptResult, ReplyClass,
    classify::{self, Phase},
    command::{InvalidPath, PathCommand},
    starttls::{self, Implicit, Offers, Opened},
    stuffing,
};
use crate::{
    config::{self, AuthMechanism, TlsMode},
    message::{Envelope, Recipient, handoff::Handoff},
};
use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism},
    client::AsyncSmtpConnection,
    commands::{Auth, Rset},
    extension::{ClientId, Extension, ServerInfo},
    response::Response,
};
use rustls::ClientConfig;
use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};
use tokio::{io::AsyncWriteExt, time::timeout};

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
    /// The next hop is our hub: it must offer XHANDOFF, and each message goes with its key.
    pub handoff: bool,
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
    /// Still in a known state (no transaction open); may be pooled.
    pub reusable: bool,
    /// A reply did not come in time: counts toward parking.
    pub timed_out: bool,
    /// A pooled connection the server had closed: nothing was sent, so the message may be sent
    /// again at once on a new connection.
    pub stale: bool,
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
    if s.handoff && !opened.offers.handoff {
        let _ = timeout(limit, opened.conn.quit()).await;
        return Err(OpenFailure {
            parks: false,
            result: RcptResult {
                outcome: Outcome::Deferred,
                class: ReplyClass::Protocol,
                diagnostic: format!("{} does not offer XHANDOFF: it is not a mailroom hub", s.host),
                next_hop_dsn: false,
                remote: None,
            },
        });
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
        remote: None,
    }
}

/// Challenges answered before giving up, as lettre does (RFC 4954 4 sets no limit).
const MAX_AUTH_CHALLENGES: usize = 10;

/// Messages up to this size go in the same write as their MAIL and RCPT commands when the next
/// hop offers CHUNKING and PIPELINING; larger ones wait for the RCPT replies.
const EAGER_CHUNK: usize = 64 * 1024;

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
        remote: None,
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
            remote: None,
        }),
    }
}

/// RFC 5321 4.1.1.5: RSET ends a transaction that was started (MAIL accepted) but not
/// completed; it also tells whether the connection still answers.
async fn reset(conn: &mut AsyncSmtpConnection, limit: Duration) -> bool {
    !conn.has_broken() && matches!(timeout(limit, conn.command(Rset)).await, Ok(Ok(_)))
}

/// Sends one message to `recipients`, each RCPT on its own so that one rejection does not fail
/// the others (RFC 5321 3.3).
///
/// When the next hop offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA leave in one write
/// and the message with its terminator in another: two round trips per message instead of
/// 3 + recipients. To our hub, which offers CHUNKING (RFC 3030), the message goes as one
/// `BDAT <size> LAST` in the same write as MAIL and RCPT, not dot-stuffed: one round trip. No
/// RSET follows a completed transaction: the reply to the end of data ends it (RFC 5321
/// 4.1.1.4); one that was started and not completed is reset here.
///
/// `opened.info` is what the last EHLO reply said (after STARTTLS, the second one; RFC 3207
/// 4.2). The DSN parameters go to a next hop that offers DSN (RFC 3461 5.2.1) and to no other.
pub(crate) async fn transaction(
    opened: &mut Opened,
    limit: Duration,
    envelope: &Envelope,
    recipients: &[Recipient],
    message: &[u8],
) -> Transaction {
    let all = |r: RcptResult| vec![r; recipients.len()];
    let dsn = opened.offers.dsn;
    let mail = match mail_from(&opened.info, opened.offers, envelope, recipients, message) {
        Ok(v) => v.to_string(),
        Err(r) => return finish(all(r), true),
    };
    let mut results: Vec<Option<RcptResult>> = vec![None; recipients.len()];
    // The commands, with the recipient each RCPT is for.
    let mut rcpts = Vec::with_capacity(recipients.len());
    for (i, rcpt) in recipients.iter().enumerate() {
        match rcpt_to(rcpt, dsn) {
            Ok(command) => rcpts.push((i, command.to_string())),
            Err(e) => results[i] = Some(invalid_address(&e)),
        }
    }
    if rcpts.is_empty() {
        return finish(fill(results, &unknown()), true);
    }
    let mut wire = Wire {
        opened,
        limit,
        replies: 0,
    };
    let pipelining = wire.opened.offers.pipelining;
    // RFC 3030 2: the whole message as one last chunk, right behind its command. Only to our
    // hub: a server must read a chunk it refuses (RFC 3030 2), but not every one does (go-smtp
    // answers 502 when no RCPT was accepted and reads the chunk as commands), and a pipelined
    // chunk would then turn message text into commands on our connection. To other servers,
    // DATA with PIPELINING costs the same two round trips as BDAT sent after the RCPT replies.
    let offers = wire.opened.offers;
    let chunk = (offers.chunking && offers.handoff).then(|| {
        let mut chunk = format!("BDAT {} LAST\r\n", message.len()).into_bytes();
        chunk.extend_from_slice(message);
        chunk
    });
    // RFC 2920 3.1: DATA ends a group. BDAT may be pipelined too (RFC 3030 4.2), chunk and
    // all, but a large one waits for the RCPT replies so as not to be sent for nothing.
    let group_end: Option<&[u8]> = match &chunk {
        None => Some(b"DATA\r\n"),
        Some(c) if c.len() <= EAGER_CHUNK => Some(c),
        Some(_) => None,
    };
    let ended_group = pipelining && group_end.is_some();
    if pipelining {
        // Every command gets its reply, in order.
        let mut group = mail.clone().into_bytes();
        for (_, command) in &rcpts {
            group.extend_from_slice(command.as_bytes());
        }
        group.extend_from_slice(group_end.unwrap_or_default());
        if let Err(r) = wire.write(&group).await {
            return wire.broken(fill(results, &r), &r);
        }
    }
    if let Err(r) = wire.command(pipelining, &mail).await {
        if !is_reply(&r) {
            return wire.broken(fill(results, &r), &r);
        }
        // The RCPTs and DATA (or BDAT) of the group are refused too (503); their replies are
        // read so that the connection stays in step.
        let tail = if pipelining {
            rcpts.len() + usize::from(ended_group)
        } else {
            0
        };
        return match wire.skip(tail).await {
            Ok(()) => finish(fill(results, &r), true),
            Err(e) => wire.broken(fill(results, &r), &e),
        };
    }
    let mut accepted = Vec::new();
    for (i, command) in &rcpts {
        match wire.command(pipelining, command).await {
            Ok(()) => accepted.push(*i),
            Err(r) if is_reply(&r) => results[*i] = Some(r),
            Err(r) => return wire.broken(fill(results, &r), &r),
        }
    }
    if accepted.is_empty() && !ended_group {
        return wire.abort(results).await;
    }
    if let Some(chunk) = &chunk {
        if !ended_group && let Err(r) = wire.write(chunk).await {
            return wire.broken(fill(results, &r), &r);
        }
        let ended = wire.reply().await;
        if accepted.is_empty() {
            // The server read the chunk and refused it for want of recipients.
            return match ended {
                Err(r) if !is_reply(&r) => wire.broken(fill(results, &r), &r),
                _ => finish(fill(results, &unknown()), true),
            };
        }
        return match ended {
            Err(r) if !is_reply(&r) => wire.broken(fill(results, &r), &r),
            ended => finish(end_of_data(results, &accepted, ended, dsn), true),
        };
    }
    let data = wire.command(pipelining, "DATA\r\n").await;
    let result = match (data, accepted.is_empty()) {
        (Ok(()), false) => match wire.write(&stuffing::encode(message)).await {
            Ok(()) => wire.reply().await,
            Err(r) => Err(r),
        },
        // RFC 2920 3.1: the server took DATA although no RCPT was accepted; an empty message
        // ends it, and the server refuses it for want of recipients.
        (Ok(()), true) => {
            let ended = match wire.write(b".\r\n").await {
                Ok(()) => wire.reply_any().await,
                Err(r) => Err(r),
            };
            return match ended {
                Ok(()) => finish(fill(results, &unknown()), true),
                Err(r) => wire.broken(fill(results, &r), &r),
            };
        }
        // DATA refused (with no recipient accepted, for want of one): the transaction is
        // still open.
        (Err(r), _) if is_reply(&r) => {
            for &i in &accepted {
                results[i] = Some(r.clone());
            }
            return wire.abort(results).await;
        }
        (Err(r), _) => return wire.broken(fill(results, &r), &r),
    };
    match result {
        Err(r) if !is_reply(&r) => wire.broken(fill(results, &r), &r),
        result => finish(end_of_data(results, &accepted, result, dsn), true),
    }
}

/// RFC 5321 4.1.1.4: the reply to the end of data (or to `BDAT … LAST`, RFC 3030 2) applies
/// to every accepted recipient.
fn end_of_data(
    mut results: Vec<Option<RcptResult>>,
    accepted: &[usize],
    reply: Result<Response, RcptResult>,
    dsn: bool,
) -> Vec<RcptResult> {
    let result = match reply {
        Ok(reply) => RcptResult {
            outcome: Outcome::Delivered,
            class: ReplyClass::Ok,
            diagnostic: format!(
                "{} {}",
                reply.code(),
                reply.message().collect::<Vec<_>>().join(" ")
            ),
            next_hop_dsn: dsn,
            remote: None,
        },
        Err(r) => r,
    };
    for &i in accepted {
        results[i] = Some(result.clone());
    }
    fill(results, &unknown())
}

/// Sends one command line (CRLF included) of our own extensions and reads its reply; `Err`
/// for anything but a `2xx`, or a broken connection.
pub(crate) async fn command(
    opened: &mut Opened,
    limit: Duration,
    line: &str,
) -> Result<Response, RcptResult> {
    let mut wire = Wire {
        opened,
        limit,
        replies: 0,
    };
    wire.write(line.as_bytes()).await?;
    wire.reply().await
}

/// One transaction's traffic on a connection: writes go straight to the socket, replies are
/// read (and parsed) by lettre, each under the command timeout.
struct Wire<'a> {
    opened: &'a mut Opened,
    limit: Duration,
    /// Replies read so far: none means the server never saw a transaction from us.
    replies: usize,
}

impl Wire<'_> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), RcptResult> {
        let mut sock = self.opened.handoff.clone();
        match timeout(self.limit, async {
            sock.write_all(bytes).await?;
            sock.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(starttls::connection_failed(&e.to_string())),
            Err(_elapsed) => Err(classify::timeout(Phase::Transaction)),
        }
    }

    /// The next reply, positive or not.
    async fn reply(&mut self) -> Result<Response, RcptResult> {
        let reply = step(self.limit, Phase::Transaction, self.opened.conn.read_response()).await;
        if reply.is_ok() || reply.as_ref().is_err_and(is_reply) {
            self.replies += 1;
        }
        reply
    }

    /// The next reply, whatever it says; only a broken connection is an error.
    async fn reply_any(&mut self) -> Result<(), RcptResult> {
        match self.reply().await {
            Err(r) if !is_reply(&r) => Err(r),
            _ => Ok(()),
        }
    }

    /// `command`'s reply; without pipelining it is sent first.
    async fn command(&mut self, pipelined: bool, command: &str) -> Result<(), RcptResult> {
        if !pipelined {
            self.write(command.as_bytes()).await?;
        }
        self.reply().await.map(drop)
    }

    /// Reads and drops `n` replies.
    async fn skip(&mut self, n: usize) -> Result<(), RcptResult> {
        for _ in 0..n {
            self.reply_any().await?;
        }
        Ok(())
    }

    /// Ends a started transaction with RSET; the connection is reused only if that works.
    async fn abort(self, results: Vec<Option<RcptResult>>) -> Transaction {
        let reusable = reset(&mut self.opened.conn, self.limit).await;
        finish(fill(results, &unknown()), reusable)
    }

    /// The connection broke (or timed out) with `r`: not reusable. When it was taken from the
    /// pool and the server answered nothing, the server closed it while it was idle, and the
    /// message may go out at once on a new one.
    fn broken(&self, results: Vec<RcptResult>, r: &RcptResult) -> Transaction {
        Transaction {
            results,
            reusable: false,
            timed_out: r.class == ReplyClass::Timeout,
            stale: self.opened.reused && self.replies == 0,
        }
    }
}

/// MAIL FROM with SMTPUTF8 (RFC 6531 3.4) and BODY=8BITMIME (RFC 6152 3) when the message needs
/// them, and RET and ENVID as the client gave them when the next hop offers DSN (RFC 3461 4.3,
/// 4.4); a message the next hop cannot take unchanged is bounced rather than mangled.
fn mail_from<'a>(
    info: &ServerInfo,
    offers: Offers,
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
    if offers.dsn {
        if let Some(ret) = envelope.dsn.ret {
            mail = mail.param(format!("RET={}", ret.as_str())).map_err(bad)?;
        }
        if let Some(envid) = &envelope.dsn.envid {
            mail = mail.param(format!("ENVID={envid}")).map_err(bad)?;
        }
    }
    // Only our hub offers XHANDOFF; any other next hop gets the message as ordinary mail.
    if let (true, Some(key)) = (offers.handoff, &envelope.origin) {
        let handoff = Handoff {
            key: key.clone(),
            arrived: envelope.received_at,
        };
        mail = mail.param(handoff.to_string()).map_err(bad)?;
        if let (true, Some(owner)) = (offers.shadow, &envelope.shadow) {
            mail = mail.param(owner.to_string()).map_err(bad)?;
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
        remote: None,
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
        remote: None,
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

fn unknown() -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Protocol,
        diagnostic: "no result for this recipient".into(),
        next_hop_dsn: false,
        remote: None,
    }
}

fn finish(results: Vec<RcptResult>, reusable: bool) -> Transaction {
    Transaction {
        results,
        reusable,
        timed_out: false,
        stale: false,
    }
}
