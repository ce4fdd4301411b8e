//! Durable spool: an append-only log of segment files with group commit.
//!
//! A message is acknowledged only after its Chunk and Commit records are fsync'd (file and
//! directory). Later state (RcptDone, Signature, Done) is appended without waiting for any fsync
//! and flushed within [`writer`]'s lazy-sync window: a crash can then cause a duplicate, never a
//! loss.
//! Segments are deleted oldest first once no live message has records in them; live messages in
//! an old segment are relocated (rewritten at the head) so one long retry cannot pin the disk.

mod meta;
mod origins;
pub mod quarantine;
pub mod record;
mod replay;
mod reserve;
mod segs;
mod shadows;
mod writer;

pub use meta::Meta;
pub use segs::Segs;
pub use writer::Loc;

/// Where a message's body is: its Chunk payloads in order.
pub type Chunks = smallvec::SmallVec<[Loc; 1]>;
use writer::WriteError;

use crate::{
    config,
    message::MessageId,
    message::{MessageSink, MessageWriter, SinkError},
    metrics::Metrics,
    sync::lock,
};
use record::Kind;
use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};
use tokio::sync::{mpsc, oneshot};
use writer::Op;

/// Segments roll over at this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Message bytes buffered by a session before they are written to the log.
const CHUNK_BYTES: usize = 256 << 10;
/// Messages up to this size that arrived within `INLINE_READ_AGE_SECS` are read on the calling
/// task: they are still in the page cache, so the read is a copy, cheaper than handing it to a
/// blocking thread and back (two thread wake-ups per message). Older ones may need the disk.
const INLINE_READ_BYTES: u64 = 64 << 10;
const INLINE_READ_AGE_SECS: u64 = 30;

/// Path of segment `seq`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.seg"))
}

/// A live message as the spool tracks it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Envelope and progress, shared with the runner: one copy per queued message, not two
    /// (a backlog of 20,000 messages cost 1.5 KiB each with two; docs/benchmarks.md). Changed
    /// with `Arc::make_mut`, which copies it only while the runner holds the old one.
    pub meta: Arc<Meta>,
    /// Where the body is (one chunk up to 256 KiB, inline).
    pub chunks: Chunks,
    /// Segments holding any record of this message (pinned while it lives).
    pub segs: Segs,
    verified: bool,
}

/// A message handed to the queue (at start-up or when newly committed).
#[derive(Debug, Clone)]
pub struct Queued {
    /// Spool id.
    pub id: MessageId,
    /// Envelope and progress (the spool's own, shared).
    pub meta: Arc<Meta>,
}

/// Spool errors at open.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory could not be created, listed or read.
    #[error("spool directory {dir}: {source}")]
    Dir {
        /// The spool directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<MessageId, Entry>,
    /// Live messages per segment.
    seg_live: BTreeMap<u64, usize>,
    /// Messages and bytes accepted or being received (for limits).
    count: u64,
    bytes: u64,
    files: HashMap<u64, Arc<std::fs::File>>,
    /// Messages being received, by the active segment when they began.
    inflight: BTreeMap<u64, usize>,
    /// Hand-off keys held or recently delivered (a hub).
    origins: origins::Origins,
    /// Shadow copies held for owner pods (a hub).
    shadows: shadows::Shadows,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    limits: Mutex<(u64, u64)>,
    log: writer::Log,
    state: Mutex<State>,
    next_id: AtomicU64,
    active: Arc<AtomicU64>,
    arrivals: mpsc::UnboundedSender<Queued>,
    /// False while delivery records cannot be written (disk full, reserve spent).
    recording: Arc<AtomicBool>,
    /// The log's sync thread, taken by [`Spool::close`].
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This spool's own random id, kept in its directory: with a message id it names the
    /// message in a hand-off (docs/hub.md).
    instance: u64,
    /// `handoff_received_total{result}`.
    handoff_received: prometheus::IntCounterVec,
    shadows_held: prometheus::IntGauge,
    shadow_events: prometheus::IntCounterVec,
    /// `spool_limit_bytes` and `spool_limit_messages`.
    limit_gauges: (prometheus::IntGauge, prometheus::IntGauge),
    /// Told the id of each message removed (a sidecar's shadow releases).
    on_removed: Mutex<Option<mpsc::UnboundedSender<MessageId>>>,
}

