use std::path::Path;

use k8s_openapi::api::core::v1::PodSpec;
use mailroom_config::Delivery as ScDelivery;

use super::*;
use crate::{crd::MailDomain, settings::Settings};

fn settings() -> WebhookSettings {
    Settings::parse(&std::collections::HashMap::new())
        .expect("defaults")
        .webhook
}

fn pod(yaml: &str) -> Pod {
    serde_yaml_ng::from_str(yaml).expect("pod yaml")
}

const APP: &str = "
metadata: {name: app, labels: {mailroom.dev/relay: outbound}}
spec:
  containers: [{name: app, image: app}]
";

/// Applies the patch the way the apiserver does and reads the result back as a Pod.
fn inject(pod: &Pod, relay: &Relay) -> Pod {
    let ops = patch(pod, relay, &settings()).expect("patch");
    let mut doc = serde_json::to_value(pod).expect("json");
    json_patch::patch(&mut doc, &ops).expect("patch applies");
    serde_json::from_value(doc).expect("still a pod")
}

fn sidecar(pod: &Pod) -> Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.init_containers.as_ref().expect("init containers")[0].clone()
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn plain_pod_gets_a_native_sidecar_volumes_env_sysctl_and_markers() {
    let out = inject(&pod(APP), &Relay::smarthost_test());
    let sc = sidecar(&out);
    assert_eq!(sc.name, SIDECAR_NAME);
    assert_eq!(sc.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sc.command, Some(vec!["mailroom-sidecar".to_string()]));
    assert_eq!(env(&sc, "SIDECAR_LISTEN_ADDR").as_deref(), Some("127.0.0.1:25"));
    assert_eq!(env(&sc, "SIDECAR_ADMIN_ADDR").as_deref(), Some("0.0.0.0:9465"));
    assert_eq!(env(&sc, "SIDECAR_DRAIN_SECONDS").as_deref(), Some("25"));
    assert_eq!(env(&sc, "SIDECAR_LOG_FORMAT").as_deref(), Some("plain"));
    // The pod's identity from the downward API: the owner of its shadow copies.
    for (name, path) in [
        ("SIDECAR_POD_NAME", "metadata.name"),
        ("SIDECAR_POD_UID", "metadata.uid"),
    ] {
        let field = sc
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(field.as_deref(), Some(path), "{name}");
    }
    assert_eq!(
        capped_drain(25, Some(10)),
        10,
        "a shorter configured deadline wins"
    );
    assert_eq!(capped_drain(25, Some(60)), 25, "never past the grace period");
    assert_eq!(capped_drain(25, None), 25);
    let ctx = sc.security_context.clone().expect("security context");
    assert_eq!(ctx.run_as_non_root, Some(true));
    assert_eq!(ctx.read_only_root_filesystem, Some(true));
    assert_eq!(ctx.allow_privilege_escalation, Some(false));
    assert_eq!(
        ctx.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        ctx.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert!(sc.startup_probe.is_some() && sc.readiness_probe.is_some() && sc.liveness_probe.is_some());

    let spec = out.spec.clone().expect("spec");
    let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mailroom-config",
            "mailroom-dkim",
            "mailroom-credentials",
            "mailroom-smarthost-ca",
            "mailroom-spool"
        ]
    );
    let app = &spec.containers[0];
    assert_eq!(env(app, "SMTP_HOST").as_deref(), Some("127.0.0.1"));
    assert_eq!(env(app, "SMTP_PORT").as_deref(), Some("25"));
    let sysctls = spec.security_context.and_then(|c| c.sysctls).expect("sysctls");
    assert_eq!(
        (sysctls[0].name.as_str(), sysctls[0].value.as_str()),
        (PORT_SYSCTL, "25")
    );
    assert_eq!(out.labels().get(INJECTED_LABEL).map(String::as_str), Some("true"));
    assert!(out.annotations().contains_key(INJECTED_ANNOTATION));
}

