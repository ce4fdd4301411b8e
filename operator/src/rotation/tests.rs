use super::*;

const DAY: u64 = 86_400;

fn at(seconds: i64) -> Timestamp {
    // 2026-01-01T00:00:00Z plus `seconds`.
    Timestamp::from_second(1_767_225_600 + seconds).expect("valid timestamp")
}

fn key(selector: &str, created: i64) -> Key {
    Key {
        selector: selector.into(),
        secret_name: format!("dkim-shop-{selector}"),
        fingerprint: format!("sha256:{selector}"),
        created: at(created),
    }
}

fn stable(since: i64) -> State {
    State {
        active: key("mailroom", since),
        active_since: at(since),
        pending: None,
        retiring: None,
        retired: None,
        token: None,
    }
}

fn pending(since: i64, created: i64) -> State {
    State {
        pending: Some(key("new", created)),
        ..stable(since)
    }
}

fn retiring(until: i64) -> State {
    State {
        active: key("new", 0),
        retiring: Some((key("mailroom", 0), at(until))),
        ..stable(0)
    }
}

fn every(days: u64, grace_days: u64) -> Policy {
    Policy {
        period: Some(Duration::from_secs(days * DAY)),
        grace: Duration::from_secs(grace_days * DAY),
    }
}

const MANUAL: Policy = Policy {
    period: None,
    grace: Duration::from_secs(7 * DAY),
};

struct Seen {
    now: i64,
    verified: Vec<String>,
    trigger: Option<&'static str>,
    pending_present: bool,
    retiring_present: bool,
    unknown: Vec<Key>,
}

fn seen(now: i64) -> Seen {
    Seen {
        now,
        verified: Vec::new(),
        trigger: None,
        pending_present: true,
        retiring_present: true,
        unknown: Vec::new(),
    }
}

impl Seen {
    fn verified(mut self, selector: &str) -> Self {
        self.verified.push(selector.into());
        self
    }

    fn run(&self, state: &State, policy: &Policy) -> Plan {
        plan(
            state,
            policy,
            &Observed {
                name: "shop",
                base_selector: "mailroom",
                trigger: self.trigger,
                verified: &self.verified,
                pending_secret_present: self.pending_present,
                retiring_secret_present: self.retiring_present,
                unknown: &self.unknown,
                now: at(self.now),
            },
        )
    }
}

/// What a plan did, in a form a table can state.
#[derive(Debug, PartialEq, Eq)]
struct Want {
    phase: RotationPhase,
    active: &'static str,
    steps: Vec<&'static str>,
    delete: Vec<&'static str>,
    wake_at: Option<i64>,
}

/// Nothing to do now: `phase` and the `active` key stay, until `wake_at`.
fn waits(phase: RotationPhase, active: &'static str, wake_at: Option<i64>) -> Want {
    Want {
        phase,
        active,
        steps: vec![],
        delete: vec![],
        wake_at,
    }
}

fn summary(p: &Plan) -> Want {
    let names = |s: &Step| match s {
        Step::Started(_) => "started",
        Step::Resumed(_) => "resumed",
        Step::Switched(..) => "switched",
        Step::Retired(_) => "retired",
        Step::Cancelled(_, Cancel::NotWanted) => "cancelled:not-wanted",
        Step::Cancelled(_, Cancel::SecretLost) => "cancelled:secret-lost",
    };
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    Want {
        phase: p.state.phase(),
        active: leak(&p.state.active.selector),
        steps: p.steps.iter().map(names).collect(),
        delete: p.delete.iter().map(|s| leak(s)).collect(),
        wake_at: p.wake_at.map(|t| t.as_second() - at(0).as_second()),
    }
}

