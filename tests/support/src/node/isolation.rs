//! The sandbox a test node runs in: a network, mount and PID namespace that the test makes
//! (`unshare`), with `lo` up, private `/run`, `/var/lib` and `/var/log` (containerd and the kubelet
//! write there whatever their config says), and the kernel sysctls the kubelet would set
//! bind-mounted over with files that already hold its values, so it never writes the host's.
//! Everything of the node's, from etcd to the pods' bridge, lives and dies inside it.
//!
//! [`run_isolated`] runs a test binary in it; a janitor kills the namespace's first process (and
//! with it every process inside) and removes the node cgroups and files when the run ends,
//! however it ends (even `kill -9` of the test). [`HostState`] is what must not change.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};

use super::output::{FailureScanner, Failures, tee};

/// Set inside the sandbox: the directory of the run (cgroups are named after its last part).
pub const ENV_ROOT: &str = "MAILROOM_NODE_ROOT";

/// Sysctls the kubelet sets unless they already hold these values (container manager,
/// `setupKernelTunables`): the sandbox shows it these values in bind-mounted files.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Host sysctls a node could plausibly touch: the kubelet's, forwarding, the port sysctl.
const WATCHED_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/ip_unprivileged_port_start",
    "net/bridge/bridge-nf-call-iptables",
];

/// Paths the node's programs write outside their configured directories.
const HOST_PATHS: &[&str] = &[
    "/run/containerd",
    "/run/runc",
    "/run/netns",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni",
    "/opt/cni",
    "/usr/libexec/kubernetes",
];

// Runs first inside the namespaces (as PID 1, then replaced by the test binary).
const ENTER: &str = r#"
set -eu
ip link set lo up
for d in /run /var/lib /var/log; do mount -n -t tmpfs -o mode=0755 "mailroom-node" "$d"; done
mkdir -p /run/lock "$MAILROOM_NODE_ROOT/sysctl"
# The apiserver reaches the kubelet (exec, port-forward) at the node's host name, which names
# the kubelet's loopback address inside the sandbox only.
{ cat /etc/hosts 2>/dev/null || true; echo "127.0.0.1 mailroom-node"; } > "$MAILROOM_NODE_ROOT/hosts"
mount -n --bind "$MAILROOM_NODE_ROOT/hosts" /etc/hosts
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    f="$MAILROOM_NODE_ROOT/sysctl/$(echo "$1" | tr / _)"
    echo "$2" > "$f"
    mount -n --bind "$f" "/proc/sys/$1"
    shift 2
done
shift
exec "$@"
"#;

