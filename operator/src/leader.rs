//! Lease-based leader election (coordination.k8s.io/v1): every replica serves, one reconciles.
//! Expiry is judged by local observation of the Lease's resourceVersion, not by comparing clocks.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::{Error, Result};

/// Takes and keeps one Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The resourceVersion last seen held by someone else, and when we first saw it.
    observed: Option<(String, Instant)>,
}

// === impl Elector ===

impl Elector {
    /// An elector for Lease `namespace/name` as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: None,
        }
    }

    /// How often to retry or renew: a third of the lease duration.
    pub fn period(&self) -> Duration {
        self.duration / 3
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "lease acquire failed"),
            }
            tokio::time::sleep(self.period()).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease duration (or someone else took it);
    /// returns then, and the caller must stop reconciling.
    pub async fn keep(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %self.name, "lost the lease to another replica");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed");
                    if last_ok.elapsed() > self.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so another replica takes over at once (graceful shutdown).
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(error) => tracing::warn!(%error, "releasing the lease failed"),
        }
    }

    /// One round: create, renew, or take over an expired or released Lease. `Ok(true)` if we hold it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(Error::kube("get Lease"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(&self.identity) {
            let mut renewed = spec;
            renewed.renew_time = Some(now);
            lease.spec = Some(renewed);
            return self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await);
        }
        if holder.is_some() && !self.expired(lease.metadata.resource_version.clone().unwrap_or_default()) {
            return Ok(false);
        }
        lease.spec = Some(self.spec(now, spec.lease_transitions.unwrap_or(0) + 1));
        self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }

    fn spec(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().try_into().unwrap_or(i32::MAX)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// True once the same resourceVersion has been held by another replica for a full duration.
    fn expired(&mut self, version: String) -> bool {
        match &self.observed {
            Some((seen, since)) if *seen == version => since.elapsed() > self.duration,
            _ => {
                self.observed = Some((version, Instant::now()));
                false
            }
        }
    }

    fn write(&mut self, result: Result<Lease, kube::Error>) -> Result<bool> {
        match result {
            Ok(_) => {
                self.observed = None;
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube("write Lease")(e)),
        }
    }
}
