//! `delivery.smarthost.backup` with two real upstreams (upstream.py, aiosmtpd): the backup takes
//! what the primary refuses for now (4xx) or cannot take (down, parked), never what it refuses for
//! good (5xx); delivery goes back to the primary once it answers; the metrics and the delivery
//! trail name the route that took each recipient.

use mailroom_test_support::{
    peers::Upstream,
    relay::{Sidecar, eventually, reserve_port, smtplib_send},
};
use std::time::{Duration, Instant};

fn config(primary: u16, backup: u16) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
hostname: sidecar.test
domains:
  - domain: example.com
spool:
  dir: {{dir}}/spool
delivery:
  smarthost:
    host: 127.0.0.1
    port: {primary}
    tls: none
    connectTimeoutSeconds: 2
    backup:
      host: 127.0.0.1
      port: {backup}
      tls: none
      connectTimeoutSeconds: 2
retry:
  initialSeconds: 1
  maxSeconds: 2
  maxAgeSeconds: 600
"
    )
}

fn send(sidecar: &Sidecar, to: &[&str], subject: &str) {
    let message = format!("From: app@example.com\r\nTo: someone\r\nSubject: {subject}\r\n\r\nbody\r\n");
    smtplib_send(sidecar.smtp, "app@example.com", to, message.as_bytes()).expect("accepted");
}

fn delivered(sidecar: &Sidecar, route: &str) -> f64 {
    sidecar
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("mailroom_sidecar_messages_delivered_total{")
                && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The primary answers: a recipient it refuses with 450 goes to the backup in the same attempt;
/// one it refuses with 550 is bounced, not retried elsewhere (the backup would have taken it).
#[test]
fn the_backup_takes_what_the_primary_refuses_for_now_and_never_what_it_refuses_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Upstream::start(dir.path(), &["--tls", "none"]);
    let backup = Upstream::start(dir.path(), &["--tls", "none", "--accept-all-recipients"]);
    let sidecar = Sidecar::start(dir.path(), &config(primary.port, backup.port));
    send(
        &sidecar,
        &["ok@example.net", "temp-fail@example.net", "perm-fail@example.net"],
        "three recipients",
    );
    let at_backup = eventually("the 450 recipient at the backup", || {
        let got = backup.received();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(
        at_backup[0].meta["rcpt_tos"],
        serde_json::json!(["temp-fail@example.net"]),
        "only the recipient the primary refused for now"
    );
    let at_primary = eventually("the primary's delivery and the bounce", || {
        let got = primary.received();
        (got.len() >= 2).then_some(got)
    });
    assert_eq!(
        at_primary[0].meta["rcpt_tos"],
        serde_json::json!(["ok@example.net"])
    );
    let bounce = String::from_utf8_lossy(&at_primary[1].data).into_owned();
    assert!(
        bounce.contains("perm-fail@example.net") && bounce.contains("Status: 5.1.1"),
        "the 550 recipient is bounced to the sender: {bounce}"
    );
    assert_eq!(
        backup.received().len(),
        1,
        "the backup never saw the 550 recipient"
    );
    eventually("the metrics", || {
        (delivered(&sidecar, "smarthost") >= 2.0 && delivered(&sidecar, "backup") == 1.0).then_some(())
    });
    let log = sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("recipient delivered") && l.contains("route=\"backup\"")),
        "the trail names the backup:\n{log}"
    );
}

/// The primary is down: mail goes to the backup at once (also while the primary is parked); when
/// the primary comes back, its next probe finds it and delivery returns to it.
#[test]
fn an_outage_of_the_primary_fails_over_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let backup = Upstream::start(dir.path(), &["--tls", "none"]);
    let sidecar = Sidecar::start(dir.path(), &config(port.port(), backup.port));
    for n in 0..4 {
        send(&sidecar, &["user@example.net"], &format!("outage-{n}"));
    }
    eventually("four messages at the backup", || {
        (backup.subjects().len() == 4).then_some(())
    });
    // Three connection failures park the primary; the backup is not parked.
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_route_parked{route="smarthost"}"#),
        1.0
    );
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_route_parked{route="backup"}"#),
        0.0
    );
    assert_eq!(delivered(&sidecar, "backup"), 4.0);
    assert_eq!(
        sidecar.metric("mailroom_sidecar_queue_messages{state=\"deferred\"}"),
        0.0
    );

    // The primary comes back. Mail keeps going to the backup until the primary's parking period
    // (30 s) ends; the next attempt probes it and finds it.
    let primary = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    let t0 = Instant::now();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(75);
    while primary.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "delivery never went back to the primary"
        );
        send(&sidecar, &["user@example.net"], &format!("back-{n}"));
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "failover: back to the primary {:.1?} after it returned",
        t0.elapsed()
    );
    eventually("the primary unparked", || {
        (sidecar.metric(r#"mailroom_sidecar_route_parked{route="smarthost"}"#) == 0.0).then_some(())
    });
    send(&sidecar, &["user@example.net"], "after");
    eventually("the next message at the primary", || {
        primary.subjects().iter().any(|s| s == "after").then_some(())
    });
    assert!(!backup.subjects().iter().any(|s| s == "after"));
    // Every message arrived once, at one of the two.
    let mut all = primary.subjects();
    all.extend(backup.subjects());
    all.sort();
    let total = all.len();
    all.dedup();
    assert_eq!(all.len(), total, "no message went to both");
    assert_eq!(total, 4 + n + 1);
}
