//! The MAIL and RCPT command lines (RFC 5321 4.1.1.2, 4.1.1.3, 4.1.2): the path, kept exactly as
//! the client wrote it (quoted local parts and address literals included, so that it is relayed
//! byte for byte), and the parameters EHLO offers: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8
//! (RFC 6531) and the DSN parameters (RFC 3461). Pure: the session applies the policy.

use super::reply::{self, Reply};
use crate::{
    address::{self, AddressError, Mailbox},
    message::{
        self, MAX_ENVID, Notify, RcptDsn, Ret,
        handoff::{Handoff, Owner},
    },
};

/// RFC 1870 4: SIZE is at most 20 digits.
const MAX_SIZE_DIGITS: usize = 20;

/// A parsed `MAIL FROM:<reverse-path> [parameters]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mail<'a> {
    /// The mailbox as written, or "" for the null reverse-path `<>`.
    pub sender: &'a str,
    /// RFC 1870 SIZE, when declared.
    pub size: Option<u64>,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 4.3 RET.
    pub ret: Option<Ret>,
    /// RFC 3461 4.4 ENVID, xtext as received.
    pub envid: Option<&'a str>,
    /// Our XHANDOFF parameter (a sidecar handing a message to its hub); the session takes it
    /// only from an authenticated client.
    pub handoff: Option<Handoff>,
    /// Our XSHADOW parameter: the hand-off is a shadow copy held for its owner pod.
    pub shadow: Option<Owner>,
}

/// The forward-path of a RCPT command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forward<'a> {
    /// A mailbox, as written.
    Mailbox(Mailbox<'a>),
    /// `<Postmaster>` without a domain (RFC 5321 4.1.1.3, 4.5.1).
    Postmaster,
}

/// A parsed `RCPT TO:<forward-path> [parameters]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rcpt<'a> {
    /// The recipient.
    pub to: Forward<'a>,
    /// RFC 3461 4.1 NOTIFY and 4.2 ORCPT (xtext as received).
    pub dsn: RcptDsn,
}

/// Parses a MAIL command line (its CRLF included or not).
pub(super) fn mail(line: &str) -> Result<Mail<'_>, Reply> {
    let (path, params) = command(line, "MAIL", "FROM:").ok_or(MAIL_SYNTAX)?;
    let sender = match path {
        // RFC 5321 4.5.5: the null reverse-path.
        "" => "",
        path => mailbox(path).map_err(bad_sender)?.text,
    };
    let mut mail = Mail {
        sender,
        size: None,
        smtputf8: false,
        ret: None,
        envid: None,
        handoff: None,
        shadow: None,
    };
    let mut seen = Seen::default();
    for (keyword, value) in parameters(params)? {
        seen.once(keyword)?;
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => mail.size = Some(size(v)?),
            // RFC 6152 2: BODY=8BITMIME (and 7BIT). BINARYMIME (RFC 3030 3) is not offered:
            // binary content could not be relayed to a next hop without CHUNKING.
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return Err(reply::UNSUPPORTED_PARAMETER);
            }
            ("BODY", _) => return Err(bad_parameter("BODY", "7BIT or 8BITMIME (RFC 6152)")),
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("SMTPUTF8", Some(_)) => return Err(bad_parameter("SMTPUTF8", "no value (RFC 6531 3.4)")),
            ("SIZE", None) => return Err(bad_parameter("SIZE", "a number of octets (RFC 1870)")),
            ("RET", v) => {
                mail.ret = Some(
                    v.and_then(Ret::parse)
                        .ok_or_else(|| bad_parameter("RET", "FULL or HDRS (RFC 3461 4.3)"))?,
                )
            }
            ("ENVID", Some(v)) if v.len() <= MAX_ENVID && message::is_xtext(v) => mail.envid = Some(v),
            ("ENVID", _) => {
                return Err(bad_parameter(
                    "ENVID",
                    "1 to 100 characters of xtext (RFC 3461 4.4)",
                ));
            }
            ("XHANDOFF", Some(v)) => {
                mail.handoff = Some(
                    Handoff::parse(v)
                        .ok_or_else(|| bad_parameter("XHANDOFF", "<key>,<arrived> (docs/hub.md)"))?,
                );
            }
            ("XSHADOW", Some(v)) => {
                mail.shadow = Some(
                    Owner::parse(v)
                        .ok_or_else(|| bad_parameter("XSHADOW", "<pod uid>,<pod name> (docs/hub.md)"))?,
                );
            }
            // RFC 5321 4.1.1.11: a parameter EHLO did not offer.
            _ => return Err(reply::UNSUPPORTED_PARAMETER),
        }
    }
    Ok(mail)
}

