//! The test node's configuration files, as pure functions of its directory and addresses:
//! containerd's TOML, the CNI network (a bridge with host-local addresses inside the node's own
//! network namespace) and the KubeletConfiguration.

use std::{net::Ipv4Addr, path::Path};

/// Where one node's files and sockets live, and how it is reached.
#[derive(Debug, Clone)]
pub(crate) struct Layout<'a> {
    /// The node's directory (containerd root and state, kubelet root, CNI, logs).
    pub(crate) dir: &'a Path,
    /// The pod bridge's name in the node's network namespace.
    pub(crate) bridge: &'a str,
    /// The pod subnet (`/24`); its `.1` is the bridge, the node IP and the pods' gateway.
    pub(crate) subnet: Ipv4Addr,
    /// The kubelet's cgroup root (a cgroup made for this node).
    pub(crate) cgroup_root: &'a str,
    /// The kubelet's HTTPS port and healthz port, on loopback.
    pub(crate) kubelet_ports: (u16, u16),
}

// === impl Layout ===

impl Layout<'_> {
    /// The bridge's address: the node IP, the pods' gateway and where peers listen for pods.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    pub(crate) fn socket(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }
}

/// containerd 1.6 (config version 2): private root, state and socket, cgroupfs, our sandbox
/// image, CNI from `/usr/lib/cni` (Debian) with our config directory.
pub(crate) fn containerd(layout: &Layout<'_>, sandbox_image: &str) -> String {
    let d = layout.dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
# Snapshotters that would probe for filesystems we do not have.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Root here lacks CAP_SYS_RESOURCE: without this runc fails with "can't get final child's
  # PID from pipe: EOF" when it raises a container's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  # Images come from `ctr images import`; a pull would need a registry.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
"#,
        socket = layout.socket(),
    )
}

/// The pod network: one bridge in the node's network namespace, addresses from host-local, the
/// bridge as gateway. No masquerade and no route out: pod traffic stays in the namespace.
pub(crate) fn cni(layout: &Layout<'_>) -> serde_json::Value {
    let subnet = layout.subnet;
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "mailroom-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{subnet}/24"), "gateway": layout.gateway().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": layout.dir.join("cni/ipam").display().to_string(),
                }
            }
        ]
    })
}

/// Below this much free disk the kubelet evicts pods (`evictionHard`).
pub(crate) const EVICTION_DISK_FREE: &str = "256Mi";

/// The KubeletConfiguration: cgroupfs under our own cgroup root, no host iptables chains, image
/// GC and eviction that never fire on a busy shared machine, the HTTPS API on loopback only.
pub(crate) fn kubelet(layout: &Layout<'_>) -> serde_json::Value {
    let d = layout.dir;
    let path = |p: &str| d.join(p).display().to_string();
    let (port, healthz) = layout.kubelet_ports;
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": format!("unix://{}", layout.socket()),
        "imageServiceEndpoint": format!("unix://{}", layout.socket()),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "cgroupsPerQOS": true,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": false,
        // The kubelet would otherwise add KUBE-* chains; there is no kube-proxy to need them.
        "makeIPTablesUtilChains": false,
        "podLogsDir": path("pod-logs"),
        "volumePluginDir": path("volume-plugins"),
        "resolvConf": path("resolv.conf"),
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        // Reached only from inside the node's network namespace, on loopback.
        "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
        "authorization": {"mode": "AlwaysAllow"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // Absolute, not a share of the host's disk: 1 % of a 252 GB disk is 2.5 GB, and a
        // machine with less free than that (a large build tree beside the run) saw every pod
        // evicted for ephemeral-storage. `isolation::check_disk` asks for more than this.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": EVICTION_DISK_FREE,
                         "imagefs.available": EVICTION_DISK_FREE, "nodefs.inodesFree": "1%"},
        // Pod updates (ConfigMap/Secret volumes, status) reach the node within a few seconds.
        "syncFrequency": "5s",
        "nodeStatusUpdateFrequency": "2s",
        // emptyDir usage (for sizeLimit evictions) is measured this often; the default is 1 min.
        "volumeStatsAggPeriod": "2s",
        "serializeImagePulls": false,
        "maxPods": 20,
        "shutdownGracePeriod": "0s",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout<'static> {
        Layout {
            dir: Path::new("/tmp/n"),
            bridge: "mr0",
            subnet: Ipv4Addr::new(10, 244, 0, 0),
            cgroup_root: "/mailroom-node-x/node-0",
            kubelet_ports: (10250, 10248),
        }
    }

    #[test]
    fn containerd_keeps_everything_under_the_node_directory() {
        let toml = containerd(&layout(), "mailroom.test/pause:1");
        for line in toml
            .lines()
            .filter(|l| l.contains('/') && !l.trim_start().starts_with('#'))
        {
            let ok = line.contains("/tmp/n/") || line.contains("/usr/lib/cni") || line.contains("pause");
            assert!(ok, "{line}");
        }
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("sandbox_image = \"mailroom.test/pause:1\""));
    }

    #[test]
    fn kubelet_serves_on_loopback_and_leaves_host_iptables_alone() {
        let config = kubelet(&layout());
        assert_eq!(config["address"], "127.0.0.1");
        assert_eq!(config["healthzBindAddress"], "127.0.0.1");
        assert_eq!(config["makeIPTablesUtilChains"], false);
        assert_eq!(config["cgroupRoot"], "/mailroom-node-x/node-0");
    }

    #[test]
    fn disk_eviction_thresholds_are_absolute_and_below_what_a_run_checks_for() {
        let config = kubelet(&layout());
        for signal in ["nodefs.available", "imagefs.available"] {
            let value = config["evictionHard"][signal].as_str().expect(signal);
            let mib: u64 = value
                .strip_suffix("Mi")
                .expect("in Mi")
                .parse()
                .expect("a number");
            assert!(
                mib << 20 < crate::node::isolation::MIN_FREE_DISK / 2,
                "{signal} {value}"
            );
        }
    }

    #[test]
    fn pods_get_addresses_on_the_bridge_and_no_masquerade() {
        let net = cni(&layout());
        assert_eq!(net["plugins"][0]["ipMasq"], false);
        assert_eq!(net["plugins"][0]["ipam"]["ranges"][0][0]["gateway"], "10.244.0.1");
    }
}
