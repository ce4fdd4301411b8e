//! Pure condition handling: build conditions and merge them into a status, keeping
//! `lastTransitionTime` when the status did not change (as `meta.SetStatusCondition` does), and
//! decide which of them changed enough to announce as events.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::events::{Note, Reason};

/// `Ready`: the object is fully reconciled and usable.
pub const READY: &str = "Ready";
/// `DkimKeyReady`: the MailDomain's key Secret exists and matches status.
pub const DKIM_KEY_READY: &str = "DkimKeyReady";
/// `DnsVerified`: every recommended record is served by live DNS.
pub const DNS_VERIFIED: &str = "DnsVerified";
/// MailDomain condition, present while `spec.dns.publish` is set: the records are in its
/// DNSEndpoint for external-dns to publish.
pub const DNS_PUBLISHED: &str = "DnsPublished";
/// Relay condition: its hub (`spec.hub`) has a Ready pod to take hand-offs.
pub const HUB_READY: &str = "HubReady";

/// A condition to set: type, status, reason and a one-sentence message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// Condition type (`Ready`, ...).
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason, shared with events.
    pub reason: Reason,
    /// One sentence that names the object.
    pub message: String,
}

// === impl Cond ===

impl Cond {
    /// A condition with status `True`.
    pub fn yes(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition with status `False`.
    pub fn no(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `cond` in `conditions`: replaces the condition of the same type, keeping its
/// `lastTransitionTime` when the status is unchanged, or appends it.
pub fn set(conditions: &mut Vec<Condition>, cond: Cond, generation: Option<i64>, now: &Time) {
    let status = if cond.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == cond.type_);
    let last_transition_time = match &existing {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    let new = Condition {
        type_: cond.type_.to_string(),
        status: status.to_string(),
        reason: cond.reason.as_str().to_string(),
        message: cond.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(old) => *old = new,
        None => conditions.push(new),
    }
}

/// Whether condition `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Removes the condition of this type, if any.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of this type, if any.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The events announcing `set` (conditions this reconcile set, still typed) against `old` (the
/// conditions status held before): one per condition of an `announced` type whose status or reason
/// changed, in `announced` order. Normal when the condition is True, Warning when it is False.
pub fn transitions(old: &[Condition], set: &[Cond], announced: &[&str]) -> Vec<Note> {
    announced
        .iter()
        .filter_map(|type_| set.iter().rev().find(|c| c.type_ == *type_))
        .filter(|now| {
            let status = if now.status { "True" } else { "False" };
            !get(old, now.type_).is_some_and(|b| b.status == status && b.reason == now.reason.as_str())
        })
        .map(|now| Note {
            warning: !now.status,
            reason: now.reason,
            note: now.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn unchanged_status_keeps_last_transition_time() {
        let mut conds = Vec::new();
        let c = Cond::no(READY, Reason::SecretNotFound, "a");
        set(&mut conds, c, Some(1), &at(10));
        let c = Cond::no(READY, Reason::SecretKeyMissing, "b");
        set(&mut conds, c, Some(2), &at(20));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, "SecretKeyMissing");
        assert_eq!(conds[0].message, "b");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_last_transition_time() {
        let mut conds = Vec::new();
        let c = Cond::no(READY, Reason::SecretNotFound, "a");
        set(&mut conds, c, Some(1), &at(10));
        let c = Cond::yes(READY, Reason::Reconciled, "ok");
        set(&mut conds, c, Some(1), &at(30));
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, at(30));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn other_types_are_left_alone() {
        let mut conds = Vec::new();
        let c = Cond::yes(DKIM_KEY_READY, Reason::KeyReady, "k");
        set(&mut conds, c, None, &at(1));
        set(&mut conds, Cond::no(READY, Reason::DnsPending, "r"), None, &at(2));
        assert_eq!(conds.len(), 2);
        assert!(is_true(&conds, DKIM_KEY_READY));
        assert!(!is_true(&conds, READY));
        assert_eq!(get(&conds, READY).map(|c| c.reason.as_str()), Some("DnsPending"));
    }

    #[test]
    fn transitions_announce_changed_status_or_reason_only() {
        struct Case {
            name: &'static str,
            old: Vec<Cond>,
            set: Vec<Cond>,
            want: Vec<(bool, Reason)>,
        }
        let ready = || Cond::yes(READY, Reason::Reconciled, "ready");
        let dns_ok = || Cond::yes(DNS_VERIFIED, Reason::RecordsVerified, "ok");
        let dns_missing = || Cond::no(DNS_VERIFIED, Reason::RecordsNotVerified, "publish");
        let cases = [
            Case {
                name: "first reconcile announces every announced type",
                old: vec![],
                set: vec![dns_missing(), ready()],
                want: vec![(false, Reason::Reconciled), (true, Reason::RecordsNotVerified)],
            },
            Case {
                name: "unchanged status and reason announce nothing",
                old: vec![ready(), dns_ok()],
                set: vec![dns_ok(), ready()],
                want: vec![],
            },
            Case {
                name: "a new message alone announces nothing",
                old: vec![ready()],
                set: vec![Cond::yes(READY, Reason::Reconciled, "other words")],
                want: vec![],
            },
            Case {
                name: "a status flip announces, Normal when True",
                old: vec![dns_missing()],
                set: vec![dns_ok()],
                want: vec![(false, Reason::RecordsVerified)],
            },
            Case {
                name: "a new reason with the same status announces, Warning when False",
                old: vec![Cond::no(READY, Reason::SecretNotFound, "a")],
                set: vec![Cond::no(READY, Reason::SecretKeyMissing, "b")],
                want: vec![(true, Reason::SecretKeyMissing)],
            },
            Case {
                name: "types that are not announced stay quiet",
                old: vec![],
                set: vec![Cond::no(DKIM_KEY_READY, Reason::DkimKeyLost, "lost")],
                want: vec![],
            },
            Case {
                name: "a type set twice announces its last value",
                old: vec![],
                set: vec![ready(), Cond::no(READY, Reason::ApplyFailed, "x")],
                want: vec![(true, Reason::ApplyFailed)],
            },
        ];
        for case in cases {
            let mut old = Vec::new();
            for c in case.old {
                set(&mut old, c, Some(1), &at(1));
            }
            let got: Vec<(bool, Reason)> = transitions(&old, &case.set, &[READY, DNS_VERIFIED])
                .into_iter()
                .map(|n| (n.warning, n.reason))
                .collect();
            assert_eq!(got, case.want, "{}", case.name);
        }
    }
}
