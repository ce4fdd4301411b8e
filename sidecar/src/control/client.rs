//! The queue API's client: one HTTP/1.1 request per call over a fresh loopback connection.

use super::{ACTOR_HEADER, ErrorBody};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, body::Bytes};
use std::{net::SocketAddr, time::Duration};

/// How long one call may take (a hold or a bounce waits for an fsync).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answered at the address.
    #[error(
        "cannot reach the queue API at {addr}: {source} (is the sidecar running? --api names another address)"
    )]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("queue API at {addr}: {message}")]
    Transport {
        /// The address.
        addr: SocketAddr,
        /// What happened.
        message: String,
    },
    /// The API refused the request; its explanation.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's explanation.
        message: String,
    },
    /// The answer was not what this version expects.
    #[error("unexpected answer from the queue API: {0}")]
    Decode(String),
}

/// A client of one sidecar's queue API.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    actor: String,
}

impl Client {
    /// A client of the API at `addr`, asking as `actor`.
    pub fn new(addr: SocketAddr, actor: impl Into<String>) -> Self {
        Self {
            addr,
            actor: actor.into(),
        }
    }

    /// `GET path`, decoded.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::GET, path).await
    }

    /// `POST path` (no body), decoded.
    pub async fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::POST, path).await
    }

    /// `DELETE path`, decoded.
    pub async fn delete<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::DELETE, path).await
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, Error> {
        let addr = self.addr;
        let transport = |message: String| Error::Transport { addr, message };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| Error::Unreachable { addr, source })?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| transport(e.to_string()))?;
            tokio::spawn(conn);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, addr.to_string())
                .header(ACTOR_HEADER, &self.actor)
                .body(Empty::<Bytes>::new())
                .map_err(|e| transport(e.to_string()))?;
            let response = send
                .send_request(request)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {}s", TIMEOUT.as_secs())))??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| Error::Decode(e.to_string()))
    }
}
