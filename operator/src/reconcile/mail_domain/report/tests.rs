use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::*;
use crate::{conditions::DKIM_KEY_READY, crd::DkimAlgorithm, rotation::Key};

fn md() -> MailDomain {
    MailDomain::test("shop", "example.com").with_dkim("mailroom", DkimAlgorithm::Ed25519)
}

fn key(selector: &str) -> Key {
    Key {
        selector: selector.into(),
        secret_name: format!("dkim-shop-{selector}"),
        fingerprint: String::new(),
        created: Timestamp::UNIX_EPOCH,
    }
}

fn ready() -> Cond {
    Cond::yes(READY, Reason::Reconciled, "MailDomain shop is ready for Relays")
}

fn dns(verified: bool) -> Cond {
    if verified {
        Cond::yes(DNS_VERIFIED, Reason::RecordsVerified, "every record is in DNS")
    } else {
        Cond::no(DNS_VERIFIED, Reason::RecordsNotVerified, "publish the records")
    }
}

fn key_ready(reason: Reason) -> Cond {
    Cond::yes(DKIM_KEY_READY, reason, "key")
}

fn written(conds: &[Cond]) -> Vec<Condition> {
    let mut out = Vec::new();
    for c in conds {
        conditions::set(&mut out, c.clone(), Some(1), &Time(Timestamp::UNIX_EPOCH));
    }
    out
}

#[test]
fn transitions_and_steps_decide_the_events() {
    struct Case {
        name: &'static str,
        old: Vec<Cond>,
        set: Vec<Cond>,
        steps: Vec<Step>,
        want: Vec<(bool, Reason)>,
    }
    let lost = || Cond::no(READY, Reason::DkimKeyLost, "lost");
    let cases = [
        Case {
            name: "first reconcile, records not yet published",
            old: vec![],
            set: vec![key_ready(Reason::KeyReady), dns(false), ready()],
            steps: vec![],
            want: vec![(false, Reason::Reconciled), (true, Reason::RecordsNotVerified)],
        },
        Case {
            name: "a recheck that changes nothing is quiet",
            old: vec![key_ready(Reason::KeyReady), dns(false), ready()],
            set: vec![key_ready(Reason::KeyReady), dns(false), ready()],
            steps: vec![],
            want: vec![],
        },
        Case {
            name: "records appear in DNS",
            old: vec![key_ready(Reason::KeyReady), dns(false), ready()],
            set: vec![key_ready(Reason::KeyReady), dns(true), ready()],
            steps: vec![],
            want: vec![(false, Reason::RecordsVerified)],
        },
        Case {
            name: "a key change alone is told by its step, not by DkimKeyReady",
            old: vec![key_ready(Reason::KeyReady), dns(true), ready()],
            set: vec![key_ready(Reason::KeyRotationStarted), dns(false), ready()],
            steps: vec![Step::Started(key("mailroom-2"))],
            want: vec![
                (true, Reason::RecordsNotVerified),
                (false, Reason::KeyRotationStarted),
            ],
        },
        Case {
            name: "a switch and a retirement in one reconcile, in order",
            old: vec![key_ready(Reason::KeyRotationStarted), dns(true), ready()],
            set: vec![key_ready(Reason::KeyRotated), dns(true), ready()],
            steps: vec![
                Step::Switched(key("mailroom-2"), Timestamp::UNIX_EPOCH),
                Step::Retired(key("mailroom")),
            ],
            want: vec![(false, Reason::KeyRotated), (false, Reason::KeyRetired)],
        },
        Case {
            name: "a cancelled rotation warns",
            old: vec![key_ready(Reason::KeyRotationStarted), dns(false), ready()],
            set: vec![key_ready(Reason::KeyReady), dns(false), ready()],
            steps: vec![Step::Cancelled(key("mailroom-2"), rotation::Cancel::SecretLost)],
            want: vec![(true, Reason::KeyRotationCancelled)],
        },
        Case {
            name: "a spec error turns Ready False and warns once",
            old: vec![key_ready(Reason::KeyReady), dns(true), ready()],
            set: vec![Cond::no(DKIM_KEY_READY, Reason::DkimKeyLost, "lost"), lost()],
            steps: vec![],
            want: vec![(true, Reason::DkimKeyLost)],
        },
        Case {
            name: "the same spec error again is quiet",
            old: vec![lost()],
            set: vec![Cond::no(DKIM_KEY_READY, Reason::DkimKeyLost, "lost"), lost()],
            steps: vec![],
            want: vec![],
        },
        Case {
            name: "recovering announces Ready",
            old: vec![lost(), dns(true)],
            set: vec![key_ready(Reason::KeyReady), dns(true), ready()],
            steps: vec![],
            want: vec![(false, Reason::Reconciled)],
        },
    ];
    let md = md();
    for case in cases {
        let got: Vec<(bool, Reason)> = notes(&md, &written(&case.old), &case.set, &case.steps)
            .into_iter()
            .map(|n| (n.warning, n.reason))
            .collect();
        assert_eq!(got, case.want, "{}", case.name);
    }
}

#[test]
fn events_carry_the_condition_message_or_name_the_record() {
    let md = md();
    let got = notes(&md, &[], &[ready()], &[Step::Retired(key("mailroom"))]);
    assert_eq!(got[0].note, "MailDomain shop is ready for Relays");
    assert!(
        got[1].note.contains("remove TXT mailroom._domainkey.example.com"),
        "{}",
        got[1].note
    );
    let generated = generated(&md);
    assert_eq!(
        (generated.warning, generated.reason),
        (false, Reason::KeyGenerated)
    );
    assert_eq!(generated.note, "generated a ed25519 DKIM key for example.com");
}
