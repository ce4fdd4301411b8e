//! What a client asked for with the RFC 3461 DSN parameters: `RET` and `ENVID` on MAIL,
//! `NOTIFY` and `ORCPT` on RCPT. `ENVID` and `ORCPT` stay xtext exactly as received: they are
//! checked, stored and passed on, never decoded (a decoded `+0D+0A` would be a line break in a
//! command or a header).

use serde::{Deserialize, Serialize};

/// RFC 3461 4.4: an ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 4.2: the whole `ORCPT=` parameter is at most 500 characters.
pub const MAX_ORCPT_PARAM: usize = 500;

/// RFC 3461 4.3 `RET`: what a failure report returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only its header section.
    Hdrs,
}

impl Ret {
    /// Parses the parameter value (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("FULL") {
            Some(Self::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Some(Self::Hdrs)
        } else {
            None
        }
    }

    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Hdrs => "HDRS",
        }
    }
}

/// RFC 3461 4.1 `NOTIFY`: which reports a recipient wants. `NEVER` is all three false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    /// `SUCCESS`: delivered, or relayed to a next hop without DSN.
    #[serde(default, skip_serializing_if = "is_false")]
    pub success: bool,
    /// `FAILURE`: failed permanently or expired.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failure: bool,
    /// `DELAY`: still being retried.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delay: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Notify {
    /// RFC 3461 4.1: without NOTIFY, failures are reported and delays may be.
    pub const DEFAULT: Self = Self {
        success: false,
        failure: true,
        delay: true,
    };

    /// Parses `"NEVER"` or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (case-insensitive);
    /// `NEVER` with anything else is not valid.
    pub fn parse(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Self::default());
        }
        let mut n = Self::default();
        for item in value.split(',') {
            let flag = match item.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut n.success,
                "FAILURE" => &mut n.failure,
                "DELAY" => &mut n.delay,
                _ => return None,
            };
            *flag = true;
        }
        Some(n)
    }

    /// The parameter value, in RFC 3461's order.
    pub fn to_param(self) -> String {
        let items: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if items.is_empty() {
            "NEVER".into()
        } else {
            items.join(",")
        }
    }
}

/// One recipient's DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RcptDsn {
    /// `NOTIFY`; `None` when not given ([`Notify::DEFAULT`] applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// `ORCPT` as received: `addr-type ";" xtext` (RFC 3461 4.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

impl RcptDsn {
    /// Whether neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// What NOTIFY asks for, the default when it was not given.
    pub fn wants(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

/// The DSN parameters of one message: stored with the envelope in the spool. Empty (and then
/// not written at all, so older versions read the record unchanged) when the client gave none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DsnRequest {
    /// `RET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID` as received (xtext).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// Per recipient, parallel to `Envelope::recipients`; empty when no recipient had any. A
    /// recipient past its end has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rcpts: Vec<RcptDsn>,
}

impl DsnRequest {
    /// Whether no parameter was given at all.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.rcpts.iter().all(RcptDsn::is_empty)
    }

    /// Recipient `i`'s parameters (none if it had none).
    pub fn rcpt(&self, i: usize) -> RcptDsn {
        self.rcpts.get(i).cloned().unwrap_or_default()
    }
}

/// RFC 3461 4 `xtext`: `"!"`..`"~"` except `"+"` and `"="`, and `"+"` followed by two upper-case
/// hex digits. Also refuses the empty string (no DSN parameter takes an empty value).
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(i + 2 < b.len() && hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

/// RFC 3461 4.2 `ORCPT=addr-type ";" xtext`, the addr-type an atom (`rfc822`, `utf-8`, ...).
pub fn is_orcpt(value: &str) -> bool {
    let Some((addr_type, address)) = value.split_once(';') else {
        return false;
    };
    !addr_type.is_empty()
        && addr_type.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && is_xtext(address)
        && "ORCPT=".len() + value.len() <= MAX_ORCPT_PARAM
}

#[cfg(test)]
mod tests;