// The outer janitor (in the host namespaces): on end-of-file, kill the sandbox's first process
// (the kernel then kills every process in its PID namespace, and the mounts and network go with
// it), then remove the node cgroups and the run directory.
const JANITOR: &str = r#"
trap '' INT HUP TERM PIPE
dir=$1
name=${dir##*/}
read -r unshare_pid || true
while read -r _; do :; done
if [ -n "$unshare_pid" ]; then
    for c in $(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null); do kill -KILL "$c"; done
    kill -KILL "$unshare_pid" 2>/dev/null
fi
i=0
while [ "$i" -lt 100 ]; do
    left=$(cat /sys/fs/cgroup/pids/"$name"/cgroup.procs 2>/dev/null; find /sys/fs/cgroup/pids/"$name" -name cgroup.procs -exec cat {} + 2>/dev/null)
    [ -z "$left" ] && break
    for p in $left; do kill -KILL "$p" 2>/dev/null; done
    sleep 0.1
    i=$((i + 1))
done
for c in /sys/fs/cgroup/*/"$name"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
if [ -e "$dir/.keep-logs" ]; then
    find "$dir" -mindepth 1 -maxdepth 1 ! -name logs ! -name .keep-logs -exec rm -rf {} +
    echo "mailroom-test-support: the node run failed; logs kept in $dir/logs" >&2
else
    rm -rf -- "$dir"
fi
"#;

/// The run directory, inside the sandbox; an error saying how to get into one outside it.
pub(crate) fn root() -> Result<PathBuf> {
    let root = std::env::var_os(ENV_ROOT)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match root {
        // PID 1 of its own PID namespace: the sandbox's, not a stray variable on the host.
        Some(root) if std::process::id() == 1 && root.is_dir() => Ok(root),
        _ => bail!(
            "the test node runs only inside the sandbox that node::run_isolated makes (its own \
             network, mount and PID namespaces), never on the host's network: run the node tests \
             through `cargo test -p mailroom-e2e --test node` (not with --ignored)"
        ),
    }
}

/// The cgroup name of this run (its directory's last part), under each v1 hierarchy's root.
pub(crate) fn cgroup_name(root: &Path) -> Result<String> {
    Ok(root
        .file_name()
        .context("run directory name")?
        .to_string_lossy()
        .into_owned())
}

/// Runs `program args...` inside a new sandbox and returns its exit status once the janitor has
/// cleaned up. Output goes to ours. Fails if the host's network or kernel settings changed.
pub fn run_isolated(program: &Path, args: &[String], envs: &[(&str, &Path)]) -> Result<Isolated> {
    check_tools()?;
    check_disk(&std::env::temp_dir())?;
    let before = HostState::capture()?;
    let dir = tempfile::Builder::new()
        .prefix("mailroom-node-")
        .tempdir()?
        .keep();
    let mut janitor = OuterJanitor::spawn(&dir)?;
    let name = cgroup_name(&dir)?;
    super::cgroup::make(&format!("/{name}"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--mount-proc",
    ])
    .args(["--", "sh", "-c", ENTER, "mailroom-node-enter"]);
    for (file, value) in KUBELET_SYSCTLS {
        cmd.args([file, value]);
    }
    cmd.arg("--")
        .arg(program)
        .args(args)
        .env(ENV_ROOT, &dir)
        .env("TMPDIR", dir.join("tmp"))
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd.spawn().context("starting unshare (util-linux)")?;
    janitor.watch(child.id())?;
    let scanner = Arc::new(Mutex::new(FailureScanner::default()));
    let copies = [
        tee(
            child.stdout.take().context("stdout")?,
            std::io::stdout(),
            scanner.clone(),
        ),
        tee(
            child.stderr.take().context("stderr")?,
            std::io::stderr(),
            scanner.clone(),
        ),
    ];
    let status = child.wait()?;
    for copy in copies {
        let _ = copy.join();
    }
    let failures = std::mem::take(&mut *scanner.lock().unwrap_or_else(|e| e.into_inner())).finish();
    if !status.success() {
        let _ = std::fs::write(dir.join(".keep-logs"), b"");
    }
    janitor.finish();
    let after = HostState::capture()?;
    if let Some(diff) = before.diff(&after) {
        bail!("the node run changed the host: {diff}");
    }
    Ok(Isolated { status, failures })
}

/// How a sandboxed run ended, and the failure messages its output held.
#[derive(Debug)]
pub struct Isolated {
    pub status: ExitStatus,
    pub failures: Failures,
}

/// Free disk a node run needs where it writes (its images, containerd's content and snapshots,
/// the pods' volumes and logs), with room left above the kubelet's eviction threshold.
pub(crate) const MIN_FREE_DISK: u64 = 3 << 30;

/// Fails before the run when the disk under `dir` is short: otherwise the kubelet evicts the
/// scenarios' pods for ephemeral-storage and they fail far from the cause.
fn check_disk(dir: &Path) -> Result<()> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < MIN_FREE_DISK {
        bail!(
            "only {:.1} GiB free under {}: a node run needs {} GiB (images, containerd, pod volumes); \
             free some space (old build trees: `cargo clean`) or point TMPDIR at a larger disk",
            free as f64 / (1u64 << 30) as f64,
            dir.display(),
            MIN_FREE_DISK >> 30
        );
    }
    Ok(())
}

/// The tools the sandbox and the node need, each with how to get it.
fn check_tools() -> Result<()> {
    let need = [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("iptables-save", "iptables"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
    ];
    for (tool, package) in need {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!(
                "{tool} not found on PATH: run `make testenv` (installs Debian's {package}) or apt-get install {package}"
            );
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).is_file() {
            bail!(
                "CNI plugin /usr/lib/cni/{plugin} missing: run `make testenv` (installs containernetworking-plugins)"
            );
        }
    }
    Ok(())
}

/// Tells the janitor the `unshare` PID; closing the pipe (or dying) starts the cleanup.
struct OuterJanitor {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl OuterJanitor {
    fn spawn(dir: &Path) -> Result<Self> {
        let mut child = Command::new("sh")
            .args(["-c", JANITOR, "mailroom-node-janitor"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .current_dir("/")
            .spawn()
            .context("starting the node janitor (sh)")?;
        let pipe = child.stdin.take();
        Ok(Self { child, pipe })
    }

    fn watch(&mut self, pid: u32) -> Result<()> {
        let pipe = self.pipe.as_mut().context("janitor finished")?;
        writeln!(pipe, "{pid}")?;
        pipe.flush()?;
        Ok(())
    }

    fn finish(&mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

impl Drop for OuterJanitor {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a test node must leave as it found it in the host's namespaces: interfaces, routes,
/// iptables rules, the watched sysctls, and the top-level cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    items: BTreeMap<String, String>,
}

// === impl HostState ===

impl HostState {
    /// Reads the host state now (from this process's namespaces: call it outside the sandbox).
    pub fn capture() -> Result<Self> {
        let mut items = BTreeMap::new();
        items.insert("ip -o link".into(), run("ip", &["-o", "link"])?);
        items.insert("ip -o addr".into(), stable(&run("ip", &["-o", "addr"])?));
        items.insert(
            "ip route".into(),
            stable(&run("ip", &["route", "show", "table", "all"])?),
        );
        let routes6 = run("ip", &["-6", "route", "show", "table", "all"])?;
        items.insert("ip -6 route".into(), stable(&routes6));
        for tool in ["iptables-save", "ip6tables-save"] {
            items.insert(tool.into(), rules(&run(tool, &[])?));
        }
        for sysctl in WATCHED_SYSCTLS {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(sysctl))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|_| "(absent)".into());
            items.insert(format!("sysctl {}", sysctl.replace('/', ".")), value);
        }
        // containerd, runc, CNI and the kubelet write these whatever their config says (the
        // sandbox hides them behind tmpfs): none may appear on the host.
        for path in HOST_PATHS {
            let state = if Path::new(path).exists() {
                "present"
            } else {
                "absent"
            };
            items.insert(format!("path {path}"), state.into());
        }
        let mut cgroups: Vec<String> = Vec::new();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
            for cg in std::fs::read_dir(hierarchy.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if cg.path().is_dir() {
                    cgroups.push(format!("{}", cg.path().display()));
                }
            }
        }
        cgroups.sort();
        items.insert("cgroups".into(), cgroups.join("\n"));
        Ok(Self { items })
    }

    /// What differs from `after`, item by item; `None` when nothing does.
    pub fn diff(&self, after: &Self) -> Option<String> {
        let mut out = Vec::new();
        for (key, before) in &self.items {
            let now = after.items.get(key).map(String::as_str).unwrap_or("(missing)");
            if before != now {
                out.push(format!("{key}:\n--- before\n{before}\n--- after\n{now}"));
            }
        }
        (!out.is_empty()).then(|| out.join("\n"))
    }
}

/// `ip` output without the lifetimes that count down on their own (`valid_lft 3599sec`,
/// `preferred_lft ...`, `expires ...` of addresses and routes learnt by DHCP or router adverts).
fn stable(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let mut kept = Vec::new();
            while let Some(word) = words.next() {
                if matches!(word, "valid_lft" | "preferred_lft" | "expires") {
                    words.next();
                } else {
                    kept.push(word);
                }
            }
            kept.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// iptables-save output without comments and packet counters (which move with host traffic).
fn rules(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            Some(chain) => chain.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `program` and returns its stdout; fails with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_routes_ignore_lifetimes() {
        let a = "2: eth0 inet 10.1.2.3/24 scope global dynamic eth0 valid_lft 3599sec preferred_lft 3599sec";
        let b = "2: eth0 inet 10.1.2.3/24 scope global dynamic eth0 valid_lft 12sec preferred_lft 12sec";
        assert_eq!(stable(a), stable(b));
        assert_eq!(
            stable("default via fe80::1 dev eth0 expires 1790sec"),
            "default via fe80::1 dev eth0"
        );
    }

    #[test]
    fn rules_ignore_comments_and_counters() {
        let a = "# Generated by iptables-save v1.8.9 on Wed\n*filter\n:INPUT ACCEPT [10:600]\nCOMMIT\n";
        let b = "# Generated by iptables-save v1.8.9 on Thu\n*filter\n:INPUT ACCEPT [99:9000]\nCOMMIT\n";
        assert_eq!(rules(a), rules(b));
        assert_ne!(rules(a), rules("*filter\n:INPUT DROP [0:0]\nCOMMIT\n"));
    }

    #[test]
    fn inside_the_sandbox_the_node_name_is_the_kubelets_loopback_address() {
        assert!(ENTER.contains(&format!("127.0.0.1 {}", crate::pki::NODE_NAME)));
    }

    #[test]
    fn outside_the_sandbox_the_node_refuses_to_start() {
        let err = root().expect_err("tests run outside the sandbox").to_string();
        assert!(err.contains("never on the host's network"), "{err}");
    }
}
