//! Queue control: what an administrator may ask of the runner (list, show, flush, retry, hold,
//! release, delete) and the answers, as the queue API sends them (docs/operations.md "Day two").
//! The runner owns the queue's state, so every request is a [`Command`] it carries out between
//! two scheduling steps: nothing else mutates the queue.

use crate::message::{MessageId, domain_of};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Where a message is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Due now (or waiting for its route to be unparked).
    Ready,
    /// Waiting for its next attempt.
    Deferred,
    /// Being delivered or handed off right now.
    Active,
    /// Held by an administrator: no attempt until released.
    Held,
}

impl State {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Deferred => "deferred",
            Self::Active => "active",
            Self::Held => "held",
        }
    }
}

/// One message in `queue list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The spool id (16 hex digits).
    pub id: String,
    /// Where it is.
    pub state: State,
    /// When the app got its `250` (seconds since the epoch).
    pub received_at: u64,
    /// Seconds since then.
    pub age_seconds: u64,
    /// Message bytes.
    pub size: u64,
    /// The envelope sender's domain (empty for a bounce).
    pub sender_domain: String,
    /// The domains of the recipients still to be delivered, each once, in order.
    pub recipient_domains: Vec<String>,
    /// How many recipients are still to be delivered.
    pub recipients: u32,
    /// Attempts made since this sidecar started.
    pub attempts: u32,
    /// When the next attempt is due (seconds since the epoch), for a deferred message.
    pub next_attempt_at: Option<u64>,
    /// What the last failed attempt was told.
    pub last_error: Option<String>,
}

/// One recipient in `queue show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptRow {
    /// The address as accepted.
    pub address: String,
    /// Whether it is finished (delivered, or bounced and reported).
    pub done: bool,
    /// Its RFC 3461 NOTIFY, if given.
    pub notify: Option<String>,
}

/// `queue show`: the row, the envelope and the header section (the body only when asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    /// What `queue list` shows.
    #[serde(flatten)]
    pub row: Row,
    /// The envelope sender (`""` for `<>`).
    pub sender: String,
    /// Every recipient and whether it is finished.
    pub recipient_list: Vec<RcptRow>,
    /// Whether the DKIM signature is already computed (it is prepended to the headers).
    pub signed: bool,
    /// The header section as it will be sent.
    pub headers: String,
    /// The body, with `--body` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// `queue status`: where a message is, or how it left the queue (remembered for the last 1,024
/// messages that left, since this sidecar started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The message.
    pub id: String,
    /// A queue state (`ready`, `deferred`, `active`, `held`), or how it left: `delivered`,
    /// `bounced`, `partly_bounced` (a failure notice went to the sender for some recipients),
    /// `handed_off` (to the Relay's hub), `deleted`, `quarantined`.
    pub state: String,
    /// Whether it is still queued.
    pub queued: bool,
    /// Attempts made since this sidecar started.
    pub attempts: u32,
    /// What the last failed attempt was told.
    pub last_error: Option<String>,
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Messages made due now.
    pub flushed: u64,
    /// Held messages that matched and stay held.
    pub held: u64,
    /// Whether the route was parked and is now open for a new attempt.
    pub unparked: bool,
}

/// What a mutation of one message did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The message.
    pub id: String,
    /// What happened, in words (`held`, `already held`, `bounced to <sender>`, ...).
    pub result: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such message in this sidecar's queue.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// The message is being delivered right now.
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
    /// The message is held.
    #[error("message {0} is held; release it first")]
    Held(String),
    /// A flush named a route this sidecar does not deliver by.
    #[error("this sidecar delivers by route {route}, not {asked}")]
    OtherRoute {
        /// The route asked for.
        asked: String,
        /// The route in use.
        route: String,
    },
    /// The spool could not record the change (full disk, I/O error); nothing changed.
    #[error("the spool could not record the change: {0}")]
    Spool(String),
}

/// What to flush.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only messages with a recipient still to be delivered at this domain.
    pub domain: Option<String>,
    /// Only if this is the route the queue delivers by (`smarthost`, `direct`, `capture`).
    pub route: Option<String>,
}

impl Filter {
    /// Whether a message with these remaining recipients matches the domain filter.
    pub fn matches<'a>(&self, mut recipients: impl Iterator<Item = &'a str>) -> bool {
        match &self.domain {
            None => true,
            Some(d) => recipients.any(|r| domain_of(r).eq_ignore_ascii_case(d)),
        }
    }
}

type Reply<T> = oneshot::Sender<T>;
/// The answer to a mutation of one message.
pub type Mutation = Result<Done, Refusal>;

/// A request to the runner.
#[derive(Debug)]
pub enum Command {
    /// Every message, oldest first.
    List(Reply<Vec<Row>>),
    /// One message's row and envelope progress.
    Get(
        MessageId,
        Reply<Option<(Row, std::sync::Arc<crate::spool::Meta>)>>,
    ),
    /// Where one message is, or how it left.
    Status(MessageId, Reply<Option<Status>>),
    /// Make matching deferred messages due now, and unpark the route.
    Flush(Filter, Reply<Result<Flushed, Refusal>>),
    /// Make one message due now.
    Retry(MessageId, Reply<Mutation>),
    /// Hold one message (durably).
    Hold(MessageId, Reply<Mutation>),
    /// Release a held message.
    Release(MessageId, Reply<Mutation>),
    /// Remove one message; with `bounce`, its sender gets a failure notice first.
    Delete {
        /// The message.
        id: MessageId,
        /// Whether to send a failure notice (RFC 3464) to its sender.
        bounce: bool,
        /// The answer.
        reply: Reply<Mutation>,
    },
}

/// The sending side: cheap to clone; every call waits for the runner's answer.
#[derive(Debug, Clone)]
pub struct Control(mpsc::Sender<Command>);

/// The runner is gone (the sidecar is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the queue is not running (the sidecar is stopping)")]
pub struct Stopped;

impl Control {
    /// A control handle and the runner's receiving end.
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        (Self(tx), rx)
    }

    /// Sends one request and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.0.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Parses a spool id as shown by `queue list` (16 hex digits; leading zeros may be left out).
pub fn parse_id(s: &str) -> Option<MessageId> {
    (!s.is_empty() && s.len() <= 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .map(MessageId)
}

/// At most this much of a server's reply is kept as a message's last error.
pub const LAST_ERROR_CHARS: usize = 300;
