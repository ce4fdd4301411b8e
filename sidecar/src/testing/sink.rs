//! [`MemorySink`]: a [`MessageSink`] that keeps committed messages in memory, with switches that
//! make it answer like a full, broken or rate-limited spool. For session tests and the session
//! fuzz target.

use crate::{
    message::{Envelope, MessageId, MessageSink, MessageWriter, SinkError},
    sync::lock,
};
use std::sync::{Arc, Mutex, MutexGuard};

/// One committed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The envelope given to `commit`.
    pub envelope: Envelope,
    /// Every byte written, Received field included.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    committed: Vec<Stored>,
    fail_begin: Option<SinkError>,
    fail_commit: Option<SinkError>,
    next_id: u64,
}

/// A `MessageSink` keeping committed messages in memory; `fail_begin`/`fail_commit` make it
/// answer `Full` or `Io` like a full or broken spool.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<Inner>>,
}

impl MemorySink {
    /// An empty sink that accepts everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Makes `begin` fail (or succeed again with `None`).
    pub fn fail_begin(&self, error: Option<SinkError>) {
        self.lock().fail_begin = error;
    }

    /// Makes `commit` fail (or succeed again with `None`).
    pub fn fail_commit(&self, error: Option<SinkError>) {
        self.lock().fail_commit = error;
    }

    /// Every committed message, in commit order.
    pub fn messages(&self) -> Vec<Stored> {
        self.lock().committed.clone()
    }
}

impl MessageSink for MemorySink {
    type Writer = MemoryWriter;

    async fn begin(&self) -> Result<MemoryWriter, SinkError> {
        let mut inner = self.lock();
        if let Some(e) = inner.fail_begin {
            return Err(e);
        }
        inner.next_id += 1;
        Ok(MemoryWriter {
            id: MessageId(inner.next_id),
            bytes: Vec::new(),
            sink: self.inner.clone(),
        })
    }
}

/// The writer of [`MemorySink`].
#[derive(Debug)]
pub struct MemoryWriter {
    id: MessageId,
    bytes: Vec<u8>,
    sink: Arc<Mutex<Inner>>,
}

impl MessageWriter for MemoryWriter {
    fn id(&self) -> MessageId {
        self.id
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    async fn commit(self, envelope: Envelope) -> Result<MessageId, SinkError> {
        let mut inner = lock(&self.sink);
        if let Some(e) = inner.fail_commit {
            return Err(e);
        }
        inner.committed.push(Stored {
            envelope,
            bytes: self.bytes,
        });
        Ok(self.id)
    }
}
