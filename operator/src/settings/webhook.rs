//! Webhook and injection settings (`OPERATOR_WEBHOOK_*`, `OPERATOR_SIDECAR_*`,
//! `OPERATOR_INJECT_ON_MISSING_RELAY`); parsed as part of [`super::Settings`].

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use k8s_openapi::{
    api::core::v1::{Capabilities, ResourceRequirements, SeccompProfile, SecurityContext},
    apimachinery::pkg::api::resource::Quantity,
};

use super::Strings;

/// Webhook server address, or `off` to disable the webhook.
pub const ENV_WEBHOOK_ADDR: &str = "OPERATOR_WEBHOOK_ADDR";
/// `self` (the operator issues and rotates its certificate) or `external` (cert-manager).
pub const ENV_WEBHOOK_CERT_MODE: &str = "OPERATOR_WEBHOOK_CERT_MODE";
/// Secret (in `OPERATOR_NAMESPACE`) holding `ca.crt`, `tls.crt`, `tls.key`.
pub const ENV_WEBHOOK_SECRET: &str = "OPERATOR_WEBHOOK_SECRET";
/// Service name the apiserver calls; the certificate is issued for `<service>.<ns>.svc`.
pub const ENV_WEBHOOK_SERVICE: &str = "OPERATOR_WEBHOOK_SERVICE";
/// MutatingWebhookConfiguration whose `caBundle` the operator patches (self mode).
pub const ENV_WEBHOOK_CONFIG: &str = "OPERATOR_WEBHOOK_CONFIG";
/// Image of injected sidecars.
pub const ENV_SIDECAR_IMAGE: &str = "OPERATOR_SIDECAR_IMAGE";
/// Drain deadline of injected sidecars in seconds, capped by each pod's grace period minus 5 s;
/// unset or 0: derived from the grace period alone.
pub const ENV_SIDECAR_DRAIN_SECONDS: &str = "OPERATOR_SIDECAR_DRAIN_SECONDS";
/// Session threads of injected sidecars (their `SIDECAR_SESSION_THREADS`); unset leaves the
/// sidecar's default, and a pod's `mailroom.dev/session-threads` annotation overrides it.
pub const ENV_SIDECAR_SESSION_THREADS: &str = "OPERATOR_SIDECAR_SESSION_THREADS";
/// Log format of injected sidecars: `plain` (default) or `json` (their `SIDECAR_LOG_FORMAT`).
pub const ENV_SIDECAR_LOG_FORMAT: &str = "OPERATOR_SIDECAR_LOG_FORMAT";
/// JSON `ResourceRequirements` of injected sidecars.
pub const ENV_SIDECAR_RESOURCES: &str = "OPERATOR_SIDECAR_RESOURCES";
/// Pull policy of injected sidecars: `Always`, `IfNotPresent`, `Never`; empty leaves Kubernetes'
/// default (`Always` for `:latest`, else `IfNotPresent`).
pub const ENV_SIDECAR_PULL_POLICY: &str = "OPERATOR_SIDECAR_PULL_POLICY";
/// Comma-separated Secret names added to the `imagePullSecrets` of every injected pod.
pub const ENV_SIDECAR_IMAGE_PULL_SECRETS: &str = "OPERATOR_SIDECAR_IMAGE_PULL_SECRETS";
/// JSON `SecurityContext` of injected sidecars, replacing the default (see
/// [`default_security_context`]); OpenShift's restricted-v2 wants one without `runAsUser`.
pub const ENV_SIDECAR_SECURITY_CONTEXT: &str = "OPERATOR_SIDECAR_SECURITY_CONTEXT";
/// `deny` (default) or `allow`: what to do with a pod whose Relay is missing or not Ready.
pub const ENV_INJECT_ON_MISSING_RELAY: &str = "OPERATOR_INJECT_ON_MISSING_RELAY";

