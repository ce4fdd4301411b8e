//! [`DirectTransport`]: delivery to each recipient domain's MX hosts (RFC 5321 5), with
//! per-domain concurrency, per-destination connection reuse and fallback to the next host.

pub mod dane;
pub mod mta_sts;
pub mod mx;
mod plan;
pub mod route;
mod security;

pub use plan::MxResult;
pub use security::Security;

use super::{
    Outcome, RcptResult, ReplyClass, Route, Transport, client,
    pool::Pool,
    starttls::{self, Opened},
    tls::TlsConfigs,
};
use crate::{
    config,
    message::{Envelope, Recipient},
    metrics::Metrics,
    sync::lock,
};
use lettre::transport::smtp::extension::ClientId;
use mx::MxResolver;
use route::Hop;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::Semaphore;

/// Settings taken from `delivery.direct`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub port: u16,
    pub client_id: ClientId,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub max_hosts: usize,
    pub per_domain: usize,
}

/// Connections are reused only for the same address and the same security demand.
type PoolKey = (Hop, Security);

/// Delivers to MX hosts (config `delivery.direct`).
#[derive(Debug)]
pub struct DirectTransport<R> {
    resolver: R,
    settings: Settings,
    policy: security::Policy,
    tls: TlsConfigs,
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle: Pool<PoolKey>,
    metrics: Metrics,
}

// === impl DirectTransport ===

impl<R: MxResolver> DirectTransport<R> {
    /// Prepares the transport; `hostname` is sent in EHLO.
    pub fn new(
        cfg: &config::Direct,
        hostname: &str,
        resolver: R,
        metrics: Metrics,
    ) -> Result<Self, super::tls::TlsSetupError> {
        let tls = TlsConfigs::new(cfg.ca_file.as_deref())?;
        Ok(Self {
            resolver,
            settings: Settings {
                port: cfg.port,
                client_id: ClientId::Domain(hostname.to_owned()),
                connect_timeout: Duration::from_secs(cfg.connect_timeout_seconds),
                command_timeout: Duration::from_secs(cfg.command_timeout_seconds),
                max_hosts: cfg.max_hosts,
                per_domain: cfg.max_connections_per_domain,
            },
            policy: security::Policy::new(cfg, tls.roots.clone()),
            tls,
            domains: Mutex::new(HashMap::new()),
            idle: Pool::new(),
            metrics,
        })
    }

