//! The commands of a mail transaction (RFC 5321 4.1.1): EHLO/HELO, MAIL, RCPT and DATA, with the
//! sender policy ([`super::policy`]) and the limits that apply to them. Replies are queued on the session.

use super::{
    policy,
    reply::{self, Reply},
    session::{Flow, Helo, Session, Transaction, sink_reject_reason, sink_reply},
};
use crate::{message::MessageSink, metrics::RejectReason};
use smtp_proto::{Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo};
use std::borrow::Cow;
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

    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Flow {
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
        if let Err((reply, reason)) = policy::envelope_sender(sender, smtputf8, &self.config) {
            if let Some(reason) = reason {
                self.metrics.rejected(reason);
            }
            return self.reply(reply);
        }
        self.tx = Some(Transaction {
            sender: sender.to_owned(),
            recipients: Vec::new(),
            smtputf8,
        });
        self.reply(reply::SENDER_OK)
    }

    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Flow {
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

    pub(super) async fn data(&mut self) -> Flow {
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

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::Request;

    struct Case {
        line: &'static str,
        /// `Ok(true)`: a MAIL whose parameters we offer; `Ok(false)`: one we must refuse with 555;
        /// `Err(code)`: the parse error reply.
        want: Result<bool, &'static str>,
    }

    #[test]
    fn mail_parameters_and_parse_errors_map_to_replies() {
        let cases = [
            Case {
                line: "MAIL FROM:<a@example.com>\r\n",
                want: Ok(true),
            },
            Case {
                line: "MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
                want: Ok(true),
            },
            Case {
                line: "MAIL FROM:<a@example.com> BODY=7BIT\r\n",
                want: Ok(true),
            },
            Case {
                line: "MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n",
                want: Ok(false),
            },
            Case {
                line: "MAIL FROM:<a@example.com> RET=HDRS\r\n",
                want: Ok(false),
            },
            Case {
                line: "MAIL FROM:<a@example.com> ENVID=x\r\n",
                want: Ok(false),
            },
            Case {
                line: "MAIL FROM:<a@example.com> AUTH=<>\r\n",
                want: Ok(false),
            },
            Case {
                line: "MAIL FROM:<a@example.com> BODY=9BIT\r\n",
                want: Err("501 5.5.4"),
            },
            Case {
                line: "MAIL FROM:<not an address>\r\n",
                want: Err("501 5.1.7"),
            },
            Case {
                line: "MAIL FROM:a@example.com\r\n",
                want: Err("501 5.5.4"),
            },
            Case {
                line: "RCPT TO:<@>\r\n",
                want: Err("501 5.1.3"),
            },
            Case {
                line: "FROB\r\n",
                want: Err("500 5.5.2"),
            },
        ];
        for case in cases {
            let got = match Request::parse(&mut case.line.as_bytes().iter()) {
                Ok(Request::Mail { from }) => Ok(mail_parameters_offered(&from)),
                Ok(other) => panic!("{:?} parsed as {}", case.line, other.name()),
                Err(e) => {
                    let r = parse_error(&e);
                    Err(format!("{} {}", r.code, r.status))
                }
            };
            assert_eq!(got, case.want.map_err(String::from), "{:?}", case.line);
        }
    }
}
