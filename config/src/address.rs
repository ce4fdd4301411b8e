//! RFC 5321 4.1.2 `Mailbox` syntax (with the RFC 6531 3.3 extensions for SMTPUTF8): the one
//! definition of a valid address. The sidecar's inbound session accepts exactly what
//! [`Mailbox::parse`] accepts, its outbound client sends nothing else, and `postmaster` in the
//! config is checked with it too, so no side can accept an address another side would refuse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.3: a path is at most 256 octets including `<` and `>`.
pub const MAX_MAILBOX: usize = 254;
/// RFC 5321 4.5.3.1.2 (domain) and RFC 1035 2.3.4 (label).
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

/// A syntactically valid mailbox, borrowing the text it was parsed from. The text is kept as the
/// client wrote it (quotes and escapes included): it is relayed byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    /// The whole mailbox, `local-part@domain`.
    pub text: &'a str,
    /// The local part as written: a dot-string or a quoted string with its quotes.
    pub local_part: &'a str,
    /// The domain as written; an address literal keeps its brackets (`[192.0.2.1]`).
    pub domain: &'a str,
    /// The address of an address literal (RFC 5321 4.1.3), `None` for a domain name.
    pub literal: Option<IpAddr>,
}

/// Why a string is not a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Longer than a path allows.
    #[error("address longer than {MAX_MAILBOX} octets (RFC 5321 4.5.3.1.3)")]
    TooLong,
    /// No `@domain` part.
    #[error("address has no domain (RFC 5321 4.1.2)")]
    NoDomain,
    /// The local part is neither a dot-string nor a quoted string.
    #[error("invalid local part (RFC 5321 4.1.2)")]
    LocalPart,
    /// The domain is not a domain name.
    #[error("invalid domain (RFC 5321 4.1.2)")]
    Domain,
    /// A bracketed address literal that is not an IPv4 or IPv6 address.
    #[error("invalid address literal (RFC 5321 4.1.3)")]
    Literal,
}

// === impl Mailbox ===

impl<'a> Mailbox<'a> {
    /// Parses `local-part "@" ( Domain / address-literal )`, nothing before or after it.
    /// Non-ASCII is accepted where RFC 6531 3.3 allows it (atext, qtext, U-labels); whether the
    /// session allows it at all (SMTPUTF8) is the caller's decision.
    pub fn parse(text: &'a str) -> Result<Self, AddressError> {
        if text.len() > MAX_MAILBOX {
            return Err(AddressError::TooLong);
        }
        let at = local_part_len(text)?;
        let (local_part, rest) = text.split_at(at);
        let domain = rest.strip_prefix('@').ok_or(AddressError::NoDomain)?;
        let literal = if domain.starts_with('[') {
            Some(address_literal(domain)?)
        } else if is_domain(domain) {
            None
        } else {
            return Err(AddressError::Domain);
        };
        Ok(Self {
            text,
            local_part,
            domain,
            literal,
        })
    }
}

/// RFC 5321 4.5.1: `<Postmaster>` without a domain, which every SMTP server must accept as a
/// recipient (case-insensitive).
pub fn is_bare_postmaster(path: &str) -> bool {
    path.eq_ignore_ascii_case("postmaster")
}

/// The length of the local part at the start of `text`: a `Quoted-string` up to its closing
/// quote, or a `Dot-string` up to the `@`.
fn local_part_len(text: &str) -> Result<usize, AddressError> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                // The closing quote: +1 for the opening one, +1 for itself.
                '"' => return Ok(i + 2),
                // quoted-pairSMTP = %d92 %d32-126
                '\\' => match chars.next() {
                    Some((_, ' '..='~')) => {}
                    _ => return Err(AddressError::LocalPart),
                },
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii (RFC 6531 3.3)
                ' '..='~' => {}
                c if non_ascii(c) => {}
                _ => return Err(AddressError::LocalPart),
            }
        }
        return Err(AddressError::LocalPart);
    }
    let end = text.find('@').unwrap_or(text.len());
    // Dot-string = Atom *("." Atom): no empty atom, so no leading, trailing or double dot.
    if text[..end].split('.').all(is_atom) {
        Ok(end)
    } else if end == text.len() {
        Err(AddressError::NoDomain)
    } else {
        Err(AddressError::LocalPart)
    }
}

/// RFC 5322 3.2.3 atext (which RFC 5321 4.1.2 uses), plus UTF8-non-ascii (RFC 6531 3.3).
fn is_atom(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || non_ascii(c))
}

