//! The hub on the real node (docs/hub.md): the operator's StatefulSet runs from our image with a
//! PersistentVolume, a deleted app pod hands its queue to it, the hub pod is killed and
//! rescheduled and replays its volume, and once the smarthost is back every message arrives,
//! once, with the sidecar's DKIM signature.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mailroom_test_support::{Options, admission::SIDECAR, peers};
use serde_json::json;

use crate::scene::{Scene, bulk_app_command, container};

/// Messages queued in the app pod when it is deleted.
const COUNT: usize = 1000;

/// kube-controller-manager's controllers a StatefulSet with a volume needs, on top of the
/// default ones, and the scheduler's taint lifting.
const CONTROLLERS: &[&str] = &[
    "statefulset-controller",
    "persistentvolume-binder-controller",
    "node-lifecycle-controller",
];

#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_deleted_pod_hands_its_queue_to_the_hub_which_survives_a_lost_pod() -> Result<()> {
    let mut options = Options::default();
    options
        .controllers
        .extend(CONTROLLERS.iter().map(|c| c.to_string()));
    options.scheduler = true;
    let mut s = Scene::start_on(options).await?;
    let gateway = s.node.gateway().to_string();
    // Pods resolve through the node's gateway (their resolv.conf): the hub's Service name.
    // Its own folder: the zone file of the mission's DNS server is `zone.txt` in the mission's.
    let dns_dir = s.m.dir().join("pod-dns");
    std::fs::create_dir_all(&dns_dir)?;
    let dns = peers::DnsServer::start_on(&dns_dir, &gateway, 53)?;

    // The hub's volume: a hostPath PersistentVolume of a no-provisioner class, bound at once.
    let pv_dir = s.m.dir().join("hub-volume");
    std::fs::create_dir_all(&pv_dir)?;
    // hostPath volumes ignore fsGroup: the hub's user (65532) must be able to write.
    std::fs::set_permissions(&pv_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    s.m.apply(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: mailroom-test}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate",
    )
    .await?;
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "hub-spool-0"},
        "spec": {"capacity": {"storage": "256Mi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "mailroom-test",
                 "hostPath": {"path": pv_dir.display().to_string(), "type": "Directory"}}
    }))?;
    Api::<PersistentVolume>::all(s.m.client.clone())
        .create(&PostParams::default(), &pv)
        .await?;

    // The smarthost is down; the Relay has a hub of one pod.
    s.relay_with(
        s.closed_port()?,
        "  hub: {replicas: 1, storage: 256Mi, storageClassName: mailroom-test, drainReserveSeconds: 20}",
    )
    .await?;
    let hub_ip = wait_hub(&s, None).await?;
    let service = format!("outbound-hub.{}.svc", s.m.app_ns);
    dns.publish(&format!("{service}. 5 IN A {hub_ip}"));
    s.m.wait_condition("Relay", "outbound", "HubReady").await?;

    // The app queues COUNT messages (each acknowledged) and the pod is deleted.
    s.run_app_with("shop-0", 60, &bulk_app_command(COUNT)).await?;
    s.node
        .wait_log(
            (&s.m.app_ns, "shop-0", "app"),
            "app: sent",
            1,
            Duration::from_secs(180),
        )
        .await
        .with_context(|| s.node.container_log(&s.m.app_ns, "shop-0", "app"))?;
    let t0 = Instant::now();
    let marks = s
        .delete_watching("shop-0", &[(SIDECAR, "drain complete"), (SIDECAR, "drain ended")])
        .await?;
    let report = marks[0]
        .clone()
        .or(marks[1].clone())
        .context("the sidecar logged no drain report")?;
    eprintln!(
        "node: app pod gone {:.1?} after delete: {}",
        t0.elapsed(),
        report.1
    );
    ensure!(
        report.1.contains("drain complete") && report.1.contains(&format!("handed_off={COUNT}")),
        "every message went to the hub: {}",
        report.1
    );

    // The hub pod is lost (deleted without grace, as with a failed node); its StatefulSet makes
    // a new one, which mounts the same volume and replays it.
    let hubs: Api<Pod> = Api::namespaced(s.m.client.clone(), &s.m.app_ns);
    let old_uid = hubs.get("outbound-hub-0").await?.metadata.uid;
    hubs.delete(
        "outbound-hub-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let hub_ip = wait_hub(&s, old_uid).await?;
    dns.publish(&format!("{service}. 5 IN A {hub_ip}"));
    let want = format!("spool replayed messages={COUNT}");
    s.node
        .wait_log(
            (&s.m.app_ns, "outbound-hub-0", "mailroom-hub"),
            &want,
            1,
            Duration::from_secs(60),
        )
        .await
        .with_context(|| {
            format!(
                "the new hub pod did not replay the volume:\n{}",
                s.node
                    .container_log(&s.m.app_ns, "outbound-hub-0", "mailroom-hub")
            )
        })?;

    // The smarthost comes back (the Relay points at it): the hub delivers everything.
    let patch = json!({"spec": {"delivery": {"smarthost": {"port": s.upstream.port}}}});
    let relays: Api<kube::api::DynamicObject> = Api::namespaced_with(
        s.m.client.clone(),
        &s.m.app_ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "mailroom.dev",
            "v1alpha1",
            "Relay",
        )),
    );
    relays
        .patch("outbound", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let t0 = Instant::now();
    let messages = s.wait_messages(COUNT, Duration::from_secs(240)).await?;
    eprintln!(
        "node: {} messages delivered by the hub {:.1?} after the smarthost came back",
        messages.len(),
        t0.elapsed()
    );
    let mut subjects = std::collections::BTreeMap::new();
    for eml in &messages {
        let text = std::fs::read_to_string(eml)?;
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string();
        *subjects.entry(subject).or_insert(0usize) += 1;
        let signatures = text.lines().filter(|l| l.starts_with("DKIM-Signature:")).count();
        ensure!(signatures == 1, "{}: {signatures} signatures", eml.display());
    }
    let missing: Vec<usize> = (0..COUNT)
        .filter(|n| !subjects.contains_key(&format!("hub-{n}")))
        .collect();
    ensure!(missing.is_empty(), "lost: {missing:?}");
    let duplicates = messages.len() - subjects.len();
    ensure!(duplicates * 1000 <= COUNT, "{duplicates} duplicates");
    // dkimpy checks the sidecar's signature against the published record, on a sample.
    for eml in messages.iter().step_by(COUNT / 10) {
        peers::dkim_verify_dns_at(eml, &s.m.dns.addr())?;
    }
    Ok(())
}

/// Waits for a Ready `outbound-hub-0` (another pod than `old`, when given); its address.
async fn wait_hub(s: &Scene, old: Option<String>) -> Result<String> {
    let pod = s
        .wait_pod("outbound-hub-0", Duration::from_secs(180), |p| {
            let ready = container(p, "mailroom-hub")["ready"] == true;
            ready && (old.is_none() || p["metadata"]["uid"].as_str() != old.as_deref())
        })
        .await
        .with_context(|| {
            format!(
                "the hub's log:\n{}",
                s.node
                    .container_log(&s.m.app_ns, "outbound-hub-0", "mailroom-hub")
            )
        })?;
    pod["status"]["podIP"]
        .as_str()
        .map(str::to_owned)
        .context("hub pod IP")
}