/// Handle to the spool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir`, replays it, and starts the log.
    /// Returns the spool, the messages found, and the receiver of newly committed messages.
    pub fn open(
        cfg: &config::Spool,
        metrics: Metrics,
    ) -> Result<(Self, Vec<Queued>, mpsc::UnboundedReceiver<Queued>), Error> {
        let dir = cfg.dir.clone();
        let err = |source| Error::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let mut seqs = list_segments(&dir).map_err(err)?;
        seqs.sort_unstable();
        let replayed = replay::replay(&dir, &seqs).map_err(err)?;
        metrics.spool_quarantined.inc_by(replayed.quarantined);
        let mut state = State::default();
        let mut queued = Vec::new();
        for (id, e) in replayed.entries {
            state.count += 1;
            state.bytes += e.meta.len;
            for s in &e.segs {
                *state.seg_live.entry(*s).or_default() += 1;
            }
            let env = &e.meta.envelope;
            match (&env.origin, &env.shadow) {
                // A shadow waits for its owner again: the runner does not see it.
                (Some(key), Some(owner)) => {
                    state.shadows.hold(key, id, owner, std::time::Instant::now());
                }
                (origin, _) => {
                    if let Some(key) = origin {
                        state.origins.queued(key, id);
                    }
                    queued.push(Queued {
                        id,
                        meta: e.meta.clone(),
                    });
                }
            }
            state.entries.insert(id, e);
        }
        queued.sort_by_key(|q| q.id);
        // Segments holding nothing live are reclaimed now; the rest stay until their messages end.
        for &seq in &seqs {
            state.seg_live.entry(seq).or_default();
        }
        let active_seq = seqs.last().map_or(1, |s| s + 1);
        let active = Arc::new(AtomicU64::new(active_seq));
        let recording = Arc::new(AtomicBool::new(true));
        let reserve = reserve::Reserve::new(
            dir.clone(),
            cfg.reserve_bytes,
            recording.clone(),
            metrics.spool_disk_full.clone(),
        );
        let (log, writer) = writer::Log::start(
            dir.clone(),
            active_seq,
            SEGMENT_BYTES,
            active.clone(),
            (metrics.spool_batch.clone(), metrics.spool_fsync_duration.clone()),
            reserve,
        )
        .map_err(err)?;
        let instance = instance_id(&dir).map_err(err)?;
        metrics.shadows_held.set(state.shadows.len() as i64);
        let (arrivals, arrivals_rx) = mpsc::unbounded_channel();
        let now_id = (crate::message::now_millis() << 20).max(replayed.max_id + 1);
        let spool = Spool {
            inner: Arc::new(Inner {
                dir,
                limits: Mutex::new((cfg.max_bytes, cfg.max_messages)),
                log,
                state: Mutex::new(state),
                next_id: AtomicU64::new(now_id),
                active,
                arrivals,
                recording,
                writer: Mutex::new(Some(writer)),
                instance,
                handoff_received: metrics.handoff_received.clone(),
                shadows_held: metrics.shadows_held.clone(),
                shadow_events: metrics.shadows.clone(),
                limit_gauges: (
                    metrics.spool_limit_bytes.clone(),
                    metrics.spool_limit_messages.clone(),
                ),
                on_removed: Mutex::new(None),
            }),
        };
        spool.set_limits(cfg);
        spool.reclaim();
        Ok((spool, queued, arrivals_rx))
    }

    /// Closes the spool: once this and every other handle are gone, the writer writes what it
    /// holds, makes it durable (a final fsync, so that no `Done` record is lost and no delivered
    /// message is sent again after a restart) and exits; this waits for that. Reopen the same
    /// directory only after it returns.
    pub async fn close(self) {
        let writer = lock(&self.inner.writer).take();
        drop(self);
        if let Some(writer) = writer
            && tokio::task::spawn_blocking(move || writer.join()).await.is_err()
        {
            tracing::error!("spool sync thread could not be joined");
        }
    }

    /// Applies new limits (hot reload).
    pub fn set_limits(&self, cfg: &config::Spool) {
        *lock(&self.inner.limits) = (cfg.max_bytes, cfg.max_messages);
        let (bytes, messages) = &self.inner.limit_gauges;
        bytes.set(i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX));
        messages.set(i64::try_from(cfg.max_messages).unwrap_or(i64::MAX));
    }

    /// Starts a message the sidecar generates itself (a bounce): not subject to the rate limit,
    /// which is for apps.
    pub fn begin_internal(&self) -> Result<Incoming, SinkError> {
        let (max_bytes, max_messages) = *lock(&self.inner.limits);
        {
            let mut st = lock(&self.inner.state);
            if st.count >= max_messages || st.bytes >= max_bytes {
                return Err(SinkError::Full);
            }
            st.count += 1;
        }
        let id = MessageId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        Ok(Incoming::new(self.clone(), id))
    }

    /// Whether delivery records can be written. While they cannot (the disk is full and its
    /// reserve spent), the queue starts no delivery: a `Done` that is not on disk means the
    /// message goes out again after a restart.
    pub fn recording(&self) -> bool {
        self.inner.recording.load(Ordering::SeqCst)
    }

    /// Sets [`Spool::recording`] as the writer would (the runner's tests).
    #[cfg(test)]
    pub(crate) fn set_recording(&self, ok: bool) {
        self.inner.recording.store(ok, Ordering::SeqCst);
    }

    /// The hand-off key of message `id`: this spool's instance and the message id, unique
    /// among every pod's spool (docs/hub.md).
    pub fn handoff_key(&self, id: MessageId) -> String {
        format!("{:016x}.{id}", self.inner.instance)
    }

    /// Every message held now, oldest first (the drain's hand-off).
    pub fn live(&self) -> Vec<Queued> {
        let st = lock(&self.inner.state);
        let mut live: Vec<Queued> = st
            .entries
            .iter()
            .filter(|(id, e)| !is_held_shadow(&st, **id, e))
            .map(|(id, e)| Queued {
                id: *id,
                meta: e.meta.clone(),
            })
            .collect();
        live.sort_by_key(|q| q.id);
        live
    }

    /// Number and total bytes of messages held (including those being received).
    pub fn usage(&self) -> (u64, u64) {
        let st = lock(&self.inner.state);
        (st.count, st.bytes)
    }

    /// Reads a message: the stored DKIM signature (if any) followed by the body as received.
    pub async fn read(&self, id: MessageId) -> io::Result<Vec<u8>> {
        // Only what the read needs leaves the lock: the shared envelope and the chunk list.
        let (meta, chunks, files) = {
            let mut st = lock(&self.inner.state);
            let entry = st.entries.get(&id).ok_or(io::ErrorKind::NotFound)?;
            let (meta, chunks) = (entry.meta.clone(), entry.chunks.clone());
            let mut files = Vec::with_capacity(chunks.len());
            for l in &chunks {
                files.push(open_segment(&mut st, &self.inner.dir, l.seg)?);
            }
            (meta, chunks, files)
        };
        let recent =
            crate::message::now_secs().saturating_sub(meta.envelope.received_at) <= INLINE_READ_AGE_SECS;
        let inline = recent && meta.len <= INLINE_READ_BYTES;
        let read = move || {
            let sig = meta.signature.as_deref().unwrap_or("").as_bytes();
            // Sized from the chunks found on disk, not from the Commit's length: a corrupt length
            // must fail the check below, not ask the allocator for terabytes (found by fuzzing).
            let stored: u64 = chunks.iter().map(|l| u64::from(l.len)).sum();
            if stored != meta.len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message length does not match its commit record",
                ));
            }
            let mut out = Vec::with_capacity(sig.len() + stored as usize);
            out.extend_from_slice(sig);
            let mut crc = crc32fast::Hasher::new();
            for (l, f) in chunks.iter().zip(files) {
                let at = out.len();
                out.resize(at + l.len as usize, 0);
                f.read_exact_at(&mut out[at..], l.offset)?;
                crc.update(&out[at..]);
            }
            if crc.finalize() != meta.crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message checksum mismatch",
                ));
            }
            Ok(out)
        };
        if inline {
            return read();
        }
        tokio::task::spawn_blocking(read)
            .await
            .map_err(io::Error::other)?
    }

    /// Records the DKIM-Signature header to prepend from now on. Returns the message's
    /// envelope and progress as changed, for the runner to share (`None`: no longer here).
    pub async fn set_signature(&self, id: MessageId, header: String) -> Option<Arc<Meta>> {
        let mut buf = Vec::new();
        record::encode(&mut buf, Kind::Signature, id, header.as_bytes());
        let meta = self.change(id, |m| m.signature = Some(header));
        self.append(id, buf).await;
        meta
    }

    /// Changes live message `id`'s envelope or progress; returns it as changed. The copy is
    /// made here, while the runner still holds the old one; the runner then takes this one.
    fn change(&self, id: MessageId, f: impl FnOnce(&mut Meta)) -> Option<Arc<Meta>> {
        let mut st = lock(&self.inner.state);
        let e = st.entries.get_mut(&id)?;
        f(Arc::make_mut(&mut e.meta));
        Some(e.meta.clone())
    }

    /// What the quarantine holds (docs/operations.md "Day two").
    pub fn quarantined(&self) -> io::Result<Vec<quarantine::Quarantined>> {
        quarantine::list(&self.inner.dir)
    }

    /// Queues quarantined message `id` again, as found, with its unfinished recipients; its
    /// files move to `quarantine/released/`. Returns the new spool id.
    pub async fn release_quarantined(&self, id: &str) -> Result<MessageId, quarantine::ReleaseError> {
        let r = quarantine::take(&self.inner.dir, id)?;
        let full = || quarantine::ReleaseError::Io(io::Error::other("the spool refused the message (full?)"));
        let mut w = self.begin_internal().map_err(|_| full())?;
        w.write(&r.body).await.map_err(|_| full())?;
        let new = w.commit(r.envelope).await.map_err(|_| full())?;
        quarantine::mark_released(&self.inner.dir, id)?;
        Ok(new)
    }

    /// Sets a message whose bytes failed their check aside in quarantine, as found, and removes
    /// it from the queue.
    pub async fn set_aside(&self, id: MessageId) {
        let found = {
            let mut st = lock(&self.inner.state);
            st.entries.get(&id).cloned().map(|e| {
                let files: Vec<_> = e
                    .chunks
                    .iter()
                    .map(|l| open_segment(&mut st, &self.inner.dir, l.seg))
                    .collect();
                (e, files)
            })
        };
        if let Some((entry, files)) = found {
            let dir = self.inner.dir.clone();
            let copy = move || {
                let mut body = Vec::new();
                for (l, f) in entry.chunks.iter().zip(files) {
                    let mut chunk = vec![0; l.len as usize];
                    if let Ok(f) = f
                        && f.read_exact_at(&mut chunk, l.offset).is_ok()
                    {
                        body.extend_from_slice(&chunk);
                    }
                }
                quarantine::write_message(&dir, id, &entry.meta, &body);
            };
            let _ = tokio::task::spawn_blocking(copy).await;
        }
        self.remove(id).await;
    }

    /// Holds (`true`) or releases a message, durably: the answer comes after the record's fsync,
    /// so a hold outlives a crash. Returns the message as changed, or `None` when it is not in
    /// the spool.
    pub async fn set_held(&self, id: MessageId, held: bool) -> Result<Option<Arc<Meta>>, SinkError> {
        let Some(meta) = self.change(id, |m| m.held = held) else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        record::encode(&mut buf, Kind::Hold, id, &[u8::from(held)]);
        let (seg, _) = self.send(buf, vec![], true).await.map_err(|e| match e {
            WriteError::DiskFull => SinkError::Full,
            WriteError::Io => SinkError::Io,
        })?;
        let mut st = lock(&self.inner.state);
        let st = &mut *st;
        if let Some(e) = st.entries.get_mut(&id)
            && e.segs.insert(seg)
        {
            *st.seg_live.entry(seg).or_default() += 1;
        }
        Ok(Some(meta))
    }

    /// Records that recipients `done` (indices) need no further attempts. Returns the message
    /// as changed, for the runner to share (`None`: no longer here).
    pub async fn recipients_done(&self, id: MessageId, done: &[u32]) -> Option<Arc<Meta>> {
        if done.is_empty() {
            return lock(&self.inner.state).entries.get(&id).map(|e| e.meta.clone());
        }
        let payload: Vec<u8> = done.iter().flat_map(|i| i.to_le_bytes()).collect();
        let mut buf = Vec::new();
        record::encode(&mut buf, Kind::RcptDone, id, &payload);
        let meta = self.change(id, |m| m.done.extend_from_slice(done));
        self.append(id, buf).await;
        meta
    }

    /// Removes a finished message; its space is reclaimed once its segments hold nothing live.
    pub async fn remove(&self, id: MessageId) {
        let mut buf = Vec::new();
        record::encode(&mut buf, Kind::Done, id, b"");
        // Not waited for: the writer writes it as soon as it takes it (before anything queued
        // after it), and nothing here depends on where it lands; waiting would cost a thread
        // wake-up per message. The message's own segments may go before it is written: once
        // they are gone there is nothing left to deliver again.
        let op = Op {
            buf,
            payloads: vec![],
            durable: false,
            reply: None,
        };
        self.inner.log.submit(op);
        {
            let mut st = lock(&self.inner.state);
            if let Some(e) = st.entries.remove(&id) {
                // A shadow's key is not a hand-off's: only a message queued under its key
                // (a hand-off, or a promoted shadow) is remembered as delivered.
                if let Some(key) = &e.meta.envelope.origin
                    && st.origins.is_queued_as(key, id)
                {
                    st.origins.finished(key, std::time::Instant::now());
                }
                st.count -= 1;
                st.bytes -= e.meta.len;
                for s in &e.segs {
                    if let Some(n) = st.seg_live.get_mut(s) {
                        *n -= 1;
                    }
                }
            }
            crate::memory::shrink_sparse(&mut st.entries);
        }
        self.report_removed(id);
        self.reclaim();
    }

    /// Tells the [`Spool::on_removed`] listener that `id` is gone (or never came).
    pub fn report_removed(&self, id: MessageId) {
        if let Some(tx) = lock(&self.inner.on_removed).as_ref() {
            let _ = tx.send(id);
        }
    }

    /// Sends the id of every message removed from now on (delivered, bounced, expired, handed
    /// off or cancelled) to `tx`.
    pub fn on_removed(&self, tx: mpsc::UnboundedSender<MessageId>) {
        *lock(&self.inner.on_removed) = Some(tx);
    }

    /// Drops the shadow copies held under `keys` (their owner is done with them); returns how
    /// many there were.
    pub async fn release_shadows(&self, keys: &[String]) -> usize {
        let ids: Vec<MessageId> = {
            let mut st = lock(&self.inner.state);
            keys.iter().filter_map(|k| st.shadows.take(k)).collect()
        };
        for &id in &ids {
            self.remove(id).await;
        }
        self.count_shadows("released", ids.len());
        ids.len()
    }

    /// Every owner pod with shadows held here, and since when it has had them.
    pub fn shadow_owners(&self) -> Vec<(crate::message::handoff::Owner, std::time::Instant)> {
        lock(&self.inner.state).shadows.owners()
    }

    /// Owner `uid` is gone: its shadows become ordinary messages of this hub, queued for
    /// delivery under their keys (a late hand-off of one is then a duplicate). Returns how many.
    pub fn promote(&self, uid: &str) -> usize {
        let queued: Vec<Queued> = {
            let mut st = lock(&self.inner.state);
            let taken = st.shadows.take_owner(uid);
            let mut queued = Vec::with_capacity(taken.len());
            for (key, id) in taken {
                if let Some(e) = st.entries.get(&id) {
                    let meta = e.meta.clone();
                    st.origins.queued(&key, id);
                    queued.push(Queued { id, meta });
                }
            }
            queued
        };
        for q in &queued {
            let _ = self.inner.arrivals.send(q.clone());
        }
        self.count_shadows("promoted", queued.len());
        queued.len()
    }

    fn count_shadows(&self, event: &str, n: usize) {
        if n > 0 {
            self.inner
                .shadow_events
                .with_label_values(&[event])
                .inc_by(n as u64);
        }
        let held = lock(&self.inner.state).shadows.len();
        self.inner.shadows_held.set(held as i64);
    }

    /// Appends a state record for a live message and pins the segment it lands in.
    async fn append(&self, id: MessageId, buf: Vec<u8>) {
        if let Ok((seg, _)) = self.send(buf, vec![], false).await {
            let mut st = lock(&self.inner.state);
            let st = &mut *st;
            if let Some(e) = st.entries.get_mut(&id)
                && e.segs.insert(seg)
            {
                *st.seg_live.entry(seg).or_default() += 1;
            }
        }
    }

    async fn send(
        &self,
        buf: Vec<u8>,
        payloads: Vec<(usize, u32)>,
        durable: bool,
    ) -> Result<(u64, Vec<Loc>), WriteError> {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            buf,
            payloads,
            durable,
            reply: Some(reply),
        };
        self.inner.log.submit(op);
        rx.await.map_err(|_| WriteError::Io)?
    }

    /// Deletes segments, oldest first, while the oldest holds nothing live. Oldest-first keeps
    /// every Done record on disk for as long as the records it cancels.
    fn reclaim(&self) {
        let active = self.inner.active.load(Ordering::SeqCst);
        let mut st = lock(&self.inner.state);
        while let Some((&seq, &live)) = st.seg_live.first_key_value() {
            let floor = st
                .inflight
                .first_key_value()
                .map_or(active, |(&f, _)| f.min(active));
            if live > 0 || seq >= floor {
                break;
            }
            st.seg_live.remove(&seq);
            st.files.remove(&seq);
            if let Err(e) = std::fs::remove_file(segment_path(&self.inner.dir, seq)) {
                tracing::warn!(segment = seq, error = %e, "cannot delete spool segment");
            }
        }
    }

    /// Rewrites live messages of the oldest sealed segment at the head of the log when they
    /// hold at most a quarter of a segment, so that the segment can be deleted (bounded write
    /// amplification). Returns how many messages moved.
    pub async fn compact(&self) -> usize {
        let active = self.inner.active.load(Ordering::SeqCst);
        let ids: Vec<MessageId> = {
            let st = lock(&self.inner.state);
            let Some((&oldest, _)) = st.seg_live.first_key_value() else {
                return 0;
            };
            if oldest >= active {
                return 0;
            }
            let live: Vec<_> = st
                .entries
                .iter()
                .filter(|(_, e)| e.segs.contains(&oldest))
                .collect();
            if live.iter().map(|(_, e)| e.meta.len).sum::<u64>() > SEGMENT_BYTES / 4 {
                return 0;
            }
            live.into_iter().map(|(id, _)| *id).collect()
        };
        let mut moved = 0;
        for id in ids {
            if self.relocate(id).await.is_ok() {
                moved += 1;
            }
        }
        self.reclaim();
        moved
    }

    async fn relocate(&self, id: MessageId) -> io::Result<()> {
        let mut body = self.read(id).await?;
        let meta = lock(&self.inner.state)
            .entries
            .get(&id)
            .map(|e| e.meta.clone())
            .ok_or(io::ErrorKind::NotFound)?;
        let sig_len = meta.signature.as_ref().map_or(0, String::len);
        let body = body.split_off(sig_len);
        let (buf, payloads) = encode_message(id, &body, &meta);
        let (seg, locs) = self
            .send(buf, payloads, true)
            .await
            .map_err(|_| io::Error::other("spool write failed"))?;
        let mut st = lock(&self.inner.state);
        let st = &mut *st;
        let Some(e) = st.entries.get_mut(&id) else {
            return Ok(());
        };
        for s in std::mem::take(&mut e.segs) {
            if let Some(n) = st.seg_live.get_mut(&s) {
                *n -= 1;
            }
        }
        e.chunks = locs.into_iter().collect();
        e.segs.insert(seg);
        *st.seg_live.entry(seg).or_default() += 1;
        Ok(())
    }
}

