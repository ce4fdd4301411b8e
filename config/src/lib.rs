//! The contract between the operator and the sidecar, and nothing else: the relay config file
//! (`kind: SidecarConfig`) with its serde types, defaults and `validate()`, and the sidecar's
//! process settings ([`settings`]: the `SIDECAR_*` environment variables and the [`settings::Strings`]
//! seam). The operator renders this document and the sidecar loads it; both depend on this crate,
//! and the operator on nothing else of the sidecar's. docs/sidecar-config.md documents every field.

pub mod address;
mod defaults;
mod direct;
mod hub;
pub mod settings;
mod validate;

use defaults::*;
pub use validate::is_hostname;

pub use direct::{DaneMode, Direct, DirectTls, MtaStsMode};
pub use hub::{
    DEFAULT_DRAIN_RESERVE_SECONDS, DEFAULT_HANDOFF_PORT, Handoff, ListenAuth, ListenTls, ShadowCopies,
    ShadowOwners,
};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "mailroom.dev/v1alpha1";
/// The only `kind` this build understands.
pub const KIND: &str = "SidecarConfig";
/// Default SMTP listen address: loopback only.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:2525";
/// Default admin (metrics, probes) address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9465";
/// Default queue API address (always loopback).
pub const DEFAULT_QUEUE_API_ADDR: &str = "127.0.0.1:9466";

/// Errors loading or validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid `SidecarConfig` document.
    #[error("config file {path}: {field}: {message}")]
    Parse {
        /// The path given.
        path: PathBuf,
        /// The field path where parsing failed (`.` for the document).
        field: String,
        /// What serde said.
        message: String,
    },
    /// The document parsed but some values are not acceptable; every problem is listed.
    #[error("config file {path} is invalid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// One entry per problem, each starting with the field path.
        problems: Vec<Problem>,
    },
}

/// One validation problem: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path, e.g. `delivery.smarthost.port`.
    pub field: String,
    /// A sentence saying what is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The whole config document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// Name of the relay this sidecar serves (`namespace/name` in Kubernetes); a metric label.
    #[serde(default = "default_relay_name")]
    pub relay: String,
    /// Host name used in EHLO, the greeting, Received headers and DSNs.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// SMTP listener.
    #[serde(default)]
    pub listen: Listen,
    /// Admin HTTP server (metrics, probes).
    #[serde(default)]
    pub admin: Admin,
    /// Limits applied to inbound sessions.
    #[serde(default)]
    pub limits: Limits,
    /// Sender domains this relay may send as; MAIL FROM and From: must be one of them.
    pub domains: Vec<Domain>,
    /// Where `RCPT TO:<postmaster>` (no domain, RFC 5321 4.5.1) is delivered: the postmaster of
    /// this relay. Absent: `postmaster@<the first sender domain>` ([`Config::postmaster`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<String>,
    /// Durable message store.
    pub spool: Spool,
    /// How mail leaves: a map with exactly one key, `smarthost`, `direct` or `capture`.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub delivery: Delivery,
    /// Retry schedule for deferred recipients.
    #[serde(default)]
    pub retry: Retry,
    /// Bounce (DSN) settings.
    #[serde(default)]
    pub bounces: Bounces,
    /// The Relay's hub, to which this sidecar hands what it has not delivered when it drains
    /// (docs/hub.md); absent: undelivered mail stays in the spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// On a hub: hold shadow copies for its sidecars and deliver those whose pod is gone
    /// (docs/hub.md); absent: shadow copies are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadows: Option<ShadowOwners>,
    /// The delivery trail: one log line per recipient outcome.
    #[serde(default, skip_serializing_if = "Trail::is_default")]
    pub trail: Trail,
    /// Per-destination concurrency and rate.
    #[serde(default, skip_serializing_if = "is_default_shaping")]
    pub shaping: Shaping,
}

/// The delivery trail: one log line per recipient outcome (delivered, deferred, bounced,
/// expired, handed off), like Postfix's `status=` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trail {
    /// Log recipient addresses in full. Default `false`: only the domain (`***@example.net`),
    /// in the recipient field and in the reply text of the remote server.
    #[serde(default)]
    pub full_recipients: bool,
}

impl Trail {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// SMTP listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// Address to listen on. Default `127.0.0.1:2525`.
    #[serde(default = "default_listen_addr")]
    pub address: SocketAddr,
    /// Must be `true` to listen on a non-loopback address (the sidecar is not an open relay).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Implicit TLS on this listener (a hub). Absent: plain text (loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenTls>,
    /// A credential every client must present before MAIL (a hub); it also enables the
    /// XHANDOFF extension. Requires `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ListenAuth>,
}

