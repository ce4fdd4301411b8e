//! The end-to-end proofs on a real node: pods from our images, run by a real kubelet on
//! containerd, inside a sandbox with its own network namespace (`node::isolation`).
//!
//! `cargo test` runs one ordinary test here,
//! [`node_scenarios_pass_in_a_sandbox_and_leave_the_host_untouched`]: it builds the images from
//! the Dockerfiles' recipe, runs this same test binary inside the sandbox with `--ignored` (the
//! `on_node_*` scenarios, which refuse to run anywhere else), and checks that the host's
//! interfaces, routes, iptables rules, sysctls, cgroups and runtime paths are as before.
//! `MAILROOM_NODE_TESTS=<name part>` runs only some scenarios.

use mailroom_e2e as common;
mod hub;
mod plugin;
mod release;
mod scene;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use mailroom_test_support::admission::SIDECAR;
use mailroom_test_support::{
    ControlPlane, image,
    node::{self, Node},
    peers::{self, Upstream},
    stack, testenv,
};
use scene::{Scene, container};
use serde_json::json;

/// One sandbox at a time: two nodes on 2 cores only slow each other down.
static SANDBOX: Mutex<()> = Mutex::new(());

/// Builds our binaries and the images, then runs every scenario below inside the sandbox, and
/// fails if the host's network or kernel settings differ afterwards.
#[test]
fn node_scenarios_pass_in_a_sandbox_and_leave_the_host_untouched() -> Result<()> {
    let _one = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let bin = stack::build_binaries()?;
    let images = tempfile::tempdir()?;
    let t0 = Instant::now();
    image::build_all(
        images.path(),
        &bin,
        &testenv::bin("pause")?,
        &testenv::bin("busybox")?,
    )?;
    eprintln!("node: images built in {:.1?}", t0.elapsed());
    let filter = std::env::var("MAILROOM_NODE_TESTS").unwrap_or_else(|_| "on_node_".into());
    let args = ["--ignored", "--test-threads=1", "--nocapture", &filter].map(String::from);
    let exe = std::env::current_exe()?;
    let run = node::run_isolated(&exe, &args, &[(node::ENV_IMAGES, images.path())])?;
    ensure!(
        run.status.success(),
        "the node scenarios failed ({}); their output is above. What failed:\n\n{}",
        run.status,
        run.failures.summary()
    );
    Ok(())
}

/// `kill -9` of a test process in the middle of a node run (a pod running): the janitor still
/// ends every process of the sandbox and removes its cgroups and directory, and the host is as
/// before.
#[test]
fn a_node_run_killed_with_sigkill_leaves_nothing_behind() -> Result<()> {
    let _one = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let before = node::HostState::capture()?;
    let mut run = Command::new(std::env::current_exe()?)
        .args([
            "node_scenarios_pass_in_a_sandbox_and_leave_the_host_untouched",
            "--exact",
            "--nocapture",
        ])
        .env("MAILROOM_NODE_TESTS", "hold_a_running_pod_until_killed")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(run.stderr.take().context("stderr")?).lines();
    let deadline = Instant::now() + Duration::from_secs(180);
    let dir = loop {
        let line = lines.next().context("the run ended before holding a pod")??;
        if let Some(dir) = line.strip_prefix("node: holding a pod in ") {
            break PathBuf::from(dir);
        }
        ensure!(Instant::now() < deadline, "no pod held in 180 s");
    };
    let name = dir
        .file_name()
        .context("run dir name")?
        .to_string_lossy()
        .into_owned();
    ensure!(
        !processes_naming(&name).is_empty(),
        "nothing of {name} runs before the kill"
    );
    run.kill()?; // SIGKILL
    run.wait()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")?
            .flatten()
            .map(|h| h.path().join(&name))
            .filter(|c| c.exists())
            .collect();
        let left = (processes_naming(&name), cgroups, dir.exists());
        if left.0.is_empty() && left.1.is_empty() && !left.2 {
            break;
        }
        ensure!(Instant::now() < deadline, "30 s after kill -9, left: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(diff) = before.diff(&node::HostState::capture()?) {
        anyhow::bail!("the killed run changed the host: {diff}");
    }
    Ok(())
}

