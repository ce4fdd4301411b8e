//! What a MailDomain reconcile tells the user about keys and rotation: the `DkimKeyReady`,
//! `DnsVerified` and `Ready` conditions, and one event per rotation step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::super::Context;
use crate::{
    conditions::{self, Cond, DKIM_KEY_READY, DNS_VERIFIED, READY},
    crd::{MailDomain, MailDomainStatus},
    events::Reason,
    rotation::{self, Step},
};

/// Sets the conditions for `state` and the DNS findings.
pub fn set_conditions(
    md: &MailDomain,
    state: &rotation::State,
    all_verified: bool,
    status: &mut MailDomainStatus,
    t: &Time,
) {
    let name = md.name_any();
    let generation = md.metadata.generation;
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
    conditions::set(&mut status.conditions, key, generation, t);
    let dns = if all_verified {
        Cond::yes(
            DNS_VERIFIED,
            Reason::RecordsVerified,
            format!("MailDomain {name}: every record is in DNS"),
        )
    } else {
        let msg = format!("MailDomain {name}: publish the records in status.dnsRecords");
        Cond::no(DNS_VERIFIED, Reason::RecordsNotVerified, msg)
    };
    conditions::set(&mut status.conditions, dns, generation, t);
    let msg = format!("MailDomain {name} is ready for Relays");
    conditions::set(
        &mut status.conditions,
        Cond::yes(READY, Reason::Reconciled, msg),
        generation,
        t,
    );
}

/// Publishes the event of one rotation step.
pub async fn publish_step(md: &MailDomain, step: &Step, ctx: &Context) {
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
        ctx.events.warn(md, reason, note).await;
    } else {
        ctx.events.normal(md, reason, note).await;
    }
}