#[test]
fn phases_follow_the_clock_and_dns() {
    use RotationPhase::*;
    struct Case {
        name: &'static str,
        state: State,
        policy: Policy,
        seen: Seen,
        want: Want,
    }
    let d = DAY as i64;
    let cases = [
        Case {
            name: "one second before the period ends nothing happens",
            state: stable(0),
            policy: every(90, 7),
            seen: seen(90 * d - 1),
            want: waits(Stable, "mailroom", Some(90 * d)),
        },
        Case {
            name: "at the exact end of the period a rotation starts",
            state: stable(0),
            policy: every(90, 7),
            seen: seen(90 * d),
            want: Want {
                phase: Pending,
                active: "mailroom",
                steps: vec!["started"],
                delete: vec![],
                wake_at: None,
            },
        },
        Case {
            name: "pending stays pending while DNS does not serve the new key",
            state: pending(0, 90 * d),
            policy: every(90, 7),
            seen: seen(200 * d),
            want: waits(Pending, "mailroom", None),
        },
        Case {
            name: "only the new selector's record counts, not the old one",
            state: pending(0, 90 * d),
            policy: every(90, 7),
            seen: seen(91 * d).verified("mailroom"),
            want: waits(Pending, "mailroom", None),
        },
        Case {
            name: "the new record resolves: switch, the old key retires after the grace",
            state: pending(0, 90 * d),
            policy: every(90, 7),
            seen: seen(91 * d).verified("new"),
            want: Want {
                phase: Retiring,
                active: "new",
                steps: vec!["switched"],
                delete: vec![],
                wake_at: Some(98 * d),
            },
        },
        Case {
            name: "one second before retire-at the old key stays",
            state: retiring(10 * d),
            policy: every(90, 7),
            seen: seen(10 * d - 1),
            want: waits(Retiring, "new", Some(10 * d)),
        },
        Case {
            name: "at retire-at the old key's Secret goes",
            state: retiring(10 * d),
            policy: every(90, 7),
            seen: seen(10 * d),
            want: Want {
                phase: Stable,
                active: "new",
                steps: vec!["retired"],
                delete: vec!["dkim-shop-mailroom"],
                wake_at: Some(90 * d),
            },
        },
        Case {
            name: "retiring keeps its own clock when the grace is changed",
            state: retiring(10 * d),
            policy: every(90, 1),
            seen: seen(5 * d),
            want: waits(Retiring, "new", Some(10 * d)),
        },
        Case {
            name: "a due rotation waits for the previous key to retire",
            state: retiring(10 * d),
            policy: every(1, 7),
            seen: seen(5 * d),
            want: waits(Retiring, "new", Some(10 * d)),
        },
        Case {
            name: "retire and start in one pass when both are due",
            state: retiring(10 * d),
            policy: every(1, 7),
            seen: seen(10 * d),
            want: Want {
                phase: Pending,
                active: "new",
                steps: vec!["retired", "started"],
                delete: vec!["dkim-shop-mailroom"],
                wake_at: None,
            },
        },
        Case {
            name: "a shorter period mid-rotation does not start a second key",
            state: pending(0, 90 * d),
            policy: every(1, 7),
            seen: seen(95 * d),
            want: waits(Pending, "mailroom", None),
        },
        Case {
            name: "removing the rotation cancels a pending key that never signed",
            state: pending(0, 90 * d),
            policy: MANUAL,
            seen: seen(95 * d),
            want: Want {
                phase: Stable,
                active: "mailroom",
                steps: vec!["cancelled:not-wanted"],
                delete: vec!["dkim-shop-new"],
                wake_at: None,
            },
        },
        Case {
            name: "removing the rotation lets a retiring key finish retiring",
            state: retiring(10 * d),
            policy: MANUAL,
            seen: seen(10 * d),
            want: Want {
                phase: Stable,
                active: "new",
                steps: vec!["retired"],
                delete: vec!["dkim-shop-mailroom"],
                wake_at: None,
            },
        },
        Case {
            name: "a lost pending Secret is dropped and a fresh rotation starts",
            state: pending(0, 90 * d),
            policy: every(90, 7),
            seen: Seen {
                pending_present: false,
                ..seen(95 * d)
            },
            want: Want {
                phase: Pending,
                active: "mailroom",
                steps: vec!["cancelled:secret-lost", "started"],
                delete: vec!["dkim-shop-new"],
                wake_at: None,
            },
        },
        Case {
            name: "a lost retiring Secret retires the key early",
            state: retiring(10 * d),
            policy: every(90, 7),
            seen: Seen {
                retiring_present: false,
                ..seen(d)
            },
            want: Want {
                phase: Stable,
                active: "new",
                steps: vec!["retired"],
                delete: vec!["dkim-shop-mailroom"],
                wake_at: Some(90 * d),
            },
        },
        Case {
            name: "no period and no trigger: never rotates",
            state: stable(0),
            policy: MANUAL,
            seen: seen(10_000 * d),
            want: waits(Stable, "mailroom", None),
        },
    ];
    for case in cases {
        let got = summary(&case.seen.run(&case.state, &case.policy));
        assert_eq!(got, case.want, "{}", case.name);
    }
}

#[test]
fn dns_flapping_never_moves_signing_back_or_early() {
    let policy = every(90, 7);
    let d = DAY as i64;
    let mut state = pending(0, 90 * d);
    // Served, then gone, then served: the first observation switches, later ones change nothing.
    let answers = [false, true, false, true, false];
    let mut switched_at = None;
    for (i, served) in answers.into_iter().enumerate() {
        let now = 91 * d + i as i64;
        let mut s = seen(now);
        if served {
            s = s.verified("new");
        }
        let plan = s.run(&state, &policy);
        if switched_at.is_none() && served {
            switched_at = Some(now);
        }
        let want = if switched_at.is_some() { "new" } else { "mailroom" };
        assert_eq!(plan.state.active.selector, want, "answer {i}");
        state = plan.state;
    }
    assert_eq!(
        state.retiring.map(|(k, at_)| (k.selector, at_)),
        Some(("mailroom".into(), at(98 * d + 1)))
    );
}

