//! [`SmarthostTransport`]: delivery through the configured smarthost with a small pool of idle
//! authenticated connections, a limit on concurrent connections and route parking.

use super::{
    Outcome, RcptResult, ReplyClass, Route, Transport, client,
    park::{Admission, Breaker, ParkPolicy},
    pool::Pool,
    starttls::Opened,
    tls::{TlsConfigs, TlsSetupError},
};
use crate::{
    config::{self, TlsMode},
    message::{Envelope, Recipient},
    metrics::Metrics,
    sync::lock,
};
use lettre::transport::smtp::extension::ClientId;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// The hub is in the same cluster: a connection that takes longer than this will not finish
/// within a drain either.
const HUB_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each reply of the hub, its fsync included.
const HUB_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors building a [`SmarthostTransport`] from its config.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The TLS client could not be set up (e.g. the CA file is unreadable or holds no PEM
    /// certificate).
    #[error("cannot set up TLS for smarthost {host}: {source}")]
    Tls {
        /// The smarthost host name.
        host: String,
        /// What went wrong.
        #[source]
        source: TlsSetupError,
    },
}

/// Delivers through one smarthost (config `delivery.smarthost`).
pub struct SmarthostTransport {
    settings: client::Settings,
    /// `smarthost`, or `hub` for the hand-off to the Relay's hub.
    route: Route,
    idle: Pool<()>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    breaker: Mutex<Breaker>,
    metrics: Metrics,
}

impl std::fmt::Debug for SmarthostTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmarthostTransport")
            .field("settings", &self.settings)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

// === impl SmarthostTransport ===

impl SmarthostTransport {
    /// Prepares the transport; `hostname` is sent in EHLO. Reads the CA file now (credentials are
    /// read at each connection). Sets `route_parked{route="smarthost"}` in `metrics`.
    pub fn new(cfg: &config::Smarthost, hostname: &str, metrics: Metrics) -> Result<Self, DeliveryError> {
        Self::on_route(cfg, hostname, metrics, Route::Smarthost)
    }