/// PIDs whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
        })
        .collect()
}

/// Runs a pod on a node, says so, and waits to be killed (for the test above; never on its own).
#[tokio::test]
#[ignore = "killed on purpose by a_node_run_killed_with_sigkill_leaves_nothing_behind"]
async fn hold_a_running_pod_until_killed() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let node = Node::start(&cp, &Node::images()?).await?;
    let ns = cp.new_namespace().await?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    let pod = json!({
        "metadata": {"name": "held"},
        "spec": {"nodeName": node.name(),
                 "containers": [{"name": "held", "image": image::APP, "command": ["sleep", "600"]}]}
    });
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods.get("held").await?.status.and_then(|s| s.phase).as_deref() != Some("Running") {
        ensure!(
            Instant::now() < deadline,
            "pod held never ran\n{}",
            node.kubelet_log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let root = std::env::var(node::isolation::ENV_ROOT)?;
    eprintln!("node: holding a pod in {root}");
    tokio::time::sleep(Duration::from_secs(300)).await;
    anyhow::bail!("not killed within 300 s")
}

/// The node registers with a control plane and runs a pod from our app image as the image's
/// user (65532) on a read-only root; the pod reaches a listener on the node's gateway over the
/// bridge, and its log comes back through the kubelet's log files.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_pod_runs_as_the_image_user_and_reaches_the_gateway() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let node = Node::start(&cp, &Node::images()?).await?;
    let ns = cp.new_namespace().await?;
    let listener = std::net::TcpListener::bind((node.gateway(), 0))?;
    let port = listener.local_addr()?.port();
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    let command = format!(
        "echo uid=$(id -u); touch /x 2>/dev/null || echo read-only; echo hello | nc {} {port} && echo reached",
        node.gateway()
    );
    let pod = json!({
        "metadata": {"name": "probe"},
        "spec": {"nodeName": node.name(), "restartPolicy": "Never",
                 "containers": [{"name": "probe", "image": image::APP, "command": ["sh", "-c", command]}]}
    });
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let (mut conn, peer) = tokio::task::spawn_blocking(move || listener.accept()).await??;
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got)?;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let phase = pods.get("probe").await?.status.and_then(|s| s.phase);
        match phase.as_deref() {
            Some("Succeeded") => break,
            Some("Failed") => bail!(
                "pod probe failed; its log:\n{}\nkubelet:\n{}",
                node.container_log(&ns, "probe", "probe"),
                node.kubelet_log_tail(40)
            ),
            _ => ensure!(
                Instant::now() < deadline,
                "pod probe did not succeed in 60 s (phase {phase:?})\n{}",
                node.kubelet_log_tail(40)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "node: pod ran to completion {:.1?} after create (from {peer})",
        t0.elapsed()
    );
    assert_eq!(got, "hello\n");
    // The log file can trail the pod's phase by a moment.
    let log = node
        .wait_log((&ns, "probe", "probe"), "reached", 1, Duration::from_secs(20))
        .await?;
    assert_eq!(log, "uid=65532\nread-only\nreached\n");
    Ok(())
}

