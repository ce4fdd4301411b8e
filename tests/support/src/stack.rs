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
