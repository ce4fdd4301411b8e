//! The steps of the mission test (`tests/mission.rs`), each as a user would take it: install the
//! chart, declare a MailDomain and publish its records, declare a Relay, opt a workload in, and
//! watch it in Prometheus. Every step uses the real part; the module docs of
//! `mailroom_test_support::{release, kubelet, prometheus}` say what stands in for the kubelet,
//! the Service network and prometheus-operator.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use mailroom_test_support::{
    ControlPlane,
    admission::{SIDECAR, create_injected},
    kubelet::PodContainer,
    peers::{DnsServer, Upstream},
    prometheus::{self, Prometheus},
    release::{self, Operator},
    stack::{self, Proc, eventually},
};
use serde_json::{Value, json};

/// The chart's optional monitoring, all on: PodMonitor, ServiceMonitor, PrometheusRule and the
/// Grafana dashboard ConfigMap.
const MONITORING_ON: &str = "podMonitor.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboards.enabled=true";
/// One cluster with mailroom installed: its own control plane (the chart's cluster-scoped parts
/// and the webhook see every namespace, so scenarios do not share one), the operator, and a DNS
/// server the operator checks records against.
pub struct Mission {
    /// Cluster-admin client for the user's own actions.
    pub client: Client,
    /// The operator process.
    pub operator: Operator,
    /// The DNS server the MailDomain's records are published to.
    pub dns: DnsServer,
    /// The application namespace.
    pub app_ns: String,
    /// Our binaries (`target/debug`).
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

impl std::fmt::Debug for Mission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mission")
            .field("app_ns", &self.app_ns)
            .finish_non_exhaustive()
    }
}

/// An opted-in pod whose injected sidecar runs as a process.
#[derive(Debug)]
pub struct AppPod {
    /// The pod as stored (after admission).
    pub pod: Pod,
    /// The sidecar container with its files on disk.
    pub sidecar: PodContainer,
    /// The sidecar process.
    pub proc: Proc,
    /// Where the app sends mail: `$SMTP_HOST:$SMTP_PORT` of the app container (the sidecar's
    /// `SIDECAR_LISTEN_ADDR` in the pod), moved to the port the process got on this machine.
    pub smtp: SocketAddr,
    /// The sidecar's admin address (`/metrics`).
    pub admin: SocketAddr,
}

// === impl Mission ===

impl Mission {
    /// MailDomain `example-com` for `example.com`, granted to the app namespace, with an Ed25519
    /// key (fast to generate in a debug build) and `spec` lines `extra` (indented two spaces).
    pub fn mail_domain(&self, extra: &str) -> String {
        format!(
            "apiVersion: mailroom.dev/v1alpha1\nkind: MailDomain\nmetadata: {{name: example-com}}\n\
             spec:\n  domain: example.com\n  dkim: {{algorithm: ed25519}}\n{extra}\
             \x20 allowedNamespaces: {{names: [{}]}}",
            self.app_ns
        )
    }

    /// `helm install` with monitoring on and the operator's DNS checks pointed at our DNS server,
    /// then the operator with the chart's ServiceAccount and webhook registration.
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// `start`, with more `helm --set` values (e.g. the images a real node runs).
    pub async fn start_with(set: &[&str]) -> Result<Self> {
        Self::start_on(mailroom_test_support::Options::default(), set).await
    }

