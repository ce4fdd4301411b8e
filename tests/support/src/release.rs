//! The chart as a user installs it, minus the kubelet: `helm install` on a test control plane,
//! then the operator binary as a process with a token of the chart's ServiceAccount (so RBAC is
//! the chart's) and the environment of the Deployment the chart created, and the chart's webhook
//! registration pointed at that process.
//!
//! Two things differ from a cluster, both because nothing routes a Service here: the webhook
//! registration calls `https://127.0.0.1:<port>/mutate` instead of the Service, and the serving
//! Secret is seeded with a certificate that also names 127.0.0.1 (the operator's self mode keeps
//! a valid certificate that covers its names, and patches the registration's `caBundle` itself).
//! A pod has a network namespace of its own; here the operator binds port 0 for its admin and
//! webhook servers and the test reads the ports from its log, so the registration is pointed at
//! the webhook once the operator runs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    ControlPlane,
    stack::{Proc, listening_addr, repo, wait_http_ok},
};
use anyhow::{Context, Result, bail};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment, core::v1::Secret},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// The release name; the chart names the Deployment, ServiceAccount and webhook after it.
pub const RELEASE: &str = "mailroom";

/// `charts/mailroom`.
pub fn chart() -> PathBuf {
    repo().join("charts/mailroom")
}

