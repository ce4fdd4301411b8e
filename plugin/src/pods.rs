//! Which pods make up a Relay, and which of their containers runs `mailroom-sidecar`.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};

/// Label on pods that send through a Relay (set by the app, kept by the webhook).
const RELAY_LABEL: &str = "mailroom.dev/relay";
/// Label the webhook adds to pods it injected.
const INJECTED_LABEL: &str = "mailroom.dev/injected";
/// Label on the pods of a Relay's hub.
const HUB_LABEL: &str = "mailroom.dev/hub";
/// The injected sidecar (a restartable init container).
pub const SIDECAR_CONTAINER: &str = "mailroom-sidecar";
/// The hub's container.
const HUB_CONTAINER: &str = "mailroom-hub";

/// One running `mailroom-sidecar` of a Relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod.
    pub pod: String,
    /// The container that runs `mailroom-sidecar` in it.
    pub container: String,
    /// Whether it is one of the Relay's hub pods.
    pub hub: bool,
}

/// The running pods of Relay `relay` in `ns`: its injected app pods, then its hub pods.
pub async fn relay_pods(client: &Client, ns: &str, relay: &str) -> Result<Vec<Target>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for (selector, container, hub) in [
        (
            format!("{RELAY_LABEL}={relay},{INJECTED_LABEL}=true"),
            SIDECAR_CONTAINER,
            false,
        ),
        (format!("{HUB_LABEL}={relay}"), HUB_CONTAINER, true),
    ] {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(ResourceExt::name_any)
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|pod| Target {
            pod,
            container: container.to_owned(),
            hub,
        }));
    }
    if out.is_empty() {
        bail!(
            "no running pods of Relay {ns}/{relay} (an app pod belongs to it once injected: labels \
             {RELAY_LABEL}={relay} and {INJECTED_LABEL}=true)"
        );
    }
    Ok(out)
}
