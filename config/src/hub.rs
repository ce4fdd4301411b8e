//! The hub side of the config: a relay that listens on the pod network for its sidecars
//! (`listen.tls`, `listen.auth`), and a sidecar's `handoff` to such a hub (docs/hub.md).

use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

/// Default `handoff.port`.
pub const DEFAULT_HANDOFF_PORT: u16 = 2465;
/// Default `handoff.drainReserveSeconds`.
pub const DEFAULT_DRAIN_RESERVE_SECONDS: u64 = 10;

/// TLS from the first byte on the SMTP listener (RFC 8314 3): a hub's, on the pod network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenTls {
    /// PEM certificate chain (a mounted Secret; read at start and on reload).
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
}

/// The one credential every client of this listener must present with AUTH PLAIN (RFC 4616)
/// before MAIL. Read at each AUTH, so a rotated Secret applies without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenAuth {
    /// File holding the user name.
    pub username_file: PathBuf,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// Where a sidecar hands the mail it could not deliver: its Relay's hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handoff {
    /// The hub's host name (its Service), also the name its certificate must carry.
    pub host: String,
    /// The hub's port (implicit TLS). Default 2465.
    #[serde(default = "default_handoff_port")]
    pub port: u16,
    /// PEM CA bundle that signed the hub's certificate.
    pub ca_file: PathBuf,
    /// File holding the user name for AUTH PLAIN.
    pub username_file: PathBuf,
    /// File holding the password.
    pub password_file: PathBuf,
    /// Time of the drain deadline kept for the hand-off: delivery stops this long before it.
    /// Default 10.
    #[serde(default = "default_drain_reserve")]
    pub drain_reserve_seconds: u64,
    /// Hand off mail whose route has been parked this long, to keep pod spools small; absent:
    /// only at the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_parked_seconds: Option<u64>,
    /// Concurrent connections to the hub. Default 4.
    #[serde(default = "default_handoff_connections")]
    pub max_connections: usize,
    /// `durability: replicated`: store a shadow copy of each message on a hub before answering
    /// `250` (docs/hub.md). Absent: no shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadows: Option<ShadowCopies>,
}

/// Where a sidecar keeps shadow copies: its Relay's hub pods, each by its own name (a shadow
/// lives on one pod's volume, so the release must reach that pod). The owner's identity comes
/// from the `SIDECAR_POD_NAME` and `SIDECAR_POD_UID` environment variables (the webhook sets
/// them from the downward API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowCopies {
    /// The hub pods' host names (`<hub>-0.<hub>.<namespace>.svc`, …); each must be on the hub's
    /// certificate. The port, CA and credential are the hand-off's.
    pub hosts: Vec<String>,
    /// Connections to each hub pod for shadow copies: the number of messages whose copy can be
    /// in flight at once. Default 8.
    #[serde(default = "default_shadow_connections")]
    pub max_connections: usize,
}

/// On a hub: hold shadow copies for the pods of a namespace and deliver those of a pod that is
/// gone. Needs read access to those pods (the hub's ServiceAccount).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowOwners {
    /// The namespace of the owner pods (the Relay's).
    pub namespace: String,
    /// A label selector that matches every owner pod (e.g. `mailroom.dev/hub-client=outbound`).
    pub pod_selector: String,
    /// How often owners are checked against the apiserver. Default 5.
    #[serde(default = "default_owner_check")]
    pub check_seconds: u64,
}

impl ShadowOwners {
    /// `checkSeconds` as a `Duration`.
    pub fn check(&self) -> Duration {
        Duration::from_secs(self.check_seconds)
    }
}

fn default_shadow_connections() -> usize {
    8
}
fn default_owner_check() -> u64 {
    5
}

impl Handoff {
    /// `drainReserveSeconds` as a `Duration`.
    pub fn drain_reserve(&self) -> Duration {
        Duration::from_secs(self.drain_reserve_seconds)
    }
}

fn default_handoff_port() -> u16 {
    DEFAULT_HANDOFF_PORT
}
fn default_drain_reserve() -> u64 {
    DEFAULT_DRAIN_RESERVE_SECONDS
}
fn default_handoff_connections() -> usize {
    4
}
