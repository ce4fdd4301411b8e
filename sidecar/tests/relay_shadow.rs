//! Shadow copies (`durability: replicated`, docs/hub.md), with real processes and a real
//! kube-apiserver: the app's `250` waits for the hub's copy; a pod that vanishes without a drain
//! loses nothing, because the hub delivers its copies once the apiserver says the pod is gone;
//! with the pod alive no copy is ever delivered; a drain's hand-off replaces the copies.
//! Independent peers: upstream.py (aiosmtpd), smtplib (bulk_send.py), dkimpy (bulk_check.py).

use anyhow::{Context as _, Result};

use k8s_openapi::api::{
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use mailroom_test_support::{
    ControlPlane,
    hub::{
        Setup, all_arrived_intact, app_config, bulk_send, bulk_send_on, drain_line, hub_config, setup, within,
    },
    peers::Upstream,
    relay::{self, Sidecar, reserve_port},
};
use std::{path::PathBuf, time::Duration};

const SELECTOR: &str = "mailroom.dev/hub-client=outbound";

/// A namespace on the shared apiserver with an app pod (never scheduled: only its existence
/// matters) and the hub's ServiceAccount, allowed to list pods there and nothing else (the Role
/// the operator renders).
struct Cluster {
    rt: tokio::runtime::Runtime,
    pods: Api<Pod>,
    namespace: String,
    /// The hub's kubeconfig (its ServiceAccount's token).
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start(s: &Setup) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let kubeconfig = s.dir.path().join("hub-kubeconfig");
        let (pods, namespace) = rt
            .block_on(Self::prepare(&kubeconfig))
            .unwrap_or_else(|e| panic!("preparing the apiserver: {e:#}"));
        Self {
            rt,
            pods,
            namespace,
            kubeconfig,
        }
    }

    async fn prepare(kubeconfig: &std::path::Path) -> Result<(Api<Pod>, String)> {
        let cp = ControlPlane::shared()
            .await
            .context("the shared kube-apiserver (make test prepares it: tests/env/prepare.sh)")?;
        let ns = cp.new_namespace().await?;
        let client = cp.client().await?;
        let create = PostParams::default();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&create, &serde_yaml_ng::from_str("metadata: {name: hub}")?)
            .await?;
        Api::<Role>::namespaced(client.clone(), &ns)
            .create(
                &create,
                &serde_yaml_ng::from_str(
                    "metadata: {name: hub}\nrules: [{apiGroups: [''], resources: [pods], verbs: [list]}]",
                )?,
            )
            .await?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(
                &create,
                &serde_yaml_ng::from_str(&format!(
                    "metadata: {{name: hub}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: hub}}\n\
                     subjects: [{{kind: ServiceAccount, name: hub, namespace: {ns}}}]"
                ))?,
            )
            .await?;
        cp.write_service_account_kubeconfig(&ns, "hub", kubeconfig)
            .await?;
        Ok((Api::namespaced(client, &ns), ns))
    }

    /// Creates app pod `name` (labelled as the webhook labels a hub client); its UID.
    fn app_pod(&self, name: &str) -> String {
        let pod: Pod = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, labels: {{mailroom.dev/hub-client: outbound}}}}
spec:
  automountServiceAccountToken: false
  containers: [{{name: app, image: registry.invalid/app:1}}]"
        ))
        .expect("pod");
        let created = self
            .rt
            .block_on(self.pods.create(&PostParams::default(), &pod))
            .expect("create the app pod");
        created.metadata.uid.expect("uid")
    }

    /// Deletes pod `name` at once, without a grace period (the node is gone).
    fn vanish(&self, name: &str) {
        self.rt
            .block_on(self.pods.delete(name, &DeleteParams::default().grace_period(0)))
            .expect("delete the app pod");
    }

    /// The hub's `shadows:` section and environment.
    fn hub_shadows(&self) -> (String, Vec<(&'static str, String)>) {
        (
            format!(
                "shadows:\n  namespace: {}\n  podSelector: {SELECTOR}\n  checkSeconds: 1\n",
                self.namespace
            ),
            vec![("KUBECONFIG", self.kubeconfig.display().to_string())],
        )
    }
}

