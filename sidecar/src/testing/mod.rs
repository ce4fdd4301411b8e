//! Test doubles for in-process tests of our own scheduler and sessions; never in a release build
//! (compiled for `cfg(test)` and with the `testing` feature, which only the tests and fuzz targets
//! turn on). They never stand in for the end-to-end proofs, which use independent SMTP peers.

mod session;
mod sink;
mod transport;

pub use session::{CONFIG, Client, Harness, Server, config, reply_line_is_well_formed, split_received};
pub use sink::{MemorySink, MemoryWriter, Stored};
pub use transport::{Call, FakeTransport, by_local_part, by_local_part_ok};
