//! A hub's memory of hand-off keys (docs/hub.md): which keys it holds and which it delivered
//! recently, so that a sidecar retrying a hand-off after a broken connection gets `250` without
//! the message being queued twice. Keys of live messages come back with the spool at start;
//! those of finished messages are kept for [`MEMORY`] (at most [`MAX_FINISHED`]), in memory.

use crate::message::MessageId;
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// How long a finished message's key is remembered. A sidecar retries a hand-off within its
/// drain (seconds); an hour covers that with a wide margin.
pub const MEMORY: Duration = Duration::from_secs(3600);
/// Most finished keys remembered (about 100 bytes each).
pub const MAX_FINISHED: usize = 100_000;

/// What a hub knows of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Being committed on some connection now.
    Pending,
    /// Queued (or delivered) as this message.
    Queued(MessageId),
}

/// The answer to a hand-off of `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// New: queue it.
    New,
    /// Already queued or delivered as this message: answer `250`, keep no copy.
    Duplicate(MessageId),
    /// Another connection is committing it now: answer `451`; the retry finds it queued.
    Busy,
}

#[derive(Debug, Default)]
pub struct Origins {
    held: HashMap<String, Held>,
    /// Finished keys, oldest first, to forget after [`MEMORY`].
    finished: VecDeque<(Instant, String)>,
}

impl Origins {
    /// Claims `key` for a message about to be committed.
    pub fn claim(&mut self, key: &str) -> Claim {
        match self.held.get(key) {
            Some(Held::Pending) => Claim::Busy,
            Some(Held::Queued(id)) => Claim::Duplicate(*id),
            None => {
                self.held.insert(key.to_owned(), Held::Pending);
                Claim::New
            }
        }
    }

    /// The claimed message is durable as `id` (also at replay).
    pub fn queued(&mut self, key: &str, id: MessageId) {
        self.held.insert(key.to_owned(), Held::Queued(id));
    }

    /// Whether `key` is held as message `id`.
    pub fn is_queued_as(&self, key: &str, id: MessageId) -> bool {
        self.held.get(key) == Some(&Held::Queued(id))
    }

    /// The claimed message could not be committed: the key is free again.
    pub fn release(&mut self, key: &str) {
        if self.held.get(key) == Some(&Held::Pending) {
            self.held.remove(key);
        }
    }

    /// The message is finished; its key is remembered for a while.
    pub fn finished(&mut self, key: &str, now: Instant) {
        self.finished.push_back((now, key.to_owned()));
        while let Some((at, _)) = self.finished.front() {
            if now.duration_since(*at) < MEMORY && self.finished.len() <= MAX_FINISHED {
                break;
            }
            // A key is queued once, so it is finished once: nothing newer names it.
            if let Some((_, old)) = self.finished.pop_front() {
                self.held.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once_and_forgotten_after_its_memory() {
        let mut o = Origins::default();
        let t0 = Instant::now();
        assert_eq!(o.claim("a"), Claim::New);
        assert_eq!(o.claim("a"), Claim::Busy, "while the first commit runs");
        o.queued("a", MessageId(7));
        assert_eq!(o.claim("a"), Claim::Duplicate(MessageId(7)));
        assert_eq!(o.claim("b"), Claim::New);
        o.release("b");
        assert_eq!(o.claim("b"), Claim::New, "a failed commit frees the key");
        o.release("b");
        o.finished("a", t0);
        assert_eq!(
            o.claim("a"),
            Claim::Duplicate(MessageId(7)),
            "remembered after delivery"
        );
        o.finished("c", t0 + MEMORY + Duration::from_secs(1));
        assert_eq!(o.claim("a"), Claim::New, "forgotten after MEMORY");
    }
}
