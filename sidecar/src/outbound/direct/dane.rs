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

/// The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 4.1); `None` when the
/// certificate does not parse.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    /// A real CA and the server certificate it signed (openssl), as DER: (end entity, CA).
    fn chain() -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("dir");
        let ca = mailroom_test_support::certs::test_ca(dir.path());
        let der = |p: &std::path::Path| CertificateDer::from_pem_file(p).expect("pem").to_vec();
        (der(&ca.cert), der(&ca.ca))
    }

    #[test]
    fn spki_is_the_certificates_subject_public_key_info() {
        let (ee, ca) = chain();
        let key = spki(&ee).expect("spki");
        // An EC P-256 SubjectPublicKeyInfo: SEQUENCE of 89 bytes, inside the certificate.
        assert_eq!((key[0], key.len()), (0x30, 91));
        assert!(ee.windows(key.len()).any(|w| w == key));
        assert_ne!(spki(&ca), Some(key), "each certificate has its own key");
        assert_eq!(spki(&ee[..ee.len() / 2]), None, "truncated");
        assert_eq!(spki(&[0x30, 3, 0x03, 1, 0xAB]), None, "not a certificate");
    }

    #[test]
    fn dane_ee_records_match_by_selector_and_matching_type() {
        let (c, _) = chain();
        let key = spki(&c).expect("spki").to_vec();
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
                record: rec(3, 0, 1, association(1, &c).expect("sha256")),
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
        let (ee, ta) = chain();
        let (ee_key, ta_key) = (spki(&ee).expect("ee").to_vec(), spki(&ta).expect("ta").to_vec());
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
