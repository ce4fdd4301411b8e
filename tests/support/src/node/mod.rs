//! A real node for the end-to-end tests: Debian's containerd (private root, state and socket) and
//! a kubelet built from the pinned Kubernetes, registered with a test control plane by a client
//! certificate from its PKI, running pods from our images on a bridge inside the sandbox's own
//! network namespace ([`isolation`]). Nothing of it reaches the host's network or kernel settings.
//!
//! ```no_run
//! # async fn demo(cp: &mailroom_test_support::ControlPlane) -> anyhow::Result<()> {
//! use mailroom_test_support::node::Node;
//! let images = Node::images()?; // built outside, passed in by the launcher
//! let node = Node::start(cp, &images).await?; // Ready, images imported
//! # let _ = node; Ok(()) }
//! ```

mod cgroup;
mod config;
pub mod isolation;
mod logs;
mod output;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{core::v1::Node as NodeObject, rbac::v1::ClusterRoleBinding};
use kube::{
    Api,
    api::{Patch, PatchParams},
};

pub use self::isolation::{HostState, Isolated, run_isolated};
pub use self::output::Failures;
use crate::{ControlPlane, image, pki::NODE_NAME, process::Proc, testenv};
use isolation::run;

/// The kubelet's HTTPS and healthz ports for node `n`: fixed, a pair per node, below the
/// ephemeral range. The node runs in a network namespace of the test's own ([`isolation`]), where
/// nothing else binds a fixed port and every port-0 bind or outgoing connection gets its port from
/// the ephemeral range, so nothing can take these before the kubelet binds them (the kubelet
/// cannot bind port 0 and report the port it got).
fn kubelet_ports(n: u8) -> Result<(u16, u16)> {
    let (port, healthz) = (10250 + 10 * u16::from(n), 10248 + 10 * u16::from(n));
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    if let Some(low) = range
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<u16>().ok())
        && port >= low
    {
        bail!(
            "kubelet port {port} is in the ephemeral port range ({})",
            range.trim()
        );
    }
    Ok((port, healthz))
}

/// Set by the launcher: the directory holding the image archives built outside the sandbox.
pub const ENV_IMAGES: &str = "MAILROOM_NODE_IMAGES";

static NEXT: AtomicU8 = AtomicU8::new(0);

/// A running node: containerd and a Ready kubelet. Dropping it stops both, kills what is left of
/// its pods and removes its mounts, cgroups and bridge (the sandbox's end removes the rest).
#[derive(Debug)]
pub struct Node {
    dir: PathBuf,
    logs: PathBuf,
    bridge: String,
    gateway: Ipv4Addr,
    cgroup: String,
    startup: Duration,
    // Stopped in reverse start order: kubelet, containerd.
    procs: Vec<Proc>,
}

// === impl Node ===