/// Default webhook address.
pub const DEFAULT_WEBHOOK_ADDR: &str = "0.0.0.0:9443";
/// Default serving certificate Secret.
pub const DEFAULT_WEBHOOK_SECRET: &str = "mailroom-webhook-tls";
/// Default webhook Service.
pub const DEFAULT_WEBHOOK_SERVICE: &str = "mailroom-webhook";
/// Default MutatingWebhookConfiguration name.
pub const DEFAULT_WEBHOOK_CONFIG: &str = "mailroom-sidecar-injector";
/// The sidecar's default user and group (the distroless `nonroot` user the image runs as).
pub const SIDECAR_UID: i64 = 65532;
/// Default sidecar image repository; the tag is this crate's version.
pub const DEFAULT_SIDECAR_REPOSITORY: &str = "ghcr.io/mailroom-dev/mailroom-sidecar";
/// The one path the webhook serves.
pub const WEBHOOK_PATH: &str = "/mutate";

/// Who provides the serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertMode {
    /// The operator keeps a CA and a serving certificate in the Secret and patches `caBundle`.
    SelfSigned,
    /// Someone else (cert-manager) writes the Secret and the `caBundle`; we only read and reload.
    External,
}

/// What to do with a pod that asks for a Relay that is missing or not Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingRelay {
    /// Reject the pod with a message naming the Relay and its Ready reason.
    Deny,
    /// Admit the pod unchanged, with an admission warning.
    Allow,
}

/// Webhook server, certificate and injection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// Listen address; `None` when `OPERATOR_WEBHOOK_ADDR=off`.
    pub addr: Option<SocketAddr>,
    /// Certificate mode.
    pub cert_mode: CertMode,
    /// Serving certificate Secret name (in the operator namespace).
    pub secret: String,
    /// Service name (certificate DNS names).
    pub service: String,
    /// MutatingWebhookConfiguration name.
    pub config: String,
    /// Sidecar image.
    pub sidecar_image: String,
    /// Sidecar resources.
    pub sidecar_resources: ResourceRequirements,
    /// Sidecar pull policy; `None` leaves Kubernetes' default.
    pub sidecar_pull_policy: Option<String>,
    /// Pull secrets added to injected pods.
    pub sidecar_pull_secrets: Vec<String>,
    /// Security context of the sidecar container.
    pub sidecar_security_context: SecurityContext,
    /// Sidecar log format (`plain` or `json`).
    pub sidecar_log_format: String,
    /// Default drain deadline of injected sidecars (capped by the pod's grace period).
    pub sidecar_drain_seconds: Option<u32>,
    /// Session threads of injected sidecars; `None` leaves the sidecar's default.
    pub sidecar_session_threads: Option<usize>,
    /// Missing or not-Ready Relay policy.
    pub on_missing_relay: MissingRelay,
    /// Extra certificate names (IP addresses or DNS names). Not from env: tests that register the
    /// webhook by `https://127.0.0.1:<port>` URL add `127.0.0.1`.
    pub extra_names: Vec<String>,
    /// Serving certificate lifetime (self mode). Not from env; tests shorten it.
    pub cert_validity: Duration,
    /// CA lifetime (self mode). Not from env; tests shorten it.
    pub ca_validity: Duration,
    /// How often the Secret is re-read (renewal, reload, caBundle). Not from env.
    pub check_interval: Duration,
}

// === impl WebhookSettings ===

