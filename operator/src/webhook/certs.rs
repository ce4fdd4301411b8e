//! Pure certificate logic for the webhook: the Secret's material, issuing a CA and a serving
//! certificate (rcgen), reading expiry and names (x509-parser), and deciding when to renew.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::{extensions::GeneralName, pem::Pem};

use super::{Error, Result};

/// Secret key: the CA bundle the apiserver trusts (current CA first, then the previous one
/// while certificates it signed may still be served).
pub const CA_CRT: &str = "ca.crt";
/// Secret key: the serving certificate.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key: the serving key.
pub const TLS_KEY: &str = "tls.key";
/// Secret key: the CA's private key (self mode only).
pub const CA_KEY: &str = "ca.key";
/// Backdating of `notBefore`, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

/// The PEM material of the webhook Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// CA bundle (`ca.crt`); may be empty in external mode.
    pub ca_bundle: String,
    /// CA key (`ca.key`); self mode only.
    pub ca_key: Option<String>,
    /// Serving certificate chain (`tls.crt`).
    pub cert: String,
    /// Serving key (`tls.key`).
    pub key: String,
}

/// What the self-mode loop should do with the Secret.
#[derive(Debug)]
pub enum Plan {
    /// The material is good; keep it.
    Keep,
    /// Write this material. `new_ca` when the CA changed (so `caBundle` must trust it first).
    Write {
        /// The new material.
        material: Material,
        /// Whether a new CA was issued.
        new_ca: bool,
    },
}

// === impl Material ===

impl Material {
    /// Reads the Secret's data; `None` when `tls.crt` or `tls.key` is missing or not UTF-8.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
        Some(Self {
            ca_bundle: text(CA_CRT).unwrap_or_default(),
            ca_key: text(CA_KEY).filter(|k| !k.is_empty()),
            cert: text(TLS_CRT)?,
            key: text(TLS_KEY)?,
        })
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::from([
            (
                CA_CRT.to_string(),
                ByteString(self.ca_bundle.clone().into_bytes()),
            ),
            (TLS_CRT.to_string(), ByteString(self.cert.clone().into_bytes())),
            (TLS_KEY.to_string(), ByteString(self.key.clone().into_bytes())),
        ]);
        if let Some(k) = &self.ca_key {
            data.insert(CA_KEY.to_string(), ByteString(k.clone().into_bytes()));
        }
        data
    }

    /// Unix time when the serving certificate expires.
    pub fn not_after(&self) -> Option<i64> {
        pems(&self.cert).first().and_then(|p| validity(p).map(|v| v.1))
    }
}

/// Decides whether to keep `current` or write new material valid for `names` at unix time `now`.
pub fn plan(
    current: Option<&Material>,
    names: &[String],
    now: i64,
    cert_validity: Duration,
    ca_validity: Duration,
) -> Result<Plan> {
    let ca = current.and_then(|m| {
        let ca_pem = pems(&m.ca_bundle).into_iter().next()?;
        let key = m.ca_key.clone()?;
        let (from, to) = validity(&ca_pem)?;
        // The CA must outlive the serving certificate we would issue now.
        let fresh = !renewal_due(from, to, now) && to > now + secs(cert_validity);
        fresh.then(|| (pem_text(&ca_pem), key))
    });
    let new_ca = ca.is_none();
    let (ca_cert, ca_key) = match ca {
        Some(ca) => ca,
        None => issue_ca(now, ca_validity)?,
    };
    if !new_ca && let Some(m) = current {
        let serving = pems(&m.cert).into_iter().next();
        let good = serving.as_ref().is_some_and(|p| {
            validity(p).is_some_and(|(from, to)| !renewal_due(from, to, now)) && covers(p, names)
        });
        if good && KeyPair::from_pem(&m.key).is_ok() {
            return Ok(Plan::Keep);
        }
    }
    let (cert, key) = issue_serving(&ca_cert, &ca_key, names, now, cert_validity)?;
    // Keep the previous CA in the bundle while it is valid: replicas still serving a certificate
    // it signed must keep working until they reload.
    let mut bundle = ca_cert.clone();
    if new_ca && let Some(m) = current {
        for old in pems(&m.ca_bundle).iter().take(1) {
            if validity(old).is_some_and(|(_, to)| to > now) {
                bundle.push_str(&pem_text(old));
            }
        }
    }
    Ok(Plan::Write {
        material: Material {
            ca_bundle: bundle,
            ca_key: Some(ca_key),
            cert,
            key,
        },
        new_ca,
    })
}

/// Renew once less than a third of the lifetime remains (cert-manager's default); the lifetime
/// does not count the backdating of `notBefore`.
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = (not_after - not_before - secs(BACKDATE)).max(1);
    not_after - now < lifetime / 3
}

/// The DNS names the apiserver may use for `service` in `namespace`, plus `extra`.
pub fn names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    names.extend(extra.iter().cloned());
    names
}

fn issue_ca(now: i64, validity: Duration) -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "mailroom-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, now, validity)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_serving(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: i64,
    validity: Duration,
) -> Result<(String, String)> {
    let issuer_key = KeyPair::from_pem(ca_key).map_err(cert_error)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, issuer_key).map_err(cert_error)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(cert_error),
        })
        .collect::<Result<_>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, now, validity)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams, now: i64, validity: Duration) -> Result<()> {
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| Error::Certificate(e.to_string()));
    params.not_before = at(now - secs(BACKDATE))?;
    params.not_after = at(now + secs(validity))?;
    Ok(())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn cert_error(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

/// Every PEM block in `text`, in order (unparseable input yields none).
fn pems(text: &str) -> Vec<Pem> {
    Pem::iter_from_buffer(text.as_bytes())
        .map_while(Result::ok)
        .collect()
}

fn pem_text(pem: &Pem) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pem.contents);
    let mut out = format!("-----BEGIN {}-----\n", pem.label);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {}-----\n", pem.label));
    out
}

/// (notBefore, notAfter) as unix seconds.
fn validity(pem: &Pem) -> Option<(i64, i64)> {
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether the certificate's SANs include every name.
fn covers(pem: &Pem, names: &[String]) -> bool {
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let have: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    names.iter().all(|n| have.contains(n))
}

#[cfg(test)]
mod tests;
