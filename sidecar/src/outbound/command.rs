//! Our own `MAIL FROM` and `RCPT TO` commands for lettre's connection API, which sends any
//! `Display`. lettre's `Mail` and `Rcpt` take its `Address`, which refuses quoted local parts
//! and address literals; ours carry the path as the inbound session accepted it (RFC 5321 4.1.2),
//! so that every address accepted at the door reaches the next hop byte for byte.

use crate::address::Mailbox;
use std::fmt::{self, Display, Formatter};

/// `MAIL FROM:<reverse-path> [SP parameters] CRLF` (RFC 5321 4.1.1.2) or
/// `RCPT TO:<forward-path> [SP parameters] CRLF` (4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathCommand<'a> {
    verb: &'static str,
    path: &'a str,
    params: Vec<String>,
}

/// A stored path or parameter that must not go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {0:?} is not valid for SMTP (RFC 5321 4.1.2)")]
pub(crate) struct InvalidPath(pub String);

// === impl PathCommand ===

impl<'a> PathCommand<'a> {
    /// `MAIL FROM` for the reverse-path `sender` ("" for the null path `<>`, RFC 5321 4.5.5),
    /// checked again with the inbound's own parser: what the spool gives back is data, and a CR
    /// or LF in it would be a second command.
    pub(crate) fn mail_from(sender: &'a str) -> Result<Self, InvalidPath> {
        if !sender.is_empty() {
            mailbox(sender)?;
        }
        Ok(Self::new("MAIL FROM", sender))
    }

    /// `RCPT TO` for the forward-path `recipient`, checked as for [`PathCommand::mail_from`].
    pub(crate) fn rcpt_to(recipient: &'a str) -> Result<Self, InvalidPath> {
        mailbox(recipient)?;
        Ok(Self::new("RCPT TO", recipient))
    }

    fn new(verb: &'static str, path: &'a str) -> Self {
        Self {
            verb,
            path,
            params: Vec::new(),
        }
    }

    /// Appends an ESMTP parameter (`SMTPUTF8`, `BODY=8BITMIME`, `NOTIFY=...`, ...).
    pub(crate) fn param(mut self, param: impl Into<String>) -> Result<Self, InvalidPath> {
        self.params.push(checked_param(param.into())?);
        Ok(self)
    }
}

impl Display for PathCommand<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // As lettre's `Mail` and `Rcpt`: no space after the colon, parameters after one space
        // each.
        write!(f, "{}:<{}>", self.verb, self.path)?;
        for param in &self.params {
            write!(f, " {param}")?;
        }
        f.write_str("\r\n")
    }
}

fn mailbox(path: &str) -> Result<Mailbox<'_>, InvalidPath> {
    Mailbox::parse(path).map_err(|_| InvalidPath(path.to_owned()))
}

/// RFC 5321 4.1.2 esmtp-param: printable, no space; anything else would break the line.
fn checked_param(param: String) -> Result<String, InvalidPath> {
    if !param.is_empty()
        && param
            .chars()
            .all(|c| c.is_ascii_graphic() || !c.is_ascii() && !c.is_control())
    {
        Ok(param)
    } else {
        Err(InvalidPath(param))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MAIL FROM` for `path` with `params`, as written on the wire.
    fn mail(path: &str, params: &[&str]) -> Result<String, InvalidPath> {
        let m = params
            .iter()
            .try_fold(PathCommand::mail_from(path)?, |m, &p| m.param(p))?;
        Ok(m.to_string())
    }

    /// `RCPT TO` for `path` with `params`, as written on the wire.
    fn rcpt(path: &str, params: &[&str]) -> Result<String, InvalidPath> {
        let r = params
            .iter()
            .try_fold(PathCommand::rcpt_to(path)?, |r, &p| r.param(p))?;
        Ok(r.to_string())
    }

    #[test]
    fn commands_write_the_path_byte_for_byte_as_lettre_formats_its_own() {
        let cases = [
            (mail("app@example.com", &[]), "MAIL FROM:<app@example.com>\r\n"),
            (mail("", &[]), "MAIL FROM:<>\r\n"),
            (
                mail("\"john q. public\"@example.com", &["SMTPUTF8", "BODY=8BITMIME"]),
                "MAIL FROM:<\"john q. public\"@example.com> SMTPUTF8 BODY=8BITMIME\r\n",
            ),
            (
                mail("app@example.com", &["RET=HDRS", "ENVID=QQ314159+2Bx"]),
                "MAIL FROM:<app@example.com> RET=HDRS ENVID=QQ314159+2Bx\r\n",
            ),
            (
                rcpt(
                    "\"a b\"@example.net",
                    &["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a+20b@example.net"],
                ),
                "RCPT TO:<\"a b\"@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+20b@example.net\r\n",
            ),
            (
                rcpt("\"quoted local part\"@example.net", &[]),
                "RCPT TO:<\"quoted local part\"@example.net>\r\n",
            ),
            (
                rcpt("\"a@b\\\"c\"@example.net", &[]),
                "RCPT TO:<\"a@b\\\"c\"@example.net>\r\n",
            ),
            (rcpt("user@[192.0.2.1]", &[]), "RCPT TO:<user@[192.0.2.1]>\r\n"),
            (rcpt("用户@例子.测试", &[]), "RCPT TO:<用户@例子.测试>\r\n"),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_deref(), Ok(want));
        }
    }

    #[test]
    fn nothing_that_could_end_the_line_is_ever_written() {
        for path in [
            "a@example.net>\r\nRSET",
            "a@example.net\r\n",
            "\"a\r\nb\"@example.net",
            "postmaster",
            "quoted local part@example.net",
        ] {
            assert_eq!(
                PathCommand::rcpt_to(path),
                Err(InvalidPath(path.into())),
                "{path:?}"
            );
            assert_eq!(
                PathCommand::mail_from(path),
                Err(InvalidPath(path.into())),
                "{path:?}"
            );
        }
        let mail = PathCommand::mail_from("a@example.com").expect("valid");
        assert!(mail.clone().param("X=1\r\nRSET").is_err());
        assert!(mail.clone().param("A B").is_err());
        assert!(mail.param("").is_err());
        let rcpt = PathCommand::rcpt_to("a@example.net").expect("valid");
        assert!(rcpt.param("ORCPT=rfc822;a\r\nRSET").is_err());
    }
}
