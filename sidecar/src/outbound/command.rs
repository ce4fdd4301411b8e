//! Our own `MAIL FROM` and `RCPT TO` commands for lettre's connection API, which sends any
//! `Display`. lettre's `Mail` and `Rcpt` take its `Address`, which refuses quoted local parts
//! and address literals; ours carry the path as the inbound session accepted it (RFC 5321 4.1.2),
//! so that every address accepted at the door reaches the next hop byte for byte.

use crate::address::Mailbox;
use std::fmt::{self, Display, Formatter};

/// `MAIL FROM:<reverse-path> [SP parameters] CRLF` (RFC 5321 4.1.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailFrom<'a> {
    path: &'a str,
    params: Vec<String>,
}

/// `RCPT TO:<forward-path> [SP parameters] CRLF` (RFC 5321 4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RcptTo<'a> {
    path: &'a str,
    params: Vec<String>,
}

/// A stored path or parameter that must not go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {0:?} is not valid for SMTP (RFC 5321 4.1.2)")]
pub(crate) struct InvalidPath(pub String);

// === impl MailFrom ===

impl<'a> MailFrom<'a> {
    /// The reverse-path `sender` ("" for the null path `<>`, RFC 5321 4.5.5), checked again with
    /// the inbound's own parser: what the spool gives back is data, and a CR or LF in it would
    /// be a second command.
    pub(crate) fn new(sender: &'a str) -> Result<Self, InvalidPath> {
        if !sender.is_empty() {
            mailbox(sender)?;
        }
        Ok(Self {
            path: sender,
            params: Vec::new(),
        })
    }

    /// Appends an ESMTP parameter (`SMTPUTF8`, `BODY=8BITMIME`, ...).
    pub(crate) fn param(mut self, param: impl Into<String>) -> Result<Self, InvalidPath> {
        self.params.push(checked_param(param.into())?);
        Ok(self)
    }
}

impl Display for MailFrom<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // As lettre's `Mail`: no space after the colon, parameters after one space each.
        write!(f, "MAIL FROM:<{}>", self.path)?;
        write_params(f, &self.params)
    }
}

// === impl RcptTo ===

impl<'a> RcptTo<'a> {
    /// The forward-path `recipient`, checked as for [`MailFrom::new`].
    pub(crate) fn new(recipient: &'a str) -> Result<Self, InvalidPath> {
        mailbox(recipient)?;
        Ok(Self {
            path: recipient,
            params: Vec::new(),
        })
    }

    /// Appends an ESMTP parameter (`NOTIFY=...`, `ORCPT=...`).
    pub(crate) fn param(mut self, param: impl Into<String>) -> Result<Self, InvalidPath> {
        self.params.push(checked_param(param.into())?);
        Ok(self)
    }
}

impl Display for RcptTo<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>", self.path)?;
        write_params(f, &self.params)
    }
}

fn write_params(f: &mut Formatter<'_>, params: &[String]) -> fmt::Result {
    for param in params {
        write!(f, " {param}")?;
    }
    f.write_str("\r\n")
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

    #[test]
    fn commands_write_the_path_byte_for_byte_as_lettre_formats_its_own() {
        struct Case {
            got: Result<String, InvalidPath>,
            want: &'static str,
        }
        let cases = [
            Case {
                got: MailFrom::new("app@example.com").map(|m| m.to_string()),
                want: "MAIL FROM:<app@example.com>\r\n",
            },
            Case {
                got: MailFrom::new("").map(|m| m.to_string()),
                want: "MAIL FROM:<>\r\n",
            },
            Case {
                got: MailFrom::new("\"john q. public\"@example.com")
                    .and_then(|m| m.param("SMTPUTF8"))
                    .and_then(|m| m.param("BODY=8BITMIME"))
                    .map(|m| m.to_string()),
                want: "MAIL FROM:<\"john q. public\"@example.com> SMTPUTF8 BODY=8BITMIME\r\n",
            },
            Case {
                got: MailFrom::new("app@example.com")
                    .and_then(|m| m.param("RET=HDRS"))
                    .and_then(|m| m.param("ENVID=QQ314159+2Bx"))
                    .map(|m| m.to_string()),
                want: "MAIL FROM:<app@example.com> RET=HDRS ENVID=QQ314159+2Bx\r\n",
            },
            Case {
                got: RcptTo::new("\"a b\"@example.net")
                    .and_then(|r| r.param("NOTIFY=SUCCESS,FAILURE"))
                    .and_then(|r| r.param("ORCPT=rfc822;a+20b@example.net"))
                    .map(|r| r.to_string()),
                want: "RCPT TO:<\"a b\"@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+20b@example.net\r\n",
            },
            Case {
                got: RcptTo::new("\"quoted local part\"@example.net").map(|r| r.to_string()),
                want: "RCPT TO:<\"quoted local part\"@example.net>\r\n",
            },
            Case {
                got: RcptTo::new("\"a@b\\\"c\"@example.net").map(|r| r.to_string()),
                want: "RCPT TO:<\"a@b\\\"c\"@example.net>\r\n",
            },
            Case {
                got: RcptTo::new("user@[192.0.2.1]").map(|r| r.to_string()),
                want: "RCPT TO:<user@[192.0.2.1]>\r\n",
            },
            Case {
                got: RcptTo::new("用户@例子.测试").map(|r| r.to_string()),
                want: "RCPT TO:<用户@例子.测试>\r\n",
            },
        ];
        for c in cases {
            assert_eq!(c.got.as_deref(), Ok(c.want));
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
            assert_eq!(RcptTo::new(path), Err(InvalidPath(path.into())), "{path:?}");
            assert_eq!(MailFrom::new(path), Err(InvalidPath(path.into())), "{path:?}");
        }
        let mail = MailFrom::new("a@example.com").expect("valid");
        assert!(mail.clone().param("X=1\r\nRSET").is_err());
        assert!(mail.clone().param("A B").is_err());
        assert!(mail.param("").is_err());
        let rcpt = RcptTo::new("a@example.net").expect("valid");
        assert!(rcpt.param("ORCPT=rfc822;a\r\nRSET").is_err());
    }
}
