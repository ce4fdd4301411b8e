//! JSON logs as a log pipeline reads them: every line the sidecar writes with
//! `SIDECAR_LOG_FORMAT=json` is one JSON object, and no object repeats a key (a pipeline keeps only
//! one of two equal keys, so a repeated key is a lost field: the message id once shadowed the
//! event's text). Checked by Python's json module with a hook that refuses repeated keys
//! (tests/peers/json_lines.py), over a run that delivers, defers, bounces, rejects a config
//! change and drains; and over the one line of a fatal start-up error.

use mailroom_test_support::{
    peers::Upstream,
    relay::{self, Sidecar, eventually, smarthost_config, smtplib_send},
};
use serde_json::Value;
use std::{path::Path, process::Command};

fn strict(dir: &Path, log: &str) -> Value {
    relay::json_lines(dir, log)
}

/// The events whose text starts with `message`.
fn events<'a>(summary: &'a Value, message: &str) -> Vec<&'a Value> {
    summary["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(message)))
        .collect()
}

#[test]
fn every_json_log_line_is_one_object_without_repeated_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", "");
    let mut sidecar = Sidecar::start_with_env(
        dir.path(),
        &config,
        &[("SIDECAR_LOG_FORMAT", "json"), ("SIDECAR_DRAIN_SECONDS", "2")],
    );
    let body = b"From: app@example.com\r\nSubject: trail\r\n\r\nthe body must never be logged\r\n";
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["ok@example.net", "temp-fail@example.net", "perm-fail@example.net"],
        body,
    )
    .expect("accepted");
    // Delivered to ok@, deferred for temp-fail@, bounced for perm-fail@ (the bounce goes to the
    // upstream too).
    eventually("delivery, deferral and bounce", || {
        let log = sidecar.log();
        (log.contains("recipient deferred") && log.contains("recipient bounced") && up.received().len() >= 2)
            .then_some(())
    });
    sidecar.swap_config("apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nnot: [valid\n");
    eventually("the rejected config change logged", || {
        sidecar.log().contains("config change rejected").then_some(())
    });
    sidecar.terminate();
    eventually("the drain's last line", || {
        sidecar.log().contains("\"stopped\"").then_some(())
    });

    let log = sidecar.log();
    let summary = strict(dir.path(), &log);
    assert_eq!(
        summary["bad"],
        serde_json::json!([]),
        "every line strict JSON:\n{log}"
    );
    assert!(summary["lines"].as_u64() > Some(5), "{log}");
    for message in ["recipient deferred", "recipient bounced"] {
        let found = events(&summary, message);
        assert!(!found.is_empty(), "{message:?} logged:\n{log}");
        for e in found {
            let keys = e["keys"].as_array().expect("keys");
            assert!(
                keys.contains(&"message_id".into()),
                "{message:?} names its message: {e}"
            );
        }
    }
    // The delivery trail: one line per recipient outcome, with every field a log pipeline
    // needs to answer "what happened to this message", and no full address anywhere (the
    // upstream repeats the address in its 550 text).
    let trail_keys = [
        "attempt",
        "code",
        "delay_seconds",
        "message_id",
        "recipient",
        "relay",
        "remote",
        "reply",
        "route",
        "status",
    ];
    for message in ["recipient delivered", "recipient deferred", "recipient bounced"] {
        for e in events(&summary, message) {
            let keys = e["keys"].as_array().expect("keys");
            for k in trail_keys {
                assert!(keys.contains(&k.into()), "{message:?} has {k}: {e}");
            }
        }
    }
    let delivered = events(&summary, "recipient delivered");
    assert_eq!(
        delivered.len(),
        2,
        "ok@ and the bounce to app@ were delivered, one line each:\n{log}"
    );
    assert!(
        log.contains(r#""code":"550","status":"5.1.1""#),
        "the bounce's codes:\n{log}"
    );
    assert!(log.contains(r#""recipient":"***@example.net""#), "{log}");
    assert!(
        log.contains(r#""remote":"127.0.0.1""#),
        "the smarthost answered:\n{log}"
    );
    for address in ["ok@example.net", "temp-fail@example.net", "perm-fail@example.net"] {
        assert!(!log.contains(address), "{address} logged in full:\n{log}");
    }
    assert!(!events(&summary, "config change rejected").is_empty(), "{log}");
    assert!(
        !log.contains("the body must never be logged"),
        "no message body in the logs:\n{log}"
    );
}

#[test]
fn a_fatal_start_up_error_is_logged_as_json_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(relay::sidecar_bin())
        .env("SIDECAR_LOG_FORMAT", "json")
        .env("SIDECAR_DRAIN_SECONDS", "soon")
        .output()
        .expect("run mailroom-sidecar");
    assert_eq!(out.status.code(), Some(64), "EX_USAGE");
    let log = String::from_utf8_lossy(&out.stderr);
    let summary = strict(dir.path(), &log);
    assert_eq!(summary["bad"], serde_json::json!([]), "{log}");
    let errors: Vec<_> = summary["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        log.contains("SIDECAR_DRAIN_SECONDS"),
        "the error names the setting: {log}"
    );
}
