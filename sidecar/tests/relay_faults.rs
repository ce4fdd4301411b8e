//! The sidecar process against a faulty smarthost and hostile clients: outages, 421 answers,
//! a hang after DATA, idle and slow connections, over-long lines and command floods. The long
//! versions (minutes of outage, 20 kill -9 trials) are `make soak` (docs/reliability.md).

use mailroom_test_support::{
    peers::Upstream,
    relay::{self, Sidecar, eventually, reserve_port, smarthost_config, smtplib_send},
};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Proves an outage loses nothing and does not become a connection storm: with the smarthost
/// down, 20 acknowledged messages wait in the queue, the route parks after a few connection
/// failures and makes no attempt while parked; when the smarthost is back, one probe unparks it
/// and every message is delivered exactly once.
#[test]
fn smarthost_outage_parks_the_route_then_one_probe_lets_everything_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(port.port(), "none", "", "  - domain: example.com", ""),
    );
    let acked = send_load(&sidecar, dir.path(), 20);
    sidecar.wait_metric(r#"mailroom_sidecar_route_parked{route="smarthost"}"#, |v| {
        v == 1.0
    });
    let failures = sidecar.metric("mailroom_sidecar_route_failures_total");
    // Every concurrent attempt may fail before the first failure parks the route; no more.
    assert!(
        failures <= 4.0,
        "{failures} connection failures before parking (maxConnections is 4)"
    );
    // Parking lasts 30 s: nothing may connect in the meantime, however much mail waits. The
    // runner sets the oldest-age gauge on each pass of its loop, where it would dispatch: once it
    // has moved on by 3 s, the runner has had several chances to try and must not have.
    let age = sidecar.metric("mailroom_sidecar_queue_oldest_message_age_seconds");
    sidecar.wait_metric("mailroom_sidecar_queue_oldest_message_age_seconds", |v| {
        v >= age + 3.0
    });
    assert_eq!(
        sidecar.metric("mailroom_sidecar_route_failures_total"),
        failures,
        "attempts while parked"
    );
    assert_eq!(sidecar.metric("mailroom_sidecar_route_probes_total"), 0.0);
    assert_eq!(sidecar.metric("mailroom_sidecar_queue_messages"), 20.0);

    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    let counts = wait_delivered(&up, &acked);
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_route_probes_total{route="smarthost"}"#),
        1.0,
        "one probe unparked the route"
    );
    sidecar.wait_metric(r#"mailroom_sidecar_route_parked{route="smarthost"}"#, |v| {
        v == 0.0
    });
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
}

/// Proves a smarthost that answers every connection with `421` (RFC 5321 3.8) only delays mail:
/// it is deferred, and delivered once when the smarthost recovers.
#[test]
fn smarthost_answering_421_defers_until_it_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let refusing = Upstream::start_on(dir.path(), &port, &["--greeting-421"]);
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(port.port(), "none", "", "  - domain: example.com", ""),
    );
    let acked = send_load(&sidecar, dir.path(), 5);
    sidecar.wait_metric("mailroom_sidecar_messages_deferred_total", |v| v >= 1.0);
    drop(refusing);
    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    let counts = wait_delivered(&up, &acked);
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");
    assert_eq!(sidecar.metric("mailroom_sidecar_messages_bounced_total"), 0.0);
}

/// Proves the DATA timeout (RFC 5321 4.5.3.2.6): a smarthost that takes the message and never
/// answers is given up on after `commandTimeoutSeconds`, the message is deferred (class
/// `timeout`), and the next attempt delivers it once.
#[test]
fn smarthost_hanging_after_data_times_out_and_the_retry_delivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none", "--hang-data", "1"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", "")
        .replace("commandTimeoutSeconds: 10", "commandTimeoutSeconds: 2");
    let sidecar = Sidecar::start(dir.path(), &config);
    let acked = send_load(&sidecar, dir.path(), 1);
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="timeout""#,
        |v| v == 1.0,
    );
    let counts = wait_delivered(&up, &acked);
    assert_eq!(counts.values().sum::<usize>(), 1, "{counts:?}");
    assert_eq!(up.connections(), 2, "the hung connection was dropped, not reused");
}

/// Proves start-up survives a damaged spool: one message's body is corrupted on disk and garbage
/// is appended (a torn write) while the sidecar is down; on restart the damaged message is
/// quarantined (copied to `quarantine/`, counted in `spool_quarantined_total`), never delivered
/// damaged, and the other messages are delivered.
#[test]
fn corrupt_spool_is_quarantined_and_the_other_messages_are_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let mut sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(port.port(), "none", "", "  - domain: example.com", ""),
    );
    for n in 0..3 {
        let body = format!(
            "From: app@example.com\r\nSubject: spooled-{n}\r\n\r\nBODY-{n}-{}\r\n",
            "q".repeat(64)
        );
        smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["u@example.net"],
            body.as_bytes(),
        )
        .expect("accepted");
    }
    sidecar.kill9();
    let spool = dir.path().join("spool");
    let segment = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
        .expect("a segment with the messages");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let at = bytes
        .windows(6)
        .position(|w| w == b"BODY-1")
        .expect("message 1 in the segment");
    bytes[at + 10] ^= 0xff;
    bytes.extend_from_slice(b"\x00\x17torn write");
    std::fs::write(&segment, &bytes).expect("write segment");

    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    sidecar.restart();
    let counts = wait_delivered(&up, &["spooled-0".into(), "spooled-2".into()]);
    assert!(
        !counts.contains_key("spooled-1"),
        "damaged message delivered: {counts:?}"
    );
    assert!(sidecar.metric("mailroom_sidecar_spool_quarantined_total") >= 1.0);
    let quarantined = std::fs::read_dir(spool.join("quarantine")).map_or(0, Iterator::count);
    assert!(quarantined >= 1, "nothing in quarantine/");
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
}

