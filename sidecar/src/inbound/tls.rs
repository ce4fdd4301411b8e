//! TLS from the first byte on a hub's listener (RFC 8314 3), with the certificate the operator
//! issues. The files are checked at each connection and read again when they change, so a
//! renewed certificate applies without a restart.

use super::{Session, ShutdownSignal};
use crate::{
    config::{Config, ListenTls},
    message::MessageSink,
    metrics::{Metrics, SessionEnd},
    sync::lock,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Time allowed for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection of a TLS listener: the handshake, then the session over it. A failed or slow
/// handshake ends the connection and is counted like a session that ended so.
pub(super) async fn session<K: MessageSink>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    sink: Arc<K>,
    metrics: Metrics,
    shutdown: ShutdownSignal,
) -> SessionEnd {
    let end = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            return Session::new(tls, config, sink, metrics, shutdown)
                .with_peer(peer.ip())
                .run()
                .await;
        }
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            SessionEnd::ProtocolError
        }
        Err(_) => SessionEnd::Timeout,
    };
    metrics.sessions.with_label_values(&[end.as_str()]).inc();
    end
}

/// The listener's certificate could not be used.
#[derive(Debug, thiserror::Error)]
#[error("listen.tls: {0}")]
pub struct TlsError(String);

/// The acceptor for the current certificate files.
#[derive(Default)]
pub struct Acceptors {
    current: Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptors").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Loaded {
    files: ListenTls,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    acceptor: TlsAcceptor,
}

impl Acceptors {
    /// The acceptor for `files`, read again if either file changed since the last call.
    pub fn get(&self, files: &ListenTls) -> Result<TlsAcceptor, TlsError> {
        let stamps = (modified(&files.cert_file), modified(&files.key_file));
        let mut current = lock(&self.current);
        if let Some(l) = current.as_ref()
            && l.files == *files
            && l.stamps == stamps
        {
            return Ok(l.acceptor.clone());
        }
        let acceptor = load(files)?;
        *current = Some(Loaded {
            files: files.clone(),
            stamps,
            acceptor: acceptor.clone(),
        });
        Ok(acceptor)
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the certificate chain and key and builds the acceptor.
pub fn load(files: &ListenTls) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("certFile {}: {e}", files.cert_file.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "certFile {}: no PEM certificate in it",
            files.cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| TlsError(format!("keyFile {}: {e}", files.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certFile and keyFile do not make a usable pair: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
