//! MailDomain reconcile: `observe` (ensure the signing key's Secret, created once and never
//! replaced; read the other keys; ask DNS), run the pure rotation plan (`crate::rotation`) and carry
//! out its steps, build status from the answers (pure), patch it, then publish the events.

mod keys;
mod publish;
mod report;
mod status;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};

pub use keys::{KEY_LABEL, PRIVATE_KEY, key_secret_name};

use self::status::Answers;
use super::{Context, now, write_status};
use crate::{
    Error, Result,
    conditions::{self, Cond, DKIM_KEY_READY, DNS_PUBLISHED, READY},
    crd::{MailDomain, MailDomainStatus},
    dkim::KeyPair,
    events::Notes,
    records,
    rotation::{self, Observed, Policy, ROTATE_ANNOTATION, Step},
};

/// Reconciles one MailDomain.
pub async fn reconcile(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("MailDomain");
    let name = md.name_any();
    let api: Api<MailDomain> = Api::all(ctx.client.clone());
    let old = md.status.clone().unwrap_or_default();
    let mut status = MailDomainStatus {
        conditions: old.conditions.clone(),
        observed_generation: md.metadata.generation,
        dkim: old.dkim.clone(),
        dns_records: old.dns_records.clone(),
    };
    let generation = md.metadata.generation;
    let t = now();
    let mut notes = Notes::default();
    let (action, set, steps) = match converge(&md, &ctx, &t, &mut status, &mut notes).await {
        Ok((wake, set, steps)) => (Action::requeue(wake), set, steps),
        Err(e) if e.is_spec_error() || matches!(e, Error::KeyGeneration(_)) => {
            let msg = format!("MailDomain {name}: {e}");
            ctx.metrics.failure("MailDomain", e.metric_label());
            let set = vec![
                Cond::no(DKIM_KEY_READY, e.reason(), msg.clone()),
                Cond::no(READY, e.reason(), msg),
            ];
            (Action::await_change(), set, Vec::new())
        }
        Err(e) => {
            // Nothing is written; the retry announces the rest, but not a key generated now.
            ctx.events.publish(&*md, notes.outgoing(false)).await;
            return Err(e);
        }
    };
    notes.push(report::notes(&md, &old.conditions, &set, &steps));
    for cond in set {
        conditions::set(&mut status.conditions, cond, generation, &t);
    }
    ctx.metrics.set_ready(
        "MailDomain",
        "",
        &name,
        conditions::is_true(&status.conditions, READY),
    );
    write_status(&ctx, &api, &*md, &status, notes).await?;
    Ok(action)
}

/// Brings keys, DNS findings and status in line; returns when to look again, the conditions to
/// set and the rotation steps taken.
async fn converge(
    md: &MailDomain,
    ctx: &Context,
    t: &Time,
    status: &mut MailDomainStatus,
    notes: &mut Notes,
) -> Result<(Duration, Vec<Cond>, Vec<Step>)> {
    let name = md.name_any();
    let policy = Policy::of(&md.spec.dkim);
    let Seen {
        state,
        mut pairs,
        mut answers,
        verified,
        pending,
        retiring,
        unknown,
        found,
    } = observe(md, ctx, notes).await?;
    let trigger = md.annotations().get(ROTATE_ANNOTATION).filter(|v| !v.is_empty());
    let mut plan = rotation::plan(
        &state,
        &policy,
        &Observed {
            name: &name,
            base_selector: &md.spec.dkim.selector,
            trigger: trigger.map(String::as_str),
            verified: &verified,
            pending_secret_present: pending,
            retiring_secret_present: retiring,
            unknown: &unknown,
            now: t.0,
        },
    );
    carry_out(md, ctx, &mut plan, &found, &mut pairs).await?;
    let wanted: Vec<String> = status::wanted(md, &plan.state, &pairs)
        .into_iter()
        .map(|(record, _)| record.name)
        .collect();
    ask(ctx, &mut answers, &wanted).await;
    let built = status::build(md, &plan.state, &policy, &pairs, &answers, &now());
    for record in &built.dns_records {
        // The `dkim` gauge follows the signing key's record only; a pending record is not yet
        // expected to resolve (the rotation gauges cover it).
        if record.key.as_deref().is_none_or(|role| role == "active") {
            ctx.metrics
                .set_dns(&md.spec.domain, &record.purpose, record.verified);
        }
    }
    status.dns_records = built.dns_records;
    status.dkim = Some(built.dkim);
    let mut set = built.conditions;
    let was_publishing = conditions::get(&status.conditions, DNS_PUBLISHED).is_some();
    let publishing = match publish::sync(md, ctx, &status.dns_records, was_publishing).await? {
        publish::Published::Off => {
            conditions::remove(&mut status.conditions, DNS_PUBLISHED);
            false
        }
        publish::Published::On(cond) => {
            set.push(cond);
            true
        }
    };
    ctx.metrics.set_rotation(
        &name,
        &md.spec.domain,
        plan.state.phase(),
        plan.state.active_since.as_second(),
        plan.state.pending.as_ref().map(|k| k.created.as_second()),
    );
    let mut wake = wake(ctx.settings.dns_recheck, plan.wake_at, t);
    if publishing && status.dns_records.iter().any(|r| !r.verified) {
        // external-dns publishes on its own schedule (`--interval`, 1 min by default); look
        // sooner than the DNS recheck so that a rotation waiting for its record moves on.
        wake = wake.min(PUBLISH_RECHECK);
    }
    Ok((wake, set, plan.steps))
}