    /// Idle connections in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    fn permits(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = lock(&self.domains);
        // Forget domains nobody is delivering to, so the map stays small.
        if map.len() > 1024 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(domain.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_domain)))
            .clone()
    }

    async fn deliver_domain(
        &self,
        envelope: &Envelope,
        domain: &str,
        recipients: &[Recipient],
        message: &[u8],
    ) -> Vec<RcptResult> {
        let all = |r: RcptResult| vec![r; recipients.len()];
        if domain.starts_with('[') {
            // The inbound session refuses address literals in direct mode; this one was queued
            // under another delivery mode before a reload.
            return all(RcptResult {
                outcome: Outcome::Bounced,
                class: ReplyClass::Permanent,
                diagnostic: format!(
                    "550 5.1.2 direct delivery does not route address literals ({domain}); use a domain name"
                ),
                next_hop_dsn: false,
                remote: None,
            });
        }
        let permits = self.permits(domain);
        // Never closed, so acquiring cannot fail.
        let Ok(_permit) = permits.acquire().await else {
            return all(security::failure("no connection slot for this domain".into()));
        };
        let (mx, hops) = plan::resolve(&self.resolver, domain, self.settings.max_hosts).await;
        self.metrics.mx_lookups.with_label_values(&[mx.as_str()]).inc();
        let hops = match hops {
            Ok(h) => h,
            Err(r) => return all(r),
        };
        let hops = match self
            .policy
            .for_domain(&self.resolver, domain, hops, &self.metrics)
            .await
        {
            Ok(h) => h,
            Err(r) => return all(r),
        };
        let mut last = None;
        for (hop, base) in hops {
            let security = match self
                .policy
                .for_host(&self.resolver, &hop, base, &self.metrics)
                .await
            {
                Ok(s) => s,
                Err(r) => {
                    tracing::info!(host = %hop.host, diagnostic = %r.diagnostic, "mail exchanger unusable; trying the next");
                    last = Some(on_host(&hop, r));
                    continue;
                }
            };
            let mut opened = match self.checkout(&hop, &security).await {
                Ok(o) => o,
                Err(r) => {
                    tracing::info!(host = %hop.host, ip = %hop.ip, diagnostic = %r.diagnostic, "mail exchanger failed; trying the next");
                    last = Some(RcptResult {
                        remote: Some(hop.host.clone()),
                        ..r
                    });
                    continue;
                }
            };
            let limit = self.settings.command_timeout;
            let mut tx = client::transaction(&mut opened, limit, envelope, recipients, message).await;
            if tx.stale {
                // The server closed the idle connection: once more on a new one.
                opened = match self.open(&hop, &security).await {
                    Ok(o) => o,
                    Err(r) => return all(r),
                };
                tx = client::transaction(&mut opened, limit, envelope, recipients, message).await;
            }
            let host = hop.host.clone();
            self.idle.give_back((hop, security), opened, tx.reusable);
            return super::with_remote(tx.results, &host);
        }
        all(last.unwrap_or_else(|| security::failure(format!("no usable mail exchanger for {domain}"))))
    }

    /// A usable idle connection to `hop`, or a new one.
    async fn checkout(&self, hop: &Hop, security: &Security) -> Result<Opened, RcptResult> {
        let key = (hop.clone(), security.clone());
        match self.idle.take(&key) {
            Some(opened) => Ok(opened),
            None => self.open(hop, security).await,
        }
    }

    async fn open(&self, hop: &Hop, security: &Security) -> Result<Opened, RcptResult> {
        let s = &self.settings;
        let addr = SocketAddr::new(hop.ip, s.port);
        let mut opened = starttls::connect(&[addr], None, &s.client_id, s.connect_timeout, s.command_timeout)
            .await
            .map_err(|r| on_host(hop, r))?;
        let outcome = self.policy.secure(&mut opened, hop, security, &self.tls, s).await;
        self.metrics
            .outbound_tls
            .with_label_values(&[security.label(), outcome.version, outcome.outcome])
            .inc();
        match outcome.result {
            Ok(()) => Ok(opened),
            // RFC 7435 3: opportunistic TLS may go on in plain text when the handshake fails;
            // a new connection, because the failed one is in an unknown state.
            Err(r) if !security.required() && outcome.outcome == "handshake_failed" => {
                tracing::info!(host = %hop.host, diagnostic = %r.diagnostic, "tls handshake failed; retrying in plain text");
                self.metrics
                    .outbound_tls
                    .with_label_values(&[security.label(), "none", "plaintext_fallback"])
                    .inc();
                starttls::connect(&[addr], None, &s.client_id, s.connect_timeout, s.command_timeout)
                    .await
                    .map_err(|r| on_host(hop, r))
            }
            Err(r) => {
                let _ = tokio::time::timeout(s.command_timeout, opened.conn.quit()).await;
                Err(on_host(hop, r))
            }
        }
    }
}

/// Names the host in diagnostics that are not a server reply (a reply keeps its code first,
/// which DSNs parse).
fn on_host(hop: &Hop, mut r: RcptResult) -> RcptResult {
    if !matches!(r.class, ReplyClass::Transient | ReplyClass::Permanent) {
        r.diagnostic = format!("{}[{}]: {}", hop.host, hop.ip, r.diagnostic);
    }
    r
}

impl<R: MxResolver> Transport for DirectTransport<R> {
    fn route(&self) -> Route {
        Route::Direct
    }

    fn close_stale(&self) {
        self.idle
            .close_stale(std::time::Instant::now(), self.settings.command_timeout);
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        let addresses: Vec<&str> = rcpts.iter().map(|r| r.address.as_str()).collect();
        let groups = route::group_by_domain(&addresses);
        let attempts = groups.iter().map(|g| {
            let group: Vec<Recipient> = g.indices.iter().map(|&i| rcpts[i].clone()).collect();
            async move { self.deliver_domain(envelope, &g.domain, &group, message).await }
        });
        let per_domain = futures_util::future::join_all(attempts).await;
        let mut out: Vec<Option<RcptResult>> = vec![None; rcpts.len()];
        for (g, results) in groups.iter().zip(per_domain) {
            for (&i, r) in g.indices.iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or(RcptResult {
                    outcome: Outcome::Deferred,
                    class: ReplyClass::Protocol,
                    diagnostic: "no result for this recipient".into(),
                    next_hop_dsn: false,
                    remote: None,
                })
            })
            .collect()
    }
}
