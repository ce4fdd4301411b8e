//! The end-to-end proofs on a real node: pods from our images, run by a real kubelet on
//! containerd, inside a sandbox with its own network namespace (`node::isolation`).
//!
//! `cargo test` runs one ordinary test here, [`node_scenarios_pass_in_a_sandbox_and_leave_the_host_untouched`]:
//! it builds the images from the Dockerfiles' recipe, runs this same test binary inside the
//! sandbox with `--ignored` (the scenarios below, which refuse to run anywhere else), and checks
//! that the host's interfaces, routes, iptables rules, sysctls and cgroups are as before.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use common::mission::Mission;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use mailroom_test_support::{
    image,
    node::{self, Node},
    peers::{self, Upstream},
    stack, testenv,
};
use serde_json::Value;

/// The MailDomain of the scenarios (Ed25519: fast to generate in a debug build).
const MAIL_DOMAIN: &str = "apiVersion: mailroom.dev/v1alpha1
kind: MailDomain
metadata: {name: example-com}
spec:
  domain: example.com
  dkim: {algorithm: ed25519}
  allowedNamespaces: {names: [APP_NS]}";

/// The app: sends one message through `$SMTP_HOST:$SMTP_PORT` at start with busybox `nc`
/// (no retry: the sidecar must already listen), logs it, then waits; on TERM it logs and exits.
const APP_SCRIPT: &str = r#"
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

/// The app container's command: the dialogue above, then wait for TERM.
fn app_command() -> String {
    format!(
        "echo \"app: start uid=$(id -u)\"\n\
         if nc \"$SMTP_HOST\" \"$SMTP_PORT\" -e sh -c '{}'; then echo 'app: sent'; else echo 'app: send failed'; fi\n\
         trap 'echo \"app: TERM\"; exit 0' TERM\n\
         while true; do sleep 1 & wait $!; done",
        APP_SCRIPT.replace('\'', "'\\''")
    )
}

/// Builds our binaries and the images, then runs every scenario below inside the sandbox, and
/// fails if the host's network or kernel settings differ afterwards.
#[test]
fn node_scenarios_pass_in_a_sandbox_and_leave_the_host_untouched() -> Result<()> {
    let bin = stack::build_binaries()?;
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.is_file(),
        "/bin/busybox missing: run `make testenv` (installs Debian's busybox-static)"
    );
    let images = tempfile::tempdir()?;
    let t0 = Instant::now();
    image::build_all(images.path(), &bin, &testenv::bin("pause")?, busybox)?;
    eprintln!("node: images built in {:.1?}", t0.elapsed());
    let exe = std::env::current_exe()?;
    // MAILROOM_NODE_TESTS picks some scenarios by name (default: all of them).
    let filter = std::env::var("MAILROOM_NODE_TESTS").unwrap_or_else(|_| "on_node_".into());
    let args = ["--ignored", "--test-threads=1", "--nocapture", &filter].map(String::from);
    let status = node::run_isolated(&exe, &args, &[(node::ENV_IMAGES, images.path())])?;
    ensure!(
        status.success(),
        "the node scenarios failed ({status}); their output is above"
    );
    Ok(())
}

/// The node registers with the shared control plane and runs a pod from our app image as the
/// image's user (65532) on a read-only root, through the pinned kubelet and containerd; the pod
/// reaches a listener on the node's gateway over the bridge, and its log comes back.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_pod_runs_as_the_image_user_and_reaches_the_gateway() -> Result<()> {
    let cp = mailroom_test_support::ControlPlane::shared().await?;
    let node = Node::start(cp, &Node::images()?).await?;
    let ns = cp.new_namespace().await?;
    let listener = std::net::TcpListener::bind((node.gateway(), 0))?;
    let port = listener.local_addr()?.port();
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {
            "nodeName": node.name(),
            "restartPolicy": "Never",
            "containers": [{
                "name": "probe",
                "image": image::APP,
                "command": ["sh", "-c", format!(
                    "echo uid=$(id -u); touch /x 2>/dev/null || echo read-only;                      echo hello | nc {gw} {port} && echo reached", gw = node.gateway())],
            }],
        }
    }))?;
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &pod).await?;
    let (mut conn, peer) = tokio::task::spawn_blocking(move || listener.accept()).await??;
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got)?;
    drop(conn);
    wait_pod(&pods, "probe", Duration::from_secs(60), &node, |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await?;
    eprintln!(
        "node: pod ran to completion {:.1?} after create (from {peer})",
        t0.elapsed()
    );
    assert_eq!(got, "hello\n");
    let log = node.container_log(&ns, "probe", "probe");
    assert_eq!(log, "uid=65532\nread-only\nreached\n");
    Ok(())
}

