use super::*;

#[test]
fn ed25519_key_round_trips_through_pem() {
    let key = KeyPair::generate(DkimAlgorithm::Ed25519).expect("generate");
    assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(key.private_pem.ends_with("-----END PRIVATE KEY-----\n"));
    // OpenSSL's layout: base64 in lines of at most 64 characters.
    assert!(
        key.private_pem.lines().all(|l| l.len() <= 64),
        "{}",
        key.private_pem
    );
    assert_eq!(key.public.len(), 32);
    let again = KeyPair::from_private_pem(DkimAlgorithm::Ed25519, &key.private_pem).expect("parse");
    assert_eq!(again, key);
    assert!(key.txt_value().starts_with("v=DKIM1; k=ed25519; p="));
    assert_eq!(key.fingerprint().len(), "sha256:".len() + 64);
}

#[test]
fn rsa_key_is_2048_bits_and_publishes_spki() {
    let key = KeyPair::generate(DkimAlgorithm::Rsa2048).expect("generate");
    // DER SubjectPublicKeyInfo of a 2048-bit key with e=65537 is 294 bytes.
    assert_eq!(key.public.len(), 294);
    let again = KeyPair::from_private_pem(DkimAlgorithm::Rsa2048, &key.private_pem).expect("parse");
    assert_eq!(again.fingerprint(), key.fingerprint());
    let value = key.txt_value();
    assert!(value.starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"), "{value}");
    let strings = split_txt(&value);
    assert_eq!(strings.len(), 2);
    assert!(strings.iter().all(|s| s.len() <= TXT_STRING_MAX));
    assert_eq!(strings.concat(), value);
}

#[test]
fn wrong_algorithm_or_garbage_is_an_error() {
    let ed = KeyPair::generate(DkimAlgorithm::Ed25519).expect("generate");
    assert!(KeyPair::from_private_pem(DkimAlgorithm::Rsa2048, &ed.private_pem).is_err());
    assert!(KeyPair::from_private_pem(DkimAlgorithm::Ed25519, "not a pem").is_err());
}

#[test]
fn split_txt_cuts_at_255_octets() {
    struct Case {
        len: usize,
        want: Vec<usize>,
    }
    for Case { len, want } in [
        Case { len: 0, want: vec![] },
        Case {
            len: 1,
            want: vec![1],
        },
        Case {
            len: 255,
            want: vec![255],
        },
        Case {
            len: 256,
            want: vec![255, 1],
        },
        Case {
            len: 600,
            want: vec![255, 255, 90],
        },
    ] {
        let value = "a".repeat(len);
        let got: Vec<usize> = split_txt(&value).iter().map(String::len).collect();
        assert_eq!(got, want, "len {len}");
    }
}

#[test]
fn debug_never_prints_the_private_key() {
    let key = KeyPair::generate(DkimAlgorithm::Ed25519).expect("generate");
    let shown = format!("{key:?}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
    assert!(shown.contains("sha256:"));
}
