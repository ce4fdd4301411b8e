//! Pure rendering of a Relay's hub (docs/hub.md): the hub's own sidecar config, the `handoff`
//! section its sidecars get, and the objects that run it (StatefulSet with a volume per pod,
//! headless Service, PodDisruptionBudget, NetworkPolicy). Names and mount paths live here, so
//! the webhook mounts the files where the configs expect them.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
            ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use mailroom_config::{Config, Handoff, ListenAuth, ListenTls, ShadowCopies, ShadowOwners};

use super::{CA_MOUNT, CAPTURE_DIR, CONFIG_KEY, CREDENTIALS_MOUNT, SPOOL_DIR};
use crate::{
    Error, Result,
    crd::{Durability, HubSpec, Relay},
    reconcile::relay::INJECTED_LABEL,
};

/// The hub's SMTP port (TLS from the first byte, like submissions on 465).
pub const HUB_PORT: u16 = mailroom_config::DEFAULT_HANDOFF_PORT;
/// The hub's admin port (`/metrics`, `/readyz`, `/livez`).
pub const HUB_ADMIN_PORT: u16 = 9465;
/// Label on hub pods and objects: the Relay's name.
pub const HUB_LABEL: &str = "mailroom.dev/hub";
/// Label the webhook puts on pods injected for a Relay with a hub: the Relay's name. The hub's
/// NetworkPolicy admits these pods (the `mailroom.dev/relay` label may be empty, when an
/// annotation names the Relay).
pub const HUB_CLIENT_LABEL: &str = "mailroom.dev/hub-client";
/// Longest Relay name with a hub: a StatefulSet's pods carry `controller-revision-hash:
/// <name>-<10 characters>`, a label value of at most 63.
pub const MAX_RELAY_NAME: usize = 48;
/// Where an app pod's sidecar mounts `<relay>-hub-auth` (`ca.crt`, `username`, `password`), and
/// the hub pods too (they check the same credential).
pub const HUB_AUTH_MOUNT: &str = "/etc/mailroom/hub";
/// Where hub pods mount `<relay>-hub-tls` (`tls.crt`, `tls.key`).
pub const HUB_TLS_MOUNT: &str = "/etc/mailroom/hub-tls";
/// Where hub pods mount their ConfigMap.
pub const HUB_CONFIG_MOUNT: &str = "/etc/mailroom/config";
/// Keys of `<relay>-hub-auth`.
pub const USERNAME_KEY: &str = "username";
/// See [`USERNAME_KEY`].
pub const PASSWORD_KEY: &str = "password";
/// See [`USERNAME_KEY`]: the CA that signed the hub's certificate.
pub const CA_KEY: &str = "ca.crt";
/// The sidecar's user and group (the distroless `nonroot` user).
const UID: i64 = 65532;
/// Default `spec.hub.replicas`.
pub const DEFAULT_REPLICAS: u32 = 2;
/// Default `spec.hub.storage`.
pub const DEFAULT_STORAGE: &str = "1Gi";
/// Share of the volume the spool may fill before new hand-offs get `452 4.3.1`; the rest is
/// segment overhead and the disk reserve.
const SPOOL_SHARE: f64 = 0.8;

/// Name of the hub's StatefulSet, Service, PodDisruptionBudget, NetworkPolicy and ConfigMap.
pub fn name(relay: &str) -> String {
    format!("{relay}-hub")
}

/// Name of the Secret with the hub's serving certificate and its CA (`tls.crt`, `tls.key`,
/// `ca.crt`, `ca.key`).
pub fn tls_secret_name(relay: &str) -> String {
    format!("{relay}-hub-tls")
}

/// Name of the Secret with the Relay's hand-off credential and the hub's CA certificate.
pub fn auth_secret_name(relay: &str) -> String {
    format!("{relay}-hub-auth")
}

/// The host name sidecars connect to: the headless Service, which resolves to the Ready hub pods.
pub fn host(relay: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", name(relay))
}

/// Most hub pods (`spec.hub.replicas`).
pub const MAX_REPLICAS: u32 = 9;
/// How often a hub checks that the pods it holds shadow copies for still exist.
const OWNER_CHECK_SECONDS: u64 = 5;