    /// [`SmarthostTransport::new`] for `route` (`backup` for `delivery.smarthost.backup`).
    pub fn on_route(
        cfg: &config::Smarthost,
        hostname: &str,
        metrics: Metrics,
        route: Route,
    ) -> Result<Self, DeliveryError> {
        let tls_config = match cfg.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Implicit => Some(
                TlsConfigs::pinned(cfg.ca_file.as_deref()).map_err(|source| DeliveryError::Tls {
                    host: cfg.host.clone(),
                    source,
                })?,
            ),
        };
        let settings = client::Settings {
            host: cfg.host.clone(),
            port: cfg.port,
            tls: cfg.tls,
            tls_config,
            client_id: ClientId::Domain(hostname.to_owned()),
            auth: cfg.auth.clone(),
            connect_timeout: Duration::from_secs(cfg.connect_timeout_seconds),
            command_timeout: Duration::from_secs(cfg.command_timeout_seconds),
            handoff: false,
        };
        Ok(Self::with_settings(settings, route, cfg.max_connections, metrics))
    }

    /// The hand-off to the Relay's hub (config `handoff`): TLS from the first byte verified
    /// against the operator's CA only, AUTH PLAIN, and the XHANDOFF extension (docs/hub.md).
    pub fn hub(cfg: &config::Handoff, hostname: &str, metrics: Metrics) -> Result<Self, DeliveryError> {
        let tls_config = TlsConfigs::pinned(Some(&cfg.ca_file)).map_err(|source| DeliveryError::Tls {
            host: cfg.host.clone(),
            source,
        })?;
        let settings = client::Settings {
            host: cfg.host.clone(),
            port: cfg.port,
            tls: TlsMode::Implicit,
            tls_config: Some(tls_config),
            client_id: ClientId::Domain(hostname.to_owned()),
            auth: Some(config::Auth {
                mechanism: config::AuthMechanism::Plain,
                username_file: cfg.username_file.clone(),
                password_file: cfg.password_file.clone(),
            }),
            connect_timeout: HUB_CONNECT_TIMEOUT,
            command_timeout: HUB_COMMAND_TIMEOUT,
            handoff: true,
        };
        // The hub is in the cluster and a drain lasts seconds: a hiccup (DNS, a hub pod
        // restarting) parks the route for a second, not for the smarthost's 30.
        let policy = ParkPolicy {
            threshold: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        Ok(Self::with_settings(settings, Route::Hub, cfg.max_connections, metrics).with_park_policy(policy))
    }

    fn with_settings(
        settings: client::Settings,
        route: Route,
        max_connections: usize,
        metrics: Metrics,
    ) -> Self {
        let max_connections = max_connections.max(1);
        metrics.route_parked.with_label_values(&[route.as_str()]).set(0);
        Self {
            settings,
            route,
            idle: Pool::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            breaker: Mutex::new(Breaker::new(ParkPolicy::default())),
            metrics,
        }
    }

    /// Replaces the default [`ParkPolicy`] (3 failures; 30 s doubling to 5 min).
    pub fn with_park_policy(self, policy: ParkPolicy) -> Self {
        *lock(&self.breaker) = Breaker::new(policy);
        self
    }

    /// Connections it may open at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Idle connections in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Closes the pooled connections idle for [`super::pool::IDLE_TIMEOUT`] or longer at `now`
    /// ([`Transport::close_stale`] with the clock's time).
    pub fn close_stale_at(&self, now: Instant) {
        self.idle.close_stale(now, self.settings.command_timeout);
    }

    /// Sends QUIT on every idle connection and drops them (at shutdown).
    pub async fn close(&self) {
        for mut opened in self.idle.drain() {
            let _ = tokio::time::timeout(self.settings.command_timeout, opened.conn.quit()).await;
        }
    }

    async fn attempt(
        &self,
        envelope: &Envelope,
        recipients: &[Recipient],
        message: &[u8],
    ) -> Vec<RcptResult> {
        let all = |r: RcptResult| vec![r; recipients.len()];
        let mut probe = match lock(&self.breaker).admit(Instant::now()) {
            Admission::Parked => return all(parked()),
            Admission::Probe => {
                self.metrics
                    .route_probes
                    .with_label_values(&[self.route.as_str()])
                    .inc();
                Some(ProbeGuard(self))
            }
            Admission::Open => None,
        };
        // Never closed, so acquiring cannot fail; the permit bounds connections in use, and a new
        // connection is opened only when none is idle, which bounds open ones too.
        let Ok(_permit) = self.permits.acquire().await else {
            return all(parked());
        };
        let mut opened = match self.checkout().await {
            Ok(opened) => opened,
            Err(failure) => {
                if failure.parks {
                    self.connection_failed();
                } else {
                    // The server answered (e.g. AUTH refused): the route itself is reachable.
                    self.connection_ok();
                }
                if let Some(p) = probe.take() {
                    p.disarm();
                }
                return super::with_remote(all(failure.result), &self.settings.host);
            }
        };
        self.connection_ok();
        if let Some(p) = probe.take() {
            p.disarm();
        }
        let limit = self.settings.command_timeout;
        let mut tx = client::transaction(&mut opened, limit, envelope, recipients, message).await;
        if tx.stale {
            // The server closed the idle connection: once more on a new one.
            opened = match client::open(&self.settings).await {
                Ok(opened) => opened,
                Err(failure) => {
                    if failure.parks {
                        self.connection_failed();
                    }
                    return all(failure.result);
                }
            };
            tx = client::transaction(&mut opened, limit, envelope, recipients, message).await;
        }
        if tx.timed_out {
            self.connection_failed();
        }
        self.idle.give_back((), opened, tx.reusable);
        super::with_remote(tx.results, &self.settings.host)
    }

    /// A usable idle connection, or a new one.
    async fn checkout(&self) -> Result<Opened, client::OpenFailure> {
        match self.idle.take(&()) {
            Some(opened) => Ok(opened),
            None => client::open(&self.settings).await,
        }
    }

    fn connection_ok(&self) {
        if lock(&self.breaker).success() {
            tracing::info!(route = self.route.as_str(), "route unparked");
            self.set_parked(false);
        }
    }

    fn connection_failed(&self) {
        self.metrics
            .route_failures
            .with_label_values(&[self.route.as_str()])
            .inc();
        let parked = lock(&self.breaker).failure(Instant::now());
        if parked {
            tracing::warn!(
                route = self.route.as_str(),
                "route parked after connection failures"
            );
        }
        self.set_parked(parked);
    }

    fn set_parked(&self, parked: bool) {
        self.metrics
            .route_parked
            .with_label_values(&[self.route.as_str()])
            .set(i64::from(parked));
    }
}

impl Transport for SmarthostTransport {
    fn route(&self) -> Route {
        self.route
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        if rcpts.is_empty() {
            return Vec::new();
        }
        self.attempt(envelope, rcpts, message).await
    }

    fn parked(&self) -> bool {
        lock(&self.breaker).is_parked(Instant::now())
    }

    fn close_stale(&self) {
        self.close_stale_at(Instant::now());
    }

    fn unpark(&self) -> bool {
        let was = lock(&self.breaker).success();
        if was {
            tracing::info!(route = self.route.as_str(), "route unparked by a queue flush");
            self.set_parked(false);
        }
        was
    }
}

/// Releases the probe slot if the probing attempt is dropped before it learns anything.
struct ProbeGuard<'a>(&'a SmarthostTransport);

impl ProbeGuard<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.breaker).probe_abandoned();
    }
}

fn parked() -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Connection,
        diagnostic: "smarthost route parked after repeated connection failures".into(),
        next_hop_dsn: false,
        remote: None,
    }
}
