//! The sidecar process over its life: crashes, reloads, full disks, shutdown, start-up checks.

use mailroom_test_support::{
    peers::Upstream,
    relay::{self, Sidecar, eventually, smarthost_config, smtplib_send},
};
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

/// Proves the durability contract: four clients send continuously while the sidecar is killed
/// with SIGKILL three times and restarted; every message a client saw `250` for reaches the
/// upstream. Duplicates are counted and reported (allowed, loss is not).
#[test]
fn kill9_during_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let mut sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(up.port, "none", "", "  - domain: example.com", ""),
    );
    let acked = dir.path().join("acked");
    let clients: Vec<_> = (0..4)
        .map(|w| {
            Command::new("python3")
                .arg(relay::peer("load_client.py"))
                .args([&sidecar.smtp.ip().to_string(), &sidecar.smtp.port().to_string()])
                .args(["app@example.com", "user@example.net"])
                .arg(&acked)
                .args(["150", &w.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("python3 is required (apt-get install python3)")
        })
        .collect();
    for pause in [400, 700, 300] {
        std::thread::sleep(Duration::from_millis(pause));
        sidecar.restart();
    }
    for mut c in clients {
        assert!(c.wait().expect("client").success(), "a client gave up");
    }
    let acked: Vec<String> = std::fs::read_to_string(&acked)
        .expect("acked")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(acked.len(), 600, "every message was eventually acknowledged");
    let received = || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in up.received() {
            let text = String::from_utf8_lossy(&r.data).to_string();
            if let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *counts.entry(subject.to_string()).or_default() += 1;
            }
        }
        counts
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let counts = received();
        let missing: Vec<&String> = acked.iter().filter(|s| !counts.contains_key(*s)).collect();
        if missing.is_empty() {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} acknowledged messages never reached the upstream, e.g. {:?}\nqueue: {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            sidecar.metric("mailroom_sidecar_queue_messages"),
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 x3 under load: {} acknowledged, 0 lost, {duplicates} duplicates",
        acked.len()
    );
}

/// Proves hot reload through a kubelet-style symlink swap: a new sender domain applies to new sessions without a restart; an invalid
/// file is rejected, counted, and the running config stays.
#[test]
fn config_reload_applies_valid_changes_and_keeps_old_config_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |domains: &str| {
        format!(
            "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n{domains}\nspool:\n  dir: {}/spool\n\
             delivery:\n  capture:\n    dir: {}/capture\n",
            dir.path().display(),
            dir.path().display()
        )
    };
    let sidecar = Sidecar::start(dir.path(), &config("  - domain: a.example"));
    let msg = |d: &str| format!("From: x@{d}\r\nSubject: t\r\n\r\nbody\r\n");
    let err = smtplib_send(
        sidecar.smtp,
        "x@b.example",
        &["u@example.net"],
        msg("b.example").as_bytes(),
    )
    .expect_err("b.example not yet allowed");
    assert!(err.contains("550") && err.contains("5.7.1"), "{err}");

    sidecar.swap_config(&config("  - domain: a.example\n  - domain: b.example"));
    sidecar.wait_metric("mailroom_sidecar_config_reloads_total", |v| v == 1.0);
    smtplib_send(
        sidecar.smtp,
        "x@b.example",
        &["u@example.net"],
        msg("b.example").as_bytes(),
    )
    .expect("allowed now");

    sidecar.swap_config("apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nbogus: 1\n");
    sidecar.wait_metric("mailroom_sidecar_config_reload_failures_total", |v| v == 1.0);
    smtplib_send(
        sidecar.smtp,
        "x@b.example",
        &["u@example.net"],
        msg("b.example").as_bytes(),
    )
    .expect("old config still in force");
    assert!(sidecar.log().contains("config change rejected"));
}

/// A config without sender domains, as the operator renders it when every domain of a Relay is
/// withdrawn from its namespace, is taken on reload (not rejected, which would keep the old
/// domains in force): every new message is refused with `550 5.7.1`, the log says why, and mail
/// accepted before is still delivered once the smarthost is back.
#[test]
fn a_reload_without_domains_refuses_every_sender_and_delivers_what_was_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = relay::reserve_port();
    let config = |domains: &str| smarthost_config(port.port(), "none", "", domains, "");
    let sidecar = Sidecar::start(dir.path(), &config("  - domain: example.com"));
    let msg = b"From: app@example.com\r\nSubject: t\r\n\r\nx\r\n";
    smtplib_send(sidecar.smtp, "app@example.com", &["u@example.net"], msg).expect("accepted");

    sidecar.swap_config(&config("  []"));
    sidecar.wait_metric("mailroom_sidecar_config_reloads_total", |v| v == 1.0);
    assert!(
        sidecar
            .log()
            .contains("no sender domains: every message is refused with 550 5.7.1"),
        "{}",
        sidecar.log()
    );
    for (sender, from) in [("app@example.com", "app@example.com"), ("", "app@example.com")] {
        let msg = format!("From: {from}\r\nSubject: t\r\n\r\nx\r\n");
        let err = smtplib_send(sidecar.smtp, sender, &["u@example.net"], msg.as_bytes())
            .expect_err("no domain is allowed");
        assert!(err.contains("550") && err.contains("5.7.1"), "{sender:?}: {err}");
    }

    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    eventually("the message accepted before is delivered", || {
        (up.received().len() == 1).then_some(())
    });
}

