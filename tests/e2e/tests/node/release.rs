//! The chart installed on the node as a user would: `helm install --wait` with our images, the
//! operator in pods (two replicas, leader election, the webhook behind its Service), then a
//! MailDomain, a Relay and an app pod whose mail reaches the smarthost.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Pod, Service},
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
};
use mailroom_test_support::{
    ControlPlane, Options, image,
    node::Node,
    peers::{self, DnsServer, Upstream},
    prometheus::{self, Prometheus},
    release::RELEASE,
};
use serde_json::{Value, json};

use crate::common;
use mailroom_test_support::admission::SIDECAR;

/// The controllers a Deployment needs on top of the default ones, the Endpoints the
/// apiserver routes the webhook Service through, and the node taints.
const CONTROLLERS: &[&str] = &[
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    // Lifts the not-ready taint the kubelet registers the Node with, once it is Ready.
    "node-lifecycle-controller",
];

/// A release installed on a node, with the peers of its mission.
pub struct Release {
    release_ns: String,
    node: Node,
    client: Client,
    dns: DnsServer,
    upstream: Upstream,
    app_ns: String,
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

// === impl Release ===

impl Release {
    /// A control plane with kube-scheduler and the workload controllers, its apiserver reachable
    /// from pods; a node; the peers on its gateway; then `helm install --wait`, checked as
    /// described on the scenario.
    pub async fn install() -> Result<Self> {
        let mut options = Options::default();
        options
            .controllers
            .extend(CONTROLLERS.iter().map(|c| c.to_string()));
        options.apiserver_args.push("--bind-address=0.0.0.0".into());
        options.scheduler = true;
        let cp = ControlPlane::start_with(options).await?;
        let node = Node::start(&cp, &Node::images()?).await?;
        node.route_kubernetes_service(&cp)?;
        let client = cp.client().await?;
        let dir = tempfile::tempdir()?;
        let gateway = node.gateway().to_string();
        let dns = DnsServer::start_at(dir.path(), &gateway)?;
        let upstream = Upstream::starttls_with_auth_at(dir.path(), &gateway, "mailer", "s3cret")?;
        common::install_foreign_crds(&client).await?;
        // Both namespaces enforce PodSecurity `restricted`: the chart's pods and the injected
        // app pod are admitted by it, then run.
        let restricted = [("pod-security.kubernetes.io/enforce", "restricted")];
        let release_ns = cp.new_namespace_with_labels(&restricted).await?;
        let app_ns = cp.new_namespace_with_labels(&restricted).await?;

        let (op_repo, op_tag) = image::OPERATOR.rsplit_once(':').context("tag")?;
        let (sc_repo, sc_tag) = image::SIDECAR.rsplit_once(':').context("tag")?;
        let values = [
            format!("operator.image.registry=,operator.image.repository={op_repo},operator.image.tag={op_tag}"),
            format!("sidecar.image.registry=,sidecar.image.repository={sc_repo},sidecar.image.tag={sc_tag}"),
            // The node has the image and no registry: `Never` proves the setting reaches the pod.
            "sidecar.image.pullPolicy=Never".into(),
            format!("operator.dns.nameservers={{{}}}", dns.addr()),
            "operator.dns.recheckSeconds=1".into(),
            "podMonitor.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboards.enabled=true"
                .into(),
        ];
        let mut helm = cp.helm()?;
        helm.args(["install", RELEASE])
            .arg(mailroom_test_support::release::chart())
            .args(["--namespace", &release_ns, "--wait", "--timeout", "120s"]);
        for value in &values {
            helm.args(["--set", value]);
        }
        let t0 = Instant::now();
        let out = helm.output().context("running helm install --wait")?;
        if !out.status.success() {
            let pods = Api::<Pod>::namespaced(client.clone(), &release_ns)
                .list(&ListParams::default())
                .await?;
            let states: Vec<Value> = pods.items.iter().map(|p| json!(p.status)).collect();
            bail!(
                "helm install --wait failed ({}):\n{}{}\npods: {states:#?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                node.kubelet_log_tail(40)
            );
        }
        eprintln!("node: helm install --wait returned in {:.1?}", t0.elapsed());

        let pods = Api::<Pod>::namespaced(client.clone(), &release_ns)
            .list(&ListParams::default())
            .await?;
        let names: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        ensure!(
            names.len() == 2,
            "want the chart's 2 operator replicas, got {names:?}"
        );
        for pod in &pods.items {
            let ready = pod
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ensure!(
                ready,
                "helm --wait returned before {:?} was Ready",
                pod.metadata.name
            );
            let spec = pod.spec.as_ref().context("spec")?;
            assert_eq!(
                spec.node_name.as_deref(),
                Some(node.name()),
                "scheduled onto the node"
            );
            assert_eq!(spec.containers[0].image.as_deref(), Some(image::OPERATOR));
        }
        let holder = wait_leader(&client, &release_ns).await.with_context(|| {
            // What the operator pods said, while their logs still exist.
            let logs: Vec<String> = names
                .iter()
                .map(|pod| {
                    let log = node.container_log(&release_ns, pod, "operator");
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    format!(
                        "--- {pod} ---\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            logs.join("\n")
        })?;
        ensure!(
            names.contains(&holder),
            "the Lease is held by {holder}, not one of {names:?}"
        );
        Ok(Self {
            release_ns,
            node,
            client,
            dns,
            upstream,
            app_ns,
            dir,
            cp,
        })
    }

    /// `helm test`: the chart's check pod (our operator image, `mailroom-operator check`) runs on
    /// the node with its hook ServiceAccount, has the leader render a temporary Relay, gets the
    /// sidecar injected by each webhook replica at its pod IP over TLS verified by the caBundle,
    /// and removes what it created. Its pod and RBAC are deleted once it succeeded.
    pub async fn helm_test(&self) -> Result<()> {
        let t0 = Instant::now();
        let out = self
            .cp
            .helm()?
            .args([
                "test",
                RELEASE,
                "--namespace",
                &self.release_ns,
                "--timeout",
                "300s",
            ])
            .output()
            .context("running helm test")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "helm test failed ({}):\n{stdout}{}\n--- check pod ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.node
                    .container_log(&self.release_ns, &format!("{RELEASE}-check"), "check")
            );
        }
        ensure!(
            stdout.contains(&format!("TEST SUITE:     {RELEASE}-check")) && stdout.contains("Succeeded"),
            "helm test ran no check: {stdout}"
        );
        eprintln!("node: helm test passed in {:.1?}", t0.elapsed());
        let check = format!("{RELEASE}-check");
        let relays: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.release_ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk("mailroom.dev", "v1alpha1", "Relay")),
        );
        ensure!(
            relays.get_opt(&check).await?.is_none(),
            "the check's temporary Relay is left over"
        );
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.release_ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pods.get_opt(&check).await?.is_some() {
            ensure!(
                Instant::now() < deadline,
                "the succeeded check pod was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The mission's path on the node: MailDomain Ready and published, Relay Ready, the app
    /// namespace opted in, an app pod injected by the operator pods' webhook, its message at the
    /// smarthost, DKIM-verified against DNS.
    pub async fn deliver_one(&mut self) -> Result<()> {
        let ns = self.app_ns.clone();
        self.apply(&format!(
            "apiVersion: mailroom.dev/v1alpha1\nkind: MailDomain\nmetadata: {{name: example-com}}\n\
             spec:\n  domain: example.com\n  dkim: {{algorithm: ed25519}}\n  allowedNamespaces: {{names: [{ns}]}}"
        ))
        .await?;
        let domain = self
            .wait_ready("MailDomain", "maildomains", None, "example-com")
            .await?;
        self.dns.serve_status_records(&domain)?;
        let ca = self.upstream.ca_pem.clone().context("upstream CA")?;
        let ca = ca.lines().map(|l| format!("    {l}\n")).collect::<String>();
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: smarthost-credentials, namespace: {ns}}}\n\
             stringData: {{username: mailer, password: s3cret}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: smarthost-ca, namespace: {ns}}}\n\
             stringData:\n  ca.crt: |\n{ca}---\n\
             apiVersion: mailroom.dev/v1alpha1\nkind: Relay\nmetadata: {{name: outbound, namespace: {ns}}}\n\
             spec:\n  domains: [example-com]\n  listenPort: 25\n  delivery:\n    smarthost:\n\
             \x20     host: {host}\n      port: {port}\n      tls: starttls\n\
             \x20     credentialsSecretRef: {{name: smarthost-credentials}}\n\
             \x20     caSecretRef: {{name: smarthost-ca, key: ca.crt}}",
            host = self.node.gateway(),
            port = self.upstream.port,
        ))
        .await?;
        self.wait_ready("Relay", "relays", Some(&ns), "outbound").await?;
        let label = json!({"metadata": {"labels": {"mailroom.dev/injection": "enabled"}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
            .await?;

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "shop-0", "labels": {"mailroom.dev/relay": "outbound"}},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": image::APP,
                    "command": ["sh", "-c", crate::scene::app_command()],
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            }
        }))?;
        // The apiserver learns of the namespace label a moment after it changes.
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let injected = |p: &Pod| {
                p.spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten())
                    .any(|c| c.name == SIDECAR)
            };
            let last = match pods.create(&dry, &pod).await {
                Ok(p) if injected(&p) => break,
                Ok(_) => "admitted without a sidecar".to_string(),
                Err(e) => e.to_string(),
            };
            ensure!(
                Instant::now() < deadline,
                "the operator pods' webhook never injected: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let created = pods.create(&PostParams::default(), &pod).await?;
        let policy = created
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .find(|c| c.name == SIDECAR)
            .and_then(|c| c.image_pull_policy.clone());
        assert_eq!(policy.as_deref(), Some("Never"), "sidecar.image.pullPolicy");
        let deadline = Instant::now() + Duration::from_secs(120);
        let eml = loop {
            self.upstream.proc.check_running()?;
            if let Some(eml) = self.upstream.messages()?.into_iter().next() {
                break eml;
            }
            if Instant::now() > deadline {
                let status = pods.get("shop-0").await.ok().and_then(|p| p.status);
                bail!(
                    "no message at the smarthost; pod status: {status:#?}\n{}",
                    self.node.kubelet_log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let envelope = Upstream::envelope(&eml)?;
        assert_eq!(envelope["tls"], true, "{envelope}");
        assert_eq!(envelope["authenticated"], true, "{envelope}");
        assert_eq!(
            peers::dkim_verify_dns_at(&eml, &self.dns.addr())?,
            "d=example.com s=mailroom"
        );
        let _ = (&self.dir, &self.cp);
        Ok(())
    }

    /// A real Prometheus in the sandbox, configured from the chart's PodMonitor, ServiceMonitor
    /// and PrometheusRule as stored, scraping the app pod's sidecar and the leader operator pod
    /// at their pod IPs over the bridge; it sees the delivered message and the reconciles.
    pub async fn scrape(&self) -> Result<Prometheus> {
        let ns = &self.release_ns;
        let [pod_monitor, service_monitor, rule] = prometheus::chart_monitors(&self.client, ns).await?;
        let services = Api::<Service>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels("app.kubernetes.io/service=metrics"))
            .await?;
        let service = services.items.first().context("the chart's metrics Service")?;
        let app = Api::<Pod>::namespaced(self.client.clone(), &self.app_ns)
            .get("shop-0")
            .await?;
        let leader = wait_leader(&self.client, ns).await?;
        let operator = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(&leader)
            .await?;
        let jobs = [
            prometheus::pod_monitor_job(&pod_monitor, &app, pod_addr(&app, SIDECAR, "admin")?)?,
            prometheus::service_monitor_job(
                &service_monitor,
                service,
                &leader,
                "operator",
                pod_addr(&operator, "operator", "http-admin")?,
            )?,
        ];
        let dir = self.dir.path().join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let prom = Prometheus::start(&dir, &jobs, &rule["spec"])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for query in [
            "mailroom_sidecar_messages_delivered_total",
            "mailroom_operator_reconcile_runs_total",
            "up == 1",
        ] {
            loop {
                let samples = prom.query(query)?;
                if !samples.is_empty() && samples.iter().all(|s| prometheus::sample_value(s) > 0.0) {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "Prometheus has no {query}: {samples:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ensure!(
            prom.query("up")?.len() == 2,
            "want the sidecar and operator targets up"
        );
        Ok(prom)
    }

    /// The chart's dashboard, as its ConfigMap stores it, over the real pods' series. A second
    /// message, sent in the app pod's network namespace to the sidecar on `127.0.0.1:25` once
    /// Prometheus has the first, moves the counters (`rate()` needs two samples that differ).
    /// Then the delivery, latency, DKIM and reply-class panels and the DNS panel (from the leader
    /// operator) show it, the queue and key-age panels have data, and every alert rule of the
    /// chart evaluates without error and none fires.
    pub async fn dashboard(&mut self, prom: &Prometheus) -> Result<()> {
        let app = Api::<Pod>::namespaced(self.client.clone(), &self.app_ns)
            .get("shop-0")
            .await?;
        let app = serde_json::to_value(&app)?;
        let sidecar = crate::scene::container(&app, SIDECAR);
        let id = sidecar["containerID"].as_str().context("sidecar containerID")?;
        let pid = self.node.container_pid(id)?;
        let script = "import smtplib; smtplib.SMTP('127.0.0.1', 25, timeout=30).sendmail(\
            'app@example.com', ['someone@example.net'], \
            b'From: app@example.com\\r\\nTo: someone@example.net\\r\\nSubject: second\\r\\n\\r\\nsecond\\r\\n')";
        let sent = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--"])
            .arg(mailroom_test_support::testenv::python()?)
            .args(["-c", script])
            .output()?;
        ensure!(
            sent.status.success(),
            "smtplib in the pod's network namespace: {}",
            String::from_utf8_lossy(&sent.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.upstream.messages()?.len() < 2 {
            self.upstream.proc.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "the second message never reached the smarthost"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let dashboard = prometheus::chart_dashboard(&self.client, &self.release_ns).await?;
        let vars = [
            // One cluster, no `cluster` label: the variable at All matches every series.
            ("$cluster", ".*"),
            ("$namespace", self.app_ns.as_str()),
            ("$relay", "outbound"),
            ("$sender_domain", "example.com"),
            ("$__rate_interval", "1m"),
        ];
        for panel in [
            "Messages per second [A]",
            "Messages per second [B]",
            "Delivery latency [A]",
            "DKIM signing [A]",
            "Reply classes from upstream [A]",
            "DNS verification per MailDomain [A]",
        ] {
            prometheus::panel_value(prom, &dashboard, &vars, panel, Duration::from_secs(60), || {
                self.upstream.proc.check_running()
            })?;
        }
        let queries = prometheus::dashboard_queries(&dashboard, &vars)?;
        for panel in ["Queue size [A]", "DKIM signing key age [A]"] {
            let (_, q) = queries
                .iter()
                .find(|(title, _)| title == panel)
                .with_context(|| format!("the dashboard has no panel target {panel}"))?;
            ensure!(!prom.query(q)?.is_empty(), "{panel} has no data: {q}");
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        let rules = loop {
            let rules = prom.alert_rules()?;
            if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
                break rules;
            }
            ensure!(
                Instant::now() < deadline,
                "the chart's alert rules do not all evaluate: {rules:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let firing: Vec<_> = rules.iter().filter(|r| r["state"] == "firing").collect();
        ensure!(firing.is_empty(), "alerts fire on a healthy install: {firing:#?}");
        Ok(())
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        common::apply(&self.client, &common::documents(yaml)?).await
    }

    /// Waits until `kind/name` has `Ready=True`; the object as JSON.
    async fn wait_ready(&self, kind: &str, plural: &str, ns: Option<&str>, name: &str) -> Result<Value> {
        let gvk = GroupVersionKind::gvk("mailroom.dev", "v1alpha1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = Value::Null;
        loop {
            if let Some(obj) = api.get_opt(name).await? {
                last = serde_json::to_value(&obj)?;
                let ready = last["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if ready {
                    return Ok(last);
                }
            }
            ensure!(Instant::now() < deadline, "{kind} {name} never Ready: {last:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `<pod IP>:<port>` of the port named like `name` (or containing it) of `container`.
fn pod_addr(pod: &Pod, container: &str, name: &str) -> Result<std::net::SocketAddr> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod IP")?;
    let spec = pod.spec.as_ref().context("spec")?;
    let port = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == container)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref().is_some_and(|n| n.contains(name)))
        .with_context(|| format!("{container} has no port named like {name}"))?
        .container_port;
    Ok(format!("{ip}:{port}").parse()?)
}

/// The holder of the one Lease in the release namespace, once there is one.
async fn wait_leader(client: &Client, ns: &str) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = leases.list(&ListParams::default()).await?;
        let holders: Vec<String> = list
            .items
            .iter()
            .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
            .collect();
        if let [holder] = holders.as_slice() {
            return Ok(holder.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "no single leader Lease in {ns}: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
