//! Per-test namespaces on a shared control plane.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

use crate::ControlPlane;

// === impl ControlPlane ===

impl ControlPlane {
    /// Creates a namespace with a generated name (`test-xxxxx`) and returns its name.
    pub async fn new_namespace(&self) -> Result<String> {
        self.new_namespace_with_labels(&[]).await
    }

    /// Creates a namespace with a generated name and these labels, e.g.
    /// `("pod-security.kubernetes.io/enforce", "restricted")`, and returns its name.
    ///
    /// The namespace's `default` ServiceAccount is created before returning, so a Pod can be admitted
    /// at once (the ServiceAccount admission plugin rejects Pods whose account does not exist yet, and
    /// the controller-manager would create it only a moment later).
    pub async fn new_namespace_with_labels(&self, labels: &[(&str, &str)]) -> Result<String> {
        let client = self.client().await?;
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("test-".into()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let name = created.metadata.name.context("created namespace has no name")?;

        let default_sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<ServiceAccount>::namespaced(client, &name)
            .create(&PostParams::default(), &default_sa)
            .await
        {
            Ok(_) => Ok(name),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(name),
            Err(e) => Err(e).with_context(|| format!("creating ServiceAccount {name}/default")),
        }
    }
}
