//! Outbound delivery: the [`Transport`] seam, per-recipient [`RcptResult`]s and the one place
//! where transport errors become an [`Outcome`].

pub mod capture;
pub mod classify;
pub mod client;
mod command;
pub mod direct;
pub mod failover;
pub mod park;
pub mod pool;
pub mod shadow;
pub mod smarthost;
pub mod starttls;
mod stuffing;
pub mod tls;

pub use capture::CaptureTransport;
pub use classify::classify;
pub use direct::DirectTransport;
pub use smarthost::{DeliveryError, SmarthostTransport};

use crate::message::{Envelope, Recipient};
use std::future::Future;

/// What happened to one recipient in one attempt. Retry, DSN and metrics all read this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted responsibility (2xx after DATA).
    Delivered,
    /// Temporary failure: 4xx, connection, TLS or timeout. Retried.
    Deferred,
    /// Permanent failure: 5xx. Bounced to the sender.
    Bounced,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }
}

/// Coarse reply class for the `reply_class` metric label (never the reply text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx.
    Ok,
    /// 4xx reply.
    Transient,
    /// 5xx reply.
    Permanent,
    /// No reply in time.
    Timeout,
    /// TCP connect or I/O failure.
    Connection,
    /// TLS handshake or certificate failure, or TLS required but not offered.
    Tls,
    /// AUTH rejected or credentials unreadable.
    Auth,
    /// The next hop spoke something that is not SMTP.
    Protocol,
    /// A DNS lookup failed temporarily (direct delivery).
    Dns,
}

impl ReplyClass {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "2xx",
            Self::Transient => "4xx",
            Self::Permanent => "5xx",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::Protocol => "protocol",
            Self::Dns => "dns",
        }
    }
}

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// What happened.
    pub outcome: Outcome,
    /// For the metric label.
    pub class: ReplyClass,
    /// Human-readable diagnostic for logs and DSNs, e.g. `550 5.1.1 no such user` or
    /// `connection to smtp.example.net:587 refused`. Never a metric label.
    pub diagnostic: String,
    /// The next hop advertised DSN and was given this recipient's NOTIFY and ORCPT (RFC 3461
    /// 5.2.1): from here on it sends the reports, so a delivered recipient that asked for
    /// SUCCESS gets no "relayed" notice from us (RFC 3461 5.2.2).
    pub next_hop_dsn: bool,
    /// The server that gave the reply (the smarthost, the hub or the mail exchanger), when one
    /// did; for the delivery trail.
    pub remote: Option<String>,
}

/// `results` with `host` as the server that gave each reply.
pub(crate) fn with_remote(mut results: Vec<RcptResult>, host: &str) -> Vec<RcptResult> {
    for r in &mut results {
        r.remote = Some(host.to_owned());
    }
    results
}

/// Route label values (bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the configured smarthost.
    Smarthost,
    /// Written to the capture directory.
    Capture,
    /// To the recipient domains' MX hosts.
    Direct,
    /// Handed to the Relay's hub (docs/hub.md).
    Hub,
    /// Through the backup smarthost (`delivery.smarthost.backup`).
    Backup,
}

impl Route {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smarthost => "smarthost",
            Self::Capture => "capture",
            Self::Direct => "direct",
            Self::Hub => "hub",
            Self::Backup => "backup",
        }
    }
}

/// Delivers one message to some of its recipients.
pub trait Transport: Send + Sync + 'static {
    /// The route label of this transport.
    fn route(&self) -> Route;
    /// Tries `rcpts` (a subset of `envelope.recipients`, with their DSN parameters) once;
    /// returns one result per recipient, in order. Never panics; every failure is a result.
    fn deliver(
        &self,
        envelope: &Envelope,
        rcpts: &[Recipient],
        message: &[u8],
    ) -> impl Future<Output = Vec<RcptResult>> + Send;
    /// Whether the route is parked (down); the queue then holds mail instead of trying it.
    fn parked(&self) -> bool {
        false
    }
    /// [`Transport::deliver`], also saying which route took each recipient (a transport with a
    /// backup uses two).
    fn deliver_routed(
        &self,
        envelope: &Envelope,
        rcpts: &[Recipient],
        message: &[u8],
    ) -> impl Future<Output = (Vec<RcptResult>, Vec<Route>)> + Send {
        async move {
            let results = self.deliver(envelope, rcpts, message).await;
            let routes = vec![self.route(); results.len()];
            (results, routes)
        }
    }
    /// Closes pooled connections idle for [`pool::IDLE_TIMEOUT`] or longer (QUIT goes out in
    /// the background); the queue calls it every second.
    fn close_stale(&self) {}
    /// An administrator asked for an attempt now (`queue flush`): open a parked route for the
    /// next attempt, which parks it again if it still fails. Returns whether it was parked.
    fn unpark(&self) -> bool {
        false
    }
}
