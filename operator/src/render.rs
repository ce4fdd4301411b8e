//! Pure rendering: `(Relay, [MailDomain])` -> the sidecar's `SidecarConfig` document. Secrets are
//! named by the paths where the pod mounts them; no secret value ever enters the config.

use std::path::PathBuf;

use kube::ResourceExt;
use mailroom_config::{
    self as sc, API_VERSION, Auth, AuthMechanism, Capture, Config, Delivery, Dkim, DkimAlgorithm as ScAlg,
    Domain, Limits, Listen, Retry, Smarthost, Spool, TlsMode,
};

use crate::{
    Error, Result,
    crd::{DkimAlgorithm, MailDomain, Relay, SmarthostAuth, SmarthostTls},
};

/// ConfigMap key holding the rendered document.
pub const CONFIG_KEY: &str = "sidecar.yaml";
/// Where the pod mounts the Relay's DKIM Secret (`<relay>-dkim`, one `<domain>.<selector>.key`
/// per key).
pub const DKIM_MOUNT: &str = "/etc/mailroom/dkim";
/// Where the pod mounts the smarthost credentials Secret.
pub const CREDENTIALS_MOUNT: &str = "/etc/mailroom/credentials";
/// Where the pod mounts the smarthost CA Secret.
pub const CA_MOUNT: &str = "/etc/mailroom/smarthost-ca";
/// Where the pod mounts the backup smarthost's credentials Secret.
pub const BACKUP_CREDENTIALS_MOUNT: &str = "/etc/mailroom/backup-credentials";
/// Where the pod mounts the backup smarthost's CA Secret.
pub const BACKUP_CA_MOUNT: &str = "/etc/mailroom/backup-ca";
/// Spool directory inside the pod (an `emptyDir`).
pub const SPOOL_DIR: &str = "/var/spool/mailroom";
/// Capture directory inside the pod (capture delivery only).
pub const CAPTURE_DIR: &str = "/var/lib/mailroom/capture";

/// Each of `pods` pods' share of a Relay-wide budget of `budget` messages a minute: rounded down,
/// so the pods together never exceed it, and at least 1, so that no pod refuses everything
/// (with more pods than the budget, the Relay may then exceed it by up to one message a minute
/// per pod). No pods yet: the first pod gets it all, and the next render shares it.
pub fn rate_share(budget: Option<u32>, pods: u32) -> Option<u32> {
    budget.map(|b| (b / pods.max(1)).max(1))
}

/// Name of the ConfigMap holding a Relay's rendered config.
pub fn config_map_name(relay: &str) -> String {
    format!("{relay}-sidecar")
}

/// Name of the Secret holding a Relay's DKIM private keys.
pub fn dkim_secret_name(relay: &str) -> String {
    format!("{relay}-dkim")
}

/// Key of a domain's private key inside the Relay's DKIM Secret. The selector is part of the
/// name so that during a rotation the new key's file is mounted before the config names it: the
/// kubelet updates the Secret and the ConfigMap volumes independently.
pub fn dkim_key_name(domain: &str, selector: &str) -> String {
    format!("{domain}.{selector}.key")
}

/// The selector a MailDomain signs with: the active key's in status, else `spec.dkim.selector`.
pub fn signing_selector(md: &MailDomain) -> &str {
    md.status
        .as_ref()
        .and_then(|s| s.dkim.as_ref())
        .map_or(&md.spec.dkim.selector, |d| &d.selector)
}

