//! Pure DKIM key rotation: given the rotation policy, the keys in status, what live DNS serves and
//! the time, decide the next state and the steps (create, switch, retire) the reconciler performs.
//! Signing never moves to a key whose record does not resolve, and the signing key is never
//! deleted.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{DEFAULT_GRACE_SECONDS, DkimSpec, RotationPhase};

/// Annotation on a MailDomain that starts a rotation now: each new value starts one.
pub const ROTATE_ANNOTATION: &str = "mailroom.dev/rotate-dkim";
/// A DNS label holds at most 63 octets (RFC 1035 2.3.4).
const LABEL_MAX: usize = 63;

/// One key, as status and its Secret describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Selector the key is published under.
    pub selector: String,
    /// Secret (in the operator's namespace) holding it.
    pub secret_name: String,
    /// `sha256:<hex>` of the public key; empty for a key still to be created.
    pub fingerprint: String,
    /// When it was created.
    pub created: Timestamp,
}

/// The keys of one MailDomain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The signing key.
    pub active: Key,
    /// When the signing key started signing.
    pub active_since: Timestamp,
    /// A new key waiting for its DNS record.
    pub pending: Option<Key>,
    /// The previous key and when it retires.
    pub retiring: Option<(Key, Timestamp)>,
    /// The last key retired, and when.
    pub retired: Option<(Key, Timestamp)>,
    /// The last `mailroom.dev/rotate-dkim` value acted on.
    pub token: Option<String>,
}

/// When to rotate and how long to keep the previous key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Rotate after the signing key has signed this long; `None`: only on request.
    pub period: Option<Duration>,
    /// Keep the previous key published this long after the switch.
    pub grace: Duration,
}

/// What the reconciler observed, besides the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<'a> {
    /// The MailDomain's name (Secret names derive from it).
    pub name: &'a str,
    /// `spec.dkim.selector`: the base of new selectors.
    pub base_selector: &'a str,
    /// The annotation's value, if set.
    pub trigger: Option<&'a str>,
    /// Selectors whose DKIM record live DNS serves with the key's value.
    pub verified: &'a [String],
    /// Whether the pending key's Secret exists.
    pub pending_secret_present: bool,
    /// Whether the retiring key's Secret exists.
    pub retiring_secret_present: bool,
    /// Labelled key Secrets that status does not mention (a run that stopped between creating a
    /// Secret and recording it).
    pub unknown: &'a [Key],
    /// The time.
    pub now: Timestamp,
}

/// A transition, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new key is to be created and published next to the signing one.
    Started(Key),
    /// A key found in a Secret became the pending key instead of creating another.
    Resumed(Key),
    /// Signing moved to this key; the previous one retires at the given time.
    Switched(Key, Timestamp),
    /// The previous key retired: delete its Secret; its DNS record may be removed.
    Retired(Key),
    /// The pending key was dropped before it ever signed.
    Cancelled(Key, Cancel),
}

/// Why a pending key was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Neither `spec.dkim.rotation` nor the annotation asks for rotation any more.
    NotWanted,
    /// Its Secret disappeared.
    SecretLost,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The state to record.
    pub state: State,
    /// Transitions taken, in order.
    pub steps: Vec<Step>,
    /// A key to generate and store in this Secret under this selector (it is `state.pending`).
    pub create: Option<Key>,
    /// Secrets to delete (never the signing key's).
    pub delete: Vec<String>,
    /// When to look again (next rotation or retirement), besides the DNS recheck.
    pub wake_at: Option<Timestamp>,
}

// === impl Policy ===

impl Policy {
    /// The policy of `spec.dkim`.
    pub fn of(spec: &DkimSpec) -> Self {
        let rotation = spec.rotation.as_ref();
        Self {
            period: rotation.map(|r| Duration::from_secs(r.period_seconds)),
            grace: Duration::from_secs(rotation.map_or(DEFAULT_GRACE_SECONDS, |r| r.grace_seconds)),
        }
    }
}

// === impl State ===

impl State {
    /// The phase this state is in.
    pub fn phase(&self) -> RotationPhase {
        match (&self.pending, &self.retiring) {
            (Some(_), _) => RotationPhase::Pending,
            (None, Some(_)) => RotationPhase::Retiring,
            (None, None) => RotationPhase::Stable,
        }
    }

    /// When the next rotation is due under `policy`, if one is scheduled.
    pub fn next_rotation(&self, policy: &Policy) -> Option<Timestamp> {
        let period = policy.period?;
        (self.phase() == RotationPhase::Stable).then(|| add(self.active_since, period))
    }
}

