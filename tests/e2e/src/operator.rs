//! The monitoring test's operator: the chart's release (`mailroom_test_support::release`) with a
//! MailDomain whose records are not published, a Relay whose credentials Secret is missing, a
//! Relay with a hub, and one pod admission sent straight to the webhook.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use mailroom_test_support::{ControlPlane, release, testenv};
use serde_json::{Value, json};

use super::stack;

/// The operator process as the chart runs it.
pub use release::Operator;

/// Installs the chart, creates a MailDomain and a Relay, and starts the operator. Its DNS server
/// is the discard port on loopback, where nothing answers (set through the chart's values), so
/// record checks fail.
pub async fn start(bin: &Path, dir: &Path) -> Result<(Operator, String)> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let namespace = cp.new_namespace().await?;
    let app_namespace = cp.new_namespace().await?;
    let dns = "127.0.0.1:9";
    release::install(
        cp,
        &namespace,
        &[
            &format!("operator.dns.nameservers={{{dns}}}"),
            "operator.dns.recheckSeconds=5",
        ],
    )?;
    create_objects(&client, &app_namespace).await?;
    let operator = release::start_operator(cp, bin, &namespace, dir).await?;
    Ok((operator, app_namespace))
}

/// MailDomain `example-com` (Ed25519, allowed in the app namespace; its DNS records are not
/// published) and Relay `outbound` whose credentials Secret does not exist (a spec error).
async fn create_objects(client: &kube::Client, app_namespace: &str) -> Result<()> {
    let gvk = |kind: &str| GroupVersionKind::gvk("mailroom.dev", "v1alpha1", kind);
    let domains: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk("MailDomain"), "maildomains"),
    );
    let relays: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        app_namespace,
        &ApiResource::from_gvk_with_plural(&gvk("Relay"), "relays"),
    );
    let domain: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": "example-com"},
        "spec": {"domain": "example.com", "dkim": {"algorithm": "ed25519"},
                 "allowedNamespaces": {"names": [app_namespace]}},
    }))?;
    domains
        .create(&PostParams::default(), &domain)
        .await
        .context("creating the MailDomain")?;
    let relay: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "Relay",
        "metadata": {"name": "outbound", "namespace": app_namespace},
        "spec": {"domains": ["example-com"], "delivery": {"smarthost": {
            "host": "smtp.example.net", "port": 587, "tls": "starttls",
            "credentialsSecretRef": {"name": "missing-credentials"}}}},
    }))?;
    relays
        .create(&PostParams::default(), &relay)
        .await
        .context("creating the Relay")?;
    // A Relay with a hub (docs/hub.md): nothing runs its StatefulSet here, so none of its pods
    // is ever Ready.
    let hubbed: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "Relay",
        "metadata": {"name": "hubbed", "namespace": app_namespace},
        "spec": {"domains": ["example-com"], "delivery": {"capture": {}}, "hub": {"replicas": 1}},
    }))?;
    relays
        .create(&PostParams::default(), &hubbed)
        .await
        .context("creating the Relay with a hub")?;
    Ok(())
}

/// Sends one pod admission (a pod asking for Relay `outbound` in `app_namespace`) straight to the
/// webhook over HTTPS, as the apiserver would.
pub fn admit_one_pod(operator: &Operator, app_namespace: &str) -> Result<()> {
    let script = r#"
import json, ssl, sys, urllib.request, uuid
url, ns = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the CA lives in the webhook Secret; the check here is the answer
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "app-0", "namespace": ns, "labels": {"mailroom.dev/relay": "outbound"}},
       "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
    "name": "app-0", "namespace": ns, "operation": "CREATE",
    "userInfo": {"username": "system:serviceaccount:test:deployer"},
    "object": pod, "dryRun": False, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}
req = urllib.request.Request(url, data=json.dumps(review).encode(), headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())
"#;
    let url = format!("https://{}/mutate", operator.webhook);
    let answer = stack::eventually("the webhook to answer", Duration::from_secs(60), || {
        let out = Command::new(testenv::python()?)
            .args(["-c", script, &url, app_namespace])
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string()))
    })
    .with_context(|| format!("POST {url}\n{}", operator.proc.log()))?;
    let review: Value = serde_json::from_str(&answer)?;
    ensure!(
        review["response"]["uid"].is_string(),
        "not an AdmissionReview answer: {answer}"
    );
    Ok(())
}
