//! `delivery.direct`: deliver to each recipient domain's mail exchangers (RFC 5321 5.1), with
//! the outbound TLS policy (RFC 3207 STARTTLS, RFC 8461 MTA-STS, RFC 7672 DANE).

use super::{Problem, default_command_timeout, default_connect_timeout};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf};

/// TLS towards mail exchangers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DirectTls {
    /// Use STARTTLS when offered, without verifying the certificate (RFC 7435); plain text
    /// when not offered (default).
    #[default]
    Opportunistic,
    /// Never send in plain text: a host that does not offer STARTTLS, or whose handshake
    /// fails, is skipped and the recipients are deferred.
    Require,
}

/// How MTA-STS policies (RFC 8461) are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum MtaStsMode {
    /// Policies are not fetched (default).
    #[default]
    Off,
    /// Policies are fetched and evaluated, and violations logged and counted, but never
    /// enforced, even for domains that publish `mode: enforce`.
    Testing,
    /// Policies are honoured as published: `mode: enforce` restricts MX hosts to the policy's
    /// patterns and requires a valid certificate (RFC 8461 5).
    Enforce,
}

/// Whether DANE (RFC 7672) is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DaneMode {
    /// No TLSA lookups and no DNSSEC validation (default).
    #[default]
    Off,
    /// Every DNS answer is DNSSEC-validated (bogus answers defer like SERVFAIL); for MX hosts
    /// reached through secure MX and address answers, TLSA records are looked up and, when
    /// usable ones exist, the certificate must match one of them (RFC 7672 2.2).
    On,
}

/// Direct delivery to the recipient domains' MX hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Direct {
    /// DNS resolvers as `ip:port`; default (empty): the system's `/etc/resolv.conf`, which in a
    /// pod is the cluster resolver.
    #[serde(default)]
    pub resolvers: Vec<SocketAddr>,
    /// SMTP port of the mail exchangers. Default 25 (RFC 5321 4.5.4); other values are for tests.
    #[serde(default = "default_port")]
    pub port: u16,
    /// TLS policy. Default `opportunistic`.
    #[serde(default)]
    pub tls: DirectTls,
    /// MTA-STS use. Default `off`.
    #[serde(default)]
    pub mta_sts: MtaStsMode,
    /// DANE use. Default `off`.
    #[serde(default)]
    pub dane: DaneMode,
    /// DNSSEC trust anchors for `dane: on`: a file of DNSKEY records in master-file syntax
    /// (`. IN DNSKEY 257 3 8 ...`). Default: the IANA root keys built into hickory-resolver;
    /// other anchors are for private roots and tests.
    #[serde(default)]
    pub dnssec_trust_anchor_file: Option<PathBuf>,
    /// Extra PEM CA bundle trusted, besides the system roots, where certificates are verified
    /// (MTA-STS policy hosts and MX hosts under an enforced policy).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTPS port of MTA-STS policy hosts. Default 443 (RFC 8461 3.3); other values are for tests.
    #[serde(default = "default_https_port")]
    pub mta_sts_port: u16,
    /// Connect timeout. Default 30.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Timeout for each SMTP command reply. Default 300 (RFC 5321 4.5.3.2).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Concurrent connections to one recipient domain. Default 4.
    #[serde(default = "default_per_domain")]
    pub max_connections_per_domain: usize,
    /// Addresses tried per domain and attempt, over all its MX hosts. Default 5 (as Postfix).
    #[serde(default = "default_max_hosts")]
    pub max_hosts: usize,
}

fn default_port() -> u16 {
    25
}
fn default_https_port() -> u16 {
    443
}
fn default_per_domain() -> usize {
    4
}
fn default_max_hosts() -> usize {
    5
}

impl Default for Direct {
    /// Every field at its documented default (what `direct: {}` gives).
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            port: default_port(),
            tls: DirectTls::default(),
            mta_sts: MtaStsMode::default(),
            dane: DaneMode::default(),
            dnssec_trust_anchor_file: None,
            ca_file: None,
            mta_sts_port: default_https_port(),
            connect_timeout_seconds: default_connect_timeout(),
            command_timeout_seconds: default_command_timeout(),
            max_connections_per_domain: default_per_domain(),
            max_hosts: default_max_hosts(),
        }
    }
}

impl Direct {
    /// Appends every problem of this section, with field paths under `delivery.direct`.
    pub fn validate(&self, p: &mut Vec<Problem>) {
        let mut bad = |field: &str, message: &str| {
            p.push(Problem {
                field: format!("delivery.direct.{field}"),
                message: message.into(),
            })
        };
        for (i, r) in self.resolvers.iter().enumerate() {
            if r.port() == 0 {
                bad(&format!("resolvers[{i}]"), "port must be between 1 and 65535");
            }
        }
        if self.port == 0 {
            bad("port", "must be between 1 and 65535");
        }
        if self.dnssec_trust_anchor_file.is_some() && self.dane == DaneMode::Off {
            bad("dnssecTrustAnchorFile", "is only used with dane: \"on\"");
        }
        if self.mta_sts_port == 0 {
            bad("mtaStsPort", "must be between 1 and 65535");
        }
        if self.connect_timeout_seconds == 0 {
            bad("connectTimeoutSeconds", "must be greater than 0");
        }
        if self.command_timeout_seconds == 0 {
            bad("commandTimeoutSeconds", "must be greater than 0");
        }
        if self.max_connections_per_domain == 0 {
            bad("maxConnectionsPerDomain", "must be greater than 0");
        }
        if !(1..=100).contains(&self.max_hosts) {
            bad("maxHosts", "must be between 1 and 100");
        }
    }
}
