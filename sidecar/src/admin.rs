//! Admin HTTP server on its own address.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /livez`: 200 while the process runs.
//! - `GET /readyz`: 200 once config is loaded, the spool replayed and the listener bound; 503
//!   before that and while draining.

use crate::metrics::Metrics;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Shared readiness flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ready: Readiness,
}

/// The admin router.
pub fn router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, ready })
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.metrics.encode(),
    )
}

async fn ready_handler(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
}
