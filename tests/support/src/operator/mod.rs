//! Shared helpers for the apiserver tests: a control plane with our CRDs, the operator running
//! in-process as a ServiceAccount bound to exactly `operator/rbac/rules.yaml`, polling, and a
//! real DNS server on loopback.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::ControlPlane;
use anyhow::{Context as _, Result, bail};
use k8s_openapi::{
    api::{
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use mailroom_operator::{
    crd, dns::HickoryDns, events::Events, metrics::Metrics, reconcile, settings::Settings,
};
use serde::de::DeserializeOwned;

pub mod process;
pub mod sidecar;
pub mod webhook;

/// The operator's ClusterRole rules, the file the chart ships.
pub const RULES: &str = include_str!("../../../../operator/rbac/rules.yaml");
/// The operator's Role rules in its own namespace, the file the chart ships.
pub const NAMESPACE_RULES: &str = include_str!("../../../../operator/rbac/namespace-rules.yaml");

/// Applies every CRD and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    for crd in crd::all() {
        apply_crd(client, &crd).await?;
    }
    Ok(())
}

/// Applies external-dns' own DNSEndpoint CRD (copied from its module by tests/env/prepare.sh) and
/// waits until it is Established.
pub async fn install_external_dns_crd(client: &Client) -> Result<()> {
    let path = crate::testenv::dir()?.join("crds/dnsendpoints.externaldns.k8s.io.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (external-dns' CRD): run `bash tests/env/prepare.sh` to build the test environment",
            path.display()
        )
    })?;
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    apply_crd(client, &crd).await
}

/// Applies `crd` and waits until it is Established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().context("crd name")?;
    api.patch(
        &name,
        &PatchParams::apply("mailroom-tests").force(),
        &Patch::Apply(crd),
    )
    .await?;
    wait_for(&api, &name, |c: &CustomResourceDefinition| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await?;
    Ok(())
}

