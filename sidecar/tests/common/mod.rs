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

/// A script in the repository's `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/peers")
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
    test_ca_for(dir, "IP:127.0.0.1,DNS:localhost")
}

/// As [`test_ca`], with the server certificate's subjectAltName set to `san`
/// (`DNS:mx.example.test,...`).
pub fn test_ca_for(dir: &Path, san: &str) -> TestCa {
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
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
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

impl TestCa {
    /// The server certificate followed by the CA certificate, as a server presents them when
    /// DANE-TA needs the trust anchor in the chain (RFC 7671 5.2.2).
    pub fn chain(&self) -> PathBuf {
        let path = self.cert.with_file_name("chain.pem");
        let mut pem = std::fs::read(&self.cert).expect("server cert");
        pem.extend(std::fs::read(&self.ca).expect("ca cert"));
        std::fs::write(&path, pem).expect("chain file");
        path
    }
}

/// The TLSA `x 1 1` association data of a PEM certificate: SHA-256 of its SubjectPublicKeyInfo
/// in hex, computed by the openssl CLI (independent of the sidecar's own DER parsing).
pub fn spki_sha256(cert: &Path) -> String {
    let dir = cert.parent().expect("cert dir");
    let name = cert
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    openssl(
        dir,
        &[
            "x509",
            "-in",
            &name,
            "-noout",
            "-pubkey",
            "-out",
            &format!("{name}.pub"),
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-outform",
            "DER",
            "-out",
            &format!("{name}.spki"),
        ],
    );
    let out = openssl(dir, &["dgst", "-sha256", "-r", &format!("{name}.spki")]);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// `tests/peers/dnsserver.py` serving a zone file on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct DnsServer {
    child: Child,
    /// The UDP and TCP port.
    pub port: u16,
    zone: PathBuf,
    /// With `--dnssec`: the DNSKEY trust anchor file the server wrote.
    pub anchor: Option<PathBuf>,
}

impl DnsServer {
    /// Serves `zone` (master-file text) unsigned.
    pub fn start(dir: &Path, zone: &str) -> Self {
        Self::spawn(dir, zone, false)
    }

    /// Serves `zone` as a DNSSEC-signed root zone with a key made for this run; its DNSKEY is
    /// in [`DnsServer::anchor`].
    pub fn start_signed(dir: &Path, zone: &str) -> Self {
        Self::spawn(dir, zone, true)
    }

    fn spawn(dir: &Path, zone: &str, signed: bool) -> Self {
        let path = dir.join("zone.txt");
        std::fs::write(&path, zone).expect("zone file");
        let script = peer("dnsserver.py");
        let anchor = signed.then(|| dir.join("trust-anchor.txt"));
        let mut cmd = Command::new(python());
        cmd.arg(script).arg(&path);
        if let Some(a) = &anchor {
            cmd.arg("--dnssec").arg(a);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dnsserver.py with MAILROOM_PYTHON");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let port = line.trim().parse().expect("dnsserver.py prints its port");
        Self {
            child,
            port,
            zone: path,
            anchor,
        }
    }

    /// Replaces the zone; the server re-reads it on the next query (mtime changes).
    pub fn publish(&self, zone: &str) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&self.zone, zone).expect("zone file");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/peers/policy_server.py`: HTTPS MTA-STS policy host on `address`; killed on drop.
#[derive(Debug)]
pub struct PolicyServer {
    child: Child,
    /// The HTTPS port.
    pub port: u16,
    dir: PathBuf,
}

impl PolicyServer {
    /// Serves `<dir>/<host>.txt` for each policy host, with `ca`'s certificate chain.
    pub fn start(dir: &Path, address: &str, ca: &TestCa) -> Self {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("policy dir");
        let mut child = Command::new(python())
            .arg(peer("policy_server.py"))
            .args(["--address", address, "--cert"])
            .arg(ca.chain())
            .arg("--key")
            .arg(&ca.key)
            .arg("--dir")
            .arg(&policies)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start policy_server.py with MAILROOM_PYTHON");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let port = line.trim().parse().expect("policy_server.py prints its port");
        Self {
            child,
            port,
            dir: policies,
        }
    }

    /// Publishes `policy` for `mta-sts.<domain>`.
    pub fn publish(&self, domain: &str, policy: &str) {
        std::fs::write(self.dir.join(format!("mta-sts.{domain}.txt")), policy).expect("policy");
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
