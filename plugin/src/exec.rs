//! Runs `mailroom-sidecar` inside a pod's container through the apiserver (`pods/exec`), as
//! `kubectl exec` does: the binary is its own queue API client, so this works in the scratch
//! image.

use crate::pods::Target;
use anyhow::{Context, Result};
use futures_util::future::join;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Status};
use kube::{Api, Client, api::AttachParams};
use tokio::io::AsyncReadExt;

/// What one run printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit code (0 on success).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The exec's own failure message (`command terminated with non-zero exit code`, or why the
    /// command could not run).
    pub failure: Option<String>,
}

impl Output {
    /// What went wrong, for a person: the command's stderr, else the exec's message.
    pub fn error(&self) -> String {
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            return stderr.to_owned();
        }
        match &self.failure {
            Some(m) => format!("{m} (exit code {})", self.code),
            None => format!("exit code {} and no message", self.code),
        }
    }
}

/// Runs `mailroom-sidecar <args>` in `target`.
pub async fn sidecar(client: &Client, ns: &str, target: &Target, args: &[String]) -> Result<Output> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let command: Vec<String> = std::iter::once("mailroom-sidecar".to_owned())
        .chain(args.iter().cloned())
        .collect();
    let params = AttachParams::default()
        .container(&target.container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(&target.pod, command, &params)
        .await
        .with_context(|| format!("exec in {}/{} ({})", ns, target.pod, target.container))?;
    let mut stdout = process.stdout().context("no stdout")?;
    let mut stderr = process.stderr().context("no stderr")?;
    let status = process.take_status().context("no exit status")?;
    let (mut out, mut err) = (String::new(), String::new());
    let (a, b) = join(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err)).await;
    a?;
    b?;
    let status = status.await;
    process.join().await.ok();
    Ok(Output {
        code: exit_code(status.as_ref()),
        failure: status.as_ref().and_then(|s| s.message.clone()),
        stdout: out,
        stderr: err,
    })
}

/// The exit code in an exec's final status (`Success`, or `NonZeroExitCode` with an `ExitCode`
/// cause).
fn exit_code(status: Option<&Status>) -> i32 {
    let Some(status) = status else { return -1 };
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message.as_deref()?.parse().ok())
        })
        .unwrap_or(-1)
}