#[test]
fn a_new_key_gets_a_dated_selector_and_secret() {
    let plan = seen(90 * DAY as i64 + 3723).run(&stable(0), &every(90, 7));
    let key = plan.create.expect("a key to create");
    assert_eq!(key.selector, "mailroom-20260401-010203");
    assert_eq!(key.secret_name, "dkim-shop-20260401-010203");
    assert_eq!(plan.state.pending, Some(key.clone()));
    assert_eq!(plan.steps, vec![Step::Started(key)]);
}

#[test]
fn selectors_stay_one_dns_label() {
    let long = "a".repeat(60) + "-b";
    let s = selector(&long, at(0));
    assert_eq!(s.len(), 63);
    assert!(s.starts_with(&"a".repeat(46)));
    let trimmed = selector(&("x".repeat(46) + "-yy"), at(0));
    assert_eq!(trimmed, format!("{}-20260101-000000", "x".repeat(46)));
    assert_eq!(selector("mailroom", at(0)), "mailroom-20260101-000000");
}

#[test]
fn the_annotation_starts_one_rotation_per_value() {
    let mut s = seen(5);
    s.trigger = Some("t1");
    let first = s.run(&stable(0), &MANUAL);
    assert_eq!(first.state.token.as_deref(), Some("t1"));
    assert!(first.create.is_some());
    // The same value again, after that rotation finished: nothing.
    let done = State {
        token: Some("t1".into()),
        ..stable(100)
    };
    let again = s.run(&done, &MANUAL);
    assert!(again.steps.is_empty());
    // A new value while a key is retiring waits; once retired, it starts.
    s.trigger = Some("t2");
    let busy = State {
        token: Some("t1".into()),
        ..retiring(50)
    };
    assert!(s.run(&busy, &MANUAL).create.is_none());
    s.now = 50;
    let later = s.run(&busy, &MANUAL);
    assert_eq!(summary(&later).steps, ["retired", "started"]);
    assert_eq!(later.state.token.as_deref(), Some("t2"));
}

#[test]
fn a_trigger_while_pending_joins_the_rotation_and_keeps_it_wanted() {
    let mut s = seen(5);
    s.trigger = Some("t9");
    let plan = s.run(&pending(0, 1), &MANUAL);
    assert_eq!(plan.state.token.as_deref(), Some("t9"));
    assert!(plan.steps.is_empty(), "no cancel, no second key");
}

#[test]
fn a_restart_mid_rotation_decides_the_same_from_status() {
    // The status round-trips through the apiserver; a new process plans from it alone.
    let policy = every(90, 7);
    let d = DAY as i64;
    let state = pending(0, 90 * d);
    let a = seen(92 * d).verified("new").run(&state, &policy);
    let b = seen(92 * d).verified("new").run(&state.clone(), &policy);
    assert_eq!(a, b);
    assert_eq!(summary(&a).steps, ["switched"]);
}

#[test]
fn a_secret_created_but_never_recorded_is_resumed_not_regenerated() {
    let d = DAY as i64;
    let orphan = key("mailroom-20260401-000000", 90 * d);
    let stale = key("older", -5);
    let s = Seen {
        unknown: vec![stale, orphan.clone()],
        ..seen(90 * d + 30)
    };
    let plan = s.run(&stable(0), &every(90, 7));
    assert_eq!(plan.create, None, "never a second new key");
    assert_eq!(plan.state.pending, Some(orphan.clone()));
    assert_eq!(plan.steps, vec![Step::Resumed(orphan)]);
}

#[test]
fn the_signing_key_is_never_deleted() {
    // A hand-edited status naming the signing key's Secret as the retiring one.
    let mut state = retiring(1);
    if let Some((k, _)) = state.retiring.as_mut() {
        k.secret_name = state.active.secret_name.clone();
    }
    let plan = seen(10).run(&state, &every(90, 7));
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
}

#[test]
fn no_switch_while_a_previous_key_still_retires() {
    let mut state = retiring(100);
    state.pending = Some(key("third", 5));
    let plan = seen(10).verified("third").run(&state, &every(90, 7));
    assert_eq!(plan.state.active.selector, "new");
    assert!(plan.state.pending.is_some());
}
