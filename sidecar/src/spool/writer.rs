//! The segment log: callers append their records themselves, and one sync thread commits in
//! groups.
//!
//! Appending is a `write` into the page cache under a short lock, done on the caller's task:
//! handing every record to a writer thread and back cost two thread wake-ups per record, which
//! on a small machine was most of a message's cost. A durable request (a new message) leaves its
//! reply with the sync thread, which makes everything written so far stable with one fsync and
//! answers every request of the group. Durable requests that arrive while an fsync runs are held
//! and written by the sync thread just before the next one, so that every one of them shares it
//! and none sits written but unacknowledged for longer than one fsync. Non-durable records
//! (Done, RcptDone, Signature) are answered at once: a written record survives a process crash,
//! and the sooner a Done record is written after the upstream's `250`, the fewer duplicates a
//! crash causes (RFC 5321 6.1). The sync thread makes them stable within [`LAZY_SYNC`].

use super::{reserve::Reserve, segment_path};
use crate::sync::lock;
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

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

/// What the log answers: the segment written to and where each requested payload landed.
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

/// Non-durable records (Done, RcptDone) are made stable this long after the first of them at
/// the latest. They are in the page cache as soon as they are written, so a process crash (SIGKILL,
/// OOM) never loses them; only a kernel crash or power loss within this window can, and then the
/// message is delivered again (a duplicate, never a loss).
pub(super) const LAZY_SYNC: Duration = Duration::from_millis(50);
/// No segment has this sequence number; marks "no fsync has failed".
const NO_SEGMENT: u64 = 0;
/// Segments grow in steps of this much space, written as zeros ahead of the records, so that an
/// fdatasync after an append writes the data and not also the inode for the new file size or an
/// extent conversion: on ext4 that is one device write per commit instead of two or three. Small steps, because allocated space counts
/// against a pod's ephemeral-storage limit.
pub(super) const ALLOCATE_STEP: u64 = 256 << 10;
/// Writes larger than this leave the async worker to other tasks while they run
/// (`block_in_place`): a large write may wait for the page cache's writeback.
const LARGE_WRITE: usize = 64 << 10;

/// Writes zeros to `file` over `[from, to)`.
fn write_zeros_at(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    // In .bss: reading it touches the kernel's shared zero page, not resident memory of ours.
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Handle to the log; dropping it ends the sync thread after a last fsync.
#[derive(Debug)]
pub(super) struct Log {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The sync thread waits here for work.
    work: Condvar,
    batch_size: prometheus::Histogram,
    fsync_duration: prometheus::Histogram,
}

#[derive(Debug)]
struct State {
    dir: PathBuf,
    seg_limit: u64,
    active: Arc<AtomicU64>,
    file: Arc<File>,
    /// Where the next record goes in `file`.
    offset: u64,
    /// Bytes of `file` allocated ahead of `offset` (zeros until written; replay stops at them).
    allocated: u64,
    /// Segments written since the last fsync began (the active one, and a sealed one whose
    /// records are not yet stable).
    dirty: Vec<(u64, Arc<File>)>,
    /// A new segment exists that the directory's fsync has not covered.
    dir_dirty: bool,
    /// When the oldest non-durable record not yet covered by an fsync was written.
    lazy_since: Option<Instant>,
    /// Durable requests written and waiting for the next fsync.
    waiting: Vec<(oneshot::Sender<Written>, Written)>,
    /// Durable requests that arrived during an fsync, written just before the next one.
    held: Vec<Op>,
    /// An fsync is running.
    syncing: bool,
    /// Segment whose fsync failed (fsyncgate: its page cache can no longer be trusted).
    poisoned: u64,
    /// Space held back for delivery records when the disk fills.
    reserve: Reserve,
    /// The sync thread is asleep on `work`.
    idle: bool,
    /// Every handle is gone: sync what is left and stop.
    closed: bool,
}

impl Log {
    /// Creates segment `seq`, makes it the active one, and starts the sync thread.
    pub fn start(
        dir: PathBuf,
        seq: u64,
        seg_limit: u64,
        active: Arc<AtomicU64>,
        (batch_size, fsync_duration): (prometheus::Histogram, prometheus::Histogram),
        reserve: Reserve,
    ) -> io::Result<(Self, JoinHandle<()>)> {
        let file = Arc::new(open_new(&dir, seq)?);
        active.store(seq, Ordering::SeqCst);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                dir,
                seg_limit,
                active,
                file,
                offset: 0,
                allocated: 0,
                dirty: Vec::new(),
                dir_dirty: true,
                lazy_since: None,
                waiting: Vec::new(),
                held: Vec::new(),
                syncing: false,
                poisoned: NO_SEGMENT,
                reserve,
                idle: false,
                closed: false,
            }),
            work: Condvar::new(),
            batch_size,
            fsync_duration,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || shared.sync_loop())?
        };
        Ok((Self { shared }, thread))
    }

    /// Writes `op` and answers it: a non-durable request at once, a durable one once the next
    /// fsync has made it stable.
    pub fn submit(&self, op: Op) {
        if op.buf.len() > LARGE_WRITE
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            tokio::task::block_in_place(|| self.write(op));
        } else {
            self.write(op);
        }
    }

    fn write(&self, op: Op) {
        let mut st = lock(&self.shared.state);
        if st.closed {
            if let Some(reply) = op.reply {
                let _ = reply.send(Err(WriteError::Io));
            }
            return;
        }
        if op.durable {
            if st.syncing {
                // Written by the sync thread just before the next fsync: a Commit record in the
                // page cache is a message a crash replays, and its client, which had no `250`,
                // sends it again. Written now, it would wait there for two fsyncs, not one
                // (docs/reliability.md measured the duplicates that cost).
                st.held.push(op);
            } else {
                st.write_durable(op);
                self.wake(&mut st);
            }
            return;
        }
        // When a delivery record does not fit, the reserve makes room for it: it is what keeps
        // delivered mail from going out again.
        let mut written = st.append(&op.buf, &op.payloads);
        if written == Err(WriteError::DiskFull) && st.reserve.release() {
            written = st.append(&op.buf, &op.payloads);
            // The sync thread writes the reserve back once there is room again.
            self.wake(&mut st);
        }
        st.reserve.recorded(written != Err(WriteError::DiskFull));
        if written.is_ok() && st.lazy_since.is_none() {
            st.lazy_since = Some(Instant::now());
            self.wake(&mut st);
        }
        drop(st);
        if let Some(reply) = op.reply {
            let _ = reply.send(written);
        }
    }

    fn wake(&self, st: &mut MutexGuard<'_, State>) {
        if st.idle {
            st.idle = false;
            self.shared.work.notify_one();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        st.closed = true;
        st.idle = false;
        self.shared.work.notify_one();
    }
}

