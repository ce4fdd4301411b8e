//! The segment writer: one thread owns the active segment file and commits in groups.
//! Every durable request that arrives while an fsync runs shares the next fsync, so concurrent
//! sessions pay for one flush per batch instead of one each.

use super::segment_path;
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// Where a payload landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment sequence number.
    pub seg: u64,
    /// Offset of the payload within the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// ENOSPC or EDQUOT.
    DiskFull,
    /// Any other I/O error.
    Io,
}

/// What the writer answers: the segment written to and where each requested payload landed.
pub type Written = Result<(u64, Vec<Loc>), WriteError>;

/// One request: encoded records, the payloads whose locations the caller wants, and whether the
/// reply must wait for fsync.
#[derive(Debug)]
pub struct Op {
    /// Encoded records.
    pub buf: Vec<u8>,
    /// `(offset within buf, len)` of payloads to locate.
    pub payloads: Vec<(usize, u32)>,
    /// Reply only after the bytes are on stable storage.
    pub durable: bool,
    /// Where to send the result.
    pub reply: Option<oneshot::Sender<Written>>,
}

/// Most bytes gathered into one write.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Non-durable records (Done, RcptDone) are flushed after this much quiet time at the latest.
const LAZY_SYNC: Duration = Duration::from_millis(50);

pub(super) struct Writer {
    pub dir: PathBuf,
    pub seg_limit: u64,
    pub active: Arc<AtomicU64>,
    pub file: File,
    pub offset: u64,
    pub dir_dirty: bool,
    pub unsynced: bool,
    pub batch_size: prometheus::Histogram,
}

impl Writer {
    /// Creates a new segment `seq` and makes it the active one.
    pub fn create(
        dir: PathBuf,
        seq: u64,
        seg_limit: u64,
        active: Arc<AtomicU64>,
        batch_size: prometheus::Histogram,
    ) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&dir, seq))?;
        active.store(seq, Ordering::SeqCst);
        Ok(Self {
            dir,
            seg_limit,
            active,
            file,
            offset: 0,
            dir_dirty: true,
            unsynced: false,
            batch_size,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.active.load(Ordering::SeqCst) + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, next))?;
        // The sealed segment must be durable before anything in the new one is acknowledged.
        self.file.sync_data()?;
        self.file = file;
        self.offset = 0;
        self.dir_dirty = true;
        self.active.store(next, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Runs until every sender is gone, then flushes.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "spool writer cannot start"),
        };
        let mut batch = Vec::new();
        loop {
            let first = if self.unsynced {
                match recv_timeout(&rt, &mut rx, LAZY_SYNC) {
                    Recv::Op(op) => op,
                    Recv::Timeout => {
                        if let Err(e) = self.sync() {
                            tracing::error!(error = %e, "spool fsync failed");
                        }
                        continue;
                    }
                    Recv::Closed => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(op) => op,
                    None => break,
                }
            };
            let mut bytes = first.buf.len();
            batch.push(first);
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += op.buf.len();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch);
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "spool fsync at shutdown failed");
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Op>) {
        if self.offset >= self.seg_limit
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "spool segment rotation failed");
            return reply_all(batch, Err(classify(&e)));
        }
        let seg = self.active.load(Ordering::SeqCst);
        let start = self.offset;
        let mut all = Vec::with_capacity(batch.iter().map(|op| op.buf.len()).sum());
        let mut results = Vec::with_capacity(batch.len());
        for op in batch.iter() {
            let base = start + all.len() as u64;
            let locs = op
                .payloads
                .iter()
                .map(|&(at, len)| Loc {
                    seg,
                    offset: base + at as u64,
                    len,
                })
                .collect();
            results.push(locs);
            all.extend_from_slice(&op.buf);
        }
        if let Err(e) = self.file.write_all(&all) {
            tracing::error!(error = %e, "spool write failed");
            // Cut the torn tail so later records never follow garbage.
            let _ = self.file.set_len(start);
            return reply_all(batch, Err(classify(&e)));
        }
        self.offset += all.len() as u64;
        self.unsynced = true;
        let durable = batch.iter().filter(|op| op.durable).count();
        if durable > 0 {
            self.batch_size.observe(durable as f64);
        }
        if durable > 0
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "spool fsync failed");
            // After a failed fsync the page cache can no longer be trusted (fsyncgate): start a
            // fresh segment so nothing new is appended after possibly lost pages.
            let _ = self.rotate();
            return reply_all(batch, Err(classify(&e)));
        }
        for (op, locs) in batch.drain(..).zip(results) {
            if let Some(reply) = op.reply {
                let _ = reply.send(Ok((seg, locs)));
            }
        }
    }
}

fn reply_all(batch: &mut Vec<Op>, result: Written) {
    for op in batch.drain(..) {
        if let Some(reply) = op.reply {
            let _ = reply.send(result.clone());
        }
    }
}

fn classify(e: &io::Error) -> WriteError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WriteError::DiskFull,
        _ => WriteError::Io,
    }
}

enum Recv {
    Op(Op),
    Timeout,
    Closed,
}

/// `recv` with a timeout, for the lazy flush of non-durable records. The writer thread is not a
/// runtime worker, so it drives the wait on a tiny runtime of its own.
fn recv_timeout(rt: &tokio::runtime::Runtime, rx: &mut mpsc::Receiver<Op>, timeout: Duration) -> Recv {
    match rt.block_on(async { tokio::time::timeout(timeout, rx.recv()).await }) {
        Ok(Some(op)) => Recv::Op(op),
        Ok(None) => Recv::Closed,
        Err(_) => Recv::Timeout,
    }
}