/// `helm install mailroom charts/mailroom --namespace <namespace>` with `--set` values. No
/// `--wait`: there is no kubelet, so the Deployment never becomes available.
pub fn install(cp: &ControlPlane, namespace: &str, set: &[&str]) -> Result<()> {
    let mut helm = cp.helm()?;
    helm.args(["install", RELEASE])
        .arg(chart())
        .args(["--namespace", namespace]);
    for value in set {
        helm.args(["--set", value]);
    }
    let out = helm.output().context("running helm install")?;
    if !out.status.success() {
        bail!(
            "helm install failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The operator process.
#[derive(Debug)]
pub struct Operator {
    /// The process.
    pub proc: Proc,
    /// Its admin address (`/metrics`, `/readyz`), moved to a loopback port.
    pub admin: SocketAddr,
    /// Its webhook address (HTTPS), moved to a loopback port.
    pub webhook: SocketAddr,
    /// The release namespace.
    pub namespace: String,
    /// The pod name it runs as (its `OPERATOR_IDENTITY`).
    pub pod: String,
    /// The environment it runs with, as the kubelet would resolve the Deployment's (with the
    /// admin and webhook addresses on `127.0.0.1:0`; see `admin` and `webhook` for the ports).
    pub env: BTreeMap<String, String>,
}

/// Starts `<bin>/mailroom-operator` as the release in `namespace` deploys it (see the module doc).
pub async fn start_operator(cp: &ControlPlane, bin: &Path, namespace: &str, dir: &Path) -> Result<Operator> {
    let client = cp.client().await?;
    let deploy = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(RELEASE)
        .await
        .context("the chart's Deployment")?;
    let pod_spec = deploy
        .spec
        .and_then(|s| s.template.spec)
        .context("Deployment pod template")?;
    let account = pod_spec
        .service_account_name
        .clone()
        .context("the Deployment names no ServiceAccount")?;
    let pod = format!("{RELEASE}-0");
    let mut env = BTreeMap::new();
    for var in pod_spec.containers[0].env.iter().flatten() {
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match (&var.value, field) {
            (Some(v), _) => v.clone(),
            (None, Some("metadata.namespace")) => namespace.to_string(),
            (None, Some("metadata.name")) => pod.clone(),
            // The apiserver drops an empty `value` (omitempty): the variable is set and empty.
            (None, None) if var.value_from.is_none() => String::new(),
            (None, other) => bail!("env {}: cannot resolve {other:?}", var.name),
        };
        env.insert(var.name.clone(), value);
    }
    // A pod has its own network namespace; processes on one machine need their own ports.
    env.insert("OPERATOR_ADMIN_ADDR".into(), "127.0.0.1:0".into());
    env.insert("OPERATOR_WEBHOOK_ADDR".into(), "127.0.0.1:0".into());
    seed_webhook_secret(&client, namespace, &env).await?;

    let kubeconfig = dir.join("operator.kubeconfig");
    cp.write_service_account_kubeconfig(namespace, &account, &kubeconfig)
        .await?;
    let mut cmd = Command::new(bin.join("mailroom-operator"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .envs(&env);
    let mut proc = Proc::spawn("operator", &mut cmd, dir)?;
    let admin = proc.wait_log("the operator's admin server", |l| {
        listening_addr(l, "admin server listening")
    })?;
    let webhook = proc.wait_log("the operator's webhook", |l| {
        listening_addr(l, "webhook listening")
    })?;
    wait_http_ok("operator /readyz", admin, "/readyz", &mut proc)?;
    if env.get("OPERATOR_WEBHOOK_CERT_MODE").is_none_or(|m| m == "self") {
        // Its first certificate round sets the registration's caBundle, with a precondition on
        // the object's version: our change waits for it, so that the round is not refused and
        // repeated only `check_interval` later.
        wait_for_ca_bundle(&client, &env, &mut proc).await?;
    }
    point_webhook_at(&client, &env, webhook).await?;
    Ok(Operator {
        proc,
        admin,
        webhook,
        namespace: namespace.to_string(),
        pod,
        env,
    })
}

/// Writes the serving Secret the operator's self mode reads: a CA (with its key, so the operator
/// could renew) and a certificate for the Service's names plus 127.0.0.1.
async fn seed_webhook_secret(client: &kube::Client, ns: &str, env: &BTreeMap<String, String>) -> Result<()> {
    let var = |k: &str| {
        env.get(k)
            .cloned()
            .with_context(|| format!("the Deployment sets no {k}"))
    };
    let (name, service) = (var("OPERATOR_WEBHOOK_SECRET")?, var("OPERATOR_WEBHOOK_SERVICE")?);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
    let names = vec![
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
        "127.0.0.1".into(),
    ];
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
    let data = [
        ("ca.crt", ca.pem()),
        ("ca.key", ca_key_pem),
        ("tls.crt", cert.pem()),
        ("tls.key", key.serialize_pem()),
    ];
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .context("seeding the webhook Secret")?;
    Ok(())
}

/// Waits until every webhook of the chart's registration has a `caBundle`.
async fn wait_for_ca_bundle(
    client: &kube::Client,
    env: &BTreeMap<String, String>,
    proc: &mut Proc,
) -> Result<()> {
    let name = webhook_config(env)?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let config = api.get(name).await?;
        let webhooks = config.webhooks.unwrap_or_default();
        if !webhooks.is_empty()
            && webhooks.iter().all(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            })
        {
            return Ok(());
        }
        proc.check_running()?;
        if std::time::Instant::now() > deadline {
            bail!("the operator set no caBundle on {name} in 60 s\n{}", proc.log());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn webhook_config(env: &BTreeMap<String, String>) -> Result<&String> {
    env.get("OPERATOR_WEBHOOK_CONFIG")
        .context("the Deployment sets no OPERATOR_WEBHOOK_CONFIG")
}

/// Replaces the Service reference of every webhook in the chart's registration by a URL on
/// `addr`, keeping its path (again when the operator changed the object in between).
async fn point_webhook_at(
    client: &kube::Client,
    env: &BTreeMap<String, String>,
    addr: SocketAddr,
) -> Result<()> {
    let name = webhook_config(env)?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut attempts = 0;
    loop {
        let mut config = api
            .get(name)
            .await
            .context("the chart's MutatingWebhookConfiguration")?;
        for webhook in config.webhooks.iter_mut().flatten() {
            let service = webhook.client_config.service.take();
            let path = service.and_then(|s| s.path).unwrap_or_default();
            webhook.client_config.url = Some(format!("https://{addr}{path}"));
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => attempts += 1,
            done => {
                done.context("pointing the webhook registration at 127.0.0.1")?;
                return Ok(());
            }
        }
    }
}
