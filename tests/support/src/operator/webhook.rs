//! The injection webhook in tests: served in-process as the operator's ServiceAccount, registered
//! from `operator/webhook/mutatingwebhookconfiguration.yaml` by URL (`https://127.0.0.1:<port>`,
//! the test apiserver cannot reach Services), plus Relay and pod builders.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use mailroom_operator::{
    crd::{MailDomain, MailDomainSpec, Relay, RelaySpec},
    metrics::Metrics,
    settings::Settings,
    webhook::Webhook,
};

use super::{Env, ready, wait_for};

/// The registration the chart ships.
pub const REGISTRATION: &str = include_str!("../../../../operator/webhook/mutatingwebhookconfiguration.yaml");
/// Labels of an opted-in namespace that enforces PodSecurity `restricted`.
pub const OPTED_IN_RESTRICTED: &[(&str, &str)] = &[
    ("mailroom.dev/injection", "enabled"),
    ("pod-security.kubernetes.io/enforce", "restricted"),
];

/// A webhook served by this test process; stopped on drop.
pub struct Injector {
    /// Its metrics (admission results).
    pub metrics: Arc<Metrics>,
    /// The settings it runs with.
    pub settings: Settings,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The registration with its placeholders filled, pointing at `url`.
pub fn registration(name: &str, namespace: &str, url: &str) -> Result<MutatingWebhookConfiguration> {
    let text = REGISTRATION
        .replace("${NAME}", name)
        .replace("${SERVICE_NAME}", "mailroom-webhook")
        .replace("${SERVICE_NAMESPACE}", namespace)
        .replace("${CA_BUNDLE}", "")
        .replace("${FAILURE_POLICY}", "Fail")
        .replace("${TIMEOUT_SECONDS}", "10");
    assert!(!text.contains("${"), "unfilled placeholder in {text}");
    let mut config: MutatingWebhookConfiguration = serde_yaml_ng::from_str(&text)?;
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config.service = None;
        webhook.client_config.url = Some(url.into());
        webhook.client_config.ca_bundle = None;
    }
    Ok(config)
}

/// A webhook bound on 127.0.0.1 (certificate for that address, checked every 300 ms) with the
/// operator's ServiceAccount, `vars` added to its settings and `tweak` applied; not serving yet.
pub async fn bind_webhook(
    env: &Env,
    vars: &[(&str, &str)],
    tweak: impl FnOnce(&mut Settings),
) -> Result<(Webhook, Settings, Arc<Metrics>)> {
    let mut all: std::collections::HashMap<&str, &str> = vars.iter().copied().collect();
    all.insert("OPERATOR_NAMESPACE", &env.operator_ns);
    all.insert("OPERATOR_WEBHOOK_ADDR", "127.0.0.1:0");
    let mut settings = Settings::parse(&all).map_err(|e| anyhow::anyhow!("{e}"))?;
    settings.webhook.extra_names = vec!["127.0.0.1".into()];
    settings.webhook.check_interval = Duration::from_millis(300);
    tweak(&mut settings);
    let client = env
        .cp
        .client_for_service_account(&env.operator_ns, "mailroom-operator")
        .await?;
    let metrics = Arc::new(Metrics::new());
    let addr = settings.webhook.addr.context("webhook address")?;
    let webhook = Webhook::bind(addr, client, &settings, metrics.clone()).await?;
    Ok((webhook, settings, metrics))
}

/// Starts the webhook (self-signed mode, certificate for 127.0.0.1) with `vars` added to its
/// settings and `tweak` applied, registers it, and waits until the apiserver calls it.
pub async fn start_injector(
    env: &Env,
    vars: &[(&str, &str)],
    tweak: impl FnOnce(&mut Settings),
) -> Result<Injector> {
    let (webhook, settings, metrics) = bind_webhook(env, vars, tweak).await?;
    let url = format!("https://{}/mutate", webhook.local_addr()?);
    let config = registration(&settings.webhook.config, &env.operator_ns, &url)?;
    Api::<MutatingWebhookConfiguration>::all(env.admin.clone())
        .patch(
            &settings.webhook.config,
            &PatchParams::apply("mailroom-tests").force(),
            &Patch::Apply(&config),
        )
        .await?;
    let task = tokio::spawn(async move {
        if let Err(e) = webhook.run().await {
            panic!("webhook stopped: {e}");
        }
    });
    let injector = Injector {
        metrics,
        settings,
        task,
    };
    wait_until_called(env, &injector).await?;
    Ok(injector)
}

/// Dry-run pod creations in a probe namespace until this injector has answered one (the caBundle
/// is patched and the apiserver's webhook cache has caught up).
async fn wait_until_called(env: &Env, injector: &Injector) -> Result<()> {
    let ns = env
        .cp
        .new_namespace_with_labels(&[("mailroom.dev/injection", "enabled")])
        .await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let answered = injector
            .metrics
            .render()
            .lines()
            .any(|l| l.starts_with("mailroom_operator_webhook_admissions_total{") && !l.ends_with(" 0"));
        if answered {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the apiserver never called the webhook; last error: {last}");
        }
        let probe = pod("probe", Some("probe"), false)?;
        if let Err(e) = pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &probe,
            )
            .await
        {
            last = e.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pod that passes PodSecurity `restricted` (unless `privileged`), asking for `relay` by label.
pub fn pod(name: &str, relay: Option<&str>, privileged: bool) -> Result<Pod> {
    let labels = match relay {
        Some(r) => format!("{{app: demo, mailroom.dev/relay: {r}}}"),
        None => "{app: demo}".into(),
    };
    let container_ctx = if privileged {
        "{privileged: true}"
    } else {
        "{allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}"
    };
    let yaml = format!(
        "metadata: {{name: {name}, labels: {labels}}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 1000, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: app
    image: registry.invalid/app:1
    securityContext: {container_ctx}"
    );
    Ok(serde_yaml_ng::from_str(&yaml)?)
}

/// Creates MailDomain `name` from `yaml` and waits until it is Ready.
pub async fn domain(env: &Env, name: &str, yaml: &str) -> Result<MailDomain> {
    let spec: MailDomainSpec = serde_yaml_ng::from_str(yaml)?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    api.create(&PostParams::default(), &MailDomain::new(name, spec))
        .await?;
    wait_for(&api, name, |md| {
        md.status
            .as_ref()
            .is_some_and(|s| ready(&s.conditions, "Ready").0 == "True")
    })
    .await
}

/// Creates Relay `ns/name` from `yaml` and waits until its Ready reason is `reason`.
pub async fn relay(env: &Env, ns: &str, name: &str, yaml: &str, reason: &str) -> Result<Relay> {
    let spec: RelaySpec = serde_yaml_ng::from_str(yaml)?;
    let api: Api<Relay> = Api::namespaced(env.admin.clone(), ns);
    api.create(&PostParams::default(), &Relay::new(name, spec))
        .await?;
    wait_for(&api, name, |r| {
        let conds = r
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        ready(&conds, "Ready").1 == reason
    })
    .await
}

/// The stored pod's init container names.
pub fn init_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector").finish_non_exhaustive()
    }
}
