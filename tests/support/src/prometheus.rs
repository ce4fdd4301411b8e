//! A real Prometheus configured from the chart's monitoring objects as prometheus-operator would
//! configure it: a PodMonitor or ServiceMonitor becomes a scrape job whose relabelings run on the
//! `__meta_kubernetes_*` labels Kubernetes service discovery would attach to the target, and the
//! PrometheusRule's spec becomes a rule file. Targets are static (there is no pod network), and
//! every interval is 1 s instead of the chart's 30 s so that a test sees data in seconds.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use crate::{
    stack::{Proc, http_get, log_field, urlencode, wait_http_ok},
    testenv,
};

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    /// The process.
    pub proc: Proc,
    /// Its HTTP address.
    pub addr: SocketAddr,
}

// === impl Prometheus ===

impl Prometheus {
    /// Starts Prometheus with these scrape jobs and rule groups (a rule file's content, e.g. a
    /// PrometheusRule's `spec`), scraping and evaluating every second.
    pub fn start(dir: &Path, jobs: &[Value], rules: &Value) -> Result<Self> {
        let rule_file = dir.join("rules.yaml");
        std::fs::write(&rule_file, serde_yaml_ng::to_string(rules)?)?;
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rule_file],
            "scrape_configs": jobs,
        });
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml_ng::to_string(&config)?)?;
        let mut proc = Proc::spawn(
            "prometheus",
            testenv::command("prometheus")?
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                .arg("--web.listen-address=127.0.0.1:0"),
            dir,
        )?;
        // `msg="Listening on" address=127.0.0.1:<port>`: the port it got (an earlier line names
        // the configured address, port 0).
        let addr: SocketAddr = proc.wait_log("prometheus to listen", |line| {
            (log_field(line, "msg")? == "Listening on").then(|| log_field(line, "address")?.parse().ok())?
        })?;
        wait_http_ok("prometheus /-/ready", addr, "/-/ready", &mut proc)?;
        Ok(Self { proc, addr })
    }

    /// An instant query; the result vector.
    pub fn query(&self, q: &str) -> Result<Vec<Value>> {
        self.api(&format!("/api/v1/query?query={}", urlencode(q)))
            .map(|data| data["result"].as_array().cloned().unwrap_or_default())
            .with_context(|| format!("query {q}"))
    }

    /// The alerts that are pending or firing (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        Ok(self.api("/api/v1/alerts")?["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every loaded alerting rule by name, with its state (`inactive`, `pending`, `firing`).
    pub fn alert_rules(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/rules?type=alert")?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    fn api(&self, path_and_query: &str) -> Result<Value> {
        let (status, body) = http_get(self.addr, path_and_query)?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("HTTP {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("{path_and_query}: {body}");
        }
        Ok(v["data"].clone())
    }
}

/// The chart's monitoring objects as stored in `ns`: the PodMonitor of the injected sidecars (the
/// chart's other one scrapes hubs), its ServiceMonitor and PrometheusRule
/// (`monitoring.coreos.com/v1`), as JSON.
pub async fn chart_monitors(client: &kube::Client, ns: &str) -> Result<[Value; 3]> {
    let one = |kind: &'static str, plural: &'static str, pick: fn(&Value) -> bool| async move {
        let gvk = kube::api::GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        let list = kube::Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &resource)
            .list(&kube::api::ListParams::default())
            .await?;
        let mut found = Vec::new();
        for item in &list.items {
            let v = serde_json::to_value(item)?;
            if pick(&v) {
                found.push(v);
            }
        }
        ensure!(
            found.len() == 1,
            "want one such {kind} in {ns}, found {} of {}",
            found.len(),
            list.items.len()
        );
        Ok::<Value, anyhow::Error>(found.remove(0))
    };
    let sidecars = |v: &Value| v["spec"]["selector"]["matchLabels"]["mailroom.dev/injected"] == "true";
    let any = |_: &Value| true;
    Ok([
        one("PodMonitor", "podmonitors", sidecars).await?,
        one("ServiceMonitor", "servicemonitors", any).await?,
        one("PrometheusRule", "prometheusrules", any).await?,
    ])
}

