//! The queue runner: takes spooled messages, hands them to the transport with bounded
//! concurrency, and applies each attempt's per-recipient outcomes (retry, bounce, done).

use super::{
    attempt,
    control::{Command, Control},
    delivery::{AnyTransport, Delivery},
    handoff::{self, Kept},
    shaping::{Admission, Shaper},
};
use crate::{
    message::{MessageId, now_secs},
    metrics::Metrics,
    outbound::Transport,
    spool::{Queued, Spool},
};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
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
    /// Envelope and progress as the spool has it (the spool's own copy, shared until either
    /// side changes it).
    pub meta: Arc<crate::spool::Meta>,
    /// Attempts made since this process started.
    pub attempts: u32,
    /// Whether a delay notice went out (not persisted: after a restart one may go again).
    pub delay_notice_sent: bool,
    /// What the last failed attempt was told (`queue list`).
    pub last_error: Option<String>,
    /// Recipients delivered and failed (bounced or expired) by this process's attempts.
    pub finished: Finished,
}

impl Item {
    /// Takes the spool's copy of this message after the spool changed it, so that the two
    /// share one copy again; makes the same `change` to its own copy when the spool no longer
    /// has the message.
    pub fn adopt(
        &mut self,
        shared: Option<Arc<crate::spool::Meta>>,
        change: impl FnOnce(&mut crate::spool::Meta),
    ) {
        match shared {
            Some(meta) => self.meta = meta,
            None => change(Arc::make_mut(&mut self.meta)),
        }
    }
}

/// How a message's recipients ended, as far as this process saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// Recipients the next hop took.
    pub delivered: u32,
    /// Recipients bounced or expired.
    pub failed: u32,
    /// Attempts, the last one included (set when the message is done).
    pub attempts: u32,
}

impl Finished {
    /// `delivered`, `bounced` or `partly_bounced` (`queue status`).
    pub fn outcome(self) -> &'static str {
        match (self.delivered, self.failed) {
            (_, 0) => "delivered",
            (0, _) => "bounced",
            _ => "partly_bounced",
        }
    }
}

/// What an attempt decided.
#[derive(Debug)]
pub enum Next {
    /// Every recipient is finished; the message is gone from the spool.
    Done(Finished),
    /// Some recipients remain; try again after the delay. The flag says whether the attempt
    /// failed before reaching the next hop (connection, TLS, timeout).
    Retry(Item, Duration, bool),
    /// Nothing was tried (route parked or message unreadable); try again soon without counting.
    Requeue(Item),
    /// The message cannot be read (corrupt); it was set aside.
    Dropped,
    /// Handed to the hub: every remaining recipient is the hub's now.
    HandedOff,
    /// A hand-off was tried and the message stays here, for this reason.
    Kept(Item, Kept),
}

/// Where the sidecar is in its life; the app moves it forward on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deliver, retry, and (with `handoff.afterParkedSeconds`) hand off mail whose route has
    /// been parked that long.
    Run,
    /// SIGTERM: deliver what is ready; with a hub, hand off the rest as soon as nothing is
    /// ready (mail waiting for a retry, or a parked route); without one, keep trying until the
    /// queue is empty.
    Drain,
    /// The drain deadline is near: hand every message to the hub once, start no delivery.
    HandOff,
}

/// What the drain did, kept up to date as it goes (the app reads it even if the runner is
/// stopped at the deadline).
#[derive(Debug, Default)]
pub struct DrainStats {
    /// Messages delivered (every recipient finished) after the drain began.
    pub delivered: u64,
    /// Messages handed to the hub.
    pub handed_off: u64,
    /// Messages whose hand-off was tried and failed, and why.
    pub kept: HashMap<MessageId, Kept>,
}

