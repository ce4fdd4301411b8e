//! DNS for direct delivery: the [`MxResolver`] seam (KumoMTA `dns-resolver`), its hickory
//! implementation with configurable name servers and optional DNSSEC validation (RFC 4035 5),
//! and [`StaticResolver`] for unit tests.

mod zone;

pub use zone::StaticResolver;

use super::route::MxHost;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError as HickoryDnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        dnssec::{Proof, TrustAnchors},
        op::ResponseCode,
        rr::{RData, Record, RecordType},
    },
};
use std::{future::Future, net::IpAddr, net::SocketAddr, path::Path, sync::Arc, time::Duration};

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// RCODE 3: the name does not exist (RFC 8020: nor anything below it). Permanent.
    #[error("NXDOMAIN")]
    NxDomain,
    /// SERVFAIL, REFUSED, timeouts or network errors: the answer may come later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

/// An answer and whether DNSSEC proved it (RFC 4035 4.3 "secure").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured<T> {
    /// The records.
    pub value: T,
    /// Validated to a trust anchor.
    pub secure: bool,
}

/// One TLSA record (RFC 6698 2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// 0-3; DANE for SMTP uses 2 (DANE-TA) and 3 (DANE-EE) (RFC 7672 3.1).
    pub usage: u8,
    /// 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl<T> Secured<T> {
    /// An answer DNSSEC did not prove (no validation, or an unsigned zone).
    pub fn insecure(value: T) -> Self {
        Self { value, secure: false }
    }
}

/// The lookups direct delivery needs. An empty `Ok` is NODATA: the name exists without records
/// of that type. A validating resolver reports a bogus answer (RFC 4035 5.5) as
/// [`DnsError::Temporary`], as a validating recursive resolver answers SERVFAIL.
pub trait MxResolver: Send + Sync + 'static {
    /// MX records of `domain`, with their DNSSEC status (RFC 7672 2.2.1).
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Secured<Vec<MxHost>>, DnsError>> + Send;
    /// A and AAAA records of `host`; secure when every address came from a secure answer
    /// (RFC 7672 2.2.2).
    fn ips(&self, host: &str) -> impl Future<Output = Result<Secured<Vec<IpAddr>>, DnsError>> + Send;
    /// TXT records of `name`, each one string (RFC 7208 3.3 style concatenation).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
    /// TLSA records of `name`, with their DNSSEC status.
    fn tlsa(&self, name: &str) -> impl Future<Output = Result<Secured<Vec<Tlsa>>, DnsError>> + Send;
}

/// [`MxResolver`] over hickory-resolver.
#[derive(Debug, Clone)]
pub struct HickoryResolver {
    resolver: TokioResolver,
}

// === impl HickoryResolver ===

impl HickoryResolver {
    /// Uses `servers` (any port), or the system configuration when empty. With `anchors`,
    /// every answer is DNSSEC-validated up to them and carries its proof.
    pub fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        anchors: Option<TrustAnchors>,
    ) -> Result<Self, NetError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let config = ResolverConfig::from_name_servers(
                servers
                    .iter()
                    .map(|s| {
                        let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                        for c in &mut ns.connections {
                            c.port = s.port();
                        }
                        ns
                    })
                    .collect(),
            );
            TokioResolver::builder_with_config(config, provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        // Mail routing follows DNS only; /etc/hosts entries of the pod are not mail exchangers.
        opts.use_hosts_file = ResolveHosts::Never;
        if let Some(anchors) = anchors {
            // Sets the DO bit and validates every answer (ResolverBuilder::build).
            opts.validate = true;
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        Ok(Self {
            resolver: builder.build()?,
        })
    }
}

/// The DNSSEC trust anchors: the DNSKEY records in `path` (master-file syntax, e.g.
/// `. IN DNSKEY 257 3 13 <base64>`), or the IANA root keys built into hickory when `None`.
/// Hickory reads DNSKEY records only; DS records in the file are an error.
pub fn trust_anchors(path: Option<&Path>) -> Result<TrustAnchors, String> {
    let Some(path) = path else {
        return Ok(TrustAnchors::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    // TrustAnchors counts root keys only, so look for any DNSKEY line before parsing.
    if !text.to_ascii_uppercase().contains("DNSKEY") {
        return Err("holds no DNSKEY record".into());
    }
    let anchors = text.parse::<TrustAnchors>().map_err(|e| e.to_string())?;
    Ok(anchors)
}

/// Whether NSEC/NSEC3 records among `authorities` proved a denial (RFC 4035 5.4).
fn denial_proven(authorities: &[Record]) -> bool {
    authorities
        .iter()
        .any(|r| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3) && r.proof == Proof::Secure)
}

/// Maps a failed lookup: NXDOMAIN is permanent, NODATA an empty answer (secure when its denial
/// was proven), anything else (SERVFAIL, timeouts, a bogus answer) temporary.
fn negative<T>(e: &NetError) -> Result<Secured<Vec<T>>, DnsError> {
    let (code, secure) = match e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(n)) => (
            n.response_code,
            n.authorities.as_deref().is_some_and(denial_proven),
        ),
        // A denial whose NSEC proof is insecure (not bogus: hickory reports that as DnssecBogus).
        NetError::Dns(HickoryDnsError::Nsec { response, proof, .. }) if *proof != Proof::Bogus => {
            (response.response_code, false)
        }
        NetError::Dns(HickoryDnsError::DnssecBogus) => {
            return Err(DnsError::Temporary(
                "DNSSEC validation failed: bogus answer (RFC 4035 5.5)".into(),
            ));
        }
        _ => return Err(DnsError::Temporary(e.to_string())),
    };
    match code {
        ResponseCode::NXDomain => Err(DnsError::NxDomain),
        ResponseCode::NoError => Ok(Secured {
            value: Vec::new(),
            secure,
        }),
        _ => Err(DnsError::Temporary(e.to_string())),
    }
}

