//! The runner's side of queue control ([`crate::queue::control`]): each request is carried out
//! between two scheduling steps, so it sees and changes one consistent queue.

use super::{Runner, Transport};
use crate::{
    message::{Envelope, MessageId, domain_of, now_secs},
    queue::control::{Command, Done, Filter, Flushed, Mutation, Refusal, Row, State, Status},
};
use std::collections::HashMap;
use tokio::time::Instant;

/// The diagnostic of an administrator's deletion with a bounce (RFC 3463 X.0.0: no code says
/// more, and the notice's text says what happened).
const DELETED: &str = "550 5.0.0 message deleted from the queue by the mail administrator";

impl<T: Transport> Runner<T> {
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::List(reply) => {
                let _ = reply.send(self.rows());
            }
            Command::Get(id, reply) => {
                let due = self.due();
                let found = self.items.get(&id).map(|i| (self.row(id, &due), i.meta.clone()));
                let _ = reply.send(found);
            }
            Command::Status(id, reply) => {
                let _ = reply.send(self.status(id));
            }
            Command::Flush(filter, reply) => {
                let _ = reply.send(self.flush(&filter));
            }
            Command::Retry(id, reply) => {
                let _ = reply.send(self.retry_now(id));
            }
            Command::Hold(id, reply) => {
                let _ = reply.send(self.hold(id).await);
            }
            Command::Release(id, reply) => {
                let _ = reply.send(self.release(id).await);
            }
            Command::Delete { id, bounce, reply } => {
                let _ = reply.send(self.delete(id, bounce).await);
            }
        }
        self.update_gauges();
    }

    /// When each deferred message is due.
    fn due(&self) -> HashMap<MessageId, Instant> {
        self.waiting.iter().map(|(t, id)| (*id, *t)).collect()
    }

    fn rows(&self) -> Vec<Row> {
        let due = self.due();
        let mut ids: Vec<MessageId> = self.items.keys().copied().collect();
        ids.sort_by_key(|id| (self.items[id].meta.envelope.received_at, *id));
        ids.into_iter().map(|id| self.row(id, &due)).collect()
    }

    fn row(&self, id: MessageId, due: &HashMap<MessageId, Instant>) -> Row {
        let item = &self.items[&id];
        let env = &item.meta.envelope;
        let remaining: Vec<&str> = remaining(env, &item.meta.done).collect();
        let mut domains: Vec<String> = Vec::new();
        for r in &remaining {
            let d = domain_of(r).to_ascii_lowercase();
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let now = now_secs();
        let state = if self.busy.contains(&id) {
            State::Active
        } else if self.held.contains(&id) {
            State::Held
        } else if due.contains_key(&id) {
            State::Deferred
        } else {
            State::Ready
        };
        Row {
            id: id.to_string(),
            state,
            received_at: env.received_at,
            age_seconds: now.saturating_sub(env.received_at),
            size: item.meta.len,
            sender_domain: env.sender_domain(),
            recipient_domains: domains,
            recipients: remaining.len() as u32,
            attempts: item.attempts,
            next_attempt_at: (state == State::Deferred)
                .then(|| due.get(&id))
                .flatten()
                .map(|t| now + t.saturating_duration_since(Instant::now()).as_secs()),
            last_error: item.last_error.clone(),
        }
    }

    fn status(&self, id: MessageId) -> Option<Status> {
        if let Some(item) = self.items.get(&id) {
            let row = self.row(id, &self.due());
            return Some(Status {
                id: row.id,
                state: row.state.as_str().to_owned(),
                queued: true,
                attempts: item.attempts,
                last_error: item.last_error.clone(),
            });
        }
        let (_, outcome, attempts, last_error) = self.recent.iter().rev().find(|(r, ..)| *r == id)?;
        Some(Status {
            id: id.to_string(),
            state: (*outcome).to_owned(),
            queued: false,
            attempts: *attempts,
            last_error: last_error.clone(),
        })
    }

    /// Takes `id` out of the queues of destinations that were full.
    fn unblock(&mut self, id: MessageId) {
        for queued in self.blocked.values_mut() {
            queued.retain(|b| *b != id);
        }
        self.blocked.retain(|_, q| !q.is_empty());
    }

    /// Remembers how message `id` left the queue, for [`Command::Status`].
    pub(super) fn remember(&mut self, id: MessageId, outcome: &'static str) {
        let (attempts, last_error) = self
            .items
            .get(&id)
            .map(|i| (i.attempts, i.last_error.clone()))
            .unwrap_or_default();
        if self.recent.len() >= super::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((id, outcome, attempts, last_error));
    }

    /// Makes matching deferred messages due now and opens a parked route.
    fn flush(&mut self, filter: &Filter) -> Result<Flushed, Refusal> {
        let delivery = self.delivery.borrow().clone();
        let route = delivery.transport.route().as_str();
        if let Some(asked) = &filter.route
            && asked != route
        {
            return Err(Refusal::OtherRoute {
                asked: asked.clone(),
                route: route.to_owned(),
            });
        }
        let matches = |item: &super::Item| filter.matches(remaining(&item.meta.envelope, &item.meta.done));
        let mut flushed = Vec::new();
        let items = &self.items;
        self.waiting.retain(|(_, id)| {
            let hit = items.get(id).is_some_and(matches);
            if hit {
                flushed.push(*id);
            }
            !hit
        });
        for id in flushed.iter().rev() {
            self.ready.push_front(*id);
            self.handoff_backoff.remove(id);
        }
        let held = self
            .held
            .iter()
            .filter(|id| self.items.get(id).is_some_and(matches))
            .count();
        Ok(Flushed {
            flushed: flushed.len() as u64,
            held: held as u64,
            unparked: delivery.transport.unpark(),
        })
    }

    fn retry_now(&mut self, id: MessageId) -> Mutation {
        let name = id.to_string();
        if !self.items.contains_key(&id) {
            return Err(Refusal::NotFound(name));
        }
        if self.held.contains(&id) {
            return Err(Refusal::Held(name));
        }
        if self.busy.contains(&id) {
            return Ok(done(id, "already being delivered"));
        }
        self.waiting.retain(|(_, w)| *w != id);
        self.ready.retain(|r| *r != id);
        self.unblock(id);
        self.ready.push_front(id);
        self.handoff_backoff.remove(&id);
        let unparked = self.delivery.borrow().transport.unpark();
        Ok(done(
            id,
            if unparked {
                "due now; the parked route is open for it"
            } else {
                "due now"
            },
        ))
    }

    async fn hold(&mut self, id: MessageId) -> Mutation {
        let name = id.to_string();
        if !self.items.contains_key(&id) {
            return Err(Refusal::NotFound(name));
        }
        if self.held.contains(&id) {
            return Ok(done(id, "already held"));
        }
        let shared = match self.spool.set_held(id, true).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return Err(Refusal::NotFound(name)),
            Err(e) => return Err(Refusal::Spool(e.to_string())),
        };
        self.held.insert(id);
        self.waiting.retain(|(_, w)| *w != id);
        self.ready.retain(|r| *r != id);
        self.unblock(id);
        if let Some(item) = self.items.get_mut(&id) {
            item.meta = shared;
        }
        Ok(done(
            id,
            if self.busy.contains(&id) {
                "held; the attempt already under way finishes first"
            } else {
                "held"
            },
        ))
    }

    async fn release(&mut self, id: MessageId) -> Mutation {
        let name = id.to_string();
        if !self.items.contains_key(&id) {
            return Err(Refusal::NotFound(name));
        }
        if !self.held.contains(&id) {
            return Ok(done(id, "not held"));
        }
        let shared = match self.spool.set_held(id, false).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return Err(Refusal::NotFound(name)),
            Err(e) => return Err(Refusal::Spool(e.to_string())),
        };
        self.held.remove(&id);
        if let Some(item) = self.items.get_mut(&id) {
            item.meta = shared;
        }
        if !self.busy.contains(&id) {
            self.ready.push_back(id);
        }
        Ok(done(id, "released"))
    }

    async fn delete(&mut self, id: MessageId, bounce: bool) -> Mutation {
        let name = id.to_string();
        let Some(item) = self.items.get(&id).cloned() else {
            return Err(Refusal::NotFound(name));
        };
        if self.busy.contains(&id) {
            return Err(Refusal::Busy(name));
        }
        let result = if bounce {
            self.bounce(id, &item).await?
        } else {
            "deleted without a notice".to_owned()
        };
        self.spool.remove(id).await;
        self.remember(id, "deleted");
        self.items.remove(&id);
        self.held.remove(&id);
        self.waiting.retain(|(_, w)| *w != id);
        self.ready.retain(|r| *r != id);
        self.unblock(id);
        self.handoff_backoff.remove(&id);
        self.drain_retries.remove(&id);
        crate::sync::lock(&self.stats).kept.remove(&id);
        Ok(done(id, &result))
    }

    /// Queues a failure notice (RFC 3464) for the recipients still to be delivered that want
    /// one (RFC 3461 NOTIFY), and says what it did. Nothing is deleted if it cannot be queued.
    async fn bounce(&self, id: MessageId, item: &super::Item) -> Result<String, Refusal> {
        let env = &item.meta.envelope;
        if env.is_bounce() {
            // RFC 3461 6.2 / RFC 5321 6.1: a bounce is never bounced.
            return Ok("deleted; no notice, as it is itself a notice (null sender)".into());
        }
        let entries: Vec<crate::dsn::Entry> = (0..env.recipients.len())
            .filter(|i| !item.meta.done.contains(&(*i as u32)))
            .filter(|&i| env.dsn.rcpt(i).wants().failure)
            .map(|i| crate::dsn::Entry {
                recipient: env.recipients[i].clone(),
                diagnostic: DELETED.into(),
                orcpt: env.dsn.rcpt(i).orcpt,
            })
            .collect();
        if entries.is_empty() {
            return Ok("deleted; no notice, as its recipients asked for none (NOTIFY)".into());
        }
        let original = self.spool.read(id).await.unwrap_or_default();
        let delivery = self.delivery.borrow().clone();
        let report = crate::dsn::Report {
            hostname: &delivery.hostname,
            envelope: env,
            message_id: id,
            original: &original,
            remote_mta: None,
            now: now_secs(),
        };
        let body = crate::dsn::failure(&report, &entries);
        crate::queue::attempt::queue_notice(&self.spool, &body, env)
            .await
            .map_err(|e| Refusal::Spool(e.to_string()))?;
        self.metrics.dsn_sent.with_label_values(&["failure"]).inc();
        Ok(format!("deleted; failure notice queued to <{}>", env.sender))
    }
}

/// The recipients of `env` not finished yet.
fn remaining<'a>(env: &'a Envelope, done: &'a [u32]) -> impl Iterator<Item = &'a str> + 'a {
    env.recipients
        .iter()
        .enumerate()
        .filter(|(i, _)| !done.contains(&(*i as u32)))
        .map(|(_, r)| r.as_str())
}

fn done(id: MessageId, result: &str) -> Done {
    Done {
        id: id.to_string(),
        result: result.to_owned(),
    }
}
