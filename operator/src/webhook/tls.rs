//! The serving certificate at run time: a rustls resolver whose certificate is swapped without a
//! restart, and the [`Keeper`] loop that keeps the Secret (self mode: issue, renew, patch
//! `caBundle`; external mode: read only) and reloads the resolver when the Secret changes.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde_json::json;

use super::{
    Error, Result,
    certs::{self, Material, Plan},
};
use crate::{
    apply::FIELD_MANAGER,
    metrics::Metrics,
    settings::{CertMode, Settings},
};

/// The certificate the TLS listener presents; empty until the Secret was first read.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(String, Arc<CertifiedKey>)>>,
}

/// Keeps the webhook Secret and the resolver in step.
#[derive(Debug)]
pub struct Keeper {
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    settings: Settings,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
}

// === impl CertStore ===

impl CertStore {
    /// Loads `m`'s certificate and key; `Ok(true)` when they differ from the ones in use.
    pub fn load(&self, m: &Material) -> Result<bool> {
        if self.read().as_ref().is_some_and(|(pem, _)| *pem == m.cert) {
            return Ok(false);
        }
        let bad = |e: &dyn std::fmt::Display| Error::Certificate(e.to_string());
        let chain = CertificateDer::pem_slice_iter(m.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(m.key.as_bytes()).map_err(|e| bad(&e))?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(&e))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some((m.cert.clone(), Arc::new(certified)));
        Ok(true)
    }

    /// Whether a certificate is loaded (the listener can complete handshakes).
    pub fn is_loaded(&self) -> bool {
        self.read().is_some()
    }

    /// A rustls server config resolving through this store (HTTP/1.1 only).
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig> {
        let config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(config)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<(String, Arc<CertifiedKey>)>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.read().as_ref().map(|(_, key)| key.clone())
    }
}

fn provider() -> CryptoProvider {
    ring::default_provider()
}

// === impl Keeper ===

impl Keeper {
    /// A keeper for the Secret and MutatingWebhookConfiguration named in `settings`.
    pub fn new(client: Client, settings: Settings, store: Arc<CertStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            configs: Api::all(client),
            settings,
            store,
            metrics,
        }
    }

    /// Syncs now and then every `check_interval`, forever.
    pub async fn run(self) {
        loop {
            if let Err(error) = self.sync().await {
                tracing::warn!(secret = %self.settings.webhook.secret, %error, "webhook certificate sync failed");
            }
            tokio::time::sleep(self.settings.webhook.check_interval).await;
        }
    }

    /// One round: read (and in self mode issue or renew) the Secret, reload, fix `caBundle`.
    pub async fn sync(&self) -> Result<()> {
        let material = match self.settings.webhook.cert_mode {
            CertMode::External => self.read().await?.1.ok_or_else(|| {
                Error::Certificate(format!(
                    "Secret {}/{} does not exist or lacks tls.crt/tls.key",
                    self.settings.namespace, self.settings.webhook.secret
                ))
            })?,
            CertMode::SelfSigned => match self.issue_or_renew().await? {
                // A certificate from a new CA is served from the next round on, once the
                // apiserver has seen the caBundle that trusts it (its webhook cache lags).
                (material, true) if self.store.is_loaded() => {
                    self.patch_ca_bundle(&material.ca_bundle, false).await?;
                    return Ok(());
                }
                (material, _) => material,
            },
        };
        if self.store.load(&material)? {
            tracing::info!(secret = %self.settings.webhook.secret, not_after = ?material.not_after(), "webhook certificate loaded");
        }
        if let Some(t) = material.not_after() {
            self.metrics.set_certificate_expiry(t);
        }
        if self.settings.webhook.cert_mode == CertMode::SelfSigned {
            self.patch_ca_bundle(&material.ca_bundle, false).await?;
        }
        Ok(())
    }

    async fn read(&self) -> Result<(Option<Secret>, Option<Material>)> {
        let secret = self
            .secrets
            .get_opt(&self.settings.webhook.secret)
            .await
            .map_err(Error::kube("get webhook Secret"))?;
        let material = secret
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(Material::from_data);
        Ok((secret, material))
    }

    /// Self mode: keeps the Secret's material fresh. Replicas race with optimistic concurrency
    /// (create, or patch with a resourceVersion precondition); the loser reads the winner's.
    /// Returns the material and whether a new CA was just written.
    async fn issue_or_renew(&self) -> Result<(Material, bool)> {
        for _ in 0..3 {
            let (secret, current) = self.read().await?;
            let w = &self.settings.webhook;
            let names = certs::names(&w.service, &self.settings.namespace, &w.extra_names);
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            let (material, new_ca) =
                match certs::plan(current.as_ref(), &names, now, w.cert_validity, w.ca_validity)? {
                    Plan::Keep => {
                        let current = current.ok_or_else(|| Error::Certificate("no material".into()))?;
                        return Ok((current, false));
                    }
                    Plan::Write { material, new_ca } => (material, new_ca),
                };
            if new_ca && current.is_some() {
                // Trust the new CA before any replica can serve a certificate it signed.
                self.patch_ca_bundle(&material.ca_bundle, true).await?;
            }
            match self.write(secret, &material).await {
                Ok(()) => {
                    tracing::info!(secret = %w.secret, new_ca, "webhook certificate issued");
                    return Ok((material, new_ca));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(Error::kube("write webhook Secret")(e)),
            }
        }
        Err(Error::Certificate(
            "the webhook Secret kept changing under us".into(),
        ))
    }

    async fn write(&self, secret: Option<Secret>, m: &Material) -> Result<(), kube::Error> {
        let name = &self.settings.webhook.secret;
        let Some(existing) = secret else {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(
                        [("app.kubernetes.io/managed-by".into(), "mailroom-operator".into())].into(),
                    ),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(m.to_data()),
                ..Default::default()
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            return self.secrets.create(&params, &secret).await.map(drop);
        };
        let patch = json!({
            "metadata": { "resourceVersion": existing.metadata.resource_version },
            "data": m.to_data(),
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.secrets
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Sets every webhook's `caBundle` to `bundle` (or, with `merge`, to `bundle` plus what it
    /// holds now). A missing configuration is not an error: the chart may not have created it yet.
    async fn patch_ca_bundle(&self, bundle: &str, merge: bool) -> Result<()> {
        let name = &self.settings.webhook.config;
        let Some(config) = self
            .configs
            .get_opt(name)
            .await
            .map_err(Error::kube("get MutatingWebhookConfiguration"))?
        else {
            tracing::debug!(config = %name, "no MutatingWebhookConfiguration yet");
            return Ok(());
        };
        let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion",
            "value": config.metadata.resource_version})];
        for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
            let now = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            let want = match (&now, merge) {
                (Some(now), true) if !now.contains(bundle.trim()) => format!("{bundle}{now}"),
                (Some(now), true) => now.clone(),
                _ => bundle.to_string(),
            };
            if now.as_deref() != Some(want.as_str()) {
                let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, want);
                ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": b64}));
            }
        }
        if ops.len() == 1 {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|e| Error::Certificate(e.to_string()))?;
        self.configs
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(Error::kube("patch caBundle"))?;
        tracing::info!(config = %name, "caBundle updated");
        Ok(())
    }
}