/// The host name of hub pod `ordinal` (the headless Service gives each pod its own name): a
/// shadow copy lives on one pod's volume, and its release must reach that pod.
pub fn pod_host(relay: &str, namespace: &str, ordinal: u32) -> String {
    let svc = name(relay);
    format!("{svc}-{ordinal}.{svc}.{namespace}.svc")
}

/// The DNS names the hub's certificate carries: the Service's, and each pod's name under it
/// for every replica count the CRD allows (so that scaling needs no new certificate).
pub fn cert_names(relay: &str, namespace: &str) -> Vec<String> {
    let svc = name(relay);
    let mut names = vec![
        svc.clone(),
        format!("{svc}.{namespace}"),
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
    ];
    names.extend((0..MAX_REPLICAS).map(|i| pod_host(relay, namespace, i)));
    names
}

/// The `handoff` section of the Relay's sidecars.
pub fn handoff(relay: &str, namespace: &str, spec: &HubSpec) -> Handoff {
    let file = |key: &str| PathBuf::from(HUB_AUTH_MOUNT).join(key);
    Handoff {
        host: host(relay, namespace),
        port: HUB_PORT,
        ca_file: file(CA_KEY),
        username_file: file(USERNAME_KEY),
        password_file: file(PASSWORD_KEY),
        drain_reserve_seconds: spec
            .drain_reserve_seconds
            .unwrap_or(mailroom_config::DEFAULT_DRAIN_RESERVE_SECONDS),
        after_parked_seconds: spec.after_parked_seconds,
        max_connections: 4,
        shadows: (spec.durability == Some(Durability::Replicated)).then(|| ShadowCopies {
            hosts: (0..spec.replicas.unwrap_or(DEFAULT_REPLICAS))
                .map(|i| pod_host(relay, namespace, i))
                .collect(),
            max_connections: 8,
        }),
    }
}

/// The label selector of a Relay's hub clients (the pods whose shadow copies its hub holds).
pub fn client_selector(relay: &str) -> String {
    format!("{HUB_CLIENT_LABEL}={relay}")
}

/// The hub's own config from its sidecars' `sidecar`: the same route, retries, limits and
/// sender domains, listening on the pod network with TLS and the Relay's credential, its spool on
/// its volume, and no DKIM keys (every message it takes was signed by its sidecar, and it never
/// signs again).
pub fn config(sidecar: &Config, relay: &str, namespace: &str, spec: &HubSpec) -> Result<Config> {
    if relay.len() > MAX_RELAY_NAME {
        return Err(Error::InvalidSpec(format!(
            "Relay {namespace}/{relay}: spec.hub needs a Relay name of at most {MAX_RELAY_NAME} characters (the hub's StatefulSet is named after it)"
        )));
    }
    let mut hub = sidecar.clone();
    hub.hostname = host(relay, namespace);
    hub.listen.address = ([0, 0, 0, 0], HUB_PORT).into();
    hub.listen.allow_non_loopback = true;
    hub.listen.tls = Some(ListenTls {
        cert_file: PathBuf::from(HUB_TLS_MOUNT).join("tls.crt"),
        key_file: PathBuf::from(HUB_TLS_MOUNT).join("tls.key"),
    });
    hub.listen.auth = Some(ListenAuth {
        username_file: PathBuf::from(HUB_AUTH_MOUNT).join(USERNAME_KEY),
        password_file: PathBuf::from(HUB_AUTH_MOUNT).join(PASSWORD_KEY),
    });
    hub.admin.address = ([0, 0, 0, 0], HUB_ADMIN_PORT).into();
    hub.handoff = None;
    // Every hub checks the owners of the shadow copies it holds, whatever `durability` says
    // now: copies made before a switch back to `handoff` are still delivered if their pod is lost.
    hub.shadows = Some(ShadowOwners {
        namespace: namespace.to_owned(),
        pod_selector: client_selector(relay),
        check_seconds: OWNER_CHECK_SECONDS,
    });
    for d in &mut hub.domains {
        d.dkim = None;
    }
    // Sidecars hand off whatever they hold: the hub takes as many at once as they may send.
    hub.limits.rate_per_minute = None;
    let bytes = storage_bytes(spec.storage.as_deref().unwrap_or(DEFAULT_STORAGE)).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "Relay {namespace}/{relay}: spec.hub.storage {:?} is not a quantity like 1Gi",
            spec.storage
        ))
    })?;
    hub.spool.max_bytes = (bytes as f64 * SPOOL_SHARE) as u64;
    hub.spool.dir = SPOOL_DIR.into();
    let problems = hub.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Error::InvalidSpec(format!(
            "Relay {namespace}/{relay} renders an invalid hub config: {}",
            list.join("; ")
        )));
    }
    Ok(hub)
}

