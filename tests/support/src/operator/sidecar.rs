//! A real `mailroom-sidecar` process fed the files a kubelet would mount from a Relay's rendered
//! ConfigMap and DKIM Secret, with capture delivery, and a client we did not write (smtplib).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{stack, testenv};
use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

/// A running sidecar; killed on drop.
pub struct Sidecar {
    child: Child,
    /// SMTP port on 127.0.0.1.
    pub port: u16,
    root: PathBuf,
}

/// `target/debug/mailroom-sidecar` next to this test binary's `deps/` directory.
fn binary() -> Result<PathBuf> {
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

/// Writes `path` the way the kubelet updates a volume: whole, then renamed into place.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Mirrors ConfigMap `<relay>-sidecar` and Secret `<relay>-dkim` under `root` (pod paths prefixed
/// with `root`), removing key files the Secret no longer has.
pub async fn mount(client: &Client, ns: &str, relay: &str, root: &Path) -> Result<()> {
    let dkim_dir = root.join("etc/mailroom/dkim");
    std::fs::create_dir_all(&dkim_dir)?;
    std::fs::create_dir_all(root.join("config"))?;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{relay}-dkim"))
        .await?;
    let data = secret.data.unwrap_or_default();
    for entry in std::fs::read_dir(&dkim_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !data.contains_key(name) {
            std::fs::remove_file(&path)?;
        }
    }
    for (k, v) in &data {
        replace(&dkim_dir.join(k), &v.0)?;
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{relay}-sidecar"))
        .await?;
    let text = cm
        .data
        .and_then(|d| d.get("sidecar.yaml").cloned())
        .context("sidecar.yaml")?;
    let prefix = root.display().to_string();
    let text = text
        .replace("/etc/mailroom/", &format!("{prefix}/etc/mailroom/"))
        .replace("/var/", &format!("{prefix}/var/"));
    replace(&root.join("config/sidecar.yaml"), text.as_bytes())
}

impl Sidecar {
    /// Starts the sidecar on the files [`mount`] wrote under `root`, rereading its config every
    /// second, on loopback port 0 (SMTP and admin; it reports the ports it got in its log,
    /// `<root>/sidecar.log`).
    pub fn start(root: &Path) -> Result<Self> {
        let log = root.join("sidecar.log");
        let mut child = Command::new(binary()?)
            .env_clear()
            .env("SIDECAR_CONFIG_PATH", root.join("config/sidecar.yaml"))
            .env("SIDECAR_LISTEN_ADDR", "127.0.0.1:0")
            .env("SIDECAR_ADMIN_ADDR", "127.0.0.1:0")
            .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
            .env("SIDECAR_RELOAD_INTERVAL_SECONDS", "1")
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting mailroom-sidecar")?;
        let alive = |child: &mut Child| -> Result<()> {
            match child.try_wait()? {
                Some(status) => anyhow::bail!("mailroom-sidecar exited ({status})"),
                None => Ok(()),
            }
        };
        let listening = stack::wait_log(
            "mailroom-sidecar to listen",
            &log,
            0,
            || alive(&mut child),
            stack::sidecar_listening,
        );
        let (smtp, _admin) = match listening {
            Ok(addrs) => addrs,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            child,
            port: smtp.port(),
            root: root.to_path_buf(),
        })
    }

    /// Sends one message from `from` with smtplib and returns the captured file (with the
    /// signature the sidecar added).
    pub fn send(&self, from: &str, subject: &str) -> Result<PathBuf> {
        let before = self.captured()?;
        let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let message = format!(
            "From: {from}\r\nTo: someone@example.net\r\nSubject: {subject}\r\n\
             Message-ID: <{subject}@{domain}>\r\n\r\nhello\r\n"
        );
        let script = "import smtplib, sys\n\
                      with smtplib.SMTP('127.0.0.1', int(sys.argv[1])) as s:\n\
                      \x20   s.sendmail(sys.argv[2], ['someone@example.net'], sys.stdin.buffer.read())\n";
        let mut child = Command::new(testenv::python()?)
            .args(["-c", script, &self.port.to_string(), from])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, message.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "smtplib: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..600 {
            if let Some(new) = self.captured()?.into_iter().find(|p| !before.contains(p)) {
                return Ok(new);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("the sidecar captured nothing for {subject}")
    }

    fn captured(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("var/lib/mailroom/capture");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "eml") {
                out.push(p);
            }
        }
        Ok(out)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `s=` tag of the first DKIM-Signature in a captured message.
pub fn signing_selector(eml: &Path) -> Result<String> {
    let text = std::fs::read_to_string(eml)?;
    let header = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ");
    let sig = header
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .context("no DKIM-Signature")?;
    sig.split(';')
        .filter_map(|t| t.trim().split_once('='))
        .find(|(k, _)| k.trim() == "s")
        .map(|(_, v)| v.trim().to_string())
        .context("no s= tag")
}

/// `tests/peers/dkim_verify.py` (dkimpy) verifies the captured message against `txt`.
pub fn dkim_verifies(eml: &Path, txt: &str) -> Result<()> {
    let script = crate::stack::repo().join("tests/peers/dkim_verify.py");
    let out = Command::new(testenv::python()?)
        .arg(script)
        .arg(eml)
        .arg(txt)
        .output()?;
    ensure!(
        out.status.success(),
        "dkim_verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar").finish_non_exhaustive()
    }
}
