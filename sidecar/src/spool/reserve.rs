//! Disk space held back for delivery records.
//!
//! Once a message is delivered, its `Done` record is what keeps a restart from sending it again.
//! If the disk is full those records cannot be written, and a crash then re-sends everything
//! delivered since the disk filled. So the spool keeps a file of zeros (`reserve`, written for
//! real: a sparse file would hold no blocks) and gives it up the moment a delivery record does not
//! fit. From then on new mail gets `452 4.3.1` (the writer refuses durable requests) until the
//! reserve can be written again, which is tried at most once a second. Should even the reserve
//! run out, `Spool::recording()` turns false and the queue runner starts no delivery it could
//! not record: a full disk delays mail, it never duplicates it.

use std::{
    fs::File,
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// How often a released reserve is written again while the disk is full.
pub const RETRY: Duration = Duration::from_secs(1);
/// The reserve's file name in the spool directory (never a segment: those end in `.seg`).
pub const FILE: &str = "reserve";

/// The reserve and what depends on it.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: bool,
    last_try: Option<Instant>,
    /// False while delivery records cannot be written at all; read by the queue runner.
    recording: Arc<AtomicBool>,
    /// `spool_disk_full`: 0 with the reserve in place, 1 while it holds delivery records (new
    /// mail refused), 2 once it is spent too (deliveries paused).
    disk_full: prometheus::IntGauge,
}

impl Reserve {
    /// The reserve of `bytes` in `dir`, written now if the disk has room (else new mail waits
    /// until it has).
    pub fn new(
        dir: PathBuf,
        bytes: u64,
        recording: Arc<AtomicBool>,
        disk_full: prometheus::IntGauge,
    ) -> Self {
        let mut r = Self {
            path: dir.join(FILE),
            bytes,
            held: false,
            last_try: None,
            recording,
            disk_full,
        };
        r.restore();
        r
    }

    /// Whether the reserve is in place (new mail may be accepted).
    pub fn held(&self) -> bool {
        self.held
    }

    /// Writes the reserve again if it is given up, at most once per [`RETRY`].
    pub fn retry(&mut self) {
        if !self.held && self.last_try.is_none_or(|t| t.elapsed() >= RETRY) {
            self.restore();
        }
    }

    /// Gives the reserve's space to delivery records; false if it was already given up.
    pub fn release(&mut self) -> bool {
        if !self.held {
            return false;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::error!(error = %e, "cannot delete the spool reserve");
            return false;
        }
        self.held = false;
        self.disk_full.set(1);
        tracing::warn!(
            bytes = self.bytes,
            "spool disk full: the reserve now holds delivery records, and new mail gets 452 until space returns"
        );
        true
    }

    /// The outcome of writing delivery records: a failure with the reserve already given up
    /// stops new deliveries until a record is written again.
    pub fn recorded(&self, ok: bool) {
        self.disk_full.set(match (ok, self.held) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        });
        if self.recording.swap(ok, Ordering::SeqCst) != ok {
            if ok {
                tracing::info!("spool records are written again; delivery resumes");
            } else {
                tracing::error!(
                    "spool disk full and its reserve spent: delivery pauses until space returns, so that no delivered message is sent twice"
                );
            }
        }
    }

    fn restore(&mut self) {
        self.last_try = Some(Instant::now());
        match write_zeros(&self.path, self.bytes) {
            Ok(()) => {
                if self.disk_full.get() != 0 {
                    tracing::info!("spool reserve restored; new mail is accepted again");
                }
                self.held = true;
                self.recorded(true);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                self.disk_full.set(self.disk_full.get().max(1));
                tracing::debug!(error = %e, "spool reserve cannot be written yet");
            }
        }
    }
}

/// Writes `bytes` zeros to `path` and syncs them, so that the blocks are allocated.
fn write_zeros(path: &std::path::Path, bytes: u64) -> io::Result<()> {
    const BLOCK: usize = 64 << 10;
    let zeros = [0u8; BLOCK];
    let mut f = File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}
