//! Process settings from `OPERATOR_*` environment variables, read through [`Strings`] so tests
//! pass a map; every bad variable is reported at once.

mod webhook;

use std::{net::SocketAddr, time::Duration};

pub use webhook::*;

/// Namespace holding the DKIM key Secrets and the leader Lease.
pub const ENV_NAMESPACE: &str = "OPERATOR_NAMESPACE";
/// Admin server address (`/metrics`, `/livez`, `/readyz`).
pub const ENV_ADMIN_ADDR: &str = "OPERATOR_ADMIN_ADDR";
/// `true` (default) or `false`: take a Lease before reconciling.
pub const ENV_LEADER_ELECTION: &str = "OPERATOR_LEADER_ELECTION";
/// Name of the Lease.
pub const ENV_LEASE_NAME: &str = "OPERATOR_LEASE_NAME";
/// Seconds a Lease stays valid without renewal.
pub const ENV_LEASE_DURATION_SECONDS: &str = "OPERATOR_LEASE_DURATION_SECONDS";
/// This replica's identity in the Lease and in events (the chart sets the pod name).
pub const ENV_IDENTITY: &str = "OPERATOR_IDENTITY";
/// Comma-separated `ip:port` DNS servers for record checks; empty uses the system resolver.
pub const ENV_DNS_NAMESERVERS: &str = "OPERATOR_DNS_NAMESERVERS";
/// Seconds between DNS rechecks of a MailDomain.
pub const ENV_DNS_RECHECK_SECONDS: &str = "OPERATOR_DNS_RECHECK_SECONDS";
/// Log format: `plain` (default) or `json` (one object per line).
pub const ENV_LOG_FORMAT: &str = "OPERATOR_LOG_FORMAT";

/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "mailroom-system";
/// Default admin address.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8080";
/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "mailroom-operator";
/// Default Lease duration.
pub const DEFAULT_LEASE_DURATION_SECONDS: u64 = 15;
/// Default DNS recheck interval (10 minutes).
pub const DEFAULT_DNS_RECHECK_SECONDS: u64 = 600;

// The same env seam as the sidecar's (a trait so tests pass a map, not the process env).
pub use mailroom_config::settings::{Env, Strings};

/// Process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Namespace for DKIM key Secrets and the Lease.
    pub namespace: String,
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// Whether to take the Lease before reconciling.
    pub leader_election: bool,
    /// Lease name.
    pub lease_name: String,
    /// Lease validity without renewal.
    pub lease_duration: Duration,
    /// This replica's identity.
    pub identity: String,
    /// DNS servers for record checks; empty means the system resolver.
    pub dns_nameservers: Vec<SocketAddr>,
    /// Interval between DNS rechecks.
    pub dns_recheck: Duration,
    /// Webhook server, certificate and injection settings.
    pub webhook: WebhookSettings,
}

/// Every invalid variable, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid operator settings:\n{}", .0.join("\n"))]
pub struct SettingsError(pub Vec<String>);

// === impl Settings ===

