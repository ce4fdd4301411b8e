use super::*;

const MINIMAL: &str = "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
domains:
  - domain: example.com
spool:
  dir: /tmp/spool
delivery:
  capture:
    dir: /tmp/capture
";

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::parse(Path::new("t.yaml"), MINIMAL).expect("valid");
    assert_eq!(c.listen.address.to_string(), DEFAULT_LISTEN_ADDR);
    assert_eq!(c.admin.address.to_string(), DEFAULT_ADMIN_ADDR);
    assert_eq!(c.limits.max_recipients, 100);
    assert_eq!(c.retry.initial_seconds, 60);
    assert_eq!(c.retry.max_age_seconds, 432_000);
    assert_eq!(c.limits.bare_line_endings, BareLineEndings::Reject);
    assert_eq!(c.spool.reserve_bytes, 4 << 20);
}

#[test]
fn a_spool_reserve_too_small_to_matter_is_an_error_naming_the_field() {
    let at = |bytes: u64| {
        let text = MINIMAL.replace(
            "  dir: /tmp/spool",
            &format!("  dir: /tmp/spool\n  reserveBytes: {bytes}"),
        );
        Config::parse(Path::new("t.yaml"), &text)
    };
    let Err(Error::Invalid { problems, .. }) = at(65_535) else {
        panic!("a reserve under 64 KiB was accepted")
    };
    assert_eq!(problems[0].field, "spool.reserveBytes");
    assert!(problems[0].message.contains("65536"), "{}", problems[0].message);
    assert_eq!(at(65_536).expect("64 KiB is enough").spool.reserve_bytes, 65_536);
}

#[test]
fn unknown_field_is_an_error_naming_its_path() {
    let text = MINIMAL.replace("  dir: /tmp/spool", "  dir: /tmp/spool\n  maxByte: 3");
    let err = Config::parse(Path::new("t.yaml"), &text).expect_err("unknown field");
    match err {
        Error::Parse { field, message, .. } => {
            assert_eq!(field, "spool.maxByte");
            assert!(message.contains("maxByte"), "{message}");
        }
        other => panic!("wrong error {other}"),
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace("mailroom.dev/v1alpha1", "mailroom.dev/v9")
        .replace("domain: example.com", "domain: Bad_Domain..")
        + "listen:\n  address: 0.0.0.0:25\nretry:\n  initialSeconds: 0\n";
    let err = Config::parse(Path::new("t.yaml"), &text).expect_err("invalid");
    let Error::Invalid { problems, .. } = err else {
        panic!("wrong error")
    };
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "apiVersion",
            "listen.address",
            "domains[0].domain",
            "retry.initialSeconds"
        ]
    );
}

#[test]
fn non_loopback_listen_without_opt_in_is_an_error_naming_the_field() {
    struct Case {
        address: &'static str,
        refused: bool,
    }
    let cases = [
        Case {
            address: "0.0.0.0:2525",
            refused: true,
        },
        Case {
            address: "10.1.2.3:25",
            refused: true,
        },
        Case {
            address: "\"[::]:2525\"",
            refused: true,
        },
        Case {
            address: "127.0.0.2:2525",
            refused: false,
        },
        Case {
            address: "\"[::1]:2525\"",
            refused: false,
        },
    ];
    for case in cases {
        let text = format!("{MINIMAL}listen:\n  address: {}\n", case.address);
        match Config::parse(Path::new("t.yaml"), &text) {
            Ok(_) => assert!(!case.refused, "{} accepted without opt-in", case.address),
            Err(Error::Invalid { problems, .. }) => {
                assert!(case.refused, "{} refused: {problems:?}", case.address);
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].field, "listen.address");
                assert!(
                    problems[0].message.contains("listen.allowNonLoopback: true"),
                    "{}",
                    problems[0]
                );
            }
            Err(other) => panic!("{}: {other}", case.address),
        }
    }
}

#[test]
fn non_loopback_listen_needs_explicit_opt_in() {
    let text = format!("{MINIMAL}listen:\n  address: 0.0.0.0:25\n  allowNonLoopback: true\n");
    Config::parse(Path::new("t.yaml"), &text).expect("explicit opt-in is valid");
}

/// The queue API reads envelopes and deletes mail: loopback only, with no opt-out, also when the
/// address comes from the environment.
#[test]
fn the_queue_api_listens_on_loopback_only() {
    let c = Config::parse(Path::new("t.yaml"), MINIMAL).expect("valid");
    assert_eq!(c.admin.queue_api_address.to_string(), DEFAULT_QUEUE_API_ADDR);
    let text = format!("{MINIMAL}admin:\n  queueApiAddress: 0.0.0.0:9466\n");
    let Err(Error::Invalid { problems, .. }) = Config::parse(Path::new("t.yaml"), &text) else {
        panic!("a queue API off loopback was accepted")
    };
    assert_eq!(problems[0].field, "admin.queueApiAddress");
    assert!(
        problems[0].message.contains("not a loopback address"),
        "{}",
        problems[0].message
    );

    let env: std::collections::HashMap<&str, &str> = [(settings::ENV_QUEUE_API_ADDR, "10.0.0.1:9466")].into();
    let settings = settings::Settings::parse(&env).expect("settings");
    let Err(Error::Invalid { problems, .. }) = settings.finish(Path::new("t.yaml"), c) else {
        panic!("an override off loopback was accepted")
    };
    assert_eq!(problems[0].field, "admin.queueApiAddress");
    assert!(
        problems[0].message.contains(settings::ENV_QUEUE_API_ADDR),
        "{}",
        problems[0].message
    );
}