/// A pod in an opted-in namespace, created through the real webhook, runs on the node: the
/// injected native sidecar (our image, UID 65532, read-only root) binds port 25 thanks to the
/// pod's `ip_unprivileged_port_start` sysctl and is started before the app, whose first and
/// only attempt sends a message through it, DKIM-signed to a STARTTLS+AUTH smarthost listening
/// on the node's gateway. On deletion the app stops before the sidecar.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_an_injected_pod_sends_mail_through_its_sidecar_and_stops_first() -> Result<()> {
    let m = Mission::start_with(&[&format!(
        "sidecar.image.repository={},sidecar.image.tag={}",
        image::SIDECAR.rsplit_once(':').context("tag")?.0,
        image::SIDECAR.rsplit_once(':').context("tag")?.1,
    )])
    .await?;
    let node = Node::start(m.control_plane(), &Node::images()?).await?;
    let gateway = node.gateway().to_string();
    let mut upstream = Upstream::starttls_with_auth_at(m.dir(), &gateway, "mailer", "s3cret")?;
    m.apply(&MAIL_DOMAIN.replace("APP_NS", &m.app_ns)).await?;
    let domain = m.wait_condition("MailDomain", "example-com", "Ready").await?;
    m.publish_dns_records(&domain)?;
    m.smarthost_secrets(&upstream, "mailer", "s3cret").await?;
    m.apply(&format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: Relay
metadata: {{name: outbound, namespace: {ns}}}
spec:
  domains: [example-com]
  listenPort: 25
  delivery:
    smarthost:
      host: {gateway}
      port: {port}
      tls: starttls
      credentialsSecretRef: {{name: smarthost-credentials}}
      caSecretRef: {{name: smarthost-ca, key: ca.crt}}",
        ns = m.app_ns,
        port = upstream.port,
    ))
    .await?;
    m.wait_condition("Relay", "outbound", "Ready").await?;
    m.opt_in_namespace().await?;

    let pods: Api<Pod> = Api::namespaced(m.client.clone(), &m.app_ns);
    let t0 = Instant::now();
    let pod = create_injected(&pods, &app_pod("shop-0", node.name())?).await?;
    let running = wait_pod(&pods, "shop-0", Duration::from_secs(120), &node, |p| {
        container_state(p, "app", "running").is_some()
    })
    .await?;
    eprintln!("node: pod running {:.1?} after create", t0.elapsed());

    // The injected spec, as the kubelet ran it.
    let spec = serde_json::to_value(pod.spec.as_ref().context("spec")?)?;
    assert_eq!(
        spec["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    let sidecar_started =
        container_state(&running, "mailroom-sidecar", "running").context("sidecar running")?;
    let app_started = container_state(&running, "app", "running").context("app running")?;
    ensure!(
        sidecar_started["startedAt"].as_str() <= app_started["startedAt"].as_str(),
        "the sidecar started after the app: {sidecar_started} vs {app_started}"
    );

    let eml = wait_message(&mut upstream, &node).await?;
    let envelope = Upstream::envelope(&eml)?;
    assert_eq!(envelope["tls"], true, "{envelope}");
    assert_eq!(envelope["authenticated"], true, "{envelope}");
    assert_eq!(
        peers::dkim_verify_dns(&eml, m.dns.port)?,
        "d=example.com s=mailroom"
    );
    let app_log = node.container_log(&m.app_ns, "shop-0", "app");
    ensure!(
        app_log.contains("app: start uid=65532") && app_log.contains("app: sent"),
        "{app_log}"
    );

    // Inside the sidecar's container: the image's user, a read-only root, port 25 bound.
    let sidecar_log = node.container_log(&m.app_ns, "shop-0", "mailroom-sidecar");
    ensure!(sidecar_log.contains("listening"), "sidecar log:\n{sidecar_log}");

    // The kubelet removes a pod's logs with the pod: read the stop times while it goes.
    pods.delete("shop-0", &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut app_term, mut sidecar_stop) = (None, None);
    while pods.get_opt("shop-0").await?.is_some() {
        ensure!(
            Instant::now() < deadline,
            "pod shop-0 still there 60 s after delete\n{}",
            node.kubelet_log_tail(40)
        );
        app_term = app_term.or(node.log_line_time(&m.app_ns, "shop-0", "app", "app: TERM").ok());
        sidecar_stop = sidecar_stop.or(node
            .log_line_time(&m.app_ns, "shop-0", "mailroom-sidecar", "stopped")
            .ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app_term = app_term.context("the app never logged its TERM")?;
    let sidecar_stop = sidecar_stop.context("the sidecar never logged that it stopped")?;
    ensure!(
        app_term < sidecar_stop,
        "the sidecar stopped ({sidecar_stop}) before the app got TERM ({app_term})"
    );
    drop(node);
    Ok(())
}

/// The app pod asking for Relay `outbound`, bound to the node; PodSecurity `restricted` as is.
fn app_pod(name: &str, node: &str) -> Result<Pod> {
    let pod = serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "shop", "mailroom.dev/relay": "outbound"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": image::APP,
                "command": ["sh", "-c", app_command()],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        }
    });
    Ok(serde_json::from_value(pod)?)
}

/// Creates `pod` once the webhook injects (the apiserver learns of the namespace label a moment
/// after it changes: dry-run until it does).
async fn create_injected(pods: &Api<Pod>, pod: &Pod) -> Result<Pod> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let injected = |p: &Pod| {
        p.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == "mailroom-sidecar")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pods.create(&dry, pod).await {
            Ok(p) if injected(&p) => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => bail!("the webhook never injected the sidecar"),
            Err(e) => bail!("dry-run create failed: {e}"),
        }
    }
    Ok(pods.create(&PostParams::default(), pod).await?)
}

/// Polls pod `name` until `done` holds; fails with its status and the kubelet's log.
async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    timeout: Duration,
    node: &Node,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    loop {
        if let Some(pod) = pods.get_opt(name).await? {
            last = serde_json::to_value(&pod)?;
            if done(&last) {
                return Ok(last);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} not as expected after {timeout:?}; status: {:#}\n{}",
                last["status"],
                node.kubelet_log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `status.{init,}containerStatuses[name].state.<state>`, if the container is in that state.
fn container_state(pod: &Value, name: &str, state: &str) -> Option<Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].get(state).cloned())
}

/// The first message the upstream saved (the pod runs on the node: no process of ours to watch).
async fn wait_message(upstream: &mut Upstream, node: &Node) -> Result<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        upstream.proc.check_running()?;
        if let Some(eml) = upstream.messages()?.into_iter().next() {
            return Ok(eml);
        }
        if Instant::now() > deadline {
            bail!(
                "no message at the smarthost after 60 s\n{}",
                node.kubelet_log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
