//! One node scenario's cluster: the mission's control plane, chart and operator (the webhook
//! injecting our sidecar image), a real node, a published MailDomain, a STARTTLS+AUTH smarthost
//! on the node's gateway, and helpers to run and watch the app pod.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use mailroom_test_support::{
    admission::{SIDECAR, create_injected},
    image,
    node::Node,
    peers::Upstream,
    ports::Reservation,
};
use serde_json::{Value, json};

use crate::common::mission::Mission;

/// The app: sends one message through `$SMTP_HOST:$SMTP_PORT` at start with busybox `nc`
/// (no retry: the sidecar must already listen), logs it, then waits; on TERM it logs and exits.
const APP_SMTP: &str = r#"
say() { printf '%s\r\n' "$1"; }
expect() {
  while IFS= read -r l; do
    l=$(printf '%s' "$l" | tr -d '\r'); echo "S: $l" >&2
    case "$l" in [0-9][0-9][0-9]-*) continue ;; "$1"*) return 0 ;; *) exit 1 ;; esac
  done
  exit 1
}
expect 220; say "EHLO app"; expect 250
say "MAIL FROM:<app@example.com>"; expect 250
say "RCPT TO:<someone@example.net>"; expect 250
say DATA; expect 354
say "From: app@example.com"; say "To: someone@example.net"; say "Subject: from a pod"
say ""; say "sent by $(id -u) from a real pod"; say "."; expect 250
say QUIT; expect 221
"#;

/// A cluster with mailroom installed, a node, and the scenario's smarthost.
pub struct Scene {
    pub m: Mission,
    pub node: Node,
    pub upstream: Upstream,
    pub pods: Api<Pod>,
    /// A port on the gateway held for the scene, where nothing listens (see `closed_port`).
    closed: Reservation,
}

// === impl Scene ===

impl Scene {
    /// Everything up to a Ready, published MailDomain and the smarthost's Secrets; the Relay is
    /// the scenario's (see [`Scene::relay`]).
    pub async fn start() -> Result<Self> {
        Self::start_on(mailroom_test_support::Options::default()).await
    }

    /// `start` on a control plane started with `options` (a scheduler and workload controllers,
    /// for the hub's StatefulSet).
    pub async fn start_on(options: mailroom_test_support::Options) -> Result<Self> {
        let (repository, tag) = image::SIDECAR.rsplit_once(':').context("image tag")?;
        let images =
            format!("sidecar.image.registry=,sidecar.image.repository={repository},sidecar.image.tag={tag}");
        let m = Mission::start_on(options, &[&images]).await?;
        let node = Node::start(m.control_plane(), &Node::images()?).await?;
        let gateway = node.gateway().to_string();
        let closed = Reservation::on(IpAddr::V4(node.gateway()))?;
        let upstream = Upstream::starttls_with_auth_at(m.dir(), &gateway, "mailer", "s3cret")?;
        m.apply(&m.mail_domain("")).await?;
        let domain = m.wait_condition("MailDomain", "example-com", "Ready").await?;
        m.publish_dns_records(&domain)?;
        m.smarthost_secrets(&upstream, "mailer", "s3cret").await?;
        m.opt_in_namespace().await?;
        let pods = Api::namespaced(m.client.clone(), &m.app_ns);
        Ok(Self {
            m,
            node,
            upstream,
            pods,
            closed,
        })
    }

    /// A port on the gateway where nothing listens, for as long as the scene lives: a smarthost
    /// that is down.
    pub fn closed_port(&self) -> Result<u16> {
        Ok(self.closed.port())
    }

    /// Applies Relay `outbound` (listening on port 25 in the pod) to the smarthost at
    /// `gateway:port`, retrying every second, and waits until it is Ready.
    pub async fn relay(&self, port: u16) -> Result<()> {
        self.relay_with(port, "").await
    }

    /// `relay` with more `spec` lines `extra` (indented two spaces).
    pub async fn relay_with(&self, port: u16, extra: &str) -> Result<()> {
        self.m
            .apply(&format!(
                "apiVersion: mailroom.dev/v1alpha1
kind: Relay
metadata: {{name: outbound, namespace: {ns}}}
spec:
  domains: [example-com]
  listenPort: 25
  retry: {{initialSeconds: 1, maxSeconds: 2}}
  delivery:
    smarthost:
      host: {gateway}
      port: {port}
      tls: starttls
      credentialsSecretRef: {{name: smarthost-credentials}}
      caSecretRef: {{name: smarthost-ca, key: ca.crt}}
{extra}",
                ns = self.m.app_ns,
                gateway = self.node.gateway(),
            ))
            .await?;
        self.m.wait_condition("Relay", "outbound", "Ready").await?;
        Ok(())
    }

    /// Creates the app pod `name` (through the webhook) with `grace` seconds to stop, and waits
    /// until its app container runs; the pod as JSON.
    pub async fn run_app(&self, name: &str, grace: u32) -> Result<Value> {
        self.run_app_with(name, grace, &app_command()).await
    }

    /// `run_app` with the app container running `command` (`sh -c`).
    pub async fn run_app_with(&self, name: &str, grace: u32, command: &str) -> Result<Value> {
        self.run_pod(app_pod(name, self.node.name(), grace, command)?)
            .await
    }

