//! Pure: the events a MailDomain reconcile announces: a generated key, changes of `Ready` and
//! `DnsVerified`, and one event per rotation step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use crate::{
    conditions::{self, Cond, DNS_PUBLISHED, DNS_VERIFIED, READY},
    crd::MailDomain,
    events::{Note, Reason},
    rotation::{self, Step},
};

/// The events a reconcile announces once status is written: changes of `Ready` and `DnsVerified`
/// against `old` (`DkimKeyReady` changes are told by the key and rotation events), then one event
/// per rotation step.
pub fn notes(md: &MailDomain, old: &[Condition], set: &[Cond], steps: &[Step]) -> Vec<Note> {
    let mut out = conditions::transitions(old, set, &[READY, DNS_VERIFIED, DNS_PUBLISHED]);
    out.extend(steps.iter().map(|step| step_note(md, step)));
    out
}

/// The event for a newly generated signing key.
pub fn generated(md: &MailDomain) -> Note {
    Note::normal(
        Reason::KeyGenerated,
        format!(
            "generated a {} DKIM key for {}",
            md.spec.dkim.algorithm.as_str(),
            md.spec.domain
        ),
    )
}

/// The event of one rotation step.
fn step_note(md: &MailDomain, step: &Step) -> Note {
    let name = md.name_any();
    let record = |selector: &str| format!("{selector}._domainkey.{}", md.spec.domain);
    let (warn, reason, note) = match step {
        Step::Started(k) | Step::Resumed(k) => (
            false,
            Reason::KeyRotationStarted,
            format!(
                "MailDomain {name}: new DKIM key {}; publish TXT {} from status.dnsRecords, signing switches once it resolves",
                k.selector,
                record(&k.selector)
            ),
        ),
        Step::Switched(k, at) => (
            false,
            Reason::KeyRotated,
            format!(
                "MailDomain {name} now signs with selector {}; the previous key retires at {at}",
                k.selector
            ),
        ),
        Step::Retired(k) => (
            false,
            Reason::KeyRetired,
            format!(
                "MailDomain {name}: key {} retired and its Secret deleted; remove TXT {} from DNS",
                k.selector,
                record(&k.selector)
            ),
        ),
        Step::Cancelled(k, why) => (
            true,
            Reason::KeyRotationCancelled,
            format!(
                "MailDomain {name}: pending key {} dropped ({}); remove TXT {} if you published it",
                k.selector,
                match why {
                    rotation::Cancel::NotWanted => "rotation is no longer requested",
                    rotation::Cancel::SecretLost => "its Secret disappeared",
                },
                record(&k.selector)
            ),
        ),
    };
    if warn {
        Note::warning(reason, note)
    } else {
        Note::normal(reason, note)
    }
}

#[cfg(test)]
mod tests;
