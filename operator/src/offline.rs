//! Offline mode (`mailroom-operator render -f DIR -o OUT`): MailDomain and Relay YAML in, a local
//! sidecar config, DKIM key files and the DNS records out, without a cluster.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use kube::ResourceExt;
use mailroom_config::Delivery;
use serde::Deserialize;

use crate::{
    crd::{MailDomain, Relay},
    dkim::{self, KeyPair},
    records, render,
};

/// Offline rendering failures.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not a valid MailDomain or Relay.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Rendering or key handling failed.
    #[error("{0}")]
    Operator(#[from] crate::Error),
}

/// What was written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// One rendered config per Relay.
    pub configs: Vec<PathBuf>,
    /// One private key per MailDomain (reused when already present).
    pub keys: Vec<PathBuf>,
    /// One DNS record file per MailDomain.
    pub dns: Vec<PathBuf>,
}

/// Renders every Relay found in the `*.yaml` files of `dir` into `out`.
pub fn render_dir(dir: &Path, out: &Path) -> Result<Summary, OfflineError> {
    let (domains, relays) = load(dir)?;
    let mut summary = Summary::default();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OfflineError::Io { path, source }
    };
    std::fs::create_dir_all(out.join("keys")).map_err(io(out))?;
    let out = std::fs::canonicalize(out).map_err(io(out))?;
    let mut key_files = BTreeMap::new();
    for md in domains.values() {
        let key_path = out.join("keys").join(format!("{}.pem", md.name_any()));
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_private_pem(md.spec.dkim.algorithm, &pem)?,
            Err(_) => {
                let key = KeyPair::generate(md.spec.dkim.algorithm)?;
                std::fs::write(&key_path, &key.private_pem).map_err(io(&key_path))?;
                key
            }
        };
        let mut zone = String::new();
        for r in records::desired(&md.spec, &key.txt_value()) {
            let strings: Vec<String> = dkim::split_txt(&r.value)
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect();
            let _ = writeln!(zone, "{}. 300 IN TXT {}", r.name, strings.join(" "));
        }
        let dns_path = out.join(format!("{}.dns.txt", md.name_any()));
        std::fs::write(&dns_path, zone).map_err(io(&dns_path))?;
        key_files.insert(md.spec.domain.clone(), key_path.clone());
        summary.keys.push(key_path);
        summary.dns.push(dns_path);
    }
    for relay in &relays {
        let ns = relay.namespace().unwrap_or_default();
        let mut mds = Vec::new();
        for name in &relay.spec.domains {
            let md = domains
                .get(name)
                .ok_or(crate::Error::DomainNotFound { domain: name.clone() })?;
            if !md.spec.allowed_namespaces.names.contains(&ns) {
                return Err(crate::Error::DomainNotAllowed {
                    domain: name.clone(),
                    namespace: ns,
                }
                .into());
            }
            mds.push(md.clone());
        }
        let mut config = render::sidecar_config(relay, &mds)?;
        // Local paths instead of the pod's mounts, and an unprivileged port.
        let base = out.join(format!("{ns}-{}", relay.name_any()));
        for d in &mut config.domains {
            if let (Some(dkim), Some(path)) = (d.dkim.as_mut(), key_files.get(&d.domain)) {
                dkim.key_file = path.clone();
            }
        }
        config.spool.dir = base.join("spool");
        if let Delivery::Capture(c) = &mut config.delivery {
            c.dir = base.join("capture");
        }
        config.listen.address.set_port(2525);
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        let path = base.join("sidecar.yaml");
        std::fs::write(&path, render::to_yaml(relay, &config)?).map_err(io(&path))?;
        summary.configs.push(path);
    }
    Ok(summary)
}

/// MailDomains by name and Relays (namespace `default` when unset) from every YAML document.
fn load(dir: &Path) -> Result<(BTreeMap<String, MailDomain>, Vec<Relay>), OfflineError> {
    let entries = std::fs::read_dir(dir).map_err(|source| OfflineError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let (mut domains, mut relays) = (BTreeMap::new(), Vec::new());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| OfflineError::Io {
            path: path.clone(),
            source,
        })?;
        let parse = |message: String| OfflineError::Parse {
            path: path.clone(),
            message,
        };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| parse(e.to_string()))?;
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("MailDomain") => {
                    let md: MailDomain = strict(value).map_err(parse)?;
                    domains.insert(md.name_any(), md);
                }
                Some("Relay") => {
                    let mut relay: Relay = strict(value).map_err(parse)?;
                    relay.metadata.namespace.get_or_insert_with(|| "default".into());
                    relays.push(relay);
                }
                _ => {}
            }
        }
    }
    Ok((domains, relays))
}

/// `value` as a `T`, refusing fields `T` does not have: the apiserver would prune them (a typo
/// such as `listenPrt` silently does nothing), and offline there is no schema to warn first.
fn strict<T: serde::de::DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(value, |path| {
        let path = path.to_string();
        // kube's derived types check these two on their own rather than keep them.
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })
    .map_err(|e| e.to_string())?;
    match unknown.as_slice() {
        [] => Ok(t),
        fields => Err(format!("unknown field(s): {}", fields.join(", "))),
    }
}