/// A backup smarthost's Secrets are mounted where the rendered config names them.
#[test]
fn a_backup_smarthost_gets_its_own_credentials_and_ca_mounted() {
    let mut relay = Relay::smarthost_test();
    if let Some(s) = relay.spec.delivery.smarthost.as_mut() {
        s.backup = Some(crate::crd::BackupSmarthostSpec {
            host: "backup.example.net".into(),
            port: 465,
            tls: crate::crd::SmarthostTls::Implicit,
            credentials_secret_ref: Some(crate::crd::CredentialsSecretRef {
                name: "backup-creds".into(),
                username_key: "u".into(),
                password_key: "p".into(),
            }),
            ca_secret_ref: Some(crate::crd::SecretKeyRef {
                name: "backup-ca".into(),
                key: "ca.pem".into(),
            }),
            auth_mechanism: None,
            max_connections: None,
        });
    }
    let out = inject(&pod(APP), &relay);
    let spec = out.spec.expect("spec");
    let secret_of = |volume: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .and_then(|v| v.secret.as_ref()?.secret_name.clone())
    };
    assert_eq!(
        secret_of("mailroom-backup-credentials").as_deref(),
        Some("backup-creds")
    );
    assert_eq!(secret_of("mailroom-backup-ca").as_deref(), Some("backup-ca"));
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .expect("sidecar");
    let mounts: Vec<(&str, &str)> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(mounts.contains(&(
        "mailroom-backup-credentials",
        crate::render::BACKUP_CREDENTIALS_MOUNT
    )));
    assert!(mounts.contains(&("mailroom-backup-ca", crate::render::BACKUP_CA_MOUNT)));
    // The rendered config names the same paths: the golden file
    // (tests/fixtures/sidecar-config/rendered-relay.yaml) has a backup.
}

#[test]
fn reinjecting_an_injected_pod_changes_nothing() {
    let relay = Relay::smarthost_test();
    let once = inject(&pod(APP), &relay);
    assert!(patch(&once, &relay, &settings()).expect("patch").is_empty());
    assert_eq!(inject(&once, &relay), once);
}

#[test]
fn existing_settings_are_kept_and_ours_are_added_beside_them() {
    let existing = pod("
metadata: {name: app, labels: {mailroom.dev/relay: outbound}, annotations: {a: b}}
spec:
  terminationGracePeriodSeconds: 60
  securityContext: {sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: '1024'}]}
  initContainers: [{name: migrate, image: app}]
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - {name: app, image: app, env: [{name: SMTP_HOST, value: mail.internal}]}
  - {name: worker, image: app}
");
    let out = inject(&existing, &Relay::test("shop", "outbound", &["shop"]));
    let spec = out.spec.clone().expect("spec");
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        inits,
        [SIDECAR_NAME, "migrate"],
        "sidecar first, so init containers can send too"
    );
    assert_eq!(
        env(&sidecar(&out), "SIDECAR_DRAIN_SECONDS").as_deref(),
        Some("55")
    );
    let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data",
            "mailroom-config",
            "mailroom-dkim",
            "mailroom-spool",
            "mailroom-capture"
        ]
    );
    assert_eq!(
        env(&spec.containers[0], "SMTP_HOST").as_deref(),
        Some("mail.internal")
    );
    assert_eq!(env(&spec.containers[0], "SMTP_PORT").as_deref(), Some("25"));
    assert_eq!(
        env(&spec.containers[1], "SMTP_HOST").as_deref(),
        Some("127.0.0.1")
    );
    let sysctls = spec.security_context.and_then(|c| c.sysctls).expect("sysctls");
    assert_eq!(sysctls.len(), 1);
    assert_eq!(
        sysctls[0].value, "25",
        "a higher start would keep the sidecar from binding"
    );
    assert_eq!(out.annotations().get("a").map(String::as_str), Some("b"));
}

#[test]
fn unprivileged_port_needs_no_sysctl_and_a_lower_start_is_kept() {
    let mut relay = Relay::test("shop", "outbound", &["shop"]);
    relay.spec.listen_port = 2525;
    let out = inject(&pod(APP), &relay);
    assert_eq!(out.spec.clone().and_then(|s| s.security_context), None);
    assert_eq!(
        env(&sidecar(&out), "SIDECAR_LISTEN_ADDR").as_deref(),
        Some("127.0.0.1:2525")
    );

    let low = pod("
metadata: {name: app, labels: {mailroom.dev/relay: outbound}}
spec:
  securityContext: {sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: '0'}]}
  containers: [{name: app, image: app}]
");
    let out = inject(&low, &Relay::test("shop", "outbound", &["shop"]));
    let sysctls = out.spec.and_then(|s| s.security_context).and_then(|c| c.sysctls);
    assert_eq!(sysctls.map(|s| s[0].value.clone()).as_deref(), Some("0"));
}

