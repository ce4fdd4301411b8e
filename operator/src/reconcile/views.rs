//! What a Relay reconcile reads, served from the operator's own watch caches.
//!
//! A Relay reconcile needs its MailDomains, its Namespace's labels, the DKIM key Secrets and the
//! count of its pods. Read from the apiserver, those were 11,000 of the 19,000 requests of a cold
//! start with 1,000 Relays (docs/benchmarks.md), and the apiserver shares two CPUs with the
//! operator.
//!
//! Why a cache read is not stale: each cache is filled by the watch that also wakes the Relays
//! on a change to it (`reconcile::run`), and a reflector stores an object before it passes the
//! event on, so a reconcile woken by a change reads that change. A key Secret never changes once
//! written (rotation writes a new one under a new name), so it needs no trigger. An object the
//! cache has not seen yet (created a moment ago) is read from the apiserver instead.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};

use super::{
    Context,
    relay::{INJECTED_LABEL, RELAY_LABEL},
};
use crate::{Error, Result, crd::MailDomain};

/// How long a reconcile waits for the caches' first lists.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The caches a Relay reconcile reads.
#[derive(Clone)]
pub struct Views {
    domains: Store<MailDomain>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    keys: Store<Secret>,
    pods: Store<PartialObjectMeta<Pod>>,
    /// Every cache's first list, awaited once for all reconciles. A `Store`'s own
    /// `wait_until_ready` keeps only the waker of its last poller (a oneshot channel inside), so
    /// of 16 reconciles waiting at start-up 15 were never woken and went on only when their
    /// timeout polled them again: a cold start with 1,000 Relays took 30 s instead of 12
    /// (docs/benchmarks.md). A shared future wakes every waiter.
    synced: Shared<BoxFuture<'static, ()>>,
}

/// The writing ends of [`Views`], for the watches that fill them.
pub struct Writers {
    /// Every MailDomain.
    pub domains: Writer<MailDomain>,
    /// Every Namespace, metadata only.
    pub namespaces: Writer<PartialObjectMeta<Namespace>>,
    /// The DKIM key Secrets in the operator's namespace (labelled `KEY_LABEL`).
    pub keys: Writer<Secret>,
    /// Injected pods, metadata only (`relay::injected_pods`).
    pub pods: Writer<PartialObjectMeta<Pod>>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers").finish_non_exhaustive()
    }
}

impl Views {
    /// Empty caches, and the writers their watches fill them through.
    pub fn new() -> (Self, Writers) {
        let (domains, domains_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (keys, keys_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let synced = {
            let (d, n, k, p) = (domains.clone(), namespaces.clone(), keys.clone(), pods.clone());
            async move {
                // A dropped writer (the operator stopping) is as good as ready here: reads then
                // go to the apiserver.
                let _ = futures::join!(
                    d.wait_until_ready(),
                    n.wait_until_ready(),
                    k.wait_until_ready(),
                    p.wait_until_ready(),
                );
            }
            .boxed()
            .shared()
        };
        let views = Self {
            domains,
            namespaces,
            keys,
            pods,
            synced,
        };
        let writers = Writers {
            domains: domains_w,
            namespaces: namespaces_w,
            keys: keys_w,
            pods: pods_w,
        };
        (views, writers)
    }

    /// Waits until every cache holds its first full list: before that, a missing object might
    /// only be one the cache has not listed yet (and a pod count would be short). Gives up after
    /// [`SYNC_TIMEOUT`] with the caches that are not ready, so that a watch that cannot start
    /// (say, a ClusterRole older than the operator) fails reconciles with a reason instead of
    /// holding every reconcile slot forever.
    pub async fn ready(&self) -> Result<()> {
        if tokio::time::timeout(SYNC_TIMEOUT, self.synced.clone())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let unready: Vec<&str> = [
            ("MailDomains", self.domains.wait_until_ready().now_or_never()),
            ("Namespaces", self.namespaces.wait_until_ready().now_or_never()),
            ("DKIM key Secrets", self.keys.wait_until_ready().now_or_never()),
            ("pods", self.pods.wait_until_ready().now_or_never()),
        ]
        .into_iter()
        .filter(|(_, ready)| ready.is_none())
        .map(|(name, _)| name)
        .collect();
        Err(Error::CacheNotReady {
            caches: unready.join(", "),
        })
    }

    /// MailDomain `name`, if it exists.
    pub async fn domain(&self, ctx: &Context, name: &str) -> Result<Option<Arc<MailDomain>>> {
        if let Some(md) = self.domains.get(&ObjectRef::new(name)) {
            return Ok(Some(md));
        }
        let md = Api::<MailDomain>::all(ctx.client.clone())
            .get_opt(name)
            .await
            .map_err(Error::kube("get MailDomain"))?;
        Ok(md.map(Arc::new))
    }

    /// The labels of Namespace `ns` (none if it is gone).
    pub async fn namespace_labels(&self, ctx: &Context, ns: &str) -> Result<BTreeMap<String, String>> {
        if let Some(n) = self.namespaces.get(&ObjectRef::new(ns)) {
            return Ok(n.labels().clone());
        }
        let n = Api::<Namespace>::all(ctx.client.clone())
            .get_opt(ns)
            .await
            .map_err(Error::kube("get Namespace"))?;
        Ok(n.map(|n| n.labels().clone()).unwrap_or_default())
    }

    /// DKIM key Secret `name` in the operator's namespace, if it exists.
    pub async fn key(&self, ctx: &Context, name: &str) -> Result<Option<Arc<Secret>>> {
        let ns = &ctx.settings.namespace;
        if let Some(s) = self.keys.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some(s));
        }
        let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(Error::kube("get DKIM Secret"))?;
        Ok(s.map(Arc::new))
    }

