//! The signing keys behind mail-auth's DKIM signer. RSA signs with aws-lc-rs: an RSA-2048
//! signature is most of what a DKIM-signed message costs, and aws-lc's takes 0.26 ms on the
//! benchmark machine against ring's 0.47 ms (docs/benchmarks.md). Ed25519 stays with mail-auth's
//! own key (ring), which is already cheap. TLS is untouched: rustls with ring everywhere.

use aws_lc_rs::{rand::SystemRandom, rsa, signature::RSA_PKCS1_SHA256};
use mail_auth::{
    Error,
    common::{
        crypto::{Algorithm, CryptoError, Ed25519Key, Sha256, SigningKey},
        headers::Writable,
    },
};

/// A key of either algorithm, as mail-auth's signer needs it.
pub(super) enum Key {
    /// RSA with SHA-256 (RFC 6376 3.3.1).
    Rsa(RsaKey),
    /// Ed25519 with SHA-256 (RFC 8463).
    Ed25519(Ed25519Key),
}

/// An RSA private key for `rsa-sha256`.
pub(super) struct RsaKey {
    inner: rsa::KeyPair,
    rng: SystemRandom,
}

impl RsaKey {
    /// From PKCS#1 DER (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pkcs1_der(der: &[u8]) -> Option<Self> {
        rsa::KeyPair::from_der(der).ok().map(Self::new)
    }

    /// From PKCS#8 DER (`BEGIN PRIVATE KEY`).
    pub fn from_pkcs8_der(der: &[u8]) -> Option<Self> {
        rsa::KeyPair::from_pkcs8(der).ok().map(Self::new)
    }

    fn new(inner: rsa::KeyPair) -> Self {
        Self {
            inner,
            rng: SystemRandom::new(),
        }
    }
}

impl SigningKey for Key {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self {
            Key::Ed25519(key) => key.sign(input),
            Key::Rsa(key) => {
                let mut data = Vec::with_capacity(256);
                input.write(&mut data);
                let mut signature = vec![0; key.inner.public_modulus_len()];
                key.inner
                    .sign(&RSA_PKCS1_SHA256, &key.rng, &data, &mut signature)
                    .map_err(|e| Error::Crypto(CryptoError::Library(e.to_string())))?;
                Ok(signature)
            }
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Key::Ed25519(key) => key.algorithm(),
            Key::Rsa(_) => Algorithm::RsaSha256,
        }
    }
}
