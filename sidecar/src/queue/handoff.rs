//! Handing one message to the Relay's hub (docs/hub.md): signed here if it was not yet (the hub
//! never signs a hand-off), only its remaining recipients, with its DSN parameters, its arrival
//! time and its hand-off key (the XHANDOFF extension, [`crate::message::handoff`]). The message
//! leaves this spool only after the hub's `250`.

use super::{
    attempt,
    delivery::Delivery,
    runner::{Item, Next},
    trail::{Event, Line},
};
use crate::{
    message::Recipient,
    metrics::Metrics,
    outbound::{Outcome, ReplyClass, Transport},
    spool::Spool,
};

/// Why a message stayed in this spool after its hand-off was tried (drain report, log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kept {
    /// The hub could not be reached, or did not answer in time.
    HubUnreachable,
    /// The hub answered, but not with `250` for every recipient.
    HubRefused,
    /// The message could not be read from the spool.
    Unreadable,
    /// No hand-off was tried before the drain deadline.
    NoTime,
}

impl Kept {
    /// Log and report value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HubUnreachable => "hub_unreachable",
            Self::HubRefused => "hub_refused",
            Self::Unreadable => "unreadable",
            Self::NoTime => "no_time",
        }
    }
}

/// Offers `item` to the hub once. `Next::Done` once the hub took every remaining recipient;
/// otherwise the item comes back with the reason, and the recipients the hub took are recorded.
pub async fn run<T: Transport>(
    mut item: Item,
    spool: &Spool,
    d: &Delivery<T>,
    metrics: &Metrics,
) -> Result<Next, (Item, Kept)> {
    let id = item.id;
    let Some(hub) = &d.hub else {
        return Err((item, Kept::HubUnreachable));
    };
    let hub = &hub.transport;
    let mut bytes = match spool.read(id).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Next::Dropped),
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "cannot read spooled message for the hand-off");
            return Err((item, Kept::Unreadable));
        }
    };
    if item.meta.signature.is_none()
        && let Some(header) = attempt::sign(d, &bytes, metrics)
    {
        let shared = spool.set_signature(id, header.clone()).await;
        bytes.splice(0..0, header.bytes());
        item.adopt(shared, |m| m.signature = Some(header));
    }
    let mut envelope = item.meta.envelope.clone();
    envelope.origin = Some(spool.handoff_key(id));
    let remaining: Vec<u32> = (0..envelope.recipients.len() as u32)
        .filter(|i| !item.meta.done.contains(i))
        .collect();
    let rcpts: Vec<Recipient> = remaining
        .iter()
        .filter_map(|&i| envelope.recipient(i as usize))
        .collect();
    if rcpts.is_empty() {
        spool.remove(id).await;
        return Ok(Next::Done(Default::default()));
    }
    let results = hub.deliver(&envelope, &rcpts, &bytes).await;
    let line = Line {
        id,
        envelope: &envelope,
        route: hub.route(),
        attempt: item.attempts + 1,
    };
    for (&i, r) in remaining.iter().zip(&results) {
        if r.outcome == Outcome::Delivered {
            let address = envelope.recipients.get(i as usize).map_or("", String::as_str);
            d.trail.log(&line, address, Event::HandedOff, Some(r));
        }
    }
    let taken: Vec<u32> = remaining
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.outcome == Outcome::Delivered)
        .map(|(&i, _)| i)
        .collect();
    if taken.len() == remaining.len() {
        metrics.handoff.with_label_values(&["accepted"]).inc();
        tracing::info!(message_id = %id, recipients = taken.len(), handoff_key = %envelope.origin.as_deref().unwrap_or(""), "handed off to the hub");
        spool.remove(id).await;
        return Ok(Next::Done(Default::default()));
    }
    let shared = spool.recipients_done(id, &taken).await;
    item.adopt(shared, |m| m.done.extend_from_slice(&taken));
    let answered = results.iter().any(|r| {
        r.outcome != Outcome::Delivered
            && matches!(
                r.class,
                ReplyClass::Transient | ReplyClass::Permanent | ReplyClass::Auth
            )
    });
    let (label, kept) = if answered {
        ("refused", Kept::HubRefused)
    } else {
        ("failed", Kept::HubUnreachable)
    };
    metrics.handoff.with_label_values(&[label]).inc();
    let diagnostic = results
        .iter()
        .find(|r| r.outcome != Outcome::Delivered)
        .map_or("", |r| r.diagnostic.as_str());
    tracing::warn!(message_id = %id, reason = kept.as_str(), %diagnostic, "hand-off to the hub failed; the message stays here");
    Err((item, kept))
}