/// Bytes of a Kubernetes quantity of the form the CRD allows (`512Mi`, `1Gi`, `1.5G`, `1000`).
pub fn storage_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let unit: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * unit;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

/// Labels of the hub's pods (and selector of its Service, PDB and NetworkPolicy).
pub fn pod_labels(relay: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HUB_LABEL.to_string(), relay.to_string()),
        ("app.kubernetes.io/name".to_string(), "mailroom-hub".to_string()),
        ("app.kubernetes.io/component".to_string(), "hub".to_string()),
    ])
}

/// Everything that runs the hub, each with `meta` (name, namespace, labels, owner) applied.
#[derive(Debug, Clone)]
pub struct Objects {
    /// The pods and their volumes.
    pub stateful_set: StatefulSet,
    /// Headless: resolves to the Ready hub pods.
    pub service: Service,
    /// At most one hub pod down by choice at a time.
    pub disruption_budget: PodDisruptionBudget,
    /// Only this Relay's injected pods reach the SMTP port.
    pub network_policy: NetworkPolicy,
    /// The hub pods' account.
    pub service_account: ServiceAccount,
    /// `list` on pods in the namespace, and nothing else.
    pub role: Role,
    /// Grants `role` to `service_account`.
    pub role_binding: RoleBinding,
}

/// The hub's objects for `relay`, running `image`; `meta` gives each its metadata.
pub fn objects(relay: &Relay, image: &str, log_format: &str, meta: impl Fn(String) -> ObjectMeta) -> Objects {
    use kube::ResourceExt;
    let relay_name = relay.name_any();
    let spec = relay.spec.hub.clone().unwrap_or_default();
    let hub = name(&relay_name);
    let selector = LabelSelector {
        match_labels: Some(pod_labels(&relay_name)),
        ..Default::default()
    };
    let with_labels = |m: ObjectMeta| {
        let mut labels = m.labels.clone().unwrap_or_default();
        labels.extend(pod_labels(&relay_name));
        ObjectMeta {
            labels: Some(labels),
            ..m
        }
    };
    let stateful_set = StatefulSet {
        metadata: with_labels(meta(hub.clone())),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(spec.replicas.unwrap_or(DEFAULT_REPLICAS)).unwrap_or(1)),
            service_name: Some(hub.clone()),
            // Hub pods do not depend on each other: start and stop them together.
            pod_management_policy: Some("Parallel".into()),
            selector: selector.clone(),
            template: pod_template(relay, image, log_format, &spec),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("spool".into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage.clone().unwrap_or_else(|| DEFAULT_STORAGE.into())),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // A volume may hold mail not yet delivered: it outlives the Relay and a scale-down,
            // and a later pod with the same ordinal replays it.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Retain".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: with_labels(meta(hub.clone())),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(pod_labels(&relay_name)),
            ports: Some(vec![ServicePort {
                name: Some("smtp".into()),
                port: HUB_PORT.into(),
                target_port: Some(IntOrString::String("smtp".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let disruption_budget = PodDisruptionBudget {
        metadata: with_labels(meta(hub.clone())),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sidecars = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (HUB_CLIENT_LABEL.to_string(), relay_name.clone()),
            (INJECTED_LABEL.to_string(), "true".to_string()),
        ])),
        ..Default::default()
    };
    let port = |p: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(p.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let network_policy = NetworkPolicy {
        metadata: with_labels(meta(hub.clone())),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                // SMTP: only this Relay's injected pods, in this namespace. The credential is
                // checked as well; this keeps everyone else from even reaching the greeting.
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(sidecars),
                        ..Default::default()
                    }]),
                    ports: Some(vec![port(HUB_PORT)]),
                },
                // Metrics and probes: from anywhere (Prometheus runs in another namespace).
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(HUB_ADMIN_PORT)]),
                },
            ]),
            ..Default::default()
        }),
    };
    let service_account = ServiceAccount {
        metadata: with_labels(meta(hub.clone())),
        ..Default::default()
    };
    let role = Role {
        metadata: with_labels(meta(hub.clone())),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["list".into()],
            ..Default::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: with_labels(meta(hub.clone())),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: hub.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: hub.clone(),
            namespace: relay.namespace(),
            ..Default::default()
        }]),
    };
    Objects {
        stateful_set,
        service,
        disruption_budget,
        network_policy,
        service_account,
        role,
        role_binding,
    }
}

