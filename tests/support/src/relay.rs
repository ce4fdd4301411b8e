//! The real `mailroom-sidecar` binary as a process, for the sidecar's process tests
//! (`sidecar/tests/relay_*.rs`): started from a config template on loopback ports it picks
//! itself, talked to the way a kubelet and Prometheus would (files, signals, HTTP), plus the
//! config templates and helpers those scenarios share. Failures panic with the sidecar's log:
//! these helpers serve `#[test]` functions directly.

pub use crate::ports::Reservation;
use crate::stack::{self, http_get};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The `mailroom-sidecar` binary cargo built for the running test: `MAILROOM_SIDECAR_BIN`, or
/// the one beside the test executable's `deps/` folder (cargo builds a package's binaries before
/// its integration tests).
pub fn sidecar_bin() -> PathBuf {
    match std::env::var_os("MAILROOM_SIDECAR_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => stack::built_bin("mailroom-sidecar", "cargo test -p mailroom-sidecar"),
    }
}

#[derive(Debug)]
/// A running sidecar process with its own temp dir (spool, capture, config).
pub struct Sidecar {
    child: Option<Child>,
    /// SMTP address.
    pub smtp: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Queue API address (`mailroom-sidecar queue --api`).
    pub queue_api: SocketAddr,
    /// Config file path: a symlink into `..data/`, as in a ConfigMap volume (see `swap_config`).
    pub config_path: PathBuf,
    /// Work directory; `{dir}` in config templates expands to it.
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
}

impl Sidecar {
    /// Writes `config` (with `{dir}` replaced) and starts the sidecar on loopback port 0 (SMTP
    /// and admin), reading the ports it got from its `listening` line.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_env(dir, config, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let config_path = dir.join("sidecar.yaml");
        write_atomically(dir, &config.replace("{dir}", &dir.display().to_string()), 0);
        std::os::unix::fs::symlink("..data/sidecar.yaml", &config_path).expect("config symlink");
        let mut all = vec![("SIDECAR_RELOAD_INTERVAL_SECONDS".to_string(), "1".to_string())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut s = Self {
            child: None,
            smtp: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            queue_api: "127.0.0.1:0".parse().expect("addr"),
            config_path,
            dir: dir.to_owned(),
            log: Arc::default(),
            env: all,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(sidecar_bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("SIDECAR_LISTEN_ADDR", self.smtp.to_string())
            .env("SIDECAR_ADMIN_ADDR", self.admin.to_string())
            .env("SIDECAR_QUEUE_API_ADDR", self.queue_api.to_string())
            .env("RUST_LOG", "info,mailroom_sidecar=debug")
            .env_remove("SIDECAR_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mailroom-sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if stack::sidecar_listening(&line).is_some() {
                    let _ = tx.send(line.clone());
                }
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => panic!("sidecar did not start; log:\n{}", self.log()),
        };
        (self.smtp, self.admin) = stack::sidecar_listening(&line).expect("addresses in the listening line");
        self.queue_api = stack::log_field(&line, "queue_api")
            .and_then(|a| a.parse().ok())
            .expect("the queue API's address in the listening line");
        self.wait_ready();
    }

    /// Replaces the config the way the kubelet updates a mounted ConfigMap: a new timestamped
    /// directory, then an atomic rename of the `..data` symlink (Kubernetes `AtomicWriter`).
    pub fn swap_config(&self, text: &str) {
        static GENERATION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let n = GENERATION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        write_atomically(
            &self.dir,
            &text.replace("{dir}", &self.dir.display().to_string()),
            n,
        );
    }

    /// Everything the sidecar logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log as it grows, for a thread that watches it while another owns the sidecar.
    pub fn log_handle(&self) -> Arc<Mutex<String>> {
        self.log.clone()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(self.admin, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sidecar never became ready; log:\n{}", self.log());
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("GET /metrics").1
    }

    /// Value of one sample, e.g. `metric(r#"mailroom_sidecar_messages_delivered_total{...}"#)`;
    /// label order as the exposition prints it (alphabetical). 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Polls `series` until `pred` holds or 30 s pass.
    pub fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(series);
            if pred(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{series} = {v} never matched; metrics:\n{}\nlog:\n{}",
                    self.metrics(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id (0 once it was killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory of the process in KiB (from /proc), 0 if it is not running.
    pub fn rss_kib(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// SIGKILL, as a node failure or OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let status = c.wait().ok()?;
        self.child = None;
        status.code()
    }

    /// Starts the process again on the same ports, config and spool. (The ports are not held
    /// between the kill and the new bind: the sidecar binds without `SO_REUSEPORT`, so a
    /// [`Reservation`] cannot keep them; the window is the new process's start-up.)
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- sidecar log ---\n{}", self.log());
        }
    }
}

fn write_atomically(dir: &Path, text: &str, generation: usize) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).expect("config data dir");
    std::fs::write(data.join("sidecar.yaml"), text).expect("write config");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).expect("data symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}

/// Sum of the samples whose series starts with `series` (so a prefix without the closing brace
/// sums over the remaining labels).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', ',', '}', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends one message with Python's smtplib (a client we did not write). Returns smtplib's
/// per-recipient refusals as printed JSON, or the error text; panics if the client cannot run.
pub fn smtplib_send(smtp: SocketAddr, from: &str, to: &[&str], message: &[u8]) -> Result<String, String> {
    crate::peers::smtp_send_message(smtp, from, to, message).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`crate::peers::smtp_commands`] for `#[test]` functions: the replies, or a panic if the
/// client cannot run.
pub fn smtp_commands(smtp: SocketAddr, commands: &[&str], message: &[u8]) -> Vec<String> {
    crate::peers::smtp_commands(smtp, commands, message).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`smtp_commands`] where every command and the message must be accepted (`250`); panics with
/// the replies otherwise.
pub fn smtp_accepted(smtp: SocketAddr, commands: &[&str], message: &[u8]) {
    let replies = smtp_commands(smtp, commands, message);
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
}

/// Polls until `f` returns Some or 75 s pass (a parked route waits 30 s before its probe);
/// panics with `what` after that.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    stack::eventually(what, Duration::from_secs(75), || Ok(f())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A sidecar config relaying to `127.0.0.1:<port>`, with `extra` appended under `delivery.smarthost`
/// (indented by four spaces) and `tail` appended at the top level.
pub fn smarthost_config(port: u16, tls: &str, smarthost_extra: &str, domains: &str, tail: &str) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
hostname: sidecar.test
domains:
{domains}
spool:
  dir: {{dir}}/spool
delivery:
  smarthost:
    host: 127.0.0.1
    port: {port}
    tls: {tls}
    connectTimeoutSeconds: 5
    commandTimeoutSeconds: 10
{smarthost_extra}
retry:
  initialSeconds: 1
  multiplier: 1.5
  maxSeconds: 2
  maxAgeSeconds: 600
{tail}"
    )
}

