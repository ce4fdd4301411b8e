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
//!
//! With `durability: replicated`, a sidecar also stores a **shadow copy** of each message on a
//! hub before it answers the app's `250`. A hub with shadows enabled offers `XSHADOW` too:
//!
//! ```text
//! MAIL FROM:<reverse-path> [RET=… ENVID=…] XHANDOFF=<key>,<arrived> XSHADOW=<uid>,<pod>
//! XRELEASE <key> [<key> …]
//! ```
//!
//! - `XSHADOW`: the copy is held for the owner pod (its UID and name), not delivered. The hub
//!   delivers it only once that pod is gone (docs/hub.md, "Shadow copies").
//! - `XRELEASE`: the owner is done with these messages (delivered, bounced, expired or handed
//!   off); the hub drops their shadows. Keys it does not hold are ignored. The reply is
//!   `250 2.0.0 <n> released`.
//! - A hand-off (`XHANDOFF` without `XSHADOW`) of a key held as a shadow replaces the shadow.

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

/// The EHLO keyword and MAIL parameter of shadow copies.
pub const SHADOW_KEYWORD: &str = "XSHADOW";
/// The command that releases shadow copies.
pub const RELEASE_VERB: &str = "XRELEASE";
/// A release command line stays within the 512 octets of RFC 5321 4.5.3.1.4.
const MAX_RELEASE_LINE: usize = 500;
/// Longest pod name (a DNS subdomain) and UID taken.
const MAX_NAME: usize = 253;

/// The pod a shadow copy belongs to: its UID (never reused) and its name (to look it up).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// `metadata.uid` of the pod.
    pub uid: String,
    /// `metadata.name` of the pod.
    pub pod: String,
}

impl Owner {
    /// Parses the value of `XSHADOW`, `<uid>,<pod>`; `None` if it is not that.
    pub fn parse(value: &str) -> Option<Self> {
        let (uid, pod) = value.split_once(',')?;
        let name = |v: &str| {
            !v.is_empty()
                && v.len() <= MAX_NAME
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        };
        (name(uid) && name(pod)).then(|| Self {
            uid: uid.to_owned(),
            pod: pod.to_owned(),
        })
    }
}

impl fmt::Display for Owner {
    /// The whole parameter, `XSHADOW=<uid>,<pod>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHADOW_KEYWORD}={},{}", self.uid, self.pod)
    }
}

/// `XRELEASE` command lines (CRLF included) for `keys`, as few as fit the line limit.
pub fn release_lines<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for key in keys {
        if !line.is_empty() && line.len() + 1 + key.len() > MAX_RELEASE_LINE {
            line.push_str("\r\n");
            lines.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            line.push_str(RELEASE_VERB);
        }
        line.push(' ');
        line.push_str(key);
    }
    if !line.is_empty() {
        line.push_str("\r\n");
        lines.push(line);
    }
    lines
}

/// The keys of an `XRELEASE` line (its verb and CRLF removed); `None` if one is not a key.
pub fn parse_release(args: &str) -> Option<Vec<&str>> {
    let keys: Vec<&str> = args.split_ascii_whitespace().collect();
    (!keys.is_empty() && keys.iter().all(|k| is_key(k))).then_some(keys)
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

    #[test]
    fn the_owner_round_trips_and_refuses_what_it_is_not() {
        let owner = Owner {
            uid: "0b6f6b8e-3c1a-4c1e-9d7e-2f8a1b2c3d4e".into(),
            pod: "shop-7d9f-abcde".into(),
        };
        let text = owner.to_string();
        assert_eq!(
            text,
            "XSHADOW=0b6f6b8e-3c1a-4c1e-9d7e-2f8a1b2c3d4e,shop-7d9f-abcde"
        );
        assert_eq!(
            Owner::parse(text.strip_prefix("XSHADOW=").expect("prefix")),
            Some(owner)
        );
        for bad in ["", "uid", "uid,", ",pod", "UID,pod", "u id,pod", "u,p,q"] {
            assert_eq!(Owner::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn releases_fit_the_line_limit_and_parse_back() {
        let keys: Vec<String> = (0..40).map(|i| format!("00ab.{i:016x}")).collect();
        let lines = release_lines(keys.iter().map(String::as_str));
        assert!(lines.len() > 1, "40 keys need more than one line");
        let mut back = Vec::new();
        for line in &lines {
            assert!(line.len() <= 512, "{} octets", line.len());
            let args = line
                .strip_prefix("XRELEASE ")
                .and_then(|l| l.strip_suffix("\r\n"))
                .expect("verb and CRLF");
            back.extend(parse_release(args).expect("keys").into_iter().map(str::to_owned));
        }
        assert_eq!(back, keys);
        assert!(release_lines(std::iter::empty()).is_empty());
        assert_eq!(parse_release(""), None);
        assert_eq!(parse_release("good bad/key"), None);
    }
}