impl State {
    /// Writes a durable request; its reply waits for the next fsync.
    fn write_durable(&mut self, op: Op) {
        // New mail must not take the space that delivery records will need.
        let written = if self.reserve.held() {
            self.append(&op.buf, &op.payloads)
        } else {
            Err(WriteError::DiskFull)
        };
        let Some(reply) = op.reply else { return };
        match written {
            Ok(w) => self.waiting.push((reply, Ok(w))),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Starts segment `active + 1`. The sealed one stays in `dirty` until an fsync covers it,
    /// and nothing in the new one is acknowledged before that fsync.
    fn rotate(&mut self) -> io::Result<()> {
        let next = self.active.load(Ordering::SeqCst) + 1;
        let file = open_new(&self.dir, next)?;
        self.file = Arc::new(file);
        self.offset = 0;
        self.allocated = 0;
        self.dir_dirty = true;
        self.active.store(next, Ordering::SeqCst);
        Ok(())
    }

    /// Writes `buf` in one `write` at the end of the active segment (rotating first when it is
    /// full or its fsync failed) and returns where each requested payload landed. On failure
    /// nothing of `buf` is left in the segment.
    fn append(&mut self, buf: &[u8], payloads: &[(usize, u32)]) -> Written {
        let active = self.active.load(Ordering::SeqCst);
        // After a failed fsync nothing new is appended to that segment (its pages may be lost).
        if (self.poisoned == active || self.offset >= self.seg_limit)
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "spool segment rotation failed");
            return Err(classify(&e));
        }
        let seg = self.active.load(Ordering::SeqCst);
        let start = self.offset;
        let end = start + buf.len() as u64;
        if end > self.allocated {
            // Zeros written, not `fallocate`d: ext4 keeps fallocated blocks as unwritten extents,
            // and the first write into one converts it, a metadata change that the next
            // fdatasync must write too (without a journal, the extent block and the inode). On
            // blocks already written an fdatasync writes the data alone. Only the part the
            // record itself does not cover is zeroed. Without room the record extends the file.
            let target = self.allocated + (end - self.allocated).max(ALLOCATE_STEP);
            self.allocated = if write_zeros_at(&self.file, end.max(self.allocated), target).is_ok() {
                target
            } else {
                self.allocated.min(start)
            };
        }
        if let Err(e) = self.file.write_all_at(buf, start) {
            tracing::error!(error = %e, "spool write failed");
            // Cut the torn tail so later records never follow garbage.
            let _ = self.file.set_len(start);
            self.allocated = self.allocated.min(start);
            return Err(classify(&e));
        }
        self.offset = end;
        if !self.dirty.iter().any(|(s, _)| *s == seg) {
            self.dirty.push((seg, self.file.clone()));
        }
        let locs = payloads
            .iter()
            .map(|&(at, len)| Loc {
                seg,
                offset: start + at as u64,
                len,
            })
            .collect();
        Ok((seg, locs))
    }

