//! One config generation's delivery side: the transport it chose, its DKIM keys, retry and bounce
//! settings. A reload builds a new [`Delivery`] and the runner picks it up for the next attempt;
//! attempts already running finish on the generation they started with.

use crate::{
    config::{self, Config},
    dkim,
    message::{Envelope, Recipient},
    metrics::Metrics,
    outbound::{
        RcptResult, Route, Transport,
        capture::CaptureTransport,
        direct::{
            DirectTransport,
            mx::{self, HickoryResolver},
        },
        failover::FailoverTransport,
        smarthost::SmarthostTransport,
    },
};
use std::time::Duration;

/// Time allowed for one DNS query of direct delivery.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent delivery attempts with direct delivery; each domain is further limited by
/// `maxConnectionsPerDomain`.
const DIRECT_CONCURRENCY: usize = 16;

/// Why a config's delivery side could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A DKIM key could not be loaded.
    #[error(transparent)]
    Dkim(#[from] dkim::Error),
    /// The delivery settings could not be turned into a transport.
    #[error("delivery: {0}")]
    Transport(String),
}

/// The transports a config can choose.
#[derive(Debug)]
pub enum AnyTransport {
    /// `delivery.smarthost`.
    Smarthost(Box<SmarthostTransport>),
    /// `delivery.smarthost` with a `backup`.
    Failover(Box<FailoverTransport>),
    /// `delivery.direct`.
    Direct(Box<DirectTransport<HickoryResolver>>),
    /// `delivery.capture`.
    Capture(CaptureTransport),
}

impl Transport for AnyTransport {
    fn route(&self) -> Route {
        match self {
            Self::Smarthost(t) => t.route(),
            Self::Failover(t) => t.route(),
            Self::Direct(t) => t.route(),
            Self::Capture(t) => t.route(),
        }
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        match self {
            Self::Smarthost(t) => t.deliver(envelope, rcpts, message).await,
            Self::Failover(t) => t.deliver(envelope, rcpts, message).await,
            Self::Direct(t) => t.deliver(envelope, rcpts, message).await,
            Self::Capture(t) => t.deliver(envelope, rcpts, message).await,
        }
    }

    async fn deliver_routed(
        &self,
        envelope: &Envelope,
        rcpts: &[Recipient],
        message: &[u8],
    ) -> (Vec<RcptResult>, Vec<Route>) {
        match self {
            Self::Failover(t) => t.deliver_routed(envelope, rcpts, message).await,
            Self::Smarthost(t) => t.deliver_routed(envelope, rcpts, message).await,
            Self::Direct(t) => t.deliver_routed(envelope, rcpts, message).await,
            Self::Capture(t) => t.deliver_routed(envelope, rcpts, message).await,
        }
    }

    fn parked(&self) -> bool {
        match self {
            Self::Smarthost(t) => t.parked(),
            Self::Failover(t) => t.parked(),
            Self::Direct(t) => t.parked(),
            Self::Capture(t) => t.parked(),
        }
    }

    fn close_stale(&self) {
        match self {
            Self::Smarthost(t) => t.close_stale(),
            Self::Failover(t) => t.close_stale(),
            Self::Direct(t) => t.close_stale(),
            Self::Capture(t) => t.close_stale(),
        }
    }

    fn unpark(&self) -> bool {
        match self {
            Self::Smarthost(t) => t.unpark(),
            Self::Failover(t) => t.unpark(),
            Self::Direct(t) => t.unpark(),
            Self::Capture(t) => t.unpark(),
        }
    }
}

/// The hand-off side of one config generation.
#[derive(Debug)]
pub struct Hub {
    /// The connection to the hub.
    pub transport: SmarthostTransport,
    /// Hand off mail whose route has been parked this long (`handoff.afterParkedSeconds`).
    pub after_parked: Option<Duration>,
    /// The end of the drain kept for the hand-off (`handoff.drainReserveSeconds`).
    pub drain_reserve: Duration,
}

/// Everything delivery needs from one config generation.
#[derive(Debug)]
pub struct Delivery<T = AnyTransport> {
    /// How mail leaves.
    pub transport: T,
    /// DKIM keys per sender domain.
    pub signer: dkim::Signer,
    /// Retry schedule.
    pub retry: config::Retry,
    /// Bounce settings.
    pub bounces: config::Bounces,
    /// Our host name (DSNs).
    pub hostname: String,
    /// Concurrent delivery attempts.
    pub concurrency: usize,
    /// Per-destination concurrency and rate (config `shaping`).
    pub shaping: config::Shaping,
    /// Attempts at once to a destination without a `shaping` concurrency: direct delivery's
    /// connections per domain, else `concurrency`.
    pub destination_concurrency: usize,
    /// The Relay's hub, when the config has `handoff` (docs/hub.md).
    pub hub: Option<Hub>,
    /// Connections for shadow copies, when the config has `handoff.shadows`.
    pub shadows: Option<std::sync::Arc<crate::outbound::shadow::ShadowClient>>,
    /// One log line per recipient outcome.
    pub trail: super::trail::Trail,
    domains: Vec<String>,
    remote_mta: Option<String>,
}

