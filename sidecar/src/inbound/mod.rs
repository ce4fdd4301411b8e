//! Inbound SMTP: the accept loop (one task per connection, connection limit), the session and its
//! phases, and the sender policy. Accepted mail goes to a [`MessageSink`].

mod auth;
mod chunking;
mod commands;
pub mod data;
pub mod headers;
mod path;
pub mod policy;
mod release;
pub mod reply;
pub mod session;
pub mod tls;
mod transfer;

pub use session::Session;

use crate::{
    config::Config,
    message::MessageSink,
    metrics::{Metrics, SessionEnd},
};
use std::{sync::Arc, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::watch, task::JoinSet};

/// Shutdown signal for [`serve`] and [`Session`]: the value turning `true`, or the sender being
/// dropped, asks them to stop. Make one with `tokio::sync::watch::channel(false)`.
pub type ShutdownSignal = watch::Receiver<bool>;

/// Whether shutdown has been asked for.
pub(crate) fn is_shutdown(signal: &ShutdownSignal) -> bool {
    *signal.borrow() || signal.has_changed().is_err()
}

/// Resolves once shutdown is asked for (at once if it already was).
pub(crate) async fn shutdown_requested(signal: &mut ShutdownSignal) {
    // `Err` means the sender is gone: nobody can ever clear the request, so it counts as one.
    let _ = signal.wait_for(|&stop| stop).await;
}

/// Time allowed to hand the `421` to a client refused at the connection limit.
const OVERLOAD_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts SMTP connections on `listener`, one task per connection, until `shutdown` fires; then
/// stops accepting, lets every open session end (each answers `421 4.3.2` at its next command
/// boundary, a message in DATA is finished first) and returns once all of them have ended.
///
/// Each new session takes the config snapshot current at accept time from `config`, so a hot
/// reload applies to new sessions only. Above `limits.maxConnections` open sessions a new
/// connection gets `421 4.3.2` at once and is closed (`sessions_total{end="overloaded"}`).
///
/// Usage: spawn it, and to stop, send `true` and await the task, with a deadline if needed:
///
/// ```no_run
/// # async fn f(listener: tokio::net::TcpListener, config: mailroom_sidecar::config::Config,
/// #     sink: std::sync::Arc<impl mailroom_sidecar::message::MessageSink>) {
/// let (_config_tx, config_rx) = tokio::sync::watch::channel(std::sync::Arc::new(config));
/// let (stop, stopped) = tokio::sync::watch::channel(false);
/// let metrics = mailroom_sidecar::metrics::Metrics::new();
/// let server = tokio::spawn(mailroom_sidecar::inbound::serve(listener, config_rx, sink, metrics, stopped));
/// // ... on SIGTERM:
/// let _ = stop.send(true);
/// let grace = std::time::Duration::from_secs(30);
/// // Dropping an unfinished `serve` future (deadline passed) aborts the remaining sessions.
/// let _ = tokio::time::timeout(grace, server).await;
/// # }
/// ```
pub async fn serve<K: MessageSink>(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    sink: Arc<K>,
    metrics: Metrics,
    mut shutdown: ShutdownSignal,
) {
    let mut sessions = JoinSet::new();
    let mut refused = JoinSet::new();
    let acceptors = tls::Acceptors::default();
    loop {
        // Ended sessions are reaped as they end, not when the next client connects: a task's
        // memory (its whole session state, 9 KiB in a release build) stays allocated until it is joined,
        // and after a burst of 50 sessions that was 0.7 MiB held while the pod sat idle.
        let accepted = tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break,
            Some(joined) = sessions.join_next() => {
                report_panic(joined);
                continue;
            }
            Some(_) = refused.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning; the loop itself never fails.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Replies are small writes: with Nagle, one sent while the client's ACK for the last is
        // delayed waits ~40 ms. A failure only costs latency, so it is logged and ignored.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let snapshot = config.borrow().clone();
        if sessions.len() >= snapshot.limits.max_connections {
            metrics
                .sessions
                .with_label_values(&[SessionEnd::Overloaded.as_str()])
                .inc();
            refused.spawn(async move {
                let mut line = Vec::new();
                reply::OVERLOADED.write_to(&mut line);
                let _ = tokio::time::timeout(OVERLOAD_WRITE_TIMEOUT, async {
                    stream.write_all(&line).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        }
        let Some(files) = snapshot.listen.tls.clone() else {
            let session = Session::new(stream, snapshot, sink.clone(), metrics.clone(), shutdown.clone())
                .with_peer(peer.ip());
            sessions.spawn(session.run());
            continue;
        };
        let acceptor = match acceptors.get(&files) {
            Ok(acceptor) => acceptor,
            Err(error) => {
                // Nothing is accepted without the certificate: the client sees a closed
                // connection and tries again later.
                tracing::error!(%error, "cannot load the listener's certificate; connection closed");
                metrics
                    .sessions
                    .with_label_values(&[SessionEnd::ProtocolError.as_str()])
                    .inc();
                continue;
            }
        };
        let session = tls::session(
            acceptor,
            stream,
            peer,
            snapshot,
            sink.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        sessions.spawn(session);
    }
    drop(listener);
    while let Some(joined) = sessions.join_next().await {
        report_panic(joined);
    }
    while refused.join_next().await.is_some() {}
}

/// A session task that panicked is a bug: its client saw the connection drop, and the log says
/// why.
fn report_panic<T>(joined: Result<T, tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::warn!(%error, "inbound session task failed");
    }
}
