//! Command lines of etcd, kube-apiserver and kube-controller-manager for one control plane directory
//! (`pki/`, `etcd/`, `kubeconfig` inside it). Everything listens on 127.0.0.1 only.

use std::path::Path;

use crate::pki::{CA_CRT, SA_KEY, SA_PUB, SERVING_CRT, SERVING_KEY};

/// Loopback ports of one control plane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) apiserver: u16,
    pub(crate) etcd_client: u16,
    pub(crate) etcd_peer: u16,
}

pub(crate) fn etcd(dir: &Path, ports: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=default".into(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        // Throwaway data: durability costs start-up time and buys nothing.
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

pub(crate) fn apiserver(dir: &Path, ports: &Ports) -> Vec<String> {
    let pki = |name: &str| dir.join("pki").join(name).display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", dir.join("apiserver").display()),
        format!("--tls-cert-file={}", pki(SERVING_CRT)),
        format!("--tls-private-key-file={}", pki(SERVING_KEY)),
        format!("--client-ca-file={}", pki(CA_CRT)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", pki(SA_PUB)),
        format!("--service-account-signing-key-file={}", pki(SA_KEY)),
        // Required for Service validation. Nothing routes to it: no kube-proxy, and see below.
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--authorization-mode=RBAC".into(),
        // All on by default; named so that a change of defaults cannot silently drop them.
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,\
         MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
            .into(),
        "--allow-privileged=true".into(),
        // No `kubernetes` Service endpoints to maintain, and webhook/APIService services resolve through
        // their Endpoints, never the unroutable cluster IP. Tests register webhooks by URL.
        "--endpoint-reconciler-type=none".into(),
        "--enable-aggregator-routing=true".into(),
        "--profiling=false".into(),
    ]
}

pub(crate) fn controller_manager(dir: &Path, controllers: &[String]) -> Vec<String> {
    let pki = |name: &str| dir.join("pki").join(name).display().to_string();
    vec![
        format!("--kubeconfig={}", dir.join("kubeconfig").display()),
        format!("--controllers={}", controllers.join(",")),
        "--leader-elect=false".into(),
        // No HTTPS endpoint: nothing scrapes it, and it would need another port.
        "--secure-port=0".into(),
        format!("--root-ca-file={}", pki(CA_CRT)),
        format!("--service-account-private-key-file={}", pki(SA_KEY)),
    ]
}

pub(crate) fn scheduler(dir: &Path) -> Vec<String> {
    let kubeconfig = dir.join("kubeconfig").display().to_string();
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--leader-elect=false".into(),
        // No HTTPS endpoint: nothing scrapes it, and it would need another port.
        "--secure-port=0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports = Ports {
        apiserver: 1,
        etcd_client: 2,
        etcd_peer: 3,
    };

    #[test]
    fn every_url_and_bind_address_is_loopback() {
        let dir = Path::new("/cp");
        let all = [etcd(dir, &PORTS), apiserver(dir, &PORTS)].concat();
        for flag in all.iter().filter(|f| f.contains("://") || f.contains("address")) {
            let is_loopback = flag.contains("127.0.0.1") || flag.contains("kubernetes.default.svc");
            assert!(is_loopback, "{flag}");
        }
    }

    #[test]
    fn apiserver_enforces_rbac_pod_security_and_webhooks() {
        let args = apiserver(Path::new("/cp"), &PORTS).join(" ");
        for want in [
            "--authorization-mode=RBAC",
            "PodSecurity",
            "MutatingAdmissionWebhook",
            "ValidatingAdmissionWebhook",
        ] {
            assert!(args.contains(want), "missing {want}");
        }
    }
}
