//! Queue control from outside the process: the queue API server (`server`, on loopback) and
//! the `mailroom-sidecar queue ...` / `quarantine ...` subcommands that call it (`cli`, over
//! `client`). The binary is its own client, so `kubectl exec` works in the scratch image.

pub mod cli;
pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// The request header that names who asks; required for every change, and logged.
pub const ACTOR_HEADER: &str = "x-mailroom-actor";

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}
