//! Kubeconfig documents for a control plane: cluster-admin by client certificate (also written to
//! `<dir>/kubeconfig` for helm and kube-controller-manager) and ServiceAccounts by bearer token.

use std::path::Path;

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD};
use kube::config::Kubeconfig;
use serde_json::{Value, json};

use crate::pki::ClientCert;

const CLUSTER: &str = "mailroom-test";

/// How a kubeconfig user authenticates.
pub(crate) enum Credentials<'a> {
    Cert(&'a ClientCert),
    Token(&'a str),
}

/// A one-cluster, one-user, one-context kubeconfig for `server`.
pub(crate) fn document(server: &str, ca_pem: &str, user: &str, creds: Credentials<'_>) -> Value {
    let auth = match creds {
        Credentials::Cert(cert) => json!({
            "client-certificate-data": STANDARD.encode(&cert.cert_pem),
            "client-key-data": STANDARD.encode(&cert.key_pem),
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CLUSTER,
            "cluster": { "server": server, "certificate-authority-data": STANDARD.encode(ca_pem) },
        }],
        "users": [{ "name": user, "user": auth }],
        "contexts": [{ "name": CLUSTER, "context": { "cluster": CLUSTER, "user": user } }],
        "current-context": CLUSTER,
    })
}

/// Parses a document from `document` into kube's type.
pub(crate) fn parse(doc: &Value) -> Result<Kubeconfig> {
    let yaml = serde_yaml_ng::to_string(doc)?;
    Kubeconfig::from_yaml(&yaml).context("parsing generated kubeconfig")
}

/// Writes a document from `document` as YAML to `path`.
pub(crate) fn write(doc: &Value, path: &Path) -> Result<()> {
    let yaml = serde_yaml_ng::to_string(doc)?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}
