//! Pure injection: `(Pod, Relay, settings)` -> the JSON patch that adds the native sidecar, its
//! volumes, the app containers' `SMTP_HOST`/`SMTP_PORT`, the port sysctl, the pull secrets and the injected markers.
//! Paths come from `render`, so the mounts are where the rendered config expects its files.

use std::collections::BTreeMap;

use json_patch::{AddOperation, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use k8s_openapi::{
    api::core::v1::{
        ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
        HTTPGetAction, LocalObjectReference, ObjectFieldSelector, Pod, Probe, SecretVolumeSource, Sysctl,
        Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Error, Result};
use crate::{
    crd::Relay,
    render::{self, CA_MOUNT, CAPTURE_DIR, CREDENTIALS_MOUNT, DKIM_MOUNT, SPOOL_DIR},
    settings::WebhookSettings,
};

/// Name of the injected init container.
pub const SIDECAR_NAME: &str = "mailroom-sidecar";
/// Pod label asking for injection; its value names the Relay (same key as on Relay children).
pub const RELAY_LABEL: &str = crate::reconcile::relay::RELAY_LABEL;
/// Pod annotation naming the Relay when the label's value is empty (names over 63 characters).
pub const RELAY_ANNOTATION: &str = "mailroom.dev/relay";
/// Pod annotation setting its sidecar's session threads (`SIDECAR_SESSION_THREADS`: a number up
/// to 1024, or `0` for one per CPU), over `OPERATOR_SIDECAR_SESSION_THREADS`.
pub const SESSION_THREADS_ANNOTATION: &str = "mailroom.dev/session-threads";
/// Namespace label opting a namespace in; value [`NAMESPACE_VALUE`].
pub const NAMESPACE_LABEL: &str = "mailroom.dev/injection";
/// Value of [`NAMESPACE_LABEL`].
pub const NAMESPACE_VALUE: &str = "enabled";
/// Label on injected pods (`"true"`); PodMonitors select by it.
pub const INJECTED_LABEL: &str = crate::reconcile::relay::INJECTED_LABEL;
/// Annotation on injected pods: the injected sidecar image.
pub const INJECTED_ANNOTATION: &str = "mailroom.dev/injected-sidecar";
/// Where the `<relay>-sidecar` ConfigMap is mounted (a directory: a subPath mount never updates).
pub const CONFIG_MOUNT: &str = "/etc/mailroom/config";
/// Admin port (`/livez`, `/readyz`, `/metrics`), on every pod address so the kubelet can probe it.
pub const ADMIN_PORT: u16 = 9465;
/// Name of the admin container port.
pub const ADMIN_PORT_NAME: &str = "mailroom-admin";
/// The sidecar's default user and group (the distroless `nonroot` user).
pub use crate::settings::SIDECAR_UID;
/// The sysctl that lets a non-root process bind a port below 1024.
pub const PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// Seconds of the grace period kept back from the drain for the final spool sync and exit.
pub const DRAIN_MARGIN_SECONDS: i64 = 5;
/// Spool `emptyDir` size limit: the rendered `spool.maxBytes` (1 GiB) plus 25 % for segment
/// overhead, so the sidecar's own limit (`452 4.3.1`) answers before the kubelet evicts the pod.
pub const SPOOL_SIZE_LIMIT: &str = "1280Mi";
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The Relay a pod asks for: the label's value, or the annotation when the label is empty.
pub fn relay_name(pod: &Pod) -> Option<String> {
    let label = pod.labels().get(RELAY_LABEL).filter(|v| !v.is_empty());
    let annotation = pod.annotations().get(RELAY_ANNOTATION).filter(|v| !v.is_empty());
    label.or(annotation).cloned()
}

/// Whether the sidecar is already there (re-invocation, or a pod spec copied from an injected pod).
pub fn is_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == SIDECAR_NAME))
}

