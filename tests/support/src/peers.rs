//! Test peers we did not write, as processes on loopback: the scripted upstream SMTP server
//! (aiosmtpd, `tests/peers/upstream.py`), the authoritative DNS server (dnslib,
//! `tests/peers/dnsserver.py`, optionally DNSSEC-signed), the MTA-STS policy host
//! (`tests/peers/policy_server.py`), a Python smtplib client, and the independent checkers (dkimpy
//! through our DNS server, Python's email package for DSNs). Every peer is killed on drop.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;

use crate::{
    certs::TestCa,
    ports::Reservation,
    stack::{Proc, eventually, repo},
    testenv,
};

/// `tests/peers/upstream.py` on 127.0.0.1: `temp-fail*` recipients get 450, `perm-fail*`
/// 550; every accepted transaction is saved as `<maildir>/<n>.eml` plus `<n>.json`.
#[derive(Debug)]
pub struct Upstream {
    /// The process (check it is still running while waiting).
    pub proc: Proc,
    /// The address it listens on (127.0.0.1 unless started `_at` another).
    pub host: String,
    /// Its SMTP port.
    pub port: u16,
    /// Where it saves what it accepts.
    pub maildir: PathBuf,
    /// PEM of the CA that signed its certificate (STARTTLS mode only).
    pub ca_pem: Option<String>,
}

// === impl Upstream ===

/// One transaction the upstream saved: its JSON record and the message bytes it received.
#[derive(Debug)]
pub struct Received {
    /// `mail_from`, `mail_options`, `rcpt_tos`, `connection`, `tls`, `authenticated`.
    pub meta: Value,
    /// The message after dot-unstuffing.
    pub data: Vec<u8>,
}

impl Upstream {
    /// Plain SMTP, no authentication.
    pub fn plain(dir: &Path) -> Result<Self> {
        Self::spawn(dir, "127.0.0.1", &[], None)
    }