impl HickoryResolver {
    /// The `rtype` records at `name`; secure when every one was validated (RFC 4035 4.3).
    async fn raw<T>(
        &self,
        name: &str,
        rtype: RecordType,
        f: impl Fn(&RData) -> Option<T>,
    ) -> Result<Secured<Vec<T>>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.resolver.lookup(fqdn.as_str(), rtype).await {
            Ok(l) => l,
            Err(e) => return negative(&e),
        };
        let records: Vec<&Record> = lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype)
            .collect();
        if records.iter().any(|r| r.proof == Proof::Bogus) {
            return Err(DnsError::Temporary(format!(
                "DNSSEC validation failed: bogus {rtype} records for {fqdn} (RFC 4035 5.5)"
            )));
        }
        Ok(Secured {
            secure: !records.is_empty() && records.iter().all(|r| r.proof == Proof::Secure),
            value: records.iter().filter_map(|r| f(&r.data)).collect(),
        })
    }
}

impl MxResolver for HickoryResolver {
    async fn mx(&self, domain: &str) -> Result<Secured<Vec<MxHost>>, DnsError> {
        self.raw(domain, RecordType::MX, |r| match r {
            RData::MX(mx) => Some(MxHost::new(mx.preference, &mx.exchange.to_ascii())),
            _ => None,
        })
        .await
    }

    async fn ips(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let (a, aaaa) = tokio::join!(
            self.raw(host, RecordType::A, |r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            }),
            self.raw(host, RecordType::AAAA, |r| match r {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
        );
        // Secure only when every family that gave addresses was secure; a denied family adds
        // nothing an attacker could redirect.
        let secure = [&a, &aaaa]
            .iter()
            .all(|r| r.as_ref().map_or(true, |s| s.value.is_empty() || s.secure));
        let value = merge_families(a.map(|s| s.value), aaaa.map(|s| s.value))?;
        Ok(Secured {
            secure: secure && !value.is_empty(),
            value,
        })
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.raw(name, RecordType::TXT, |r| match r {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .await
        .map(|s| s.value)
    }

    async fn tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        match self
            .raw(name, RecordType::TLSA, |r| match r {
                RData::TLSA(t) => Some(Tlsa {
                    usage: u8::from(t.cert_usage),
                    selector: u8::from(t.selector),
                    matching: u8::from(t.matching),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .await
        {
            // RFC 7672 2.2: NXDOMAIN for the TLSA name is "no TLSA records", as NODATA.
            Err(DnsError::NxDomain) => Ok(Secured::insecure(Vec::new())),
            r => r,
        }
    }
}

/// A and AAAA answers together: addresses if either family has some; NXDOMAIN only when both
/// say so; a temporary failure of one family wins over an empty other.
pub fn merge_families(
    a: Result<Vec<IpAddr>, DnsError>,
    aaaa: Result<Vec<IpAddr>, DnsError>,
) -> Result<Vec<IpAddr>, DnsError> {
    match (a, aaaa) {
        (Ok(mut x), Ok(y)) => {
            x.extend(y);
            Ok(x)
        }
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => {
            if x.is_empty() && e != DnsError::NxDomain {
                Err(e)
            } else {
                Ok(x)
            }
        }
        (Err(DnsError::NxDomain), Err(DnsError::NxDomain)) => Err(DnsError::NxDomain),
        (Err(e @ DnsError::Temporary(_)), Err(_)) | (Err(_), Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchor_files_need_dnskey_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = dir.path().join("ds.txt");
        std::fs::write(
            &ds,
            ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
        )
        .expect("write");
        assert_eq!(
            trust_anchors(Some(&ds)).err().as_deref(),
            Some("holds no DNSKEY record")
        );
        assert!(trust_anchors(Some(&dir.path().join("missing"))).is_err());
        assert!(
            !trust_anchors(None).expect("built in").is_empty(),
            "IANA root keys"
        );
    }
}
