//! [`CaptureTransport`]: instead of sending, keeps each message as `<name>.eml` (the bytes
//! unchanged) plus `<name>.json` (the envelope) in a directory, written atomically.

use super::{Outcome, RcptResult, ReplyClass, Route, Transport};
use crate::message::{DsnRequest, Envelope, Recipient};
use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Writes messages into a directory (config `delivery.capture`); every recipient is delivered.
#[derive(Debug)]
pub struct CaptureTransport {
    dir: PathBuf,
    counter: AtomicU64,
}

/// The sidecar file written next to each `.eml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapturedEnvelope {
    /// MAIL FROM; empty for the null sender.
    pub mail_from: String,
    /// The recipients of this delivery.
    pub rcpt_to: Vec<String>,
    /// Whether the client declared SMTPUTF8.
    pub smtputf8: bool,
    /// When the sidecar accepted the message (seconds since the epoch).
    pub received_at: u64,
    /// RFC 3461 parameters as the spool keeps them (`ret`, `envid` as received, and `rcpts`:
    /// each recipient's NOTIFY and ORCPT, parallel to `rcpt_to`); absent when none were given.
    #[serde(default, skip_serializing_if = "DsnRequest::is_empty")]
    pub dsn: DsnRequest,
}

// === impl CaptureTransport ===

impl CaptureTransport {
    /// Captures into `dir`, which is created if missing (config `delivery.capture.dir`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            counter: AtomicU64::new(0),
        }
    }

    /// The capture directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A name no other capture in this directory has: time, process and a counter.
    fn unique_name(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:x}-{:x}-{n:x}", std::process::id())
    }
}

impl Transport for CaptureTransport {
    fn route(&self) -> Route {
        Route::Capture
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        let name = self.unique_name();
        let dsn = DsnRequest {
            ret: envelope.dsn.ret,
            envid: envelope.dsn.envid.clone(),
            rcpts: if rcpts.iter().all(|r| r.dsn.is_empty()) {
                Vec::new()
            } else {
                rcpts.iter().map(|r| r.dsn.clone()).collect()
            },
        };
        let meta = CapturedEnvelope {
            mail_from: envelope.sender.clone(),
            rcpt_to: rcpts.iter().map(|r| r.address.clone()).collect(),
            smtputf8: envelope.smtputf8,
            received_at: envelope.received_at,
            dsn,
        };
        let (dir, message) = (self.dir.clone(), message.to_vec());
        let written = tokio::task::spawn_blocking(move || write_capture(&dir, &name, &meta, &message)).await;
        let result = match written {
            Ok(Ok(name)) => RcptResult {
                outcome: Outcome::Delivered,
                class: ReplyClass::Ok,
                diagnostic: format!("250 2.0.0 captured as {name}"),
                next_hop_dsn: false,
                remote: None,
            },
            Ok(Err(e)) => failed(&format!("cannot write capture file: {e}")),
            Err(_) => failed("capture writer stopped"),
        };
        vec![result; rcpts.len()]
    }
}

fn failed(diagnostic: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Connection,
        diagnostic: diagnostic.into(),
        next_hop_dsn: false,
        remote: None,
    }
}

/// The `.json` goes first, so whoever sees an `.eml` also finds its envelope.
fn write_capture(dir: &Path, name: &str, meta: &CapturedEnvelope, message: &[u8]) -> io::Result<String> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    write_atomic(dir, &format!("{name}.json"), &json)?;
    let eml = format!("{name}.eml");
    write_atomic(dir, &eml, message)?;
    // The renames are durable only once the directory itself is synced.
    File::open(dir)?.sync_all()?;
    Ok(eml)
}

/// Temp file, fsync, rename: readers never see a partial file.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))
}