#[test]
fn a_volume_named_like_ours_is_refused() {
    let taken = pod("
metadata: {name: app, labels: {mailroom.dev/relay: outbound}}
spec:
  volumes: [{name: mailroom-spool, emptyDir: {}}]
  containers: [{name: app, image: app}]
");
    let err = patch(&taken, &Relay::test("shop", "outbound", &["shop"]), &settings()).expect_err("conflict");
    assert!(err.to_string().contains("mailroom-spool"), "{err}");
}

#[test]
fn every_path_in_the_rendered_config_is_under_a_sidecar_mount() {
    let relay = Relay::smarthost_test();
    let domains = [MailDomain::test("shop", "shop.example.com")];
    let config = render::sidecar_config(&relay, &domains).expect("render");
    let out = inject(&pod(APP), &relay);
    let sc = sidecar(&out);
    let mounts: Vec<String> = sc
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    let ScDelivery::Smarthost(s) = &config.delivery else {
        panic!("smarthost expected")
    };
    let auth = s.auth.as_ref().expect("auth");
    let mut paths = vec![
        config.spool.dir.clone(),
        auth.username_file.clone(),
        auth.password_file.clone(),
        s.ca_file.clone().expect("ca file"),
    ];
    paths.extend(
        config
            .domains
            .iter()
            .filter_map(|d| d.dkim.as_ref())
            .map(|d| d.key_file.clone()),
    );
    paths.push(env(&sc, "SIDECAR_CONFIG_PATH").expect("config path").into());
    for path in paths {
        let mount = mounts.iter().find(|m| path.starts_with(Path::new(m)));
        assert!(
            mount.is_some(),
            "{} is under no mount of {mounts:?}",
            path.display()
        );
    }
    // The files inside the mounts are the Secret keys the config names.
    assert_eq!(auth.username_file, Path::new(CREDENTIALS_MOUNT).join("user"));
    assert_eq!(
        s.ca_file.as_deref(),
        Some(Path::new(CA_MOUNT).join("ca.pem").as_path())
    );
}

#[test]
fn spool_size_limit_exceeds_the_rendered_spool_limit() {
    let relay = Relay::test("shop", "outbound", &["shop"]);
    let config =
        render::sidecar_config(&relay, &[MailDomain::test("shop", "shop.example.com")]).expect("render");
    let limit_mib: u64 = SPOOL_SIZE_LIMIT
        .trim_end_matches("Mi")
        .parse()
        .expect("Mi quantity");
    assert!(limit_mib * 1024 * 1024 >= config.spool.max_bytes + config.spool.max_bytes / 5);
}

#[test]
fn drain_leaves_a_margin_of_the_grace_period() {
    struct Case {
        grace: Option<i64>,
        want: i64,
    }
    for Case { grace, want } in [
        Case {
            grace: None,
            want: 25,
        },
        Case {
            grace: Some(60),
            want: 55,
        },
        Case {
            grace: Some(11),
            want: 6,
        },
        Case {
            grace: Some(10),
            want: 5,
        },
        Case {
            grace: Some(3),
            want: 1,
        },
        Case {
            grace: Some(0),
            want: 0,
        },
        Case {
            grace: Some(-5),
            want: 0,
        },
    ] {
        assert_eq!(drain_seconds(grace), want, "grace {grace:?}");
    }
}

#[test]
fn the_label_names_the_relay_and_the_annotation_fills_in_an_empty_label() {
    struct Case {
        yaml: &'static str,
        want: Option<&'static str>,
    }
    for Case { yaml, want } in [
        Case {
            yaml: "metadata: {labels: {mailroom.dev/relay: a}, annotations: {mailroom.dev/relay: b}}",
            want: Some("a"),
        },
        Case {
            yaml: "metadata: {labels: {mailroom.dev/relay: ''}, annotations: {mailroom.dev/relay: b}}",
            want: Some("b"),
        },
        Case {
            yaml: "metadata: {labels: {mailroom.dev/relay: ''}}",
            want: None,
        },
        Case {
            yaml: "metadata: {annotations: {mailroom.dev/relay: b}}",
            want: Some("b"),
        },
    ] {
        assert_eq!(relay_name(&pod(yaml)).as_deref(), want, "{yaml}");
    }
    assert!(!is_injected(&Pod {
        spec: Some(PodSpec::default()),
        ..Default::default()
    }));
}

/// With a hub (docs/hub.md), the sidecar mounts the hand-off credential where its `handoff`
/// section names it, and the pod carries the label the hub's NetworkPolicy admits.
#[test]
fn a_relay_with_a_hub_mounts_its_credential_and_labels_the_pod_for_its_network_policy() {
    let mut relay = Relay::smarthost_test();
    relay.spec.hub = Some(crate::crd::HubSpec::default());
    let domains = [MailDomain::test("shop", "shop.example.com")];
    let config = render::sidecar_config(&relay, &domains).expect("render");
    let handoff = config.handoff.expect("handoff");
    let out = inject(&pod(APP), &relay);
    let mounts: Vec<String> = sidecar(&out)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    for file in [&handoff.ca_file, &handoff.username_file, &handoff.password_file] {
        assert!(
            mounts.iter().any(|m| file.starts_with(Path::new(m))),
            "{} is under no mount of {mounts:?}",
            file.display()
        );
    }
    let volume = out
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "mailroom-hub"))
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone());
    assert_eq!(volume.as_deref(), Some("outbound-hub-auth"));
    assert_eq!(
        out.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(render::hub::HUB_CLIENT_LABEL))
            .map(String::as_str),
        Some("outbound")
    );
    // Without a hub: no credential, no label.
    let plain = inject(&pod(APP), &Relay::smarthost_test());
    assert!(
        plain
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| !l.contains_key(render::hub::HUB_CLIENT_LABEL))
    );
}

