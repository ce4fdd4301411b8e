//! Per-destination shaping (config `shaping`) against a real upstream (upstream.py, aiosmtpd,
//! which holds `slow*` recipients 5 s at RCPT and refuses `temp-fail*` with 450): one destination
//! that is slow or deferring never delays mail to another, and a destination's rate holds.

use mailroom_test_support::{
    peers::Upstream,
    relay::{Sidecar, eventually, smarthost_config, smtplib_send},
};
use std::time::Instant;

fn send(sidecar: &Sidecar, to: &str, subject: &str) {
    let message = format!("From: app@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n");
    smtplib_send(sidecar.smtp, "app@example.com", &[to], message.as_bytes()).expect("accepted");
}

const SHAPING: &str = "shaping:
  default: {concurrency: 2}
  domains:
    rated.example: {ratePerMinute: 3}
";

/// Four connections; a destination may have two attempts at once. Six messages to a destination
/// that holds each RCPT 5 s and three to one that defers everything take their share; a message
/// to a healthy destination sent after them is delivered first, at once.
#[test]
fn a_slow_or_deferring_destination_never_delays_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(
        up.port,
        "none",
        "    maxConnections: 4",
        "  - domain: example.com",
        SHAPING,
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    for n in 0..6 {
        send(&sidecar, "slow@slow.example", &format!("slow-{n}"));
    }
    for n in 0..3 {
        send(&sidecar, "temp-fail@deferring.example", &format!("deferring-{n}"));
    }
    let t0 = Instant::now();
    send(&sidecar, "ok@fast.example", "fast");
    eventually("the healthy destination's message", || {
        up.subjects().iter().any(|s| s == "fast").then_some(())
    });
    let waited = t0.elapsed();
    assert_eq!(
        up.subjects().first().map(String::as_str),
        Some("fast"),
        "nothing of the slow destination was delivered before it"
    );
    eprintln!("shaping: the healthy destination's message arrived {waited:.1?} after it was sent");
    // The slow destination's six go two at a time, all of them.
    eventually("the slow destination's six", || {
        (up.subjects().iter().filter(|s| s.starts_with("slow-")).count() == 6).then_some(())
    });
}

/// `rated.example: {ratePerMinute: 3}`: a minute's worth (three) goes at once, the fourth waits
/// for the next token (20 s) as a deferred message with no error, then goes.
#[test]
fn a_destinations_rate_holds_and_its_mail_waits_without_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", SHAPING);
    let sidecar = Sidecar::start(dir.path(), &config);
    for n in 0..4 {
        send(&sidecar, "x@rated.example", &format!("rated-{n}"));
    }
    eventually("three at once", || (up.subjects().len() == 3).then_some(()));
    let t3 = Instant::now();
    let out = std::process::Command::new(mailroom_test_support::relay::sidecar_bin())
        .args([
            "queue",
            "list",
            "-o",
            "json",
            "--api",
            &sidecar.queue_api.to_string(),
        ])
        .output()
        .expect("queue list");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let row = &rows[0];
    assert_eq!(
        (
            rows.as_array().map(Vec::len),
            &row["state"],
            &row["attempts"],
            &row["last_error"]
        ),
        (Some(1), &"deferred".into(), &0.into(), &serde_json::Value::Null),
        "the fourth waits for the rate, untried: {rows}"
    );
    eventually("the fourth after its token", || {
        (up.subjects().len() == 4).then_some(())
    });
    let gap = t3.elapsed();
    assert!(
        gap.as_secs_f64() >= 15.0,
        "the fourth went {gap:?} after the third: the rate did not hold"
    );
    eprintln!("shaping: the fourth message to a 3/min destination went {gap:.1?} after the third");
}
