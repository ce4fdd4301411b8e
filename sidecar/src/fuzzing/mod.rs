//! Entry points for the fuzz targets in `fuzz/` and their regression tests: each takes raw bytes,
//! drives one untrusted-input surface (SMTP session, config file, spool segments) and panics only
//! when an invariant that must hold for every input is broken. Not a stable API.

mod session;
mod spool;

pub use session::smtp_session;
pub use spool::spool_replay;

use crate::config::Config;
use std::path::Path;

/// Parses and validates `text` as a `SidecarConfig` like `--check-config` does. A document that
/// passes must validate clean, survive a serialize/parse round trip unchanged; one that fails
/// must name the field (non-empty problem list with field paths).
pub fn config_parse(text: &str) {
    let path = Path::new("fuzz.yaml");
    match Config::parse(path, text) {
        Ok(config) => {
            assert!(config.validate().is_empty(), "accepted config has problems");
            let yaml = serde_yaml_ng::to_string(&config).expect("a parsed config serializes");
            let again = Config::parse(path, &yaml).unwrap_or_else(|e| {
                panic!("accepted config does not parse back: {e}\n--- serialized ---\n{yaml}")
            });
            assert_eq!(again, config, "config changed in a serialize/parse round trip");
        }
        Err(crate::config::Error::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "invalid config without a problem");
            for p in &problems {
                assert!(!p.field.is_empty(), "problem without a field: {p}");
            }
        }
        Err(e) => {
            // Parse errors carry serde's path ("." for the document); the message is what users read.
            let _ = e.to_string();
        }
    }
}

thread_local! {
    /// One runtime per fuzzing thread: building one per input would dominate the run time.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    /// Registering every metric per input would cost more than the code under test.
    static METRICS: crate::metrics::Metrics = crate::metrics::Metrics::new();
}

fn metrics() -> crate::metrics::Metrics {
    METRICS.with(Clone::clone)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}
