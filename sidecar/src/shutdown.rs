//! The shutdown signal: a future that completes on SIGTERM or SIGINT.

use tokio::signal::unix::{SignalKind, signal};

/// Completes when the process receives SIGTERM or SIGINT.
pub async fn signal_received() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process can still be stopped by SIGKILL; never return early.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
