//! Outbound TLS: rustls client configs per policy for direct delivery and one for the smarthost.
//! Opportunistic TLS does not verify (RFC 7435 3), MTA-STS verifies with WebPKI (RFC 8461 4.2),
//! DANE matches TLSA records (RFC 7672 3) through [`super::direct::dane`].

use super::direct::{dane, mx::Tlsa};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::WebPkiServerVerifier,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use std::{path::Path, sync::Arc};

/// Errors preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {message}")]
    CaFile {
        /// The configured file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the verifier set-up.
    #[error("cannot set up certificate verification: {0}")]
    Verifier(String),
}

/// The client configs, built once.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    provider: Arc<CryptoProvider>,
    /// Accepts any certificate (opportunistic TLS).
    pub unverified: Arc<ClientConfig>,
    /// WebPKI: system roots plus the configured CA file.
    pub verified: Arc<ClientConfig>,
    /// The same roots, for the MTA-STS policy fetch.
    pub roots: Arc<RootCertStore>,
    pkix: Arc<WebPkiServerVerifier>,
}

// === impl TlsConfigs ===

impl TlsConfigs {
    /// System roots plus `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(true, ca_file)?);
        let webpki = Self::webpki(&provider, roots.clone())?;
        let unverified = Self::with_verifier(
            &provider,
            Arc::new(PolicyVerifier {
                provider: provider.clone(),
                policy: Policy::AcceptAny,
            }),
        )?;
        let verified = Self::with_verifier(&provider, webpki.clone())?;
        Ok(Self {
            provider,
            unverified,
            verified,
            roots,
            pkix: webpki,
        })
    }

    /// A verifying config for one fixed next hop (the smarthost): the system roots, or only
    /// `ca_file` when given, so that a private CA pins the smarthost.
    pub fn pinned(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(ca_file.is_none(), ca_file)?);
        let webpki = Self::webpki(&provider, roots)?;
        Self::with_verifier(&provider, webpki)
    }

    fn webpki(
        provider: &Arc<CryptoProvider>,
        roots: Arc<RootCertStore>,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))
    }

    fn with_verifier(
        provider: &Arc<CryptoProvider>,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Whether `chain` (end entity first) is WebPKI-valid for `host` now (MTA-STS `testing`).
    pub fn verify(&self, chain: &[CertificateDer<'static>], host: &str) -> bool {
        let (Some(ee), Ok(name)) = (chain.first(), ServerName::try_from(host.to_owned())) else {
            return false;
        };
        self.pkix
            .verify_server_cert(ee, &chain[1..], &name, &[], UnixTime::now())
            .is_ok()
    }

    /// A config that accepts only a chain matching one of `records` (RFC 7672 3.1).
    pub fn dane(&self, records: Vec<Tlsa>) -> Result<Arc<ClientConfig>, TlsSetupError> {
        Self::with_verifier(
            &self.provider,
            Arc::new(PolicyVerifier {
                provider: self.provider.clone(),
                policy: Policy::Dane(records),
            }),
        )
    }
}

/// The trust anchors: the system roots when `system`, plus every certificate in `ca_file`.
fn roots(system: bool, ca_file: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if system {
        // Unreadable system certificates are skipped; a missing bundle leaves only the CA file.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    let ca_err = |message: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    Ok(roots)
}

/// How a server certificate is judged when the system roots are not the judge. Handshake
/// signatures are always checked, so the session key belongs to the presented certificate.
#[derive(Debug)]
enum Policy {
    /// RFC 7435 3: opportunistic security encrypts without authenticating the server.
    AcceptAny,
    /// RFC 7672 3.1: with usable TLSA records the chain must match one of them; names and expiry
    /// are not checked for DANE-EE (3.1.1), both are for DANE-TA (3.1.2).
    Dane(Vec<Tlsa>),
}

#[derive(Debug)]
struct PolicyVerifier {
    provider: Arc<CryptoProvider>,
    policy: Policy,
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let records = match &self.policy {
            Policy::AcceptAny => return Ok(ServerCertVerified::assertion()),
            Policy::Dane(records) => records,
        };
        // RFC 7672 3.1.1: DANE-EE binds the certificate itself; names and expiry do not matter.
        if dane::matches_ee(records, end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        // RFC 7672 3.1.2: DANE-TA: the chain must validate up to the matching trust anchor, and
        // the name must match the MX host (the TLSA base domain, 3.2.2) that rustls was given.
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        let mut last = None;
        for ta in dane::trust_anchors(records, &chain) {
            let mut roots = RootCertStore::empty();
            if let Err(e) = roots.add(CertificateDer::from(ta.to_vec())) {
                last = Some(format!("DANE-TA certificate unusable as trust anchor: {e}"));
                continue;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| TlsError::General(e.to_string()))?;
            match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(format!("chain to the DANE-TA trust anchor: {e}")),
            }
        }
        Err(TlsError::General(format!(
            "certificate matches no TLSA record (RFC 7672 3){}",
            last.map(|l| format!("; {l}")).unwrap_or_default()
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
