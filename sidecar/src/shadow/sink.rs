//! The sidecar's sink with `durability: replicated`: each message is made durable here and, at
//! the same time, signed and copied to a hub; `250` only once both are on disk. Without shadows
//! in the current config it is the spool itself.

use super::Ledger;
use crate::{
    message::{Envelope, MessageId, MessageSink, MessageWriter, SinkError},
    metrics::Metrics,
    outbound::shadow::ShadowClient,
    queue::{attempt, delivery::Delivery},
    spool::{Incoming, Spool},
};
use std::sync::Arc;
use tokio::sync::watch;

/// [`MessageSink`] over the spool that also stores shadow copies when the config asks for them.
#[derive(Debug)]
pub struct ShadowSink {
    spool: Spool,
    delivery: watch::Receiver<Arc<Delivery>>,
    ledger: Arc<Ledger>,
    metrics: Metrics,
}

impl ShadowSink {
    /// Wraps `spool`; each message uses the delivery generation current when it begins.
    pub fn new(
        spool: Spool,
        delivery: watch::Receiver<Arc<Delivery>>,
        ledger: Arc<Ledger>,
        metrics: Metrics,
    ) -> Self {
        Self {
            spool,
            delivery,
            ledger,
            metrics,
        }
    }
}

impl MessageSink for ShadowSink {
    type Writer = ShadowWriter;

    async fn begin(&self) -> Result<ShadowWriter, SinkError> {
        let inner = self.spool.begin_internal()?;
        let delivery = self.delivery.borrow().clone();
        let copy = delivery.shadows.is_some().then(|| Copy {
            bytes: Vec::new(),
            delivery,
            spool: self.spool.clone(),
            ledger: self.ledger.clone(),
            metrics: self.metrics.clone(),
        });
        Ok(ShadowWriter { inner, copy })
    }

    async fn release_shadows(&self, keys: Vec<String>) -> usize {
        self.spool.release_shadows(&keys).await
    }
}

/// What a replicated message needs besides the spool's writer.
#[derive(Debug)]
struct Copy {
    bytes: Vec<u8>,
    delivery: Arc<Delivery>,
    spool: Spool,
    ledger: Arc<Ledger>,
    metrics: Metrics,
}

/// One message: the spool's writer, and the bytes for its shadow copy.
#[derive(Debug)]
pub struct ShadowWriter {
    inner: Incoming,
    copy: Option<Copy>,
}

impl MessageWriter for ShadowWriter {
    fn id(&self) -> MessageId {
        self.inner.id()
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        self.inner.write(chunk).await?;
        if let Some(c) = self.copy.as_mut() {
            c.bytes.extend_from_slice(chunk);
        }
        Ok(())
    }

    async fn commit(self, envelope: Envelope) -> Result<MessageId, SinkError> {
        let Some(c) = self.copy else {
            return self.inner.commit(envelope).await;
        };
        let Some(client) = c.delivery.shadows.clone() else {
            return self.inner.commit(envelope).await;
        };
        // On the heap: the exchange with the hubs is most of this future's size, and every
        // session's task holds its largest path inline, replicated or not.
        Box::pin(replicate(self.inner, c, client, envelope)).await
    }
}

/// Commits a message held until its shadow copy is on a hub, and sends the copy.
async fn replicate(
    inner: Incoming,
    mut c: Copy,
    client: Arc<ShadowClient>,
    envelope: Envelope,
) -> Result<MessageId, SinkError> {
    let id = inner.id();
    let key = c.spool.handoff_key(id);
    // Signed now, once: the copy must be deliverable as it is if this pod is lost, and the
    // hub never signs (docs/hub.md).
    let signature = attempt::sign(&c.delivery, &c.bytes, &c.metrics);
    if let Some(header) = &signature {
        c.bytes.splice(0..0, header.bytes());
    }
    let (local, remote) = tokio::join!(
        inner.commit_held(envelope.clone(), signature),
        client.store(&envelope, &key, &c.bytes),
    );
    match (local, remote) {
        (Ok(held), Ok(host)) => {
            c.ledger.stored(id, host);
            c.metrics.shadow_copies.with_label_values(&["stored"]).inc();
            held.announce();
            Ok(id)
        }
        (Ok(held), Err(e)) => {
            c.metrics.shadow_copies.with_label_values(&["failed"]).inc();
            tracing::warn!(message_id = %id, error = %e, "no hub took the shadow copy; the message is refused with 451");
            // A hub may hold the copy although its `250` never arrived (a timeout): the
            // cancel releases it on every hub, or the hub would deliver it once this pod
            // is gone, after the app's retry was delivered too.
            c.ledger.anywhere([id]);
            held.cancel().await;
            Err(SinkError::ShadowFailed)
        }
        (Err(e), Ok(host)) => {
            // The copy is an orphan: it goes with the next releases.
            c.ledger.stored(id, host);
            c.spool.report_removed(id);
            Err(e)
        }
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests;