impl WebhookSettings {
    /// Reads the webhook variables; problems are appended to `errors`.
    pub fn parse(env: &dyn Strings, errors: &mut Vec<String>) -> Self {
        let text =
            |name: &str, default: &str| env.get(name).filter(|v| !v.is_empty()).unwrap_or(default.into());
        let addr_text = text(ENV_WEBHOOK_ADDR, DEFAULT_WEBHOOK_ADDR);
        let addr = match addr_text.as_str() {
            "off" => None,
            other => other
                .parse()
                .map_err(|_| {
                    errors.push(format!(
                        "  {ENV_WEBHOOK_ADDR}={other}: not an ip:port address or off"
                    ))
                })
                .ok(),
        };
        let cert_mode = match text(ENV_WEBHOOK_CERT_MODE, "self").as_str() {
            "self" => CertMode::SelfSigned,
            "external" => CertMode::External,
            other => {
                errors.push(format!(
                    "  {ENV_WEBHOOK_CERT_MODE}={other}: must be self or external"
                ));
                CertMode::SelfSigned
            }
        };
        let on_missing_relay = match text(ENV_INJECT_ON_MISSING_RELAY, "deny").as_str() {
            "deny" => MissingRelay::Deny,
            "allow" => MissingRelay::Allow,
            other => {
                errors.push(format!(
                    "  {ENV_INJECT_ON_MISSING_RELAY}={other}: must be deny or allow"
                ));
                MissingRelay::Deny
            }
        };
        let sidecar_resources = match env.get(ENV_SIDECAR_RESOURCES).filter(|v| !v.trim().is_empty()) {
            None => default_resources(),
            Some(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
                errors.push(format!(
                    "  {ENV_SIDECAR_RESOURCES}: not a JSON ResourceRequirements object: {e}"
                ));
                default_resources()
            }),
        };
        let sidecar_security_context = match env
            .get(ENV_SIDECAR_SECURITY_CONTEXT)
            .filter(|v| !v.trim().is_empty())
        {
            None => default_security_context(),
            Some(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
                errors.push(format!(
                    "  {ENV_SIDECAR_SECURITY_CONTEXT}: not a JSON SecurityContext object: {e}"
                ));
                default_security_context()
            }),
        };
        let sidecar_pull_policy = match text(ENV_SIDECAR_PULL_POLICY, "").as_str() {
            "" => None,
            p @ ("Always" | "IfNotPresent" | "Never") => Some(p.to_string()),
            other => {
                errors.push(format!(
                    "  {ENV_SIDECAR_PULL_POLICY}={other}: must be Always, IfNotPresent or Never"
                ));
                None
            }
        };
        let mut sidecar_pull_secrets = Vec::new();
        for name in text(ENV_SIDECAR_IMAGE_PULL_SECRETS, "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if is_dns_subdomain(name) {
                sidecar_pull_secrets.push(name.to_string());
            } else {
                errors.push(format!(
                    "  {ENV_SIDECAR_IMAGE_PULL_SECRETS}: {name:?} is not a Secret name"
                ));
            }
        }
        let sidecar_log_format = text(ENV_SIDECAR_LOG_FORMAT, "plain");
        if !matches!(sidecar_log_format.as_str(), "plain" | "json") {
            errors.push(format!(
                "  {ENV_SIDECAR_LOG_FORMAT}={sidecar_log_format}: must be plain or json"
            ));
        }
        let drain_text = text(ENV_SIDECAR_DRAIN_SECONDS, "0");
        let sidecar_drain_seconds = match drain_text.parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(format!(
                    "  {ENV_SIDECAR_DRAIN_SECONDS}={drain_text}: not a whole number of seconds"
                ));
                None
            }
        };
        let sidecar_session_threads = env
            .get(ENV_SIDECAR_SESSION_THREADS)
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| {
                mailroom_config::settings::session_threads(v.trim())
                    .map_err(|e| errors.push(format!("  {ENV_SIDECAR_SESSION_THREADS}={v}: {e}")))
                    .ok()
            });
        Self {
            addr,
            cert_mode,
            sidecar_log_format,
            sidecar_drain_seconds,
            sidecar_session_threads,
            secret: text(ENV_WEBHOOK_SECRET, DEFAULT_WEBHOOK_SECRET),
            service: text(ENV_WEBHOOK_SERVICE, DEFAULT_WEBHOOK_SERVICE),
            config: text(ENV_WEBHOOK_CONFIG, DEFAULT_WEBHOOK_CONFIG),
            sidecar_image: text(ENV_SIDECAR_IMAGE, &default_image()),
            sidecar_resources,
            sidecar_pull_policy,
            sidecar_pull_secrets,
            sidecar_security_context,
            on_missing_relay,
            extra_names: Vec::new(),
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            check_interval: Duration::from_secs(30),
        }
    }
}

