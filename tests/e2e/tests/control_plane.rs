//! Proof that the test control plane is a real one: objects persist, CRDs get established, the garbage
//! collector runs, RBAC and Pod Security admission say no, and the cached tools run.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace, Pod, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::wait::{await_condition, conditions},
};
use mailroom_test_support::{ControlPlane, Options, testenv};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some([("greeting".to_string(), "hello".to_string())].into()),
        ..Default::default()
    }
}

/// Polls `check` every 100 ms until it returns true or `TIMEOUT` passes.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn namespace_and_config_map_round_trip() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.new_namespace().await?;

    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await?;
    assert_eq!(namespace.metadata.name.as_deref(), Some(ns.as_str()));

    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    cms.create(&PostParams::default(), &config_map("round-trip", None))
        .await?;
    let got = cms.get("round-trip").await?;
    assert_eq!(
        got.data.unwrap_or_default().get("greeting").map(String::as_str),
        Some("hello")
    );
    Ok(())
}

#[tokio::test]
async fn crd_becomes_established() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.proof.mailroom.dev" },
        "spec": {
            "group": "proof.mailroom.dev",
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "properties": { "size": { "type": "integer" } } }
                } } }
            }]
        }
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.create(&PostParams::default(), &crd).await?;
    let established = await_condition(
        crds,
        "widgets.proof.mailroom.dev",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(TIMEOUT, established)
        .await
        .context("CRD not established in time")??;
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_owned_object() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.new_namespace().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);

    let owner = cms
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.context("owner has no uid")?,
        ..Default::default()
    };
    cms.create(&PostParams::default(), &config_map("owned", Some(owner_ref)))
        .await?;
    cms.delete("owner", &DeleteParams::background()).await?;

    eventually("the garbage collector to delete the owned ConfigMap", || async {
        Ok(cms.get_opt("owned").await?.is_none())
    })
    .await
}

#[tokio::test]
async fn service_account_without_rbac_is_denied_until_granted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let admin = cp.client().await?;
    let ns = cp.new_namespace().await?;
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let as_reader: Client = cp.client_for_service_account(&ns, "reader").await?;
    let reader_cms: Api<ConfigMap> = Api::namespaced(as_reader, &ns);

    let denied = reader_cms
        .list(&ListParams::default())
        .await
        .expect_err("list must be forbidden");
    assert_eq!(status_code(&denied), Some(403), "{denied}");

    grant_config_map_reads(&admin, &ns, "reader").await?;
    // The authorizer reads RBAC objects from an informer cache, so the grant lands a moment later.
    eventually("the RoleBinding to take effect", || async {
        Ok(reader_cms.list(&ListParams::default()).await.is_ok())
    })
    .await
}

async fn grant_config_map_reads(admin: &Client, ns: &str, account: &str) -> Result<()> {
    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

#[tokio::test]
async fn privileged_pod_is_rejected_by_restricted_pod_security() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp
        .new_namespace_with_labels(&[("pod-security.kubernetes.io/enforce", "restricted")])
        .await?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "privileged" },
        "spec": { "containers": [{
            "name": "main", "image": "example.invalid/none:1",
            "securityContext": { "privileged": true }
        }] }
    }))?;

    let rejected = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("pod must be rejected");
    assert_eq!(status_code(&rejected), Some(403), "{rejected}");
    assert!(
        rejected.to_string().contains("violates PodSecurity \"restricted"),
        "{rejected}"
    );
    Ok(())
}

#[test]
fn helm_runs_from_the_cache() -> Result<()> {
    let out = testenv::command("helm")?.args(["version", "--short"]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = testenv::pinned("HELM_VERSION").context("HELM_VERSION not pinned")?;
    assert!(stdout.starts_with(want), "helm says {stdout:?}, want {want}");
    Ok(())
}

#[test]
fn promtool_runs_from_the_cache() -> Result<()> {
    let out = testenv::command("promtool")?.arg("--version").output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool --version failed: {text}");
    assert!(text.contains("promtool, version 3."), "promtool says {text:?}");
    Ok(())
}

#[test]
fn prometheus_runs_from_the_cache() -> Result<()> {
    let out = testenv::command("prometheus")?.arg("--version").output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "prometheus --version failed: {text}");
    assert!(
        text.contains("prometheus, version 3."),
        "prometheus says {text:?}"
    );
    Ok(())
}

#[test]
fn python_venv_has_the_smtp_and_dkim_tools() -> Result<()> {
    let out = std::process::Command::new(testenv::python()?)
        .args(["-c", "import aiosmtpd, dkim, cryptography, dns.resolver"])
        .output()?;
    assert!(
        out.status.success(),
        "imports failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn owned_control_plane_stops_and_cleans_up_on_drop() -> Result<()> {
    let cp = ControlPlane::start_with(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await?;
    let client = cp.client().await?;
    let version = client.apiserver_version().await?;
    let want = testenv::pinned("KUBERNETES_VERSION").context("KUBERNETES_VERSION not pinned")?;
    assert_eq!(version.git_version, want);

    let dir = cp
        .logs_dir()
        .parent()
        .context("logs dir has a parent")?
        .to_path_buf();
    let port = cp
        .server_url()
        .rsplit(':')
        .next()
        .context("port")?
        .parse::<u16>()?;
    drop(cp);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "apiserver still listening on {port} after drop"
    );
    Ok(())
}
