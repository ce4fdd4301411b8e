//! Real processes for the monitoring proof: the `mailroom-sidecar` and `mailroom-operator`
//! binaries, the scripted upstream SMTP server (sidecar/tests/peers/upstream.py), Prometheus, and
//! a Python smtplib client. Every child is killed on drop.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mailroom_test_support::testenv;

use super::repo;

/// Builds the sidecar and operator binaries (a no-op when `cargo test --workspace` already did)
/// and returns `target/debug`. Another crate's binaries have no `CARGO_BIN_EXE_*`, so we ask cargo.
pub fn build_binaries() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(repo())
        // The same selection as `make build`, so features unify the same way and nothing rebuilds.
        .args(["build", "--workspace", "--bins"])
        .status()
        .with_context(|| format!("running {cargo} build"))?;
    if !status.success() {
        bail!("`cargo build --workspace --bins` failed ({status})");
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("debug");
    for bin in ["mailroom-sidecar", "mailroom-operator"] {
        if !dir.join(bin).is_file() {
            bail!("{} is missing after cargo build", dir.join(bin).display());
        }
    }
    Ok(dir)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process with its output in a log file; killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Fails with the log when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})\n{}", self.name, self.log());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Minimal HTTP/1.0 GET: status and body.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `GET path` on `addr` answers 200.
pub fn wait_http_ok(what: &str, addr: SocketAddr, path: &str, proc: &mut Proc) -> Result<()> {
    eventually(what, Duration::from_secs(60), || {
        proc.check_running()?;
        Ok(http_get(addr, path).ok().filter(|(s, _)| *s == 200).map(|_| ()))
    })
}

/// `sidecar/tests/peers/upstream.py` on 127.0.0.1: `temp-fail*` recipients get 450, `perm-fail*` 550.
pub fn upstream(dir: &Path) -> Result<(Proc, u16)> {
    let maildir = dir.join("upstream-maildir");
    std::fs::create_dir_all(&maildir)?;
    let mut child = Command::new(testenv::python()?)
        .arg(repo().join("sidecar/tests/peers/upstream.py"))
        .arg("--maildir")
        .arg(&maildir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("upstream.log"))?)
        .spawn()
        .context("starting upstream.py with the testenv python")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("upstream stdout")?).read_line(&mut line)?;
    let port = line.trim().parse().with_context(|| {
        format!(
            "upstream.py printed no port: {}",
            std::fs::read_to_string(dir.join("upstream.log")).unwrap_or_default()
        )
    })?;
    let proc = Proc {
        name: "upstream".into(),
        child,
        log: dir.join("upstream.log"),
    };
    Ok((proc, port))
}

/// Sends one message with Python's smtplib; `Ok` with smtplib's refusals as JSON text, or `Err`
/// with the SMTP error (e.g. a rejected sender).
pub fn smtp_send(smtp: SocketAddr, from: &str, to: &[&str]) -> Result<std::result::Result<String, String>> {
    let script = r#"
import json, smtplib, sys
host, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[4:]
msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: monitoring proof\r\nMessage-ID: <%s@test>\r\n\r\nhello\r\n"
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
