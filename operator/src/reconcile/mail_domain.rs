//! MailDomain reconcile: ensure the signing key's Secret (create once, never replace), check the
//! records in live DNS, run the pure rotation plan (`crate::rotation`) and carry out its steps,
//! patch status, and publish events on transitions.

mod keys;
mod report;
mod status;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kube::{Api, ResourceExt, runtime::controller::Action};

pub use keys::{KEY_LABEL, PRIVATE_KEY, key_secret_name};

use super::{Context, now};
use crate::{
    Error, Result,
    apply::patch_status,
    conditions::{self, Cond, DKIM_KEY_READY, DNS_VERIFIED, READY},
    crd::{MailDomain, MailDomainStatus},
    dkim::KeyPair,
    events::Reason,
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
    let (action, steps) = match converge(&md, &ctx, &mut status).await {
        Ok((wake, steps)) => (Action::requeue(wake), steps),
        Err(e) if e.is_spec_error() || matches!(e, Error::KeyGeneration(_)) => {
            let msg = format!("MailDomain {name}: {e}");
            let no = |t| Cond::no(t, e.reason(), msg.clone());
            conditions::set(&mut status.conditions, no(DKIM_KEY_READY), generation, &t);
            conditions::set(&mut status.conditions, no(READY), generation, &t);
            ctx.metrics.failure("MailDomain", e.metric_label());
            (Action::await_change(), Vec::new())
        }
        Err(e) => return Err(e),
    };
    ctx.metrics.set_ready(
        "MailDomain",
        "",
        &name,
        conditions::is_true(&status.conditions, READY),
    );
    let value = serde_json::to_value(&status).map_err(Error::serde("serialize MailDomain status"))?;
    patch_status(&api, &name, value).await?;
    // After the patch: a failed patch retries the whole plan, and events should not repeat.
    publish_transitions(&md, &old, &status, &ctx).await;
    for step in &steps {
        report::publish_step(&md, step, &ctx).await;
    }
    Ok(action)
}

/// Brings keys, DNS findings and status in line; returns when to look again and the rotation
/// steps taken.
async fn converge(
    md: &MailDomain,
    ctx: &Context,
    status: &mut MailDomainStatus,
) -> Result<(Duration, Vec<Step>)> {
    let name = md.name_any();
    let t = now();
    let (active, created, generated) = keys::ensure_active(md, ctx).await?;
    if generated {
        let note = format!(
            "generated a {} DKIM key for {}",
            md.spec.dkim.algorithm.as_str(),
            md.spec.domain
        );
        ctx.events.normal(md, Reason::KeyGenerated, note).await;
    }
    let state = status::state(md, &active, created);
    let policy = Policy::of(&md.spec.dkim);
    let mut pairs = BTreeMap::from([(state.active.selector.clone(), active)]);
    let mut dns = Lookups::default();
    let seen = observe(md, ctx, &state, &mut pairs, &mut dns).await?;
    let trigger = md.annotations().get(ROTATE_ANNOTATION).filter(|v| !v.is_empty());
    let mut plan = rotation::plan(
        &state,
        &policy,
        &Observed {
            name: &name,
            base_selector: &md.spec.dkim.selector,
            trigger: trigger.map(String::as_str),
            verified: &seen.verified,
            pending_secret_present: seen.pending,
            retiring_secret_present: seen.retiring,
            unknown: &seen.unknown,
            now: t.0,
        },
    );
    carry_out(md, ctx, &mut plan, &mut pairs).await?;
    let all_verified = status::records(md, &plan.state, &pairs, &mut dns, ctx, status).await;
    status.dkim = Some(status::dkim(md, &plan.state, &policy));
    report::set_conditions(md, &plan.state, all_verified, status, &t);
    ctx.metrics.set_rotation(
        &name,
        &md.spec.domain,
        plan.state.phase(),
        plan.state.active_since.as_second(),
        plan.state.pending.as_ref().map(|k| k.created.as_second()),
    );
    let mut wake = ctx.settings.dns_recheck;
    if let Some(at) = plan.wake_at {
        let left = at.duration_since(t.0).as_secs().max(0).unsigned_abs();
        // At least a second: a timer that fires a hair early must not spin.
        wake = wake.min(Duration::from_secs(left.max(1)));
    }
    Ok((wake, plan.steps))
}

