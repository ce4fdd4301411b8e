//! The queue runner: takes spooled messages, hands them to the transport with bounded
//! concurrency, and applies each attempt's per-recipient outcomes (retry, bounce, done).

use super::{
    attempt,
    delivery::{AnyTransport, Delivery},
};
use crate::{
    message::{MessageId, now_secs},
    metrics::Metrics,
    outbound::Transport,
    spool::{Queued, Spool},
};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

/// A message the runner holds.
#[derive(Debug, Clone)]
pub struct Item {
    /// Spool id.
    pub id: MessageId,
    /// Envelope and progress as the spool has it.
    pub meta: crate::spool::Meta,
    /// Attempts made since this process started.
    pub attempts: u32,
    /// Whether a delay notice went out (not persisted: after a restart one may go again).
    pub delay_notice_sent: bool,
}

/// What an attempt decided.
#[derive(Debug)]
pub enum Next {
    /// Every recipient is finished; the message is gone from the spool.
    Done,
    /// Some recipients remain; try again after the delay. The flag says whether the attempt
    /// failed before reaching the next hop (connection, TLS, timeout).
    Retry(Item, Duration, bool),
    /// Nothing was tried (route parked or message unreadable); try again soon without counting.
    Requeue(Item),
    /// The message cannot be read (corrupt); it was set aside.
    Dropped,
}

/// Runs the queue until `draining` is set and nothing is left, or until the task is aborted.
#[derive(Debug)]
pub struct Runner<T: Transport = AnyTransport> {
    spool: Spool,
    delivery: watch::Receiver<Arc<Delivery<T>>>,
    metrics: Metrics,
    items: HashMap<MessageId, Item>,
    ready: VecDeque<MessageId>,
    waiting: BTreeSet<(Instant, MessageId)>,
    in_flight: JoinSet<(MessageId, Next)>,
    busy: BTreeSet<MessageId>,
    /// Set after an attempt failed at connection level: probe with one message at a time.
    suspect: bool,
}

impl<T: Transport> Runner<T> {
    /// A runner over `found` (replayed at start) plus whatever arrives later.
    pub fn new(
        spool: Spool,
        delivery: watch::Receiver<Arc<Delivery<T>>>,
        metrics: Metrics,
        found: Vec<Queued>,
    ) -> Self {
        let mut r = Self {
            spool,
            delivery,
            metrics,
            items: HashMap::new(),
            ready: VecDeque::new(),
            waiting: BTreeSet::new(),
            in_flight: JoinSet::new(),
            busy: BTreeSet::new(),
            suspect: false,
        };
        for q in found {
            r.add(q);
        }
        r
    }

    fn add(&mut self, q: Queued) {
        self.ready.push_back(q.id);
        self.items.insert(
            q.id,
            Item {
                id: q.id,
                meta: q.meta,
                attempts: 0,
                delay_notice_sent: false,
            },
        );
    }

    /// Runs until drained (after `drain` turns true and the queue is empty).
    pub async fn run(
        mut self,
        mut arrivals: mpsc::UnboundedReceiver<Queued>,
        mut drain: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut compact = tokio::time::interval(Duration::from_secs(60));
        loop {
            // Take every message already committed before deciding anything: a drain must not
            // end while accepted mail still sits in the channel (it would stay undelivered
            // although there was time to deliver it).
            while let Ok(q) = arrivals.try_recv() {
                self.add(q);
            }
            self.dispatch();
            if *drain.borrow() && self.items.is_empty() && self.in_flight.is_empty() {
                self.update_gauges();
                break;
            }
            let next_due = self.waiting.first().map(|(t, _)| *t);
            tokio::select! {
                Some(q) = arrivals.recv() => self.add(q),
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => match done {
                    Ok((id, next)) => self.finish(id, next),
                    Err(e) => tracing::error!(error = %e, "delivery task failed"),
                },
                _ = sleep_until(next_due) => self.promote(),
                _ = tick.tick() => {
                    self.promote();
                    self.update_gauges();
                }
                _ = compact.tick() => { self.spool.compact().await; }
                Ok(()) = drain.changed() => {}
            }
        }
    }

    fn promote(&mut self) {
        let now = Instant::now();
        while let Some(&(t, id)) = self.waiting.first() {
            if t > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.push_back(id);
        }
    }

    fn dispatch(&mut self) {
        let delivery = self.delivery.borrow().clone();
        if delivery.transport.parked() || !self.spool.recording() {
            return;
        }
        let limit = if self.suspect { 1 } else { delivery.concurrency };
        while self.in_flight.len() < limit {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(item) = self.items.get(&id).cloned() else {
                continue;
            };
            if !self.busy.insert(id) {
                continue;
            }
            let (spool, metrics, delivery) = (self.spool.clone(), self.metrics.clone(), delivery.clone());
            self.in_flight
                .spawn(async move { (id, attempt::run(item, &spool, &delivery, &metrics).await) });
        }
    }

    fn finish(&mut self, id: MessageId, next: Next) {
        self.busy.remove(&id);
        match next {
            Next::Done | Next::Dropped => {
                self.suspect = false;
                self.items.remove(&id);
                crate::memory::shrink_sparse(&mut self.items);
            }
            Next::Retry(item, delay, connection_failure) => {
                self.suspect = connection_failure;
                self.waiting.insert((Instant::now() + delay, id));
                self.items.insert(id, item);
            }
            Next::Requeue(item) => {
                self.ready.push_back(id);
                self.items.insert(id, item);
            }
        }
    }

    fn update_gauges(&self) {
        let (mut ready_n, mut ready_b, mut wait_n, mut wait_b) = (0i64, 0i64, 0i64, 0i64);
        let waiting: BTreeSet<MessageId> = self.waiting.iter().map(|(_, id)| *id).collect();
        let mut oldest = u64::MAX;
        for (id, item) in &self.items {
            oldest = oldest.min(item.meta.envelope.received_at);
            if waiting.contains(id) {
                wait_n += 1;
                wait_b += item.meta.len as i64;
            } else {
                ready_n += 1;
                ready_b += item.meta.len as i64;
            }
        }
        let m = &self.metrics;
        m.queue_messages.with_label_values(&["ready"]).set(ready_n);
        m.queue_messages.with_label_values(&["deferred"]).set(wait_n);
        m.queue_bytes.with_label_values(&["ready"]).set(ready_b);
        m.queue_bytes.with_label_values(&["deferred"]).set(wait_b);
        let age = if oldest == u64::MAX {
            0
        } else {
            now_secs().saturating_sub(oldest)
        };
        m.oldest_age.set(age as i64);
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