impl Settings {
    /// Reads every `OPERATOR_*` variable, reporting all problems at once.
    pub fn parse(env: &dyn Strings) -> Result<Self, SettingsError> {
        let mut errors = Vec::new();
        let text =
            |name: &str, default: &str| env.get(name).filter(|v| !v.is_empty()).unwrap_or(default.into());
        let mut parse = |name: &str, default: &str| -> Option<u64> {
            let v = text(name, default);
            v.parse()
                .map_err(|_| errors.push(format!("  {name}={v}: not a whole number")))
                .ok()
        };
        let lease_secs = parse(
            ENV_LEASE_DURATION_SECONDS,
            &DEFAULT_LEASE_DURATION_SECONDS.to_string(),
        );
        let recheck = parse(ENV_DNS_RECHECK_SECONDS, &DEFAULT_DNS_RECHECK_SECONDS.to_string());
        let admin = text(ENV_ADMIN_ADDR, DEFAULT_ADMIN_ADDR);
        let admin_addr = admin
            .parse()
            .map_err(|_| errors.push(format!("  {ENV_ADMIN_ADDR}={admin}: not an ip:port address")))
            .ok();
        let leader = text(ENV_LEADER_ELECTION, "true");
        let leader_election = match leader.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                errors.push(format!("  {ENV_LEADER_ELECTION}={leader}: must be true or false"));
                None
            }
        };
        let mut dns_nameservers = Vec::new();
        for item in text(ENV_DNS_NAMESERVERS, "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match item.parse() {
                Ok(addr) => dns_nameservers.push(addr),
                Err(_) => errors.push(format!(
                    "  {ENV_DNS_NAMESERVERS}: {item:?} is not an ip:port address"
                )),
            }
        }
        let webhook = WebhookSettings::parse(env, &mut errors);
        // Read by main before anything else (logging starts first); validated here.
        let log_format = text(ENV_LOG_FORMAT, "plain");
        if !matches!(log_format.as_str(), "plain" | "json") {
            errors.push(format!("  {ENV_LOG_FORMAT}={log_format}: must be plain or json"));
        }
        let identity = env
            .get(ENV_IDENTITY)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("mailroom-operator-{}", std::process::id()));
        match (lease_secs, recheck, admin_addr, leader_election) {
            (Some(lease), Some(recheck), Some(admin_addr), Some(leader_election)) if errors.is_empty() => {
                Ok(Self {
                    namespace: text(ENV_NAMESPACE, DEFAULT_NAMESPACE),
                    admin_addr,
                    leader_election,
                    lease_name: text(ENV_LEASE_NAME, DEFAULT_LEASE_NAME),
                    lease_duration: Duration::from_secs(lease.max(1)),
                    identity,
                    dns_nameservers,
                    dns_recheck: Duration::from_secs(recheck.max(1)),
                    webhook,
                })
            }
            _ => Err(SettingsError(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::parse(&HashMap::new()).expect("valid");
        assert_eq!(s.namespace, DEFAULT_NAMESPACE);
        assert_eq!(s.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert!(s.leader_election);
        assert!(s.dns_nameservers.is_empty());
        assert_eq!(s.dns_recheck, Duration::from_secs(600));
    }

    #[test]
    fn every_bad_variable_is_reported() {
        let env = HashMap::from([
            (ENV_ADMIN_ADDR, "nope"),
            (ENV_LEADER_ELECTION, "maybe"),
            (ENV_DNS_NAMESERVERS, "127.0.0.1:53,x"),
            (ENV_DNS_RECHECK_SECONDS, "-1"),
            (ENV_LOG_FORMAT, "xml"),
            (webhook::ENV_SIDECAR_LOG_FORMAT, "yaml"),
            (webhook::ENV_SIDECAR_DRAIN_SECONDS, "soon"),
            (webhook::ENV_SIDECAR_SESSION_THREADS, "2000"),
        ]);
        let err = Settings::parse(&env).expect_err("invalid");
        assert_eq!(err.0.len(), 8, "{err}");
        assert!(
            err.0.iter().any(|e| e
                == "  OPERATOR_SIDECAR_SESSION_THREADS=2000: expected a number of threads up to 1024, or 0 for one per CPU"),
            "{err}"
        );
    }

    #[test]
    fn sidecar_session_threads_are_left_to_the_sidecar_unless_set() {
        let s = Settings::parse(&HashMap::new()).expect("valid");
        assert_eq!(s.webhook.sidecar_session_threads, None);
        for (v, want) in [("0", Some(0)), ("4", Some(4)), ("", None)] {
            let env = HashMap::from([(webhook::ENV_SIDECAR_SESSION_THREADS, v)]);
            let s = Settings::parse(&env).expect("valid");
            assert_eq!(s.webhook.sidecar_session_threads, want, "{v:?}");
        }
    }

    #[test]
    fn nameservers_are_parsed_in_order() {
        let env = HashMap::from([(ENV_DNS_NAMESERVERS, "127.0.0.1:5353, [::1]:53")]);
        let s = Settings::parse(&env).expect("valid");
        assert_eq!(s.dns_nameservers.len(), 2);
        assert_eq!(s.dns_nameservers[0].port(), 5353);
    }
}