/// What the rotation plan needs from the cluster and DNS besides status.
struct Seen {
    pending: bool,
    retiring: bool,
    verified: Vec<String>,
    unknown: Vec<rotation::Key>,
}

/// Reads the pending and retiring keys into `pairs`, asks DNS for every key's record, and lists
/// key Secrets that status does not know.
async fn observe(
    md: &MailDomain,
    ctx: &Context,
    state: &rotation::State,
    pairs: &mut BTreeMap<String, KeyPair>,
    dns: &mut Lookups,
) -> Result<Seen> {
    let pending = load(md, ctx, state.pending.as_ref(), pairs).await?;
    let retiring = load(md, ctx, state.retiring.as_ref().map(|(k, _)| k), pairs).await?;
    let mut verified = Vec::new();
    for (selector, pair) in pairs.iter() {
        let record = records::dkim(&md.spec.domain, selector, &pair.txt_value());
        if dns.check(ctx, &record).await.0 {
            verified.push(selector.clone());
        }
    }
    let mut known: Vec<&str> = vec![&state.active.secret_name];
    known.extend(state.pending.iter().map(|k| k.secret_name.as_str()));
    known.extend(state.retiring.iter().map(|(k, _)| k.secret_name.as_str()));
    let unknown = keys::unknown(md, ctx, &known).await?;
    Ok(Seen {
        pending,
        retiring,
        verified,
        unknown,
    })
}

/// Creates the new key and deletes retired or cancelled ones, as `plan` says; records the new
/// key's fingerprint in the plan's state.
async fn carry_out(
    md: &MailDomain,
    ctx: &Context,
    plan: &mut rotation::Plan,
    pairs: &mut BTreeMap<String, KeyPair>,
) -> Result<()> {
    if let Some(new) = &plan.create {
        let pair = keys::create_rotated(md, ctx, new).await?;
        pairs.insert(new.selector.clone(), pair);
    }
    if let Some(Step::Resumed(found)) = plan.steps.last() {
        load(md, ctx, Some(found), pairs).await?;
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

/// DNS answers of one reconcile, so a name is asked once.
#[derive(Default)]
pub(crate) struct Lookups(BTreeMap<String, Result<Vec<String>, String>>);

impl Lookups {
    /// Whether `record` is served, and what DNS returned (or the lookup error).
    pub(crate) async fn check(&mut self, ctx: &Context, record: &records::Record) -> (bool, Vec<String>) {
        if !self.0.contains_key(&record.name) {
            let answer = ctx.dns.txt(&record.name).await;
            self.0.insert(record.name.clone(), answer);
        }
        match self.0.get(&record.name) {
            Some(Ok(observed)) => (records::matches(record, observed), observed.clone()),
            Some(Err(e)) => (false, vec![format!("lookup failed: {e}")]),
            None => (false, Vec::new()),
        }
    }
}

async fn publish_transitions(md: &MailDomain, old: &MailDomainStatus, new: &MailDomainStatus, ctx: &Context) {
    for type_ in [READY, DNS_VERIFIED] {
        let Some(now) = conditions::get(&new.conditions, type_) else {
            continue;
        };
        let before = conditions::get(&old.conditions, type_);
        if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
            continue;
        }
        let reason = Reason::parse(&now.reason).unwrap_or(Reason::ApplyFailed);
        if now.status == "True" {
            ctx.events.normal(md, reason, now.message.clone()).await;
        } else {
            ctx.events.warn(md, reason, now.message.clone()).await;
        }
    }
}
