//! `kubectl mailroom` on the real node: the plugin binary, as an on-call user holding exactly the
//! RBAC docs/operations.md lists, reaches every pod of a Relay through the apiserver (`pods/exec`
//! into the sidecar, `pods/portforward` for a test send).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use kube::api::{Patch, PatchParams};
use mailroom_test_support::stack;
use serde_json::{Value, json};

use crate::scene::Scene;

/// The on-call user's RBAC, as docs/operations.md "Day two" lists it.
fn oncall_rbac(ns: &str) -> String {
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: oncall, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: mailroom-oncall, namespace: {ns}}}
rules:
  - apiGroups: ['']
    resources: [pods]
    verbs: [get, list]
  - apiGroups: ['']
    resources: [pods/exec, pods/portforward]
    verbs: [get, create]
  - apiGroups: [mailroom.dev]
    resources: [relays]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: mailroom-oncall, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: mailroom-oncall}}
subjects: [{{kind: ServiceAccount, name: oncall, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: mailroom-oncall}}
rules:
  - apiGroups: [mailroom.dev]
    resources: [maildomains]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: mailroom-oncall-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mailroom-oncall}}
subjects: [{{kind: ServiceAccount, name: oncall, namespace: {ns}}}]
"
    )
}

/// Runs `kubectl-mailroom <args>` with `kubeconfig`; (exit code, stdout, stderr).
fn plugin(kubeconfig: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let bin = stack::built_bin("kubectl-mailroom", "cargo build -p kubectl-mailroom");
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn plugin_json(kubeconfig: &Path, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = plugin(kubeconfig, &all)?;
    ensure!(code == 0, "kubectl mailroom {args:?} failed ({code}): {err}");
    serde_json::from_str(&out).with_context(|| format!("{args:?} printed no JSON: {out}"))
}

/// Two app pods with a message each stuck behind a smarthost that is down (retries ten minutes
/// apart): `kubectl mailroom queue` lists both with their pod names; once the smarthost is back,
/// `flush` sends both at once; `test-send` goes through one pod's sidecar by port-forward and
/// follows the message until delivered; `status` and `dns` show the MailDomain and the Relay.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_kubectl_mailroom_lists_flushes_and_test_sends_across_a_relays_pods() -> Result<()> {
    let mut s = Scene::start().await?;
    let ns = s.m.app_ns.clone();
    let relay = |port: u16| {
        format!(
            "apiVersion: mailroom.dev/v1alpha1
kind: Relay
metadata: {{name: outbound, namespace: {ns}}}
spec:
  domains: [example-com]
  listenPort: 25
  retry: {{initialSeconds: 600, maxSeconds: 600}}
  delivery:
    smarthost:
      host: {gateway}
      port: {port}
      tls: starttls
      credentialsSecretRef: {{name: smarthost-credentials}}
      caSecretRef: {{name: smarthost-ca, key: ca.crt}}
",
            gateway = s.node.gateway(),
        )
    };
    s.m.apply(&relay(s.closed_port()?)).await?;
    s.m.wait_condition("Relay", "outbound", "Ready").await?;
    s.m.apply(&oncall_rbac(&ns)).await?;
    let kubeconfig = s.m.dir().join("oncall.kubeconfig");
    s.m.control_plane()
        .write_service_account_kubeconfig(&ns, "oncall", &kubeconfig)
        .await?;
    for pod in ["shop-0", "shop-1"] {
        s.run_app(pod, 10).await?;
    }
    for pod in ["shop-0", "shop-1"] {
        s.wait_sidecar_log(pod, "recipient deferred", 1, Duration::from_secs(60))
            .await?;
    }

    let rows = plugin_json(&kubeconfig, &["queue", "-n", &ns, "outbound"])?;
    let rows = rows.as_array().context("a list")?;
    let pods: Vec<&str> = rows.iter().filter_map(|r| r["pod"].as_str()).collect();
    ensure!(rows.len() == 2, "one message per pod: {rows:#?}");
    ensure!(pods.contains(&"shop-0") && pods.contains(&"shop-1"), "{pods:?}");
    for r in rows {
        ensure!(
            r["state"] == "deferred" && r["recipient_domains"][0] == "example.net",
            "{r}"
        );
        ensure!(r["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    let (code, text, err) = plugin(&kubeconfig, &["queue", "-n", &ns, "outbound"])?;
    ensure!(code == 0, "{err}");
    ensure!(
        text.contains("shop-0") && text.contains("-- 2 message(s) in 2 pod(s)"),
        "{text}"
    );

    // The smarthost comes back; the retries are ten minutes away, so only a flush sends now.
    let patch = json!({"spec": {"delivery": {"smarthost": {"port": s.upstream.port}}}});
    let relays: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        s.m.client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "mailroom.dev",
            "v1alpha1",
            "Relay",
        )),
    );
    relays
        .patch("outbound", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    for pod in ["shop-0", "shop-1"] {
        s.wait_sidecar_log(pod, "config reloaded", 1, Duration::from_secs(90))
            .await?;
    }
    ensure!(
        s.upstream.messages()?.is_empty(),
        "nothing went out before the flush"
    );
    let t0 = Instant::now();
    let flushed = plugin_json(&kubeconfig, &["flush", "-n", &ns, "outbound"])?;
    let flushed = flushed.as_array().context("a list")?;
    ensure!(
        flushed.len() == 2 && flushed.iter().all(|f| f["flushed"] == 1),
        "{flushed:#?}"
    );
    s.wait_messages(2, Duration::from_secs(30)).await?;
    eprintln!("node: flush to two deliveries in {:.1?}", t0.elapsed());
    let rows = plugin_json(&kubeconfig, &["queue", "-n", &ns, "outbound"])?;
    ensure!(rows == json!([]), "{rows}");

    let (code, out, err) = plugin(
        &kubeconfig,
        &["test-send", "-n", &ns, "outbound", "--to", "oncall@example.net"],
    )?;
    ensure!(code == 0, "test-send failed ({code}): {out}{err}");
    ensure!(
        out.contains("accepted as") && out.lines().last().is_some_and(|l| l.ends_with(" delivered")),
        "{out}"
    );
    let messages = s.wait_messages(3, Duration::from_secs(30)).await?;
    let sent = messages
        .iter()
        .map(std::fs::read_to_string)
        .collect::<std::io::Result<Vec<_>>>()?;
    ensure!(
        sent.iter()
            .any(|m| m.contains("Subject: mailroom test message") && m.contains("DKIM-Signature:")),
        "the test message arrived, signed"
    );

    let status = plugin_json(&kubeconfig, &["status", "-n", &ns])?;
    ensure!(
        status["mailDomains"][0]["name"] == "example-com" && status["mailDomains"][0]["ready"] == "True",
        "{status:#}"
    );
    ensure!(
        status["relays"][0]["name"] == "outbound"
            && status["relays"][0]["ready"] == "True"
            && status["relays"][0]["pods"] == 2,
        "{status:#}"
    );
    let (code, zone, err) = plugin(&kubeconfig, &["dns", "example-com"])?;
    ensure!(code == 0, "{err}");
    ensure!(
        zone.contains("._domainkey.example.com. 3600 IN TXT \"v=DKIM1;")
            && zone.contains("; dkim, active key: served"),
        "{zone}"
    );
    Ok(())
}
