use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::crd::{DkimAlgorithm, DmarcSpec, SpfSpec};

const ACTIVE: &str = "mailroom";
const PENDING: &str = "mailroom-2";
const DKIM: &str = "mailroom._domainkey.example.com";
const DKIM_PENDING: &str = "mailroom-2._domainkey.example.com";
const SPF: &str = "example.com";
const DMARC: &str = "_dmarc.example.com";

/// A MailDomain with SPF and DMARC, its signing key and (on request) a pending key.
struct Fixture {
    md: MailDomain,
    state: State,
    pairs: BTreeMap<String, KeyPair>,
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("valid timestamp")
}

fn fixture(pending: bool) -> Fixture {
    let mut md = MailDomain::test("shop", "example.com").with_dkim(ACTIVE, DkimAlgorithm::Ed25519);
    md.spec.spf = Some(SpfSpec {
        includes: vec!["relay.example.net".into()],
        all: Default::default(),
    });
    md.spec.dmarc = Some(DmarcSpec {
        policy: Default::default(),
        report_email: None,
    });
    let active = KeyPair::generate(DkimAlgorithm::Ed25519).expect("generate");
    let mut state = super::state(&md, &active, at(1_000));
    let mut pairs = BTreeMap::from([(ACTIVE.to_string(), active)]);
    if pending {
        let pair = KeyPair::generate(DkimAlgorithm::Ed25519).expect("generate");
        state.pending = Some(Key {
            selector: PENDING.into(),
            secret_name: "dkim-shop-2".into(),
            fingerprint: pair.fingerprint(),
            created: at(2_000),
        });
        pairs.insert(PENDING.into(), pair);
    }
    Fixture { md, state, pairs }
}

/// What DNS serves in a case.
#[derive(Clone, Copy)]
enum Served {
    /// The recommended value.
    Right,
    /// A TXT record that is not ours.
    Wrong,
    /// Two records of the kind (SPF and DMARC allow one).
    Twice,
    /// No record.
    Nothing,
    /// The lookup failed.
    Failed,
    /// Never asked.
    Unasked,
}

fn answers(f: &Fixture, served: &[(&str, Served)]) -> Answers {
    let want: BTreeMap<String, String> = wanted(&f.md, &f.state, &f.pairs)
        .into_iter()
        .map(|(r, _)| (r.name, r.value))
        .collect();
    let mut out = Answers::default();
    for (name, how) in served {
        let right = want[*name].clone();
        let answer = match how {
            Served::Right => Ok(vec![right]),
            Served::Wrong => Ok(vec!["v=DKIM1; k=ed25519; p=AAAA".into()]),
            Served::Twice => Ok(vec![right.clone(), right]),
            Served::Nothing => Ok(Vec::new()),
            Served::Failed => Err("timed out".into()),
            Served::Unasked => continue,
        };
        out.insert(name.to_string(), answer);
    }
    out
}