/// `SIDECAR_DRAIN_SECONDS` for a grace period: the grace minus [`DRAIN_MARGIN_SECONDS`], or half
/// of a short one.
pub fn drain_seconds(grace: Option<i64>) -> i64 {
    let grace = grace.unwrap_or(DEFAULT_GRACE_SECONDS).max(0);
    if grace > 2 * DRAIN_MARGIN_SECONDS {
        grace - DRAIN_MARGIN_SECONDS
    } else {
        grace / 2
    }
}

/// The configured default drain deadline, never longer than what the grace period allows (the
/// kubelet would kill the sidecar first).
pub fn capped_drain(from_grace: i64, configured: Option<u32>) -> i64 {
    configured.map_or(from_grace, |n| i64::from(n).min(from_grace))
}

/// The JSON patch injecting `relay`'s sidecar into `pod`; empty when already injected.
pub fn patch(pod: &Pod, relay: &Relay, settings: &WebhookSettings) -> Result<Vec<PatchOperation>> {
    if is_injected(pod) {
        return Ok(Vec::new());
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let port = u16::try_from(relay.spec.listen_port).map_err(|_| {
        Error::NotInjectable(format!(
            "Relay {}: spec.listenPort is out of range",
            relay.name_any()
        ))
    })?;
    let (volumes, mounts) = volumes(relay);
    let existing = spec.volumes.iter().flatten();
    if let Some(v) = existing
        .into_iter()
        .find(|v| volumes.iter().any(|ours| ours.name == v.name))
    {
        return Err(Error::NotInjectable(format!(
            "pod already has a volume named {}, which mailroom's sidecar needs",
            v.name
        )));
    }
    let threads = session_threads(pod, settings)?;
    let sidecar = container(
        port,
        mounts,
        spec.termination_grace_period_seconds,
        threads,
        settings,
    );
    let mut ops = Vec::new();
    match &spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], vec![sidecar])),
        // First, so the user's other init containers can send mail too.
        Some(_) => ops.push(add(&["spec", "initContainers", "0"], sidecar)),
    }
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], volumes)),
        Some(_) => ops.extend(volumes.into_iter().map(|v| add(&["spec", "volumes", "-"], v))),
    }
    for (i, c) in spec.containers.iter().enumerate() {
        ops.extend(smtp_env(&i.to_string(), c, port));
    }
    ops.extend(sysctl(pod, port));
    ops.extend(pull_secrets(pod, &settings.sidecar_pull_secrets));
    ops.extend(markers(pod, relay, settings));
    Ok(ops)
}

/// The sidecar's session threads: the pod's annotation, else the setting, else the sidecar's own
/// default (`None`). A bad annotation refuses the pod: the sidecar would refuse to start with it.
fn session_threads(pod: &Pod, settings: &WebhookSettings) -> Result<Option<usize>> {
    match pod.annotations().get(SESSION_THREADS_ANNOTATION) {
        None => Ok(settings.sidecar_session_threads),
        Some(v) => mailroom_config::settings::session_threads(v.trim())
            .map(Some)
            .map_err(|e| {
                Error::NotInjectable(format!("pod annotation {SESSION_THREADS_ANNOTATION}={v:?}: {e}"))
            }),
    }
}

