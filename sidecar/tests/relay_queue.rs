//! Day two on one sidecar: `mailroom-sidecar queue ...` and `quarantine ...` (the binary as its
//! own client) against a real sidecar whose smarthost is down, then back (upstream.py, aiosmtpd).

use mailroom_test_support::{
    peers::Upstream,
    relay::{Sidecar, eventually, reserve_port, sidecar_bin, smtplib_send},
};
use serde_json::Value;
use std::{net::SocketAddr, process::Command};

/// A smarthost config whose retries are far apart (10 min): only a flush, a retry or a release
/// makes a deferred message go out again within a test.
fn stuck_config(port: u16) -> String {
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
    port: {port}
    tls: none
    connectTimeoutSeconds: 2
retry:
  initialSeconds: 600
  maxSeconds: 600
  maxAgeSeconds: 86400
"
    )
}

/// Runs `mailroom-sidecar <args> --api <api> --actor test-admin`; returns (exit code, stdout,
/// stderr).
fn cli(api: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sidecar_bin())
        .args(args)
        .args(["--api", &api.to_string(), "--actor", "test-admin"])
        .output()
        .expect("run mailroom-sidecar");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI's JSON answer; panics with its error text if it failed.
fn cli_json(api: SocketAddr, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = cli(api, &all);
    assert_eq!(code, 0, "mailroom-sidecar {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn rows(api: SocketAddr) -> Vec<Value> {
    cli_json(api, &["queue", "list"])
        .as_array()
        .expect("a list")
        .clone()
}

fn row_for<'a>(rows: &'a [Value], domain: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["recipient_domains"][0] == domain)
        .unwrap_or_else(|| panic!("no row for {domain} in {rows:#?}"))
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: app@example.com\r\nTo: someone\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
}