/// The value of one instant-vector sample.
pub fn sample_value(v: &Value) -> f64 {
    v["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The scrape job prometheus-operator generates for the first endpoint of `monitor` (a
/// PodMonitor as stored), with `pod`'s admin port reachable at `addr`. Fails if the monitor
/// would not select the pod.
pub fn pod_monitor_job(monitor: &Value, pod: &Pod, addr: SocketAddr) -> Result<Value> {
    let spec = &monitor["spec"];
    let endpoint = &spec["podMetricsEndpoints"][0];
    let port = endpoint["port"].as_str().context("podMetricsEndpoints[0].port")?;
    let container = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .find(|c| c.ports.iter().flatten().any(|p| p.name.as_deref() == Some(port)))
        .with_context(|| format!("pod {} has no port named {port}", pod.name_any()))?;
    let ns = pod.namespace().context("pod namespace")?;
    let mut meta = Map::new();
    meta.insert("__meta_kubernetes_namespace".into(), ns.clone().into());
    meta.insert("__meta_kubernetes_pod_name".into(), pod.name_any().into());
    meta.insert(
        "__meta_kubernetes_pod_container_name".into(),
        container.name.clone().into(),
    );
    meta.insert("__meta_kubernetes_pod_container_port_name".into(), port.into());
    for (k, v) in pod.labels() {
        meta.insert(
            format!("__meta_kubernetes_pod_label_{}", sanitize(k)),
            v.clone().into(),
        );
        meta.insert(
            format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(k)),
            "true".into(),
        );
    }
    for (k, v) in pod.annotations() {
        meta.insert(
            format!("__meta_kubernetes_pod_annotation_{}", sanitize(k)),
            v.clone().into(),
        );
    }
    let any_ns = spec["namespaceSelector"]["any"] == true;
    ensure!(
        any_ns
            || spec["namespaceSelector"]["matchNames"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == ns.as_str())),
        "the PodMonitor does not select namespace {ns}"
    );
    let mut relabel = selector_keeps(&spec["selector"], "__meta_kubernetes_pod_label")?;
    relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port}));
    relabel.extend(target_labels(&[
        ("namespace", "__meta_kubernetes_namespace"),
        ("container", "__meta_kubernetes_pod_container_name"),
        ("pod", "__meta_kubernetes_pod_name"),
    ]));
    let job = format!(
        "{}/{}",
        monitor["metadata"]["namespace"].as_str().unwrap_or_default(),
        monitor["metadata"]["name"].as_str().unwrap_or_default()
    );
    relabel.push(json!({"target_label": "job", "replacement": job}));
    relabel.push(json!({"target_label": "endpoint", "replacement": port}));
    relabel.extend(user_relabelings(endpoint)?);
    Ok(json!({
        "job_name": format!("podMonitor/{job}/0"),
        "metrics_path": endpoint["path"].as_str().unwrap_or("/metrics"),
        "static_configs": [{"targets": [addr.to_string()], "labels": meta}],
        "relabel_configs": relabel,
    }))
}

/// The scrape job prometheus-operator generates for the first endpoint of `monitor` (a
/// ServiceMonitor as stored): `service`'s endpoint is pod `pod` (container `container`),
/// reachable at `addr`. Fails if the monitor would not select the Service.
pub fn service_monitor_job(
    monitor: &Value,
    service: &Service,
    pod: &str,
    container: &str,
    addr: SocketAddr,
) -> Result<Value> {
    let spec = &monitor["spec"];
    let endpoint = &spec["endpoints"][0];
    let port = endpoint["port"].as_str().context("endpoints[0].port")?;
    let ns = service.namespace().context("service namespace")?;
    ensure!(
        service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .any(|p| p.name.as_deref() == Some(port)),
        "Service {} has no port named {port}",
        service.name_any()
    );
    ensure!(
        spec["namespaceSelector"]["matchNames"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == ns.as_str())),
        "the ServiceMonitor does not select namespace {ns}"
    );
    let mut meta = Map::new();
    meta.insert("__meta_kubernetes_namespace".into(), ns.into());
    meta.insert("__meta_kubernetes_service_name".into(), service.name_any().into());
    meta.insert("__meta_kubernetes_pod_name".into(), pod.into());
    meta.insert("__meta_kubernetes_pod_container_name".into(), container.into());
    meta.insert("__meta_kubernetes_endpoint_port_name".into(), port.into());
    for (k, v) in service.labels() {
        meta.insert(
            format!("__meta_kubernetes_service_label_{}", sanitize(k)),
            v.clone().into(),
        );
        meta.insert(
            format!("__meta_kubernetes_service_labelpresent_{}", sanitize(k)),
            "true".into(),
        );
    }
    let mut relabel = selector_keeps(&spec["selector"], "__meta_kubernetes_service_label")?;
    relabel.push(
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": port}),
    );
    relabel.extend(target_labels(&[
        ("namespace", "__meta_kubernetes_namespace"),
        ("service", "__meta_kubernetes_service_name"),
        ("pod", "__meta_kubernetes_pod_name"),
        ("container", "__meta_kubernetes_pod_container_name"),
        ("job", "__meta_kubernetes_service_name"),
    ]));
    relabel.push(json!({"target_label": "endpoint", "replacement": port}));
    relabel.extend(user_relabelings(endpoint)?);
    Ok(json!({
        "job_name": format!("serviceMonitor/{}/{}/0", monitor["metadata"]["namespace"].as_str().unwrap_or_default(), monitor["metadata"]["name"].as_str().unwrap_or_default()),
        "metrics_path": endpoint["path"].as_str().unwrap_or("/metrics"),
        "static_configs": [{"targets": [addr.to_string()], "labels": meta}],
        "relabel_configs": relabel,
    }))
}