/// A pod in an opted-in namespace, created through the real webhook, runs on the node: the
/// injected native sidecar (our image) runs as UID 65532 on a read-only root and binds port 25
/// thanks to the pod's `ip_unprivileged_port_start` sysctl; it is started before the app, whose
/// first and only attempt sends a message through it, delivered DKIM-signed to a STARTTLS+AUTH
/// smarthost on the node's gateway. Its `mailroom.dev/session-threads` annotation sizes the
/// sidecar's session threads. On deletion the app gets TERM before the sidecar stops.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_an_injected_pod_sends_mail_through_its_sidecar_and_stops_first() -> Result<()> {
    let mut s = Scene::start().await?;
    s.relay(s.upstream.port).await?;
    let t0 = Instant::now();
    let pod = s
        .run_app_annotated("shop-0", 30, &[("mailroom.dev/session-threads", "2")])
        .await?;
    eprintln!("node: pod running {:.1?} after create", t0.elapsed());
    let spec = &pod["spec"];
    assert_eq!(
        spec["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    let (sidecar, app) = (container(&pod, SIDECAR), container(&pod, "app"));
    ensure!(
        sidecar["started"] == true
            && sidecar["state"]["running"]["startedAt"].as_str()
                <= app["state"]["running"]["startedAt"].as_str(),
        "the sidecar was not started before the app: {sidecar} / {app}"
    );

    // The sidecar process as the kernel sees it.
    let id = sidecar["containerID"].as_str().context("sidecar containerID")?;
    let pid = s.node.container_pid(id)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(status.contains("Uid:\t65532\t65532\t65532\t65532"), "{status}");
    // The pod's annotation sized the sessions' runtime (`SIDECAR_SESSION_THREADS=2`): the
    // runtime's own count in the log, and the threads of that name (the runtime's blocking
    // threads carry it too, hence at least).
    s.wait_sidecar_log("shop-0", "session_threads=2", 1, Duration::from_secs(10))
        .await?;
    let sessions = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "sessions")
        .count();
    ensure!(
        sessions >= 2,
        "{sessions} threads named sessions, want 2 at least"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .context("root mount")?;
    ensure!(
        root.split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "{root}"
    );
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    // 127.0.0.1:25 in LISTEN (0A).
    ensure!(
        tcp.lines().any(|l| l.contains("0100007F:0019 00000000:0000 0A")),
        "{tcp}"
    );
    let port_start = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&port_start.stdout).trim(), "25");

    let eml = s.wait_messages(1, Duration::from_secs(60)).await?.remove(0);
    let envelope = Upstream::envelope(&eml)?;
    assert_eq!(envelope["tls"], true, "{envelope}");
    assert_eq!(envelope["authenticated"], true, "{envelope}");
    assert_eq!(
        peers::dkim_verify_dns(&eml, s.m.dns.port)?,
        "d=example.com s=mailroom"
    );
    // The app logs "sent" after the smarthost has the message, and the log file trails it.
    let app_log = s
        .node
        .wait_log(
            (&s.m.app_ns, "shop-0", "app"),
            "app: sent",
            1,
            Duration::from_secs(20),
        )
        .await?;
    ensure!(app_log.contains("app: start uid=65532"), "{app_log}");

    let marks = s
        .delete_watching("shop-0", &[("app", "app: TERM"), (SIDECAR, "stopped")])
        .await?;
    let app_term = marks[0].clone().context("the app never logged its TERM")?.0;
    let sidecar_stop = marks[1]
        .clone()
        .context("the sidecar never logged that it stopped")?
        .0;
    ensure!(
        app_term < sidecar_stop,
        "the sidecar stopped ({sidecar_stop}) before the app got TERM ({app_term})"
    );
    Ok(())
}

/// With the smarthost down, the app's message waits in the sidecar's spool. Deleting the pod
/// stops the app first; the sidecar then drains within the grace period and reports, in its
/// log, the message it could not deliver (it stays in the spool).
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_deleting_a_pod_with_mail_queued_drains_and_reports_what_is_left() -> Result<()> {
    let s = Scene::start().await?;
    s.relay(s.closed_port()?).await?;
    s.run_app("shop-0", 10).await?;
    s.wait_sidecar_log("shop-0", "recipient deferred", 1, Duration::from_secs(30))
        .await?;
    let t0 = Instant::now();
    let marks = s
        .delete_watching(
            "shop-0",
            &[
                ("app", "app: TERM"),
                (SIDECAR, "drain ended with undelivered mail"),
                (SIDECAR, "stopped"),
            ],
        )
        .await?;
    eprintln!(
        "node: pod with queued mail gone {:.1?} after delete",
        t0.elapsed()
    );
    let app_term = marks[0].clone().context("the app never logged its TERM")?;
    let report = marks[1]
        .clone()
        .context("the sidecar reported no undelivered mail")?;
    let stopped = marks[2]
        .clone()
        .context("the sidecar never logged that it stopped")?;
    ensure!(
        report.1.contains("undelivered_messages=1"),
        "drain report: {}",
        report.1
    );
    ensure!(
        app_term.0 < report.0 && report.0 <= stopped.0,
        "order: {app_term:?} {report:?} {stopped:?}"
    );
    Ok(())
}