    /// `run_app` with `annotations` on the pod.
    pub async fn run_app_annotated(
        &self,
        name: &str,
        grace: u32,
        annotations: &[(&str, &str)],
    ) -> Result<Value> {
        let mut pod = app_pod(name, self.node.name(), grace, &app_command())?;
        for (k, v) in annotations {
            kube::ResourceExt::annotations_mut(&mut pod).insert((*k).into(), (*v).into());
        }
        self.run_pod(pod).await
    }

    /// Creates `pod` through the webhook and waits until its app container runs.
    async fn run_pod(&self, pod: Pod) -> Result<Value> {
        let name = kube::ResourceExt::name_any(&pod);
        create_injected(&self.pods, &pod, Duration::from_secs(60)).await?;
        self.wait_pod(&name, Duration::from_secs(120), |p| {
            container(p, "app")["state"]["running"].is_object()
        })
        .await
    }

    /// Polls pod `name` until `done` holds; fails with its status and the kubelet's log, or at
    /// once if the pod was evicted.
    pub async fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(pod) = self.pods.get_opt(name).await? {
                last = serde_json::to_value(&pod)?;
                if done(&last) {
                    return Ok(last);
                }
                // An eviction is final for the pod, so waiting on is only slower to report it.
                if last["status"]["reason"] == "Evicted" {
                    bail!(
                        "pod {name} was evicted: {}",
                        last["status"]["message"].as_str().unwrap_or("no message")
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name} not as expected after {timeout:?}; status: {:#}\n{}",
                    last["status"],
                    self.node.kubelet_log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the sidecar of pod `name` has logged a line containing `text` (over all
    /// its restarts: `times` such lines).
    pub async fn wait_sidecar_log(
        &self,
        name: &str,
        text: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<String> {
        self.node
            .wait_log((&self.m.app_ns, name, SIDECAR), text, times, timeout)
            .await
    }

    /// Deletes pod `name` and watches it go; the kubelet removes the logs with the pod, so the
    /// first log line containing each of `marks` (container, text) is recorded on the way, with
    /// its time. Fails if the pod is not gone in 60 s.
    pub async fn delete_watching(
        &self,
        name: &str,
        marks: &[(&str, &str)],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.pods.delete(name, &DeleteParams::default()).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen: Vec<Option<(String, String)>> = vec![None; marks.len()];
        while self.pods.get_opt(name).await?.is_some() {
            ensure!(
                Instant::now() < deadline,
                "pod {name} still there 60 s after delete\n{}",
                self.node.kubelet_log_tail(40)
            );
            for ((container, text), slot) in marks.iter().zip(seen.iter_mut()) {
                if slot.is_none() {
                    *slot = self.node.log_line(&self.m.app_ns, name, container, text);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(seen)
    }

    /// The messages the smarthost saved, after waiting until there are at least `n`.
    pub async fn wait_messages(&mut self, n: usize, timeout: Duration) -> Result<Vec<std::path::PathBuf>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.upstream.proc.check_running()?;
            let messages = self.upstream.messages()?;
            if messages.len() >= n {
                return Ok(messages);
            }
            ensure!(
                Instant::now() < deadline,
                "{} of {n} messages at the smarthost after {timeout:?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The app container's command: [`APP_SMTP`] through `nc`, then wait for TERM.
pub fn app_command() -> String {
    app_command_for(APP_SMTP)
}

/// The app: `count` messages (Subject `hub-<n>`) over one SMTP session, each acknowledged before
/// the next (busybox `nc` and `sh`), then wait for TERM.
pub fn bulk_app_command(count: usize) -> String {
    let head = APP_SMTP.split("say \"MAIL FROM").next().unwrap_or_default();
    let script = format!(
        "{head}i=0
while [ $i -lt {count} ]; do
say \"MAIL FROM:<app@example.com>\"; expect 250
say \"RCPT TO:<someone@example.net>\"; expect 250
say DATA; expect 354
say \"From: app@example.com\"; say \"To: someone@example.net\"; say \"Subject: hub-$i\"
say \"\"; say \"message $i from a pod that goes away\"; say \".\"; expect 250
i=$((i+1))
done
say QUIT; expect 221
"
    );
    app_command_for(&script)
}

fn app_command_for(script: &str) -> String {
    format!(
        "echo \"app: start uid=$(id -u)\"\n\
         if nc \"$SMTP_HOST\" \"$SMTP_PORT\" -e sh -c '{}'; then echo 'app: sent'; else echo 'app: send failed'; fi\n\
         trap 'echo \"app: TERM\"; exit 0' TERM\n\
         while true; do sleep 1 & wait $!; done",
        script.replace('\'', "'\\''")
    )
}

/// The app pod asking for Relay `outbound`, bound to `node`, within PodSecurity `restricted`.
fn app_pod(name: &str, node: &str, grace: u32, command: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "shop", "mailroom.dev/relay": "outbound"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": image::APP,
                "command": ["sh", "-c", command],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        }
    }))?)
}

/// The status of container `name` (init or app) of `pod`, `Null` if none yet.
pub fn container(pod: &Value, name: &str) -> Value {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .unwrap_or(Value::Null)
}