fn inject_with(pod: &Pod, relay: &Relay, settings: &WebhookSettings) -> Pod {
    let ops = patch(pod, relay, settings).expect("patch");
    let mut doc = serde_json::to_value(pod).expect("json");
    json_patch::patch(&mut doc, &ops).expect("patch applies");
    serde_json::from_value(doc).expect("still a pod")
}

#[test]
fn pull_policy_pull_secrets_and_security_context_come_from_the_settings() {
    let relay = Relay::smarthost_test();
    let defaults = inject(&pod(APP), &relay);
    let sc = sidecar(&defaults);
    assert_eq!(
        sc.image_pull_policy, None,
        "Kubernetes' default unless configured"
    );
    assert_eq!(
        sc.security_context,
        Some(crate::settings::default_security_context())
    );
    assert_eq!(defaults.spec.and_then(|s| s.image_pull_secrets), None);

    let env = std::collections::HashMap::from([
        ("OPERATOR_SIDECAR_PULL_POLICY", "Always"),
        ("OPERATOR_SIDECAR_IMAGE_PULL_SECRETS", "regcred,mirror"),
        // OpenShift restricted-v2: the namespace's UID range is assigned, so no runAsUser.
        (
            "OPERATOR_SIDECAR_SECURITY_CONTEXT",
            r#"{"runAsNonRoot":true,"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}"#,
        ),
    ]);
    let settings = Settings::parse(&env).expect("valid").webhook;
    let sc = sidecar(&inject_with(&pod(APP), &relay, &settings));
    assert_eq!(sc.image_pull_policy.as_deref(), Some("Always"));
    let ctx = sc.security_context.expect("security context");
    assert_eq!((ctx.run_as_user, ctx.run_as_group), (None, None));
    assert_eq!(ctx.run_as_non_root, Some(true));

    // A pod with pull secrets of its own keeps them; ours are added once, never twice.
    let with_own = pod("
metadata: {name: app, labels: {mailroom.dev/relay: outbound}}
spec:
  imagePullSecrets: [{name: app-creds}, {name: regcred}]
  containers: [{name: app, image: app}]
");
    let names = |p: Pod| -> Vec<String> {
        p.spec
            .and_then(|s| s.image_pull_secrets)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(
        names(inject_with(&with_own, &relay, &settings)),
        ["app-creds", "regcred", "mirror"]
    );
    assert_eq!(
        names(inject_with(&pod(APP), &relay, &settings)),
        ["regcred", "mirror"]
    );
}

#[test]
fn session_threads_come_from_the_pod_annotation_else_the_setting_else_the_sidecar() {
    let relay = Relay::smarthost_test();
    let threads =
        |p: &Pod, s: &WebhookSettings| env(&sidecar(&inject_with(p, &relay, s)), "SIDECAR_SESSION_THREADS");
    let defaults = settings();
    assert_eq!(threads(&pod(APP), &defaults), None, "the sidecar's own default");

    let env = std::collections::HashMap::from([("OPERATOR_SIDECAR_SESSION_THREADS", "0")]);
    let configured = Settings::parse(&env).expect("valid").webhook;
    assert_eq!(threads(&pod(APP), &configured).as_deref(), Some("0"));

    let annotated = |v: &str| {
        pod(&format!(
            "
metadata:
  name: app
  labels: {{mailroom.dev/relay: outbound}}
  annotations: {{mailroom.dev/session-threads: {v:?}}}
spec:
  containers: [{{name: app, image: app}}]
"
        ))
    };
    assert_eq!(threads(&annotated("2"), &defaults).as_deref(), Some("2"));
    assert_eq!(
        threads(&annotated(" 3 "), &configured).as_deref(),
        Some("3"),
        "the pod wins"
    );

    // A value the sidecar would refuse at start-up refuses the pod now, naming the annotation.
    for bad in ["two", "-1", "1025", ""] {
        let err = patch(&annotated(bad), &relay, &defaults).expect_err(bad);
        assert_eq!(
            err.to_string(),
            format!(
                "pod annotation mailroom.dev/session-threads={bad:?}: expected a number of threads up to 1024, or 0 for one per CPU"
            )
        );
    }
}
