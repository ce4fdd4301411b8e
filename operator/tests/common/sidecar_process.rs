//! The real `mailroom-sidecar` binary run as a kubelet would run an injected sidecar (files from
//! the ConfigMap and Secrets it mounts, its env), an SMTP upstream with STARTTLS and AUTH
//! (aiosmtpd), and a client (Python's smtplib): the pieces of the tests that send real mail.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::Env;
use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Container, Pod, Secret},
};
use kube::{Api, api::ObjectMeta};
use mailroom_test_support::testenv;

/// The sidecar's test peers (upstream.py, dkim_verify.py).
pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sidecar/tests/peers");
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The message [`send`] sends: from app@shop.example.com.
pub const MESSAGE: &str = "From: app@shop.example.com\r\nTo: someone@example.net\r\nSubject: injected\r\n\
                           Message-ID: <1@shop.example.com>\r\n\r\nhello from an injected pod\r\n";

/// Writes the files of every volume the sidecar mounts under `root` (mount paths rewritten into
/// `root`, in the env and in the config text) and returns the env to run it with. The admin
/// address moves to a free loopback port: a real pod has its own network namespace.
pub async fn kubelet_files(
    env: &Env,
    ns: &str,
    pod: &Pod,
    c: &Container,
    root: &Path,
) -> Result<BTreeMap<String, String>> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts: Vec<String> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let rewrite = |text: &str| {
        mounts.iter().fold(text.to_string(), |t, m| {
            t.replace(m.as_str(), &format!("{}{m}", root.display()))
        })
    };
    for m in c.volume_mounts.iter().flatten() {
        if m.mount_path == SERVICE_ACCOUNT_MOUNT {
            // Added to every container by the ServiceAccount admission plugin; the sidecar never reads it.
            continue;
        }
        let dir = PathBuf::from(format!("{}{}", root.display(), m.mount_path));
        std::fs::create_dir_all(&dir)?;
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .context("volume of a mount")?;
        if let Some(cm) = &v.config_map {
            let cm = Api::<ConfigMap>::namespaced(env.admin.clone(), ns)
                .get(&cm.name)
                .await?;
            for (k, text) in cm.data.unwrap_or_default() {
                std::fs::write(dir.join(k), rewrite(&text))?;
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().context("secret name")?;
            let secret = Api::<Secret>::namespaced(env.admin.clone(), ns)
                .get(&name)
                .await?;
            for (k, bytes) in secret.data.unwrap_or_default() {
                std::fs::write(dir.join(k), bytes.0)?;
            }
        } else if v.empty_dir.is_none() {
            bail!("volume {} is of a kind this test does not materialize", v.name);
        }
    }
    let mut vars = BTreeMap::new();
    for e in c.env.iter().flatten() {
        vars.insert(e.name.clone(), rewrite(e.value.as_deref().unwrap_or_default()));
    }
    vars.insert("SIDECAR_ADMIN_ADDR".into(), format!("127.0.0.1:{}", free_port()?));
    Ok(vars)
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `target/debug/mailroom-sidecar` next to this test binary's `deps/` directory.
pub fn sidecar_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("target directory")?;
    let bin = dir.join("mailroom-sidecar");
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p mailroom-sidecar` (make test does)",
        bin.display()
    );
    Ok(bin)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub type Log = std::sync::Arc<std::sync::Mutex<String>>;

pub fn collect(child: &mut Child) -> Log {
    let log = Log::default();
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    log
}

pub fn log_text(log: &Log) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub fn wait_listening(port: u16, child: &mut Child, log: &Log) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("mailroom-sidecar exited ({status}):\n{}", log_text(log));
        }
        ensure!(
            Instant::now() < deadline,
            "sidecar not listening:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sends [`MESSAGE`] with Python's smtplib (a client we did not write).
pub fn send(port: u16) -> Result<()> {
    let script = "import smtplib, sys\n\
                  with smtplib.SMTP('127.0.0.1', int(sys.argv[1])) as s:\n\
                  \x20   s.sendmail('app@shop.example.com', ['someone@example.net'], sys.stdin.buffer.read())\n";
    let mut child = Command::new(testenv::python()?)
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, MESSAGE.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `sidecar/tests/peers/upstream.py` with STARTTLS (a certificate for 127.0.0.1 from a test CA)
/// and AUTH required.
pub struct Upstream {
    child: Child,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Where received messages land (`0001.eml` + `.json`).
    pub maildir: PathBuf,
    /// The test CA that signed its certificate (PEM).
    pub ca_pem: String,
}

impl Upstream {
    /// Starts it; `auth` is `user:password`.
    pub fn start(dir: &Path, auth: &str) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
        std::fs::write(dir.join("up.crt"), cert.pem())?;
        std::fs::write(dir.join("up.key"), key.serialize_pem())?;
        let maildir = dir.join("maildir");
        let mut child = Command::new(testenv::python()?)
            .arg(Path::new(PEERS).join("upstream.py"))
            .args(["--tls", "starttls", "--require-auth", auth, "--cert"])
            .arg(dir.join("up.crt"))
            .arg("--key")
            .arg(dir.join("up.key"))
            .arg("--maildir")
            .arg(&maildir)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting upstream.py")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("upstream.py printed {line:?}"))?;
        Ok(Self {
            child,
            port,
            maildir,
            ca_pem: ca.pem(),
        })
    }

    /// Waits for the first message and checks that it is DKIM-signed for shop.example.com.
    pub fn wait_message(&self, log: &Log) -> Result<PathBuf> {
        let eml = self.maildir.join("0001.eml");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !eml.is_file() {
            ensure!(
                Instant::now() < deadline,
                "nothing delivered; sidecar log:\n{}",
                log_text(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut text = String::new();
        std::fs::File::open(&eml)?.read_to_string(&mut text)?;
        ensure!(
            text.contains("DKIM-Signature:") && text.contains("d=shop.example.com"),
            "unsigned:\n{text}"
        );
        Ok(eml)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
