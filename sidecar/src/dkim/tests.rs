//! Key loading errors. Signing and independent verification live in `tests/dkim.rs`.

use super::*;
use crate::config::{Dkim, Domain};
use std::path::Path;

fn domain(key_file: &Path, algorithm: DkimAlgorithm) -> Domain {
    Domain {
        domain: "example.com".into(),
        dkim: Some(Dkim {
            selector: "s1".into(),
            algorithm,
            key_file: key_file.to_owned(),
        }),
    }
}

const FAKE_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END RSA PRIVATE KEY-----\n";

#[test]
fn key_errors_name_domain_and_file_but_never_the_key() {
    struct Case {
        contents: Option<&'static str>,
        algorithm: DkimAlgorithm,
        want: &'static str,
    }
    let cases = [
        Case {
            contents: None,
            algorithm: DkimAlgorithm::RsaSha256,
            want: "cannot read",
        },
        Case {
            contents: Some("not pem at all"),
            algorithm: DkimAlgorithm::RsaSha256,
            want: "no PKCS#1",
        },
        Case {
            contents: Some(FAKE_PKCS1),
            algorithm: DkimAlgorithm::RsaSha256,
            want: "not a valid RSA",
        },
        Case {
            contents: Some(FAKE_PKCS1),
            algorithm: DkimAlgorithm::Ed25519Sha256,
            want: "must be PKCS#8",
        },
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, c) in cases.iter().enumerate() {
        let path = dir.path().join(format!("key{i}.pem"));
        if let Some(text) = c.contents {
            std::fs::write(&path, text).expect("write key");
        }
        let err = Signer::new(&[domain(&path, c.algorithm)]).expect_err("bad key is refused");
        let msg = err.to_string();
        assert!(
            msg.contains("example.com") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(c.want), "case {i}: {msg}");
        assert!(!msg.contains("U0VDUkVU"), "key material leaked: {msg}");
    }
}

#[test]
fn domains_without_dkim_are_not_signed() {
    let signer = Signer::new(&[Domain {
        domain: "example.com".into(),
        dkim: None,
    }])
    .expect("no keys");
    assert!(
        signer
            .sign("example.com", b"From: a@example.com\r\n\r\n")
            .is_none()
    );
    assert!(signer.algorithm("example.com").is_none());
}
