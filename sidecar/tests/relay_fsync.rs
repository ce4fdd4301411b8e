//! Proves fsync before `250` itself, which the crash tests cannot: a `kill -9` leaves the page
//! cache intact, so they would still pass without the fdatasync or with a group commit that
//! answers early. Here strace (a tool we did not write) records the sidecar's system calls
//! while independent clients (smtplib) send concurrently, and every `250 ... queued` must come
//! after an fdatasync of the spool segment that started after that message's commit record was
//! written, and the first one after an fsync of the spool directory (whose new segment the
//! sidecar created at start).

use mailroom_test_support::{
    peers::Upstream,
    relay::{Sidecar, eventually, smarthost_config, smtplib_send},
};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

/// One system call from strace's output, joined across `<unfinished ...>` / `resumed`.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    /// The first argument as `-yy` annotates it: `5</path/to/file>` or `9<TCP:[...]>`.
    fd: String,
    /// Everything between the parentheses (escaped data included).
    args: String,
    start: f64,
    end: f64,
}

/// `HH:MM:SS.micros` as seconds.
fn seconds(t: &str) -> Option<f64> {
    let mut parts = t.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Parses `strace -f -tt -T -yy` output.
fn parse(trace: &str) -> Vec<Call> {
    let mut pending: HashMap<String, (String, String, f64)> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        // `PID  HH:MM:SS.micros syscall(...)`: the pid is padded with spaces.
        let line = line.trim_start();
        let Some((pid, line)) = line.split_once(' ') else {
            continue;
        };
        let Some((time, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some(t) = seconds(time) else { continue };
        let duration = |s: &str| {
            s.rsplit_once(" <")
                .and_then(|(_, d)| d.strip_suffix('>'))
                .and_then(|d| d.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((pname, head, start)) = pending.remove(pid) else {
                continue;
            };
            if pname != name {
                continue;
            }
            calls.push(call(name, &format!("{head}{tail}"), start, t));
        } else if let Some((name, args)) = rest.split_once('(') {
            if let Some(head) = args.strip_suffix(" <unfinished ...>") {
                pending.insert(pid.to_string(), (name.to_string(), head.to_string(), t));
            } else {
                calls.push(call(name, args, t, t + duration(args)));
            }
        }
    }
    calls
}

fn call(name: &str, args: &str, start: f64, end: f64) -> Call {
    let fd = args.split([',', ')']).next().unwrap_or("").to_string();
    Call {
        name: name.to_string(),
        fd,
        args: args.to_string(),
        start,
        end,
    }
}

const MESSAGES: usize = 24;
const CLIENTS: usize = 6;

#[test]
fn every_250_follows_an_fdatasync_of_its_commit_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", "");
    let sidecar = Sidecar::start(dir.path(), &config);
    let trace = dir.path().join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-tt", "-T", "-yy", "-s", "65536"])
        .args([
            "-e",
            "trace=read,recvfrom,recvmsg,write,writev,pwrite64,sendto,sendmsg,fsync,fdatasync",
        ])
        .arg("-o")
        .arg(&trace)
        .args(["-p", &sidecar.pid().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is required (tests/env/prepare.sh installs it: apt-get install strace)");
    // strace says on stderr once it has attached ("Process N attached with M threads"); a
    // message sent before that could be missing from the trace.
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let stderr = strace.stderr.take().expect("strace stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") {
                let _ = attached_tx.send(line);
            }
        }
    });
    let line = attached_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("strace attaches to the sidecar within 30 s");
    eprintln!("{line}");
    let spool = dir.path().join("spool");
    let senders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let smtp = sidecar.smtp;
            std::thread::spawn(move || {
                for m in (c..MESSAGES).step_by(CLIENTS) {
                    let rcpt = format!("rcpt-{m}@example.net");
                    smtplib_send(
                        smtp,
                        "app@example.com",
                        &[&rcpt],
                        format!("From: app@example.com\r\nSubject: fsync {c}\r\n\r\nhello\r\n").as_bytes(),
                    )
                    .expect("accepted");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    eventually("every message at the upstream", || {
        (up.received().len() == MESSAGES).then_some(())
    });
    // Detach cleanly so the trace is complete.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let text = std::fs::read_to_string(&trace).expect("trace");
    let calls = parse(&text);

    let spool_dir = format!("{}>", spool.display());
    let segment = |c: &Call| c.fd.contains(&format!("{}/", spool.display())) && c.fd.ends_with(".seg>");
    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "fdatasync" | "fsync") && segment(c))
        .collect();
    let dir_syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "fsync" && c.fd.ends_with(&spool_dir))
        .collect();
    // Which message each connection is carrying, from the RCPT command it read.
    let mut carrying: HashMap<String, usize> = HashMap::new();
    let mut acks: Vec<(usize, f64)> = Vec::new();
    let mut commits: HashMap<usize, f64> = HashMap::new();
    for c in &calls {
        let reads = matches!(c.name.as_str(), "read" | "recvfrom" | "recvmsg");
        let writes = matches!(
            c.name.as_str(),
            "write" | "writev" | "sendto" | "sendmsg" | "pwrite64"
        );
        if reads && c.fd.contains("TCP") {
            if let Some(at) = c.args.find("TO:<rcpt-") {
                let n: String = c.args[at + 9..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                carrying.insert(c.fd.clone(), n.parse().expect("message number"));
            }
        } else if writes && c.fd.contains("TCP") && c.args.contains("250 2.0.0 Ok: queued") {
            let n = carrying
                .get(&c.fd)
                .copied()
                .expect("a queued reply on a connection that sent RCPT");
            acks.push((n, c.start));
        } else if writes && segment(c) {
            for m in 0..MESSAGES {
                // A Commit record carries the envelope as JSON: the recipient, quoted.
                if c.args.contains(&format!("\\\"rcpt-{m}@example.net\\\"")) {
                    commits.entry(m).or_insert(c.end);
                }
            }
        }
    }
    let sample: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("queued") || l.contains("RCPT") || l.contains("fdatasync"))
        .take(8)
        .collect();
    assert_eq!(
        acks.len(),
        MESSAGES,
        "every message was answered 250 in the trace; trace lines:\n{}",
        sample.join("\n")
    );
    assert!(!syncs.is_empty(), "no fdatasync of a spool segment at all");
    let first_ack = acks.iter().map(|a| a.1).fold(f64::MAX, f64::min);
    assert!(
        dir_syncs.iter().any(|d| d.end <= first_ack),
        "the spool directory (with the segment created at start) was not fsync'd before the first 250"
    );
    for (m, acked) in &acks {
        let written = commits
            .get(m)
            .unwrap_or_else(|| panic!("message {m}: no commit record written to a segment before its 250"));
        assert!(
            written <= acked,
            "message {m}: 250 at {acked} before its commit record at {written}"
        );
        assert!(
            syncs.iter().any(|s| s.start >= *written && s.end <= *acked),
            "message {m}: no fdatasync between its commit record ({written}) and its 250 ({acked})"
        );
    }
    eprintln!(
        "{} messages, {} segment syncs, {} directory syncs",
        acks.len(),
        syncs.len(),
        dir_syncs.len()
    );
}