/// The volumes and the sidecar's mounts for them.
fn volumes(relay: &Relay) -> (Vec<Volume>, Vec<VolumeMount>) {
    let name = relay.name_any();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut push = |volume: Volume, path: &str, read_only: bool| {
        mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: path.into(),
            read_only: Some(read_only),
            ..Default::default()
        });
        volumes.push(volume);
    };
    let config_map = ConfigMapVolumeSource {
        name: render::config_map_name(&name),
        ..Default::default()
    };
    push(
        Volume {
            name: "mailroom-config".into(),
            config_map: Some(config_map),
            ..Default::default()
        },
        CONFIG_MOUNT,
        true,
    );
    push(
        secret("mailroom-dkim", &render::dkim_secret_name(&name)),
        DKIM_MOUNT,
        true,
    );
    if let Some(s) = &relay.spec.delivery.smarthost {
        if let Some(c) = &s.credentials_secret_ref {
            push(secret("mailroom-credentials", &c.name), CREDENTIALS_MOUNT, true);
        }
        if let Some(c) = &s.ca_secret_ref {
            push(secret("mailroom-smarthost-ca", &c.name), CA_MOUNT, true);
        }
        if let Some(b) = &s.backup {
            if let Some(c) = &b.credentials_secret_ref {
                push(
                    secret("mailroom-backup-credentials", &c.name),
                    render::BACKUP_CREDENTIALS_MOUNT,
                    true,
                );
            }
            if let Some(c) = &b.ca_secret_ref {
                push(
                    secret("mailroom-backup-ca", &c.name),
                    render::BACKUP_CA_MOUNT,
                    true,
                );
            }
        }
    }
    if relay.spec.hub.is_some() {
        // The hand-off credential and the hub's CA (docs/hub.md).
        push(
            secret("mailroom-hub", &render::hub::auth_secret_name(&name)),
            render::hub::HUB_AUTH_MOUNT,
            true,
        );
    }
    push(empty_dir("mailroom-spool"), SPOOL_DIR, false);
    if relay.spec.delivery.capture.is_some() {
        // The root filesystem is read-only; captured mail needs a writable directory.
        push(empty_dir("mailroom-capture"), CAPTURE_DIR, false);
    }
    (volumes, mounts)
}