/// Parses a RCPT command line (its CRLF included or not).
pub(super) fn rcpt(line: &str) -> Result<Rcpt<'_>, Reply> {
    let (path, params) = command(line, "RCPT", "TO:").ok_or(RCPT_SYNTAX)?;
    let to = if address::is_bare_postmaster(path) {
        Forward::Postmaster
    } else if path.is_empty() {
        // The forward-path is never null (RFC 5321 4.1.1.3).
        return Err(reply::BAD_RECIPIENT_SYNTAX);
    } else {
        Forward::Mailbox(mailbox(path).map_err(bad_recipient)?)
    };
    let mut dsn = RcptDsn::default();
    let mut seen = Seen::default();
    for (keyword, value) in parameters(params)? {
        seen.once(keyword)?;
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", v) => {
                let want = "NEVER, or SUCCESS, FAILURE and DELAY separated by commas (RFC 3461 4.1)";
                dsn.notify = Some(
                    v.and_then(Notify::parse)
                        .ok_or_else(|| bad_parameter("NOTIFY", want))?,
                );
            }
            ("ORCPT", Some(v)) if message::is_orcpt(v) => dsn.orcpt = Some(v.to_owned()),
            ("ORCPT", _) => {
                let want = "addr-type;xtext of at most 500 characters (RFC 3461 4.2)";
                return Err(bad_parameter("ORCPT", want));
            }
            // RFC 5321 4.1.1.11: a parameter EHLO did not offer.
            _ => return Err(reply::UNSUPPORTED_PARAMETER),
        }
    }
    Ok(Rcpt { to, dsn })
}

const MAIL_SYNTAX: Reply = Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]");
const RCPT_SYNTAX: Reply = Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]");

/// Splits `<verb> <prefix><path> [parameters]` into the text inside the angle brackets and the
/// parameter text after them. Spaces after the colon are tolerated, as most servers do.
fn command<'a>(line: &'a str, verb: &str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let rest = strip_prefix_ci(line, verb)?;
    let rest = rest.strip_prefix(' ')?.trim_start_matches(' ');
    let rest = strip_prefix_ci(rest, prefix)?.trim_start_matches(' ');
    let (path, after) = angle_path(rest)?;
    if !after.is_empty() && !after.starts_with(' ') {
        return None;
    }
    Some((path, after))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// `"<" ... ">"`, where a `>` inside a quoted string does not end the path.
fn angle_path(s: &str) -> Option<(&str, &str)> {
    let body = s.strip_prefix('<')?;
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some((&body[..i], &body[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A path's mailbox: RFC 5321 4.1.2 allows a source route (`@a,@b:user@c`), which servers
/// "MUST accept" and "SHOULD ignore" (RFC 5321 4.1.1.3, appendix C); it is checked and dropped.
fn mailbox(path: &str) -> Result<Mailbox<'_>, AddressError> {
    let path = match path.strip_prefix('@') {
        Some(routed) => {
            let (route, mailbox) = routed.split_once(':').ok_or(AddressError::Domain)?;
            if !route.split(",@").all(address::is_domain) {
                return Err(AddressError::Domain);
            }
            mailbox
        }
        None => path,
    };
    Mailbox::parse(path)
}

/// `esmtp-param *(SP esmtp-param)` (RFC 5321 4.1.2): keyword and optional value. Extra spaces
/// between parameters are tolerated.
fn parameters(text: &str) -> Result<Vec<(&str, Option<&str>)>, Reply> {
    let mut out = Vec::new();
    for param in text.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let keyword_ok = keyword.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii under SMTPUTF8 (RFC 6531 3.3)
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| (c.is_ascii_graphic() && c != '=') || !c.is_ascii())
        });
        if !keyword_ok {
            return Err(reply::SYNTAX_ERROR);
        }
        if !value_ok {
            return Err(Reply::dynamic(
                501,
                "5.5.4",
                format!("Bad {keyword} parameter: not an esmtp-value (RFC 5321 4.1.2)"),
            ));
        }
        out.push((keyword, value));
    }
    Ok(out)
}

/// Refuses a parameter given twice: which one would count is not defined.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn once(&mut self, keyword: &str) -> Result<(), Reply> {
        let keyword = keyword.to_ascii_uppercase();
        if self.0.contains(&keyword) {
            return Err(Reply::dynamic(
                501,
                "5.5.4",
                format!("Duplicate {keyword} parameter"),
            ));
        }
        self.0.push(keyword);
        Ok(())
    }
}

fn size(value: &str) -> Result<u64, Reply> {
    if value.len() <= MAX_SIZE_DIGITS && value.bytes().all(|b| b.is_ascii_digit()) {
        // 20 digits may still overflow: such a SIZE is over any limit anyway.
        Ok(value.parse().unwrap_or(u64::MAX))
    } else {
        Err(bad_parameter("SIZE", "a number of octets (RFC 1870)"))
    }
}

fn bad_parameter(keyword: &str, want: &str) -> Reply {
    Reply::dynamic(501, "5.5.4", format!("Bad {keyword} parameter: expected {want}"))
}

fn bad_sender(e: AddressError) -> Reply {
    Reply::dynamic(501, "5.1.7", format!("Bad sender address syntax: {e}"))
}

fn bad_recipient(e: AddressError) -> Reply {
    Reply::dynamic(501, "5.1.3", format!("Bad recipient address syntax: {e}"))
}

#[cfg(test)]
mod tests;
