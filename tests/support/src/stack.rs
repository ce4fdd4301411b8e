//! Real processes for the end-to-end tests: our binaries built by cargo, children with their
//! output in a log file (killed on drop), polling, and a minimal HTTP client for `/metrics`,
//! `/readyz` and the Prometheus API.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// Binary `name` that cargo built for the running test: the one beside the test executable's
/// `deps/` folder (cargo builds a package's binaries before its integration tests). Panics with
/// `how` (the command that builds it) when it is not there.
pub fn built_bin(name: &str, how: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("target directory");
    assert!(bin.is_file(), "{} not found: run {how}", bin.display());
    bin
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

    /// Spawns `cmd` (a test peer) that prints the port it bound as its first stdout line; stderr
    /// goes to `<dir>/<name>.log`. Returns the process and that port.
    pub fn spawn_reporting_port(name: &str, cmd: &mut Command, dir: &Path) -> Result<(Self, u16)> {
        let log = dir.join(format!("{name}.log"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let proc = Self {
            name: name.into(),
            child,
            log,
        };
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("{name} printed no port ({line:?})\n{}", proc.log()))?;
        Ok((proc, port))
    }

    /// Waits (up to 60 s, failing early when the process exits) until a line of its log makes
    /// `pick` return `Some`, and returns that: how a test reads the address a process bound
    /// on port 0 from its "listening" line (see [`log_field`]).
    pub fn wait_log<T>(&mut self, what: &str, pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let log = self.log.clone();
        wait_log(what, &log, 0, || self.check_running(), pick)
    }

    /// The SMTP and admin addresses a `mailroom-sidecar` process reports in its `listening`
    /// line (plain or JSON logs): start it on `127.0.0.1:0` and ask.
    pub fn sidecar_addrs(&mut self) -> Result<(SocketAddr, SocketAddr)> {
        self.wait_log("the sidecar's listening line", sidecar_listening)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status (a graceful stop, as the kubelet does).
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(self.child.wait()?)
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

/// Waits (up to 60 s) until a line of the log file `log`, from byte `from` on (a log appended
/// to across restarts), makes `pick` return `Some`; `alive` fails when the process exited.
pub fn wait_log<T>(
    what: &str,
    log: &Path,
    from: u64,
    mut alive: impl FnMut() -> Result<()>,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> Result<T> {
    eventually(what, Duration::from_secs(60), || {
        let found = find_in_log(log, from, &mut pick)?;
        if found.is_none() {
            alive()?;
        }
        Ok(found)
    })
    .with_context(|| {
        format!(
            "--- {} ---\n{}",
            log.display(),
            read_from(log, from).unwrap_or_default()
        )
    })
}

/// The first line of the log file `log`, from byte `from` on, that makes `pick` return `Some`
/// (without waiting).
pub fn find_in_log<T>(log: &Path, from: u64, pick: impl FnMut(&str) -> Option<T>) -> Result<Option<T>> {
    Ok(read_from(log, from)?.lines().find_map(pick))
}

fn read_from(log: &Path, from: u64) -> Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(log)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of field `key` in a log line: `key=value` (tracing's plain format, logfmt, quotes
/// removed) or `"key":"value"` in a JSON line (tracing's `fields`, or the top level).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    if line.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let value = v.get("fields").and_then(|f| f.get(key)).or_else(|| v.get(key))?;
        return Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned));
    }
    let prefix = format!("{key}=");
    let mut rest = line;
    while let Some(at) = rest.find(&prefix) {
        let before = rest[..at].chars().next_back();
        let value = &rest[at + prefix.len()..];
        if before.is_none_or(char::is_whitespace) {
            return Some(match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or_default().to_owned(),
                None => value.split_whitespace().next().unwrap_or_default().to_owned(),
            });
        }
        rest = value;
    }
    None
}

/// The `addr` of a log line with `message` (the operator's `admin server listening` and `webhook
/// listening`), plain or JSON.
pub fn listening_addr(line: &str, message: &str) -> Option<SocketAddr> {
    if !line.contains(message) {
        return None;
    }
    log_field(line, "addr")?.parse().ok()
}

/// The `smtp=` and `admin=` addresses of a `mailroom-sidecar` `listening` line, plain or JSON.
pub fn sidecar_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let addr = |key| log_field(line, key)?.parse().ok();
    Some((addr("smtp")?, addr("admin")?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_read_from_plain_logfmt_and_json_lines() {
        let plain =
            "2026-01-01T00:00:00Z  INFO mailroom_sidecar: listening smtp=127.0.0.1:2525 admin=127.0.0.1:9465";
        let json = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","smtp":"127.0.0.1:2525","admin":"127.0.0.1:9465"},"target":"mailroom_sidecar"}"#;
        for line in [plain, json] {
            assert_eq!(
                sidecar_listening(line),
                Some((
                    "127.0.0.1:2525".parse().expect("addr"),
                    "127.0.0.1:9465".parse().expect("addr")
                )),
                "{line}"
            );
        }
        let prometheus = r#"time=t level=INFO source=tls_config.go:395 msg="Listening on" component=web address=127.0.0.1:39755"#;
        assert_eq!(log_field(prometheus, "msg").as_deref(), Some("Listening on"));
        assert_eq!(
            log_field(prometheus, "address").as_deref(),
            Some("127.0.0.1:39755")
        );
        // `addr=` is not the tail of `address=`.
        assert_eq!(log_field(prometheus, "addr"), None);
        assert_eq!(sidecar_listening("INFO mailroom_sidecar: stopped"), None);
    }
}
