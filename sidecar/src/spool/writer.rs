//! The segment writer: one thread owns the active segment file and commits in groups.
//! Durable requests (new messages) that arrive while an fsync runs are held and written together
//! just before the next fsync, so every one of them shares it and none sits written but
//! unacknowledged for longer than one fsync. Non-durable records (Done, RcptDone, Signature) are
//! written at once, even while an fsync runs on the sync thread: a written record survives a
//! process crash, and the sooner a Done record is written after the upstream's `250`, the fewer
//! duplicates a crash causes (RFC 5321 6.1).

use super::{reserve::Reserve, segment_path};
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
    /// Space held back for delivery records when the disk fills.
    reserve: Reserve,
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
        reserve: Reserve,
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
            reserve,
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
        let (synced_tx, mut synced_rx) = mpsc::unbounded_channel();
        let syncer = {
            let (dir, poisoned, batch_size) =
                (self.dir.clone(), self.poisoned.clone(), self.batch_size.clone());
            std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || sync_loop(&sync_rx, &synced_tx, &dir, &poisoned, &batch_size))
        };
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(e) => return tracing::error!(error = %e, "spool sync thread cannot start"),
        };
        let (mut held, mut lazy) = (Vec::new(), Vec::new());
        let (mut open, mut syncing) = (true, false);
        while open || syncing || !held.is_empty() {
            let event = rt.block_on(async {
                tokio::select! {
                    biased;
                    r = synced_rx.recv(), if syncing => r.map_or(Event::SyncerGone, |()| Event::Synced),
                    op = rx.recv(), if open => op.map_or(Event::Closed, Event::Op),
                    () = tokio::time::sleep(LAZY_SYNC), if self.unsynced && !syncing => Event::Quiet,
                    () = tokio::time::sleep(super::reserve::RETRY), if !self.reserve.held() => Event::DiskFull,
                    else => Event::Closed,
                }
            });
            match event {
                Event::Op(first) => {
                    gather(first, &mut rx, &mut held, &mut lazy);
                    // Non-durable records may overtake durable ones held for the next group. They
                    // never concern the same message, except a Done racing a compaction's
                    // relocation; replay then finds the relocated copy live and delivers it
                    // again: a duplicate, as that race could already cause in a narrower window.
                    self.write_lazy(&mut lazy);
                }
                Event::Synced => syncing = false,
                Event::DiskFull => self.reserve.retry(),
                Event::Quiet => {
                    if let Err(e) = self.sync() {
                        tracing::error!(error = %e, "spool fsync failed");
                    }
                }
                // Only a panic ends the sync thread early; its group's callers see an error, and
                // so will every later group (the send below fails).
                Event::SyncerGone => {
                    tracing::error!("spool sync thread is gone");
                    syncing = false;
                }
                Event::Closed => open = false,
            }
            if !syncing && let Some(pending) = self.write_group(&mut held) {
                syncing = sync_tx.send(pending).is_ok();
            }
        }
        drop(sync_tx);
        let _ = syncer.join();
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "spool fsync at shutdown failed");
        }
    }

    /// Appends non-durable records and answers them at once. When they do not fit, the
    /// reserve makes room for them: they are what keeps delivered mail from going out again.
    fn write_lazy(&mut self, batch: &mut Vec<Op>) {
        if batch.is_empty() {
            return;
        }
        let mut written = self.append(batch);
        if written == Err(WriteError::DiskFull) && self.reserve.release() {
            written = self.append(batch);
        }
        match written {
            Ok((seg, locs)) => {
                self.reserve.recorded(true);
                for (op, locs) in batch.drain(..).zip(locs) {
                    if let Some(reply) = op.reply {
                        let _ = reply.send(Ok((seg, locs)));
                    }
                }
            }
            Err(e) => {
                self.reserve.recorded(e != WriteError::DiskFull);
                reply_all(batch, Err(e));
            }
        }
    }

    /// Appends the held durable requests as one group for the sync thread to make stable.
    fn write_group(&mut self, held: &mut Vec<Op>) -> Option<Pending> {
        if held.is_empty() {
            return None;
        }
        // New mail must not take the space that delivery records will need.
        if !self.reserve.admits_new_mail() {
            reply_all(held, Err(WriteError::DiskFull));
            return None;
        }
        let (seg, locs) = match self.append(held) {
            Ok(written) => written,
            Err(e) => {
                reply_all(held, Err(e));
                return None;
            }
        };
        let replies = held
            .drain(..)
            .zip(locs)
            .filter_map(|(op, locs)| Some((op.reply?, Ok((seg, locs)))))
            .collect();
        // The group's fsync covers everything written before it, lazy records included.
        self.unsynced = false;
        let sync_dir = std::mem::take(&mut self.dir_dirty);
        Some(Pending {
            seg,
            file: self.file.clone(),
            sync_dir,
            replies,
        })
    }

    /// Writes `batch` in one `write` at the end of the active segment (rotating first when it is
    /// full or its fsync failed) and returns where each requested payload landed. On failure
    /// nothing of `batch` is left in the segment and nobody is answered yet.
    fn append(&mut self, batch: &[Op]) -> Result<(u64, Vec<Vec<Loc>>), WriteError> {
        let active = self.active.load(Ordering::SeqCst);
        // After a failed fsync nothing new is appended to that segment (its pages may be lost).
        let rotation = if self.poisoned.load(Ordering::SeqCst) == active {
            self.rotate(false)
        } else if self.offset >= self.seg_limit {
            self.rotate(true)
        } else {
            Ok(())
        };
        if let Err(e) = rotation {
            tracing::error!(error = %e, "spool segment rotation failed");
            return Err(classify(&e));
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
            return Err(classify(&e));
        }
        self.offset += all.len() as u64;
        self.unsynced = true;
        Ok((seg, results))
    }
}