/// Encodes a whole message as Chunk records plus a Commit record.
fn encode_message(id: MessageId, body: &[u8], meta: &Meta) -> (Vec<u8>, Vec<(usize, u32)>) {
    let mut buf = Vec::with_capacity(body.len() + 512);
    let mut payloads = Vec::new();
    for chunk in body.chunks(record::MAX_PAYLOAD) {
        let at = record::encode(&mut buf, Kind::Chunk, id, chunk);
        payloads.push((at, chunk.len() as u32));
    }
    let meta_json = serde_json::to_vec(meta).unwrap_or_default();
    record::encode(&mut buf, Kind::Commit, id, &meta_json);
    (buf, payloads)
}

/// Whether `e` is a shadow copy still held for its owner (not the runner's).
fn is_held_shadow(st: &State, id: MessageId, e: &Entry) -> bool {
    e.meta.envelope.shadow.is_some()
        && e.meta
            .envelope
            .origin
            .as_deref()
            .is_some_and(|k| st.shadows.get(k) == Some(id))
}

fn open_segment(st: &mut State, dir: &Path, seq: u64) -> io::Result<Arc<std::fs::File>> {
    if let Some(f) = st.files.get(&seq) {
        return Ok(f.clone());
    }
    let f = Arc::new(std::fs::File::open(segment_path(dir, seq))?);
    st.files.insert(seq, f.clone());
    Ok(f)
}

/// The spool's instance id from `<dir>/instance`, made (random, written and fsync'd) on the
/// first start.
fn instance_id(dir: &Path) -> io::Result<u64> {
    let path = dir.join("instance");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Ok(id) = u64::from_str_radix(text.trim(), 16) {
                return Ok(id);
            }
            tracing::warn!(path = %path.display(), "spool instance file is damaged; writing a new one");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id: u64 = rand::random();
    let tmp = dir.join("instance.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, format!("{id:016x}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    Ok(seqs)
}

mod incoming;
pub use incoming::{Held, Incoming};
#[cfg(test)]
mod tests;

impl MessageSink for Spool {
    type Writer = Incoming;

    async fn begin(&self) -> Result<Incoming, SinkError> {
        self.begin_internal()
    }

    async fn release_shadows(&self, keys: Vec<String>) -> usize {
        Spool::release_shadows(self, &keys).await
    }
}
