//! Defaults of every optional config field (documented in docs/sidecar-config.md).

use super::*;

pub(super) fn default_relay_name() -> String {
    "default".into()
}
pub(super) fn default_hostname() -> String {
    "localhost".into()
}
pub(super) fn default_listen_addr() -> SocketAddr {
    DEFAULT_LISTEN_ADDR.parse().expect("constant address parses")
}
pub(super) fn default_admin_addr() -> SocketAddr {
    DEFAULT_ADMIN_ADDR.parse().expect("constant address parses")
}
pub(super) fn default_queue_api_addr() -> SocketAddr {
    DEFAULT_QUEUE_API_ADDR.parse().expect("constant address parses")
}
pub(super) fn default_max_message_bytes() -> u64 {
    25 * 1024 * 1024
}
pub(super) fn default_max_recipients() -> usize {
    100
}
pub(super) fn default_max_connections() -> usize {
    256
}
/// RFC 5321 4.5.3.1.4 sets 512 octets for a command line and lets each service extension add
/// to it: SIZE (RFC 1870 adds 26), BODY=8BITMIME and SMTPUTF8 parameters, and RFC 3461 4 adds
/// 500 octets to RCPT for ORCPT. 1024 covers all of these with a full-length address; more only
/// helps a client that keeps a connection busy with junk.
pub(super) fn default_max_line_bytes() -> usize {
    1024
}
pub(super) fn default_idle_timeout() -> u64 {
    300
}
pub(super) fn default_data_timeout() -> u64 {
    180
}
pub(super) fn default_command_deadline() -> u64 {
    60
}
pub(super) fn default_data_deadline_floor() -> u64 {
    60
}
pub(super) fn default_data_min_bytes_per_second() -> u64 {
    1024
}
pub(super) fn default_max_bad_commands() -> u32 {
    10
}
pub(super) fn default_spool_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
pub(super) fn default_spool_max_messages() -> u64 {
    100_000
}
/// About 6,000 delivery records with an RSA-2048 DKIM signature each, or 200,000 without.
pub(super) fn default_spool_reserve_bytes() -> u64 {
    4 * 1024 * 1024
}
pub(super) fn default_smarthost_port() -> u16 {
    587
}
pub(super) fn default_auth_mechanism() -> AuthMechanism {
    AuthMechanism::Plain
}
pub(crate) fn default_connect_timeout() -> u64 {
    30
}
pub(crate) fn default_command_timeout() -> u64 {
    300
}
pub(super) fn default_smarthost_connections() -> usize {
    4
}
pub(super) fn default_retry_initial() -> u64 {
    60
}
pub(super) fn default_retry_multiplier() -> f64 {
    2.0
}
pub(super) fn default_retry_max() -> u64 {
    3600
}
pub(super) fn default_retry_max_age() -> u64 {
    5 * 24 * 3600
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            address: default_listen_addr(),
            allow_non_loopback: false,
            tls: None,
            auth: None,
        }
    }
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: default_admin_addr(),
            queue_api_address: default_queue_api_addr(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_line_bytes: default_max_line_bytes(),
            idle_timeout_seconds: default_idle_timeout(),
            data_timeout_seconds: default_data_timeout(),
            command_deadline_seconds: default_command_deadline(),
            data_deadline_floor_seconds: default_data_deadline_floor(),
            data_min_bytes_per_second: default_data_min_bytes_per_second(),
            max_bad_commands: default_max_bad_commands(),
            bare_line_endings: BareLineEndings::default(),
            rate_per_minute: None,
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial_seconds: default_retry_initial(),
            multiplier: default_retry_multiplier(),
            max_seconds: default_retry_max(),
            max_age_seconds: default_retry_max_age(),
        }
    }
}