/// The chart's Grafana dashboard as its ConfigMap (label `grafana_dashboard=1`) in `ns` stores it.
pub async fn chart_dashboard(client: &kube::Client, ns: &str) -> Result<Value> {
    let cms = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels("grafana_dashboard=1"))
        .await?;
    let data = cms
        .items
        .first()
        .and_then(|c| c.data.clone())
        .context("the dashboard ConfigMap")?;
    let json = data.values().next().context("dashboard JSON")?;
    Ok(serde_json::from_str(json)?)
}

/// The value dashboard panel target `panel` (`<title> [<refId>]`) shows with `vars` substituted,
/// once it is above zero, or an error after `timeout`. `alive` runs before each query (to fail
/// fast when a peer the numbers depend on has died).
pub fn panel_value(
    prom: &Prometheus,
    dashboard: &Value,
    vars: &[(&str, &str)],
    panel: &str,
    timeout: std::time::Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let queries = dashboard_queries(dashboard, vars)?;
    let (_, q) = queries
        .iter()
        .find(|(title, _)| title == panel)
        .with_context(|| format!("the dashboard has no panel target {panel}"))?;
    crate::stack::eventually(&format!("{panel}: {q}"), timeout, || {
        alive()?;
        let values: Vec<f64> = prom.query(q)?.iter().map(sample_value).collect();
        Ok(values.into_iter().find(|v| *v > 0.0))
    })
}

/// Every panel target of a Grafana dashboard as (`<panel title> [<refId>]`, expression with the
/// `vars` substituted).
pub fn dashboard_queries(dashboard: &Value, vars: &[(&str, &str)]) -> Result<Vec<(String, String)>> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("dashboard panels")? {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("target expr")?;
            let q = vars.iter().fold(expr.to_string(), |e, (k, v)| e.replace(k, v));
            ensure!(!q.contains('$'), "panel {title:?}: unsubstituted variable in {q}");
            queries.push((
                format!("{title} [{}]", target["refId"].as_str().unwrap_or("?")),
                q,
            ));
        }
    }
    Ok(queries)
}

/// Kubernetes service discovery's label-name sanitizing: every character outside
/// `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `keep` rules for a label selector's `matchLabels` (all the chart uses).
fn selector_keeps(selector: &Value, prefix: &str) -> Result<Vec<Value>> {
    ensure!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not translated by this test"
    );
    let labels = selector["matchLabels"].as_object().cloned().unwrap_or_default();
    Ok(labels
        .iter()
        .map(|(k, v)| {
            let name = sanitize(k);
            json!({"action": "keep",
                   "source_labels": [format!("{prefix}_{name}"), format!("{prefix}present_{name}")],
                   "regex": format!("({});true", v.as_str().unwrap_or_default())})
        })
        .collect())
}

fn target_labels(pairs: &[(&str, &str)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(target, source)| json!({"source_labels": [source], "target_label": target}))
        .collect()
}

/// The endpoint's own `relabelings`, with prometheus-operator's camelCase keys in Prometheus
/// spelling.
fn user_relabelings(endpoint: &Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for r in endpoint["relabelings"].as_array().into_iter().flatten() {
        let mut rule = Map::new();
        for (k, v) in r.as_object().context("relabeling")? {
            let key = match k.as_str() {
                "sourceLabels" => "source_labels",
                "targetLabel" => "target_label",
                "regex" | "replacement" | "action" | "separator" | "modulus" => k.as_str(),
                other => bail!("relabeling field {other} is not translated by this test"),
            };
            rule.insert(key.into(), v.clone());
        }
        out.push(Value::Object(rule));
    }
    Ok(out)
}
