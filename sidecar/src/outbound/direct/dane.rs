//! Pure DANE matching (RFC 7672 3, RFC 6698 2.1): which TLSA records are usable for SMTP,
//! whether the end-entity certificate matches a DANE-EE record, and which presented issuer
//! certificates are DANE-TA trust anchors.

use super::mx::Tlsa;
use ring::digest;

/// RFC 7672 3.1.1: DANE-EE(3) binds the server's own certificate or key.
const DANE_EE: u8 = 3;
/// RFC 7672 3.1.2: DANE-TA(2) binds a trust anchor that issued the server's chain.
const DANE_TA: u8 = 2;

/// Records usable for SMTP: DANE-EE and DANE-TA with any selector and matching type.
/// PKIX-TA(0) and PKIX-EE(1) are unusable (RFC 7672 3.1.3), as are unknown parameters.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| (r.usage == DANE_EE || r.usage == DANE_TA) && r.selector <= 1 && r.matching <= 2)
        .cloned()
        .collect()
}

/// Whether `cert` (DER) matches `r` by its selector and matching type (RFC 6698 2.1).
fn matches_cert(r: &Tlsa, cert: &[u8]) -> bool {
    let selected = match r.selector {
        0 => Some(cert),
        _ => spki(cert),
    };
    selected.is_some_and(|s| association(r.matching, s).as_deref() == Some(r.data.as_slice()))
}

/// Whether the end-entity certificate (DER) matches a DANE-EE record; names and validity are
/// not checked (RFC 7672 3.1.1).
pub fn matches_ee(records: &[Tlsa], ee: &[u8]) -> bool {
    records
        .iter()
        .any(|r| r.usage == DANE_EE && r.selector <= 1 && matches_cert(r, ee))
}

/// The certificates of the presented issuer chain (end entity excluded) that match a DANE-TA
/// record. RFC 7672 3.1.2 (and RFC 7671 5.2.2) has the server include the trust anchor in its
/// chain, so a key-only (selector 1) record is matched against the certificates presented; the
/// caller then validates the chain up to the one it finds and checks the name.
pub fn trust_anchors<'a>(records: &[Tlsa], chain: &[&'a [u8]]) -> Vec<&'a [u8]> {
    chain
        .iter()
        .skip(1)
        .filter(|c| {
            records
                .iter()
                .any(|r| r.usage == DANE_TA && r.selector <= 1 && matches_cert(r, c))
        })
        .copied()
        .collect()
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
                want: false, // DANE-TA never matches the end entity itself
            },
            Case {
                record: rec(1, 1, 1, sha256_key),
                want: false,
            },
        ];
        for case in cases {
            assert_eq!(
                matches_ee(std::slice::from_ref(&case.record), &c),
                case.want,
                "{:?}",
                case.record
            );
        }
    }

    #[test]
    fn dane_ta_records_select_issuers_never_the_end_entity() {
        let (ee_key, ta_key) = ([0x30, 3, 0x03, 1, 0xEE], [0x30, 3, 0x03, 1, 0x7A]);
        let (ee, ta) = (cert(true, &ee_key), cert(true, &ta_key));
        let rec = |usage, data: Vec<u8>| Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data,
        };
        let ta_hash = association(1, &ta_key).expect("sha256");
        let chain: [&[u8]; 2] = [&ee, &ta];
        assert_eq!(trust_anchors(&[rec(2, ta_hash.clone())], &chain), [&ta[..]]);
        assert!(
            trust_anchors(&[rec(3, ta_hash.clone())], &chain).is_empty(),
            "usage 3"
        );
        let ee_hash = association(1, &ee_key).expect("sha256");
        assert!(
            trust_anchors(&[rec(2, ee_hash)], &chain).is_empty(),
            "the end entity is not its own trust anchor"
        );
        assert_eq!(usable(&[rec(2, ta_hash), rec(1, vec![])]).len(), 1);
    }
}