impl Node {
    /// The image archives the launcher built (`$MAILROOM_NODE_IMAGES/*.oci.tar`).
    pub fn images() -> Result<Vec<PathBuf>> {
        let dir =
            std::env::var_os(ENV_IMAGES).context("MAILROOM_NODE_IMAGES is not set (the launcher sets it)")?;
        let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".oci.tar"))
            .collect();
        images.sort();
        Ok(images)
    }

    /// Starts containerd, imports `images`, and starts a kubelet registered with `cp`; returns
    /// once the Node is Ready. Only inside the sandbox (see [`isolation`]).
    pub async fn start(cp: &ControlPlane, images: &[PathBuf]) -> Result<Self> {
        let t0 = Instant::now();
        let root = isolation::root()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("node-{n}"));
        let logs = root.join("logs").join(format!("node-{n}"));
        std::fs::create_dir_all(&logs)?;
        let cgroup = format!("/{}/node-{n}", isolation::cgroup_name(&root)?);
        let (port, healthz) = kubelet_ports(n)?;
        let layout = config::Layout {
            dir: &dir,
            bridge: &format!("mr{n}"),
            subnet: Ipv4Addr::new(10, 244, n, 0),
            cgroup_root: &cgroup,
            kubelet_ports: (port, healthz),
        };
        let mut node = Self {
            dir: dir.clone(),
            logs,
            bridge: layout.bridge.to_string(),
            gateway: layout.gateway(),
            cgroup: cgroup.clone(),
            startup: Duration::ZERO,
            procs: Vec::new(),
        };
        node.write_files(cp, &layout)?;
        cgroup::make(&cgroup)?;
        // The bridge exists before the kubelet starts: its address is the node IP.
        run("ip", &["link", "add", &node.bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", node.gateway),
                "dev",
                &node.bridge,
            ],
        )?;
        run("ip", &["link", "set", &node.bridge, "up"])?;

        let containerd = which("containerd")?;
        let args = vec![format!("--config={}", dir.join("containerd.toml").display())];
        node.spawn("containerd", &containerd, &args)?;
        node.wait("containerd to answer", Duration::from_secs(30), |n| {
            Ok(n.ctr().arg("version").output()?.status.success())
        })
        .await?;
        for archive in images {
            let out = node.ctr().args(["images", "import"]).arg(archive).output()?;
            if !out.status.success() {
                bail!(
                    "ctr images import {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        let client = cp.client().await?;
        // The bootstrap policy has the role but, since 1.8, no binding: the Node authorizer
        // would do it, and the test apiserver runs RBAC only.
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "mailroom-test-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        }))?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .patch(
                "mailroom-test-nodes",
                &PatchParams::apply("mailroom-test").force(),
                &Patch::Apply(&binding),
            )
            .await?;
        let kubelet = testenv::bin("kubelet")?;
        let args = vec![
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", dir.join("kubelet.kubeconfig").display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet/pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={}", node.gateway),
            "--v=2".into(),
        ];
        node.spawn("kubelet", &kubelet, &args)?;
        node.wait_ready(&Api::all(client), Duration::from_secs(90))
            .await?;
        node.startup = t0.elapsed();
        eprintln!(
            "mailroom-test-support: node {NODE_NAME} Ready in {:.1?} (logs: {})",
            node.startup,
            node.logs.display()
        );
        Ok(node)
    }

    /// Routes the `kubernetes` Service (`10.0.0.1:443`) to `cp`'s apiserver, as kube-proxy
    /// would for that one Service: a DNAT rule in the sandbox's network namespace (ahead of any
    /// earlier one), so that pods using in-cluster config (the operator's, a hub's) reach it.
    /// The apiserver must listen on the gateway too: start it with `--bind-address=0.0.0.0`
    /// (inside the sandbox, that is only loopback and the pod bridge).
    pub fn route_kubernetes_service(&self, cp: &ControlPlane) -> Result<()> {
        let port = cp.server_url().rsplit(':').next().context("apiserver port")?;
        let to = format!("{}:{port}", self.gateway);
        let rule = [
            "-d",
            "10.0.0.1/32",
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        // Inserted first: the scenarios of one sandbox share its network namespace, and a rule
        // an earlier scenario left behind points at that scenario's apiserver, long gone.
        run(
            "iptables",
            &[&["-t", "nat", "-I", "PREROUTING", "1"][..], &rule[..]].concat(),
        )?;
        Ok(())
    }

    /// The Node's name.
    pub fn name(&self) -> &'static str {
        NODE_NAME
    }

    /// The bridge's address: the node IP and the pods' gateway. Peers that pods must reach
    /// listen here.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// How long `start` took until the Node was Ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Where containerd and the kubelet log.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// `ctr` on this node's containerd, in the kubelet's namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", "k8s.io"]);
        ctr
    }

    /// The host PID (in the sandbox's PID namespace) of the container with CRI ID `id` (as in
    /// a pod's `containerID`, with or without its `containerd://` prefix).
    pub fn container_pid(&self, id: &str) -> Result<u32> {
        let id = id.trim_start_matches("containerd://");
        let out = self.ctr().args(["tasks", "ls"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(id))
                    .then(|| cols.next()?.parse().ok())
                    .flatten()
            })
            .with_context(|| format!("no running task {id} in:\n{text}"))
    }

    /// Everything container `container` of pod `namespace/pod` wrote, over all its restarts,
    /// from the kubelet's log files (CRI format: the timestamp and stream prefix removed).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.log_lines(namespace, pod, container)
            .into_iter()
            .map(|(_, text)| text + "\n")
            .collect()
    }

    /// Waits until container `container` of pod `namespace/pod` has written `times` lines that
    /// contain `text`, and returns its whole log. The kubelet's log files trail the container:
    /// a line can land after the pod's phase or a peer already shows what the line reports.
    pub async fn wait_log(
        &self,
        (namespace, pod, container): (&str, &str, &str),
        text: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.container_log(namespace, pod, container);
            if log.lines().filter(|l| l.contains(text)).count() >= times {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {container} of {namespace}/{pod} never logged {text:?} {times} time(s) in {timeout:?}; its log:\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first line container `container` of pod `namespace/pod` wrote that contains
    /// `text`, with the time the kubelet stamped on it (UTC, nanoseconds; times compare as
    /// strings).
    pub fn log_line(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        text: &str,
    ) -> Option<(String, String)> {
        self.log_lines(namespace, pod, container)
            .into_iter()
            .find(|(_, line)| line.contains(text))
    }

    fn log_lines(&self, namespace: &str, pod: &str, container: &str) -> Vec<(String, String)> {
        logs::lines(&self.dir.join("pod-logs"), namespace, pod, container)
    }

    /// The last lines of the kubelet's log, for error messages.
    pub fn kubelet_log_tail(&self, n: usize) -> String {
        self.procs
            .iter()
            .find(|p| p.name == "kubelet")
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    fn write_files(&self, cp: &ControlPlane, layout: &config::Layout<'_>) -> Result<()> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir.join("cni/net.d"))?;
        std::fs::create_dir_all(dir.join("kubelet/pki"))?;
        std::fs::write(
            dir.join("containerd.toml"),
            config::containerd(layout, image::PAUSE),
        )?;
        std::fs::write(
            dir.join("cni/net.d/10-mailroom.conflist"),
            serde_json::to_vec_pretty(&config::cni(layout))?,
        )?;
        std::fs::write(
            dir.join("kubelet.yaml"),
            serde_yaml_ng::to_string(&config::kubelet(layout))?,
        )?;
        // Pods' DNS: the node's gateway, where a test's DNS server can listen.
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {}\n", self.gateway))?;
        cp.write_node_kubeconfig(&dir.join("kubelet.kubeconfig"))
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let proc = Proc::spawn(name, program, args, &self.logs)?;
        self.procs.push(proc);
        Ok(())
    }

    /// Polls `f` every 100 ms until it is true; fails with the log tails when a process exits or
    /// the deadline passes.
    async fn wait(&mut self, what: &str, timeout: Duration, f: impl Fn(&Self) -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if f(self).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}\n{}", self.tails());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&mut self, nodes: &Api<NodeObject>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not registered");
        loop {
            self.check_running()?;
            if let Some(node) = nodes.get_opt(NODE_NAME).await? {
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready");
                match ready {
                    Some(c) if c.status == "True" => return Ok(()),
                    Some(c) => last = format!("Ready={} {:?}", c.status, c.message),
                    None => last = "no Ready condition yet".into(),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready after {timeout:?}: {last}\n{}",
                    self.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_running(&mut self) -> Result<()> {
        for proc in &mut self.procs {
            if let Some(status) = proc.exited()? {
                bail!("{} exited ({status})\n{}", proc.name, proc.log_tail(40));
            }
        }
        Ok(())
    }

    fn tails(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.log_tail(30))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut kubelet) = self.procs.pop() {
            kubelet.stop();
        }
        // Whatever runs in the node's cgroups is a container (or its init): kill it all.
        for _ in 0..50 {
            let pids = cgroup::pids(&self.cgroup);
            if pids.is_empty() {
                break;
            }
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
            std::thread::sleep(Duration::from_millis(100));
        }
        // The shims name containerd's socket on their command line.
        let socket = self.dir.join("containerd.sock").display().to_string();
        let shims = pids_naming(&socket);
        if !shims.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&shims).status();
        }
        while let Some(mut proc) = self.procs.pop() {
            proc.stop();
        }
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| m.starts_with(&*self.dir.to_string_lossy()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
        cgroup::remove(&self.cgroup);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// PIDs whose command line contains `needle` (e.g. our containerd socket), never this process.
fn pids_naming(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid.chars().all(|c| c.is_ascii_digit()) && pid != me && text.contains(needle)).then_some(pid)
        })
        .collect()
}

fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .with_context(|| {
            format!("{tool} not found on PATH: run `make testenv` (installs Debian's containerd)")
        })
}