/// Proves back-pressure: with the spool at its message limit (the smarthost is down, so nothing
/// drains) new mail gets `452 4.3.1`, and what was accepted is delivered once the smarthost is up.
#[test]
fn full_spool_answers_452_and_keeps_what_it_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = relay::reserve_port();
    let tail = "";
    let config = smarthost_config(port.port(), "none", "", "  - domain: example.com", tail)
        .replace("  dir: {dir}/spool", "  dir: {dir}/spool\n  maxMessages: 2");
    let sidecar = Sidecar::start(dir.path(), &config);
    // The limits in effect, for the MailroomSpoolNearFull alert.
    assert_eq!(sidecar.metric("mailroom_sidecar_spool_limit_messages"), 2.0);
    assert_eq!(
        sidecar.metric("mailroom_sidecar_spool_limit_bytes"),
        1024.0 * 1024.0 * 1024.0
    );
    let msg = b"From: app@example.com\r\n\r\nx\r\n";
    for _ in 0..2 {
        smtplib_send(sidecar.smtp, "app@example.com", &["u@example.net"], msg).expect("fits");
    }
    let err = smtplib_send(sidecar.smtp, "app@example.com", &["u@example.net"], msg).expect_err("full");
    assert!(err.contains("452") && err.contains("4.3.1"), "{err}");
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_messages_received_total{reason="spool_full""#),
        1.0
    );
    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    eventually("both accepted messages delivered", || {
        (up.received().len() == 2).then_some(())
    });
}

/// Proves the disk-full path on a real full filesystem (a 6 MiB tmpfs, 4 MiB of it the spool's
/// reserve for delivery records, which new mail never gets): `452 4.3.1`, and the messages
/// accepted before are intact and delivered.
#[test]
fn full_disk_answers_452_and_damages_nothing() {
    let OnTmpfs {
        sidecar, port, dir, ..
    } = &on_tmpfs("6m");
    // 400 kB in lines of 78 octets (RFC 5322 2.1.1 recommends at most 78).
    let big = format!(
        "From: app@example.com\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(76)).repeat(5_200)
    );
    let mut accepted = 0;
    let err = loop {
        match smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["u@example.net"],
            big.as_bytes(),
        ) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(
            accepted < 6,
            "2 MiB beside the reserve cannot hold 6 messages of 400 kB: new mail took the reserve"
        );
    };
    assert!(err.contains("452") && err.contains("4.3.1"), "{err}");
    assert!(accepted >= 1);
    let up = Upstream::start_on(dir.path(), port, &["--tls", "none"]);
    let got = eventually("accepted messages delivered intact", || {
        let r = up.received();
        (r.len() == accepted).then_some(r)
    });
    for r in got {
        assert!(r.data.ends_with(big.as_bytes()));
    }
}

