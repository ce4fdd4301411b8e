//! What a kubelet would do for one container of a stored Pod, done by the test: write the files of
//! its ConfigMap, Secret and emptyDir mounts under a root directory, resolve its env, and run its
//! command as a process. Mount paths are rewritten into the root, in the env and in the ConfigMap
//! text (the config names the mounted files by path). There is no kubelet in the tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

/// Mounted into every container by the ServiceAccount admission plugin.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One container of a stored Pod, materialized on disk.
#[derive(Debug, Clone)]
pub struct PodContainer {
    /// The container as stored (after admission).
    pub spec: Container,
    /// Its resolved env (mount paths rewritten); change entries before `command()`.
    pub env: BTreeMap<String, String>,
    /// Where its mounts live on this machine.
    pub root: PathBuf,
}

// === impl PodContainer ===

impl PodContainer {
    /// Reads container `name` (an init container or a regular one) of `pod` and writes the files
    /// of its mounts under `root`, from the ConfigMaps and Secrets stored in the pod's namespace.
    pub async fn materialize(client: &Client, pod: &Pod, name: &str, root: &Path) -> Result<Self> {
        let ns = pod.namespace().context("pod namespace")?;
        let spec = pod.spec.as_ref().context("pod spec")?;
        let container = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == name)
            .with_context(|| format!("pod {} has no container {name}", pod.name_any()))?
            .clone();
        let volumes = spec.volumes.clone().unwrap_or_default();
        let mut mounts: Vec<String> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        // Longest first, so `/etc/a/b` is rewritten before `/etc/a`.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        let rewrite = |text: &str| {
            mounts.iter().fold(text.to_string(), |t, m| {
                t.replace(m.as_str(), &format!("{}{m}", root.display()))
            })
        };
        for mount in container.volume_mounts.iter().flatten() {
            if mount.mount_path == SERVICE_ACCOUNT_MOUNT {
                continue;
            }
            let dir = PathBuf::from(format!("{}{}", root.display(), mount.mount_path));
            std::fs::create_dir_all(&dir)?;
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("no volume {} for a mount", mount.name))?;
            if let Some(cm) = &volume.config_map {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get(&cm.name)
                    .await
                    .with_context(|| format!("ConfigMap {ns}/{} of volume {}", cm.name, volume.name))?;
                for (key, text) in cm.data.unwrap_or_default() {
                    std::fs::write(dir.join(key), rewrite(&text))?;
                }
            } else if let Some(s) = &volume.secret {
                let name = s.secret_name.clone().context("secret volume without a name")?;
                let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                    .get(&name)
                    .await
                    .with_context(|| format!("Secret {ns}/{name} of volume {}", volume.name))?;
                for (key, bytes) in secret.data.unwrap_or_default() {
                    std::fs::write(dir.join(key), bytes.0)?;
                }
            } else if volume.empty_dir.is_none() {
                bail!(
                    "volume {} is of a kind this test does not materialize",
                    volume.name
                );
            }
        }
        let mut env = BTreeMap::new();
        for var in container.env.iter().flatten() {
            // The downward API's pod identity, as the kubelet resolves it.
            let field = var
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match (&var.value, field) {
                (Some(value), _) => rewrite(value),
                (None, Some("metadata.name")) => pod.name_any(),
                // A dry-run pod may have no UID: any fixed one names it for the sidecar.
                (None, Some("metadata.uid")) => pod
                    .uid()
                    .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".into()),
                (None, _) => bail!("env {}: this valueFrom is not resolved by this test", var.name),
            };
            env.insert(var.name.clone(), value);
        }
        Ok(Self {
            spec: container,
            env,
            root: root.to_path_buf(),
        })
    }

    /// Where `path` inside the container is on this machine.
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}{path}", self.root.display()))
    }

    /// Its command and args, the program looked up in `bin` (the image's `PATH`), with exactly
    /// its env.
    pub fn command(&self, bin: &Path) -> Result<Command> {
        let argv: Vec<String> = self
            .spec
            .command
            .iter()
            .flatten()
            .chain(self.spec.args.iter().flatten())
            .cloned()
            .collect();
        let program = argv.first().context("container without a command")?;
        let mut cmd = Command::new(bin.join(program));
        cmd.args(&argv[1..]).env_clear().envs(&self.env);
        Ok(cmd)
    }
}
