//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy fetched over verified HTTPS from
//! `mta-sts.<domain>`, its parsing, MX pattern matching and a cache keyed by policy id.

use super::mx::MxResolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// RFC 8461 3.3: policy bodies larger than this are not accepted.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 3.2: max_age is at most 31557600 seconds (one year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A policy's `mode` (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Failures must not deliver.
    Enforce,
    /// Failures are reported only.
    Testing,
    /// No policy.
    None,
}

/// A parsed policy (RFC 8461 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: Mode,
    /// Patterns (`mx.example.com`, `*.example.net`).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

// === impl Policy ===

impl Policy {
    /// Parses a policy body; `None` when it is not a valid STSv1 policy.
    pub fn parse(text: &str) -> Option<Self> {
        let (mut version, mut mode, mut mx, mut max_age) = (None, None, Vec::new(), None);
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "version" => version = Some(v.to_owned()),
                "mode" => {
                    mode = match v {
                        "enforce" => Some(Mode::Enforce),
                        "testing" => Some(Mode::Testing),
                        "none" => Some(Mode::None),
                        _ => return None,
                    }
                }
                "mx" => mx.push(v.to_ascii_lowercase()),
                "max_age" => max_age = v.parse::<u64>().ok().map(|a| a.min(MAX_AGE_LIMIT)),
                _ => {}
            }
        }
        (version.as_deref() == Some("STSv1")).then_some(())?;
        let mode = mode?;
        if mode != Mode::None && mx.is_empty() {
            return None;
        }
        Some(Self {
            mode,
            mx,
            max_age: max_age?,
        })
    }

    /// RFC 8461 4.1: an MX host matches a pattern exactly, or a `*.` pattern with one leftmost
    /// label more.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// RFC 8461 3.1: the `id` of the single `v=STSv1` TXT record; `None` without exactly one.
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records.iter().filter(|r| r.starts_with("v=STSv1")).collect();
    let [record] = sts.as_slice() else { return None };
    record
        .split(';')
        .filter_map(|f| f.trim().split_once('='))
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|id| !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Why no policy could be used.
pub type FetchError = String;

/// Policies by domain, with their id and expiry (RFC 8461 5.1).
#[derive(Debug)]
pub struct Cache {
    entries: Mutex<HashMap<String, (String, Policy, Instant)>>,
    config: Arc<ClientConfig>,
    port: u16,
    timeout: Duration,
}

impl Cache {
    /// Verifies policy hosts against `roots` and fetches from `port` (443 outside tests).
    pub fn new(roots: Arc<RootCertStore>, port: u16, timeout: Duration) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            });
        Self {
            entries: Mutex::new(HashMap::new()),
            config: Arc::new(config),
            port,
            timeout,
        }
    }

    /// The policy for `domain`: cached while its id is unchanged and unexpired, fetched
    /// otherwise. `Ok(None)`: the domain publishes no policy.
    pub async fn policy<R: MxResolver>(
        &self,
        resolver: &R,
        domain: &str,
    ) -> Result<Option<Policy>, FetchError> {
        let id = resolver
            .txt(&format!("_mta-sts.{domain}"))
            .await
            .ok()
            .and_then(|t| txt_id(&t));
        let cached = self
            .lock()
            .get(domain)
            .cloned()
            .filter(|(_, _, until)| *until > Instant::now());
        match (id, cached) {
            // RFC 8461 5.1: a TXT record gone while a policy is cached keeps the cached policy.
            (None, Some((_, p, _))) => Ok(Some(p)),
            (None, None) => Ok(None),
            (Some(id), Some((cid, p, _))) if id == cid => Ok(Some(p)),
            (Some(id), cached) => match self.fetch(resolver, domain).await {
                Ok(p) => {
                    let until = Instant::now() + Duration::from_secs(p.max_age);
                    self.lock().insert(domain.to_owned(), (id, p.clone(), until));
                    Ok(Some(p))
                }
                // RFC 8461 5.1: a failed refresh keeps using an unexpired cached policy.
                Err(e) => cached.map(|(_, p, _)| Some(p)).ok_or(e),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Policy, Instant)>> {
        crate::sync::lock(&self.entries)
    }

    /// RFC 8461 3.3: `https://mta-sts.<domain>/.well-known/mta-sts.txt`, certificate verified
    /// for that name, no redirects, status 200 only.
    async fn fetch<R: MxResolver>(&self, resolver: &R, domain: &str) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{domain}");
        let ips = resolver
            .ips(&host)
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .value;
        let ip = ips.first().ok_or_else(|| format!("{host} has no address"))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let work = async {
            let tcp = tokio::net::TcpStream::connect(SocketAddr::new(*ip, self.port))
                .await
                .map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/.well-known/mta-sts.txt")
                .header(hyper::header::HOST, &host)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
            // RFC 8461 3.3: 200 only; redirects are not followed.
            let status = response.status();
            if status != hyper::StatusCode::OK {
                return Err(format!("answered HTTP {}", status.as_u16()));
            }
            // hyper ends the body at its Content-Length or last chunk; a body delimited only by
            // the connection's end must end with TLS close_notify, or it is an error, as a
            // truncated policy could lose `mx` lines.
            let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the policy: {e}"))?
                .to_bytes();
            Ok::<_, String>(body)
        };
        let body = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(format!("fetching the policy from {host}: {e}")),
            Err(_) => return Err(format!("fetching the policy from {host} timed out")),
        };
        let body =
            std::str::from_utf8(&body).map_err(|_| format!("{host} served a policy that is not UTF-8"))?;
        Policy::parse(body).ok_or_else(|| format!("{host} served an invalid policy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_patterns_match_one_label() {
        let p = Policy::parse("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mail.example.test\r\nmax_age: 86400\r\n")
            .expect("valid");
        assert_eq!(p.mode, Mode::Enforce);
        struct Case {
            host: &'static str,
            want: bool,
        }
        for c in [
            Case {
                host: "mx1.example.test",
                want: true,
            },
            Case {
                host: "MX1.example.test.",
                want: true,
            },
            Case {
                host: "a.mail.example.test",
                want: true,
            },
            Case {
                host: "a.b.mail.example.test",
                want: false,
            },
            Case {
                host: "mail.example.test",
                want: false,
            },
            Case {
                host: "mx2.example.test",
                want: false,
            },
        ] {
            assert_eq!(p.matches(c.host), c.want, "{}", c.host);
        }
        assert_eq!(
            Policy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n"),
            None,
            "mx required"
        );
        assert_eq!(Policy::parse("version: STSv2\nmode: none\nmax_age: 1\n"), None);
        assert_eq!(
            Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n").map(|p| p.max_age),
            Some(MAX_AGE_LIMIT)
        );
    }

    #[test]
    fn txt_record_needs_exactly_one_sts_record_with_an_id() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(txt_id(&s(&["v=STSv1; id=20260101"])), Some("20260101".into()));
        assert_eq!(txt_id(&s(&["v=spf1 -all", "v=STSv1; id=a1"])), Some("a1".into()));
        assert_eq!(txt_id(&s(&["v=STSv1; id=a", "v=STSv1; id=b"])), None);
        assert_eq!(txt_id(&s(&["v=STSv1;"])), None);
    }
}

#[cfg(test)]
mod fetch_tests;
