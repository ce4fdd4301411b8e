//! DNS for direct delivery: the [`MxResolver`] seam (KumoMTA `dns-resolver`), its hickory
//! implementation with configurable name servers, and [`StaticResolver`] for unit tests.

mod zone;

pub use zone::StaticResolver;

use super::route::MxHost;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{RData, RecordType},
};
use std::{future::Future, net::IpAddr, net::SocketAddr, time::Duration};

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

/// The lookups direct delivery needs. An empty `Ok` is NODATA: the name exists without records
/// of that type.
pub trait MxResolver: Send + Sync + 'static {
    /// MX records of `domain`.
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Vec<MxHost>, DnsError>> + Send;
    /// A and AAAA records of `host`.
    fn ips(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
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
    /// Uses `servers` (any port), or the system configuration when empty.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, NetError> {
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
        Ok(Self {
            resolver: builder.build()?,
        })
    }
}

fn dns_error(e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain
    } else {
        DnsError::Temporary(e.to_string())
    }
}

/// NODATA (NOERROR, no answer) is an empty answer, not an error.
fn or_empty<T>(r: Result<Vec<RData>, NetError>, f: impl Fn(&RData) -> Option<T>) -> Result<Vec<T>, DnsError> {
    match r {
        Ok(v) => Ok(v.iter().filter_map(f).collect()),
        Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(dns_error(&e)),
    }
}

impl HickoryResolver {
    async fn raw(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, NetError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = self.resolver.lookup(fqdn.as_str(), rtype).await?;
        Ok(lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect())
    }
}

impl MxResolver for HickoryResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        or_empty(self.raw(domain, RecordType::MX).await, |r| match r {
            RData::MX(mx) => Some(MxHost::new(mx.preference, &mx.exchange.to_ascii())),
            _ => None,
        })
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let (a, aaaa) = tokio::join!(self.raw(host, RecordType::A), self.raw(host, RecordType::AAAA));
        let a = or_empty(a, |r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        });
        let aaaa = or_empty(aaaa, |r| match r {
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        });
        merge_families(a, aaaa)
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        or_empty(self.raw(name, RecordType::TXT).await, |r| match r {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
    }

    async fn tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        // XXX: this resolver does not validate DNSSEC, so TLSA answers are never secure and DANE
        // never applies (RFC 7672 2.2); see docs/delivery.md.
        let value = or_empty(self.raw(name, RecordType::TLSA).await, |r| match r {
            RData::TLSA(t) => Some(Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })?;
        Ok(Secured { value, secure: false })
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