/// Decides the next state. Steps run in this order, so one call can both retire the previous
/// key and start the next rotation: retire, cancel, switch, start.
pub fn plan(state: &State, policy: &Policy, seen: &Observed<'_>) -> Plan {
    let mut out = Plan {
        state: state.clone(),
        steps: Vec::new(),
        create: None,
        delete: Vec::new(),
        wake_at: None,
    };
    retire(&mut out, seen);
    cancel(&mut out, policy, seen);
    switch(&mut out, policy, seen);
    start(&mut out, policy, seen);
    // Never delete the signing key, whatever status claimed.
    let active = out.state.active.secret_name.clone();
    out.delete.retain(|s| *s != active);
    out.wake_at = match (&out.state.retiring, out.state.next_rotation(policy)) {
        (Some((_, at)), _) => Some(*at),
        (None, next) => next,
    };
    out
}

fn retire(out: &mut Plan, seen: &Observed<'_>) {
    let Some((key, at)) = out.state.retiring.clone() else {
        return;
    };
    if seen.now >= at || !seen.retiring_secret_present {
        out.delete.push(key.secret_name.clone());
        out.state.retiring = None;
        out.state.retired = Some((key.clone(), seen.now));
        out.steps.push(Step::Retired(key));
    }
}

fn cancel(out: &mut Plan, policy: &Policy, seen: &Observed<'_>) {
    let Some(key) = out.state.pending.clone() else {
        return;
    };
    let why = if !seen.pending_secret_present {
        Cancel::SecretLost
    } else if policy.period.is_none() && seen.trigger.is_none() {
        Cancel::NotWanted
    } else {
        // A trigger while pending joins this rotation rather than queueing another.
        if seen.trigger.is_some() {
            out.state.token = seen.trigger.map(String::from);
        }
        return;
    };
    out.delete.push(key.secret_name.clone());
    out.state.pending = None;
    out.steps.push(Step::Cancelled(key, why));
}

fn switch(out: &mut Plan, policy: &Policy, seen: &Observed<'_>) {
    let Some(key) = out.state.pending.clone() else {
        return;
    };
    // Switch only once DNS serves the new key, and only with no key still retiring.
    if !seen.verified.contains(&key.selector) || out.state.retiring.is_some() {
        return;
    }
    let retire_at = add(seen.now, policy.grace);
    let previous = std::mem::replace(&mut out.state.active, key.clone());
    out.state.active_since = seen.now;
    out.state.pending = None;
    out.state.retiring = Some((previous, retire_at));
    out.steps.push(Step::Switched(key, retire_at));
}

fn start(out: &mut Plan, policy: &Policy, seen: &Observed<'_>) {
    if out.state.phase() != RotationPhase::Stable {
        return;
    }
    let triggered = seen.trigger.is_some() && seen.trigger != out.state.token.as_deref();
    let due = out.state.next_rotation(policy).is_some_and(|at| seen.now >= at);
    if !(triggered || due) {
        return;
    }
    if triggered {
        out.state.token = seen.trigger.map(String::from);
    }
    // Resume a rotation whose Secret was created but never recorded, instead of making another.
    let since = out.state.active_since;
    if let Some(found) = seen
        .unknown
        .iter()
        .filter(|k| k.created > since && k.secret_name != out.state.active.secret_name)
        .max_by_key(|k| k.created)
    {
        out.state.pending = Some(found.clone());
        out.steps.push(Step::Resumed(found.clone()));
        return;
    }
    let key = Key {
        selector: selector(seen.base_selector, seen.now),
        secret_name: format!("dkim-{}-{}", seen.name, suffix(seen.now)),
        fingerprint: String::new(),
        created: seen.now,
    };
    out.state.pending = Some(key.clone());
    out.create = Some(key.clone());
    out.steps.push(Step::Started(key));
}

/// The selector of a key created at `at`: `<base>-<yyyymmdd>-<hhmmss>` (UTC), the base shortened
/// so the whole stays one DNS label.
pub fn selector(base: &str, at: Timestamp) -> String {
    let suffix = suffix(at);
    let room = LABEL_MAX - suffix.len() - 1;
    let base = base
        .get(..room.min(base.len()))
        .unwrap_or(base)
        .trim_end_matches('-');
    format!("{base}-{suffix}")
}

fn suffix(at: Timestamp) -> String {
    at.strftime("%Y%m%d-%H%M%S").to_string()
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests;
