//! Pure DKIM key handling: generate RSA-2048 or Ed25519 keys as PKCS#8 PEM, derive the public
//! key and fingerprint, and build the DNS TXT value split into 255-octet character-strings.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs8::{DecodePrivateKey, EncodePublicKey},
};
use sha2::{Digest, Sha256};

use crate::{Error, Result, crd::DkimAlgorithm};

/// RSA modulus size for `rsa-2048`.
pub const RSA_BITS: usize = 2048;
/// RFC 1035 3.3.14: a TXT character-string holds at most 255 octets.
pub const TXT_STRING_MAX: usize = 255;

/// A DKIM key pair: the private key as PKCS#8 PEM and the public key as published in `p=`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The algorithm.
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), the format the sidecar reads for both algorithms.
    pub private_pem: String,
    /// Public key bytes: DER SubjectPublicKeyInfo (RSA, RFC 6376 3.6.1) or the raw 32-byte key
    /// (Ed25519, RFC 8463 4).
    pub public: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    // Never print private key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

// === impl KeyPair ===

impl KeyPair {
    /// Generates a new key.
    pub fn generate(algorithm: DkimAlgorithm) -> Result<Self> {
        let private_pem = match algorithm {
            // aws-lc-rs: about 60 ms per RSA-2048 key on the benchmark machine, where the `rsa`
            // crate took several times that, and a cold start creates one key per MailDomain.
            DkimAlgorithm::Rsa2048 => {
                let key =
                    aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(keygen)?;
                let der = aws_lc_rs::encoding::AsDer::as_der(&key).map_err(keygen)?;
                pem_encode("PRIVATE KEY", der.as_ref())?
            }
            DkimAlgorithm::Ed25519 => {
                let rng = ring::rand::SystemRandom::new();
                let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(keygen)?;
                pem_encode("PRIVATE KEY", der.as_ref())?
            }
        };
        Self::from_private_pem(algorithm, &private_pem)
    }

    /// Parses a PKCS#8 PEM private key and derives its public key; fails if it is not a key of
    /// `algorithm`.
    pub fn from_private_pem(algorithm: DkimAlgorithm, pem: &str) -> Result<Self> {
        let public = match algorithm {
            DkimAlgorithm::Rsa2048 => {
                let key = RsaPrivateKey::from_pkcs8_pem(pem).map_err(keygen)?;
                let public = RsaPublicKey::from(&key).to_public_key_der().map_err(keygen)?;
                public.as_bytes().to_vec()
            }
            DkimAlgorithm::Ed25519 => {
                let der = pkcs8_der(pem)?;
                let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(keygen)?;
                key.public_key().as_ref().to_vec()
            }
        };
        Ok(Self {
            algorithm,
            private_pem: pem.to_string(),
            public,
        })
    }

    /// `sha256:<hex>` of the public key bytes.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// The DKIM record value (RFC 6376 3.6.1): `v=DKIM1; k=rsa; p=<base64>`.
    pub fn txt_value(&self) -> String {
        let k = match self.algorithm {
            DkimAlgorithm::Rsa2048 => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", B64.encode(&self.public))
    }
}

/// `sha256:<hex>` of some public key bytes.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Splits a TXT value into character-strings of at most 255 octets. Resolvers concatenate them
/// without separators (RFC 6376 3.6.2.2), so the split may fall anywhere; values are ASCII.
pub fn split_txt(value: &str) -> Vec<String> {
    value
        .as_bytes()
        .chunks(TXT_STRING_MAX)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect()
}

fn keygen(e: impl std::fmt::Display) -> Error {
    Error::KeyGeneration(e.to_string())
}

/// PEM (RFC 7468) with 64-character lines, as OpenSSL writes it.
fn pem_encode(label: &str, der: &[u8]) -> Result<String> {
    rsa::pkcs8::der::pem::encode_string(label, rsa::pkcs8::der::pem::LineEnding::LF, der).map_err(keygen)
}

/// The DER of the first `PRIVATE KEY` (PKCS#8) block.
fn pkcs8_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| keygen(format!("no PKCS#8 private key: {e}")))
}

#[cfg(test)]
mod tests;
