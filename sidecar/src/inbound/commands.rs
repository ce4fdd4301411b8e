//! The commands of a mail transaction (RFC 5321 4.1.1): EHLO/HELO, MAIL, RCPT and DATA, with the
//! sender policy ([`super::policy`]) and the limits that apply to them. Replies are queued on the session.

use super::{
    auth::{AUTH_REQUIRED, HANDOFF_ONLY},
    path::{self, Forward},
    policy,
    reply::{self, Reply},
    session::{Flow, Helo, Session, Transaction, sink_reject_reason, sink_reply},
};
use crate::{
    config::Delivery,
    message::{DsnRequest, MessageSink, RcptDsn},
    metrics::RejectReason,
};
use smtp_proto::Error as ParseError;
use tokio::io::{AsyncRead, AsyncWrite};

// === impl Session (transaction commands) ===

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    pub(super) fn hello(&mut self, host: &str, extended: bool) -> Flow {
        // The name goes into our Received field: printable, no comment delimiters.
        if !host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'(' && b != b')')
        {
            return self.bad(reply::BAD_HELO);
        }
        // RFC 5321 4.1.4: EHLO/HELO clears any transaction in progress.
        self.tx = None;
        self.chunks = None;
        self.helo = Some(Helo {
            name: host.to_owned(),
            extended,
        });
        let me = &self.config.hostname;
        let text = if extended {
            // A hub's listener (TLS from the first byte) asks for the Relay's credential and
            // takes hand-offs from whoever presented it (docs/hub.md).
            let hub = match (&self.config.listen.auth, &self.config.shadows) {
                (Some(_), Some(_)) => "250-AUTH PLAIN\r\n250-XHANDOFF\r\n250-XSHADOW\r\n",
                (Some(_), None) => "250-AUTH PLAIN\r\n250-XHANDOFF\r\n",
                (None, _) => "",
            };
            // RFC 5321 4.1.1.1 ehlo-ok-rsp: domain first, then one keyword per line.
            format!(
                "250-{me} Hello {host}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n\
                 250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n{hub}250 ENHANCEDSTATUSCODES\r\n",
                self.config.limits.max_message_bytes
            )
        } else {
            format!("250 {me} Hello {host}\r\n")
        };
        self.output.extend_from_slice(text.as_bytes());
        Flow::Continue
    }

    pub(super) fn mail(&mut self, line: &[u8]) -> Flow {
        if self.helo.is_none() {
            return self.bad(reply::NEED_HELO);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.data_refused) {
            self.tx = None;
        }
        if self.tx.is_some() || self.chunks.is_some() {
            return self.bad(reply::NESTED_MAIL);
        }
        // RFC 4954 6: a listener that requires AUTH refuses MAIL until the client passed it.
        if self.config.listen.auth.is_some() && !self.authenticated {
            return self.bad(AUTH_REQUIRED);
        }
        let from = match utf8(line, reply::BAD_SENDER_SYNTAX).and_then(path::mail) {
            Ok(from) => from,
            Err(reply) => return self.bad(reply),
        };
        // Only an authenticated client of a hub may hand a message off, and a hub takes
        // nothing else: it relays for its sidecars' hand-offs only (docs/hub.md).
        if from.handoff.is_some() && !self.authenticated {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        if self.authenticated && from.handoff.is_none() {
            return self.bad(HANDOFF_ONLY);
        }
        // A shadow copy is a kind of hand-off, offered only by a hub that holds shadows.
        if from.shadow.is_some() && (from.handoff.is_none() || self.config.shadows.is_none()) {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        let max = self.config.limits.max_message_bytes;
        // RFC 1870 6.1: a declared SIZE over the limit is refused at MAIL.
        if from.size.is_some_and(|size| size > max) {
            self.metrics.rejected(RejectReason::Size);
            return self.reply(reply::too_big(max));
        }
        if let Err((reply, reason)) = policy::envelope_sender(from.sender, from.smtputf8, &self.config) {
            if let Some(reason) = reason {
                self.metrics.rejected(reason);
            }
            return self.reply(reply);
        }
        self.tx = Some(Transaction {
            sender: from.sender.to_owned(),
            recipients: Vec::new(),
            smtputf8: from.smtputf8,
            dsn: DsnRequest {
                ret: from.ret,
                envid: from.envid.map(str::to_owned),
                rcpts: Vec::new(),
            },
            handoff: from.handoff,
            shadow: from.shadow,
            data_refused: false,
        });
        self.reply(reply::SENDER_OK)
    }

    pub(super) fn rcpt(&mut self, line: &[u8]) -> Flow {
        if self.chunks.is_some() {
            return self.bad(reply::AFTER_BDAT);
        }
        let Some(smtputf8) = self.tx.as_ref().map(|tx| tx.smtputf8) else {
            return self.bad(reply::NEED_MAIL);
        };
        let to = match utf8(line, reply::BAD_RECIPIENT_SYNTAX).and_then(path::rcpt) {
            Ok(to) => to,
            Err(reply) => return self.bad(reply),
        };
        let mut dsn = to.dsn;
        let recipient = match to.to {
            Forward::Mailbox(m) if !smtputf8 && !m.text.is_ascii() => {
                return self.reply(reply::NEED_SMTPUTF8);
            }
            // Direct delivery would connect wherever a literal points, the pod's own loopback
            // included (a mail loop), so only a named domain is routed (docs/security.md).
            Forward::Mailbox(m)
                if m.literal.is_some() && matches!(self.config.delivery, Delivery::Direct(_)) =>
            {
                return self.reply(reply::LITERAL_NOT_ROUTED);
            }
            Forward::Mailbox(m) => m.text.to_owned(),
            // RFC 5321 4.5.1: the postmaster of this relay, delivered to the configured address
            // (an ASCII mailbox, checked by the config) like any other recipient: the same
            // sender policy, recipient limit and rate apply. RFC 3461 4.2 lets a relay that
            // changes the address add the ORCPT it received, so reports still say <postmaster>.
            Forward::Postmaster => {
                dsn.orcpt.get_or_insert_with(|| "rfc822;postmaster".into());
                self.config.postmaster()
            }
        };
        let max = self.config.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return self.bad(reply::NEED_MAIL);
        };
        if tx.recipients.len() >= max {
            // RFC 5321 4.5.3.1.10: 452 and the client sends the rest in another transaction.
            return self.reply(reply::TOO_MANY_RECIPIENTS);
        }
        if !dsn.is_empty() {
            tx.dsn.rcpts.resize(tx.recipients.len(), RcptDsn::default());
            tx.dsn.rcpts.push(dsn);
        }
        tx.recipients.push(recipient);
        self.reply(reply::RECIPIENT_OK)
    }

    pub(super) async fn data(&mut self) -> Flow {
        // RFC 3030 2: DATA and BDAT may not be mixed in one transaction.
        if self.chunks.is_some() {
            return self.bad(reply::AFTER_BDAT);
        }
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
                // RFC 5321 leaves the state after a refused DATA open. The transaction stays, so
                // DATA may be tried again; but common clients (Python's smtplib.sendmail, and
                // the frameworks on it) send the next MAIL without RSET, and it starts over
                // rather than getting `503` (RFC 5321 4.1.1.2: MAIL clears the buffers).
                if let Some(tx) = self.tx.as_mut() {
                    tx.data_refused = true;
                }
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

/// The command line as text, or `bad`: RFC 6531 3.3 addresses are UTF-8, and anything else is
/// not an address.
fn utf8(line: &[u8], bad: Reply) -> Result<&str, Reply> {
    std::str::from_utf8(line).map_err(|_| bad)
}

pub(super) fn parse_error(e: &ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ParseError::InvalidSenderAddress => reply::BAD_SENDER_SYNTAX,
        ParseError::InvalidRecipientAddress => reply::BAD_RECIPIENT_SYNTAX,
        ParseError::UnsupportedParameter { .. } => reply::UNSUPPORTED_PARAMETER,
        ParseError::SyntaxError { .. } | ParseError::InvalidParameter { .. } => reply::SYNTAX_ERROR,
        _ => reply::UNKNOWN_COMMAND,
    }
}