    /// Live injected pods of Relay `relay` in `ns`. A pod being deleted sends no more new mail:
    /// its share of the Relay's rate goes to the others.
    pub fn pods(&self, ns: &str, relay: &str) -> u32 {
        let live = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns)
                    && p.metadata.deletion_timestamp.is_none()
                    && p.labels().get(RELAY_LABEL).map(String::as_str) == Some(relay)
                    && p.labels().get(INJECTED_LABEL).map(String::as_str) == Some("true")
            })
            .count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    /// A watch that never lists (forbidden, say) fails reconciles after the timeout, naming its
    /// cache, instead of holding them forever.
    #[tokio::test(start_paused = true)]
    async fn a_cache_that_never_syncs_fails_the_reconcile_by_name() {
        let (views, mut fill) = Views::new();
        let error = views.ready().await.expect_err("nothing has synced");
        assert_eq!(
            error.to_string(),
            "the operator's caches of MailDomains, Namespaces, DKIM key Secrets, pods have not synced"
        );
        assert!(!error.is_spec_error(), "retried with backoff");
        assert_eq!(error.metric_label(), "cache_not_ready");

        fill.domains.apply_watcher_event(&Event::InitDone);
        fill.namespaces.apply_watcher_event(&Event::InitDone);
        fill.keys.apply_watcher_event(&Event::InitDone);
        let error = views.ready().await.expect_err("pods have not synced");
        assert_eq!(error.to_string(), "the operator's caches of pods have not synced");

        fill.pods.apply_watcher_event(&Event::InitDone);
        let started = tokio::time::Instant::now();
        views.ready().await.expect("all synced");
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait once synced");
    }

    /// Every reconcile waiting for the first lists goes on as soon as they are in, not only the
    /// last one to ask (a cold start of 1,000 Relays waited 30 s for the other 15).
    #[tokio::test(start_paused = true)]
    async fn every_waiting_reconcile_wakes_when_the_caches_sync() {
        let (views, mut fill) = Views::new();
        let started = tokio::time::Instant::now();
        let waiting: Vec<_> = (0..16)
            .map(|_| {
                let views = views.clone();
                tokio::spawn(async move { views.ready().await.map(|()| started.elapsed()) })
            })
            .collect();
        // Every waiter has polled (and left its waker) before the lists come in.
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        fill.domains.apply_watcher_event(&Event::InitDone);
        fill.namespaces.apply_watcher_event(&Event::InitDone);
        fill.keys.apply_watcher_event(&Event::InitDone);
        fill.pods.apply_watcher_event(&Event::InitDone);
        for (n, w) in waiting.into_iter().enumerate() {
            let waited = w.await.expect("task").expect("synced, not timed out");
            assert_eq!(
                waited,
                Duration::ZERO,
                "reconcile {n} waited {waited:?} after the caches synced"
            );
        }
    }
}
