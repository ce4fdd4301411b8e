//! Admin HTTP server. Routes:
//! - `GET /metrics`: Prometheus text format
//! - `GET /livez`: 200 while the process runs
//! - `GET /readyz`: 200 once the process is serving (every replica, leader or not)

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, routing::get};

use crate::metrics::Metrics;

/// Binds `addr` and serves the admin routes until the future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    axum::serve(listener, router(metrics)).await
}

/// The admin routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics)
}
