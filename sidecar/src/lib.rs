//! mailroom sidecar: a local SMTP relay that spools mail durably, DKIM-signs it and delivers it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod app;
pub mod control;
pub mod delivery_runtime;
pub mod dkim;
pub mod dsn;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod queue;
pub mod rate;
pub mod reload;
pub mod shadow;
pub mod shutdown;
pub mod spool;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

// The contract with the operator lives in its own crate; these keep its paths short here.
pub use mailroom_config as config;
pub use mailroom_config::address;
pub use mailroom_config::settings;
