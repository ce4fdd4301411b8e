//! Idle connections kept for reuse, for both transports: the smarthost keys them by `()`, direct
//! delivery by destination address and security demand. A connection is reused only while it is
//! fresh and the server has neither closed it nor said anything since (a `421` before closing,
//! RFC 5321 3.8); anything else is dropped. No `RSET` is sent to find out: a completed
//! transaction leaves nothing to reset (RFC 5321 4.1.1.4), and a server that closes the
//! connection just as it is reused is met by the transports' one retry on a new connection.

use super::starttls::Opened;
use crate::sync::lock;
use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A pooled connection idle longer than this is closed rather than reused; servers may drop
/// idle clients after 5 minutes (RFC 5321 4.5.3.2.7), so stay well below that.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

struct Idle {
    opened: Opened,
    since: Instant,
}

/// The pool.
pub(crate) struct Pool<K> {
    idle: Mutex<HashMap<K, Vec<Idle>>>,
}

impl<K> std::fmt::Debug for Pool<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.len()).finish()
    }
}

impl<K> Pool<K> {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Idle connections now.
    pub fn len(&self) -> usize {
        lock(&self.idle).values().map(Vec::len).sum()
    }

    /// Closes every connection idle for [`IDLE_TIMEOUT`] or longer at `now`: a server should
    /// not see us hold connections we no longer use (Postfix's connection cache keeps one 2 s),
    /// and each holds buffers in a sidecar that has gone quiet. QUIT (RFC 5321 4.1.1.10) goes
    /// out in the background, each given at most `limit`: the caller does not wait for slow
    /// servers.
    pub fn close_stale(&self, now: Instant, limit: Duration) {
        let stale = self.take_stale(now);
        if stale.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let quits = stale.into_iter().map(|mut opened| async move {
                let _ = tokio::time::timeout(limit, opened.conn.quit()).await;
            });
            futures_util::future::join_all(quits).await;
        });
    }

    fn take_stale(&self, now: Instant) -> Vec<Opened> {
        let mut idle = lock(&self.idle);
        let mut stale = Vec::new();
        for list in idle.values_mut() {
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = list
                .drain(..)
                .partition(|i| now.saturating_duration_since(i.since) >= IDLE_TIMEOUT);
            *list = fresh;
            stale.extend(old.into_iter().map(|i| i.opened));
        }
        idle.retain(|_, list| !list.is_empty());
        stale
    }

    /// Takes every idle connection out (to close them at shutdown).
    pub fn drain(&self) -> Vec<Opened> {
        lock(&self.idle)
            .drain()
            .flat_map(|(_, list)| list)
            .map(|i| i.opened)
            .collect()
    }
}

impl<K: Eq + Hash> Pool<K> {
    /// Keeps `opened` for the next message to `key`, if the last transaction left it usable.
    pub fn give_back(&self, key: K, opened: Opened, reusable: bool) {
        if reusable && !opened.conn.has_broken() {
            let idle = Idle {
                opened,
                since: Instant::now(),
            };
            lock(&self.idle).entry(key).or_default().push(idle);
        }
    }

    /// The most recently used idle connection to `key` that is fresh and quiet; stale ones met
    /// on the way are dropped.
    pub fn take(&self, key: &K) -> Option<Opened> {
        loop {
            let idle = lock(&self.idle).get_mut(key).and_then(Vec::pop)?;
            let mut opened = idle.opened;
            if idle.since.elapsed() < IDLE_TIMEOUT && opened.handoff.quiet() {
                opened.reused = true;
                return Some(opened);
            }
        }
    }
}