/// Per-destination traffic shaping: how many attempts at once and how many messages a minute
/// may go to one recipient domain (docs/operations.md "Per-destination shaping").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shaping {
    /// Every domain not listed in `domains`.
    #[serde(default)]
    pub default: DestinationLimits,
    /// By recipient domain (lower case), e.g. `gmail.com`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub domains: std::collections::BTreeMap<String, DestinationLimits>,
}

/// The limits of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationLimits {
    /// Delivery attempts to this destination at once. Absent: with direct delivery its
    /// `maxConnectionsPerDomain` (a destination never holds more attempts than it has
    /// connections, so a slow one leaves the other slots to the others); with a smarthost, its
    /// connections (set a lower default to keep room for the other destinations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Messages to this destination a minute (a minute's worth may go at once). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
}

/// Admin server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    /// Address of `/metrics`, `/livez`, `/readyz`. Default `127.0.0.1:9465`.
    #[serde(default = "default_admin_addr")]
    pub address: SocketAddr,
    /// Address of the queue API (`mailroom-sidecar queue ...`, docs/operations.md "Day two").
    /// Loopback only: it can read envelopes and delete mail. Default `127.0.0.1:9466`.
    #[serde(default = "default_queue_api_addr")]
    pub queue_api_address: SocketAddr,
}

/// What to do with a bare CR or LF inside DATA (RFC 5321 2.3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum BareLineEndings {
    /// Reject the message with `550 5.5.2` (default; immune to SMTP smuggling).
    #[default]
    Reject,
    /// Rewrite each bare CR or LF as CRLF.
    Normalize,
}

/// Inbound limits. Defaults are safe for a per-pod relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted message (SIZE). Default 25 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Recipients per message. Default 100 (RFC 5321 4.5.3.1.8 minimum).
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Concurrent inbound connections. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest command line including CRLF. Default 1024: the 512 of RFC 5321 4.5.3.1.4 plus what
    /// the SMTP extensions add to it (RFC 3461 4: 500 for ORCPT); at least 512.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Idle time allowed while waiting for a command. Default 300 (RFC 5321 4.5.3.2.7).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Time allowed between two reads of DATA. Default 180 (RFC 5321 4.5.3.2.6).
    #[serde(default = "default_data_timeout")]
    pub data_timeout_seconds: u64,
    /// A command line must be complete this long after its first byte arrived, however the
    /// bytes trickle in; then `421 4.4.2`. Default 60.
    #[serde(default = "default_command_deadline")]
    pub command_deadline_seconds: u64,
    /// DATA may always take this long; past it, it must average `dataMinBytesPerSecond` or get
    /// `421 4.4.2`. Default 60.
    #[serde(default = "default_data_deadline_floor")]
    pub data_deadline_floor_seconds: u64,
    /// The slowest average DATA rate allowed after `dataDeadlineFloorSeconds`. Default 1024.
    #[serde(default = "default_data_min_bytes_per_second")]
    pub data_min_bytes_per_second: u64,
    /// Bad commands tolerated before the connection is closed. Default 10.
    #[serde(default = "default_max_bad_commands")]
    pub max_bad_commands: u32,
    /// Messages accepted per minute by this sidecar (token bucket, bursts up to a minute's worth);
    /// over it new mail gets `451 4.7.1`. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Treatment of bare CR/LF in message data. Default `reject`.
    #[serde(default)]
    pub bare_line_endings: BareLineEndings,
}

/// A sender domain and how to sign its mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Domain {
    /// The domain, e.g. `example.com`; lowercase ASCII (A-labels for IDNs).
    pub domain: String,
    /// DKIM signing for this domain; absent means unsigned.
    #[serde(default)]
    pub dkim: Option<Dkim>,
}

/// DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376); key file is PKCS#1 or PKCS#8 PEM.
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463); key file is PKCS#8 PEM.
    Ed25519Sha256,
}

/// DKIM signing settings for one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dkim {
    /// Selector: the record is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// Signing algorithm.
    pub algorithm: DkimAlgorithm,
    /// PEM private key file (a mounted Secret in Kubernetes).
    pub key_file: PathBuf,
}

/// Spool settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spool {
    /// Directory for the spool; created if missing.
    pub dir: PathBuf,
    /// Bytes of queued mail before new mail gets `452 4.3.1`. Default 1 GiB.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Queued messages before new mail gets `452 4.3.1`. Default 100000.
    #[serde(default = "default_spool_max_messages")]
    pub max_messages: u64,
    /// Disk space held back for delivery records (a message's DKIM signature, its recipients'
    /// and its own completion) for when the disk fills: while it is in use new mail gets
    /// `452 4.3.1`, so mail already accepted is never sent twice after a crash. Default 4 MiB.
    #[serde(default = "default_spool_reserve_bytes")]
    pub reserve_bytes: u64,
}