#[test]
fn shaping_problems_name_their_field() {
    let text = format!(
        "{MINIMAL}shaping:\n  default: {{concurrency: 0}}\n  domains:\n    Gmail.com: {{ratePerMinute: 0}}\n"
    );
    let Err(Error::Invalid { problems, .. }) = Config::parse(Path::new("t.yaml"), &text) else {
        panic!("bad shaping was accepted")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "shaping.default.concurrency",
            "shaping.domains.Gmail.com.ratePerMinute",
            "shaping.domains.Gmail.com"
        ]
    );
    let ok =
        format!("{MINIMAL}shaping:\n  domains:\n    gmail.com: {{concurrency: 20, ratePerMinute: 600}}\n");
    let c = Config::parse(Path::new("t.yaml"), &ok).expect("valid");
    assert_eq!(c.shaping.domains["gmail.com"].rate_per_minute, Some(600));
}

#[test]
fn golden_files_load() {
    for (name, text) in [
        (
            "smarthost.yaml",
            include_str!("../../tests/fixtures/sidecar-config/smarthost.yaml"),
        ),
        (
            "direct.yaml",
            include_str!("../../tests/fixtures/sidecar-config/direct.yaml"),
        ),
        (
            "capture.yaml",
            include_str!("../../tests/fixtures/sidecar-config/capture.yaml"),
        ),
        (
            "rendered-relay.yaml",
            include_str!("../../tests/fixtures/sidecar-config/rendered-relay.yaml"),
        ),
    ] {
        let c = Config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every field the golden file sets survives a serialize/parse round trip.
        let again = serde_yaml_ng::to_string(&c).expect("serialize");
        assert_eq!(
            Config::parse(Path::new(name), &again).expect("reparse"),
            c,
            "{name}"
        );
    }
}

#[test]
fn direct_delivery_gets_defaults_and_reports_bad_fields_with_paths() {
    let text = MINIMAL.replace("  capture:\n    dir: /tmp/capture\n", "  direct: {}\n");
    let c = Config::parse(Path::new("t.yaml"), &text).expect("valid");
    let Delivery::Direct(d) = &c.delivery else {
        panic!("direct expected")
    };
    assert_eq!((d.port, d.max_hosts, d.tls), (25, 5, DirectTls::Opportunistic));
    assert_eq!((d.mta_sts, d.dane), (MtaStsMode::Off, DaneMode::Off));
    assert!(d.resolvers.is_empty());

    let text = MINIMAL.replace(
        "  capture:\n    dir: /tmp/capture\n",
        "  direct:\n    port: 0\n    maxHosts: 0\n    maxConnectionsPerDomain: 0\n",
    );
    let Err(Error::Invalid { problems, .. }) = Config::parse(Path::new("t.yaml"), &text) else {
        panic!("invalid expected")
    };
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "delivery.direct.port",
            "delivery.direct.maxConnectionsPerDomain",
            "delivery.direct.maxHosts"
        ]
    );
    let text = MINIMAL.replace(
        "  capture:\n    dir: /tmp/capture\n",
        "  direct:\n    tls: maybe\n",
    );
    let Err(Error::Parse { field, .. }) = Config::parse(Path::new("t.yaml"), &text) else {
        panic!("parse error expected")
    };
    assert_eq!(field, "delivery.direct.tls");
}

#[test]
fn postmaster_defaults_to_the_first_domain_and_is_validated_as_a_mailbox() {
    let c = Config::parse(Path::new("t.yaml"), MINIMAL).expect("valid");
    assert_eq!(c.postmaster, None);
    assert_eq!(c.postmaster(), "postmaster@example.com");

    let golden = include_str!("../../tests/fixtures/sidecar-config/smarthost.yaml");
    let c = Config::parse(Path::new("smarthost.yaml"), golden).expect("golden");
    assert_eq!(c.postmaster(), "hostmaster@shop.example.com");

    struct Case {
        postmaster: &'static str,
        delivery: &'static str,
        /// The problem's message contains this; "" for a valid value.
        want: &'static str,
    }
    let capture = "  capture:\n    dir: /tmp/capture\n";
    let direct = "  direct: {}\n";
    let cases = [
        Case {
            postmaster: "ops@example.org",
            delivery: capture,
            want: "",
        },
        Case {
            postmaster: "'\"mail ops\"@example.org'",
            delivery: direct,
            want: "",
        },
        Case {
            postmaster: "ops@[192.0.2.1]",
            delivery: capture,
            want: "",
        },
        Case {
            postmaster: "ops@[192.0.2.1]",
            delivery: direct,
            want: "address literal",
        },
        Case {
            postmaster: "postmaster",
            delivery: capture,
            want: "is not a mailbox",
        },
        Case {
            postmaster: "ops@bad_domain",
            delivery: capture,
            want: "is not a mailbox",
        },
        Case {
            postmaster: "δοκιμή@example.org",
            delivery: capture,
            want: "ASCII",
        },
    ];
    for case in cases {
        let text = MINIMAL.replace("  capture:\n    dir: /tmp/capture\n", case.delivery)
            + &format!("postmaster: {}\n", case.postmaster);
        match Config::parse(Path::new("t.yaml"), &text) {
            Ok(_) => assert!(case.want.is_empty(), "{} accepted", case.postmaster),
            Err(Error::Invalid { problems, .. }) => {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].field, "postmaster");
                assert!(
                    !case.want.is_empty() && problems[0].message.contains(case.want),
                    "{}: {}",
                    case.postmaster,
                    problems[0]
                );
            }
            Err(other) => panic!("{}: {other}", case.postmaster),
        }
    }
}
