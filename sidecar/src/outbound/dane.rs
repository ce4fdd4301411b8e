//! Pure DANE matching (RFC 7672 3, RFC 6698 2.1): which TLSA records are usable for SMTP and
//! whether a presented certificate chain matches one of them.

use super::mx::Tlsa;
use ring::digest;

/// RFC 7672 3.1.1: DANE-EE(3) binds the server's own certificate or key.
const DANE_EE: u8 = 3;

/// Records this implementation can authenticate with: DANE-EE with any selector and matching
/// type. PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3); DANE-TA(2) needs
/// chain validation up to the trust anchor, which is not implemented, so those records are
/// treated as unusable too (RFC 7672 2.2 permits this; the session then still requires TLS).
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| r.usage == DANE_EE && r.selector <= 1 && r.matching <= 2)
        .cloned()
        .collect()
}

/// Whether the chain (end entity first, DER) matches one usable record. DANE-EE compares the
/// end-entity certificate only (RFC 7672 3.1.1: names and validity are not checked).
pub fn matches(records: &[Tlsa], chain: &[&[u8]]) -> bool {
    let Some(ee) = chain.first() else { return false };
    usable(records).iter().any(|r| {
        let selected = match r.selector {
            0 => Some(*ee),
            _ => spki(ee),
        };
        selected.is_some_and(|s| association(r.matching, s).as_deref() == Some(r.data.as_slice()))
    })
}

/// RFC 6698 2.1.3: the association data for `matching` over the selected bytes.
pub fn association(matching: u8, selected: &[u8]) -> Option<Vec<u8>> {
    match matching {
        0 => Some(selected.to_vec()),
        1 => Some(digest::digest(&digest::SHA256, selected).as_ref().to_vec()),
        2 => Some(digest::digest(&digest::SHA512, selected).as_ref().to_vec()),
        _ => None,
    }
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 4.1), found by walking the
/// TBSCertificate fields; `None` when the DER is malformed.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert_body, _) = tlv(cert)?;
    let (_, mut tbs, _) = tlv(cert_body)?;
    // version [0] EXPLICIT is optional (absent for v1 certificates).
    if tbs.first() == Some(&0xA0) {
        tbs = tlv(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        tbs = tlv(tbs)?.2;
    }
    let (whole, _, _) = tlv(tbs)?;
    Some(whole)
}

/// One DER TLV at the start of `input`: (the whole TLV, its value, what follows).
fn tlv(input: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (usize::from(first_len), 2)
    } else {
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny hand-made certificate shape: SEQ { SEQ { [0]{INT 2}, INT, SEQ, SEQ, SEQ, SEQ, SPKI } }.
    fn cert(with_version: bool, spki: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend([0xA0, 3, 0x02, 1, 2]);
        }
        tbs.extend([0x02, 1, 7]); // serial
        for _ in 0..4 {
            tbs.extend([0x30, 0]); // signature, issuer, validity, subject
        }
        tbs.extend(spki);
        let mut t = vec![0x30, tbs.len() as u8];
        t.extend(tbs);
        let mut c = vec![0x30, 0x81, t.len() as u8];
        c.extend(t);
        c
    }

    #[test]
    fn spki_is_found_with_and_without_version() {
        let key = [0x30, 3, 0x03, 1, 0xAB];
        assert_eq!(spki(&cert(true, &key)), Some(&key[..]));
        assert_eq!(spki(&cert(false, &key)), Some(&key[..]));
        assert_eq!(spki(&[0x30, 5, 1]), None, "truncated");
    }

    #[test]
    fn dane_ee_records_match_by_selector_and_matching_type() {
        let key = [0x30, 3, 0x03, 1, 0xAB];
        let c = cert(true, &key);
        let rec = |usage, selector, matching, data: Vec<u8>| Tlsa {
            usage,
            selector,
            matching,
            data,
        };
        struct Case {
            record: Tlsa,
            want: bool,
        }
        let sha256_key = association(1, &key).expect("sha256");
        let cases = [
            Case {
                record: rec(3, 1, 1, sha256_key.clone()),
                want: true,
            },
            Case {
                record: rec(3, 1, 2, association(2, &key).expect("sha512")),
                want: true,
            },
            Case {
                record: rec(3, 0, 0, c.clone()),
                want: true,
            },
            Case {
                record: rec(3, 1, 1, vec![0; 32]),
                want: false,
            },
            Case {
                record: rec(2, 1, 1, sha256_key.clone()),
                want: false,
            },
            Case {
                record: rec(1, 1, 1, sha256_key),
                want: false,
            },
        ];
        for case in cases {
            assert_eq!(
                matches(std::slice::from_ref(&case.record), &[&c]),
                case.want,
                "{:?}",
                case.record
            );
        }
        assert!(!matches(&[rec(3, 0, 0, c.clone())], &[]), "no certificate");
    }
}