fn start_hub(s: &Setup, cluster: &Cluster, smarthost: u16) -> Sidecar {
    let (shadows, env) = cluster.hub_shadows();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Sidecar::start_with_env(
        &s.dir.path().join("hub"),
        &format!("{}{shadows}", hub_config(smarthost, &s.ca, &s.creds, &s.key)),
        &env,
    )
}

/// The hub and the sidecar of app pod `app-1` (created in the apiserver now), both relaying to
/// `127.0.0.1:<smarthost>`; the sidecar replicates to the hub.
fn hub_and_app(s: &Setup, cluster: &Cluster, smarthost: u16) -> (Sidecar, Sidecar) {
    let hub = start_hub(s, cluster, smarthost);
    let uid = cluster.app_pod("app-1");
    let app = start_app(s, smarthost, hub.smtp.port(), "app-1", &uid);
    (hub, app)
}

fn start_app(s: &Setup, smarthost: u16, hub: u16, pod: &str, uid: &str) -> Sidecar {
    Sidecar::start_with_env(
        &s.dir.path().join("app"),
        &app_config(
            smarthost,
            hub,
            &s.ca,
            &s.creds,
            &s.key,
            "  shadows:\n    hosts: [localhost]\n",
        ),
        &[
            ("SIDECAR_POD_NAME", pod),
            ("SIDECAR_POD_UID", uid),
            ("SIDECAR_DRAIN_SECONDS", "30"),
        ],
    )
}

/// Proof 3 of docs/hub.md, first half: the smarthost is down, the app's sidecar has accepted
/// messages (each `250` after the hub's copy), and then it is killed with SIGKILL and its pod
/// deleted without a grace period: no drain, no hand-off, its spool gone. The hub learns from
/// the apiserver that the pod is gone and delivers every copy once the smarthost is back, byte
/// for byte, signed once.
#[test]
fn a_pod_that_vanishes_without_a_drain_loses_nothing_its_copies_are_delivered_by_the_hub() {
    const COUNT: usize = 300;
    let s = setup();
    let cluster = Cluster::start(&s);
    let smarthost = reserve_port();
    let (hub, mut app) = hub_and_app(&s, &cluster, smarthost.port());
    bulk_send_on(app.smtp, COUNT, 4);
    assert_eq!(
        app.metric("mailroom_sidecar_shadow_copies_total{result=\"stored\"}") as usize,
        COUNT,
        "every 250 came after the hub's copy"
    );
    assert_eq!(hub.metric("mailroom_sidecar_shadows_held") as usize, COUNT);
    assert_eq!(
        hub.metric("mailroom_sidecar_messages_delivered_total"),
        0.0,
        "a copy whose pod is alive is not delivered"
    );
    app.kill9();
    std::fs::remove_dir_all(s.dir.path().join("app/spool")).expect("the pod's emptyDir goes with it");
    cluster.vanish("app-1");
    within(Duration::from_secs(30), "the hub promoting the copies", || {
        let promoted = hub.metric("mailroom_sidecar_shadows_total{event=\"promoted\"}");
        (promoted as usize == COUNT).then_some(())
    });
    assert_eq!(hub.metric("mailroom_sidecar_shadows_held"), 0.0);
    let up = Upstream::start_on(&s.dir.path().join("up"), &smarthost, &["--tls", "none"]);
    // Signed by the sidecar at acceptance, never by the hub.
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(150));
    assert_eq!(check["duplicates"], 0, "{check}");
    assert!(
        hub.metric("mailroom_sidecar_shadow_owner_checks_total{result=\"ok\"}") >= 1.0,
        "the hub asked the apiserver with its own ServiceAccount"
    );
}