fn secret(volume: &str, secret_name: &str) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn empty_dir(volume: &str) -> Volume {
    Volume {
        name: volume.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(SPOOL_SIZE_LIMIT.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The native sidecar: an init container with `restartPolicy: Always`, so it starts before the
/// app containers (after its startup probe passes) and stops after them.
fn container(
    port: u16,
    mounts: Vec<VolumeMount>,
    grace: Option<i64>,
    session_threads: Option<usize>,
    settings: &WebhookSettings,
) -> Container {
    use mailroom_config::settings as s;
    let threads = session_threads.map(|n| (s::ENV_SESSION_THREADS, n.to_string()));
    let env = [
        (
            s::ENV_CONFIG_PATH,
            format!("{CONFIG_MOUNT}/{}", render::CONFIG_KEY),
        ),
        (s::ENV_LISTEN_ADDR, format!("127.0.0.1:{port}")),
        (s::ENV_ADMIN_ADDR, format!("0.0.0.0:{ADMIN_PORT}")),
        (
            s::ENV_DRAIN_SECONDS,
            capped_drain(drain_seconds(grace), settings.sidecar_drain_seconds).to_string(),
        ),
        (s::ENV_LOG_FORMAT, settings.sidecar_log_format.clone()),
    ]
    .into_iter()
    .chain(threads);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: settings.sidecar_pull_policy.clone(),
        command: Some(vec!["mailroom-sidecar".into()]),
        env: Some(
            env.map(|(k, v)| env_var(k, v))
                // The pod's identity: it owns the shadow copies its sidecar stores on the hub
                // (`durability: replicated`, docs/hub.md).
                .chain([
                    field_env(s::ENV_POD_NAME, "metadata.name"),
                    field_env(s::ENV_POD_UID, "metadata.uid"),
                ])
                .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: ADMIN_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(settings.sidecar_resources.clone()),
        restart_policy: Some("Always".into()),
        security_context: Some(settings.sidecar_security_context.clone()),
        // The app containers start once this passes: the relay is listening and its spool replayed.
        startup_probe: Some(probe("/readyz", 1, 120)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// An environment variable from the downward API.
fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// `SMTP_HOST`/`SMTP_PORT` for app container `index`, each unless its `env` already sets it.
fn smtp_env(index: &str, c: &Container, port: u16) -> Vec<PatchOperation> {
    let has = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
    let missing: Vec<EnvVar> = [
        ("SMTP_HOST", "127.0.0.1".to_string()),
        ("SMTP_PORT", port.to_string()),
    ]
    .into_iter()
    .filter(|(k, _)| !has(k))
    .map(|(k, v)| env_var(k, v))
    .collect();
    match (&c.env, missing.is_empty()) {
        (_, true) => Vec::new(),
        (None, false) => vec![add(&["spec", "containers", index, "env"], missing)],
        (Some(_), false) => missing
            .into_iter()
            .map(|e| add(&["spec", "containers", index, "env", "-"], e))
            .collect(),
    }
}

/// Lowers `net.ipv4.ip_unprivileged_port_start` to the listen port when it is below 1024 (a
/// namespaced sysctl in Kubernetes' safe set, allowed by PodSecurity `restricted`).
fn sysctl(pod: &Pod, port: u16) -> Vec<PatchOperation> {
    if port >= 1024 {
        return Vec::new();
    }
    let ours = Sysctl {
        name: PORT_SYSCTL.into(),
        value: port.to_string(),
    };
    let ctx = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let Some(sysctls) = ctx.and_then(|c| c.sysctls.as_ref()) else {
        return match ctx {
            None => vec![add(&["spec", "securityContext"], json!({ "sysctls": [ours] }))],
            Some(_) => vec![add(&["spec", "securityContext", "sysctls"], vec![ours])],
        };
    };
    match sysctls.iter().position(|s| s.name == PORT_SYSCTL) {
        None => vec![add(&["spec", "securityContext", "sysctls", "-"], ours)],
        Some(i) => match sysctls[i].value.parse::<u32>() {
            Ok(v) if v <= u32::from(port) => Vec::new(),
            _ => vec![PatchOperation::Replace(ReplaceOperation {
                path: pointer(&["spec", "securityContext", "sysctls", &i.to_string(), "value"]),
                value: json!(port.to_string()),
            })],
        },
    }
}

/// The configured pull secrets the pod does not list yet (the sidecar's image may live in a
/// private registry the app's own secrets do not cover).
fn pull_secrets(pod: &Pod, names: &[String]) -> Vec<PatchOperation> {
    let existing = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref());
    let missing: Vec<LocalObjectReference> = names
        .iter()
        .filter(|n| !existing.into_iter().flatten().any(|r| &r.name == *n))
        .map(|n| LocalObjectReference { name: n.clone() })
        .collect();
    match (existing, missing.is_empty()) {
        (_, true) => Vec::new(),
        (None, false) => vec![add(&["spec", "imagePullSecrets"], missing)],
        (Some(_), false) => missing
            .into_iter()
            .map(|r| add(&["spec", "imagePullSecrets", "-"], r))
            .collect(),
    }
}

/// `mailroom.dev/injected: "true"` label, the image annotation, and with a hub the
/// `mailroom.dev/hub-client: <relay>` label its NetworkPolicy admits.
fn markers(pod: &Pod, relay: &Relay, settings: &WebhookSettings) -> Vec<PatchOperation> {
    let mut labels = vec![(INJECTED_LABEL, "true".to_string())];
    if relay.spec.hub.is_some() {
        labels.push((render::hub::HUB_CLIENT_LABEL, relay.name_any()));
    }
    let annotations = vec![(INJECTED_ANNOTATION, settings.sidecar_image.clone())];
    let mut ops = Vec::new();
    for (field, pairs, present) in [
        ("labels", labels, pod.metadata.labels.is_some()),
        ("annotations", annotations, pod.metadata.annotations.is_some()),
    ] {
        if present {
            ops.extend(
                pairs
                    .into_iter()
                    .map(|(key, value)| add(&["metadata", field, key], value)),
            );
        } else {
            ops.push(add(&["metadata", field], BTreeMap::from_iter(pairs)));
        }
    }
    ops
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: impl Serialize) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        // Serializing k8s-openapi types and string maps cannot fail.
        value: serde_json::to_value(value).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests;
