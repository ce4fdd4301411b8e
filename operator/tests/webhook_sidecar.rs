//! The proof that injection works end to end: the webhook injects a pod through the real
//! apiserver; this test then does what a kubelet would (files from the ConfigMap and Secrets the
//! sidecar mounts, its command line and env) and runs the real `mailroom-sidecar` binary. Mail sent
//! to it on 127.0.0.1 reaches a TLS+AUTH upstream (aiosmtpd) DKIM-signed, and the signature
//! verifies (dkimpy) against the TXT value the MailDomain publishes.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use common::{
    Env,
    webhook::{OPTED_IN_RESTRICTED, domain, pod, relay, start_injector},
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Container, Pod, Secret},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use mailroom_test_support::testenv;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sidecar/tests/peers");
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const MESSAGE: &str = "From: app@shop.example.com\r\nTo: someone@example.net\r\nSubject: injected\r\n\
                       Message-ID: <1@shop.example.com>\r\n\r\nhello from an injected pod\r\n";

#[tokio::test]
async fn injected_sidecar_relays_mail_dkim_signed_with_the_files_a_kubelet_would_mount() -> Result<()> {
    let sidecar_bin = sidecar_binary()?;
    let tmp = tempfile::tempdir()?;
    let upstream = Upstream::start(tmp.path())?;
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    let md = domain(&env, "shop", &allowed).await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &secret("creds", &[("username", "mailer"), ("password", "s3cret")]),
        )
        .await?;
    secrets
        .create(&pp, &secret("upstream-ca", &[("ca.crt", &upstream.ca_pem)]))
        .await?;
    let listen = free_port()?;
    let spec = format!(
        "domains: [shop]\nlistenPort: {listen}\ndelivery:\n  smarthost: {{host: 127.0.0.1, port: {}, tls: starttls, \
         credentialsSecretRef: {{name: creds}}, caSecretRef: {{name: upstream-ca, key: ca.crt}}}}",
        upstream.port
    );
    relay(&env, &ns, "outbound", &spec, "Reconciled").await?;
    let _injector = start_injector(&env, &[], |_| {}).await?;

    let mut app = pod("app", Some("outbound"), false)?;
    app.spec
        .as_mut()
        .context("spec")?
        .termination_grace_period_seconds = Some(40);
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    pods.create(&pp, &app).await?;
    let stored = pods.get("app").await?;
    let spec = stored.spec.clone().context("spec")?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "mailroom-sidecar")
        .context("sidecar")?;
    let app_env = |k: &str| {
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == k)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(app_env("SMTP_PORT"), Some(listen.to_string()));

    let root = tmp.path().join("pod");
    let env_vars = kubelet_files(&env, &ns, &stored, sidecar, &root).await?;
    assert_eq!(
        env_vars.get("SIDECAR_DRAIN_SECONDS").map(String::as_str),
        Some("35")
    );
    let command = sidecar.command.clone().unwrap_or_default();
    ensure!(command == ["mailroom-sidecar"], "unexpected command {command:?}");
    let mut process = Command::new(&sidecar_bin)
        .args(&command[1..])
        .env_clear()
        .envs(&env_vars)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mailroom-sidecar")?;
    let log = collect(&mut process);
    wait_listening(listen, &mut process, &log)?;

    send(listen)?;
    let eml = upstream.wait_message(&log)?;
    let meta = std::fs::read_to_string(eml.with_extension("json"))?;
    assert!(
        meta.contains("\"tls\": true") && meta.contains("\"authenticated\": true"),
        "{meta}"
    );
    let records = md.status.map(|s| s.dns_records).unwrap_or_default();
    let txt = records
        .iter()
        .find(|r| r.name == "mailroom._domainkey.shop.example.com")
        .context("DKIM record")?;
    let verify = Command::new(testenv::python()?)
        .arg(Path::new(PEERS).join("dkim_verify.py"))
        .arg(&eml)
        .arg(txt.value.concat())
        .output()?;
    assert!(
        verify.status.success(),
        "dkim_verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    Command::new("kill")
        .arg("-TERM")
        .arg(process.id().to_string())
        .status()?;
    let status = process.wait()?;
    assert_eq!(status.code(), Some(0), "log:\n{}", log_text(&log));
    assert!(log_text(&log).contains("drain complete"), "{}", log_text(&log));
    Ok(())
}

/// Writes the files of every volume the sidecar mounts under `root` (mount paths rewritten into
/// `root`, in the env and in the config text) and returns the env to run it with. The admin
/// address moves to a free loopback port: a real pod has its own network namespace.
async fn kubelet_files(
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

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
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
fn sidecar_binary() -> Result<PathBuf> {
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

type Log = std::sync::Arc<std::sync::Mutex<String>>;

fn collect(child: &mut Child) -> Log {
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

fn log_text(log: &Log) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn wait_listening(port: u16, child: &mut Child, log: &Log) -> Result<()> {
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
fn send(port: u16) -> Result<()> {
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
struct Upstream {
    child: Child,
    port: u16,
    maildir: PathBuf,
    ca_pem: String,
}

impl Upstream {
    fn start(dir: &Path) -> Result<Self> {
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
            .args(["--tls", "starttls", "--require-auth", "mailer:s3cret", "--cert"])
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

    fn wait_message(&self, log: &Log) -> Result<PathBuf> {
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
