//! A [`Transport`] that decides each recipient's outcome by a rule and records every call, so a
//! test can drive the queue runner without a network.

use crate::{
    message::{Envelope, Recipient},
    outbound::{Outcome, RcptResult, ReplyClass, Route, Transport},
    sync::lock,
};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;

/// One `deliver` call as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The envelope sender.
    pub sender: String,
    /// The recipients tried.
    pub recipients: Vec<String>,
    /// The message bytes as handed over (with any DKIM-Signature the attempt prepended).
    pub message: Vec<u8>,
}

type Rule = Box<dyn Fn(&str) -> RcptResult + Send + Sync>;

/// The fake. Cheap to clone: clones share the rule, the call log and the parked flag.
#[derive(Clone)]
pub struct FakeTransport {
    inner: Arc<Inner>,
}

struct Inner {
    route: Route,
    rule: Mutex<Rule>,
    calls: Mutex<Vec<Call>>,
    count: watch::Sender<usize>,
    parked: AtomicBool,
    latency: Mutex<Duration>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stale_sweeps: AtomicUsize,
}

impl std::fmt::Debug for FakeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTransport")
            .field("route", &self.inner.route)
            .field("calls", &self.calls().len())
            .finish_non_exhaustive()
    }
}

/// The outcome for a recipient by its local part, the default rule: `defer…` gets a `451`,
/// `bounce…` a `550`, `refuse…` a refused connection, anything else is delivered.
pub fn by_local_part(rcpt: &str) -> RcptResult {
    let local = rcpt.split('@').next().unwrap_or("");
    let (outcome, class, diagnostic) = if local.starts_with("defer") {
        (
            Outcome::Deferred,
            ReplyClass::Transient,
            "451 4.3.0 try again later",
        )
    } else if local.starts_with("bounce") {
        (Outcome::Bounced, ReplyClass::Permanent, "550 5.1.1 no such user")
    } else if local.starts_with("refuse") {
        (Outcome::Deferred, ReplyClass::Connection, "connection refused")
    } else {
        (Outcome::Delivered, ReplyClass::Ok, "250 2.0.0 queued")
    };
    RcptResult {
        outcome,
        class,
        diagnostic: diagnostic.into(),
        next_hop_dsn: false,
        remote: None,
    }
}

impl FakeTransport {
    /// A fake for `route` that follows [`by_local_part`].
    pub fn new(route: Route) -> Self {
        Self {
            inner: Arc::new(Inner {
                route,
                rule: Mutex::new(Box::new(by_local_part)),
                calls: Mutex::new(Vec::new()),
                count: watch::channel(0).0,
                parked: AtomicBool::new(false),
                latency: Mutex::new(Duration::ZERO),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                stale_sweeps: AtomicUsize::new(0),
            }),
        }
    }

    /// Replaces the rule (e.g. to make a route come back).
    pub fn set_rule(&self, rule: impl Fn(&str) -> RcptResult + Send + Sync + 'static) {
        *lock(&self.inner.rule) = Box::new(rule);
    }

    /// Parks or un-parks the route.
    pub fn set_parked(&self, parked: bool) {
        self.inner.parked.store(parked, Ordering::SeqCst);
    }

    /// Makes every call take `latency` (to hold attempts in flight).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.inner.latency) = latency;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// How often the queue asked it to close stale pooled connections.
    pub fn stale_sweeps(&self) -> usize {
        self.inner.stale_sweeps.load(Ordering::SeqCst)
    }

    /// The most calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Resets the in-flight high-water mark.
    pub fn reset_max_in_flight(&self) {
        self.inner.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Waits until at least `n` calls were made; `Err` with the count at the deadline.
    pub async fn wait_for_calls(&self, n: usize, deadline: Duration) -> Result<(), usize> {
        let mut rx = self.inner.count.subscribe();
        let reached = matches!(
            tokio::time::timeout(deadline, rx.wait_for(|&c| c >= n)).await,
            Ok(Ok(_))
        );
        if reached { Ok(()) } else { Err(*rx.borrow()) }
    }
}

impl Transport for FakeTransport {
    fn route(&self) -> Route {
        self.inner.route
    }

    async fn deliver(&self, envelope: &Envelope, rcpts: &[Recipient], message: &[u8]) -> Vec<RcptResult> {
        let now = self.inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let latency = *lock(&self.inner.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let results = {
            let rule = lock(&self.inner.rule);
            rcpts.iter().map(|r| rule(&r.address)).collect()
        };
        lock(&self.inner.calls).push(Call {
            sender: envelope.sender.clone(),
            recipients: rcpts.iter().map(|r| r.address.clone()).collect(),
            message: message.to_vec(),
        });
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.count.send_modify(|c| *c += 1);
        results
    }

    fn close_stale(&self) {
        self.inner.stale_sweeps.fetch_add(1, Ordering::SeqCst);
    }

    fn parked(&self) -> bool {
        self.inner.parked.load(Ordering::SeqCst)
    }
}

/// A rule under which every recipient is delivered (a route that came back).
pub fn by_local_part_ok(_rcpt: &str) -> RcptResult {
    RcptResult {
        outcome: Outcome::Delivered,
        class: ReplyClass::Ok,
        diagnostic: "250 2.0.0 queued".into(),
        next_hop_dsn: false,
        remote: None,
    }
}
