//! Secret material stays in Secrets and mounted files. The operator generates a DKIM key and
//! renders a Relay that authenticates to its smarthost; the real sidecar binary (debug logging)
//! signs and relays a message with that key and password. Then everything else the two write is
//! searched for the key and the password, in every encoding they travel in: ConfigMaps, Pods,
//! MailDomain and Relay objects (status included), Events, the operator's logs, the sidecar's
//! logs and its /metrics.

use mailroom_test_support::operator as common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, ensure};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::{
    Env, secret,
    webhook::{OPTED_IN_RESTRICTED, domain, pod, relay, start_injector},
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Event, Pod, Secret},
    events::v1::Event as EventV1,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use mailroom_operator::crd::{MailDomain, Relay};
use mailroom_test_support::{
    kubelet::PodContainer,
    peers::{Upstream, smtp_send},
    stack::{Proc, build_binaries, http_get},
};
use serde::{Serialize, de::DeserializeOwned};

const USER: &str = "mailer";
/// Distinctive, so that any appearance is a leak and not a coincidence.
const PASSWORD: &str = "pw-Vq7Lx2Rz9Kd4Ns8Tb";

#[tokio::test]
async fn secret_material_never_appears_in_configmaps_status_events_logs_or_metrics() -> Result<()> {
    let operator_log = capture_logs();
    let bin = build_binaries()?;
    let tmp = tempfile::tempdir()?;
    let mut upstream = Upstream::starttls_with_auth(tmp.path(), USER, PASSWORD)?;
    // No DNS server answers there: the MailDomain's DNS check fails, which makes Events too.
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "shop", &allowed).await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let pp = PostParams::default();
    let creds = [("username", USER), ("password", PASSWORD)];
    secrets.create(&pp, &secret("creds", &creds)).await?;
    let ca = upstream.ca_pem.clone().context("the upstream's CA")?;
    secrets
        .create(&pp, &secret("upstream-ca", &[("ca.crt", &ca)]))
        .await?;
    // The port inside the pod; the process below gets one of its own on this machine.
    let spec = common::starttls_relay_spec(2525, upstream.port);
    relay(&env, &ns, "outbound", &spec, "Reconciled").await?;
    let _injector = start_injector(&env, &[], |_| {}).await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    pods.create(&pp, &pod("app", Some("outbound"), false)?).await?;
    let stored = pods.get("app").await?;

    let root = tmp.path().join("pod");
    let mut container = PodContainer::materialize(&env.admin, &stored, "mailroom-sidecar", &root).await?;
    container.env.insert("RUST_LOG".into(), "debug".into());
    // A real pod has its own network namespace; here the sidecar takes free loopback ports
    // (port 0) and reports them.
    for var in [
        "SIDECAR_LISTEN_ADDR",
        "SIDECAR_ADMIN_ADDR",
        "SIDECAR_QUEUE_API_ADDR",
    ] {
        container.env.insert(var.into(), "127.0.0.1:0".into());
    }
    let mut process = Proc::spawn("sidecar", &mut container.command(&bin)?, tmp.path())?;
    let (smtp, admin) = process.sidecar_addrs()?;
    if let Err(e) = smtp_send(smtp, "app@shop.example.com", &["someone@example.net"])? {
        anyhow::bail!("smtplib: {e}");
    }
    // Delivered signed with the key and authenticated with the password: both were used.
    let eml = upstream.wait_messages(1, &mut process)?.remove(0);
    let meta = Upstream::envelope(&eml)?;
    ensure!(meta["authenticated"] == true, "{meta}");
    let (_, metrics) = http_get(admin, "/metrics")?;
    ensure!(
        metrics.contains("mailroom_sidecar_messages_delivered_total"),
        "{metrics}"
    );
    process.terminate()?;

    let key = Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .get("dkim-shop")
        .await?;
    let needles = needles(&key)?;
    // The scan can see a leak: the DKIM Secret rendered into the Relay's namespace holds the key.
    let rendered = serde_json::to_string(&secrets.get("outbound-dkim").await?)?;
    ensure!(
        needles.iter().any(|(_, n)| rendered.contains(n.as_str())),
        "the needles do not match the key as it is stored"
    );

    let sidecar_log = process.log();
    ensure!(
        sidecar_log.contains("DEBUG"),
        "sidecar ran without debug logging:\n{sidecar_log}"
    );
    let operator_log =
        String::from_utf8_lossy(&operator_log.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    ensure!(!operator_log.is_empty(), "no operator log captured");
    let client = env.admin.clone();
    let places = [
        ("ConfigMaps".to_string(), all::<ConfigMap>(&client).await?),
        ("Pods".into(), all::<Pod>(&client).await?),
        ("MailDomains".into(), all::<MailDomain>(&client).await?),
        ("Relays".into(), all::<Relay>(&client).await?),
        ("Events (core/v1)".into(), all::<Event>(&client).await?),
        ("Events (events.k8s.io/v1)".into(), all::<EventV1>(&client).await?),
        ("operator log".into(), operator_log),
        ("sidecar log".into(), sidecar_log),
        ("sidecar /metrics".into(), metrics),
    ];
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for (what, needle) in &needles {
            if text.contains(needle.as_str()) {
                leaks.push(format!("{what} found in {place}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secret material leaked:\n{}", leaks.join("\n"));
    Ok(())
}

/// The password and the DKIM key in every form they travel in: plain, base64 (Secret data as
/// JSON, AUTH LOGIN), the AUTH PLAIN blob, the PEM text and each base64 line of its body.
fn needles(key: &Secret) -> Result<Vec<(String, String)>> {
    let mut n = vec![
        ("password".to_string(), PASSWORD.to_string()),
        ("password (base64)".into(), B64.encode(PASSWORD)),
        (
            "AUTH PLAIN blob".into(),
            B64.encode(format!("\0{USER}\0{PASSWORD}")),
        ),
    ];
    let data = key.data.as_ref().context("key Secret data")?;
    ensure!(!data.is_empty(), "key Secret has no data");
    for (k, v) in data {
        let text = String::from_utf8_lossy(&v.0).into_owned();
        n.push((format!("DKIM key {k} (base64 of the file)"), B64.encode(&v.0)));
        let body: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
            .collect();
        ensure!(!body.is_empty(), "{k} is not PEM");
        n.push((format!("DKIM key {k} (PEM body)"), body.concat()));
        for line in body.into_iter().filter(|l| l.len() >= 16) {
            n.push((format!("DKIM key {k} (PEM line)"), line.to_string()));
        }
    }
    Ok(n)
}

/// Every object of kind `K` in the cluster as JSON.
async fn all<K>(client: &Client) -> Result<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let list = Api::<K>::all(client.clone()).list(&ListParams::default()).await?;
    Ok(serde_json::to_string(&list.items)?)
}

/// Sends this process's logs (the in-process operator's, at debug level) to a buffer.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::default());
    let out = buf.0.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || buf.clone())
        .init();
    out
}
