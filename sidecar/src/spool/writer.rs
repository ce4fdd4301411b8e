//! The segment writer: one thread owns the active segment file and commits in groups.
//! Writing and fsync are pipelined: the writer thread appends every batch at once and hands
//! durable requests to a sync thread, so Done records and new messages never queue behind an
//! fsync in progress; every durable request that arrives while an fsync runs shares the next one.

use super::segment_path;
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc,
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
/// They are in the page cache as soon as they are written, so a process crash (SIGKILL, OOM)
/// never loses them; only a kernel crash or power loss within this window can, and then the
/// message is delivered again (a duplicate, never a loss).
const LAZY_SYNC: Duration = Duration::from_millis(50);
/// No segment has this sequence number; marks "no fsync has failed".
const NO_SEGMENT: u64 = 0;

pub(super) struct Writer {
    dir: PathBuf,
    seg_limit: u64,
    active: Arc<AtomicU64>,
    file: Arc<File>,
    offset: u64,
    dir_dirty: bool,
    unsynced: bool,
    batch_size: prometheus::Histogram,
    /// Segment whose fsync failed (fsyncgate: its page cache can no longer be trusted).
    poisoned: Arc<AtomicU64>,
}

/// Durable requests of one written batch, waiting for the fsync that makes them stable.
struct Pending {
    seg: u64,
    file: Arc<File>,
    sync_dir: bool,
    replies: Vec<(oneshot::Sender<Written>, Written)>,
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
        let file = Arc::new(open_new(&dir, seq)?);
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
            poisoned: Arc::new(AtomicU64::new(NO_SEGMENT)),
        })
    }

    /// Starts segment `active + 1`; with `seal`, the current one is made durable first.
    fn rotate(&mut self, seal: bool) -> io::Result<()> {
        let next = self.active.load(Ordering::SeqCst) + 1;
        let file = open_new(&self.dir, next)?;
        // The sealed segment must be durable before anything in the new one is acknowledged.
        if seal {
            self.file.sync_data()?;
        }
        self.file = Arc::new(file);
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
        let (sync_tx, sync_rx) = std_mpsc::channel();
        let syncer = {
            let (dir, poisoned, batch_size) =
                (self.dir.clone(), self.poisoned.clone(), self.batch_size.clone());
            std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || sync_loop(&sync_rx, &dir, &poisoned, &batch_size))
        };
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(e) => return tracing::error!(error = %e, "spool sync thread cannot start"),
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
            if let Some(pending) = self.write_batch(&mut batch)
                && sync_tx.send(pending).is_err()
            {
                tracing::error!("spool sync thread is gone");
            }
        }
        drop(sync_tx);
        let _ = syncer.join();
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "spool fsync at shutdown failed");
        }
    }

    /// Appends the batch, answers non-durable requests at once (their bytes are in the page
    /// cache, which survives a process crash) and returns the durable ones for the sync thread.
    fn write_batch(&mut self, batch: &mut Vec<Op>) -> Option<Pending> {
        let active = self.active.load(Ordering::SeqCst);
        let poisoned = self.poisoned.load(Ordering::SeqCst) == active;
        // After a failed fsync nothing new is appended to that segment (its pages may be lost).
        let rotation = if poisoned {
            self.rotate(false)
        } else if self.offset >= self.seg_limit {
            self.rotate(true)
        } else {
            Ok(())
        };
        if let Err(e) = rotation {
            tracing::error!(error = %e, "spool segment rotation failed");
            reply_all(batch, Err(classify(&e)));
            return None;
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
        if let Err(e) = (&*self.file).write_all(&all) {
            tracing::error!(error = %e, "spool write failed");
            // Cut the torn tail so later records never follow garbage.
            let _ = self.file.set_len(start);
            reply_all(batch, Err(classify(&e)));
            return None;
        }
        self.offset += all.len() as u64;
        self.unsynced = true;
        let mut replies = Vec::new();
        for (op, locs) in batch.drain(..).zip(results) {
            let Some(reply) = op.reply else { continue };
            if op.durable {
                replies.push((reply, Ok((seg, locs))));
            } else {
                let _ = reply.send(Ok((seg, locs)));
            }
        }
        if replies.is_empty() {
            return None;
        }
        // The sync thread's fsync covers this write; the lazy flush is not needed for it.
        self.unsynced = false;
        let sync_dir = std::mem::take(&mut self.dir_dirty);
        Some(Pending {
            seg,
            file: self.file.clone(),
            sync_dir,
            replies,
        })
    }
}

/// The sync thread: one fsync for every batch written since the last one (group commit), then
/// the replies that waited for it.
fn sync_loop(
    rx: &std_mpsc::Receiver<Pending>,
    dir: &Path,
    poisoned: &AtomicU64,
    batch_size: &prometheus::Histogram,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let mut failed = None;
        // Batches of an older segment were made durable when it was sealed; syncing each distinct
        // file again is cheap and keeps this loop independent of rotation.
        let mut segs: Vec<(u64, &Arc<File>)> = group.iter().map(|p| (p.seg, &p.file)).collect();
        segs.dedup_by_key(|(seg, _)| *seg);
        for (seg, file) in segs {
            if poisoned.load(Ordering::SeqCst) == seg {
                failed = Some(io::Error::other("segment fsync failed earlier"));
            } else if let Err(e) = file.sync_data() {
                tracing::error!(segment = seg, error = %e, "spool fsync failed");
                poisoned.store(seg, Ordering::SeqCst);
                failed = Some(e);
            }
        }
        if failed.is_none()
            && group.iter().any(|p| p.sync_dir)
            && let Err(e) = File::open(dir).and_then(|d| d.sync_all())
        {
            tracing::error!(error = %e, "spool directory fsync failed");
            if let Some(last) = group.last() {
                poisoned.store(last.seg, Ordering::SeqCst);
            }
            failed = Some(e);
        }
        let durable: usize = group.iter().map(|p| p.replies.len()).sum();
        batch_size.observe(durable as f64);
        for p in group {
            for (reply, written) in p.replies {
                let _ = reply.send(match &failed {
                    Some(e) => Err(classify(e)),
                    None => written,
                });
            }
        }
    }
}

fn open_new(dir: &Path, seq: u64) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))
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