/// Listing shows the right rows for a stuck route; show gives envelope and headers (the body
/// only when asked); hold keeps a message through a `kill -9`; delete bounces when asked and is
/// silent otherwise; flush delivers at once when the upstream is back; release delivers the held
/// message; every change is counted and logged with who asked.
#[test]
fn queue_commands_steer_a_stuck_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let mut sidecar = Sidecar::start(dir.path(), &stuck_config(port.port()));
    let api = sidecar.queue_api;

    assert_eq!(cli(api, &["queue", "list"]).1, "the queue is empty\n");
    let send = |to: &[&str], subject: &str, body: &str| {
        smtplib_send(sidecar.smtp, "app@example.com", to, &message(subject, body)).expect("accepted")
    };
    send(&["a@example.net"], "to-bounce", "first body");
    send(&["b@example.org", "c@example.org"], "to-delete", "second body");
    send(&["d@example.io"], "to-hold", "third body SECRET-BODY-LINE");

    // Each has failed its first attempt and waits ten minutes for the next.
    let listed = eventually("three deferred messages with their error", || {
        let rows = rows(api);
        (rows.len() == 3
            && rows
                .iter()
                .all(|r| r["state"] == "deferred" && r["attempts"] == 1))
        .then_some(rows)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for r in &listed {
        assert_eq!(r["sender_domain"], "example.com");
        let next = r["next_attempt_at"]
            .as_u64()
            .expect("a deferred row has its next attempt");
        assert!(next > now + 300, "the next attempt is minutes away: {r}");
        let error = r["last_error"].as_str().expect("last error");
        assert!(!error.is_empty(), "the connection failure is the last error: {r}");
        assert!(r["size"].as_u64().expect("size") > 0);
    }
    let bounce_id = row_for(&listed, "example.net")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let delete = row_for(&listed, "example.org");
    assert_eq!(delete["recipients"], 2, "two recipients, one domain: {delete}");
    assert_eq!(delete["recipient_domains"].as_array().expect("domains").len(), 1);
    let delete_id = delete["id"].as_str().expect("id").to_owned();
    let hold_id = row_for(&listed, "example.io")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The human listing names every message, and sums up.
    let (code, text, _) = cli(api, &["queue", "list"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("ID "), "a header line: {text}");
    for id in [&bounce_id, &delete_id, &hold_id] {
        assert!(text.contains(id.as_str()), "{id} listed: {text}");
    }
    assert!(text.contains("in 3 message(s)"), "{text}");

    // Show: envelope and headers; the body only with --body.
    let shown = cli_json(api, &["queue", "show", &hold_id]);
    assert_eq!(shown["sender"], "app@example.com");
    assert_eq!(shown["recipient_list"][0]["address"], "d@example.io");
    assert_eq!(shown["recipient_list"][0]["done"], false);
    assert!(
        shown["headers"]
            .as_str()
            .expect("headers")
            .contains("Subject: to-hold")
    );
    assert!(shown.get("body").is_none(), "no body unless asked: {shown}");
    let (_, text, _) = cli(api, &["queue", "show", &hold_id]);
    assert!(!text.contains("SECRET-BODY-LINE"), "{text}");
    let with_body = cli_json(api, &["queue", "show", &hold_id, "--body"]);
    assert!(
        with_body["body"]
            .as_str()
            .expect("body")
            .contains("SECRET-BODY-LINE")
    );

    // Hold, and the hold outlives a crash.
    assert_eq!(cli_json(api, &["queue", "hold", &hold_id])["result"], "held");
    assert_eq!(
        cli_json(api, &["queue", "hold", &hold_id])["result"],
        "already held"
    );
    let held = r#"mailroom_sidecar_queue_admin_actions_total{action="hold",result="ok"}"#;
    assert_eq!(sidecar.metric(held), 2.0, "{held}");
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_queue_messages{state="held"}"#),
        1.0
    );
    sidecar.restart();
    let api = sidecar.queue_api;
    // Replayed, and the two not held tried again (and deferred) before anything is changed.
    let after = eventually("the queue replayed after kill -9", || {
        let rows = rows(api);
        let settled = rows
            .iter()
            .all(|r| r["state"] == "held" || r["state"] == "deferred");
        (rows.len() == 3 && settled).then_some(rows)
    });
    assert_eq!(row_for(&after, "example.io")["state"], "held", "{after:#?}");
    let (code, _, err) = cli(api, &["queue", "retry", &hold_id]);
    assert_eq!(
        (code, err.contains("is held; release it first")),
        (1, true),
        "{err}"
    );

    // Delete: with a bounce, the sender is told; silently, nobody is.
    let deleted = cli_json(api, &["queue", "delete", &bounce_id, "--bounce"]);
    assert_eq!(
        deleted["result"], "deleted; failure notice queued to <app@example.com>",
        "{deleted}"
    );
    let deleted = cli_json(api, &["queue", "delete", &delete_id, "--silent"]);
    assert_eq!(deleted["result"], "deleted without a notice");
    let (code, _, err) = cli(api, &["queue", "delete", &delete_id, "--silent"]);
    assert_eq!(code, 1, "deleting twice is refused: {err}");
    assert!(err.contains("no message"), "{err}");
    let (code, _, err) = cli(api, &["queue", "delete", &hold_id]);
    assert_eq!(code, 64, "delete says bounce or silent: {err}");

    // The notice waits for the route like any message: tried once, deferred.
    let notice = eventually("the failure notice deferred", || {
        let rows = rows(api);
        rows.iter()
            .find(|r| r["sender_domain"] == "" && r["state"] == "deferred")
            .cloned()
    });
    assert_eq!(notice["recipient_domains"][0], "example.com");

    // A change must say who asks (a browser cannot add the header across origins): curl, an
    // independent client, is refused without it.
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}"])
        .arg(format!("http://{api}/v1/queue/flush"))
        .output()
        .expect("curl is required (apt-get install curl)");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.ends_with("\n400"), "{answer}");
    assert!(answer.contains("x-mailroom-actor header"), "{answer}");

    // A flush for another route is refused and changes nothing.
    let (code, _, err) = cli(api, &["queue", "flush", "--route", "direct"]);
    assert_eq!(code, 1);
    assert!(err.contains("delivers by route smarthost, not direct"), "{err}");

    // The upstream comes back: a flush sends the notice now, not in ten minutes; the held
    // message stays.
    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    let flushed = cli_json(api, &["queue", "flush"]);
    assert_eq!(flushed["flushed"], 1, "{flushed}");
    assert_eq!(flushed["held"], 1, "{flushed}");
    let received = eventually("the failure notice delivered after the flush", || {
        let got = up.received();
        (!got.is_empty()).then_some(got)
    });
    let notice = String::from_utf8_lossy(&received[0].data).into_owned();
    assert_eq!(
        received[0].meta["mail_from"], "<>",
        "a notice has the null sender"
    );
    assert!(notice.contains("Status: 5.0.0"), "{notice}");
    assert!(
        notice.contains("deleted from the queue by the mail administrator"),
        "{notice}"
    );
    assert!(
        notice.contains("Subject: to-bounce"),
        "the original's headers: {notice}"
    );
    eventually("only the held message left", || {
        let rows = rows(api);
        (rows.len() == 1 && rows[0]["state"] == "held").then_some(())
    });
    assert!(
        !up.subjects().iter().any(|s| s == "to-hold" || s == "to-delete"),
        "neither the held nor the deleted message went out: {:?}",
        up.subjects()
    );

    // Release: delivered at once.
    assert_eq!(
        cli_json(api, &["queue", "release", &hold_id])["result"],
        "released"
    );
    eventually("the released message delivered", || {
        up.subjects().iter().any(|s| s == "to-hold").then_some(())
    });
    eventually("an empty queue", || rows(api).is_empty().then_some(()));
    // How each left the queue.
    for (id, state) in [
        (&hold_id, "delivered"),
        (&bounce_id, "deleted"),
        (&delete_id, "deleted"),
    ] {
        let status = cli_json(api, &["queue", "status", id]);
        assert_eq!(
            (&status["state"], &status["queued"]),
            (&Value::from(state), &Value::Bool(false)),
            "{status}"
        );
    }
    let (_, text, _) = cli(api, &["queue", "status", &hold_id]);
    assert!(
        text.starts_with(&format!("{hold_id}: delivered after 1 attempt(s)")),
        "attempts count since the restart: {text}"
    );
    assert_eq!(up.subjects().len(), 2, "the notice and the released message only");

    // Counted by action and result (since the restart); logged with who asked.
    for (action, result, n) in [
        ("delete_bounce", "ok", 1.0),
        ("delete_silent", "ok", 1.0),
        ("delete_silent", "refused", 1.0),
        ("retry", "refused", 1.0),
        ("flush", "ok", 1.0),
        ("flush", "refused", 1.0),
        ("release", "ok", 1.0),
    ] {
        let series =
            format!(r#"mailroom_sidecar_queue_admin_actions_total{{action="{action}",result="{result}"}}"#);
        assert_eq!(sidecar.metric(&series), n, "{series}");
    }
    let log = sidecar.log();
    let held = log
        .lines()
        .find(|l| l.contains("queue: change made") && l.contains("action=\"release\""))
        .unwrap_or_else(|| panic!("the release is logged:\n{log}"));
    assert!(
        held.contains("actor=\"test-admin\"") || held.contains("actor=test-admin"),
        "{held}"
    );
    assert!(held.contains(&hold_id), "{held}");
}

