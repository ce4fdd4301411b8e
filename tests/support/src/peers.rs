//! Test peers we did not write, as processes on loopback: the scripted upstream SMTP server
//! (aiosmtpd, `sidecar/tests/peers/upstream.py`), the authoritative DNS server (dnslib,
//! `tests/peers/dnsserver.py`), a Python smtplib client, and the independent checkers (dkimpy
//! through our DNS server, Python's email package for DSNs).

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;

use crate::{
    stack::{Proc, eventually, repo},
    testenv,
};

/// `sidecar/tests/peers/upstream.py` on 127.0.0.1: `temp-fail*` recipients get 450, `perm-fail*`
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

impl Upstream {
    /// Plain SMTP, no authentication.
    pub fn plain(dir: &Path) -> Result<Self> {
        Self::start(dir, "127.0.0.1", &[], None)
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
        Self::start(dir, host, &args, Some(ca.pem()))
    }

    fn start(dir: &Path, host: &str, args: &[&str], ca_pem: Option<String>) -> Result<Self> {
        let maildir = dir.join("upstream-maildir");
        std::fs::create_dir_all(&maildir)?;
        let (proc, port) = Proc::spawn_reporting_port(
            "upstream",
            Command::new(testenv::python()?)
                .arg(repo().join("sidecar/tests/peers/upstream.py"))
                .args(["--address", host])
                .args(args)
                .arg("--maildir")
                .arg(&maildir),
            dir,
        )?;
        Ok(Self {
            proc,
            host: host.to_string(),
            port,
            maildir,
            ca_pem,
        })
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

    /// TCP connections accepted so far.
    pub fn connections(&self) -> Result<u64> {
        match std::fs::read_to_string(self.maildir.join("connections")) {
            Ok(n) => Ok(n.trim().parse()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// `tests/peers/dnsserver.py` (dnslib): an authoritative DNS server on 127.0.0.1 answering from a
/// zone file it re-reads when it changes.
#[derive(Debug)]
pub struct DnsServer {
    /// The process.
    pub proc: Proc,
    /// UDP and TCP port on `host`.
    pub port: u16,
    host: String,
    zone: PathBuf,
}

// === impl DnsServer ===

impl DnsServer {
    /// Starts the server with an empty zone kept in `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_at(dir, "127.0.0.1")
    }

    /// `start`, listening on `host` (e.g. a test node's gateway, for pods).
    pub fn start_at(dir: &Path, host: &str) -> Result<Self> {
        let zone = dir.join("zone.txt");
        std::fs::write(&zone, "")?;
        let (proc, port) = Proc::spawn_reporting_port(
            "dnsserver",
            Command::new(testenv::python()?)
                .arg(repo().join("tests/peers/dnsserver.py"))
                .arg(&zone)
                .args(["--address", host]),
            dir,
        )?;
        Ok(Self {
            proc,
            port,
            host: host.to_string(),
            zone,
        })
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

/// Sends one message with Python's smtplib; `Ok` with smtplib's refusals as JSON text, or `Err`
/// with the SMTP error (e.g. a rejected sender).
pub fn smtp_send(smtp: SocketAddr, from: &str, to: &[&str]) -> Result<std::result::Result<String, String>> {
    let script = r#"
import json, smtplib, sys
host, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[4:]
msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: mailroom test\r\nMessage-ID: <%s@test>\r\n\r\nhello\r\n"
       % (sender, rcpts[0], id(rcpts))).encode()
try:
    with smtplib.SMTP(host, port, timeout=30) as s:
        refused = s.sendmail(sender, rcpts, msg)
    print(json.dumps({"ok": True, "refused": {k: v[0] for k, v in refused.items()}}))
except smtplib.SMTPException as e:
    print(json.dumps({"ok": False, "error": repr(e)}))
"#;
    let out = Command::new(testenv::python()?)
        .arg("-c")
        .arg(script)
        .arg(smtp.ip().to_string())
        .arg(smtp.port().to_string())
        .arg(from)
        .args(to)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "smtplib client failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(if text.contains("\"ok\": true") {
        Ok(text)
    } else {
        Err(text)
    })
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

/// Parses a DSN with Python's email package (`sidecar/tests/peers/dsn_check.py`): content type,
/// report type, parts, From/To/Auto-Submitted, delivery-status blocks and parser defects.
pub fn dsn_summary(eml: &Path) -> Result<Value> {
    let out = Command::new(testenv::python()?)
        .arg(repo().join("sidecar/tests/peers/dsn_check.py"))
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