/// Renders the sidecar config for `relay` sending as `domains` (in the order of
/// `relay.spec.domains`), and checks it with the sidecar's own `validate()`.
pub fn sidecar_config(relay: &Relay, domains: &[MailDomain]) -> Result<Config> {
    let namespace = relay.namespace().ok_or(Error::MissingNamespace)?;
    let name = relay.name_any();
    let spec = &relay.spec;
    let port = u16::try_from(spec.listen_port).map_err(|_| {
        Error::InvalidSpec(format!(
            "Relay {namespace}/{name}: spec.listenPort is out of range"
        ))
    })?;
    let mut limits = Limits::default();
    let mut spool = Spool {
        dir: SPOOL_DIR.into(),
        // The sidecar's defaults: 1 GiB, 100000 messages.
        max_bytes: 1024 * 1024 * 1024,
        max_messages: 100_000,
        reserve_bytes: 4 * 1024 * 1024,
    };
    if let Some(l) = &spec.limits {
        limits.max_message_bytes = l.max_message_bytes.unwrap_or(limits.max_message_bytes);
        limits.max_recipients = l.max_recipients.map_or(limits.max_recipients, |r| r as usize);
        limits.rate_per_minute = l.rate_per_minute;
        spool.max_bytes = l.spool_max_bytes.unwrap_or(spool.max_bytes);
        spool.max_messages = l.spool_max_messages.unwrap_or(spool.max_messages);
    }
    let mut retry = Retry::default();
    if let Some(r) = &spec.retry {
        retry.initial_seconds = r.initial_seconds.unwrap_or(retry.initial_seconds);
        retry.max_seconds = r.max_seconds.unwrap_or(retry.max_seconds);
        retry.max_age_seconds = r.max_age_seconds.unwrap_or(retry.max_age_seconds);
        retry.multiplier = r.multiplier.unwrap_or(retry.multiplier);
    }
    let bounces = sc::Bounces {
        delay_notice_after_seconds: spec.bounces.as_ref().and_then(|b| b.delay_notice_after_seconds),
    };
    let config = Config {
        api_version: API_VERSION.into(),
        kind: sc::KIND.into(),
        relay: format!("{namespace}/{name}"),
        hostname: spec
            .ehlo_name
            .clone()
            .unwrap_or_else(|| format!("{name}.{namespace}.svc")),
        listen: Listen {
            address: ([127, 0, 0, 1], port).into(),
            allow_non_loopback: false,
            tls: None,
            auth: None,
        },
        admin: Default::default(),
        limits,
        domains: domains.iter().map(domain).collect(),
        // The sidecar's default: postmaster@<the first domain>.
        postmaster: None,
        spool,
        delivery: delivery(relay, &namespace, &name)?,
        retry,
        bounces,
        handoff: spec.hub.as_ref().map(|h| hub::handoff(&name, &namespace, h)),
        shadows: None,
        trail: Default::default(),
        shaping: spec.shaping.as_ref().map(shaping).unwrap_or_default(),
    };
    let problems = config.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::InvalidSpec(format!(
            "Relay {namespace}/{name} renders an invalid sidecar config: {}",
            list.join("; ")
        )));
    }
    Ok(config)
}

/// The document as stored in the ConfigMap: a header comment, then YAML.
pub fn to_yaml(relay: &Relay, config: &Config) -> Result<String> {
    let body = serde_yaml_ng::to_string(config).map_err(Error::Render)?;
    Ok(format!(
        "# Rendered by mailroom-operator from Relay {}/{}; do not edit (changes are overwritten).\n{body}",
        relay.namespace().unwrap_or_default(),
        relay.name_any()
    ))
}

fn domain(md: &MailDomain) -> Domain {
    let dkim = &md.spec.dkim;
    let selector = signing_selector(md);
    Domain {
        domain: md.spec.domain.clone(),
        dkim: Some(Dkim {
            selector: selector.to_string(),
            algorithm: match dkim.algorithm {
                DkimAlgorithm::Rsa2048 => ScAlg::RsaSha256,
                DkimAlgorithm::Ed25519 => ScAlg::Ed25519Sha256,
            },
            key_file: PathBuf::from(DKIM_MOUNT).join(dkim_key_name(&md.spec.domain, selector)),
        }),
    }
}

