//! A Relay's hub (docs/hub.md) against a real kube-apiserver, the operator running as its
//! ServiceAccount (bound to exactly operator/rbac/rules.yaml): `spec.hub` renders the hub's
//! config, certificate, credential and workload; `HubReady` follows the StatefulSet; the pod
//! template passes PodSecurity `restricted` in the apiserver's own admission; removing
//! `spec.hub` removes the workload.

use mailroom_test_support::operator as common;

use anyhow::{Context as _, Result};
use common::{Env, ready, rendered_config, wait_for, wait_gone, webhook::domain};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use mailroom_operator::crd::{Relay, RelaySpec};
use serde_json::json;

fn condition(r: &Relay, type_: &str) -> (String, String) {
    ready(
        &r.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        type_,
    )
}

fn text(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn spec_hub_renders_a_restricted_hub_that_reports_its_readiness_and_goes_away_with_it() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace().await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "shop", &allowed).await?;
    let spec: RelaySpec = serde_yaml_ng::from_str(
        "domains: [shop]
delivery:
  smarthost: {host: smtp.provider.net, port: 587}
hub: {replicas: 2, storage: 2Gi, storageClassName: fast, drainReserveSeconds: 8, durability: replicated}",
    )?;
    let relays: Api<Relay> = Api::namespaced(env.admin.clone(), &ns);
    relays
        .create(&PostParams::default(), &Relay::new("outbound", spec))
        .await?;
    let r = wait_for(&relays, "outbound", |r: &Relay| {
        condition(r, "Ready").1 == "Reconciled" && condition(r, "HubReady").1 == "HubNotReady"
    })
    .await?;
    let hub_status = r
        .status
        .as_ref()
        .and_then(|s| s.hub.clone())
        .context("status.hub")?;
    assert_eq!(
        (
            hub_status.service.as_str(),
            hub_status.replicas,
            hub_status.ready_replicas
        ),
        ("outbound-hub", 2, 0)
    );

    // The sidecars hand off to the hub's Service, with the credential files the webhook mounts.
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &ns);
    let (_, _, sidecar) = rendered_config(&cms, "outbound").await?;
    let handoff = sidecar.handoff.context("handoff")?;
    assert_eq!(handoff.host, format!("outbound-hub.{ns}.svc"));
    assert_eq!((handoff.port, handoff.drain_reserve_seconds), (2465, 8));
    assert!(handoff.password_file.starts_with("/etc/mailroom/hub"));
    // Replicated: each hub pod by its own name (a copy lives on one pod's volume).
    let shadows = handoff.shadows.context("handoff.shadows")?;
    assert_eq!(
        shadows.hosts,
        vec![
            format!("outbound-hub-0.outbound-hub.{ns}.svc"),
            format!("outbound-hub-1.outbound-hub.{ns}.svc")
        ]
    );

    // The hub's own config: the pod network, TLS and the credential, no keys, no hand-off.
    let hub_cm = cms.get("outbound-hub").await?;
    let hub_text = hub_cm
        .data
        .as_ref()
        .and_then(|d| d.get("sidecar.yaml"))
        .context("hub config")?;
    let hub = mailroom_config::Config::parse(std::path::Path::new("hub.yaml"), hub_text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(hub.listen.tls.is_some() && hub.listen.auth.is_some() && hub.handoff.is_none());
    assert!(
        hub.domains.iter().all(|d| d.dkim.is_none()),
        "the hub never signs"
    );
    assert_eq!(hub.spool.max_bytes, (2.0 * 1024.0 * 1024.0 * 1024.0 * 0.8) as u64);
    let owners = hub.shadows.context("the hub checks the owners of its copies")?;
    assert_eq!(
        (owners.namespace.as_str(), owners.pod_selector.as_str()),
        (ns.as_str(), "mailroom.dev/hub-client=outbound")
    );

    // Certificate for the Service's names, signed by the CA the sidecars trust; a credential of
    // 256 bits.
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let tls = secrets.get("outbound-hub-tls").await?;
    let auth = secrets.get("outbound-hub-auth").await?;
    assert_eq!(text(&tls, "ca.crt"), text(&auth, "ca.crt"));
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("ca.pem"), text(&tls, "ca.crt"))?;
    std::fs::write(dir.path().join("tls.pem"), text(&tls, "tls.crt"))?;
    for name in [
        format!("outbound-hub.{ns}.svc"),
        format!("outbound-hub-1.outbound-hub.{ns}.svc"),
    ] {
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", "ca.pem", "-verify_hostname"])
            .arg(&name)
            .arg("tls.pem")
            .current_dir(dir.path())
            .output()
            .context("the openssl CLI is required (apt-get install openssl)")?;
        assert!(
            verify.status.success(),
            "openssl verify {name}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let password = text(&auth, "password");
    assert_eq!(password.len(), 64);

    // The workload, owned by the Relay.
    let sts: Api<StatefulSet> = Api::namespaced(env.admin.clone(), &ns);
    let set = sts.get("outbound-hub").await?;
    assert_eq!(
        set.metadata.owner_references.as_ref().map(|o| o[0].kind.as_str()),
        Some("Relay")
    );
    let set_spec = set.spec.clone().context("spec")?;
    assert_eq!(set_spec.replicas, Some(2));
    let claim = &set_spec.volume_claim_templates.as_ref().context("claims")?[0];
    let claim_spec = claim.spec.as_ref().context("claim spec")?;
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    let retention = set_spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .context("retention")?;
    assert_eq!(
        retention.when_deleted.as_deref(),
        Some("Retain"),
        "volumes that may hold mail stay"
    );
    let svc = Api::<Service>::namespaced(env.admin.clone(), &ns)
        .get("outbound-hub")
        .await?;
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).as_deref(),
        Some("None")
    );
    Api::<PodDisruptionBudget>::namespaced(env.admin.clone(), &ns)
        .get("outbound-hub")
        .await?;
    let policy = Api::<NetworkPolicy>::namespaced(env.admin.clone(), &ns)
        .get("outbound-hub")
        .await?;
    // The hub's account may list the pods of its namespace (the owners of its copies), and
    // nothing else: the apiserver's own authorizer says so.
    let hub_client = env.cp.client_for_service_account(&ns, "outbound-hub").await?;
    Api::<Pod>::namespaced(hub_client.clone(), &ns)
        .list(&Default::default())
        .await
        .context("the hub lists the pods of its namespace")?;
    let denied = Api::<Secret>::namespaced(hub_client.clone(), &ns)
        .list(&Default::default())
        .await
        .expect_err("the hub reads no Secret through the apiserver");
    assert!(
        matches!(denied, kube::Error::Api(ref e) if e.code == 403),
        "{denied}"
    );
    let elsewhere = Api::<Pod>::namespaced(hub_client, "default")
        .list(&Default::default())
        .await
        .expect_err("nor pods of another namespace");
    assert!(
        matches!(elsewhere, kube::Error::Api(ref e) if e.code == 403),
        "{elsewhere}"
    );
    let rules = policy.spec.and_then(|s| s.ingress).context("ingress")?;
    let smtp_from = serde_json::to_value(&rules[0].from)?;
    assert_eq!(
        smtp_from[0]["podSelector"]["matchLabels"]["mailroom.dev/hub-client"], "outbound",
        "only this Relay's injected pods reach the hub's SMTP port"
    );

    // PodSecurity `restricted`, by the apiserver's own admission: a pod from the template is
    // admitted in a namespace that enforces it.
    let strict = format!("{ns}-restricted");
    let namespaces: Api<Namespace> = Api::all(env.admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(strict.clone()),
                    labels: Some(
                        [(
                            "pod-security.kubernetes.io/enforce".to_string(),
                            "restricted".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(env.admin.clone(), &strict)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "outbound-hub"}}))?,
        )
        .await?;
    let mut pod_spec = set_spec.template.spec.context("template spec")?;
    // The StatefulSet controller adds the claim's volume; an emptyDir stands in for it here.
    pod_spec
        .volumes
        .get_or_insert_with(Vec::new)
        .push(k8s_openapi::api::core::v1::Volume {
            name: "spool".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("hub-template".into()),
            ..Default::default()
        },
        spec: Some(pod_spec),
        ..Default::default()
    };
    Api::<Pod>::namespaced(env.admin.clone(), &strict)
        .create(&PostParams::default(), &pod)
        .await
        .context("the hub's pod template must pass PodSecurity restricted")?;

    // HubReady follows the StatefulSet's status (written here as its controller would).
    sts.patch_status(
        "outbound-hub",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}})),
    )
    .await?;
    let r = wait_for(&relays, "outbound", |r: &Relay| {
        condition(r, "HubReady").1 == "HubReady"
    })
    .await?;
    assert_eq!(condition(&r, "HubReady").0, "True");

    // A change keeps the credential (sidecars already hold it) and reaches the workload.
    relays
        .patch(
            "outbound",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hub": {"replicas": 3}}})),
        )
        .await?;
    wait_for(&sts, "outbound-hub", |s: &StatefulSet| {
        s.spec.as_ref().and_then(|s| s.replicas) == Some(3)
    })
    .await?;
    assert_eq!(
        text(&secrets.get("outbound-hub-auth").await?, "password"),
        password
    );

    // Without spec.hub the workload goes, and so do its condition and status.
    relays
        .patch(
            "outbound",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hub": null}})),
        )
        .await?;
    wait_gone(&sts, "outbound-hub").await?;
    wait_gone(
        &Api::<Service>::namespaced(env.admin.clone(), &ns),
        "outbound-hub",
    )
    .await?;
    wait_gone(
        &Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(env.admin.clone(), &ns),
        "outbound-hub",
    )
    .await?;
    let r = wait_for(&relays, "outbound", |r: &Relay| {
        r.status.as_ref().is_some_and(|s| s.hub.is_none())
    })
    .await?;
    assert_eq!(condition(&r, "HubReady"), (String::new(), String::new()));
    let (_, _, sidecar) = rendered_config(&cms, "outbound").await?;
    assert!(sidecar.handoff.is_none(), "sidecars stop handing off");
    Ok(())
}
