//! The XHANDOFF ESMTP extension: how a sidecar hands a message to its Relay's hub (docs/hub.md).
//!
//! A hub offers the `XHANDOFF` EHLO keyword only on its authenticated, TLS-only listener, and
//! takes the MAIL parameter only from a client that has authenticated (RFC 4954). A local
//! extension, so its name starts with X (RFC 5321 4.1.5):
//!
//! ```text
//! MAIL FROM:<reverse-path> [RET=… ENVID=…] XHANDOFF=<key>,<arrived>
//! ```
//!
//! - `key`: the message's hand-off key, 1 to 64 characters of `[0-9A-Za-z._-]`. The sidecar
//!   uses its spool's instance id and the message id, so a key names one message of one pod.
//!   The hub takes each key once: a retry after a broken connection gets `250` without a second
//!   copy.
//! - `arrived`: when the app got its `250`, in seconds since the epoch; the hub counts the
//!   message's age (`retry.maxAgeSeconds`, delay notices) from it.
//!
//! The message data is the message as the sidecar would have sent it, DKIM signature
//! included; the hub never signs it again.

use std::fmt;

/// The EHLO keyword and the MAIL parameter's name.
pub const KEYWORD: &str = "XHANDOFF";
/// Longest key.
pub const MAX_KEY: usize = 64;

/// The value of the `XHANDOFF` MAIL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The message's hand-off key.
    pub key: String,
    /// When the app's `250` was sent (seconds since the epoch).
    pub arrived: u64,
}

impl Handoff {
    /// Parses `<key>,<arrived>`; `None` if it is not that.
    pub fn parse(value: &str) -> Option<Self> {
        let (key, arrived) = value.split_once(',')?;
        if !is_key(key)
            || arrived.is_empty()
            || arrived.len() > 20
            || !arrived.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Self {
            key: key.to_owned(),
            arrived: arrived.parse().ok()?,
        })
    }
}

impl fmt::Display for Handoff {
    /// The whole parameter, `XHANDOFF=<key>,<arrived>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEYWORD}={},{}", self.key, self.arrived)
    }
}

/// Whether `key` is a valid hand-off key.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_round_trips_and_refuses_what_it_is_not() {
        let h = Handoff {
            key: "00ab.0000000000000001".into(),
            arrived: 1_700_000_000,
        };
        let text = h.to_string();
        assert_eq!(text, "XHANDOFF=00ab.0000000000000001,1700000000");
        assert_eq!(
            Handoff::parse(text.strip_prefix("XHANDOFF=").expect("prefix")),
            Some(h)
        );
        for bad in [
            "",
            "key",
            "key,",
            ",1",
            "ke y,1",
            "key,1x",
            "key,-1",
            "key,123456789012345678901",
            &format!("{},1", "k".repeat(MAX_KEY + 1)),
        ] {
            assert_eq!(Handoff::parse(bad), None, "{bad:?}");
        }
        assert!(Handoff::parse(&format!("{},1", "k".repeat(MAX_KEY))).is_some());
    }
}
