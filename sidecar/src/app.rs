//! Wiring: builds every part from `Settings` + `Config`, runs them, reloads config, and drains.

use crate::{
    admin::{self, Readiness},
    config::{self, Config},
    dkim, inbound,
    metrics::Metrics,
    outbound::{
        RcptResult, Route, Transport,
        capture::CaptureTransport,
        direct::DirectTransport,
        mx::{self, HickoryResolver},
        smarthost::SmarthostTransport,
    },
    queue::{Envelope, runner::Runner},
    settings::Settings,
    spool::{self, Spool},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Time allowed for one DNS query of direct delivery.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent delivery attempts with direct delivery; each domain is further limited by
/// `maxConnectionsPerDomain`.
const DIRECT_CONCURRENCY: usize = 16;

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// A DKIM key could not be loaded.
    #[error(transparent)]
    Dkim(#[from] dkim::Error),
    /// The smarthost settings could not be turned into a transport.
    #[error("delivery: {0}")]
    Transport(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The transports a config can choose.
#[derive(Debug)]
pub enum AnyTransport {
    /// `delivery.smarthost`.
    Smarthost(Box<SmarthostTransport>),
    /// `delivery.direct`.
    Direct(Box<DirectTransport<HickoryResolver>>),
    /// `delivery.capture`.
    Capture(CaptureTransport),
}

impl Transport for AnyTransport {
    fn route(&self) -> Route {
        match self {
            Self::Smarthost(t) => t.route(),
            Self::Direct(t) => t.route(),
            Self::Capture(t) => t.route(),
        }
    }

    async fn deliver(&self, envelope: &Envelope, recipients: &[String], message: &[u8]) -> Vec<RcptResult> {
        match self {
            Self::Smarthost(t) => t.deliver(envelope, recipients, message).await,
            Self::Direct(t) => t.deliver(envelope, recipients, message).await,
            Self::Capture(t) => t.deliver(envelope, recipients, message).await,
        }
    }

    fn parked(&self) -> bool {
        match self {
            Self::Smarthost(t) => t.parked(),
            Self::Direct(t) => t.parked(),
            Self::Capture(t) => t.parked(),
        }
    }
}

/// Everything delivery needs from one config generation.
#[derive(Debug)]
pub struct Delivery {
    /// How mail leaves.
    pub transport: AnyTransport,
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
                (AnyTransport::Smarthost(Box::new(t)), s.max_connections)
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
        Ok(Self {
            transport,
            signer: dkim::Signer::new(&cfg.domains)?,
            retry: cfg.retry.clone(),
            bounces: cfg.bounces.clone(),
            hostname: cfg.hostname.clone(),
            concurrency,
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

/// A built, not yet running sidecar.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    config: Arc<Config>,
    metrics: Metrics,
    spool: Spool,
    found: Vec<spool::Queued>,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<spool::Queued>,
    delivery: Arc<Delivery>,
    listener: TcpListener,
    admin: TcpListener,
}

/// Applies the environment's address overrides to a config.
pub(crate) fn with_overrides(settings: &Settings, mut cfg: Config) -> Config {
    if let Some(a) = settings.listen_addr {
        cfg.listen.address = a;
    }
    if let Some(a) = settings.admin_addr {
        cfg.admin.address = a;
    }
    cfg
}

impl App {
    /// Opens the spool (replaying it), loads keys and binds both listeners.
    pub async fn build(settings: Settings, config: Config) -> Result<Self, Error> {
        let config = Arc::new(with_overrides(&settings, config));
        let metrics = Metrics::new();
        let delivery = Arc::new(Delivery::build(&config, &metrics)?);
        let (spool_cfg, m) = (config.spool.clone(), metrics.clone());
        let (spool, found, arrivals) = tokio::task::spawn_blocking(move || Spool::open(&spool_cfg, m))
            .await
            .map_err(|e| spool::Error::Dir {
                dir: config.spool.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        spool.set_rate(config.limits.rate_per_minute);
        let listener = bind(config.listen.address).await?;
        let admin = bind(config.admin.address).await?;
        tracing::info!(messages = found.len(), "spool replayed");
        Ok(Self {
            settings,
            config,
            metrics,
            spool,
            found,
            arrivals,
            delivery,
            listener,
            admin,
        })
    }

    /// The bound SMTP address (useful with port 0).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen.address)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin.address)
    }

    /// The metrics registry (for tests).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Starts every task and marks the sidecar ready.
    pub fn spawn(self) -> Running {
        let ready = Readiness::new();
        let (config_tx, config_rx) = watch::channel(self.config.clone());
        let (delivery_tx, delivery_rx) = watch::channel(self.delivery.clone());
        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let admin_stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let admin = tokio::spawn(admin::serve(
            self.admin,
            self.metrics.clone(),
            ready.clone(),
            admin_stop,
        ));
        let (inbound_stop, inbound_stopped) = watch::channel(false);
        let inbound = tokio::spawn(inbound::serve(
            self.listener,
            config_rx,
            Arc::new(self.spool.clone()),
            self.metrics.clone(),
            inbound_stopped,
        ));
        let runner = Runner::new(self.spool.clone(), delivery_rx, self.metrics.clone(), self.found);
        let runner = tokio::spawn(runner.run(self.arrivals, drain_rx));
        let reload = tokio::spawn(crate::reload::watch(
            self.settings.clone(),
            config_tx,
            delivery_tx,
            self.spool.clone(),
            self.metrics.clone(),
        ));
        ready.set(true);
        tracing::info!("sidecar ready");
        Running {
            ready,
            spool: self.spool.clone(),
            metrics: self.metrics.clone(),
            inbound,
            inbound_stop,
            runner,
            reload,
            admin,
            drain_tx,
            stop_tx,
            drain: self.settings.drain,
        }
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    ready: Readiness,
    spool: Spool,
    metrics: Metrics,
    inbound: JoinHandle<()>,
    inbound_stop: watch::Sender<bool>,
    runner: JoinHandle<()>,
    reload: JoinHandle<()>,
    admin: JoinHandle<std::io::Result<()>>,
    drain_tx: watch::Sender<bool>,
    stop_tx: watch::Sender<bool>,
    drain: Duration,
}

/// What a drain left behind (it stays in the spool for the next start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages not delivered (or not yet bounced) when the drain ended.
    pub undelivered_messages: u64,
    /// Their bytes.
    pub undelivered_bytes: u64,
}

impl Running {
    /// SIGTERM behaviour: stop accepting, let open sessions finish, keep delivering until the
    /// queue is empty or the drain deadline passes; what is left stays in the spool, and is
    /// reported (log line + `mailroom_sidecar_drain_undelivered_messages`).
    pub async fn drain(self) -> DrainReport {
        self.ready.set(false);
        self.reload.abort();
        let deadline = tokio::time::Instant::now() + self.drain;
        let _ = self.inbound_stop.send(true);
        let mut inbound = self.inbound;
        if tokio::time::timeout_at(deadline, &mut inbound).await.is_err() {
            tracing::warn!("sessions still open at the drain deadline; closing them");
            inbound.abort();
        }
        let _ = self.drain_tx.send(true);
        let mut runner = self.runner;
        if tokio::time::timeout_at(deadline, &mut runner).await.is_err() {
            tracing::warn!("drain deadline reached; undelivered mail stays in the spool");
            runner.abort();
        }
        let (messages, bytes) = self.spool.usage();
        let report = DrainReport {
            undelivered_messages: messages,
            undelivered_bytes: bytes,
        };
        self.metrics
            .drain_undelivered
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
        if messages > 0 {
            tracing::warn!(
                undelivered_messages = messages,
                undelivered_bytes = bytes,
                "drain ended with undelivered mail; it stays in the spool for the next start"
            );
        } else {
            tracing::info!(undelivered_messages = 0, "drain complete; the spool is empty");
        }
        let _ = self.stop_tx.send(true);
        let _ = self.admin.await;
        report
    }
}