    /// Whether the sync thread has something to do now, and else how long it may sleep.
    fn due(&mut self, now: Instant) -> Result<(), Option<Duration>> {
        if !self.waiting.is_empty() || !self.held.is_empty() || self.closed {
            return Ok(());
        }
        let lazy = self
            .lazy_since
            .map(|t| (t + LAZY_SYNC).saturating_duration_since(now));
        if lazy == Some(Duration::ZERO) {
            return Ok(());
        }
        if !self.reserve.held() {
            self.reserve.retry();
        }
        let reserve = (!self.reserve.held()).then_some(super::reserve::RETRY);
        Err(match (lazy, reserve) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

impl Shared {
    /// The sync thread: one fsync per group of durable requests (and within [`LAZY_SYNC`] of a
    /// non-durable one), then the group's replies.
    fn sync_loop(&self) {
        loop {
            let mut st = lock(&self.state);
            loop {
                match st.due(Instant::now()) {
                    Ok(()) => break,
                    Err(sleep) => {
                        st.idle = true;
                        st = match sleep {
                            Some(d) => match self.work.wait_timeout(st, d) {
                                Ok((g, _)) => g,
                                Err(poisoned) => poisoned.into_inner().0,
                            },
                            None => self
                                .work
                                .wait(st)
                                .unwrap_or_else(std::sync::PoisonError::into_inner),
                        };
                        st.idle = false;
                    }
                }
            }
            for op in std::mem::take(&mut st.held) {
                st.write_durable(op);
            }
            let waiting = std::mem::take(&mut st.waiting);
            let dirty = std::mem::take(&mut st.dirty);
            st.syncing = true;
            // Cloned only when a new segment's name must be made durable.
            let dir = std::mem::take(&mut st.dir_dirty).then(|| st.dir.clone());
            st.lazy_since = None;
            let (poisoned, closed) = (st.poisoned, st.closed);
            drop(st);
            let started = Instant::now();
            let result = sync(&dirty, dir.as_deref(), poisoned);
            if !dirty.is_empty() {
                self.fsync_duration.observe(started.elapsed().as_secs_f64());
            }
            {
                let mut st = lock(&self.state);
                st.syncing = false;
                if let Err((seg, e)) = &result {
                    tracing::error!(segment = seg, error = %e, "spool fsync failed");
                    st.poisoned = *seg;
                    if dir.is_some() {
                        st.dir_dirty = true;
                    }
                }
            }
            if !waiting.is_empty() {
                self.batch_size.observe(waiting.len() as f64);
            }
            for (reply, written) in waiting {
                let _ = reply.send(match &result {
                    Err((_, e)) => Err(classify(e)),
                    Ok(()) => written,
                });
            }
            if closed {
                let st = lock(&self.state);
                if st.waiting.is_empty() && st.held.is_empty() && st.dirty.is_empty() {
                    return;
                }
            }
        }
    }
}

/// Makes `dirty` stable (and `dir`, whose entries name new segments); the failing segment if not.
fn sync(dirty: &[(u64, Arc<File>)], dir: Option<&Path>, poisoned: u64) -> Result<(), (u64, io::Error)> {
    for (seg, file) in dirty {
        if *seg == poisoned {
            return Err((*seg, io::Error::other("segment fsync failed earlier")));
        }
        file.sync_data().map_err(|e| (*seg, e))?;
    }
    if let Some(dir) = dir {
        let seg = dirty.last().map_or(NO_SEGMENT, |(s, _)| *s);
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| (seg, e))?;
    }
    Ok(())
}

fn open_new(dir: &Path, seq: u64) -> io::Result<File> {
    // Written at explicit offsets: the file is allocated ahead of its last record.
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(segment_path(dir, seq))
}

fn classify(e: &io::Error) -> WriteError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WriteError::DiskFull,
        _ => WriteError::Io,
    }
}