/// Flips one bit of `marker` in the spool's segments; with `fix_record`, also rewrites the
/// chunk record's own CRC (record.rs: `magic u32 | kind u8 | id u64 | len u32 | crc u32 |
/// payload`), so that only the message's checksum can tell.
fn damage(spool: &std::path::Path, marker: &[u8], fix_record: bool) {
    let mut damaged = 0;
    for entry in std::fs::read_dir(spool).expect("spool dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("segment");
        let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) else {
            continue;
        };
        bytes[at] ^= 0x20;
        if fix_record {
            let start = bytes[..at]
                .windows(4)
                .rposition(|w| w == b"MRS1")
                .expect("the chunk record's magic");
            let len = u32::from_le_bytes(bytes[start + 13..start + 17].try_into().expect("len")) as usize;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[start + 4..start + 17]);
            crc.update(&bytes[start + 21..start + 21 + len]);
            bytes[start + 17..start + 21].copy_from_slice(&crc.finalize().to_le_bytes());
        }
        std::fs::write(&path, bytes).expect("write segment");
        damaged += 1;
    }
    assert_eq!(
        damaged,
        1,
        "{} is in one segment",
        String::from_utf8_lossy(marker)
    );
}

/// Messages whose bytes fail their checks at start-up are set aside and listed by `quarantine
/// list` with their envelopes. One whose chunk record was corrupt has lost its bytes to a corrupt
/// region, and release is refused; one whose bytes are whole but wrong (only its checksum tells)
/// is queued again by `quarantine release`, as found, for its recipients.
#[test]
fn quarantine_lists_and_releases_a_damaged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let mut sidecar = Sidecar::start(dir.path(), &stuck_config(port.port()));
    for (to, subject, body) in [
        ("x@example.net", "whole", "MARKER-WHOLE-BUT-WRONG"),
        ("y@example.org", "lost", "MARKER-RECORD-TORN"),
    ] {
        smtplib_send(sidecar.smtp, "app@example.com", &[to], &message(subject, body)).expect("accepted");
    }
    eventually("both messages deferred", || {
        let rows = rows(sidecar.queue_api);
        (rows.len() == 2 && rows.iter().all(|r| r["state"] == "deferred")).then_some(())
    });
    sidecar.kill9();
    let spool = dir.path().join("spool");
    damage(&spool, b"MARKER-WHOLE-BUT-WRONG", true);
    damage(&spool, b"MARKER-RECORD-TORN", false);
    sidecar.restart();
    let api = sidecar.queue_api;
    assert!(rows(api).is_empty(), "a damaged message is not queued");
    let list = cli_json(api, &["quarantine", "list"]);
    let list = list.as_array().expect("a list");
    let find = |rcpt: &str| {
        list.iter()
            .find(|q| q["kind"] == "message" && q["recipients"][0] == rcpt)
            .unwrap_or_else(|| panic!("the message to {rcpt} is listed: {list:#?}"))
            .clone()
    };
    let (whole, lost) = (find("x@example.net"), find("y@example.org"));
    assert_eq!(whole["sender"], "app@example.com");
    assert_eq!(
        (&whole["complete"], &lost["complete"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert!(
        list.iter().any(|q| q["kind"] == "region"),
        "the corrupt record is kept as a region: {list:#?}"
    );
    let (whole_id, lost_id) = (
        whole["name"].as_str().expect("name").to_owned(),
        lost["name"].as_str().expect("name").to_owned(),
    );
    let (_, text, _) = cli(api, &["quarantine", "list"]);
    assert!(
        text.contains(&whole_id) && text.contains("<app@example.com>"),
        "{text}"
    );
    assert!(text.contains("message (incomplete)"), "{text}");

    let (code, _, err) = cli(api, &["quarantine", "release", &lost_id]);
    assert_eq!(code, 1, "an incomplete message is not released: {err}");
    assert!(err.contains("is incomplete"), "{err}");

    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    let released = cli_json(api, &["quarantine", "release", &whole_id]);
    assert!(
        released["result"]
            .as_str()
            .expect("result")
            .starts_with("queued again as "),
        "{released}"
    );
    let got = eventually("the released message delivered", || {
        let got = up.received();
        (!got.is_empty()).then_some(got)
    });
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        text.contains("mARKER-WHOLE-BUT-WRONG"),
        "delivered as found, flipped bit and all: {text}"
    );
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["x@example.net"]));
    let list = cli_json(api, &["quarantine", "list"]);
    assert!(
        !list
            .as_array()
            .expect("list")
            .iter()
            .any(|q| q["name"] == whole_id.as_str()),
        "a released message leaves the list: {list}"
    );
    let (code, _, err) = cli(api, &["quarantine", "release", &whole_id]);
    assert_eq!(code, 1, "released once: {err}");
    for (result, n) in [("ok", 1.0), ("refused", 2.0)] {
        let series = format!(
            r#"mailroom_sidecar_queue_admin_actions_total{{action="quarantine_release",result="{result}"}}"#
        );
        assert_eq!(sidecar.metric(&series), n, "{series}");
    }
}