/// A ServiceAccount `namespace/mailroom-operator` bound (cluster-wide) to exactly [`RULES`] and,
/// in `namespace`, to exactly [`NAMESPACE_RULES`]; returns a client authenticated as it.
pub async fn operator_client(cp: &ControlPlane, namespace: &str) -> Result<Client> {
    let admin = cp.client().await?;
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("mailroom-operator".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await?;
    let rules: Vec<PolicyRule> = serde_yaml_ng::from_str(RULES)?;
    let role_name = format!("mailroom-operator-{namespace}");
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(role_name.clone()),
            ..Default::default()
        },
        rules: Some(rules),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(role_name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role_name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "mailroom-operator".into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let meta = ObjectMeta {
        name: Some("mailroom-operator".into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(serde_yaml_ng::from_str(NAMESPACE_RULES)?),
    };
    Api::<Role>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await?;
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "mailroom-operator".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "mailroom-operator".into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, namespace)
        .create(&PostParams::default(), &binding)
        .await?;
    cp.client_for_service_account(namespace, "mailroom-operator")
        .await
}

/// An owned control plane with the CRDs and the operator running in-process as its ServiceAccount.
pub struct Env {
    /// The control plane (owned: our operator reconciles every object in it).
    pub cp: ControlPlane,
    /// Cluster-admin client for the test's own actions.
    pub admin: Client,
    /// The operator's namespace (DKIM key Secrets).
    pub operator_ns: String,
    operator: Option<tokio::task::JoinHandle<()>>,
    settings: Settings,
}

impl Env {
    /// Starts everything; `env` adds `OPERATOR_*` settings.
    pub async fn start(env: &[(&str, &str)]) -> Result<Self> {
        let cp = ControlPlane::start().await?;
        let admin = cp.client().await?;
        install_crds(&admin).await?;
        let operator_ns = cp.new_namespace().await?;
        let mut vars: HashMap<&str, &str> = env.iter().copied().collect();
        vars.insert("OPERATOR_NAMESPACE", &operator_ns);
        vars.insert("OPERATOR_IDENTITY", "test-operator");
        let settings = Settings::parse(&vars).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut env = Self {
            cp,
            admin,
            operator_ns,
            operator: None,
            settings,
        };
        env.start_operator().await?;
        Ok(env)
    }

    /// (Re)starts the in-process operator with a fresh ServiceAccount token.
    pub async fn start_operator(&mut self) -> Result<()> {
        self.stop_operator();
        let client = match self
            .cp
            .client_for_service_account(&self.operator_ns, "mailroom-operator")
            .await
        {
            Ok(c) => c,
            Err(_) => operator_client(&self.cp, &self.operator_ns).await?,
        };
        let dns = HickoryDns::new(&self.settings.dns_nameservers).map_err(anyhow::Error::msg)?;
        let ctx = Arc::new(reconcile::Context {
            events: Events::new(client.clone(), &self.settings.identity),
            client,
            settings: self.settings.clone(),
            metrics: Arc::new(Metrics::new()),
            dns: Arc::new(dns),
            backoff: Default::default(),
        });
        self.operator = Some(tokio::spawn(reconcile::run(ctx)));
        Ok(())
    }

    /// Stops the in-process operator.
    pub fn stop_operator(&mut self) {
        if let Some(handle) = self.operator.take() {
            handle.abort();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_operator();
    }
}

/// Polls `name` until `pred` holds (60 s).
pub async fn wait_for<K>(api: &Api<K>, name: &str, pred: impl Fn(&K) -> bool) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    wait_for_within(api, name, Duration::from_secs(60), pred).await
}

/// Polls `name` until `pred` holds, for at most `timeout`.
pub async fn wait_for_within<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(obj) = api.get_opt(name).await? {
            if pred(&obj) {
                return Ok(obj);
            }
            last = Some(obj);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {name}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until `name` no longer exists (60 s).
pub async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("{name} still exists after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The Ready condition's (status, reason) of a status's conditions.
pub fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// A real DNS server on loopback (`tests/peers/dnsserver.py`, dnslib).
pub use crate::peers::DnsServer;

/// dkimpy (which we did not write) signs a message with a PEM key and verifies it, resolving the
/// selector through our DNS server. Args: key file, selector, domain, DNS port.
pub const DKIMPY_SIGN_VERIFY: &str = r#"
import sys, dkim, dns.resolver
key_file, selector, domain, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
key = open(key_file, "rb").read()
msg = (b"From: a@" + domain.encode() + b"\r\nTo: b@example.net\r\nSubject: hi\r\n"
       b"Message-ID: <1@" + domain.encode() + b">\r\n\r\nhello\r\n")
sig = dkim.sign(msg, selector.encode(), domain.encode(), key, include_headers=[b"from", b"to", b"subject"])
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = port
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return b"".join(b"".join(s for s in rr.strings) for rr in r.resolve(name, "TXT"))
ok = dkim.verify(sig + msg, dnsfunc=dnsfunc)
print("verified" if ok else "NOT verified")
sys.exit(0 if ok else 1)
"#;

/// dkimpy signs a message for `domain` with the PKCS#8 PEM key `pem` under `selector`, and
/// verifies it against the DNS server at 127.0.0.1:`dns_port` ([`DKIMPY_SIGN_VERIFY`]).
pub fn dkimpy_sign_verify(pem: &[u8], selector: &str, domain: &str, dns_port: u16) -> Result<()> {
    let key_file = tempfile::NamedTempFile::new()?;
    std::fs::write(key_file.path(), pem)?;
    let out = std::process::Command::new(crate::testenv::python()?)
        .arg("-c")
        .arg(DKIMPY_SIGN_VERIFY)
        .args([
            key_file.path().to_str().context("temp path is not UTF-8")?,
            selector,
            domain,
            &dns_port.to_string(),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "dkimpy ({selector}._domainkey.{domain}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Status and reason of condition `type_` of a MailDomain (empty strings when absent).
pub fn domain_condition(md: &mailroom_operator::crd::MailDomain, type_: &str) -> (String, String) {
    ready(
        &md.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        type_,
    )
}

/// A Secret named `name` with these keys and (UTF-8) values.
pub fn secret(name: &str, data: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A Relay spec for domain `shop` whose sidecar listens on `listen` and relays to a smarthost on
/// 127.0.0.1:`port` with STARTTLS, credentials from Secret `creds` and the CA in Secret
/// `upstream-ca` (key `ca.crt`).
pub fn starttls_relay_spec(listen: u16, port: u16) -> String {
    format!(
        "domains: [shop]\nlistenPort: {listen}\ndelivery:\n  smarthost: {{host: 127.0.0.1, port: {port}, tls: starttls, \
         credentialsSecretRef: {{name: creds}}, caSecretRef: {{name: upstream-ca, key: ca.crt}}}}"
    )
}

/// The sidecar config the operator rendered for Relay `relay`: its ConfigMap `<relay>-sidecar`,
/// the `sidecar.yaml` text, and that text parsed and validated by the contract crate as the
/// sidecar would.
pub async fn rendered_config(
    cms: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    relay: &str,
) -> anyhow::Result<(
    k8s_openapi::api::core::v1::ConfigMap,
    String,
    mailroom_config::Config,
)> {
    use anyhow::Context as _;
    let cm = cms.get(&format!("{relay}-sidecar")).await?;
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("sidecar.yaml"))
        .context("sidecar.yaml")?
        .clone();
    let config = mailroom_config::Config::parse(std::path::Path::new("sidecar.yaml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cm, text, config))
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}