/// How long a message waits after a failed hand-off before another, outside a drain.
const HANDOFF_RETRY: Duration = Duration::from_secs(60);
/// In a drain, a hand-off that could not reach the hub (a DNS or connection hiccup) is tried
/// this many times in all, this far apart, before the message is left in the pod.
const DRAIN_HANDOFF_TRIES: u32 = 10;
const DRAIN_HANDOFF_RETRY: Duration = Duration::from_secs(1);

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
    phase: Phase,
    /// Since when the route has been parked, as this runner saw it.
    parked_since: Option<Instant>,
    /// Messages being handed off now (the rest of `in_flight` are deliveries).
    handing_off: BTreeSet<MessageId>,
    /// The drain has begun handing off; it goes on doing so.
    drain_handoff: bool,
    /// Outside a drain: when a message whose hand-off failed may be offered again.
    handoff_backoff: HashMap<MessageId, Instant>,
    /// In a drain: hand-offs that did not reach the hub, how often, and when to try again.
    drain_retries: HashMap<MessageId, (u32, Instant)>,
    stats: Arc<Mutex<DrainStats>>,
    /// Held by an administrator: in `items`, never in `ready` or `waiting`.
    held: BTreeSet<MessageId>,
    /// Requests from the queue API ([`Runner::control`]).
    commands: Option<mpsc::Receiver<Command>>,
    /// How the last [`RECENT`] messages left the queue (`queue status`).
    recent: VecDeque<(MessageId, &'static str, u32, Option<String>)>,
    /// Per-destination concurrency and rate (config `shaping`), and the delivery generation it
    /// was configured from.
    shaper: Shaper,
    shaped_for: usize,
    /// Messages waiting for a destination that has all the attempts it may have, by domain.
    blocked: HashMap<String, VecDeque<MessageId>>,
    /// The destinations of each delivery under way (what the shaper counted).
    busy_domains: HashMap<MessageId, Vec<String>>,
}