/// Proof 3 of docs/hub.md, second half: with the owner pod alive, no copy is ever delivered.
/// 10,000 messages go through a replicated sidecar to a working upstream; each arrives once,
/// every copy is released, and the hub delivers nothing.
#[test]
fn with_its_pod_alive_no_copy_is_ever_delivered_over_ten_thousand_messages() {
    const COUNT: usize = 10_000;
    let s = setup();
    let cluster = Cluster::start(&s);
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    let (hub, mut app) = hub_and_app(&s, &cluster, up.port);
    bulk_send_on(app.smtp, COUNT, 8);
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(300));
    assert_eq!(check["duplicates"], 0, "zero duplicates from shadows: {check}");
    within(Duration::from_secs(60), "every copy released", || {
        (hub.metric("mailroom_sidecar_shadows_held") == 0.0).then_some(())
    });
    assert_eq!(
        hub.metric("mailroom_sidecar_shadows_total{event=\"released\"}") as usize,
        COUNT
    );
    assert_eq!(
        hub.metric("mailroom_sidecar_shadows_total{event=\"promoted\"}"),
        0.0,
        "no copy of a live pod was ever delivered"
    );
    assert_eq!(hub.metric("mailroom_sidecar_messages_delivered_total"), 0.0);
    assert_eq!(app.terminate(), Some(0));
}

/// Without a hub to take the copy there is no `250`: the app gets `451 4.4.1` and the message
/// is not kept (so its retry cannot make a duplicate). Once the hub is back, the same message is
/// accepted and arrives once.
#[test]
fn without_a_copy_on_the_hub_the_app_gets_451_and_nothing_is_kept() {
    let s = setup();
    let cluster = Cluster::start(&s);
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    let (mut hub, app) = hub_and_app(&s, &cluster, up.port);
    hub.kill9();
    let commands = ["MAIL FROM:<app@example.com>", "RCPT TO:<rcpt@example.net>"];
    let message = b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: replicated\r\n\r\nbody\r\n";
    let replies = relay::smtp_commands(app.smtp, &commands, message);
    let last = replies.last().expect("a reply to the end of data");
    assert!(last.starts_with("451 4.4.1"), "{replies:?}");
    assert_eq!(
        app.metric("mailroom_sidecar_shadow_copies_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(app.metric("mailroom_sidecar_queue_messages"), 0.0, "not kept");
    assert_eq!(
        app.metric("mailroom_sidecar_messages_received_total{reason=\"shadow_failed\",result=\"rejected\"}"),
        1.0
    );
    hub.restart();
    relay::smtp_accepted(app.smtp, &commands, message);
    within(Duration::from_secs(30), "the message at the upstream", || {
        (up.messages().expect("maildir").len() == 1).then_some(())
    });
    within(Duration::from_secs(30), "its copy released", || {
        (hub.metric("mailroom_sidecar_shadows_held") == 0.0
            && hub.metric("mailroom_sidecar_shadows_total{event=\"released\"}") == 1.0)
            .then_some(())
    });
    assert_eq!(
        up.messages().expect("maildir").len(),
        1,
        "the refused attempt left nothing"
    );
}

/// A drain hands the queue to the hub as in proof 1; each hand-off replaces the copy of the same
/// message, so deleting the pod afterwards leaves the hub nothing to promote, and every message
/// arrives once.
#[test]
fn a_drains_hand_off_replaces_the_copies_and_nothing_arrives_twice() {
    const COUNT: usize = 100;
    let s = setup();
    let cluster = Cluster::start(&s);
    let smarthost = reserve_port();
    let (hub, mut app) = hub_and_app(&s, &cluster, smarthost.port());
    bulk_send(app.smtp, COUNT);
    assert_eq!(hub.metric("mailroom_sidecar_shadows_held") as usize, COUNT);
    assert_eq!(app.terminate(), Some(0));
    let report = drain_line(&app.log());
    assert!(report.contains(&format!("handed_off={COUNT}")), "{report}");
    assert_eq!(
        hub.metric("mailroom_sidecar_shadows_total{event=\"replaced\"}") as usize,
        COUNT
    );
    assert_eq!(hub.metric("mailroom_sidecar_shadows_held"), 0.0);
    cluster.vanish("app-1");
    let up = Upstream::start_on(&s.dir.path().join("up"), &smarthost, &["--tls", "none"]);
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(150));
    assert_eq!(check["duplicates"], 0, "{check}");
    assert_eq!(
        hub.metric("mailroom_sidecar_shadows_total{event=\"promoted\"}"),
        0.0
    );
}
