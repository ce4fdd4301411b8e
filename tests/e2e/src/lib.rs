//! mailroom's end-to-end scenarios live in `tests/` beside this crate (the chart, the mission,
//! monitoring, the real node); this library is what they share: paths, `helm template`, YAML
//! documents, server-side dry-run apply, stand-in CRDs for the kinds the chart targets but does
//! not own, the mission's cluster ([`mission`]) and the operator as a process ([`operator`]).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery,
};
use mailroom_test_support::testenv;
use serde_json::{Value, json};

/// Every optional part of the chart switched on.
pub const ALL_ON: &str = "podMonitor.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,\
grafanaDashboards.enabled=true,webhook.certManager.enabled=true,networkPolicy.enabled=true";

pub use mailroom_test_support::{release::chart, stack::repo};

/// Runs `cmd`; its stdout, or an error with the command, the exit status and stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `cmd` expecting failure; returns stdout + stderr.
pub fn run_fails(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        bail!("{cmd:?} succeeded but should have failed:\n{text}");
    }
    Ok(text)
}

/// A `helm` command with its cache and config in a throwaway directory (no cluster needed).
pub fn helm(home: &Path) -> Result<Command> {
    let mut cmd = testenv::command("helm")?;
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    Ok(cmd)
}

/// `helm template <release> charts/mailroom -n <namespace> <args>` as YAML text.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> Result<String> {
    let home = tempfile::tempdir()?;
    run(helm(home.path())?
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace])
        .args(args))
}

/// The non-empty YAML documents of a multi-document text, as JSON values.
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The first document of `kind` (and `name`, when given).
pub fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .with_context(|| format!("no {kind} {name:?} in the rendered chart"))
}

/// Applies every document with server-side apply in dry-run mode: the apiserver runs defaulting,
/// schema validation and admission, and stores nothing.
pub async fn dry_run_apply(client: &Client, docs: &[Value]) -> Result<()> {
    apply_documents(client, docs, true).await
}

/// Applies every document with server-side apply, as `kubectl apply --server-side` does.
pub async fn apply(client: &Client, docs: &[Value]) -> Result<()> {
    apply_documents(client, docs, false).await
}

async fn apply_documents(client: &Client, docs: &[Value], dry_run: bool) -> Result<()> {
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let types = obj.types.clone().context("document without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {gvk:?}"))?;
        let name = obj.metadata.name.clone().context("document without a name")?;
        let api: Api<DynamicObject> = match (caps.scope, &obj.metadata.namespace) {
            (discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (discovery::Scope::Namespaced, None) => bail!("{} {name} has no namespace", gvk.kind),
            (discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        let mut params = PatchParams::apply("mailroom-chart-test").force();
        params.dry_run = dry_run;
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("server-side apply of {} {name} (dry run: {dry_run})", gvk.kind))?;
    }
    Ok(())
}

/// Installs stand-ins for the prometheus-operator and cert-manager CRDs the chart can target.
/// They accept any spec (we do not vendor those projects' schemas), so a dry-run against them
/// proves the group, version, kind, scope and metadata; promtool checks the rules themselves.
pub async fn install_foreign_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let kinds = [
        ("monitoring.coreos.com", "PodMonitor", "podmonitors"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
        ("cert-manager.io", "Certificate", "certificates"),
        ("cert-manager.io", "Issuer", "issuers"),
    ];
    for (group, kind, plural) in kinds {
        let name = format!("{plural}.{group}");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    }},
                }],
            },
        }))?;
        api.patch(
            &name,
            &PatchParams::apply("mailroom-chart-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("creating stand-in CRD {name}"))?;
        wait_established(&api, &name).await?;
    }
    Ok(())
}

/// Waits until CRD `name` is Established.
pub async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let established = |c: &CustomResourceDefinition| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
    };
    for _ in 0..300 {
        if api.get_opt(name).await?.is_some_and(|c| established(&c)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("CRD {name} never became Established")
}

pub mod mission;
pub mod operator;

/// Processes, polling and HTTP (`mailroom_test_support::stack`) and the SMTP peers.
pub mod stack {
    pub use mailroom_test_support::{peers::*, stack::*};
}
