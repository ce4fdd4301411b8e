//! Which hub holds the shadow copy of each message, and the releases still to send. A message
//! leaving the spool (delivered, bounced, expired, handed off, or cancelled before `250`)
//! releases its copy; releases are batched and retried until the hub has them, and flushed at
//! the end of the drain: a copy not released would be delivered again once the pod is gone.

use super::ShadowClient;
use crate::{message::MessageId, metrics::Metrics, queue::delivery::Delivery, spool::Spool, sync::lock};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{Notify, mpsc, watch};

/// Releases wait at most this long to be batched.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// A release that failed is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Send at once when this many are waiting.
const BATCH_KEYS: usize = 256;

/// Where a message's copy is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// On this hub pod.
    On(String),
    /// Not known (the message was in the spool at start): every hub is told.
    Unknown,
}

#[derive(Debug, Default)]
struct State {
    copies: HashMap<MessageId, Held>,
    /// Keys to release, by hub host.
    pending: BTreeMap<String, Vec<String>>,
}

/// The sidecar's record of its shadow copies.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    /// Ids of messages removed from the spool ([`Spool::on_removed`]).
    removed: tokio::sync::Mutex<mpsc::UnboundedReceiver<MessageId>>,
    wake: Notify,
    metrics: Metrics,
}

impl Ledger {
    /// An empty ledger fed by `removed`.
    pub fn new(metrics: Metrics, removed: mpsc::UnboundedReceiver<MessageId>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            removed: tokio::sync::Mutex::new(removed),
            wake: Notify::new(),
            metrics,
        })
    }

    /// `id`'s copy is on `host`.
    pub fn stored(&self, id: MessageId, host: String) {
        lock(&self.state).copies.insert(id, Held::On(host));
    }

    /// These messages may have copies on any hub (they were in the spool at start, or a copy's
    /// `250` was lost): their release goes to every hub pod.
    pub fn anywhere(&self, ids: impl IntoIterator<Item = MessageId>) {
        let mut st = lock(&self.state);
        for id in ids {
            st.copies.insert(id, Held::Unknown);
        }
    }

    /// `id` left the spool: its copy is to be released on `hosts` (when not known where it is).
    fn removed(&self, id: MessageId, key: String, hosts: &[String]) {
        let mut st = lock(&self.state);
        match st.copies.remove(&id) {
            Some(Held::On(host)) => st.pending.entry(host).or_default().push(key),
            Some(Held::Unknown) => {
                for host in hosts {
                    st.pending.entry(host.clone()).or_default().push(key.clone());
                }
            }
            None => return,
        }
        let waiting: usize = st.pending.values().map(Vec::len).sum();
        self.metrics.shadow_releases_pending.set(waiting as i64);
        if waiting >= BATCH_KEYS {
            self.wake.notify_one();
        }
    }

    /// Releases waiting.
    pub fn pending(&self) -> usize {
        lock(&self.state).pending.values().map(Vec::len).sum()
    }

    /// Sends what is waiting through `client`; what fails stays. Returns whether all went.
    pub async fn flush(&self, client: &ShadowClient) -> bool {
        let batches = std::mem::take(&mut lock(&self.state).pending);
        let mut ok = true;
        for (host, keys) in batches {
            if let Err(e) = client.release(&host, &keys).await {
                ok = false;
                tracing::warn!(hub = %host, keys = keys.len(), error = %e, "cannot release shadow copies yet; will retry");
                lock(&self.state).pending.entry(host).or_default().extend(keys);
            }
        }
        self.metrics.shadow_releases_pending.set(self.pending() as i64);
        ok
    }

    /// Turns removals from the spool into releases and sends them, batched, through the
    /// current delivery generation's client. Runs until aborted (then [`Ledger::settle`]).
    pub async fn run(self: Arc<Self>, spool: Spool, delivery: watch::Receiver<Arc<Delivery>>) {
        let mut tick = tokio::time::interval(BATCH_WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let current = delivery.borrow().shadows.clone();
            {
                let mut removed = self.removed.lock().await;
                tokio::select! {
                    id = removed.recv() => {
                        let Some(id) = id else { return };
                        self.take_removed(id, &mut removed, &spool, current.as_deref());
                        continue;
                    }
                    () = self.wake.notified() => {}
                    _ = tick.tick() => {}
                }
            }
            if self.pending() == 0 || retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
                continue;
            }
            let Some(current) = current else { continue };
            retry_at = (!self.flush(&current).await).then(|| tokio::time::Instant::now() + RETRY_AFTER);
        }
    }

    fn take_removed(
        &self,
        first: MessageId,
        removed: &mut mpsc::UnboundedReceiver<MessageId>,
        spool: &Spool,
        client: Option<&ShadowClient>,
    ) {
        let hosts: Vec<String> = client
            .map(|c| c.hosts().map(str::to_owned).collect())
            .unwrap_or_default();
        self.removed(first, spool.handoff_key(first), &hosts);
        while let Ok(id) = removed.try_recv() {
            self.removed(id, spool.handoff_key(id), &hosts);
        }
    }

    /// At the end of the drain (with [`Ledger::run`] stopped): sends every release still
    /// waiting, retrying until `deadline`. Returns how many could not be sent.
    pub async fn settle(
        &self,
        spool: &Spool,
        client: Option<&ShadowClient>,
        deadline: tokio::time::Instant,
    ) -> usize {
        {
            let mut removed = self.removed.lock().await;
            if let Ok(first) = removed.try_recv() {
                self.take_removed(first, &mut removed, spool, client);
            }
        }
        let Some(client) = client else {
            return self.pending();
        };
        while self.pending() > 0 {
            let sent = tokio::time::timeout_at(deadline, self.flush(client)).await;
            if sent == Ok(true) || tokio::time::Instant::now() + RETRY_AFTER > deadline {
                break;
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
        self.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release goes to the hub pod that holds the copy; one whose place is not known goes to
    /// every hub pod; a message that never had a copy releases nothing.
    #[test]
    fn releases_go_where_the_copy_is_or_everywhere_when_unknown() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let ledger = Ledger::new(Metrics::new(), rx);
        let hosts = ["hub-0".to_string(), "hub-1".to_string()];
        ledger.stored(MessageId(1), "hub-1".into());
        ledger.anywhere([MessageId(2)]);
        ledger.removed(MessageId(1), "k1".into(), &hosts);
        ledger.removed(MessageId(2), "k2".into(), &hosts);
        ledger.removed(MessageId(3), "k3".into(), &hosts);
        ledger.removed(MessageId(1), "k1".into(), &hosts);
        let pending = lock(&ledger.state).pending.clone();
        assert_eq!(
            pending,
            BTreeMap::from([
                ("hub-0".to_string(), vec!["k2".to_string()]),
                ("hub-1".to_string(), vec!["k1".to_string(), "k2".to_string()]),
            ])
        );
        assert_eq!(ledger.pending(), 3);
    }
}
