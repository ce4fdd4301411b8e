//! The hub on the real node (docs/hub.md): the operator's StatefulSet runs from our image with a
//! PersistentVolume, a deleted app pod hands its queue to it, the hub pod is killed and
//! rescheduled and replays its volume, and once the smarthost is back every message arrives,
//! once, with the sidecar's DKIM signature. With `durability: replicated`, an app pod whose
//! sidecar is frozen, killed and force-deleted (a lost node: no drain) loses nothing either: the
//! hub asks the apiserver, finds the pod gone, and delivers its copies.

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
    let (mut s, dns, service) = hub_scene("", false).await?;
    // The app queues COUNT messages (each acknowledged) and the pod is deleted.
    send_bulk(&s, COUNT).await?;
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
    publish_hub(&dns, &service, &hub_ip);
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
    smarthost_back(&s).await?;
    let duplicates = check_arrivals(&mut s, COUNT).await?;
    ensure!(duplicates * 1000 <= COUNT, "{duplicates} duplicates");
    Ok(())
}

/// Proof 3 of docs/hub.md on the real node: `durability: replicated`, the smarthost is down and
/// the app's sidecar has acknowledged every message (each after the hub's copy). The node is
/// lost: the sidecar is frozen (it can neither deliver nor drain), the pod is force-deleted, and
/// the process is killed (`kill -9`). The hub, with its own ServiceAccount, finds the pod gone
/// and delivers every copy once the smarthost is back: nothing acknowledged is lost.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_lost_pod_with_replicated_durability_loses_nothing() -> Result<()> {
    const REPLICATED: usize = 300;
    let (mut s, _dns, _service) = hub_scene(", durability: replicated", true).await?;
    let pod = send_bulk(&s, REPLICATED).await?;
    let id = container(&pod, SIDECAR)["containerID"]
        .as_str()
        .context("containerID")?
        .to_string();
    let pid = s.node.container_pid(&id)?;
    let signal = |sig: &str| -> Result<()> {
        let out = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .output()?;
        ensure!(
            out.status.success(),
            "kill {sig}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    signal("-STOP")?;
    s.pods
        .delete(
            "shop-0",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    signal("-KILL")?;
    // Every copy is promoted, none replaced by a hand-off: the pod neither drained nor handed off.
    let want = format!("messages={REPLICATED}");
    let log = s
        .node
        .wait_log(
            (&s.m.app_ns, "outbound-hub-0", "mailroom-hub"),
            "owner pod is gone",
            1,
            Duration::from_secs(90),
        )
        .await?;
    let line = log
        .lines()
        .find(|l| l.contains("owner pod is gone"))
        .unwrap_or_default();
    ensure!(line.contains(&want), "the hub promoted every copy: {line}");
    ensure!(
        !log.contains("hand-off of a message already held"),
        "nothing came as a hand-off:\n{log}"
    );
    smarthost_back(&s).await?;
    let duplicates = check_arrivals(&mut s, REPLICATED).await?;
    ensure!(duplicates == 0, "{duplicates} duplicates");
    Ok(())
}

/// A scene whose control plane runs the StatefulSet machinery, DNS for pods on the gateway, a
/// hostPath volume for one hub pod, and Relay `outbound` with a hub of one pod (`hub_extra`
/// added to `spec.hub`) whose smarthost is down; waits for `HubReady`. With `apiserver`, pods
/// reach the apiserver through the `kubernetes` Service (the hub asks it about its owners).
/// Returns the scene, the DNS server and the hub Service's name.
async fn hub_scene(hub_extra: &str, apiserver: bool) -> Result<(Scene, peers::DnsServer, String)> {
    let mut options = Options::default();
    options
        .controllers
        .extend(CONTROLLERS.iter().map(|c| c.to_string()));
    options.scheduler = true;
    if apiserver {
        // Inside the sandbox, 0.0.0.0 is only loopback and the pod bridge.
        options.apiserver_args.push("--bind-address=0.0.0.0".into());
    }
    let s = Scene::start_on(options).await?;
    if apiserver {
        s.node.route_kubernetes_service(s.m.control_plane())?;
    }
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

    s.relay_with(
        s.closed_port()?,
        &format!(
            "  hub: {{replicas: 1, storage: 256Mi, storageClassName: mailroom-test, drainReserveSeconds: 20{hub_extra}}}"
        ),
    )
    .await?;
    let hub_ip = wait_hub(&s, None).await?;
    let service = format!("outbound-hub.{}.svc", s.m.app_ns);
    publish_hub(&dns, &service, &hub_ip);
    s.m.wait_condition("Relay", "outbound", "HubReady").await?;
    Ok((s, dns, service))
}

/// Runs app pod `shop-0` sending `count` messages to its sidecar and waits until every one was
/// acknowledged; the pod as JSON.
async fn send_bulk(s: &Scene, count: usize) -> Result<serde_json::Value> {
    let pod = s.run_app_with("shop-0", 60, &bulk_app_command(count)).await?;
    s.node
        .wait_log(
            (&s.m.app_ns, "shop-0", "app"),
            "app: sent",
            1,
            Duration::from_secs(180),
        )
        .await
        .with_context(|| {
            format!(
                "{}\n--- sidecar ---\n{}",
                s.node.container_log(&s.m.app_ns, "shop-0", "app"),
                s.node.container_log(&s.m.app_ns, "shop-0", SIDECAR)
            )
        })?;
    Ok(pod)
}

/// Points the hub Service's name and its pod's own name at `ip`.
fn publish_hub(dns: &peers::DnsServer, service: &str, ip: &str) {
    dns.publish(&format!(
        "{service}. 5 IN A {ip}\noutbound-hub-0.{service}. 5 IN A {ip}"
    ));
}

/// Points the Relay at the working smarthost.
async fn smarthost_back(s: &Scene) -> Result<()> {
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
    Ok(())
}

/// Every one of `count` messages `hub-<n>` arrived, signed once (dkimpy checks a sample against
/// the published record); returns how many arrived twice.
async fn check_arrivals(s: &mut Scene, count: usize) -> Result<usize> {
    let t0 = Instant::now();
    let messages = s.wait_messages(count, Duration::from_secs(240)).await?;
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
    let missing: Vec<usize> = (0..count)
        .filter(|n| !subjects.contains_key(&format!("hub-{n}")))
        .collect();
    ensure!(missing.is_empty(), "lost: {missing:?}");
    for eml in messages.iter().step_by((count / 10).max(1)) {
        peers::dkim_verify_dns_at(eml, &s.m.dns.addr())?;
    }
    Ok(messages.len() - subjects.len())
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