/// `kill -9` of the sidecar's process: the kubelet restarts the container, and the new process
/// replays the spool it finds in the pod's `emptyDir`. Then a Relay change (the smarthost comes
/// back at another port) reaches the sidecar through the kubelet's atomic swap of the
/// ConfigMap volume, and the spooled message is delivered, exactly once.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_killed_sidecar_is_restarted_replays_its_spool_and_reloads_a_relay_change() -> Result<()> {
    let mut s = Scene::start().await?;
    s.relay(s.closed_port()?).await?;
    let pod = s.run_app("shop-0", 10).await?;
    s.wait_sidecar_log("shop-0", "recipient deferred", 1, Duration::from_secs(30))
        .await?;

    let id = container(&pod, SIDECAR)["containerID"]
        .as_str()
        .context("containerID")?
        .to_string();
    let out = s
        .node
        .ctr()
        .args(["tasks", "kill", "--signal", "SIGKILL"])
        .arg(id.trim_start_matches("containerd://"))
        .output()?;
    ensure!(
        out.status.success(),
        "ctr tasks kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = s
        .wait_pod("shop-0", Duration::from_secs(60), |p| {
            let c = container(p, SIDECAR);
            c["restartCount"].as_u64() >= Some(1) && c["ready"] == true
        })
        .await?;
    let app = container(&restarted, "app");
    assert_eq!(app["restartCount"], 0, "the app kept running: {app}");
    // The first start found an empty spool; the restarted one finds the message.
    let log = s
        .wait_sidecar_log("shop-0", "spool replayed", 2, Duration::from_secs(10))
        .await?;
    let replay = log
        .lines()
        .filter(|l| l.contains("spool replayed"))
        .nth(1)
        .unwrap_or_default();
    ensure!(replay.contains("messages=1"), "{replay}");

    let t0 = Instant::now();
    let patch = json!({"spec": {"delivery": {"smarthost": {"port": s.upstream.port}}}});
    s.m.api("Relay")
        .patch("outbound", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    s.wait_sidecar_log("shop-0", "config reloaded", 1, Duration::from_secs(90))
        .await?;
    eprintln!(
        "node: Relay change reached the sidecar {:.1?} after the patch",
        t0.elapsed()
    );
    let messages = s.wait_messages(1, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // a duplicate would arrive within a retry
    assert_eq!(
        s.upstream.messages()?.len(),
        1,
        "exactly one delivery of {messages:?}"
    );
    Ok(())
}

/// Taking a domain away reaches a running pod, without a restart: the MailDomain stops granting
/// the app's namespace, the operator withdraws the domain from the Relay's children, the kubelet
/// swaps the sidecar's config and key volumes, and the sidecar then refuses the app's next
/// message (`550 5.7.1`, from smtplib in the pod's network namespace) and holds no key file.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_a_revoked_grant_stops_a_running_sidecar_sending_as_the_domain() -> Result<()> {
    let mut s = Scene::start().await?;
    s.relay(s.upstream.port).await?;
    let pod = s.run_app("shop-0", 10).await?;
    s.wait_messages(1, Duration::from_secs(60)).await?;
    let id = container(&pod, SIDECAR)["containerID"]
        .as_str()
        .context("sidecar containerID")?
        .to_string();
    let pid = s.node.container_pid(&id)?;
    let key = PathBuf::from(format!(
        "/proc/{pid}/root/etc/mailroom/dkim/example.com.mailroom.key"
    ));
    ensure!(key.is_file(), "{} is not in the sidecar", key.display());

    let t0 = Instant::now();
    let revoke = json!({"spec": {"allowedNamespaces": {"names": []}}});
    s.m.api("MailDomain")
        .patch("example-com", &PatchParams::default(), &Patch::Merge(&revoke))
        .await?;
    s.wait_sidecar_log("shop-0", "no sender domains", 1, Duration::from_secs(120))
        .await?;
    eprintln!(
        "node: the withdrawal reached the sidecar {:.1?} after the MailDomain changed",
        t0.elapsed()
    );
    let script = "import smtplib, sys\n\
        try:\n\
        \x20   smtplib.SMTP('127.0.0.1', 25, timeout=30).sendmail('app@example.com', ['someone@example.net'], \
        b'From: app@example.com\\r\\nSubject: after\\r\\n\\r\\nafter\\r\\n')\n\
        \x20   print('accepted')\n\
        except smtplib.SMTPSenderRefused as e:\n\
        \x20   print(e.smtp_code, e.smtp_error.decode())\n";
    let sent = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "--"])
        .arg(testenv::python()?)
        .args(["-c", script])
        .output()?;
    let answer = String::from_utf8_lossy(&sent.stdout);
    ensure!(
        answer.starts_with("550 5.7.1"),
        "smtplib in the pod's network namespace: {answer} {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // The key leaves the sidecar's volume with the kubelet's next sync of the Secret.
    let deadline = Instant::now() + Duration::from_secs(120);
    while key.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} is still in the sidecar",
            key.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pod = s.wait_pod("shop-0", Duration::from_secs(5), |_| true).await?;
    assert_eq!(container(&pod, SIDECAR)["restartCount"], 0, "no restart");
    assert_eq!(s.upstream.messages()?.len(), 1, "nothing more was sent");
    Ok(())
}