/// `ghcr.io/mailroom-dev/mailroom-sidecar:<crate version>`.
pub fn default_image() -> String {
    format!("{DEFAULT_SIDECAR_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// A Secret name: an RFC 1123 subdomain (lowercase letters, digits, `-` and `.`, alphanumeric at
/// both ends, at most 253 characters).
fn is_dns_subdomain(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(ok)
        && name.ends_with(ok)
        && name.chars().all(|c| ok(c) || c == '-' || c == '.')
}

/// Pod Security "restricted": non-root as [`SIDECAR_UID`], no privilege escalation, no
/// capabilities, RuntimeDefault seccomp, read-only root filesystem.
pub fn default_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests 25m CPU and 32Mi memory; limits memory to 128Mi (no CPU limit: throttling a relay
/// only delays mail).
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("25m")),
            ("memory".to_string(), q("32Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("128Mi"))])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_serve_on_9443_with_a_self_signed_certificate() {
        let mut errors = Vec::new();
        let s = WebhookSettings::parse(&HashMap::new(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            s.addr.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_WEBHOOK_ADDR)
        );
        assert_eq!(s.cert_mode, CertMode::SelfSigned);
        assert_eq!(s.on_missing_relay, MissingRelay::Deny);
        assert!(s.sidecar_image.ends_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(s.sidecar_resources, default_resources());
        assert_eq!(s.sidecar_pull_policy, None);
        assert!(s.sidecar_pull_secrets.is_empty());
        assert_eq!(s.sidecar_security_context, default_security_context());
    }

    #[test]
    fn pull_settings_and_an_openshift_security_context_are_read() {
        let mut errors = Vec::new();
        let env = HashMap::from([
            (ENV_SIDECAR_PULL_POLICY, "Always"),
            (ENV_SIDECAR_IMAGE_PULL_SECRETS, " regcred , mirror-creds ,"),
            (
                ENV_SIDECAR_SECURITY_CONTEXT,
                r#"{"runAsNonRoot":true,"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}"#,
            ),
        ]);
        let s = WebhookSettings::parse(&env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.sidecar_pull_policy.as_deref(), Some("Always"));
        assert_eq!(s.sidecar_pull_secrets, ["regcred", "mirror-creds"]);
        assert_eq!(s.sidecar_security_context.run_as_user, None);
        assert_eq!(s.sidecar_security_context.run_as_non_root, Some(true));
    }

    #[test]
    fn off_disables_and_every_bad_value_is_reported() {
        let mut errors = Vec::new();
        let env = HashMap::from([(ENV_WEBHOOK_ADDR, "off")]);
        assert_eq!(WebhookSettings::parse(&env, &mut errors).addr, None);
        let env = HashMap::from([
            (ENV_WEBHOOK_ADDR, "9443"),
            (ENV_WEBHOOK_CERT_MODE, "vault"),
            (ENV_INJECT_ON_MISSING_RELAY, "maybe"),
            (ENV_SIDECAR_RESOURCES, "{\"requests\": 5}"),
            (ENV_SIDECAR_PULL_POLICY, "Sometimes"),
            (ENV_SIDECAR_IMAGE_PULL_SECRETS, "regcred,Not_A_Name"),
            (ENV_SIDECAR_SECURITY_CONTEXT, "{\"runAsUser\": \"root\"}"),
        ]);
        WebhookSettings::parse(&env, &mut errors);
        assert_eq!(errors.len(), 7, "{errors:?}");
        for name in [
            ENV_SIDECAR_PULL_POLICY,
            ENV_SIDECAR_IMAGE_PULL_SECRETS,
            ENV_SIDECAR_SECURITY_CONTEXT,
        ] {
            assert!(errors.iter().any(|e| e.contains(name)), "{name}: {errors:?}");
        }
    }

    #[test]
    fn resources_are_read_as_json() {
        let mut errors = Vec::new();
        let env = HashMap::from([
            (
                ENV_SIDECAR_RESOURCES,
                r#"{"requests":{"cpu":"1"},"limits":{"memory":"1Gi"}}"#,
            ),
            (ENV_WEBHOOK_CERT_MODE, "external"),
            (ENV_INJECT_ON_MISSING_RELAY, "allow"),
        ]);
        let s = WebhookSettings::parse(&env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.cert_mode, CertMode::External);
        assert_eq!(s.on_missing_relay, MissingRelay::Allow);
        let cpu = s.sidecar_resources.requests.and_then(|r| r.get("cpu").cloned());
        assert_eq!(cpu, Some(Quantity("1".into())));
    }
}