fn delivery(relay: &Relay, namespace: &str, name: &str) -> Result<Delivery> {
    let d = &relay.spec.delivery;
    if let (None, Some(direct), None) = (&d.smarthost, &d.direct, &d.capture) {
        return Ok(Delivery::Direct(render_direct(direct)));
    }
    match (&d.smarthost, &d.capture) {
        (Some(s), None) if d.direct.is_none() => {
            let mut primary = smarthost(
                s,
                CREDENTIALS_MOUNT,
                CA_MOUNT,
                "spec.delivery.smarthost",
                namespace,
                name,
            )?;
            if let Some(b) = s.backup_endpoint() {
                let backup = smarthost(
                    &b,
                    BACKUP_CREDENTIALS_MOUNT,
                    BACKUP_CA_MOUNT,
                    "spec.delivery.smarthost.backup",
                    namespace,
                    name,
                )?;
                primary.backup = Some(Box::new(backup));
            }
            Ok(Delivery::Smarthost(primary))
        }
        (None, Some(_)) if d.direct.is_none() => Ok(Delivery::Capture(Capture {
            dir: CAPTURE_DIR.into(),
        })),
        _ => Err(Error::InvalidSpec(format!(
            "Relay {namespace}/{name}: spec.delivery must set exactly one of smarthost, direct or capture"
        ))),
    }
}

/// `spec.shaping` as the sidecar reads it.
fn shaping(s: &crate::crd::ShapingSpec) -> sc::Shaping {
    let limits = |l: &crate::crd::DestinationLimitsSpec| sc::DestinationLimits {
        concurrency: l.concurrency.map(|n| n as usize),
        rate_per_minute: l.rate_per_minute,
    };
    sc::Shaping {
        default: s.default.as_ref().map(limits).unwrap_or_default(),
        domains: s.domains.iter().map(|(d, l)| (d.clone(), limits(l))).collect(),
    }
}

/// One smarthost's settings, its Secrets mounted at `credentials` and `ca`; `at` is its field
/// path for errors.
fn smarthost(
    s: &crate::crd::SmarthostSpec,
    credentials: &str,
    ca: &str,
    at: &str,
    namespace: &str,
    name: &str,
) -> Result<Smarthost> {
    Ok(Smarthost {
        host: s.host.clone(),
        port: u16::try_from(s.port).map_err(|_| {
            Error::InvalidSpec(format!("Relay {namespace}/{name}: {at}.port is out of range"))
        })?,
        tls: match s.tls {
            SmarthostTls::Starttls => TlsMode::Starttls,
            SmarthostTls::Implicit => TlsMode::Implicit,
            SmarthostTls::None => TlsMode::None,
        },
        ca_file: s.ca_secret_ref.as_ref().map(|r| PathBuf::from(ca).join(&r.key)),
        auth: s.credentials_secret_ref.as_ref().map(|c| Auth {
            mechanism: match s.auth_mechanism {
                None | Some(SmarthostAuth::Plain) => AuthMechanism::Plain,
                Some(SmarthostAuth::Login) => AuthMechanism::Login,
                Some(SmarthostAuth::Xoauth2) => AuthMechanism::Xoauth2,
            },
            username_file: PathBuf::from(credentials).join(&c.username_key),
            password_file: PathBuf::from(credentials).join(&c.password_key),
        }),
        // Sidecar defaults: the CRD does not expose them.
        connect_timeout_seconds: 30,
        command_timeout_seconds: 300,
        max_connections: s.max_connections.map_or(4, |n| n as usize),
        backup: None,
    })
}

/// Direct delivery uses the pod's resolver (the cluster DNS) and port 25; the rest are the
/// sidecar's defaults.
fn render_direct(spec: &crate::crd::DirectSpec) -> sc::Direct {
    use crate::crd::{Dane, DirectTls, MtaSts};
    sc::Direct {
        tls: match spec.tls {
            DirectTls::Opportunistic => sc::DirectTls::Opportunistic,
            DirectTls::Require => sc::DirectTls::Require,
        },
        mta_sts: match spec.mta_sts {
            MtaSts::None => sc::MtaStsMode::Off,
            MtaSts::Testing => sc::MtaStsMode::Testing,
            MtaSts::Enforce => sc::MtaStsMode::Enforce,
        },
        // The IANA root anchors built into the sidecar; a Relay has no field for private roots.
        dane: match spec.dane {
            Dane::None => sc::DaneMode::Off,
            Dane::Opportunistic => sc::DaneMode::On,
        },
        max_connections_per_domain: spec
            .max_connections_per_domain
            .map_or(sc::Direct::default().max_connections_per_domain, |n| n as usize),
        ..sc::Direct::default()
    }
}

pub mod hub;
#[cfg(test)]
mod tests;