/// How often DNS is asked while records the operator published are not served yet.
const PUBLISH_RECHECK: Duration = Duration::from_secs(15);

/// When to look again: at the DNS recheck interval, or sooner when the plan has a deadline.
fn wake(recheck: Duration, wake_at: Option<Timestamp>, t: &Time) -> Duration {
    let Some(at) = wake_at else {
        return recheck;
    };
    let left = at.duration_since(t.0).as_secs().max(0).unsigned_abs();
    // At least a second: a timer that fires a hair early must not spin.
    recheck.min(Duration::from_secs(left.max(1)))
}

/// What the rotation plan and status building need from the cluster and DNS.
struct Seen {
    /// The rotation state recorded in status, with the signing key as read.
    state: rotation::State,
    /// Every readable key of `state`, by selector.
    pairs: BTreeMap<String, KeyPair>,
    /// DNS answers so far (the DKIM names of `pairs`).
    answers: Answers,
    /// Selectors whose DKIM record DNS serves.
    verified: Vec<String>,
    /// Whether the pending key's Secret holds a readable key.
    pending: bool,
    /// Whether the retiring key's Secret holds a readable key.
    retiring: bool,
    /// Key Secrets of this MailDomain that status does not know.
    unknown: Vec<rotation::Key>,
    /// Those Secrets by name, for the plan to resume one.
    found: BTreeMap<String, Secret>,
}

/// Every key read of this reconcile, before it plans: ensures the signing key (generating the
/// first one, noted in `notes`), reads the pending and retiring keys, asks DNS for every key's
/// record, and lists the key Secrets that status does not know (with their keys, so that resuming
/// one needs no second read).
async fn observe(md: &MailDomain, ctx: &Context, notes: &mut Notes) -> Result<Seen> {
    let (active, created, generated) = keys::ensure_active(md, ctx).await?;
    if generated {
        // Noted at once: a retry finds the Secret and would never announce it.
        notes.once(report::generated(md));
    }
    let state = status::state(md, &active, created);
    let mut pairs = BTreeMap::from([(state.active.selector.clone(), active)]);
    let pending = load(md, ctx, state.pending.as_ref(), &mut pairs).await?;
    let retiring = load(md, ctx, state.retiring.as_ref().map(|(k, _)| k), &mut pairs).await?;
    let dkim: Vec<String> = pairs
        .iter()
        .map(|(selector, pair)| records::dkim(&md.spec.domain, selector, &pair.txt_value()).name)
        .collect();
    let mut answers = Answers::default();
    ask(ctx, &mut answers, &dkim).await;
    let verified = status::verified(md, &pairs, &answers);
    let mut known: Vec<&str> = vec![&state.active.secret_name];
    known.extend(state.pending.iter().map(|k| k.secret_name.as_str()));
    known.extend(state.retiring.iter().map(|(k, _)| k.secret_name.as_str()));
    let (unknown, found) = keys::unknown(md, ctx, &known)
        .await?
        .into_iter()
        .map(|(key, secret)| (key.clone(), (key.secret_name, secret)))
        .unzip();
    Ok(Seen {
        state,
        pairs,
        answers,
        verified,
        pending,
        retiring,
        unknown,
        found,
    })
}

/// Asks DNS for each of `names` not yet asked in this reconcile, so a name is asked once.
async fn ask(ctx: &Context, answers: &mut Answers, names: &[String]) {
    for name in names {
        if !answers.has(name) {
            let answer = ctx.dns.txt(name).await;
            answers.insert(name.clone(), answer);
        }
    }
}

/// Creates the new key and deletes retired or cancelled ones, as `plan` says; takes a resumed
/// key from the Secrets `observe` found; records the pending key's fingerprint in the plan's state.
async fn carry_out(
    md: &MailDomain,
    ctx: &Context,
    plan: &mut rotation::Plan,
    found: &BTreeMap<String, Secret>,
    pairs: &mut BTreeMap<String, KeyPair>,
) -> Result<()> {
    if let Some(new) = &plan.create {
        let pair = keys::create_rotated(md, ctx, new).await?;
        pairs.insert(new.selector.clone(), pair);
    }
    if let Some(Step::Resumed(key)) = plan.steps.last()
        && let Some(pair) = found.get(&key.secret_name).and_then(|s| keys::read(md, s))
    {
        pairs.insert(key.selector.clone(), pair);
    }
    if let Some(p) = plan.state.pending.as_mut()
        && let Some(pair) = pairs.get(&p.selector)
    {
        p.fingerprint = pair.fingerprint();
    }
    for secret in &plan.delete {
        keys::delete(ctx, secret).await?;
    }
    Ok(())
}

/// Reads `key`'s Secret into `pairs`; whether it held a readable key.
async fn load(
    md: &MailDomain,
    ctx: &Context,
    key: Option<&rotation::Key>,
    pairs: &mut BTreeMap<String, KeyPair>,
) -> Result<bool> {
    let Some(key) = key else {
        return Ok(false);
    };
    match keys::read_opt(md, ctx, &key.secret_name).await? {
        Some(pair) => {
            pairs.insert(key.selector.clone(), pair);
            Ok(true)
        }
        None => Ok(false),
    }
}
