//! Pods that the injection webhook handles: create one once the webhook injects the sidecar.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};

/// The container the webhook adds (a native sidecar: an init container that keeps running).
pub const SIDECAR: &str = "mailroom-sidecar";

/// Whether `pod` carries the injected sidecar.
pub fn injected(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR)
}

/// Creates `pod` once the webhook injects it. The apiserver learns of a new caBundle or namespace
/// label a moment after it changes, so this dry-runs the create until the answer carries the
/// sidecar (or `within` passes), then creates for real.
pub async fn create_injected(pods: &Api<Pod>, pod: &Pod, within: Duration) -> Result<Pod> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + within;
    loop {
        let last = match pods.create(&dry, pod).await {
            Ok(p) if injected(&p) => break,
            Ok(_) => "admitted without a sidecar".to_string(),
            Err(e) => format!("dry-run create failed: {e}"),
        };
        if Instant::now() > deadline {
            bail!("the webhook never injected the sidecar within {within:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(pods.create(&PostParams::default(), pod).await?)
}
