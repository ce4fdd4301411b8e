//! Shadow copies (`durability: replicated`, docs/hub.md): a sidecar answers `250` only once a
//! hub of its Relay also holds the message, so that a lost node loses nothing. The sidecar side
//! ([`ShadowSink`], [`ShadowClient`], [`Ledger`]) stores and releases copies; the hub side
//! ([`owners`]) delivers the copies of pods that are gone.

mod client;
mod ledger;
pub mod owners;
mod sink;

pub use client::{ShadowClient, ShadowError};
pub use ledger::Ledger;
pub use sink::{ShadowSink, ShadowWriter};

use crate::{config, message::handoff::Owner};

use crate::config::settings::{ENV_POD_NAME as POD_NAME_ENV, ENV_POD_UID as POD_UID_ENV};

/// This pod, from the environment; `None` when either variable is missing or not a valid value.
pub fn this_pod() -> Option<Owner> {
    let name = std::env::var(POD_NAME_ENV).ok()?;
    let uid = std::env::var(POD_UID_ENV).ok()?;
    Owner::parse(&format!("{uid},{name}"))
}

/// The shadow client of one config generation. Without the pod's identity or the hub's CA, the
/// sidecar cannot make copies; it says so loudly and accepts mail as before (a pod injected
/// before its Relay asked for replication needs a restart).
pub fn client_for(
    handoff: &config::Handoff,
    shadows: &config::ShadowCopies,
    hostname: &str,
) -> Option<std::sync::Arc<ShadowClient>> {
    let Some(owner) = this_pod() else {
        tracing::error!(
            "handoff.shadows: {POD_NAME_ENV} and {POD_UID_ENV} are not set; this sidecar makes no shadow copies (a pod injected before the Relay asked for durability: replicated needs a restart)"
        );
        return None;
    };
    match ShadowClient::new(handoff, shadows, owner, hostname) {
        Ok(c) => Some(std::sync::Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "handoff.shadows: cannot set up the hub connections; this sidecar makes no shadow copies");
            None
        }
    }
}