/// RFC 6531 3.3 UTF8-non-ascii, less the C1 controls and Unicode white space: nothing that a
/// next hop could take for a separator.
fn non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`, or a U-label
/// (RFC 6531 3.3; IDNA validity is left to the DNS).
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            let alnum = |c: char| c.is_ascii_alphanumeric() || non_ascii(c);
            label.len() <= MAX_LABEL
                && label.chars().next().is_some_and(alnum)
                && label.chars().last().is_some_and(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// RFC 5321 4.1.3: `[` IPv4-address-literal `]` or `[IPv6:` IPv6-addr `]`. General address
/// literals name no standardized tag other than `IPv6`, so nothing else is accepted.
fn address_literal(s: &str) -> Result<IpAddr, AddressError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(AddressError::Literal)?;
    let v6 = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
        .map(|_| &inner[5..]);
    match v6 {
        Some(addr) => addr.parse::<Ipv6Addr>().map(IpAddr::V6),
        // Rust's parser takes the strict dotted quad (no leading zeros), as RFC 5321 4.1.3 Snum.
        None => inner.parse::<Ipv4Addr>().map(IpAddr::V4),
    }
    .map_err(|_| AddressError::Literal)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        input: &'static str,
        /// `Ok((local part, domain))` or the error.
        want: Result<(&'static str, &'static str), AddressError>,
    }

    #[test]
    fn every_mailbox_form_parses_and_junk_does_not() {
        use AddressError::*;
        let cases = [
            Case {
                input: "user@example.net",
                want: Ok(("user", "example.net")),
            },
            Case {
                input: "first.last+tag@sub.example.net",
                want: Ok(("first.last+tag", "sub.example.net")),
            },
            Case {
                input: "!#$%&'*+-/=?^_`{|}~@example.net",
                want: Ok(("!#$%&'*+-/=?^_`{|}~", "example.net")),
            },
            Case {
                input: "\"quoted local part\"@example.net",
                want: Ok(("\"quoted local part\"", "example.net")),
            },
            Case {
                input: "\"a@b\"@example.net",
                want: Ok(("\"a@b\"", "example.net")),
            },
            Case {
                input: "\"esc\\\"aped\\\\\"@example.net",
                want: Ok(("\"esc\\\"aped\\\\\"", "example.net")),
            },
            Case {
                input: "\"\"@example.net",
                want: Ok(("\"\"", "example.net")),
            },
            Case {
                input: "user@[192.0.2.1]",
                want: Ok(("user", "[192.0.2.1]")),
            },
            Case {
                input: "user@[IPv6:2001:db8::1]",
                want: Ok(("user", "[IPv6:2001:db8::1]")),
            },
            Case {
                input: "用户@例子.测试",
                want: Ok(("用户", "例子.测试")),
            },
            Case {
                input: "a@हिन्दी.example",
                want: Ok(("a", "हिन्दी.example")),
            },
            Case {
                input: "a@xn--bcher-kva.example",
                want: Ok(("a", "xn--bcher-kva.example")),
            },
            Case {
                input: "",
                want: Err(NoDomain),
            },
            Case {
                input: "postmaster",
                want: Err(NoDomain),
            },
            Case {
                input: "a@",
                want: Err(Domain),
            },
            Case {
                input: "@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "a..b@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: ".a@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "a b@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "a@b@example.net",
                want: Err(Domain),
            },
            Case {
                input: "\"unterminated@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "\"a\"b@example.net",
                want: Err(NoDomain),
            },
            Case {
                input: "\"cr\r\"@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "\"bad\\\tpair\"@example.net",
                want: Err(LocalPart),
            },
            Case {
                input: "a@example.net.",
                want: Err(Domain),
            },
            Case {
                input: "a@-example.net",
                want: Err(Domain),
            },
            Case {
                input: "a@exa_mple.net",
                want: Err(Domain),
            },
            Case {
                input: "a@[300.0.0.1]",
                want: Err(Literal),
            },
            Case {
                input: "a@[192.0.2.01]",
                want: Err(Literal),
            },
            Case {
                input: "a@[2001:db8::1]",
                want: Err(Literal),
            },
            Case {
                input: "a@[x400:whatever]",
                want: Err(Literal),
            },
        ];
        for c in cases {
            let got = Mailbox::parse(c.input).map(|m| (m.local_part, m.domain));
            assert_eq!(got, c.want, "{:?}", c.input);
        }
    }

    #[test]
    fn lengths_follow_rfc_5321_4_5_3_1() {
        let domain = format!("{}.example", "a".repeat(63));
        assert!(Mailbox::parse(&format!("u@{domain}")).is_ok());
        let label = format!("u@{}.example", "a".repeat(64));
        assert_eq!(Mailbox::parse(&label), Err(AddressError::Domain));
        let max = format!("{}@example.net", "a".repeat(MAX_MAILBOX - 12));
        assert_eq!(max.len(), MAX_MAILBOX);
        assert!(Mailbox::parse(&max).is_ok());
        let over = format!("a{max}");
        assert_eq!(Mailbox::parse(&over), Err(AddressError::TooLong));
    }

    #[test]
    fn literals_carry_their_address_and_bare_postmaster_is_recognised() {
        let m = Mailbox::parse("u@[IPv6:::1]").expect("literal");
        assert_eq!(m.literal, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(is_bare_postmaster("POSTMASTER"));
        assert!(!is_bare_postmaster("postmaster@example.com"));
    }
}