    /// `start_with` on a control plane started with `options` (more controllers, a scheduler).
    pub async fn start_on(options: mailroom_test_support::Options, set: &[&str]) -> Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::tempdir()?;
        let cp = ControlPlane::start_with(options).await?;
        let client = cp.client().await?;
        super::install_foreign_crds(&client).await?;
        let dns = DnsServer::start(dir.path())?;
        let release_ns = cp.new_namespace().await?;
        let nameservers = format!("operator.dns.nameservers={{{}}}", dns.addr());
        let mut values = vec![
            nameservers.as_str(),
            "operator.dns.recheckSeconds=1",
            MONITORING_ON,
        ];
        values.extend(set);
        release::install(&cp, &release_ns, &values)?;
        let operator = release::start_operator(&cp, &bin, &release_ns, dir.path()).await?;
        let app_ns = cp.new_namespace().await?;
        Ok(Self {
            client,
            operator,
            dns,
            app_ns,
            bin,
            dir,
            cp,
        })
    }

    /// This scenario's control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// A directory for this scenario's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl apply --server-side -f -` of YAML documents.
    pub async fn apply(&self, yaml: &str) -> Result<()> {
        super::apply(&self.client, &super::documents(yaml)?).await
    }

    /// Waits until `kind/name` (in the app namespace unless cluster-scoped) has condition
    /// `type_` with status `True`; the object as JSON.
    pub async fn wait_condition(&self, kind: &str, name: &str, type_: &str) -> Result<Value> {
        let api = self.api(kind);
        let mut last = Value::Null;
        for _ in 0..300 {
            if let Some(obj) = api.get_opt(name).await? {
                last = serde_json::to_value(&obj)?;
                if condition(&last, type_).0 == "True" {
                    return Ok(last);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(anyhow!(
            "{kind} {name} never got {type_}=True; last seen: {last:#}\n{}",
            self.operator.proc.log()
        ))
    }

    /// Publishes exactly the records the MailDomain's status lists, as zone file lines.
    pub fn publish_dns_records(&self, domain: &Value) -> Result<Vec<String>> {
        self.dns.serve_status_records(domain)
    }

    /// Secrets for a smarthost Relay: credentials `smarthost-credentials` and the CA that signed
    /// the upstream's certificate, `smarthost-ca` (key `ca.crt`).
    pub async fn smarthost_secrets(&self, upstream: &Upstream, user: &str, password: &str) -> Result<()> {
        let ca = upstream.ca_pem.clone().context("the upstream has no TLS")?;
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: smarthost-credentials, namespace: {ns}}}\n\
             stringData: {{username: {user}, password: {password}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: smarthost-ca, namespace: {ns}}}\n\
             stringData:\n  ca.crt: |\n{ca}",
            ns = self.app_ns,
            ca = ca.lines().map(|l| format!("    {l}\n")).collect::<String>(),
        );
        self.apply(&yaml).await
    }

    /// `kubectl label namespace <app> mailroom.dev/injection=enabled`.
    pub async fn opt_in_namespace(&self) -> Result<()> {
        let patch = json!({"metadata": {"labels": {"mailroom.dev/injection": "enabled"}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.app_ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Creates pod `name` asking for `relay` (label `mailroom.dev/relay`), then does what the
    /// kubelet would for its injected sidecar: writes its mounted files and runs its command.
    pub async fn run_pod(&self, name: &str, relay: &str) -> Result<AppPod> {
        let pod: Pod = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, labels: {{app: shop, mailroom.dev/relay: {relay}}}}}
spec:
  containers:
  - {{name: app, image: registry.invalid/shop:1}}"
        ))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.app_ns);
        let stored = create_injected(&pods, &pod, Duration::from_secs(60))
            .await
            .with_context(|| self.operator.proc.log())?;

        let root = self.dir().join(format!("pod-{name}"));
        let mut sidecar = PodContainer::materialize(&self.client, &stored, SIDECAR, &root).await?;
        let app = &stored.spec.as_ref().context("spec")?.containers[0];
        let app_env = |k: &str| {
            app.env
                .iter()
                .flatten()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
                .with_context(|| format!("app container has no {k}"))
        };
        let in_pod = format!("{}:{}", app_env("SMTP_HOST")?, app_env("SMTP_PORT")?);
        ensure!(
            sidecar.env.get("SIDECAR_LISTEN_ADDR") == Some(&in_pod),
            "the app sends to {in_pod}, the sidecar listens on {:?}",
            sidecar.env.get("SIDECAR_LISTEN_ADDR")
        );
        // A pod has its own network namespace; here the sidecar takes free loopback ports (port
        // 0) and reports them.
        for var in [
            "SIDECAR_LISTEN_ADDR",
            "SIDECAR_ADMIN_ADDR",
            "SIDECAR_QUEUE_API_ADDR",
        ] {
            sidecar.env.insert(var.into(), "127.0.0.1:0".into());
        }
        let mut proc = Proc::spawn(
            &format!("sidecar-{name}"),
            &mut sidecar.command(&self.bin)?,
            self.dir(),
        )?;
        let (smtp, admin) = proc.sidecar_addrs()?;
        stack::wait_http_ok("sidecar /readyz", admin, "/readyz", &mut proc)?;
        Ok(AppPod {
            pod: stored,
            sidecar,
            proc,
            smtp,
            admin,
        })
    }

    /// Prometheus configured from the chart's PodMonitor (scraping `pod`'s sidecar),
    /// ServiceMonitor (scraping the operator) and PrometheusRule, as stored in the cluster.
    pub async fn prometheus(&self, pod: &AppPod) -> Result<Prometheus> {
        let ns = &self.operator.namespace;
        let [pod_monitor, service_monitor, rule] = prometheus::chart_monitors(&self.client, ns).await?;
        let services = Api::<Service>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels("app.kubernetes.io/service=metrics"))
            .await?;
        let service = services.items.first().context("the chart's metrics Service")?;
        let jobs = [
            prometheus::pod_monitor_job(&pod_monitor, &pod.pod, pod.admin)?,
            prometheus::service_monitor_job(
                &service_monitor,
                service,
                &self.operator.pod,
                "operator",
                self.operator.admin,
            )?,
        ];
        let dir = self.dir().join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let prom = Prometheus::start(&dir, &jobs, &rule["spec"])?;
        eventually("both targets up", Duration::from_secs(60), || {
            Ok((prom.query("sum(up)")?.first().map(prometheus::sample_value) == Some(2.0)).then_some(()))
        })?;
        Ok(prom)
    }

    /// The dashboard JSON from the chart's Grafana ConfigMap, as stored in the cluster.
    pub async fn dashboard(&self) -> Result<Value> {
        prometheus::chart_dashboard(&self.client, &self.operator.namespace).await
    }

    /// What `kubectl get <plural>` prints: the apiserver's Table for our kind (its printer
    /// columns), as (column names, rows).
    pub async fn kubectl_get(
        &self,
        plural: &str,
        namespaced: bool,
    ) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let path = match namespaced {
            true => format!("/apis/mailroom.dev/v1alpha1/namespaces/{}/{plural}", self.app_ns),
            false => format!("/apis/mailroom.dev/v1alpha1/{plural}"),
        };
        let request = http::Request::get(path)
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())?;
        let table: Value = serde_json::from_str(&self.client.request_text(request).await?)?;
        let columns = table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>();
        let rows = table["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                r["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(columns.len())
                    .map(|c| match c {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .collect();
        Ok((columns, rows))
    }

    /// Deletes `kind/name` in the app namespace.
    pub async fn delete(&self, kind: &str, name: &str) -> Result<()> {
        self.api(kind).delete(name, &Default::default()).await?;
        Ok(())
    }

    /// Waits until ConfigMap or Secret `name` in the app namespace is gone (garbage-collected).
    pub async fn wait_gone(&self, plural: &str, name: &str) -> Result<()> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "",
                "v1",
                if plural == "secrets" {
                    "Secret"
                } else {
                    "ConfigMap"
                },
            ),
            plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.app_ns, &resource);
        for _ in 0..300 {
            if api.get_opt(name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(anyhow!("{plural}/{name} was not garbage-collected"))
    }

    /// Whether ConfigMap or Secret `name` exists in the app namespace.
    pub async fn exists(&self, plural: &str, name: &str) -> Result<bool> {
        Ok(match plural {
            "configmaps" => Api::<ConfigMap>::namespaced(self.client.clone(), &self.app_ns)
                .get_opt(name)
                .await?
                .is_some(),
            _ => Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), &self.app_ns)
                .get_opt(name)
                .await?
                .is_some(),
        })
    }

    /// The API of our kind `kind`: MailDomains, or another kind in the app namespace.
    pub fn api(&self, kind: &str) -> Api<DynamicObject> {
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("mailroom.dev", "v1alpha1", kind),
            &plural,
        );
        match kind {
            "MailDomain" => Api::all_with(self.client.clone(), &resource),
            _ => Api::namespaced_with(self.client.clone(), &self.app_ns, &resource),
        }
    }
}

/// (status, reason) of condition `type_` in an object's `status.conditions`.
pub fn condition(obj: &Value, type_: &str) -> (String, String) {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().into(),
                c["reason"].as_str().unwrap_or_default().into(),
            )
        })
        .unwrap_or_default()
}

/// `target/debug` with our binaries, built once per test binary.
fn binaries() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| stack::build_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}
