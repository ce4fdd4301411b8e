//! Wiring: builds every part from `Settings` + `Config`, runs them, reloads config, and drains.

use crate::{
    admin::{self, Readiness},
    config::Config,
    inbound::{
        self,
        policy::{RateLimit, RateLimited},
    },
    metrics::Metrics,
    queue::{delivery::Delivery, runner::Runner},
    settings::Settings,
    spool::{self, Spool},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// How long the drain waits for the spool's final fsync.
const SPOOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// The delivery side (transport, DKIM keys) could not be built.
    #[error(transparent)]
    Delivery(#[from] crate::queue::delivery::Error),
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

/// A built, not yet running sidecar.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    config: Arc<Config>,
    metrics: Metrics,
    spool: Spool,
    rate: RateLimit,
    found: Vec<spool::Queued>,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<spool::Queued>,
    delivery: Arc<Delivery>,
    listener: TcpListener,
    admin: TcpListener,
}

impl App {
    /// Opens the spool (replaying it), loads keys and binds both listeners. `config` is the one
    /// [`Settings::finish`] returned.
    pub async fn build(settings: Settings, config: Config) -> Result<Self, Error> {
        let config = Arc::new(config);
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
        let rate = inbound::policy::RateLimit::default();
        rate.set(config.limits.rate_per_minute);
        let listener = bind(config.listen.address).await?;
        let admin = bind(config.admin.address).await?;
        tracing::info!(messages = found.len(), "spool replayed");
        Ok(Self {
            settings,
            config,
            metrics,
            spool,
            rate,
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
            Arc::new(RateLimited::new(self.spool.clone(), self.rate.clone())),
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
            self.rate.clone(),
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
        // Done records are written lazily; the final fsync keeps delivered mail from being sent
        // again after the next start. Bounded, in case a task still holds a spool handle.
        if tokio::time::timeout(SPOOL_CLOSE_TIMEOUT, self.spool.close())
            .await
            .is_err()
        {
            tracing::warn!("spool did not close in time; the next start may deliver some mail twice");
        }
        let _ = self.stop_tx.send(true);
        let _ = self.admin.await;
        report
    }
}
