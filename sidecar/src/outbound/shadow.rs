//! The sidecar's connections to its hub pods for shadow copies (docs/hub.md, "Shadow copies"):
//! TLS from the first byte against the operator's CA, AUTH PLAIN with the Relay's credential,
//! and the XHANDOFF + XSHADOW parameters. A copy goes to this pod's home hub (chosen by its UID,
//! so the pods of a Relay spread over the hubs) and to the next one if that fails. Releases go
//! to the hub that holds the copy.

use super::{Outcome, client, pool::Pool, smarthost::DeliveryError, starttls::Opened, tls::TlsConfigs};
use crate::{
    config::{
        self, TlsMode,
        settings::{ENV_POD_NAME, ENV_POD_UID},
    },
    message::{
        Envelope, Recipient,
        handoff::{self, Owner},
    },
};
use lettre::transport::smtp::extension::ClientId;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;

/// The hubs are in the cluster; a copy that cannot be made quickly makes the app wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each reply, the hub's fsync included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a shadow copy or release did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShadowError(pub String);

/// One hub pod.
struct Hub {
    settings: client::Settings,
    idle: Pool<()>,
    permits: Arc<Semaphore>,
}

/// Connections to every hub pod of the Relay, for one config generation.
pub struct ShadowClient {
    hubs: Vec<Hub>,
    home: usize,
    owner: Owner,
}

impl std::fmt::Debug for ShadowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowClient")
            .field("hosts", &self.hosts().collect::<Vec<_>>())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl ShadowClient {
    /// Prepares connections to `shadows.hosts` with the hand-off's port, CA and credential,
    /// for copies owned by `owner`. Reads the CA now.
    pub fn new(
        handoff: &config::Handoff,
        shadows: &config::ShadowCopies,
        owner: Owner,
        hostname: &str,
    ) -> Result<Self, DeliveryError> {
        let mut hubs = Vec::with_capacity(shadows.hosts.len());
        for host in &shadows.hosts {
            let tls_config =
                TlsConfigs::pinned(Some(&handoff.ca_file)).map_err(|source| DeliveryError::Tls {
                    host: host.clone(),
                    source,
                })?;
            let settings = client::Settings {
                host: host.clone(),
                port: handoff.port,
                tls: TlsMode::Implicit,
                tls_config: Some(tls_config),
                client_id: ClientId::Domain(hostname.to_owned()),
                auth: Some(config::Auth {
                    mechanism: config::AuthMechanism::Plain,
                    username_file: handoff.username_file.clone(),
                    password_file: handoff.password_file.clone(),
                }),
                connect_timeout: CONNECT_TIMEOUT,
                command_timeout: COMMAND_TIMEOUT,
                handoff: true,
            };
            hubs.push(Hub {
                settings,
                idle: Pool::new(),
                permits: Arc::new(Semaphore::new(shadows.max_connections.max(1))),
            });
        }
        // FNV-1a of the UID: stable across restarts and versions, unlike std's hasher.
        let hash = owner.uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let home = (hash % hubs.len().max(1) as u64) as usize;
        Ok(Self { hubs, home, owner })
    }

    /// Closes the connections to every hub idle for [`super::pool::IDLE_TIMEOUT`] or longer.
    pub fn close_stale(&self) {
        let now = std::time::Instant::now();
        for hub in &self.hubs {
            hub.idle.close_stale(now, hub.settings.command_timeout);
        }
    }

    /// The pod the copies belong to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The hub pods' host names.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hubs.iter().map(|h| h.settings.host.as_str())
    }

    /// Stores a shadow copy of `message` under `key` on the home hub, or on the next one that
    /// takes it; returns the host that holds it.
    pub async fn store(&self, envelope: &Envelope, key: &str, message: &[u8]) -> Result<String, ShadowError> {
        let mut envelope = envelope.clone();
        envelope.origin = Some(key.to_owned());
        envelope.shadow = Some(Box::new(self.owner.clone()));
        let rcpts: Vec<Recipient> = (0..envelope.recipients.len())
            .filter_map(|i| envelope.recipient(i))
            .collect();
        let mut why = Vec::new();
        for i in 0..self.hubs.len() {
            let hub = &self.hubs[(self.home + i) % self.hubs.len()];
            match hub.store(&envelope, &rcpts, message).await {
                Ok(()) => return Ok(hub.settings.host.clone()),
                Err(e) => why.push(format!("{}: {e}", hub.settings.host)),
            }
        }
        Err(ShadowError(why.join("; ")))
    }

    /// Releases `keys` on `host`. An unknown host (no longer configured) has nothing to do.
    pub async fn release(&self, host: &str, keys: &[String]) -> Result<usize, ShadowError> {
        let Some(hub) = self.hubs.iter().find(|h| h.settings.host == host) else {
            return Ok(0);
        };
        hub.release(keys).await
    }
}