impl Delivery {
    /// Builds the delivery side of `cfg`.
    pub fn build(cfg: &Config, metrics: &Metrics) -> Result<Self, Error> {
        let (transport, concurrency) = match &cfg.delivery {
            config::Delivery::Smarthost(s) => {
                let t = SmarthostTransport::new(s, &cfg.hostname, metrics.clone())
                    .map_err(|e| Error::Transport(e.to_string()))?;
                match &s.backup {
                    None => (AnyTransport::Smarthost(Box::new(t)), s.max_connections),
                    Some(b) => {
                        let backup =
                            SmarthostTransport::on_route(b, &cfg.hostname, metrics.clone(), Route::Backup)
                                .map_err(|e| Error::Transport(format!("delivery.smarthost.backup: {e}")))?;
                        let t = FailoverTransport::new(t, backup);
                        let n = t.max_connections();
                        (AnyTransport::Failover(Box::new(t)), n)
                    }
                }
            }
            config::Delivery::Direct(d) => {
                let anchors = match d.dane {
                    config::DaneMode::Off => None,
                    config::DaneMode::On => Some(
                        mx::trust_anchors(d.dnssec_trust_anchor_file.as_deref()).map_err(|e| {
                            Error::Transport(format!("delivery.direct.dnssecTrustAnchorFile: {e}"))
                        })?,
                    ),
                };
                let resolver = HickoryResolver::new(&d.resolvers, DNS_TIMEOUT, anchors)
                    .map_err(|e| Error::Transport(format!("resolver: {e}")))?;
                let t = DirectTransport::new(d, &cfg.hostname, resolver, metrics.clone())
                    .map_err(|e| Error::Transport(e.to_string()))?;
                (AnyTransport::Direct(Box::new(t)), DIRECT_CONCURRENCY)
            }
            config::Delivery::Capture(c) => (AnyTransport::Capture(CaptureTransport::new(&c.dir)), 4),
        };
        let mut delivery = Delivery::with_transport(cfg, transport, concurrency)?;
        delivery.hub = cfg.handoff.as_ref().and_then(|h| {
            match SmarthostTransport::hub(h, &cfg.hostname, metrics.clone()) {
                Ok(transport) => Some(Hub {
                    transport,
                    after_parked: h.after_parked_seconds.map(Duration::from_secs),
                    drain_reserve: h.drain_reserve(),
                }),
                // A pod injected before its Relay got a hub has no credential mounted: it
                // keeps working as before (and can take every other change) without one.
                Err(e) => {
                    tracing::warn!(error = %e, "handoff: cannot set up the hub connection; this sidecar will not hand off (a pod injected before spec.hub was set needs a restart)");
                    None
                }
            }
        });
        delivery.shadows = cfg
            .handoff
            .as_ref()
            .and_then(|h| h.shadows.as_ref().map(|s| (h, s)))
            .and_then(|(h, s)| crate::outbound::shadow::client_for(h, s, &cfg.hostname));
        Ok(delivery)
    }
}

impl<T: Transport> Delivery<T> {
    /// The delivery side of `cfg` around a transport built elsewhere (a test's fake, or
    /// [`Delivery::build`]'s choice), running at most `concurrency` attempts at once.
    pub fn with_transport(cfg: &Config, transport: T, concurrency: usize) -> Result<Self, Error> {
        Ok(Self {
            hub: None,
            shadows: None,
            trail: super::trail::Trail::new(&cfg.relay, &cfg.trail),
            transport,
            signer: dkim::Signer::new(&cfg.domains)?,
            retry: cfg.retry.clone(),
            bounces: cfg.bounces.clone(),
            hostname: cfg.hostname.clone(),
            concurrency,
            shaping: cfg.shaping.clone(),
            destination_concurrency: match &cfg.delivery {
                config::Delivery::Direct(d) => d.max_connections_per_domain.min(concurrency).max(1),
                _ => concurrency,
            },
            domains: cfg.domains.iter().map(|d| d.domain.clone()).collect(),
            remote_mta: match &cfg.delivery {
                config::Delivery::Smarthost(s) => Some(s.host.clone()),
                config::Delivery::Direct(_) | config::Delivery::Capture(_) => None,
            },
        })
    }

    /// The next hop's name for DSNs (`Remote-MTA`), when there is one.
    pub fn remote_mta(&self) -> Option<&str> {
        self.remote_mta.as_deref()
    }

    /// `sender_domain` label: the configured domain of the envelope sender, or `none` (bounces).
    pub fn sender_label(&self, env: &Envelope) -> &str {
        self.domain_label(&env.sender_domain())
    }

    /// A configured domain as a label value, or `other`; keeps label values bounded.
    pub fn domain_label(&self, domain: &str) -> &str {
        if domain.is_empty() {
            return "none";
        }
        self.domains
            .iter()
            .find(|d| d.eq_ignore_ascii_case(domain))
            .map_or("other", String::as_str)
    }
}