/// Proves that a full disk costs new mail a `452` and never sends old mail twice. 400 messages
/// are queued with the smarthost down, then a file of the test's own fills the rest of the disk
/// (as another writer on a shared volume would). The delivery records of all 400 then go into the
/// spool's reserve, new mail gets `452 4.3.1`, and after `kill -9` and a restart nothing is sent
/// again. (Before the reserve, those records failed with ENOSPC and the restart re-sent every
/// message delivered since the disk filled.) Once space returns, new mail is accepted again.
#[test]
fn full_disk_then_kill9_sends_nothing_twice() {
    let mut t = on_tmpfs("8m");
    let acked = t.dir.path().join("acked");
    let sent = Command::new("python3")
        .arg(relay::peer("load_client.py"))
        .args([
            &t.sidecar.smtp.ip().to_string(),
            &t.sidecar.smtp.port().to_string(),
        ])
        .args(["app@example.com", "user@example.net"])
        .arg(&acked)
        .args(["400", "full"])
        .stdout(Stdio::null())
        .status()
        .expect("python3 is required (apt-get install python3)");
    assert!(sent.success(), "the load client gave up");
    let filler = t.spool.join("filler");
    fill_disk(&filler);
    // Larger than the segment's allocation step (256 KiB): the active segment may still have
    // that much allocated ahead of its last record, and a smaller message would fit there.
    let big = format!(
        "From: app@example.com\r\nSubject: refused\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(76)).repeat(4_000)
    );
    let refused = |sidecar: &Sidecar| {
        let err = smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["u@example.net"],
            big.as_bytes(),
        )
        .expect_err("the disk is full");
        assert!(err.contains("452") && err.contains("4.3.1"), "{err}");
    };
    refused(&t.sidecar);

    let up = Upstream::start_on(t.dir.path(), &t.port, &["--tls", "none"]);
    eventually("all 400 delivered", || (up.received().len() >= 400).then_some(()));
    t.sidecar
        .wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(
        t.sidecar.metric("mailroom_sidecar_spool_disk_full"),
        1.0,
        "the delivery records went into the reserve"
    );
    refused(&t.sidecar);

    t.sidecar.restart();
    std::fs::remove_file(&filler).expect("remove filler");
    t.sidecar
        .wait_metric("mailroom_sidecar_spool_disk_full", |v| v == 0.0);
    smtplib_send(
        t.sidecar.smtp,
        "app@example.com",
        &["u@example.net"],
        b"From: app@example.com\r\nSubject: after\r\n\r\nx\r\n",
    )
    .expect("space is back: new mail is accepted");
    eventually("the new message delivered", || {
        up.received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.data).contains("Subject: after"))
            .then_some(())
    });
    t.sidecar
        .wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in up.received() {
        let text = String::from_utf8_lossy(&r.data).to_string();
        if let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *counts.entry(subject.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages were sent more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(counts.len(), 401, "the 400 and the one after");
}

/// Writes zeros to `path` until the filesystem is full.
fn fill_disk(path: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).expect("create filler");
    for block in [64 << 10, 4 << 10, 512, 1] {
        let zeros = vec![0u8; block];
        while f.write_all(&zeros).is_ok() {}
    }
    let _ = f.sync_all();
}

/// A sidecar for example.com relaying to a smarthost on `port` (not started), its spool on a
/// tmpfs of its own. Fields drop in order: the sidecar stops before the tmpfs is unmounted.
struct OnTmpfs {
    sidecar: Sidecar,
    port: relay::Reservation,
    spool: std::path::PathBuf,
    _unmount: Unmount,
    dir: tempfile::TempDir,
}

/// [`OnTmpfs`] with a tmpfs of `size` (`mount -o size=`).
fn on_tmpfs(size: &str) -> OnTmpfs {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&spool)
        .status();
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "this test mounts a small tmpfs and needs root (CI and make test run as root)"
    );
    let _unmount = Unmount(spool.clone());
    let port = relay::reserve_port();
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(port.port(), "none", "", "  - domain: example.com", ""),
    );
    OnTmpfs {
        sidecar,
        port,
        spool,
        _unmount,
        dir,
    }
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Proves SIGTERM drains: the sidecar stops, exits 0, and a message it could not deliver in the
/// drain window is delivered after the next start.
#[test]
fn sigterm_drains_and_undelivered_mail_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = relay::reserve_port();
    let config = smarthost_config(port.port(), "none", "", "  - domain: example.com", "");
    let mut sidecar = Sidecar::start_with_env(dir.path(), &config, &[("SIDECAR_DRAIN_SECONDS", "1")]);
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["u@example.net"],
        b"From: app@example.com\r\n\r\nx\r\n",
    )
    .expect("accepted");
    assert_eq!(sidecar.terminate(), Some(0));
    let log = sidecar.log();
    assert!(
        log.contains("undelivered_messages=1") && log.contains("drain ended with undelivered mail"),
        "the drain reports what it left behind:\n{log}"
    );
    // Every spool handle is gone when the spool closes: no wait for the close's timeout (a
    // kubelet would kill the sidecar before it logs `stopped`).
    assert!(
        !log.contains("spool did not close in time") && log.contains("stopped"),
        "the spool closed at once:\n{log}"
    );
    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    sidecar.restart();
    eventually("delivery after restart", || {
        (up.received().len() == 1).then_some(())
    });
}

/// Proves capture mode with curl as the client: the message lands as an .eml file, byte-exact
/// after the Received header, with its envelope beside it.
#[test]
fn capture_mode_keeps_messages_sent_by_curl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay::capture_config("");
    let sidecar = Sidecar::start(dir.path(), &config);
    let body = "From: app@example.com\r\nTo: user@example.net\r\nSubject: curl\r\n\r\nsent by curl\r\n";
    let file = dir.path().join("mail.txt");
    std::fs::write(&file, body).expect("write");
    relay::run_ok(
        Command::new("curl")
            .args(["-sS", &format!("smtp://{}", sidecar.smtp)])
            .args([
                "--mail-from",
                "app@example.com",
                "--mail-rcpt",
                "user@example.net",
            ])
            .arg("--upload-file")
            .arg(&file),
        "curl (apt-get install curl)",
    );
    let eml = eventually("captured .eml", || {
        let entries = std::fs::read_dir(dir.path().join("capture")).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "eml"))
    });
    let text = std::fs::read_to_string(&eml).expect("read eml");
    assert!(text.starts_with("Received: from "), "{text}");
    assert!(text.ends_with(body), "{text}");
}

