//! Admin HTTP server. Routes:
//! - `GET /metrics`: Prometheus text format
//! - `GET /livez`: 200 while the process runs
//! - `GET /readyz`: 200 once every [`Check`] passes (every replica, leader or not: each serves
//!   the webhook), else 503 naming what is missing. With the webhook on, that is its serving
//!   certificate: a pod in the webhook Service before it can complete a handshake would fail
//!   admissions (`failurePolicy: Fail`).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// Something readiness waits for: what it is (said in the 503), and whether it is there.
#[derive(Clone)]
pub struct Check {
    /// Named in the `503` body, e.g. `webhook certificate not loaded yet`.
    pub what: &'static str,
    /// Whether it is there now.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    checks: Arc<[Check]>,
}

/// Binds `addr` and serves the admin routes until the future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, checks: Vec<Check>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    axum::serve(listener, router(metrics, checks)).await
}

/// The admin routes; `/readyz` waits for every one of `checks`.
pub fn router(metrics: Arc<Metrics>, checks: Vec<Check>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            checks: checks.into(),
        })
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let missing: Vec<&str> = s.checks.iter().filter(|c| !(c.ready)()).map(|c| c.what).collect();
    if missing.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
    }
}
