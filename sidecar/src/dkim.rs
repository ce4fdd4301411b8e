//! DKIM signing (RFC 6376; Ed25519 per RFC 8463) of the raw received bytes with mail-auth, one
//! key per configured sender domain. Errors name the domain and file, never key material.

mod key;

use crate::config::{self, DkimAlgorithm};
use key::{Key, RsaKey};
use mail_auth::{
    common::{crypto::Ed25519Key, headers::HeaderWriter},
    dkim::{Canonicalization, DkimSigner, Done},
};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
use std::{collections::HashMap, path::PathBuf};

/// Signed header fields (RFC 6376 5.4.1 recommends these). `From` is listed twice so that a second
/// From added later breaks the signature (over-signing, RFC 6376 8.15); mail-auth also
/// over-signs every listed field the message lacks, so none can be added afterwards.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "From",
];

/// Errors loading keys or signing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file could not be read.
    #[error("dkim key for {domain}: cannot read {path}: {source}")]
    ReadKey {
        /// The sender domain.
        domain: String,
        /// The configured `keyFile`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable key for the configured algorithm.
    #[error("dkim key for {domain}: {path}: {reason}")]
    ParseKey {
        /// The sender domain.
        domain: String,
        /// The configured `keyFile`.
        path: PathBuf,
        /// What is wrong, in our words (never the file's contents).
        reason: String,
    },
    /// Signing failed (e.g. the message has none of the signed header fields).
    #[error("dkim signing for {domain} failed: {reason}")]
    Sign {
        /// The sender domain.
        domain: String,
        /// mail-auth's error.
        reason: String,
    },
}

struct DomainKey {
    signer: DkimSigner<Key, Done>,
    algorithm: DkimAlgorithm,
    selector: String,
}

/// Signs mail for the configured sender domains that have a `dkim` section.
pub struct Signer {
    keys: HashMap<String, DomainKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (domain, key) in &self.keys {
            m.entry(domain, &(key.selector.as_str(), label(key.algorithm)));
        }
        m.finish()
    }
}

// === impl Signer ===

impl Signer {
    /// Loads every configured key: RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8
    /// (`BEGIN PRIVATE KEY`) PEM, Ed25519 as PKCS#8 PEM. Fails on the first bad key.
    pub fn new(domains: &[config::Domain]) -> Result<Self, Error> {
        let mut keys = HashMap::new();
        for d in domains {
            let Some(dkim) = &d.dkim else { continue };
            let key = load_key(&d.domain, dkim)?;
            let signer = DkimSigner::from_key(key)
                .domain(d.domain.clone())
                .selector(dkim.selector.clone())
                .headers(SIGNED_HEADERS.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            let entry = DomainKey {
                signer,
                algorithm: dkim.algorithm,
                selector: dkim.selector.clone(),
            };
            keys.insert(d.domain.to_ascii_lowercase(), entry);
        }
        Ok(Self { keys })
    }

    /// Whether no domain signs.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The algorithm used for `domain`, if it signs (for the `algorithm` metric label).
    pub fn algorithm(&self, domain: &str) -> Option<DkimAlgorithm> {
        self.keys.get(&domain.to_ascii_lowercase()).map(|k| k.algorithm)
    }

    /// Signs `message` (the raw bytes, CRLF line endings) for `domain`. `None` when the domain has
    /// no key; otherwise the `DKIM-Signature: ...\r\n` header field to prepend to the message.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Option<Result<Vec<u8>, Error>> {
        let key = self.keys.get(&domain.to_ascii_lowercase())?;
        Some(
            key.signer
                .sign(message)
                .map(|sig| sig.to_header().into_bytes())
                .map_err(|e| Error::Sign {
                    domain: domain.to_owned(),
                    reason: e.to_string(),
                }),
        )
    }
}

/// Label value of an algorithm (`dkim_signatures_total{algorithm}`).
pub fn label(algorithm: DkimAlgorithm) -> &'static str {
    match algorithm {
        DkimAlgorithm::RsaSha256 => "rsa-sha256",
        DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

fn load_key(domain: &str, dkim: &config::Dkim) -> Result<Key, Error> {
    let path = &dkim.key_file;
    let pem = std::fs::read(path).map_err(|source| Error::ReadKey {
        domain: domain.to_owned(),
        path: path.clone(),
        source,
    })?;
    let bad = |reason: &str| Error::ParseKey {
        domain: domain.to_owned(),
        path: path.clone(),
        reason: reason.to_owned(),
    };
    // The first private key block; certificates and other blocks before it are skipped.
    let item = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad("no PKCS#1 or PKCS#8 private key PEM block found"),
        _ => bad("not a valid PEM file"),
    })?;
    // Library messages are kept out of the error: they might echo key bytes.
    match (dkim.algorithm, item) {
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(k)) => RsaKey::from_pkcs1_der(k.secret_pkcs1_der())
            .map(Key::Rsa)
            .ok_or_else(|| bad("not a valid RSA private key")),
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(k)) => RsaKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map(Key::Rsa)
            .ok_or_else(|| bad("not a valid RSA private key (PKCS#8)")),
        // OpenSSL writes PKCS#8 v1 (no public key), which ring accepts only "maybe unchecked".
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(k)) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
                .map(Key::Ed25519)
                .map_err(|_| bad("not a valid Ed25519 private key (PKCS#8)"))
        }
        (DkimAlgorithm::Ed25519Sha256, _) => Err(bad("Ed25519 keys must be PKCS#8 PEM (BEGIN PRIVATE KEY)")),
        (DkimAlgorithm::RsaSha256, _) => Err(bad("no RSA private key found")),
    }
}

#[cfg(test)]
mod tests;
