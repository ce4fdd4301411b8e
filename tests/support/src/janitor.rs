//! The janitor: a small `sh` child that stops a control plane's processes by PID and removes its
//! directory when the test process ends, however it ends (return, panic, abort, SIGKILL).
//!
//! Statics are never dropped, so the shared control plane cannot clean up in `Drop`. Instead the janitor
//! reads PIDs from a pipe whose only writer is the test process; end-of-file means the test process is
//! gone (or the owner dropped it), and the janitor then kills what is left and deletes the directory,
//! keeping `logs/` if a test failed (`.keep-logs` exists).

use std::{
    io::Write,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context, Result};

/// Marker file: keep `logs/` (and the kubeconfig) when cleaning up.
pub(crate) const KEEP_LOGS: &str = ".keep-logs";

// Signals are ignored so that Ctrl-C or a `kill` of the process group cannot stop the janitor before
// it has cleaned up; it exits on its own once stdin closes. A PID is only killed while its command
// line still names our directory, so a PID reused by an unrelated process is left alone.
const SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
dir=$1
pids=
while read -r pid; do pids="$pids $pid"; done
ours() { grep -qaF -- "$dir" "/proc/$1/cmdline" 2>/dev/null; }
for pid in $pids; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
i=0
while [ "$i" -lt 50 ]; do
    alive=
    for pid in $pids; do ours "$pid" && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.1
    i=$((i + 1))
done
if [ -e "$dir/.keep-logs" ]; then
    for f in "$dir"/* "$dir"/.[!.]*; do
        case "${f##*/}" in logs | kubeconfig | .keep-logs) ;; *) rm -rf -- "$f" ;; esac
    done
    echo "mailroom-test-support: a test failed; control plane logs kept in $dir/logs" >&2
else
    rm -rf -- "$dir"
fi
"#;

/// Handle on the janitor process; dropping the handle (or the test process exiting) starts the cleanup.
#[derive(Debug)]
pub(crate) struct Janitor {
    child: Child,
    pids: Option<ChildStdin>,
}

// === impl Janitor ===

impl Janitor {
    /// Starts a janitor responsible for `dir`.
    pub(crate) fn spawn(dir: &Path) -> Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("mailroom-janitor")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .current_dir("/")
            .spawn()
            .context("starting the cleanup janitor (sh)")?;
        let pids = child.stdin.take();
        Ok(Self { child, pids })
    }

    /// Tells the janitor to kill `pid` when cleaning up.
    pub(crate) fn watch(&mut self, pid: u32) -> Result<()> {
        let pipe = self.pids.as_mut().context("janitor already finished")?;
        writeln!(pipe, "{pid}").context("telling the janitor a PID")?;
        pipe.flush()?;
        Ok(())
    }

    /// Closes the pipe and waits for the cleanup to finish.
    pub(crate) fn finish(&mut self) {
        drop(self.pids.take());
        let _ = self.child.wait();
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.finish();
    }
}
