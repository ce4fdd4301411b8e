//! Shared harness for the sidecar's integration tests: the Python interpreter for test peers,
//! a test CA made with the openssl CLI, and the scripted upstream SMTP server as a child process.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// The interpreter of the venv that `make test` prepares (aiosmtpd, dkimpy, pynacl, ...).
pub fn python() -> PathBuf {
    match std::env::var_os("MAILROOM_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("set MAILROOM_PYTHON (make test prepares it)"),
    }
}

/// A script in `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// Runs `openssl` with `args` in `dir`; fails the test with a clear message if it is missing.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the openssl CLI (install openssl; make test needs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and a server certificate for 127.0.0.1 and localhost, signed by it.
#[derive(Debug)]
pub struct TestCa {
    /// CA certificate (PEM): what the sidecar trusts.
    pub ca: PathBuf,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
}

/// Makes a fresh CA and server certificate in `dir` (EC P-256 keys: fast to generate).
pub fn test_ca(dir: &Path) -> TestCa {
    std::fs::create_dir_all(dir).expect("ca dir");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=mailroom test CA",
        "-keyout",
        "ca.key",
    ];
    ca.extend(ec);
    ca.extend(["-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// `tests/peers/upstream.py` running as a child; killed on drop.
#[derive(Debug)]
pub struct Upstream {
    child: Child,
    /// The port it bound on 127.0.0.1.
    pub port: u16,
    /// Where it saves transactions.
    pub maildir: PathBuf,
    log: PathBuf,
}

/// One saved transaction: upstream's JSON record and the message bytes it received.
#[derive(Debug)]
pub struct Received {
    /// `mail_from`, `mail_options`, `rcpt_tos`, `connection`, `tls`, `authenticated`.
    pub meta: serde_json::Value,
    /// The message after dot-unstuffing.
    pub data: Vec<u8>,
}

impl Upstream {
    /// Starts upstream.py with `args` (plus `--maildir`) and waits for its port.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let maildir = dir.join(format!("upstream-{n}/maildir"));
        let log = dir.join(format!("upstream-{n}/upstream.log"));
        std::fs::create_dir_all(&maildir).expect("maildir");
        let mut child = Command::new(python())
            .arg(peer("upstream.py"))
            .args(args)
            .arg("--maildir")
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start upstream.py with MAILROOM_PYTHON");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "upstream.py did not print its port: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Self {
            child,
            port,
            maildir,
            log,
        }
    }

    /// Every transaction received so far, in order.
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

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u32 {
        std::fs::read_to_string(self.maildir.join("connections"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// upstream.py's stderr so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
