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
fn non_loopback_listen_needs_explicit_opt_in() {
    let text = format!("{MINIMAL}listen:\n  address: 0.0.0.0:25\n  allowNonLoopback: true\n");
    Config::parse(Path::new("t.yaml"), &text).expect("explicit opt-in is valid");
}

#[test]
fn golden_files_load() {
    for (name, text) in [
        (
            "smarthost.yaml",
            include_str!("../../../tests/fixtures/sidecar-config/smarthost.yaml"),
        ),
        (
            "capture.yaml",
            include_str!("../../../tests/fixtures/sidecar-config/capture.yaml"),
        ),
        (
            "rendered-relay.yaml",
            include_str!("../../../tests/fixtures/sidecar-config/rendered-relay.yaml"),
        ),
    ] {
        let c = Config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every field the golden file sets survives a serialize/parse round trip.
        let again = serde_yaml::to_string(&c).expect("serialize");
        assert_eq!(
            Config::parse(Path::new(name), &again).expect("reparse"),
            c,
            "{name}"
        );
    }
}