    /// upstream.py with `args` (see its `--help`: `--port`, `--tls`, `--fail-data`, ...) in a
    /// folder of its own under `dir`; panics if it does not start (for `#[test]` functions).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::spawn(dir, "127.0.0.1", args, None)
            .unwrap_or_else(|e| panic!("upstream.py did not start: {e:#}"))
    }

    /// upstream.py on `port` (held by the test, so that the upstream can be started after the
    /// sidecar that names it, or stopped and started again, as an outage would), with `args`
    /// (`--address`, `--tls`, ...); panics if it does not start on that port.
    pub fn start_on(dir: &Path, port: &Reservation, args: &[&str]) -> Self {
        let reserved = port.peer_args();
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(reserved.iter().map(String::as_str))
            .collect();
        let up = Self::start(dir, &all);
        assert_eq!(
            up.port,
            port.port(),
            "upstream.py bound another port\n{}",
            up.log()
        );
        up
    }

    /// STARTTLS required (a certificate for 127.0.0.1 from a throwaway CA) and AUTH as
    /// `user:password` required, like a provider's submission port.
    pub fn starttls_with_auth(dir: &Path, user: &str, password: &str) -> Result<Self> {
        Self::starttls_with_auth_at(dir, "127.0.0.1", user, password)
    }

    /// `starttls_with_auth` listening on `host` (e.g. a test node's gateway, for pods), with a
    /// certificate for that address.
    pub fn starttls_with_auth_at(dir: &Path, host: &str, user: &str, password: &str) -> Result<Self> {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![host.to_string()])?.signed_by(&key, &ca)?;
        let (crt, key_file) = (dir.join("upstream.crt"), dir.join("upstream.key"));
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        let auth = format!("{user}:{password}");
        let args = [
            "--tls",
            "starttls",
            "--require-auth",
            &auth,
            "--cert",
            path_str(&crt)?,
            "--key",
            path_str(&key_file)?,
        ];
        Self::spawn(dir, host, &args, Some(ca.pem()))
    }

    fn spawn(dir: &Path, host: &str, args: &[&str], ca_pem: Option<String>) -> Result<Self> {
        // Several upstreams may share a test's folder (one restarted on the same port, say).
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let home = dir.join(format!("upstream-{n}"));
        let maildir = home.join("maildir");
        std::fs::create_dir_all(&maildir)?;
        let (proc, port) = Proc::spawn_reporting_port(
            "upstream",
            Command::new(testenv::python()?)
                .arg(repo().join("tests/peers/upstream.py"))
                .args(["--address", host])
                .args(args)
                .arg("--maildir")
                .arg(&maildir),
            &home,
        )?;
        Ok(Self {
            proc,
            host: host.to_string(),
            port,
            maildir,
            ca_pem,
        })
    }

    /// Every transaction saved so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.maildir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "json"));
        names.sort();
        names
            .iter()
            .map(|json| Received {
                meta: serde_json::from_slice(&std::fs::read(json).expect("read json")).expect("json"),
                data: std::fs::read(json.with_extension("eml")).expect("read eml"),
            })
            .collect()
    }

    /// The `Subject:` of every message saved so far, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| {
                String::from_utf8_lossy(&r.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect()
    }

    /// upstream.py's output so far, for assertion messages.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The saved messages, oldest first; each with its envelope file (written after the `.eml`).
    pub fn messages(&self) -> Result<Vec<PathBuf>> {
        let mut emls: Vec<PathBuf> = std::fs::read_dir(&self.maildir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "eml") && p.with_extension("json").is_file())
            .collect();
        emls.sort();
        Ok(emls)
    }

    /// Waits until at least `n` messages were saved; all of them, oldest first.
    pub fn wait_messages(&mut self, n: usize, also_running: &mut Proc) -> Result<Vec<PathBuf>> {
        eventually(
            &format!("{n} message(s) at the upstream"),
            Duration::from_secs(60),
            || {
                self.proc.check_running()?;
                also_running.check_running()?;
                let emls = self.messages()?;
                Ok((emls.len() >= n).then_some(emls))
            },
        )
    }

    /// The envelope and connection facts saved next to `eml` (`mail_from`, `rcpt_tos`, `tls`,
    /// `authenticated`).
    pub fn envelope(eml: &Path) -> Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            eml.with_extension("json"),
        )?)?)
    }

    /// TCP connections accepted so far (0 before the first: upstream.py writes the count when
    /// one arrives).
    pub fn connections(&self) -> u64 {
        self.counter("connections")
    }

    /// QUIT commands received so far.
    pub fn quits(&self) -> u64 {
        self.counter("quits")
    }

    fn counter(&self, name: &str) -> u64 {
        std::fs::read_to_string(self.maildir.join(name))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `tests/peers/dnsserver.py` (dnslib): an authoritative DNS server on 127.0.0.1 answering from a
/// zone file it re-reads when it changes; with DNSSEC, a signed root zone with a key made for the
/// run.
#[derive(Debug)]
pub struct DnsServer {
    /// The process.
    pub proc: Proc,
    /// UDP and TCP port on `host`.
    pub port: u16,
    host: String,
    zone: PathBuf,
    /// For a signed zone: the DNSKEY trust anchor file the server wrote.
    pub anchor: Option<PathBuf>,
}

// === impl DnsServer ===

impl DnsServer {
    /// Starts the server with an empty zone kept in `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::spawn(dir, "127.0.0.1", "", false)
    }

    /// `start`, listening on `host` (e.g. a test node's gateway, for pods).
    pub fn start_at(dir: &Path, host: &str) -> Result<Self> {
        Self::spawn(dir, host, "", false)
    }

    /// `start_at` on a fixed `port` (53 for pods, whose resolv.conf names only an address).
    pub fn start_on(dir: &Path, host: &str, port: u16) -> Result<Self> {
        Self::spawn_on(dir, host, port, "", false)
    }

    /// Serves `zone` (master-file text), unsigned; panics if the server does not start.
    pub fn with_zone(dir: &Path, zone: &str) -> Self {
        Self::spawn(dir, "127.0.0.1", zone, false)
            .unwrap_or_else(|e| panic!("dnsserver.py did not start: {e:#}"))
    }

    /// Serves `zone` as a DNSSEC-signed root zone; its DNSKEY is in [`DnsServer::anchor`].
    pub fn signed(dir: &Path, zone: &str) -> Self {
        Self::spawn(dir, "127.0.0.1", zone, true)
            .unwrap_or_else(|e| panic!("dnsserver.py did not start: {e:#}"))
    }

    fn spawn(dir: &Path, host: &str, zone_text: &str, signed: bool) -> Result<Self> {
        Self::spawn_on(dir, host, 0, zone_text, signed)
    }

    /// dnsserver.py on `host:port` (0: any free port).
    fn spawn_on(dir: &Path, host: &str, port: u16, zone_text: &str, signed: bool) -> Result<Self> {
        let zone = dir.join("zone.txt");
        std::fs::write(&zone, zone_text)?;
        let anchor = signed.then(|| dir.join("trust-anchor.txt"));
        let mut cmd = Command::new(testenv::python()?);
        cmd.arg(repo().join("tests/peers/dnsserver.py")).arg(&zone).args([
            "--address",
            host,
            "--port",
            &port.to_string(),
        ]);
        if let Some(a) = &anchor {
            cmd.arg("--dnssec").arg(a);
        }
        let (proc, port) = Proc::spawn_reporting_port("dnsserver", &mut cmd, dir)?;
        Ok(Self {
            proc,
            port,
            host: host.to_string(),
            zone,
            anchor,
        })
    }

    /// Serves exactly the records a MailDomain's `status.dnsRecords` lists (TXT records, each
    /// value's strings quoted); returns the zone lines.
    pub fn serve_status_records(&self, domain: &Value) -> Result<Vec<String>> {
        let zone: Vec<String> = domain["status"]["dnsRecords"]
            .as_array()
            .context("status.dnsRecords")?
            .iter()
            .map(|r| {
                let strings: Vec<String> = r["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("\"{}\"", s.as_str().unwrap_or_default()))
                    .collect();
                format!(
                    "{}. 300 IN TXT {}",
                    r["name"].as_str().unwrap_or_default(),
                    strings.join(" ")
                )
            })
            .collect();
        self.serve(&zone)?;
        Ok(zone)
    }

    /// Replaces the whole zone (master-file text); panics if it cannot be written.
    pub fn publish(&self, zone: &str) {
        let lines: Vec<String> = zone.lines().map(str::to_string).collect();
        self.serve(&lines).expect("zone file");
    }

    /// Replaces the served records (`name. 300 IN TXT "a" "b"` lines).
    pub fn serve(&self, lines: &[String]) -> Result<()> {
        // Write then rename: the server never reads a half-written zone.
        let tmp = self.zone.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for line in lines {
            writeln!(f, "{line}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.zone)?;
        Ok(())
    }

    /// `<host>:<port>`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `tests/peers/policy_server.py`: an HTTPS MTA-STS policy host on `address` with `ca`'s
/// certificate chain.
#[derive(Debug)]
pub struct PolicyServer {
    /// The process.
    pub proc: Proc,
    /// The HTTPS port.
    pub port: u16,
    dir: PathBuf,
}

impl PolicyServer {
    /// Serves `<dir>/policies/mta-sts.<domain>.txt`; panics if the server does not start.
    pub fn start(dir: &Path, address: &str, ca: &TestCa) -> Self {
        let policies = dir.join("policies");
        let started = (|| -> Result<(Proc, u16)> {
            std::fs::create_dir_all(&policies)?;
            Proc::spawn_reporting_port(
                "policy-server",
                Command::new(testenv::python()?)
                    .arg(repo().join("tests/peers/policy_server.py"))
                    .args(["--address", address, "--cert"])
                    .arg(ca.chain())
                    .arg("--key")
                    .arg(&ca.key)
                    .arg("--dir")
                    .arg(&policies),
                dir,
            )
        })();
        let (proc, port) = started.unwrap_or_else(|e| panic!("policy_server.py did not start: {e:#}"));
        Self {
            proc,
            port,
            dir: policies,
        }
    }

    /// Publishes `policy` for `mta-sts.<domain>`.
    pub fn publish(&self, domain: &str, policy: &str) {
        std::fs::write(self.dir.join(format!("mta-sts.{domain}.txt")), policy).expect("policy");
    }
}

/// Sends a small test message with Python's smtplib; `Ok` with smtplib's refusals as JSON text,
/// or `Err` with the SMTP error (e.g. a rejected sender).
pub fn smtp_send(smtp: SocketAddr, from: &str, to: &[&str]) -> Result<std::result::Result<String, String>> {
    static SENT: AtomicU32 = AtomicU32::new(0);
    let n = SENT.fetch_add(1, Ordering::Relaxed);
    let first = to.first().copied().unwrap_or_default();
    let message = format!(
        "From: <{from}>\r\nTo: <{first}>\r\nSubject: mailroom test\r\nMessage-ID: <{}.{n}@test>\r\n\r\nhello\r\n",
        std::process::id()
    );
    smtp_send_message(smtp, from, to, message.as_bytes())
}

/// Sends `message` with Python's smtplib (a client we did not write); `Ok` with smtplib's
/// per-recipient refusals as JSON text (`{"ok": true, "refused": {rcpt: [code, text]}}`), or
/// `Err` with the SMTP error.
pub fn smtp_send_message(
    smtp: SocketAddr,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> Result<std::result::Result<String, String>> {
    let script = r#"
import json, smtplib, sys
host, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[4:]
data = sys.stdin.buffer.read()
try:
    with smtplib.SMTP(host, port, timeout=30) as s:
        refused = s.sendmail(sender, rcpts, data)
    print(json.dumps({"ok": True, "refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}}))
except smtplib.SMTPException as e:
    print(json.dumps({"ok": False, "error": repr(e)}))
"#;
    let args = std::iter::once(from).chain(to.iter().copied());
    let text = String::from_utf8_lossy(&run_smtplib(script, smtp, args, message)?).to_string();
    Ok(if text.contains("\"ok\": true") {
        Ok(text)
    } else {
        Err(text)
    })
}

/// Runs an SMTP dialogue with Python's smtplib, command lines exactly as given: EHLO, then each
/// of `commands` (`MAIL FROM:<...> ...`, `RCPT TO:<...> ...`) through `docmd`, then DATA with
/// `message` if any recipient was accepted. Returns every reply as `"<code> <text>"`, in order
/// (the DATA reply last). For paths and parameters smtplib's `sendmail` would rewrite.
pub fn smtp_commands(smtp: SocketAddr, commands: &[&str], message: &[u8]) -> Result<Vec<String>> {
    let script = r#"
import json, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
data = sys.stdin.buffer.read()
replies = []
with smtplib.SMTP(host, port, timeout=30) as s:
    s.command_encoding = "utf-8"
    s.ehlo("client.test")
    accepted = False
    for line in sys.argv[3:]:
        code, text = s.docmd(line)
        replies.append("%d %s" % (code, text.decode()))
        accepted = accepted or (line.upper().startswith("RCPT") and code == 250)
    if accepted:
        try:
            code, text = s.data(data)
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        replies.append("%d %s" % (code, text.decode()))
print(json.dumps(replies))
"#;
    let out = run_smtplib(script, smtp, commands.iter().copied(), message)?;
    serde_json::from_slice(&out).context("smtplib client output")
}

/// Sends a message in BDAT chunks (RFC 3030) over Python's smtplib connection handling and
/// reply parsing: EHLO, which must offer CHUNKING, then MAIL and one RCPT, then one `BDAT` per
/// entry of `chunks` (the last one `LAST`), each sent in one write with its data. Returns every
/// reply after EHLO as `"<code> <text>"`, in order.
pub fn smtp_bdat(smtp: SocketAddr, from: &str, to: &str, chunks: &[&[u8]]) -> Result<Vec<String>> {
    let script = r#"
import json, smtplib, sys
host, port, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = sys.stdin.buffer.read()
sizes = [int(n) for n in sys.argv[5:]]
replies = []
with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("client.test")
    if not s.has_extn("chunking"):
        sys.exit("the server does not offer CHUNKING: %r" % s.esmtp_features)
    for line in ("MAIL FROM:<%s>" % sender, "RCPT TO:<%s>" % rcpt):
        code, text = s.docmd(line)
        replies.append("%d %s" % (code, text.decode()))
    at = 0
    for i, n in enumerate(sizes):
        last = " LAST" if i == len(sizes) - 1 else ""
        s.send(b"BDAT %d%s\r\n" % (n, last.encode()) + data[at:at + n])
        at += n
        code, text = s.getreply()
        replies.append("%d %s" % (code, text.decode()))
print(json.dumps(replies))
"#;
    let sizes: Vec<String> = chunks.iter().map(|c| c.len().to_string()).collect();
    let args = [from, to].into_iter().chain(sizes.iter().map(String::as_str));
    let out = run_smtplib(script, smtp, args, &chunks.concat())?;
    serde_json::from_slice(&out).context("smtplib client output")
}

/// Runs the smtplib `script` with the host and port of `smtp` and then `args` as its arguments
/// and `message` on its stdin; its stdout, or an error with both outputs if it failed.
fn run_smtplib<'a>(
    script: &str,
    smtp: SocketAddr,
    args: impl Iterator<Item = &'a str>,
    message: &[u8],
) -> Result<Vec<u8>> {
    let mut child = Command::new(testenv::python()?)
        .arg("-c")
        .arg(script)
        .arg(smtp.ip().to_string())
        .arg(smtp.port().to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the smtplib client")?;
    child.stdin.take().context("stdin")?.write_all(message)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "smtplib client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Verifies the first DKIM-Signature of `eml` with dkimpy, which looks the key up in DNS through
/// the server on 127.0.0.1:`dns_port` (`tests/peers/dkim_verify_dns.py`). Returns the signing
/// domain and selector (`d=... s=...`).
pub fn dkim_verify_dns(eml: &Path, dns_port: u16) -> Result<String> {
    dkim_verify_dns_at(eml, &format!("127.0.0.1:{dns_port}"))
}

/// `dkim_verify_dns` against the DNS server at `addr` (`host:port`, e.g. [`DnsServer::addr`]).
pub fn dkim_verify_dns_at(eml: &Path, addr: &str) -> Result<String> {
    let (host, port) = addr.rsplit_once(':').context("DNS address without a port")?;
    let out = Command::new(testenv::python()?)
        .arg(repo().join("tests/peers/dkim_verify_dns.py"))
        .arg(eml)
        .arg(port)
        .arg(host)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "dkimpy did not verify {}: {stdout}\n{}",
        eml.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Parses a DSN with Python's email package (`tests/peers/dsn_check.py`): content type,
/// report type, parts, From/To/Auto-Submitted, delivery-status blocks and parser defects.
pub fn dsn_summary(eml: &Path) -> Result<Value> {
    let out = Command::new(testenv::python()?)
        .arg(repo().join("tests/peers/dsn_check.py"))
        .arg(eml)
        .output()?;
    ensure!(
        out.status.success(),
        "dsn_check.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("dsn_check.py output")
}

/// An Ed25519 DKIM key made with the openssl CLI.
pub fn dkim_key(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("dkim.pem");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED25519", "-out"])
        .arg(&key)
        .status()
        .context("the openssl CLI is required (apt-get install openssl)")?;
    if !status.success() {
        bail!("openssl genpkey failed");
    }
    Ok(key)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