/// Proves `--check-config`: valid files pass, an invalid one lists every problem with its field
/// path and exits 64 without binding anything.
#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: mailroom.dev/v2\nkind: SidecarConfig\ndomains: [{domain: Shop.Example}]\nspool:\n  dir: /x\n\
         delivery:\n  smarthost:\n    host: 'not a host'\n    port: 0\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom-sidecar"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "apiVersion",
        "domains[0].domain",
        "delivery.smarthost.host",
        "delivery.smarthost.port",
    ] {
        assert!(
            err.contains(&format!("  - {field}: ")),
            "{field} missing from:\n{err}"
        );
    }
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/sidecar-config/smarthost.yaml"
    );
    // The golden file names files that exist only in a pod: the document alone is checked.
    let ok = Command::new(env!("CARGO_BIN_EXE_mailroom-sidecar"))
        .arg("--check-document")
        .arg(golden)
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Proves `limits.ratePerMinute`: past a minute's worth, new mail gets `451 4.7.1` and is counted
/// as rejected for `rate_limited`; what was accepted is delivered.
#[test]
fn rate_limit_defers_clients_with_451() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay::capture_config("limits:\n  ratePerMinute: 2\n");
    let sidecar = Sidecar::start(dir.path(), &config);
    let msg = b"From: app@example.com\r\n\r\nx\r\n";
    for _ in 0..2 {
        smtplib_send(sidecar.smtp, "app@example.com", &["u@example.net"], msg).expect("within the rate");
    }
    let err =
        smtplib_send(sidecar.smtp, "app@example.com", &["u@example.net"], msg).expect_err("over the rate");
    assert!(err.contains("451") && err.contains("4.7.1"), "{err}");
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_messages_received_total{reason="rate_limited""#),
        1.0
    );
    sidecar.wait_metric("mailroom_sidecar_messages_delivered_total", |v| v == 2.0);
    // On one connection, as smtplib's sendmail does it (no RSET after a refused DATA): the next
    // message is refused for the rate again, not as a nested MAIL.
    let out = std::process::Command::new(relay::python())
        .args([
            "-c",
            "import smtplib, sys\n\
             s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))\n\
             for _ in range(2):\n\
             \x20   try:\n\
             \x20       s.sendmail('app@example.com', ['u@example.net'], b'From: app@example.com\\r\\n\\r\\nx\\r\\n')\n\
             \x20   except smtplib.SMTPResponseException as e:\n\
             \x20       print(e.smtp_code)\n",
            &sidecar.smtp.port().to_string(),
        ])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "451\n451\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `SIDECAR_SESSION_THREADS` sizes the sessions' runtime: one thread by default, the number
/// given, or one per CPU the process may use for `0`. The count is the runtime's own (its
/// metrics), not the setting echoed back, and as many threads of that name exist; mail still
/// flows with each.
#[test]
fn session_threads_follow_the_setting() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (setting, want) in [(None, 1), (Some("3"), 3), (Some("0"), cpus)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = Upstream::start(dir.path(), &["--tls", "none"]);
        let env: Vec<_> = setting
            .map(|v| ("SIDECAR_SESSION_THREADS", v))
            .into_iter()
            .collect();
        let mut sidecar = Sidecar::start_with_env(
            dir.path(),
            &smarthost_config(up.port, "none", "", "  - domain: example.com", ""),
            &env,
        );
        let line = eventually("the listening line", || {
            sidecar
                .log()
                .lines()
                .find(|l| l.contains("listening"))
                .map(str::to_owned)
        });
        assert!(
            line.contains(&format!("session_threads={want}")),
            "{setting:?}: {want} session threads: {line}"
        );
        let named = std::fs::read_dir(format!("/proc/{}/task", sidecar.pid()))
            .expect("the sidecar's threads")
            .filter(|t| {
                let comm = t.as_ref().expect("a thread").path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "sessions")
            })
            .count();
        // Threads the runtime starts for blocking work carry the name too.
        assert!(
            named >= want,
            "{setting:?}: {named} threads named sessions, want {want} at least"
        );
        smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["user@example.net"],
            b"From: app@example.com\r\nSubject: t\r\n\r\nx\r\n",
        )
        .expect("accepted");
        eventually("delivered", || (up.received().len() == 1).then_some(()));
        sidecar.terminate();
    }
}
