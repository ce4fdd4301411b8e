//! On a hub: deliver the shadow copies of pods that are gone (docs/hub.md, "Owner liveness").
//!
//! Liveness comes from the apiserver: a pod is gone when no pod of that name has its UID. A UID
//! is never reused, so a gone owner can never come back and release its copies; delivering
//! them then cannot duplicate anything the owner still holds. A terminating pod still exists:
//! its drain hands off or releases what it has.
//!
//! Every `checkSeconds` the hub lists the pods of the selector (one request whatever the number
//! of owners); an owner missing from a list that began after its first copy arrived is then
//! looked up by name, and only no pod or another UID counts as gone. When the apiserver cannot
//! be reached, nothing is promoted: copies wait rather than risk a duplicate.

use crate::{config::ShadowOwners, metrics::Metrics, spool::Spool};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use std::{collections::HashSet, time::Instant};
use tokio::sync::watch;

/// Checks owners until `stop` turns true.
pub async fn watch(spool: Spool, cfg: ShadowOwners, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(cfg.check());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if spool.shadow_owners().is_empty() {
            continue;
        }
        let c = match &client {
            Some(c) => c.clone(),
            None => match Client::try_default().await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    metrics.shadow_owner_checks.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "shadows: cannot reach the apiserver; shadow copies wait");
                    continue;
                }
            },
        };
        let pods: Api<Pod> = Api::namespaced(c, &cfg.namespace);
        match check(&spool, &pods, &cfg.pod_selector).await {
            Ok(promoted) => {
                metrics.shadow_owner_checks.with_label_values(&["ok"]).inc();
                if promoted > 0 {
                    tracing::info!(
                        messages = promoted,
                        "shadows: delivering the copies of pods that are gone"
                    );
                }
            }
            Err(e) => {
                metrics.shadow_owner_checks.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, namespace = %cfg.namespace, "shadows: cannot check owner pods; shadow copies wait");
            }
        }
    }
}

/// One check; returns how many copies were promoted.
async fn check(spool: &Spool, pods: &Api<Pod>, selector: &str) -> Result<usize, kube::Error> {
    let started = Instant::now();
    let listed = pods.list(&ListParams::default().labels(selector)).await?;
    let live: HashSet<String> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let mut promoted = 0;
    for (owner, since) in spool.shadow_owners() {
        // A copy that arrived after the list began may come from a pod the list missed.
        if since >= started || live.contains(&owner.uid) {
            continue;
        }
        // By name (a list, so that the hub needs no more than `list`): gone unless a pod of
        // that name has the owner's UID.
        let named = pods
            .list(&ListParams::default().fields(&format!("metadata.name={}", owner.pod)))
            .await?;
        let gone = !named
            .items
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(owner.uid.as_str()));
        if gone {
            let n = spool.promote(&owner.uid);
            tracing::info!(pod = %owner.pod, uid = %owner.uid, messages = n, "owner pod is gone; its shadow copies are queued for delivery");
            promoted += n;
        }
    }
    Ok(promoted)
}
