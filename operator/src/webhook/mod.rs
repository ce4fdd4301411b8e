//! The sidecar injection webhook: HTTPS only (rustls, certificate from the webhook Secret and
//! swapped on rotation), one route, `POST /mutate`, answering pod `AdmissionReview`s. Every
//! replica serves it; the certificate [`tls::Keeper`] runs beside the server.

pub mod admit;
pub mod certs;
pub mod inject;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use axum::{Router, body::Bytes, extract::State, http::header::CONTENT_TYPE, routing::post};
use futures::StreamExt;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::{
    admit::{Outcome, Wanted},
    tls::{CertStore, Keeper},
};
use crate::{
    crd::Relay,
    metrics::Metrics,
    settings::{Settings, WEBHOOK_PATH, WebhookSettings},
};

/// What can go wrong at the webhook boundary: keeping its certificate, or injecting one pod.
/// Kept apart from the reconcile [`crate::Error`]: none of it is a condition, an event or a
/// reconcile metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Issuing, parsing or loading the serving certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),
    /// An apiserver call failed; `step` says which one.
    #[error("{step} failed: {source}")]
    Kube {
        /// What we were doing (`get webhook Secret`, `patch caBundle`, ...).
        step: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The pod cannot take the sidecar as asked (the message names what is in the way).
    #[error("{0}")]
    NotInjectable(String),
}

/// `Result` with the webhook [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    /// Wraps a client error with the step that failed.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { step, source }
    }
}

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet serving webhook.
#[derive(Debug)]
pub struct Webhook {
    listener: TcpListener,
    store: Arc<CertStore>,
    keeper: Keeper,
    state: Arc<Handler>,
    relays: Writer<Relay>,
}

/// What the `/mutate` route needs.
struct Handler {
    client: Client,
    /// Every Relay, watched: the fast path. A miss or a not-Ready Relay is read fresh.
    relays: Store<Relay>,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// === impl Webhook ===

impl Webhook {
    /// Binds `addr`; nothing is served until [`Webhook::run`].
    pub async fn bind(
        addr: SocketAddr,
        client: Client,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let store = Arc::new(CertStore::default());
        let keeper = Keeper::new(client.clone(), settings.clone(), store.clone(), metrics.clone());
        let (reader, writer) = reflector::store();
        let state = Arc::new(Handler {
            client,
            relays: reader,
            settings: settings.webhook.clone(),
            metrics,
        });
        Ok(Self {
            listener,
            store,
            keeper,
            state,
            relays: writer,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What `/readyz` waits for: a serving certificate loaded from the Secret, so that the
    /// apiserver's calls can complete their handshake.
    pub fn readiness(&self) -> crate::admin::Check {
        let store = self.store.clone();
        crate::admin::Check {
            what: "webhook certificate not loaded yet",
            ready: Arc::new(move || store.is_loaded()),
        }
    }

    /// Keeps the certificate and serves HTTPS until the future is dropped. Handshakes fail
    /// until the first certificate is loaded.
    pub async fn run(self) -> Result<()> {
        let config = self.store.server_config()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let relays = watcher(
            Api::<Relay>::all(self.state.client.clone()),
            watcher::Config::default(),
        );
        let relays = reflector::reflector(self.relays, relays)
            .default_backoff()
            .applied_objects();
        tokio::spawn(relays.for_each(|_| std::future::ready(())));
        let router = router(self.state);
        tokio::spawn(self.keeper.run());
        let addr = self
            .listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(%addr, path = WEBHOOK_PATH, "webhook listening");
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return tracing::debug!(%peer, %error, "webhook TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
                };
                let service = TowerToHyperService::new(router);
                let conn =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
                if let Err(error) = conn.await {
                    tracing::debug!(%peer, %error, "webhook connection ended with an error");
                }
            });
        }
    }
}

/// The one route.
fn router(state: Arc<Handler>) -> Router {
    Router::new().route(WEBHOOK_PATH, post(mutate)).with_state(state)
}

async fn mutate(
    State(handler): State<Arc<Handler>>,
    body: Bytes,
) -> ([(axum::http::HeaderName, &'static str); 1], Vec<u8>) {
    let started = Instant::now();
    let (review, outcome) = handler.review(&body).await;
    handler.metrics.admission(outcome.label(), started);
    // Serializing our own response types cannot fail.
    let body = serde_json::to_vec(&review).unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], body)
}

// === impl Handler ===

impl Handler {
    /// The Relay from the watch cache when it is there and Ready, else read from the apiserver
    /// (a Relay created or turned Ready a moment ago may not have reached the cache yet).
    async fn relay(&self, namespace: &str, name: &str) -> Result<Option<Relay>, kube::Error> {
        let cached = self.relays.get(&ObjectRef::new(name).within(namespace));
        if let Some(relay) = cached.filter(|r| admit::is_ready(r)) {
            return Ok(Some((*relay).clone()));
        }
        Api::<Relay>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
    }

    async fn review(&self, body: &[u8]) -> (AdmissionReview<DynamicObject>, Outcome) {
        let req: AdmissionRequest<Pod> = match serde_json::from_slice::<AdmissionReview<Pod>>(body)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.try_into()
                    .map_err(|_| "AdmissionReview without a request".to_string())
            }) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable admission request");
                return (AdmissionResponse::invalid(e).into_review(), Outcome::Error);
            }
        };
        let wanted = admit::wanted(&req);
        let relay = match &wanted {
            Wanted::Relay { namespace, name } => match self.relay(namespace, name).await {
                Ok(relay) => relay,
                Err(error) => {
                    tracing::warn!(%namespace, relay = %name, %error, "relay lookup failed");
                    let msg = format!("mailroom: cannot read Relay {namespace}/{name}: {error}");
                    let (response, _) = admit::unusable(AdmissionResponse::from(&req), msg, &self.settings);
                    return (response.into_review(), Outcome::Error);
                }
            },
            _ => None,
        };
        let (response, outcome) = admit::answer(&req, &wanted, relay.as_ref(), &self.settings);
        if outcome != Outcome::Skipped {
            tracing::info!(
                namespace = req.namespace.as_deref().unwrap_or_default(),
                result = outcome.label(),
                reason = %response.result.message,
                "pod admission"
            );
        }
        (response.into_review(), outcome)
    }
}
