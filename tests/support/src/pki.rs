//! Throwaway PKI for one control plane: a CA, the apiserver serving certificate, the service-account
//! signing key and client certificates, all written as PEM files into the control plane's directory.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// SANs of the apiserver certificate: loopback, the `kubernetes` Service's cluster IP (pods on
/// the test node reach it there), and the in-cluster names a kubeconfig might use.
const APISERVER_SANS: &[&str] = &[
    "127.0.0.1",
    "10.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Paths of the files `generate` wrote, plus the client material kept in memory for kubeconfigs.
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) admin: ClientCert,
    /// The test node's kubelet (`system:node:<NODE_NAME>` in `system:nodes`).
    pub(crate) node: ClientCert,
}

/// The name the test node registers as; its kubelet's client certificate names it.
pub(crate) const NODE_NAME: &str = "mailroom-node";

/// A client certificate and its PKCS#8 key, both PEM.
#[derive(Debug, Clone)]
pub(crate) struct ClientCert {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// File names inside the `pki/` directory, shared with the apiserver flags.
pub(crate) const CA_CRT: &str = "ca.crt";
pub(crate) const SERVING_CRT: &str = "apiserver.crt";
pub(crate) const SERVING_KEY: &str = "apiserver.key";
pub(crate) const SA_KEY: &str = "sa.key";
pub(crate) const SA_PUB: &str = "sa.pub";

/// Generates the CA, serving certificate, SA key and a cluster-admin client certificate into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    let ca = ca()?;

    let mut serving =
        CertificateParams::new(APISERVER_SANS.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // ES256; the apiserver reads a private key file as its own public key too.
    let sa_key = KeyPair::generate()?;

    // system:masters is bound to cluster-admin by the bootstrap RBAC policy.
    let admin = client_cert(&ca, "mailroom-test-admin", "system:masters")?;
    let node = client_cert(&ca, &format!("system:node:{NODE_NAME}"), "system:nodes")?;

    write(dir, CA_CRT, &ca.pem())?;
    write(dir, SERVING_CRT, &serving_cert.pem())?;
    write(dir, SERVING_KEY, &serving_key.serialize_pem())?;
    write(dir, SA_KEY, &sa_key.serialize_pem())?;
    write(dir, SA_PUB, &sa_key.public_key_pem())?;
    Ok(Pki {
        ca_pem: ca.pem(),
        admin,
        node,
    })
}

fn ca() -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "mailroom-test-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A client certificate: the apiserver takes CN as the user name and O as a group. (rcgen keeps one
/// value per attribute type, so one group.)
fn client_cert(ca: &CertifiedIssuer<'_, KeyPair>, user: &str, group: &str) -> Result<ClientCert> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    params.distinguished_name.push(DnType::OrganizationName, group);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))
}