fn pod_template(relay_obj: &Relay, image: &str, log_format: &str, spec: &HubSpec) -> PodTemplateSpec {
    use kube::ResourceExt;
    use mailroom_config::settings as s;
    let relay_name = relay_obj.name_any();
    let relay = relay_name.as_str();
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let secret = |volume: &str, secret: String| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    let port = |name: &str, p: u16| ContainerPort {
        name: Some(name.into()),
        container_port: p.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    // The Relay's route needs what its sidecars mount: the smarthost's credentials and CA, or a
    // writable directory for capture.
    let mut route_volumes: Vec<(Volume, &str, bool)> = Vec::new();
    let delivery = &relay_obj.spec.delivery;
    if let Some(sh) = &delivery.smarthost {
        if let Some(c) = &sh.credentials_secret_ref {
            route_volumes.push((secret("credentials", c.name.clone()), CREDENTIALS_MOUNT, true));
        }
        if let Some(c) = &sh.ca_secret_ref {
            route_volumes.push((secret("smarthost-ca", c.name.clone()), CA_MOUNT, true));
        }
        if let Some(b) = &sh.backup {
            if let Some(c) = &b.credentials_secret_ref {
                route_volumes.push((
                    secret("backup-credentials", c.name.clone()),
                    crate::render::BACKUP_CREDENTIALS_MOUNT,
                    true,
                ));
            }
            if let Some(c) = &b.ca_secret_ref {
                route_volumes.push((
                    secret("backup-ca", c.name.clone()),
                    crate::render::BACKUP_CA_MOUNT,
                    true,
                ));
            }
        }
    }
    if delivery.capture.is_some() {
        route_volumes.push((
            Volume {
                name: "capture".into(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            },
            CAPTURE_DIR,
            false,
        ));
    }
    let resources = spec.resources.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("256Mi".into()))])),
        ..Default::default()
    });
    let container = Container {
        name: "mailroom-hub".into(),
        image: Some(image.into()),
        command: Some(vec!["mailroom-sidecar".into()]),
        env: Some(vec![
            env(s::ENV_CONFIG_PATH, format!("{HUB_CONFIG_MOUNT}/{CONFIG_KEY}")),
            env(s::ENV_LOG_FORMAT, log_format.into()),
            // A hub serves every sidecar of its Relay, over TLS: its sessions may use every CPU
            // (a sidecar's default is one thread).
            env(s::ENV_SESSION_THREADS, "0".into()),
        ]),
        ports: Some(vec![port("smtp", HUB_PORT), port("admin", HUB_ADMIN_PORT)]),
        resources: Some(resources),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        startup_probe: Some(probe("/readyz", 1, 300)),
        // PodSecurity `restricted`.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(UID),
            run_as_group: Some(UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            [
                vec![
                    mount("config", HUB_CONFIG_MOUNT, true),
                    mount("tls", HUB_TLS_MOUNT, true),
                    mount("auth", HUB_AUTH_MOUNT, true),
                    mount("spool", SPOOL_DIR, false),
                ],
                route_volumes
                    .iter()
                    .map(|(v, path, ro)| mount(&v.name, path, *ro))
                    .collect(),
            ]
            .concat(),
        ),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(relay)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            // Its own account, which may list the pods of this namespace and nothing else: the
            // owners of the shadow copies it holds (docs/hub.md, "Owner liveness").
            service_account_name: Some(name(relay)),
            automount_service_account_token: Some(true),
            enable_service_links: Some(false),
            // Time for the drain: the hub finishes what it is delivering, and keeps the rest on
            // its volume for the next pod.
            termination_grace_period_seconds: Some(Duration::from_secs(30).as_secs() as i64),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                fs_group: Some(UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: Some(
                [
                    vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name(relay),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        secret("tls", tls_secret_name(relay)),
                        secret("auth", auth_secret_name(relay)),
                    ],
                    route_volumes.into_iter().map(|(v, _, _)| v).collect(),
                ]
                .concat(),
            ),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MailDomain;

    fn relay_with_hub(name: &str, hub: HubSpec) -> Relay {
        let mut relay = Relay::test("shop", name, &["shop"]);
        relay.spec.hub = Some(hub);
        relay
    }

    #[test]
    fn the_hub_config_listens_with_tls_and_the_credential_and_never_signs_or_hands_off() {
        let relay = relay_with_hub("outbound", HubSpec::default());
        let domains = [MailDomain::test("shop", "shop.example.com")];
        let sidecar = crate::render::sidecar_config(&relay, &domains).expect("render");
        let h = sidecar.handoff.clone().expect("the sidecars hand off");
        assert_eq!((h.host.as_str(), h.port), ("outbound-hub.shop.svc", HUB_PORT));
        let hub = config(&sidecar, "outbound", "shop", &HubSpec::default()).expect("hub config");
        assert_eq!(hub.listen.address.to_string(), "0.0.0.0:2465");
        assert!(hub.listen.tls.is_some() && hub.listen.auth.is_some());
        assert_eq!(hub.admin.address.to_string(), "0.0.0.0:9465");
        assert!(hub.handoff.is_none());
        assert!(hub.domains.iter().all(|d| d.dkim.is_none()));
        assert_eq!(hub.delivery, sidecar.delivery, "the Relay's own route");
        assert_eq!(hub.retry, sidecar.retry, "and its retries and expiry");
        assert_eq!(hub.spool.max_bytes, (1024.0 * 1024.0 * 1024.0 * 0.8) as u64);
        // What the sidecar binary loads: the YAML round-trips through the config crate.
        let yaml = serde_yaml_ng::to_string(&hub).expect("yaml");
        let back = Config::parse(std::path::Path::new("hub.yaml"), &yaml).expect("the sidecar loads it");
        assert_eq!(back, hub);
    }

    /// What the hub's config names is where its pod mounts it (a missing mount is a crash loop:
    /// the real node found one).
    #[test]
    fn every_file_the_hub_config_names_is_under_a_hub_mount() {
        let mut relay = Relay::smarthost_test();
        relay.spec.hub = Some(HubSpec::default());
        let sidecar = crate::render::sidecar_config(&relay, &[MailDomain::test("shop", "shop.example.com")])
            .expect("render");
        let hub = config(&sidecar, "outbound", "shop", &HubSpec::default()).expect("hub config");
        let o = objects(&relay, "img", "text", |n| ObjectMeta {
            name: Some(n),
            ..Default::default()
        });
        let pod = o.stateful_set.spec.expect("spec").template.spec.expect("pod");
        let mounts: Vec<String> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        let mailroom_config::Delivery::Smarthost(sh) = &hub.delivery else {
            panic!("smarthost")
        };
        let auth = sh.auth.clone().expect("auth");
        let tls = hub.listen.tls.clone().expect("tls");
        let listen_auth = hub.listen.auth.clone().expect("auth");
        for path in [
            hub.spool.dir.clone(),
            auth.username_file,
            auth.password_file,
            sh.ca_file.clone().expect("ca"),
            tls.cert_file,
            tls.key_file,
            listen_auth.username_file,
            listen_auth.password_file,
            std::path::PathBuf::from(HUB_CONFIG_MOUNT).join(CONFIG_KEY),
        ] {
            assert!(
                mounts.iter().any(|m| path.starts_with(m)),
                "{} is under no mount of {mounts:?}",
                path.display()
            );
        }
        let volumes: Vec<String> = pod.volumes.iter().flatten().map(|v| v.name.clone()).collect();
        for m in pod.containers[0].volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(&m.name) || m.name == "spool",
                "mount {} has no volume",
                m.name
            );
        }
    }

    /// `durability: replicated` gives the sidecars the hub pods by name (each on the hub's
    /// certificate); every hub checks the owners of the copies it holds, whatever the mode.
    #[test]
    fn replicated_durability_names_each_hub_pod_and_every_hub_checks_owners() {
        let domains = [MailDomain::test("shop", "shop.example.com")];
        let spec = HubSpec {
            replicas: Some(3),
            durability: Some(Durability::Replicated),
            ..Default::default()
        };
        let relay = relay_with_hub("outbound", spec.clone());
        let sidecar = crate::render::sidecar_config(&relay, &domains).expect("render");
        let shadows = sidecar
            .handoff
            .as_ref()
            .and_then(|h| h.shadows.clone())
            .expect("shadows");
        assert_eq!(
            shadows.hosts,
            vec![
                "outbound-hub-0.outbound-hub.shop.svc",
                "outbound-hub-1.outbound-hub.shop.svc",
                "outbound-hub-2.outbound-hub.shop.svc"
            ]
        );
        let names = cert_names("outbound", "shop");
        for host in &shadows.hosts {
            assert!(names.contains(host), "{host} is on the certificate");
        }
        assert!(names.contains(&pod_host("outbound", "shop", MAX_REPLICAS - 1)));
        let hub = config(&sidecar, "outbound", "shop", &spec).expect("hub config");
        let owners = hub.shadows.expect("owner checks");
        assert_eq!(
            (owners.namespace.as_str(), owners.pod_selector.as_str()),
            ("shop", "mailroom.dev/hub-client=outbound")
        );
        let plain = relay_with_hub("outbound", HubSpec::default());
        let sidecar = crate::render::sidecar_config(&plain, &domains).expect("render");
        assert!(
            sidecar.handoff.clone().expect("handoff").shadows.is_none(),
            "handoff mode: no copies"
        );
        let hub = config(&sidecar, "outbound", "shop", &HubSpec::default()).expect("hub config");
        assert!(
            hub.shadows.is_some(),
            "copies made before a switch are still looked after"
        );
    }

    #[test]
    fn storage_quantities_and_name_limits() {
        for (q, want) in [
            ("1Gi", Some(1 << 30)),
            ("512Mi", Some(512 << 20)),
            ("1.5G", Some(1_500_000_000)),
            ("1000", Some(1000)),
            ("0", None),
            ("1Xi", None),
            ("Gi", None),
        ] {
            assert_eq!(storage_bytes(q), want, "{q}");
        }
        let long = "r".repeat(MAX_RELAY_NAME + 1);
        let relay = relay_with_hub(&long, HubSpec::default());
        let sidecar = crate::render::sidecar_config(&relay, &[MailDomain::test("shop", "shop.example.com")])
            .expect("render");
        let err = config(&sidecar, &long, "shop", &HubSpec::default()).expect_err("too long");
        assert!(err.to_string().contains("at most 48"), "{err}");
    }

    #[test]
    fn the_workload_is_restricted_keeps_its_volumes_and_admits_only_the_relays_pods() {
        let relay = relay_with_hub(
            "outbound",
            HubSpec {
                replicas: Some(3),
                storage: Some("5Gi".into()),
                ..Default::default()
            },
        );
        let o = objects(&relay, "mailroom-sidecar:test", "json", |n| ObjectMeta {
            name: Some(n),
            ..Default::default()
        });
        let spec = o.stateful_set.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let retention = spec.persistent_volume_claim_retention_policy.expect("retention");
        assert_eq!(
            (
                retention.when_deleted.as_deref(),
                retention.when_scaled.as_deref()
            ),
            (Some("Retain"), Some("Retain"))
        );
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        // Its sessions may use every CPU (a sidecar's sessions run on one thread).
        let threads = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SIDECAR_SESSION_THREADS");
        assert_eq!(threads.and_then(|e| e.value.as_deref()), Some("0"));
        // Its own account, which may only list pods (the owners of its shadow copies).
        assert_eq!(pod.service_account_name.as_deref(), Some("outbound-hub"));
        let rules = o.role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_string()][..]));
        assert_eq!(rules[0].verbs, vec!["list".to_string()]);
        assert_eq!(o.role_binding.role_ref.name, "outbound-hub");
        let subject = &o.role_binding.subjects.expect("subjects")[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "outbound-hub", Some("shop"))
        );
        let svc = o.service.spec.expect("service");
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        let rules = o.network_policy.spec.and_then(|s| s.ingress).expect("ingress");
        let smtp = &rules[0];
        let labels = smtp
            .from
            .as_ref()
            .and_then(|f| f[0].pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone());
        assert_eq!(
            labels.and_then(|l| l.get(HUB_CLIENT_LABEL).cloned()).as_deref(),
            Some("outbound")
        );
        assert!(
            rules[1].from.is_none(),
            "metrics and probes from anywhere, on the admin port only"
        );
    }
}