/// A plain-text upstream (upstream.py) and a sidecar for `example.com` relaying to it, with
/// `tail` appended to the config, in a new temporary directory. Bind the three in this order
/// (`let (dir, up, sidecar) = ...`), so that the sidecar stops first and the directory goes last.
pub fn sidecar_and_upstream(tail: &str) -> (tempfile::TempDir, crate::peers::Upstream, Sidecar) {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = crate::peers::Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", tail);
    let sidecar = Sidecar::start(dir.path(), &config);
    (dir, up, sidecar)
}

/// A sidecar config for `example.com` that keeps each message in `{dir}/capture` (nothing is
/// sent), with `limits` (YAML lines, or "") at the top level.
pub fn capture_config(limits: &str) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n  - domain: example.com\n\
         {limits}spool:\n  dir: {{dir}}/spool\ndelivery:\n  capture:\n    dir: {{dir}}/capture\n"
    )
}

/// A sidecar config for direct delivery resolving through `127.0.0.1:<dns>` and connecting to
/// MX hosts on `smtp_port`, with `extra` lines (indented by four spaces) under `delivery.direct`.
/// Retries every second, so that tests see the second attempt soon.
pub fn direct_config(dns: u16, smtp_port: u16, extra: &str) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
hostname: sidecar.test
domains:
  - domain: example.com
spool:
  dir: {{dir}}/spool
delivery:
  direct:
    resolvers: [\"127.0.0.1:{dns}\"]
    port: {smtp_port}
    connectTimeoutSeconds: 2
    commandTimeoutSeconds: 10
{extra}retry:
  initialSeconds: 1
  multiplier: 1.0
  maxSeconds: 1
  maxAgeSeconds: 600
"
    )
}

/// Generates a DKIM key with the openssl CLI; returns (key file, DNS TXT record value).
pub fn dkim_key(dir: &Path, name: &str, algorithm: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let args: Vec<&str> = match algorithm {
        "rsa" => vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        _ => vec!["genpkey", "-algorithm", "ED25519"],
    };
    let status = Command::new("openssl")
        .args(&args)
        .arg("-out")
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI is required (apt-get install openssl)");
    assert!(status.success(), "openssl genpkey failed");
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    assert!(der.status.success());
    let (k, public) = match algorithm {
        // RFC 6376 3.6.1: p= is the SubjectPublicKeyInfo for RSA.
        "rsa" => ("rsa", der.stdout.as_slice()),
        // RFC 8463 4.2: p= is the raw 32-byte Ed25519 key (the SPKI's last 32 bytes).
        _ => ("ed25519", &der.stdout[der.stdout.len() - 32..]),
    };
    (key, format!("v=DKIM1; k={k}; p={}", base64(public)))
}

/// Standard base64 with padding (DKIM `p=` values, AUTH blobs).
pub fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A port held for the test ([`Reservation`]) on every local address: for a peer a test starts
/// (or restarts) on a known port with [`Upstream::start_on`](crate::peers::Upstream::start_on),
/// for MX hosts on 127.0.0.2 and 127.0.0.3 that share one port, or for a port where nothing may
/// listen while it is held.
pub fn reserve_port() -> Reservation {
    Reservation::any().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The test venv's Python (aiosmtpd, dkimpy, ...); panics with how to get it.
pub fn python() -> PathBuf {
    crate::testenv::python().unwrap_or_else(|e| panic!("{e:#}"))
}

/// tests/peers/json_lines.py's strict reading of a JSON-lines `log` (written into `dir`):
/// `lines`, `events` (`level`, `message`, `keys` of `fields`) and `bad` (lines that are not one
/// JSON object, or that repeat a key).
pub fn json_lines(dir: &Path, log: &str) -> serde_json::Value {
    let file = dir.join("log.jsonl");
    std::fs::write(&file, log).expect("write log");
    let out = run_ok(
        Command::new(python()).arg(peer("json_lines.py")).arg(&file),
        "json_lines.py",
    );
    serde_json::from_slice(&out.stdout).expect("json_lines.py prints JSON")
}

/// A script in the repository's `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    stack::repo().join("tests/peers").join(name)
}

/// Runs `cmd` to completion and returns its output; panics with its stderr unless it succeeded
/// (`what` names it, and says how to install it when it is missing).
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
