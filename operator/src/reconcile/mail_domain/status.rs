//! Between `status.dkim` and the rotation state: read the state back from status (that is how a
//! restarted operator resumes a rotation), and write the state and the DNS findings into status.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;

use super::{Lookups, keys::key_secret_name};
use crate::{
    crd::{DkimKeyStatus, DkimStatus, DnsRecordStatus, MailDomain, MailDomainStatus},
    dkim::{self, KeyPair},
    reconcile::{Context, now},
    records,
    rotation::{Key, Policy, State},
};

/// The rotation state recorded in `md`'s status, with the signing key as read from its Secret.
pub fn state(md: &MailDomain, active: &KeyPair, created: Timestamp) -> State {
    let prev = md.status.as_ref().and_then(|s| s.dkim.as_ref());
    let secret_name = prev.map_or_else(|| key_secret_name(&md.name_any()), |d| d.secret_name.clone());
    // The first key follows spec.dkim.selector; a rotated key keeps the selector it was made with.
    let selector = match prev {
        Some(d) if d.secret_name != key_secret_name(&md.name_any()) => d.selector.clone(),
        _ => md.spec.dkim.selector.clone(),
    };
    State {
        active: Key {
            selector,
            secret_name,
            fingerprint: active.fingerprint(),
            created,
        },
        active_since: prev
            .and_then(|d| d.active_since.as_ref())
            .map_or(created, |t| t.0),
        pending: prev.and_then(|d| d.pending.as_ref()).map(|k| key(k, created)),
        retiring: prev.and_then(|d| d.retiring.as_ref()).map(|k| {
            let at = k.retire_at.as_ref().map_or_else(Timestamp::now, |t| t.0);
            (key(k, created), at)
        }),
        retired: prev.and_then(|d| d.retired.as_ref()).map(|k| {
            let at = k.retire_at.as_ref().map_or(created, |t| t.0);
            (key(k, created), at)
        }),
        token: prev.and_then(|d| d.rotate_token.clone()),
    }
}

fn key(k: &DkimKeyStatus, fallback: Timestamp) -> Key {
    Key {
        selector: k.selector.clone(),
        secret_name: k.secret_name.clone(),
        fingerprint: k.fingerprint.clone(),
        created: k.created_at.as_ref().map_or(fallback, |t| t.0),
    }
}

fn key_status(k: &Key, retire_at: Option<Timestamp>) -> DkimKeyStatus {
    DkimKeyStatus {
        selector: k.selector.clone(),
        fingerprint: k.fingerprint.clone(),
        secret_name: k.secret_name.clone(),
        created_at: Some(Time(k.created)),
        retire_at: retire_at.map(Time),
    }
}

/// `status.dkim` for `state`.
pub fn dkim(md: &MailDomain, state: &State, policy: &Policy) -> DkimStatus {
    DkimStatus {
        selector: state.active.selector.clone(),
        algorithm: md.spec.dkim.algorithm.as_str().into(),
        fingerprint: state.active.fingerprint.clone(),
        secret_name: state.active.secret_name.clone(),
        active_since: Some(Time(state.active_since)),
        phase: state.phase(),
        next_rotation: state.next_rotation(policy).map(Time),
        pending: state.pending.as_ref().map(|k| key_status(k, None)),
        retiring: state.retiring.as_ref().map(|(k, at)| key_status(k, Some(*at))),
        retired: state.retired.as_ref().map(|(k, at)| key_status(k, Some(*at))),
        rotate_token: state.token.clone(),
    }
}

/// Fills `status.dns_records`: the DKIM record of every key in `state` (signing, pending,
/// retiring), then SPF and DMARC, each with what DNS served. True when every one matches.
pub async fn records(
    md: &MailDomain,
    state: &State,
    pairs: &BTreeMap<String, KeyPair>,
    dns: &mut Lookups,
    ctx: &Context,
    status: &mut MailDomainStatus,
) -> bool {
    let mut wanted = Vec::new();
    let keys = [
        Some((&state.active, "active")),
        state.pending.as_ref().map(|k| (k, "pending")),
        state.retiring.as_ref().map(|(k, _)| (k, "retiring")),
    ];
    for (k, role) in keys.into_iter().flatten() {
        if let Some(pair) = pairs.get(&k.selector) {
            let record = records::dkim(&md.spec.domain, &k.selector, &pair.txt_value());
            wanted.push((record, Some(role)));
        }
    }
    wanted.extend(records::policies(&md.spec).into_iter().map(|r| (r, None)));
    let mut all = true;
    status.dns_records.clear();
    for (record, role) in wanted {
        let (verified, observed) = dns.check(ctx, &record).await;
        // The `dkim` gauge follows the signing key's record only; a pending record is not yet
        // expected to resolve (the rotation gauges cover it).
        if role.is_none() || role == Some("active") {
            ctx.metrics
                .set_dns(&md.spec.domain, record.purpose.as_str(), verified);
        }
        all &= verified;
        status.dns_records.push(DnsRecordStatus {
            purpose: record.purpose.as_str().into(),
            name: record.name.clone(),
            type_: "TXT".into(),
            value: dkim::split_txt(&record.value),
            verified,
            observed,
            last_checked: Some(now()),
            key: role.map(String::from),
        });
    }
    all
}