/// Proves hostile clients do not starve a well-behaved one: 1,000 idle connections, a client
/// sending one byte per second, an over-long command line (`500 5.5.2`, session goes on), a
/// flood of bad commands (`421 4.7.0`, closed) and an oversized body (`552 5.3.4`), while an
/// smtplib client still gets `250`. Past `maxConnections` a new connection gets `421 4.3.2`;
/// idle connections are closed with `421 4.4.2` after the idle timeout.
#[test]
fn hostile_clients_do_not_starve_a_well_behaved_one() {
    const IDLE: usize = 1_000;
    raise_open_files_limit(2 * IDLE + 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay::capture_config(
        "limits:\n  maxConnections: 1010\n  idleTimeoutSeconds: 20\n  maxMessageBytes: 100000\n",
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    let rss_before = sidecar.rss_kib();
    let mut idle: Vec<Smtp> = (0..IDLE).map(|_| Smtp::connect(sidecar.smtp)).collect();
    for c in &mut idle {
        assert!(c.reply().starts_with("220 "));
    }
    let slow = std::thread::spawn({
        let addr = sidecar.smtp;
        move || {
            let mut c = Smtp::connect(addr);
            c.reply();
            for b in b"NOOP\r\n" {
                c.stream.write_all(&[*b]).expect("slow write");
                std::thread::sleep(Duration::from_secs(1));
            }
            c.reply()
        }
    });

    let mut long = Smtp::connect(sidecar.smtp);
    long.reply();
    assert!(
        long.send(&format!("EHLO {}", "a".repeat(10_000)))
            .starts_with("500 5.5.2")
    );
    assert!(long.send("NOOP").starts_with("250"), "the session goes on");

    let mut flood = Smtp::connect(sidecar.smtp);
    flood.reply();
    let last = (0..11).map(|_| flood.send("XYZZY")).last().unwrap_or_default();
    assert!(last.starts_with("421 4.7.0"), "{last}");

    let big = format!("From: app@example.com\r\n\r\n{}", "z".repeat(200_000));
    let err = smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["u@example.net"],
        big.as_bytes(),
    )
    .expect_err("over maxMessageBytes");
    assert!(err.contains("552"), "{err}");

    for n in 0..3 {
        let started = Instant::now();
        smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["u@example.net"],
            format!("From: app@example.com\r\nSubject: ok-{n}\r\n\r\nok\r\n").as_bytes(),
        )
        .expect("a well-behaved client is served");
        eprintln!(
            "well-behaved message {n}: {:?} with {IDLE} idle connections",
            started.elapsed()
        );
    }
    sidecar.wait_metric("mailroom_sidecar_messages_delivered_total", |v| v == 3.0);
    assert!(slow.join().expect("slow client").starts_with("250"));

    let extra: Vec<Smtp> = (0..20).map(|_| Smtp::connect(sidecar.smtp)).collect();
    let replies: Vec<String> = extra.into_iter().map(|mut c| c.reply()).collect();
    assert!(
        replies.iter().any(|r| r.starts_with("421 4.3.2")),
        "past maxConnections: {replies:?}"
    );
    drop(long);
    let rss = sidecar.rss_kib();
    eprintln!("sidecar RSS: {rss_before} KiB idle, {rss} KiB with {IDLE} connections open");
    assert!(
        rss < 256 * 1024,
        "{rss} KiB resident with {IDLE} idle connections"
    );
    for c in &mut idle {
        let r = c.reply();
        assert!(r.starts_with("421 4.4.2"), "idle connection got {r:?}");
    }
    sidecar.wait_metric("mailroom_sidecar_sessions_active", |v| v == 0.0);
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as a service manager would for a server: this
/// process holds two descriptors per client connection, and the sidecar inherits the limit.
fn raise_open_files_limit(need: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= need as u64),
        "this test needs {need} open files but the hard limit is {now:?}; raise it (ulimit -Hn)"
    );
}

/// A raw SMTP connection for clients that misbehave on purpose.
struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Self { stream, reader }
    }

    /// The next reply (all lines of a multi-line one), or "" when the connection closed.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, line: &str) -> String {
        if self.stream.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        self.reply()
    }
}

/// Sends `count` messages with `load_client.py` (smtplib); returns the subjects it saw `250` for.
fn send_load(sidecar: &Sidecar, dir: &Path, count: usize) -> Vec<String> {
    let acked = dir.join("acked");
    let status = Command::new("python3")
        .arg(relay::peer("load_client.py"))
        .args([&sidecar.smtp.ip().to_string(), &sidecar.smtp.port().to_string()])
        .args(["app@example.com", "user@example.net"])
        .arg(&acked)
        .args([&count.to_string(), "0"])
        .stdout(Stdio::null())
        .status()
        .expect("python3 is required (apt-get install python3)");
    assert!(status.success(), "load_client.py failed");
    let acked: Vec<String> = std::fs::read_to_string(&acked)
        .expect("acked")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(acked.len(), count, "every message acknowledged");
    acked
}

/// Waits until every acknowledged subject reached `up`; returns how often each arrived.
fn wait_delivered(up: &Upstream, acked: &[String]) -> HashMap<String, usize> {
    eventually("every acknowledged message delivered", || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in up.received() {
            let text = String::from_utf8_lossy(&r.data).to_string();
            if let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *counts.entry(subject.to_string()).or_default() += 1;
            }
        }
        acked.iter().all(|s| counts.contains_key(s)).then_some(counts)
    })
}