/// How mail leaves: exactly one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Delivery {
    /// Relay everything through one smarthost.
    Smarthost(Smarthost),
    /// Deliver to each recipient domain's MX hosts.
    Direct(Direct),
    /// Keep every message as an `.eml` file (staging, quick start); nothing is sent.
    Capture(Capture),
}

/// TLS to the smarthost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// STARTTLS, required: a server that does not offer it gets nothing (default).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
    /// Plain text; only when set explicitly.
    None,
}

/// SMTP AUTH mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthMechanism {
    /// AUTH PLAIN (RFC 4616).
    Plain,
    /// AUTH LOGIN.
    Login,
    /// AUTH XOAUTH2 (password file holds the access token).
    Xoauth2,
}

/// Smarthost credentials, read from files at each connection (rotated Secrets apply without restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// Mechanism; default `plain`.
    #[serde(default = "default_auth_mechanism")]
    pub mechanism: AuthMechanism,
    /// File holding the user name.
    pub username_file: PathBuf,
    /// File holding the password or token.
    pub password_file: PathBuf,
}

/// The smarthost route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Smarthost {
    /// Host name or IP address.
    pub host: String,
    /// TCP port. Default 587.
    #[serde(default = "default_smarthost_port")]
    pub port: u16,
    /// TLS mode. Default `starttls`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM CA bundle to verify the server; default: system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Credentials; absent means no AUTH.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Connect timeout. Default 30.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Timeout for each SMTP command reply. Default 300 (RFC 5321 4.5.3.2).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Concurrent connections to the smarthost. Default 4.
    #[serde(default = "default_smarthost_connections")]
    pub max_connections: usize,
    /// A second smarthost, used when this one is parked (down) or answers a recipient with a
    /// temporary failure (4xx); its own TLS, CA and credentials. It has no backup of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Box<Smarthost>>,
}

/// Capture delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capture {
    /// Directory receiving one `<id>.eml` per message.
    pub dir: PathBuf,
}

/// Retry schedule: jittered exponential backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// First retry after this long. Default 60.
    #[serde(default = "default_retry_initial")]
    pub initial_seconds: u64,
    /// Each retry waits this many times longer than the one before. Default 2.
    #[serde(default = "default_retry_multiplier")]
    pub multiplier: f64,
    /// Cap on the wait between two attempts. Default 3600.
    #[serde(default = "default_retry_max")]
    pub max_seconds: u64,
    /// Give up (and bounce) after a message has been queued this long. Default 432000 (5 days).
    #[serde(default = "default_retry_max_age")]
    pub max_age_seconds: u64,
}

/// Bounce settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bounces {
    /// Send a delay notice (RFC 3464 `Action: delayed`) once a message has waited this long; off when absent.
    #[serde(default)]
    pub delay_notice_after_seconds: Option<u64>,
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is used in error messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| Error::Parse {
            path: path.to_owned(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// The address `RCPT TO:<postmaster>` is delivered to: `postmaster`, or
    /// `postmaster@<the first sender domain>`.
    pub fn postmaster(&self) -> String {
        match (&self.postmaster, self.domains.first()) {
            (Some(address), _) => address.clone(),
            (None, Some(d)) => format!("postmaster@{}", d.domain),
            // No domains: every message is refused, but the host name is still an answer.
            (None, None) => format!("postmaster@{}", self.hostname),
        }
    }

    /// The configured sender domain matching `domain` (ASCII case-insensitive).
    pub fn domain(&self, domain: &str) -> Option<&Domain> {
        self.domains
            .iter()
            .find(|d| d.domain.eq_ignore_ascii_case(domain))
    }
}

impl Limits {
    /// Idle timeout as a `Duration`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// DATA read timeout as a `Duration`.
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout_seconds)
    }

    /// How long one command line may take from its first byte.
    pub fn command_deadline(&self) -> Duration {
        Duration::from_secs(self.command_deadline_seconds)
    }

    /// How long DATA may have taken once `received` octets have arrived: the floor, plus the
    /// time those octets need at the minimum rate.
    pub fn data_deadline(&self, received: u64) -> Duration {
        let rate = self.data_min_bytes_per_second.max(1);
        Duration::from_secs(self.data_deadline_floor_seconds)
            .saturating_add(Duration::from_secs_f64(received as f64 / rate as f64))
    }
}

#[cfg(test)]
mod tests;

fn is_default_shaping(s: &Shaping) -> bool {
    *s == Shaping::default()
}