impl Hub {
    async fn checkout(&self) -> Result<Opened, ShadowError> {
        let opened = match self.idle.take(&()) {
            Some(opened) => opened,
            None => client::open(&self.settings)
                .await
                .map_err(|f| ShadowError(f.result.diagnostic))?,
        };
        if !opened.offers.shadow {
            return Err(ShadowError(format!(
                "{} does not offer {}: shadow copies are not enabled on the hub",
                self.settings.host,
                handoff::SHADOW_KEYWORD
            )));
        }
        Ok(opened)
    }

    async fn store(
        &self,
        envelope: &Envelope,
        rcpts: &[Recipient],
        message: &[u8],
    ) -> Result<(), ShadowError> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(ShadowError("closed".into()));
        };
        let limit = self.settings.command_timeout;
        let mut opened = self.checkout().await?;
        let mut tx = client::transaction(&mut opened, limit, envelope, rcpts, message).await;
        if tx.stale {
            // The hub closed the idle connection: once more on a new one.
            opened = client::open(&self.settings)
                .await
                .map_err(|f| ShadowError(f.result.diagnostic))?;
            tx = client::transaction(&mut opened, limit, envelope, rcpts, message).await;
        }
        self.idle.give_back((), opened, tx.reusable);
        match tx.results.iter().find(|r| r.outcome != Outcome::Delivered) {
            None => Ok(()),
            Some(r) => Err(ShadowError(r.diagnostic.clone())),
        }
    }

    async fn release(&self, keys: &[String]) -> Result<usize, ShadowError> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(ShadowError("closed".into()));
        };
        let limit = self.settings.command_timeout;
        let mut opened = self.checkout().await?;
        let mut released = 0;
        for line in handoff::release_lines(keys.iter().map(String::as_str)) {
            match client::command(&mut opened, limit, &line).await {
                Ok(reply) => {
                    released += reply
                        .message()
                        .flat_map(str::split_ascii_whitespace)
                        .find_map(|t| t.parse::<usize>().ok())
                        .unwrap_or(0);
                }
                Err(r) => return Err(ShadowError(r.diagnostic)),
            }
        }
        self.idle.give_back((), opened, true);
        Ok(released)
    }
}

/// This pod, from `SIDECAR_POD_NAME` and `SIDECAR_POD_UID` (the webhook sets them from the
/// downward API); `None` when either is missing or not a valid value.
pub fn this_pod() -> Option<Owner> {
    let name = std::env::var(ENV_POD_NAME).ok()?;
    let uid = std::env::var(ENV_POD_UID).ok()?;
    Owner::parse(&format!("{uid},{name}"))
}

/// The shadow client of one config generation. Without the pod's identity or the hub's CA, the
/// sidecar cannot make copies; it says so loudly and accepts mail as before (a pod injected
/// before its Relay asked for replication needs a restart).
pub fn client_for(
    handoff: &config::Handoff,
    shadows: &config::ShadowCopies,
    hostname: &str,
) -> Option<Arc<ShadowClient>> {
    let Some(owner) = this_pod() else {
        tracing::error!(
            "handoff.shadows: {ENV_POD_NAME} and {ENV_POD_UID} are not set; this sidecar makes no shadow copies (a pod injected before the Relay asked for durability: replicated needs a restart)"
        );
        return None;
    };
    match ShadowClient::new(handoff, shadows, owner, hostname) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "handoff.shadows: cannot set up the hub connections; this sidecar makes no shadow copies");
            None
        }
    }
}
