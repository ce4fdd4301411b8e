use super::*;

const NOW: u64 = 1_000_000;
const HOUR: u64 = 3600;

fn retry() -> Retry {
    Retry {
        initial_seconds: 60,
        multiplier: 2.0,
        max_seconds: 3600,
        max_age_seconds: 5 * 86400,
    }
}

fn envelope(sender: &str, age: u64) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: vec!["a@x.test".into(), "b@y.test".into(), "c@z.test".into()],
        smtputf8: false,
        received_at: NOW - age,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    }
}

fn result(outcome: Outcome, class: ReplyClass, diagnostic: &str) -> RcptResult {
    RcptResult {
        outcome,
        class,
        diagnostic: diagnostic.into(),
        next_hop_dsn: false,
        remote: None,
    }
}

fn ok() -> RcptResult {
    result(Outcome::Delivered, ReplyClass::Ok, "250 2.0.0 ok")
}
fn defer() -> RcptResult {
    result(Outcome::Deferred, ReplyClass::Transient, "451 4.3.0 try later")
}
fn refused() -> RcptResult {
    result(Outcome::Deferred, ReplyClass::Connection, "connection refused")
}
fn bounce() -> RcptResult {
    result(Outcome::Bounced, ReplyClass::Permanent, "550 5.1.1 no such user")
}

fn failed(index: u32, diagnostic: &str) -> Failed {
    Failed {
        index,
        recipient: ["a@x.test", "b@y.test", "c@z.test"][index as usize].into(),
        diagnostic: diagnostic.into(),
    }
}

struct Case {
    name: &'static str,
    sender: &'static str,
    age: u64,
    tried: Vec<u32>,
    results: Vec<RcptResult>,
    delay_notice_after: Option<u64>,
    delay_notice_sent: bool,
    route: Route,
    // Expected:
    delivered: Vec<u32>,
    bounced: Vec<u32>,
    expired: Vec<u32>,
    deferred: Vec<u32>,
    dsns: Vec<(DsnKind, Vec<u32>)>,
    dropped: Vec<u32>,
    finished: Vec<u32>,
    retry: Option<bool>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            sender: "app@example.com",
            age: 10,
            tried: vec![0, 1, 2],
            results: vec![],
            delay_notice_after: None,
            delay_notice_sent: false,
            route: Route::Smarthost,
            delivered: vec![],
            bounced: vec![],
            expired: vec![],
            deferred: vec![],
            dsns: vec![],
            dropped: vec![],
            finished: vec![],
            retry: None,
        }
    }
}

fn indices(list: &[Failed]) -> Vec<u32> {
    list.iter().map(|f| f.index).collect()
}