#[test]
fn dns_answers_decide_dns_verified_and_every_record_s_finding() {
    use Served::*;
    struct Case {
        name: &'static str,
        pending: bool,
        served: Vec<(&'static str, Served)>,
        /// `verified` of each record in `status.dnsRecords` order.
        want_records: Vec<(&'static str, bool)>,
        want_dns: (bool, Reason),
        want_key: Reason,
    }
    let cases = [
        Case {
            name: "every record served",
            pending: false,
            served: vec![(DKIM, Right), (SPF, Right), (DMARC, Right)],
            want_records: vec![(DKIM, true), (SPF, true), (DMARC, true)],
            want_dns: (true, Reason::RecordsVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "the DKIM record is missing",
            pending: false,
            served: vec![(DKIM, Nothing), (SPF, Right), (DMARC, Right)],
            want_records: vec![(DKIM, false), (SPF, true), (DMARC, true)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "the DKIM record holds another key",
            pending: false,
            served: vec![(DKIM, Wrong), (SPF, Right), (DMARC, Right)],
            want_records: vec![(DKIM, false), (SPF, true), (DMARC, true)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "two SPF records are an error (RFC 7208 4.5)",
            pending: false,
            served: vec![(DKIM, Right), (SPF, Twice), (DMARC, Right)],
            want_records: vec![(DKIM, true), (SPF, false), (DMARC, true)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "a failed lookup is not verified",
            pending: false,
            served: vec![(DKIM, Right), (SPF, Right), (DMARC, Failed)],
            want_records: vec![(DKIM, true), (SPF, true), (DMARC, false)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "a name never asked is not verified",
            pending: false,
            served: vec![(DKIM, Right), (SPF, Unasked), (DMARC, Right)],
            want_records: vec![(DKIM, true), (SPF, false), (DMARC, true)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyReady,
        },
        Case {
            name: "a pending key waits for its record",
            pending: true,
            served: vec![
                (DKIM, Right),
                (DKIM_PENDING, Nothing),
                (SPF, Right),
                (DMARC, Right),
            ],
            want_records: vec![(DKIM, true), (DKIM_PENDING, false), (SPF, true), (DMARC, true)],
            want_dns: (false, Reason::RecordsNotVerified),
            want_key: Reason::KeyRotationStarted,
        },
        Case {
            name: "a pending key with its record served",
            pending: true,
            served: vec![(DKIM, Right), (DKIM_PENDING, Right), (SPF, Right), (DMARC, Right)],
            want_records: vec![(DKIM, true), (DKIM_PENDING, true), (SPF, true), (DMARC, true)],
            want_dns: (true, Reason::RecordsVerified),
            want_key: Reason::KeyRotationStarted,
        },
    ];
    let checked = Time(at(5_000));
    for case in cases {
        let f = fixture(case.pending);
        let answers = answers(&f, &case.served);
        let policy = Policy::of(&f.md.spec.dkim);
        let built = build(&f.md, &f.state, &policy, &f.pairs, &answers, &checked);
        let records: Vec<(&str, bool)> = built
            .dns_records
            .iter()
            .map(|r| (r.name.as_str(), r.verified))
            .collect();
        assert_eq!(records, case.want_records, "{}", case.name);
        assert!(
            built
                .dns_records
                .iter()
                .all(|r| r.last_checked.as_ref() == Some(&checked)),
            "{}",
            case.name
        );
        let summary: Vec<(&str, bool, Reason)> = built
            .conditions
            .iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect();
        assert_eq!(
            summary,
            [
                (DKIM_KEY_READY, true, case.want_key),
                (DNS_VERIFIED, case.want_dns.0, case.want_dns.1),
                (READY, true, Reason::Reconciled),
            ],
            "{}",
            case.name
        );
    }
}

#[test]
fn records_carry_what_dns_served_or_why_the_lookup_failed() {
    let f = fixture(false);
    let answers = answers(
        &f,
        &[
            (DKIM, Served::Wrong),
            (SPF, Served::Failed),
            (DMARC, Served::Nothing),
        ],
    );
    let built = build(
        &f.md,
        &f.state,
        &Policy::of(&f.md.spec.dkim),
        &f.pairs,
        &answers,
        &Time(at(1)),
    );
    let observed: Vec<(&str, Option<&str>, Vec<String>)> = built
        .dns_records
        .iter()
        .map(|r| (r.purpose.as_str(), r.key.as_deref(), r.observed.clone()))
        .collect();
    assert_eq!(
        observed,
        [
            (
                "dkim",
                Some("active"),
                vec!["v=DKIM1; k=ed25519; p=AAAA".to_string()]
            ),
            ("spf", None, vec!["lookup failed: timed out".to_string()]),
            ("dmarc", None, vec![]),
        ]
    );
}

#[test]
fn verified_lists_the_selectors_whose_record_is_served() {
    let f = fixture(true);
    let served = answers(&f, &[(DKIM, Served::Nothing), (DKIM_PENDING, Served::Right)]);
    assert_eq!(verified(&f.md, &f.pairs, &served), [PENDING]);
    let none = answers(&f, &[(DKIM, Served::Failed)]);
    assert!(verified(&f.md, &f.pairs, &none).is_empty());
}

#[test]
fn a_retiring_key_keeps_dkim_key_ready_true_with_key_rotated() {
    let mut f = fixture(false);
    let old = f.state.active.clone();
    f.state.retiring = Some((old, at(9_000)));
    let conds = conditions(&f.md, &f.state, true);
    assert_eq!((conds[0].type_, conds[0].status), (DKIM_KEY_READY, true));
    assert_eq!(conds[0].reason, Reason::KeyRotated);
    assert!(conds[0].message.contains("shop"), "{}", conds[0].message);
}

#[test]
fn unverified_records_point_at_the_dns_endpoint_when_external_dns_publishes() {
    let f = fixture(false);
    let by_hand = conditions(&f.md, &f.state, false);
    assert!(
        by_hand[1]
            .message
            .contains("publish the records in status.dnsRecords"),
        "{}",
        by_hand[1].message
    );
    let md = f.md.clone().publishing();
    let published = conditions(&md, &f.state, false);
    assert_eq!((published[1].type_, published[1].status), (DNS_VERIFIED, false));
    assert!(
        published[1].message.contains("DNSEndpoint dns-shop")
            && !published[1].message.contains("publish the records"),
        "{}",
        published[1].message
    );
}
