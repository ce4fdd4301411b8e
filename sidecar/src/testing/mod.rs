//! Test doubles for in-process tests of our own scheduler and sessions; never in a release build
//! (compiled for `cfg(test)` and with the `testing` feature, which only the tests and fuzz targets
//! turn on). They never stand in for the end-to-end proofs, which use independent SMTP peers.

mod session;
mod sink;
mod transport;

pub use session::{CONFIG, Client, Harness, Server, config, reply_line_is_well_formed, split_received};
pub use sink::{MemorySink, MemoryWriter, Stored};
pub use transport::{Call, FakeTransport, by_local_part, by_local_part_ok};

/// An envelope from `app@example.com` to `rcpts`, received at `received_at` (Unix seconds),
/// without SMTPUTF8 or DSN parameters.
pub fn envelope(rcpts: &[&str], received_at: u64) -> crate::message::Envelope {
    crate::message::Envelope {
        sender: "app@example.com".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        received_at,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    }
}