/// What the kubelet does with an `emptyDir` written past its `sizeLimit` (as the sidecar's
/// spool volume is): it evicts the pod, saying which volume exceeded which limit.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_an_empty_dir_over_its_size_limit_gets_the_pod_evicted() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let node = Node::start(&cp, &Node::images()?).await?;
    let ns = cp.new_namespace().await?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    let pod = json!({
        "metadata": {"name": "filler"},
        "spec": {
            "nodeName": node.name(),
            "restartPolicy": "Never",
            "containers": [{"name": "filler", "image": image::APP,
                            "command": ["sh", "-c", "dd if=/dev/zero of=/spool/fill bs=1024 count=4096; echo filled; \
                                         while true; do sleep 1; done"],
                            "volumeMounts": [{"name": "spool", "mountPath": "/spool"}]}],
            "volumes": [{"name": "spool", "emptyDir": {"sizeLimit": "1Mi"}}],
        }
    });
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(90);
    let status = loop {
        let status = pods.get("filler").await?.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Failed") {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "not evicted: {status:?}\n{}",
            node.kubelet_log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "node: evicted {:.1?} after create: {:?}",
        t0.elapsed(),
        status.message
    );
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    let message = status.message.unwrap_or_default();
    ensure!(message.contains("spool") && message.contains("1Mi"), "{message}");
    Ok(())
}

/// The chart as a user installs it, on the node, in namespaces that enforce PodSecurity
/// `restricted`: `helm install --wait` returns once both
/// operator replicas from the chart's Deployment (our operator image, scheduled by
/// kube-scheduler) are Ready; one of them holds the leader Lease; `helm test` passes (a temporary
/// Relay rendered and injected by each replica); the webhook they serve (reached
/// through the Service's endpoints) injects the sidecar into an app pod; the operator pods check
/// the MailDomain's records against a DNS server on the gateway; the app's message arrives
/// DKIM-signed at the STARTTLS+AUTH smarthost; a real Prometheus configured from the chart's
/// monitors scrapes the sidecar and the leader operator at their pod IPs; and the chart's
/// dashboard panels show the delivery while its alert rules evaluate and stay quiet.
#[tokio::test]
#[ignore = "runs inside the node sandbox: cargo test --test node"]
async fn on_node_helm_install_waits_for_operator_pods_that_elect_a_leader_inject_and_deliver() -> Result<()> {
    let mut r = release::Release::install().await?;
    r.helm_test().await?;
    let t0 = Instant::now();
    r.deliver_one().await?;
    let prom = r.scrape().await?;
    r.dashboard(&prom).await?;
    eprintln!(
        "node: MailDomain to a DKIM-verified message at the smarthost in {:.1?}",
        t0.elapsed()
    );
    Ok(())
}
