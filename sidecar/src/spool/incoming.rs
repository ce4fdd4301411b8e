//! A message being received: body bytes go to the writer in chunks as they arrive (bounded
//! memory), and `commit` returns only once body and envelope are fsync'd.

use super::{CHUNK_BYTES, Entry, Meta, Queued, Spool, origins::Claim, record, record::Kind, writer::Op};
use crate::{
    message::{Envelope, MessageId, handoff::Owner},
    message::{MessageWriter, SinkError},
    sync::lock,
};
use std::sync::{Arc, atomic::Ordering};
use tokio::sync::oneshot;

type Reply = oneshot::Receiver<super::writer::Written>;

/// One message being written; dropping it without `commit` releases its reservation.
#[derive(Debug)]
pub struct Incoming {
    spool: Spool,
    id: MessageId,
    buf: Vec<u8>,
    len: u64,
    crc: crc32fast::Hasher,
    pending: Vec<Reply>,
    /// Oldest segment this message may have written to; reclaim stops there until it ends.
    floor: u64,
    finished: bool,
}

impl Incoming {
    pub(super) fn new(spool: Spool, id: MessageId) -> Self {
        let floor = spool.inner.active.load(Ordering::SeqCst);
        *lock(&spool.inner.state).inflight.entry(floor).or_default() += 1;
        Self {
            spool,
            id,
            buf: Vec::new(),
            len: 0,
            crc: crc32fast::Hasher::new(),
            pending: Vec::new(),
            floor,
            finished: false,
        }
    }

    async fn flush(&mut self, commit: Option<&Meta>) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(self.buf.len() + 256);
        let mut payloads = Vec::new();
        if !self.buf.is_empty() {
            let at = record::encode(&mut buf, Kind::Chunk, self.id, &self.buf);
            payloads.push((at, self.buf.len() as u32));
            self.buf.clear();
        }
        if let Some(meta) = commit {
            let json = serde_json::to_vec(meta).map_err(|_| SinkError::Io)?;
            record::encode(&mut buf, Kind::Commit, self.id, &json);
        } else if buf.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let op = Op {
            buf,
            payloads,
            durable: commit.is_some(),
            reply: Some(reply),
        };
        self.spool.inner.log.submit(op);
        self.pending.push(rx);
        Ok(())
    }
}

impl MessageWriter for Incoming {
    fn id(&self) -> MessageId {
        self.id
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        {
            let max_bytes = lock(&self.spool.inner.limits).0;
            let mut st = lock(&self.spool.inner.state);
            if st.bytes + chunk.len() as u64 > max_bytes {
                return Err(SinkError::Full);
            }
            st.bytes += chunk.len() as u64;
        }
        self.len += chunk.len() as u64;
        self.crc.update(chunk);
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush(None).await?;
        }
        Ok(())
    }

    async fn commit(mut self, envelope: Envelope) -> Result<MessageId, SinkError> {
        if let (Some(key), Some(owner)) = (envelope.origin.clone(), envelope.shadow.clone()) {
            // On the heap: a hub's path alone, and every session's task holds the largest
            // path of its commit inline.
            return Box::pin(self.commit_shadow(envelope, &key, &owner)).await;
        }
        let origin = envelope.origin.clone();
        if let Some(key) = &origin {
            let claim = lock(&self.spool.inner.state).origins.claim(key);
            let received = &self.spool.inner.handoff_received;
            match claim {
                Claim::New => {}
                Claim::Duplicate(id) => {
                    received.with_label_values(&["duplicate"]).inc();
                    tracing::info!(message_id = %id, handoff_key = %key, "hand-off of a message already held; no second copy");
                    return Ok(id);
                }
                Claim::Busy => return Err(SinkError::HandoffInProgress),
            }
        }
        let result = self.store(envelope, true, None).await;
        if let Some(key) = &origin {
            let replaced = {
                let mut st = lock(&self.spool.inner.state);
                match result {
                    Ok(id) => {
                        st.origins.queued(key, id);
                        self.spool
                            .inner
                            .handoff_received
                            .with_label_values(&["queued"])
                            .inc();
                        // The hand-off of a message held as a shadow replaces the shadow (it
                        // carries the recipients still to do).
                        st.shadows.take(key)
                    }
                    Err(_) => {
                        st.origins.release(key);
                        None
                    }
                }
            };
            if let Some(shadow) = replaced {
                self.spool.remove(shadow).await;
                self.spool.count_shadows("replaced", 1);
            }
        }
        result
    }
}

