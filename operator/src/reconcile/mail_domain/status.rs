//! Pure status building: read the rotation state back from `status.dkim` (that is how a restarted
//! operator resumes a rotation), and build `status.dkim`, `status.dnsRecords` and the conditions
//! from the state, the keys and the DNS answers, which come in as data.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;

use super::keys::key_secret_name;
use crate::{
    conditions::{Cond, DKIM_KEY_READY, DNS_VERIFIED, READY},
    crd::{DkimKeyStatus, DkimStatus, DnsRecordStatus, MailDomain},
    dkim::{self, KeyPair},
    events::Reason,
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

/// What DNS answered for each name asked in one reconcile: its TXT records (character-strings
/// joined), or why the lookup failed.
#[derive(Debug, Default, Clone)]
pub struct Answers(BTreeMap<String, Result<Vec<String>, String>>);

// === impl Answers ===

impl Answers {
    /// Whether `name` was asked already.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Records what DNS answered for `name`.
    pub fn insert(&mut self, name: String, answer: Result<Vec<String>, String>) {
        self.0.insert(name, answer);
    }

    /// Whether `record` is served, and what DNS returned (or the lookup error).
    pub fn check(&self, record: &records::Record) -> (bool, Vec<String>) {
        match self.0.get(&record.name) {
            Some(Ok(observed)) => (records::matches(record, observed), observed.clone()),
            Some(Err(e)) => (false, vec![format!("lookup failed: {e}")]),
            None => (false, Vec::new()),
        }
    }
}

/// What a reconcile writes into status besides `observedGeneration`, and the conditions to set.
#[derive(Debug, Clone)]
pub struct Built {
    /// `status.dkim`.
    pub dkim: DkimStatus,
    /// `status.dnsRecords`.
    pub dns_records: Vec<DnsRecordStatus>,
    /// `DkimKeyReady`, `DnsVerified` and `Ready`, in that order.
    pub conditions: Vec<Cond>,
}

/// Builds status from the rotation `state`, the keys read and the DNS `answers`; `now` stamps
/// `lastChecked`.
pub fn build(
    md: &MailDomain,
    state: &State,
    policy: &Policy,
    pairs: &BTreeMap<String, KeyPair>,
    answers: &Answers,
    now: &Time,
) -> Built {
    let dns_records: Vec<DnsRecordStatus> = wanted(md, state, pairs)
        .into_iter()
        .map(|(record, role)| {
            let (verified, observed) = answers.check(&record);
            DnsRecordStatus {
                purpose: record.purpose.as_str().into(),
                name: record.name.clone(),
                type_: "TXT".into(),
                value: dkim::split_txt(&record.value),
                verified,
                observed,
                last_checked: Some(now.clone()),
                key: role.map(String::from),
            }
        })
        .collect();
    let all_verified = dns_records.iter().all(|r| r.verified);
    Built {
        dkim: dkim(md, state, policy),
        dns_records,
        conditions: conditions(md, state, all_verified),
    }
}

/// The records to publish, each with the role of its key (`None` for SPF and DMARC): the DKIM
/// record of every key in `state` that was read (signing, pending, retiring), then SPF and DMARC.
pub fn wanted(
    md: &MailDomain,
    state: &State,
    pairs: &BTreeMap<String, KeyPair>,
) -> Vec<(records::Record, Option<&'static str>)> {
    let keys = [
        Some((&state.active, "active")),
        state.pending.as_ref().map(|k| (k, "pending")),
        state.retiring.as_ref().map(|(k, _)| (k, "retiring")),
    ];
    let mut out: Vec<_> = keys
        .into_iter()
        .flatten()
        .filter_map(|(k, role)| {
            let pair = pairs.get(&k.selector)?;
            let record = records::dkim(&md.spec.domain, &k.selector, &pair.txt_value());
            Some((record, Some(role)))
        })
        .collect();
    out.extend(records::policies(&md.spec).into_iter().map(|r| (r, None)));
    out
}

/// The selectors in `pairs` whose DKIM record DNS serves.
pub fn verified(md: &MailDomain, pairs: &BTreeMap<String, KeyPair>, answers: &Answers) -> Vec<String> {
    pairs
        .iter()
        .filter(|(selector, pair)| {
            let record = records::dkim(&md.spec.domain, selector, &pair.txt_value());
            answers.check(&record).0
        })
        .map(|(selector, _)| selector.clone())
        .collect()
}

/// The `DkimKeyReady`, `DnsVerified` and `Ready` conditions for `state` and the DNS findings.
pub fn conditions(md: &MailDomain, state: &State, all_verified: bool) -> Vec<Cond> {
    let name = md.name_any();
    let active = &state.active;
    let key = match (&state.pending, &state.retiring) {
        (Some(p), _) => Cond::yes(
            DKIM_KEY_READY,
            Reason::KeyRotationStarted,
            format!(
                "MailDomain {name} signs with selector {}; new key {} waits for its DNS record, publish it from status.dnsRecords",
                active.selector, p.selector
            ),
        ),
        (None, Some((old, at))) => Cond::yes(
            DKIM_KEY_READY,
            Reason::KeyRotated,
            format!(
                "MailDomain {name} signs with selector {}; keep the record of {} published until {at}",
                active.selector, old.selector
            ),
        ),
        (None, None) => Cond::yes(
            DKIM_KEY_READY,
            Reason::KeyReady,
            format!(
                "MailDomain {name} has its DKIM key in Secret {}",
                active.secret_name
            ),
        ),
    };
    let dns = if all_verified {
        Cond::yes(
            DNS_VERIFIED,
            Reason::RecordsVerified,
            format!("MailDomain {name}: every record is in DNS"),
        )
    } else {
        let msg = if md.spec.dns.as_ref().is_some_and(|d| d.publish.is_some()) {
            format!(
                "MailDomain {name}: waiting for DNS to serve the records external-dns publishes from DNSEndpoint {}",
                crate::publish::endpoint_name(&name)
            )
        } else {
            format!("MailDomain {name}: publish the records in status.dnsRecords")
        };
        Cond::no(DNS_VERIFIED, Reason::RecordsNotVerified, msg)
    };
    let ready = Cond::yes(
        READY,
        Reason::Reconciled,
        format!("MailDomain {name} is ready for Relays"),
    );
    vec![key, dns, ready]
}

#[cfg(test)]
mod tests;
