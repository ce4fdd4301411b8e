//! Pure condition handling: build conditions and merge them into a status, keeping
//! `lastTransitionTime` when the status did not change (as `meta.SetStatusCondition` does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::events::Reason;

/// `Ready`: the object is fully reconciled and usable.
pub const READY: &str = "Ready";
/// `DkimKeyReady`: the MailDomain's key Secret exists and matches status.
pub const DKIM_KEY_READY: &str = "DkimKeyReady";
/// `DnsVerified`: every recommended record is served by live DNS.
pub const DNS_VERIFIED: &str = "DnsVerified";

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

/// The condition of this type, if any.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
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
        set(
            &mut conds,
            Cond::no(READY, Reason::SecretNotFound, "a"),
            Some(1),
            &at(10),
        );
        set(
            &mut conds,
            Cond::no(READY, Reason::SecretKeyMissing, "b"),
            Some(2),
            &at(20),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, "SecretKeyMissing");
        assert_eq!(conds[0].message, "b");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_last_transition_time() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            Cond::no(READY, Reason::SecretNotFound, "a"),
            Some(1),
            &at(10),
        );
        set(
            &mut conds,
            Cond::yes(READY, Reason::Reconciled, "ok"),
            Some(1),
            &at(30),
        );
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, at(30));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn other_types_are_left_alone() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            Cond::yes(DKIM_KEY_READY, Reason::KeyReady, "k"),
            None,
            &at(1),
        );
        set(&mut conds, Cond::no(READY, Reason::DnsPending, "r"), None, &at(2));
        assert_eq!(conds.len(), 2);
        assert!(is_true(&conds, DKIM_KEY_READY));
        assert!(!is_true(&conds, READY));
        assert_eq!(get(&conds, READY).map(|c| c.reason.as_str()), Some("DnsPending"));
    }
}
