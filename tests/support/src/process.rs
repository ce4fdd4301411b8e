//! One control-plane process (etcd, kube-apiserver, kube-controller-manager): started with its output
//! in `logs/<name>.log`, stopped by PID (SIGKILL, then reaped) when dropped.

use std::{
    fmt,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result};

/// A running child process and where its log goes.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Child,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
}

// === impl Proc ===

impl Proc {
    /// Starts `program args...` with stdin closed and stdout+stderr appended to `logs/<name>.log`.
    pub(crate) fn spawn(name: &'static str, program: &Path, args: &[String], logs: &Path) -> Result<Self> {
        let log = logs.join(format!("{name}.log"));
        File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = start(program, args, &log)?;
        Ok(Self {
            name,
            child,
            log,
            program: program.to_owned(),
            args: args.to_vec(),
        })
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        self.stop();
    }

    /// Starts the process again with the same arguments (after [`Proc::kill`], or killing it now),
    /// appending to the same log.
    pub(crate) fn respawn(&mut self) -> Result<()> {
        self.stop();
        self.child = start(&self.program, &self.args, &self.log)?;
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last `n` lines of the process log, for error messages.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- last {n} lines of {} ---\n{tail}", self.log.display())
    }

    /// Kills the process (if still running) and reaps it.
    pub(crate) fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Throwaway state: there is nothing a graceful shutdown would save.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = fs::OpenOptions::new()
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir(log.parent().unwrap_or(Path::new(".")))
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}
