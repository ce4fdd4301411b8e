//! Wiring: builds every part from `Settings` + `Config`, runs them, reloads config, and drains.

use crate::{
    admin::{self, Readiness},
    config::Config,
    delivery_runtime::DeliveryRuntime,
    inbound::{
        self,
        policy::{RateLimit, RateLimited},
    },
    metrics::Metrics,
    queue::{
        delivery::Delivery,
        handoff::Kept,
        runner::{DrainStats, Phase, Runner},
    },
    settings::Settings,
    shadow::{Ledger, ShadowSink},
    spool::{self, Spool},
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// How long the drain waits for the spool's final fsync.
const SPOOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the queue API may take to finish an answer under way when the drain ends.
const API_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the end of the drain may spend sending shadow releases (a copy not released is
/// delivered by the hub once this pod is gone).
const SHADOW_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// The delivery side (transport, DKIM keys) could not be built.
    #[error(transparent)]
    Delivery(#[from] crate::queue::delivery::Error),
    /// The listener's certificate (`listen.tls`) cannot be used.
    #[error(transparent)]
    ListenTls(#[from] inbound::tls::TlsError),
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
    queue_api: TcpListener,
}

impl App {
    /// Opens the spool (replaying it), loads keys and binds both listeners. `config` is the one
    /// [`Settings::finish`] returned.
    pub async fn build(settings: Settings, config: Config) -> Result<Self, Error> {
        crate::reload::warn_if_no_domains(&config);
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
        if let Some(files) = &config.listen.tls {
            inbound::tls::load(files)?;
        }
        let rate = inbound::policy::RateLimit::default();
        rate.set(config.limits.rate_per_minute);
        let listener = bind(config.listen.address).await?;
        let admin = bind(config.admin.address).await?;
        let queue_api = bind(config.admin.queue_api_address).await?;
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
            queue_api,
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

    /// The bound queue API address.
    pub fn queue_api_addr(&self) -> SocketAddr {
        self.queue_api
            .local_addr()
            .unwrap_or(self.config.admin.queue_api_address)
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
        let generation = delivery_rx.clone();
        // Every message leaving the spool releases its shadow copy, if it has one.
        let (removed_tx, removed_rx) = tokio::sync::mpsc::unbounded_channel();
        self.spool.on_removed(removed_tx);
        let ledger = Ledger::new(self.metrics.clone(), removed_rx);
        if self.delivery.shadows.is_some() {
            ledger.anywhere(self.found.iter().map(|q| q.id));
        }
        let ledger_task = tokio::spawn(ledger.clone().run(self.spool.clone(), delivery_rx.clone()));
        let (drain_tx, drain_rx) = watch::channel(Phase::Run);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let owners = self.config.shadows.clone().map(|cfg| {
            tokio::spawn(crate::shadow::owners::watch(
                self.spool.clone(),
                cfg,
                self.metrics.clone(),
                stop_rx.clone(),
            ))
        });
        // The queue API holds a spool handle: it stops before the spool closes (its own signal).
        let (api_stop_tx, mut api_stop_rx) = watch::channel(false);
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
            Arc::new(RateLimited::new(
                ShadowSink::new(
                    self.spool.clone(),
                    delivery_rx.clone(),
                    ledger.clone(),
                    self.metrics.clone(),
                ),
                self.rate.clone(),
            )),
            self.metrics.clone(),
            inbound_stopped,
        ));
        let mut runner = Runner::new(self.spool.clone(), delivery_rx, self.metrics.clone(), self.found);
        let stats = runner.stats();
        let queue_api = tokio::spawn(crate::control::server::serve(
            self.queue_api,
            runner.control(),
            self.spool.clone(),
            self.metrics.clone(),
            async move {
                let _ = api_stop_rx.wait_for(|s| *s).await;
            },
        ));
        // Delivery runs on threads of its own, below the sessions' priority (delivery_runtime.rs).
        let delivery_rt = DeliveryRuntime::start(self.settings.delivery_nice);
        let runner = delivery_rt.spawn(runner.run(self.arrivals, drain_rx));
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
            delivery_rt,
            reload,
            admin,
            queue_api,
            api_stop_tx,
            drain_tx,
            stop_tx,
            drain: self.settings.drain,
            delivery: generation,
            stats,
            ledger,
            ledger_task,
            owners,
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
    /// The runtime the runner and its attempts run on.
    delivery_rt: DeliveryRuntime,
    reload: JoinHandle<()>,
    admin: JoinHandle<std::io::Result<()>>,
    queue_api: JoinHandle<std::io::Result<()>>,
    api_stop_tx: watch::Sender<bool>,
    drain_tx: watch::Sender<Phase>,
    stop_tx: watch::Sender<bool>,
    drain: Duration,
    /// The delivery side in effect (whether there is a hub, and its drain reserve).
    delivery: watch::Receiver<Arc<Delivery>>,
    stats: Arc<Mutex<DrainStats>>,
    /// Shadow copies' releases (`durability: replicated`).
    ledger: Arc<Ledger>,
    ledger_task: JoinHandle<()>,
    /// A hub's owner checks (config `shadows`).
    owners: Option<JoinHandle<()>>,
}

/// What a drain did, and what it left behind (in the spool, for the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages delivered (every recipient finished) during the drain.
    pub delivered: u64,
    /// Messages handed to the Relay's hub.
    pub handed_off: u64,
    /// Messages not delivered (or not yet bounced) nor handed off when the drain ended.
    pub undelivered_messages: u64,
    /// Their bytes.
    pub undelivered_bytes: u64,
    /// With a hub: why each left message stayed (`hub_unreachable`, `hub_refused`,
    /// `unreadable`, `no_time`, `held`), and how many.
    pub left: BTreeMap<&'static str, u64>,
}

impl Running {
    /// SIGTERM behaviour: stop accepting, let open sessions finish, keep delivering until the
    /// queue is empty or the drain deadline passes; what is left stays in the spool, and is
    /// reported (log line + `mailroom_sidecar_drain_undelivered_messages`).
    pub async fn drain(mut self) -> DrainReport {
        self.ready.set(false);
        self.reload.abort();
        let deadline = tokio::time::Instant::now() + self.drain;
        let _ = self.inbound_stop.send(true);
        let mut inbound = self.inbound;
        if tokio::time::timeout_at(deadline, &mut inbound).await.is_err() {
            tracing::warn!("sessions still open at the drain deadline; closing them");
            inbound.abort();
        }
        let _ = self.drain_tx.send(Phase::Drain);
        let mut runner = self.runner;
        // With a hub, delivery stops `drainReserveSeconds` before the deadline and what is left
        // goes to the hub (docs/hub.md); the runner may begin that earlier, once nothing is ready.
        let mut finished = false;
        let reserve = self.delivery.borrow().hub.as_ref().map(|h| h.drain_reserve);
        if let Some(reserve) = reserve {
            let handoff_at = deadline.checked_sub(reserve).unwrap_or(deadline);
            finished = tokio::time::timeout_at(handoff_at, &mut runner).await.is_ok();
            if !finished {
                tracing::info!("drain: handing what is left to the hub");
                let _ = self.drain_tx.send(Phase::HandOff);
            }
        }
        // A JoinHandle must not be polled again once it has completed.
        if !finished && tokio::time::timeout_at(deadline, &mut runner).await.is_err() {
            tracing::warn!("drain deadline reached; undelivered mail stays in the spool");
            runner.abort();
        }
        // Pooled upstream connections and anything an aborted runner left end with the runtime.
        self.delivery_rt.shutdown();
        let report = report(&self.spool, &self.stats, reserve.is_some());
        let messages = report.undelivered_messages;
        self.metrics
            .drain_undelivered
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
        let left = report
            .left
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        if messages > 0 {
            tracing::warn!(
                delivered = report.delivered,
                handed_off = report.handed_off,
                undelivered_messages = messages,
                undelivered_bytes = report.undelivered_bytes,
                left = %left,
                "drain ended with undelivered mail; it stays in the spool for the next start"
            );
        } else {
            tracing::info!(
                delivered = report.delivered,
                handed_off = report.handed_off,
                undelivered_messages = 0,
                "drain complete; the spool is empty"
            );
        }
        // A hub's owner checks hold a spool handle; they end before the spool closes.
        if let Some(owners) = self.owners.take() {
            owners.abort();
            let _ = owners.await;
        }
        // What this pod delivered must not be delivered again by the hub once the pod is gone.
        self.ledger_task.abort();
        let _ = (&mut self.ledger_task).await;
        let shadows = self.delivery.borrow().shadows.clone();
        let unsent = self
            .ledger
            .settle(
                &self.spool,
                shadows.as_deref(),
                tokio::time::Instant::now() + SHADOW_SETTLE_TIMEOUT,
            )
            .await;
        if unsent > 0 {
            tracing::warn!(
                releases = unsent,
                "drain: shadow releases not delivered to the hub; those messages may be delivered twice"
            );
        }
        // The queue API holds a spool handle, which the close below would wait for.
        let _ = self.api_stop_tx.send(true);
        if tokio::time::timeout(API_STOP_TIMEOUT, &mut self.queue_api)
            .await
            .is_err()
        {
            self.queue_api.abort();
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

/// The drain's report from the spool and the runner's figures.
fn report(spool: &Spool, stats: &Mutex<DrainStats>, hub: bool) -> DrainReport {
    let (messages, bytes) = spool.usage();
    let stats = crate::sync::lock(stats);
    let mut left = BTreeMap::new();
    if hub {
        for q in spool.live() {
            let reason = match stats.kept.get(&q.id) {
                // Held on purpose: a hand-off would let the hub deliver it.
                _ if q.meta.held => "held",
                Some(kept) => kept.as_str(),
                None => Kept::NoTime.as_str(),
            };
            *left.entry(reason).or_default() += 1;
        }
    }
    DrainReport {
        delivered: stats.delivered,
        handed_off: stats.handed_off,
        undelivered_messages: messages,
        undelivered_bytes: bytes,
        left,
    }
}
