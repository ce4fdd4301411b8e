//! Shadow copies (`durability: replicated`, docs/hub.md): a sidecar answers `250` only once a
//! hub of its Relay also holds the message, so that a lost node loses nothing. The sidecar side
//! ([`ShadowSink`], [`Ledger`]; the connections are [`crate::outbound::shadow`]) stores and
//! releases copies; the hub side ([`owners`]) delivers the copies of pods that are gone. Wiring
//! level: it uses the spool, the queue's delivery generation and the outbound connections.

mod ledger;
pub mod owners;
mod sink;

pub use crate::outbound::shadow::{ShadowClient, ShadowError};
pub use ledger::Ledger;
pub use sink::{ShadowSink, ShadowWriter};
