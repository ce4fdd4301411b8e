//! The operator as the chart deploys it, minus the kubelet: `helm install` on the test control
//! plane, then `target/debug/mailroom-operator` with the chart's ServiceAccount token and the
//! environment of the chart's Deployment (addresses moved to loopback ports).

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use mailroom_test_support::{ControlPlane, testenv};
use serde_json::{Value, json};

use super::{
    chart, documents, find, run,
    stack::{self, Proc, free_port},
    template,
};

/// The release name; the chart names the ServiceAccount, Deployment and webhook after it.
pub const RELEASE: &str = "mailroom";

/// A running operator process.
#[derive(Debug)]
pub struct Operator {
    /// The process.
    pub proc: Proc,
    /// Its admin address (`/metrics`).
    pub admin: SocketAddr,
    /// Its webhook address (HTTPS).
    pub webhook: SocketAddr,
    /// The release namespace (its own).
    pub namespace: String,
    /// The namespace holding the Relay.
    pub app_namespace: String,
}

/// Installs the chart, creates a MailDomain and a Relay, and starts the operator.
pub async fn start(bin: &Path, dir: &Path) -> Result<Operator> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let namespace = cp.new_namespace().await?;
    let app_namespace = cp.new_namespace().await?;
    run(cp
        .helm()?
        .args(["install", RELEASE])
        .arg(chart())
        .args(["--namespace", &namespace]))?;

    // The chart's ServiceAccount, as a kubeconfig for the process.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(RELEASE, &PostParams::default(), &request)
        .await
        .context("token for the chart's ServiceAccount")?
        .status
        .context("TokenRequest status")?
        .token;
    let kubeconfig = dir.join("operator.kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_yaml::to_string(&json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": cp.server_url(),
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(cp.ca_pem()),
            }}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}],
            "current-context": "operator",
        }))?,
    )?;

    create_objects(&client, &app_namespace).await?;

    // The Deployment's environment, as the kubelet would resolve it.
    let docs = documents(&template(RELEASE, &namespace, &[])?)?;
    let container = &find(&docs, "Deployment", None)?["spec"]["template"]["spec"]["containers"][0];
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let dns = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?; // closed once dropped: lookups fail
    let mut cmd = Command::new(bin.join("mailroom-operator"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig);
    for var in container["env"].as_array().context("Deployment env")? {
        let name = var["name"].as_str().context("env name")?;
        let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.namespace")) => namespace.clone(),
            (_, Some("metadata.name")) => "mailroom-0".into(),
            other => bail!("env {name}: cannot resolve {other:?}"),
        };
        cmd.env(name, value);
    }
    cmd.env("OPERATOR_ADMIN_ADDR", admin.to_string())
        .env("OPERATOR_WEBHOOK_ADDR", webhook.to_string())
        .env("OPERATOR_DNS_NAMESERVERS", dns.to_string())
        .env("OPERATOR_DNS_RECHECK_SECONDS", "5");
    let mut proc = Proc::spawn("operator", &mut cmd, dir)?;
    stack::wait_http_ok("operator /readyz", admin, "/readyz", &mut proc)?;
    Ok(Operator {
        proc,
        admin,
        webhook,
        namespace,
        app_namespace,
    })
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
    Ok(())
}

impl Operator {
    /// Sends one pod admission (a pod asking for Relay `outbound`) straight to the webhook over
    /// HTTPS, as the apiserver would; the test apiserver cannot reach the chart's Service.
    pub fn admit_one_pod(&self) -> Result<()> {
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
        let url = format!("https://{}/mutate", self.webhook);
        let answer = stack::eventually("the webhook to answer", Duration::from_secs(60), || {
            let out = Command::new(testenv::python()?)
                .args(["-c", script, &url, &self.app_namespace])
                .output()?;
            Ok(out
                .status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string()))
        })
        .with_context(|| format!("POST {url}\n{}", self.proc.log()))?;
        let review: Value = serde_json::from_str(&answer)?;
        ensure!(
            review["response"]["uid"].is_string(),
            "not an AdmissionReview answer: {answer}"
        );
        Ok(())
    }
}