#[test]
fn every_branch_of_the_decision() {
    let cases = vec![
        Case {
            name: "all delivered",
            results: vec![ok(), ok(), ok()],
            delivered: vec![0, 1, 2],
            ..Case::default()
        },
        Case {
            name: "all deferred: retry, nothing recorded",
            results: vec![defer(), defer(), defer()],
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "all bounced: one failure DSN, done",
            results: vec![bounce(), bounce(), bounce()],
            bounced: vec![0, 1, 2],
            dsns: vec![(DsnKind::Failure, vec![0, 1, 2])],
            ..Case::default()
        },
        Case {
            name: "mixed: delivered and bounced are recorded, the deferred one is retried",
            results: vec![ok(), bounce(), defer()],
            delivered: vec![0],
            bounced: vec![1],
            deferred: vec![2],
            dsns: vec![(DsnKind::Failure, vec![1])],
            finished: vec![0, 1],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "a retry tries only what is left",
            tried: vec![2],
            results: vec![ok()],
            delivered: vec![2],
            ..Case::default()
        },
        Case {
            name: "expired: deferred recipients bounce with an expiry DSN",
            age: 5 * 86400,
            results: vec![ok(), defer(), defer()],
            delivered: vec![0],
            expired: vec![1, 2],
            dsns: vec![(DsnKind::Expiry, vec![1, 2])],
            ..Case::default()
        },
        Case {
            name: "expired and bounced in one attempt: two DSNs, failure first",
            age: 6 * 86400,
            results: vec![bounce(), defer(), ok()],
            delivered: vec![2],
            bounced: vec![0],
            expired: vec![1],
            dsns: vec![(DsnKind::Failure, vec![0]), (DsnKind::Expiry, vec![1])],
            ..Case::default()
        },
        Case {
            name: "not yet expired one second before maxAge",
            age: 5 * 86400 - 1,
            results: vec![defer(), ok(), ok()],
            delivered: vec![1, 2],
            deferred: vec![0],
            finished: vec![1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "delay notice once the message is old enough",
            age: 4 * HOUR,
            results: vec![defer(), ok(), defer()],
            delay_notice_after: Some(4 * HOUR),
            delivered: vec![1],
            deferred: vec![0, 2],
            dsns: vec![(DsnKind::Delay, vec![0, 2])],
            finished: vec![1],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "no delay notice before its time",
            age: 4 * HOUR - 1,
            results: vec![defer(), defer(), defer()],
            delay_notice_after: Some(4 * HOUR),
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "no second delay notice",
            age: 5 * HOUR,
            results: vec![defer(), defer(), defer()],
            delay_notice_after: Some(4 * HOUR),
            delay_notice_sent: true,
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "a bounce is never bounced: failures are dropped",
            sender: "",
            results: vec![bounce(), ok(), bounce()],
            delivered: vec![1],
            bounced: vec![0, 2],
            dropped: vec![0, 2],
            ..Case::default()
        },
        Case {
            name: "an expired bounce is dropped, not reported",
            sender: "",
            age: 5 * 86400,
            results: vec![defer(), defer(), defer()],
            expired: vec![0, 1, 2],
            dropped: vec![0, 1, 2],
            ..Case::default()
        },
        Case {
            name: "no delay notice for a bounce",
            sender: "",
            age: 5 * HOUR,
            results: vec![defer(), defer(), defer()],
            delay_notice_after: Some(HOUR),
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "every recipient failed to connect: the route may be down",
            results: vec![refused(), refused(), refused()],
            deferred: vec![0, 1, 2],
            retry: Some(true),
            ..Case::default()
        },
        Case {
            name: "one 4xx reply means the next hop is up",
            results: vec![refused(), defer(), refused()],
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "direct delivery: one unreachable domain does not suspect the route",
            route: Route::Direct,
            results: vec![refused(), refused(), refused()],
            deferred: vec![0, 1, 2],
            retry: Some(false),
            ..Case::default()
        },
        Case {
            name: "a missing result is retried, never counted as delivered",
            results: vec![ok()],
            delivered: vec![0],
            deferred: vec![1, 2],
            finished: vec![0],
            retry: Some(false),
            ..Case::default()
        },
    ];
    for c in cases {
        let env = envelope(c.sender, c.age);
        let cfg = retry();
        let d = decide(&Inputs {
            envelope: &env,
            tried: &c.tried,
            results: &c.results,
            attempts: 3,
            now: NOW,
            retry: &cfg,
            delay_notice_after: c.delay_notice_after,
            delay_notice_sent: c.delay_notice_sent,
            route: c.route,
            jitter: 0.5,
        });
        let name = c.name;
        assert_eq!(d.delivered, c.delivered, "{name}: delivered");
        assert_eq!(indices(&d.bounced), c.bounced, "{name}: bounced");
        assert_eq!(indices(&d.expired), c.expired, "{name}: expired");
        assert_eq!(indices(&d.deferred), c.deferred, "{name}: deferred");
        let dsns: Vec<(DsnKind, Vec<u32>)> =
            d.dsns.iter().map(|x| (x.kind, indices(&x.recipients))).collect();
        assert_eq!(dsns, c.dsns, "{name}: dsns");
        assert_eq!(indices(&d.dropped), c.dropped, "{name}: dropped");
        assert_eq!(d.finished, c.finished, "{name}: finished");
        match (d.after, c.retry) {
            (After::Done, None) => {}
            (
                After::Retry {
                    delay,
                    connection_failure,
                },
                Some(expected),
            ) => {
                assert_eq!(connection_failure, expected, "{name}: connection_failure");
                // Third attempt: 60 s x 2^2, jitter 0.5 is the middle of the band.
                assert_eq!(delay, Duration::from_secs(240), "{name}: delay");
            }
            (after, expected) => panic!("{name}: after {after:?}, expected retry {expected:?}"),
        }
    }
}

#[test]
fn diagnostics_name_the_recipient_and_say_why() {
    let env = envelope("app@example.com", 5 * 86400);
    let cfg = retry();
    let d = decide(&Inputs {
        envelope: &env,
        tried: &[0, 1],
        results: &[bounce(), defer()],
        attempts: 7,
        now: NOW,
        retry: &cfg,
        delay_notice_after: None,
        delay_notice_sent: false,
        route: Route::Smarthost,
        jitter: 0.0,
    });
    assert_eq!(d.bounced, vec![failed(0, "550 5.1.1 no such user")]);
    assert_eq!(
        d.expired,
        vec![failed(
            1,
            "message expired after 7 attempts; last error: 451 4.3.0 try later"
        )]
    );
}

#[test]
fn overall_outcome_prefers_delivered_then_deferred() {
    assert_eq!(overall(&[bounce(), ok()]), Outcome::Delivered);
    assert_eq!(overall(&[bounce(), defer()]), Outcome::Deferred);
    assert_eq!(overall(&[bounce()]), Outcome::Bounced);
}

/// RFC 3461 4.1: NOTIFY per recipient decides which reports go out; a recipient without it gets
/// failure and delay reports (the default). SUCCESS gets a "relayed" notice unless the next hop
/// took the parameters (5.2.1), and "delivered" in capture mode (final delivery).
#[test]
fn notify_decides_which_reports_go_out() {
    struct Case {
        name: &'static str,
        /// NOTIFY of a@, b@, c@ (`None`: not given).
        notify: [Option<&'static str>; 3],
        results: Vec<RcptResult>,
        route: Route,
        age: u64,
        dsns: Vec<(DsnKind, Vec<u32>)>,
        unreported: Vec<u32>,
    }
    let passed = || RcptResult {
        next_hop_dsn: true,
        remote: None,
        ..ok()
    };
    let cases = [
        Case {
            name: "NEVER and DELAY-only recipients get no failure report",
            notify: [Some("NEVER"), Some("DELAY"), None],
            results: vec![bounce(), bounce(), bounce()],
            route: Route::Smarthost,
            age: 10,
            dsns: vec![(DsnKind::Failure, vec![2])],
            unreported: vec![0, 1],
        },
        Case {
            name: "expiry is a failure too",
            notify: [Some("FAILURE"), Some("SUCCESS"), None],
            results: vec![defer(), defer(), ok()],
            route: Route::Smarthost,
            age: 6 * 86400,
            dsns: vec![(DsnKind::Expiry, vec![0])],
            unreported: vec![1],
        },
        Case {
            name: "SUCCESS to a next hop without DSN: relayed",
            notify: [Some("SUCCESS"), Some("SUCCESS,FAILURE"), Some("FAILURE")],
            results: vec![ok(), passed(), ok()],
            route: Route::Direct,
            age: 10,
            dsns: vec![(DsnKind::Relayed, vec![0])],
            unreported: vec![],
        },
        Case {
            name: "SUCCESS in capture mode: delivered",
            notify: [Some("SUCCESS"), None, Some("NEVER")],
            results: vec![ok(), ok(), ok()],
            route: Route::Capture,
            age: 10,
            dsns: vec![(DsnKind::Delivered, vec![0])],
            unreported: vec![],
        },
        Case {
            name: "delay notice only for recipients that want DELAY",
            notify: [Some("FAILURE"), Some("DELAY"), None],
            results: vec![defer(), defer(), defer()],
            route: Route::Smarthost,
            age: 2 * HOUR,
            dsns: vec![(DsnKind::Delay, vec![1, 2])],
            unreported: vec![],
        },
        Case {
            name: "no delay notice when nobody wants one",
            notify: [Some("NEVER"), Some("FAILURE"), Some("SUCCESS")],
            results: vec![defer(), defer(), defer()],
            route: Route::Smarthost,
            age: 2 * HOUR,
            dsns: vec![],
            unreported: vec![],
        },
    ];
    for c in cases {
        let mut env = envelope("app@example.com", c.age);
        env.dsn.rcpts = c
            .notify
            .iter()
            .map(|n| crate::message::RcptDsn {
                notify: n.map(|n| Notify::parse(n).expect("valid NOTIFY")),
                orcpt: None,
            })
            .collect();
        let cfg = retry();
        let d = decide(&Inputs {
            envelope: &env,
            tried: &[0, 1, 2],
            results: &c.results,
            attempts: 3,
            now: NOW,
            retry: &cfg,
            delay_notice_after: Some(HOUR),
            delay_notice_sent: false,
            route: c.route,
            jitter: 0.5,
        });
        let dsns: Vec<(DsnKind, Vec<u32>)> =
            d.dsns.iter().map(|x| (x.kind, indices(&x.recipients))).collect();
        assert_eq!(dsns, c.dsns, "{}: dsns", c.name);
        assert_eq!(indices(&d.unreported), c.unreported, "{}: unreported", c.name);
    }
}

#[test]
fn a_bounce_gets_no_success_notice_either() {
    let mut env = envelope("", 10);
    env.dsn.rcpts = vec![crate::message::RcptDsn {
        notify: Notify::parse("SUCCESS"),
        orcpt: None,
    }];
    let cfg = retry();
    let d = decide(&Inputs {
        envelope: &env,
        tried: &[0],
        results: &[ok()],
        attempts: 1,
        now: NOW,
        retry: &cfg,
        delay_notice_after: None,
        delay_notice_sent: false,
        route: Route::Smarthost,
        jitter: 0.5,
    });
    assert!(d.dsns.is_empty(), "{:?}", d.dsns);
}