/// How many finished messages `queue status` remembers.
const RECENT: usize = 1024;

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
            phase: Phase::Run,
            parked_since: None,
            handing_off: BTreeSet::new(),
            drain_handoff: false,
            handoff_backoff: HashMap::new(),
            drain_retries: HashMap::new(),
            stats: Arc::default(),
            held: BTreeSet::new(),
            commands: None,
            recent: VecDeque::new(),
            shaper: Shaper::new(&Default::default(), 1),
            shaped_for: 0,
            blocked: HashMap::new(),
            busy_domains: HashMap::new(),
        };
        for q in found {
            r.add(q);
        }
        r
    }

    /// The drain's figures, shared (see [`DrainStats`]).
    pub fn stats(&self) -> Arc<Mutex<DrainStats>> {
        self.stats.clone()
    }

    /// The handle through which the queue API asks this runner (docs/operations.md "Day two").
    pub fn control(&mut self) -> Control {
        let (control, rx) = Control::channel();
        self.commands = Some(rx);
        control
    }

    fn add(&mut self, q: Queued) {
        if q.meta.held {
            self.held.insert(q.id);
        } else {
            self.ready.push_back(q.id);
        }
        self.items.insert(
            q.id,
            Item {
                id: q.id,
                meta: q.meta,
                attempts: 0,
                delay_notice_sent: false,
                last_error: None,
                finished: Finished::default(),
            },
        );
    }

    /// Runs until drained: after `phase` leaves [`Phase::Run`], once the queue is empty, or
    /// once every message left has had its one hand-off.
    pub async fn run(
        mut self,
        mut arrivals: mpsc::UnboundedReceiver<Queued>,
        mut phase: watch::Receiver<Phase>,
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
            self.phase = *phase.borrow();
            self.dispatch();
            if self.phase != Phase::Run && self.in_flight.is_empty() && self.drained() {
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
                    self.close_stale_connections();
                }
                _ = compact.tick() => {
                    self.spool.compact().await;
                    self.shaper.prune(Instant::now().into_std());
                }
                Some(cmd) = next_command(&mut self.commands) => self.command(cmd).await,
                Ok(()) = phase.changed() => {}
            }
        }
    }

    /// Connections left idle since the last delivery are closed once stale, to the route, the
    /// hub and the hubs holding shadow copies alike, instead of waiting for the next message to
    /// find them so.
    fn close_stale_connections(&self) {
        let delivery = self.delivery.borrow().clone();
        delivery.transport.close_stale();
        if let Some(hub) = &delivery.hub {
            hub.transport.close_stale();
        }
        if let Some(shadows) = &delivery.shadows {
            shadows.close_stale();
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

    /// Whether nothing is left to do in a drain: the queue is empty, or every message left
    /// has had its hand-off.
    fn drained(&self) -> bool {
        let stats = crate::sync::lock(&self.stats);
        self.items.keys().all(|id| {
            // A held message stays in the pod: a hand-off would let the hub deliver it.
            self.held.contains(id) || (stats.kept.contains_key(id) && !self.retry_left(*id))
        })
    }

    /// Whether a hand-off that did not reach the hub in this drain is to be tried again.
    fn retry_left(&self, id: MessageId) -> bool {
        self.drain_retries
            .get(&id)
            .is_some_and(|(tries, _)| *tries < DRAIN_HANDOFF_TRIES)
    }

    /// Whether messages go to the hub now instead of their route (docs/hub.md).
    fn handing_off(&mut self, delivery: &Delivery<T>) -> bool {
        let Some(hub) = &delivery.hub else {
            return false;
        };
        let parked = delivery.transport.parked();
        self.parked_since = match (parked, self.parked_since) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or_else(Instant::now)),
        };
        match self.phase {
            Phase::HandOff => true,
            // Deliver what is ready first; what waits for a retry or a parked route goes over.
            Phase::Drain => {
                if !self.drain_handoff {
                    self.drain_handoff = (self.ready.is_empty() || parked) && self.in_flight.is_empty();
                }
                self.drain_handoff
            }
            Phase::Run => hub
                .after_parked
                .zip(self.parked_since)
                .is_some_and(|(after, since)| since.elapsed() >= after),
        }
    }

    fn dispatch(&mut self) {
        let delivery = self.delivery.borrow().clone();
        if !self.spool.recording() {
            return;
        }
        if self.handing_off(&delivery) {
            self.hand_off(&delivery);
            return;
        }
        if delivery.transport.parked() || self.phase == Phase::HandOff {
            return;
        }
        let generation = Arc::as_ptr(&delivery) as usize;
        if self.shaped_for != generation {
            self.shaper
                .configure(&delivery.shaping, delivery.destination_concurrency);
            self.shaped_for = generation;
        }
        let limit = if self.suspect { 1 } else { delivery.concurrency };
        let now = Instant::now();
        while self.in_flight.len() < limit {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(item) = self.items.get(&id).cloned() else {
                continue;
            };
            if self.busy.contains(&id) {
                continue;
            }
            // One destination's limits hold back only its own mail (docs/operations.md).
            let domains = destinations(&item);
            match self.shaper.admit(&domains, now.into_std()) {
                Admission::Go => {}
                Admission::Full(domain) => {
                    self.blocked.entry(domain).or_default().push_back(id);
                    continue;
                }
                Admission::Wait(after) => {
                    self.waiting.insert((now + after, id));
                    continue;
                }
            }
            self.busy.insert(id);
            self.busy_domains.insert(id, domains);
            let (spool, metrics, delivery) = (self.spool.clone(), self.metrics.clone(), delivery.clone());
            self.in_flight
                .spawn(async move { (id, attempt::run(item, &spool, &delivery, &metrics).await) });
        }
    }

    /// Starts a hand-off of every message not busy and not already tried in this drain, up
    /// to the hub's connections.
    fn hand_off(&mut self, delivery: &Arc<Delivery<T>>) {
        let limit = delivery.hub.as_ref().map_or(1, |h| h.transport.max_connections());
        // Shaping is for deliveries: what waited for a destination goes to the hub too.
        for (_, queued) in self.blocked.drain() {
            self.ready.extend(queued);
        }
        let waiting: Vec<MessageId> = self.waiting.iter().map(|(_, id)| *id).collect();
        self.waiting.clear();
        self.ready.extend(waiting);
        let now = Instant::now();
        let mut skipped = VecDeque::new();
        while self.handing_off.len() < limit {
            let Some(id) = self.ready.pop_front() else { break };
            let tried = match self.phase {
                Phase::Run => self.handoff_backoff.get(&id).is_some_and(|&t| t > now),
                Phase::Drain | Phase::HandOff => {
                    let due =
                        self.retry_left(id) && self.drain_retries.get(&id).is_some_and(|(_, at)| *at <= now);
                    !due && crate::sync::lock(&self.stats).kept.contains_key(&id)
                }
            };
            if tried {
                skipped.push_back(id);
                continue;
            }
            let Some(item) = self.items.get(&id).cloned() else {
                continue;
            };
            if !self.busy.insert(id) {
                continue;
            }
            self.handing_off.insert(id);
            let (spool, metrics, delivery) = (self.spool.clone(), self.metrics.clone(), delivery.clone());
            self.in_flight.spawn(async move {
                let next = match handoff::run(item, &spool, &delivery, &metrics).await {
                    Ok(Next::Done(_)) => Next::HandedOff,
                    Ok(next) => next,
                    Err((item, kept)) => Next::Kept(item, kept),
                };
                (id, next)
            });
        }
        skipped.extend(self.ready.drain(..));
        self.ready = skipped;
    }

    fn finish(&mut self, id: MessageId, next: Next) {
        self.busy.remove(&id);
        if let Some(domains) = self.busy_domains.remove(&id) {
            self.shaper.done(&domains);
            // What waited for room at these destinations goes first.
            for d in &domains {
                if let Some(queued) = self.blocked.remove(d) {
                    for waiting in queued.into_iter().rev() {
                        self.ready.push_front(waiting);
                    }
                }
            }
        }
        self.handing_off.remove(&id);
        match next {
            Next::Done(_) | Next::Dropped | Next::HandedOff => {
                let outcome = match &next {
                    Next::Done(f) => f.outcome(),
                    Next::HandedOff => "handed_off",
                    _ => "quarantined",
                };
                if let Next::Done(f) = &next
                    && let Some(item) = self.items.get_mut(&id)
                {
                    item.attempts = f.attempts;
                }
                self.remember(id, outcome);
                {
                    let mut stats = crate::sync::lock(&self.stats);
                    match (&next, self.phase) {
                        (Next::HandedOff, _) => stats.handed_off += 1,
                        (Next::Done(_), Phase::Drain | Phase::HandOff) => stats.delivered += 1,
                        _ => {}
                    }
                    stats.kept.remove(&id);
                }
                self.handoff_backoff.remove(&id);
                self.drain_retries.remove(&id);
                self.held.remove(&id);
                self.suspect = false;
                self.items.remove(&id);
                crate::memory::shrink_sparse(&mut self.items);
            }
            Next::Kept(item, kept) => {
                self.items.insert(id, item);
                if self.phase == Phase::Run {
                    self.handoff_backoff.insert(id, Instant::now() + HANDOFF_RETRY);
                } else {
                    if kept == Kept::HubUnreachable {
                        let retry = self.drain_retries.entry(id).or_insert((0, Instant::now()));
                        retry.0 += 1;
                        retry.1 = Instant::now() + DRAIN_HANDOFF_RETRY;
                    }
                    crate::sync::lock(&self.stats).kept.insert(id, kept);
                }
                if !self.held.contains(&id) {
                    self.ready.push_back(id);
                }
            }
            Next::Retry(item, delay, connection_failure) => {
                // A smarthost that does not answer is probed with one message at a time; with
                // direct delivery one domain's dead MX says nothing about the others.
                self.suspect = connection_failure
                    && self.delivery.borrow().transport.route() != crate::outbound::Route::Direct;
                if !self.held.contains(&id) {
                    self.waiting.insert((Instant::now() + delay, id));
                }
                self.items.insert(id, item);
            }
            Next::Requeue(item) => {
                if !self.held.contains(&id) {
                    self.ready.push_back(id);
                }
                self.items.insert(id, item);
            }
        }
    }

    fn update_gauges(&self) {
        // [ready, deferred, held] as (messages, bytes).
        let mut by_state = [(0i64, 0i64); 3];
        let waiting: BTreeSet<MessageId> = self.waiting.iter().map(|(_, id)| *id).collect();
        let mut oldest = u64::MAX;
        for (id, item) in &self.items {
            oldest = oldest.min(item.meta.envelope.received_at);
            let state = if self.held.contains(id) {
                2
            } else if waiting.contains(id) {
                1
            } else {
                0
            };
            by_state[state].0 += 1;
            by_state[state].1 += item.meta.len as i64;
        }
        let m = &self.metrics;
        for (state, (n, bytes)) in ["ready", "deferred", "held"].into_iter().zip(by_state) {
            m.queue_messages.with_label_values(&[state]).set(n);
            m.queue_bytes.with_label_values(&[state]).set(bytes);
        }
        let age = if oldest == u64::MAX {
            0
        } else {
            now_secs().saturating_sub(oldest)
        };
        m.oldest_age.set(age as i64);
    }
}

/// The destinations of a message: the domains of its recipients still to be delivered, each
/// once, lower case.
fn destinations(item: &Item) -> Vec<String> {
    let env = &item.meta.envelope;
    let mut out: Vec<String> = Vec::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if item.meta.done.contains(&(i as u32)) {
            continue;
        }
        let d = crate::message::domain_of(r).to_ascii_lowercase();
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

async fn next_command(rx: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

mod commands;
#[cfg(test)]
mod tests;