impl Incoming {
    /// A shadow copy (XSHADOW): durable like any message, then held for its owner instead of
    /// queued. A copy of a key already held, or already queued here, is not kept twice.
    async fn commit_shadow(
        mut self,
        envelope: Envelope,
        key: &str,
        owner: &Owner,
    ) -> Result<MessageId, SinkError> {
        {
            let st = lock(&self.spool.inner.state);
            if let Some(id) = st.shadows.get(key) {
                return Ok(id);
            }
        }
        let id = self.store(envelope, false, None).await?;
        let duplicate = {
            let mut st = lock(&self.spool.inner.state);
            match st.shadows.get(key) {
                // Another connection stored the same copy meanwhile: keep the first.
                Some(first) => Some(first),
                None => {
                    st.shadows.hold(key, id, owner, std::time::Instant::now());
                    None
                }
            }
        };
        match duplicate {
            Some(first) => {
                self.spool.remove(id).await;
                Ok(first)
            }
            None => {
                self.spool.count_shadows("stored", 1);
                Ok(id)
            }
        }
    }
}

impl Incoming {
    /// Makes the message durable but keeps it from the runner until [`Held::announce`]: the
    /// sidecar's half of a replicated accept, whose shadow copy goes to the hub meanwhile. With
    /// `signature`, the message was signed at acceptance (the shadow carries the same one).
    pub async fn commit_held(
        mut self,
        envelope: Envelope,
        signature: Option<String>,
    ) -> Result<Held, SinkError> {
        let id = self.store(envelope, false, signature).await?;
        let meta = lock(&self.spool.inner.state)
            .entries
            .get(&id)
            .map(|e| e.meta.clone())
            .ok_or(SinkError::Io)?;
        Ok(Held {
            spool: self.spool.clone(),
            id,
            meta,
        })
    }

    /// Makes the message durable; `queue` hands it to the runner (not a shadow).
    async fn store(
        &mut self,
        envelope: Envelope,
        queue: bool,
        signed: Option<String>,
    ) -> Result<MessageId, SinkError> {
        // A hand-off arrives signed by its sidecar; an empty signature means "never sign".
        let signature = signed.or_else(|| envelope.origin.as_ref().map(|_| String::new()));
        let meta = Arc::new(Meta {
            envelope,
            len: self.len,
            crc: self.crc.clone().finalize(),
            done: vec![],
            signature,
            held: false,
        });
        self.flush(Some(&meta)).await?;
        let mut chunks = super::Chunks::new();
        let mut segs = super::Segs::default();
        for rx in std::mem::take(&mut self.pending) {
            match rx.await {
                Ok(Ok((seg, locs))) => {
                    segs.insert(seg);
                    chunks.extend(locs);
                }
                Ok(Err(super::WriteError::DiskFull)) => return Err(SinkError::Full),
                Ok(Err(super::WriteError::Io)) | Err(_) => return Err(SinkError::Io),
            }
        }
        {
            let mut st = lock(&self.spool.inner.state);
            for s in &segs {
                *st.seg_live.entry(*s).or_default() += 1;
            }
            let entry = Entry {
                meta: meta.clone(),
                chunks,
                segs,
                verified: true,
            };
            st.entries.insert(self.id, entry);
        }
        self.finished = true;
        self.release_floor();
        if queue {
            let _ = self.spool.inner.arrivals.send(Queued { id: self.id, meta });
        }
        Ok(self.id)
    }
}

/// A message durable in the spool that the runner has not seen yet.
#[derive(Debug)]
#[must_use = "announce or cancel the message"]
pub struct Held {
    spool: Spool,
    id: MessageId,
    meta: Arc<Meta>,
}

impl Held {
    /// Its id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Hands the message to the runner.
    pub fn announce(self) {
        let _ = self.spool.inner.arrivals.send(Queued {
            id: self.id,
            meta: self.meta,
        });
    }

    /// Drops the message: the app was not told `250`, and will send it again.
    pub async fn cancel(self) {
        self.spool.remove(self.id).await;
    }
}

impl Incoming {
    fn release_floor(&self) {
        let mut st = lock(&self.spool.inner.state);
        if let Some(n) = st.inflight.get_mut(&self.floor) {
            *n -= 1;
            if *n == 0 {
                st.inflight.remove(&self.floor);
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.finished {
            self.release_floor();
            let mut st = lock(&self.spool.inner.state);
            st.count -= 1;
            st.bytes -= self.len;
        }
    }
}