/// Sorts `first` and whatever else is queued (up to `MAX_BATCH_BYTES`) into durable requests,
/// held for the next group, and non-durable ones, written at once.
fn gather(first: Op, rx: &mut mpsc::Receiver<Op>, held: &mut Vec<Op>, lazy: &mut Vec<Op>) {
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(op) = next {
        bytes += op.buf.len();
        if op.durable {
            held.push(op);
        } else {
            lazy.push(op);
        }
        next = if bytes < MAX_BATCH_BYTES {
            rx.try_recv().ok()
        } else {
            None
        };
    }
}

/// What woke the writer.
enum Event {
    /// A request arrived.
    Op(Op),
    /// The sync thread made the last group stable and answered it.
    Synced,
    /// The sync thread ended (it only does so by panicking).
    SyncerGone,
    /// No request for `LAZY_SYNC` with non-durable records unsynced.
    Quiet,
    /// No request for a while with the reserve given up: time to try writing it again.
    DiskFull,
    /// Every sender is gone.
    Closed,
}

/// The sync thread: one fsync per group of durable requests, then their replies, then a note to
/// the writer that the next group may go.
fn sync_loop(
    rx: &std_mpsc::Receiver<Pending>,
    synced: &mpsc::UnboundedSender<()>,
    dir: &Path,
    poisoned: &AtomicU64,
    batch_size: &prometheus::Histogram,
) {
    while let Ok(p) = rx.recv() {
        let result = if poisoned.load(Ordering::SeqCst) == p.seg {
            Err(io::Error::other("segment fsync failed earlier"))
        } else {
            p.file.sync_data().and_then(|()| {
                if p.sync_dir {
                    File::open(dir)?.sync_all()
                } else {
                    Ok(())
                }
            })
        };
        if let Err(e) = &result {
            tracing::error!(segment = p.seg, error = %e, "spool fsync failed");
            poisoned.store(p.seg, Ordering::SeqCst);
        }
        batch_size.observe(p.replies.len() as f64);
        for (reply, written) in p.replies {
            let _ = reply.send(match &result {
                Err(e) => Err(classify(e)),
                Ok(()) => written,
            });
        }
        let _ = synced.send(());
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
