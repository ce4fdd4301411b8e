//! The real `mailroom-operator` binary as a child process (cluster-admin kubeconfig, leader
//! election on a short Lease), for tests that crash, signal or race it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use crate::{
    ControlPlane,
    stack::{find_in_log, listening_addr},
};
use anyhow::{Context as _, Result};

/// One operator process; killed (SIGKILL) when dropped.
pub struct OperatorProcess {
    /// The process.
    pub child: Child,
    /// Its `OPERATOR_IDENTITY` (Lease holder name).
    pub identity: &'static str,
    /// Its log, and where this process's part of it starts (the log is appended across restarts).
    log: (PathBuf, u64),
    /// Its admin address (port 0, read from its `admin server listening` line on first use).
    admin: OnceLock<SocketAddr>,
}

impl OperatorProcess {
    /// Starts the operator watching the whole cluster, its Lease in `ns`, logging to
    /// `<control plane logs>/operator-<identity>.log` (appended across restarts).
    pub fn spawn(cp: &ControlPlane, ns: &str, identity: &'static str) -> Result<Self> {
        Self::spawn_with_env(cp, ns, identity, &[])
    }

    /// [`OperatorProcess::spawn`] with more environment variables (e.g. `OPERATOR_LOG_FORMAT`).
    pub fn spawn_with_env(
        cp: &ControlPlane,
        ns: &str,
        identity: &'static str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let path = cp.logs_dir().join(format!("operator-{identity}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let from = log.metadata()?.len();
        let child = Command::new(crate::stack::built_bin(
            "mailroom-operator",
            "cargo test -p mailroom-operator",
        ))
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("OPERATOR_NAMESPACE", ns)
        .env("OPERATOR_IDENTITY", identity)
        .env("OPERATOR_LEASE_DURATION_SECONDS", "3")
        .env("OPERATOR_ADMIN_ADDR", "127.0.0.1:0")
        // Every replica serves the webhook, leader or not; two on one host need two ports.
        .env("OPERATOR_WEBHOOK_ADDR", "127.0.0.1:0")
        .env("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")
        // `MAILROOM_OPERATOR_LOG` raises the level when a test needs the client's view.
        .env(
            "RUST_LOG",
            std::env::var("MAILROOM_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
        Ok(Self {
            child,
            identity,
            log: (path, from),
            admin: OnceLock::new(),
        })
    }

    /// The admin address it bound, from its log (an error until it logged it).
    fn admin(&self) -> Result<SocketAddr> {
        if let Some(addr) = self.admin.get() {
            return Ok(*addr);
        }
        let (log, from) = &self.log;
        let addr = find_in_log(log, *from, |l| listening_addr(l, "admin server listening"))?
            .with_context(|| format!("operator {} has not logged its admin address yet", self.identity))?;
        Ok(*self.admin.get_or_init(|| addr))
    }

    /// Reconciles this process has run, from its /metrics.
    pub fn reconciles(&self) -> Result<u64> {
        let mut stream = TcpStream::connect(self.admin()?)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("mailroom_operator_reconcile_runs_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// What this process has logged so far.
    pub fn log_text(&self) -> Result<String> {
        let (path, from) = &self.log;
        let all = std::fs::read(path)?;
        let from = usize::try_from(*from).unwrap_or(usize::MAX).min(all.len());
        Ok(String::from_utf8_lossy(&all[from..]).into_owned())
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait(&mut self) -> Result<Option<i32>> {
        Ok(self.child.wait()?.code())
    }

    /// Sends `signal` (e.g. `-TERM`) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    /// SIGKILL, as an OOM kill or node loss would, and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for OperatorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorProcess").finish_non_exhaustive()
    }
}
