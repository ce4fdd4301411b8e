//! A domain the Relay may no longer send as leaves its sidecars at once.
//!
//! When a Relay cannot be rendered, its last good children stay, so that a passing problem (a
//! MailDomain's key being restored, a credentials Secret being replaced) never stops mail that
//! was flowing. A revoked grant or a deleted MailDomain is different: it is the platform team
//! taking a domain away. So whatever else is wrong, the last good children keep only the
//! domains the Relay's namespace is still granted: the withdrawn ones leave the rendered config
//! (the sidecars refuse them with `550 5.7.1` after their next reload) and their keys leave the
//! `<relay>-dkim` Secret.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{Api, ResourceExt, api::ObjectMeta, runtime::reflector::ObjectRef};
use mailroom_config::Config;

use super::{Shared, allows, with_type};
use crate::{Error, Result, apply::apply, crd::Relay, render};

/// What the Relay's namespace is still granted: the domains, and the names of their keys in the
/// `<relay>-dkim` Secret (every key of a rotation).
#[derive(Debug, Default, PartialEq)]
pub struct Granted {
    /// `spec.domain` of each MailDomain that exists and allows the namespace.
    pub domains: BTreeSet<String>,
    /// `<domain>.<selector>.key` of each of their keys.
    pub keys: BTreeSet<String>,
}

/// Removes from `config` and `keys` what is not in `granted`; returns the withdrawn domains, in
/// the config's order. Pure: the caller reads and writes the objects.
pub fn strip(config: &mut Config, keys: &mut BTreeMap<String, ByteString>, granted: &Granted) -> Vec<String> {
    let mut withdrawn = Vec::new();
    config.domains.retain(|d| {
        let keep = granted.domains.contains(&d.domain);
        if !keep {
            withdrawn.push(d.domain.clone());
        }
        keep
    });
    keys.retain(|name, _| granted.keys.contains(name));
    withdrawn
}

/// The domains and key names `relay`'s namespace is still granted, whatever their readiness.
pub async fn granted(relay: &Relay, ns: &str, shared: &Shared) -> Result<Granted> {
    let Shared { ctx, views, .. } = shared;
    let labels = views.namespace_labels(ctx, ns).await?;
    let mut out = Granted::default();
    for name in &relay.spec.domains {
        let Some(md) = views.domain(ctx, name).await? else {
            continue;
        };
        if !allows(&md, ns, &labels) {
            continue;
        }
        let domain = &md.spec.domain;
        out.domains.insert(domain.clone());
        if let Some(dkim) = md.status.as_ref().and_then(|s| s.dkim.as_ref()) {
            let others = [&dkim.pending, &dkim.retiring].into_iter().flatten();
            for selector in std::iter::once(&dkim.selector).chain(others.map(|k| &k.selector)) {
                out.keys.insert(render::dkim_key_name(domain, selector));
            }
        }
    }
    Ok(out)
}

/// What [`enforce`] took from the last good children.
#[derive(Debug, Default, PartialEq)]
pub struct Withdrawal {
    /// The domains the sidecars no longer send as.
    pub withdrawn: Vec<String>,
    /// The domains left in the config.
    pub left: Vec<String>,
}

/// Strips the last good children of `relay`, which send as `effective` (its status), down to
/// what its namespace is still granted. `None` when every effective domain is still granted: the
/// children are then not even read, so a Relay that waits for a fix costs no requests.
/// `withdrawn` is empty when the children had already lost the domains (a status write failed).
pub async fn enforce(
    relay: &Relay,
    ns: &str,
    shared: &Shared,
    effective: &[String],
) -> Result<Option<Withdrawal>> {
    let granted = granted(relay, ns, shared).await?;
    if effective.iter().all(|d| granted.domains.contains(d)) {
        return Ok(None);
    }
    let name = relay.name_any();
    let cms: Api<ConfigMap> = Api::namespaced(shared.ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(shared.ctx.client.clone(), ns);
    let Some(cm) = cms
        .get_opt(&render::config_map_name(&name))
        .await
        .map_err(Error::kube("get ConfigMap"))?
    else {
        return Ok(Some(Withdrawal::default()));
    };
    let text = cm.data.as_ref().and_then(|d| d.get(render::CONFIG_KEY));
    let Some(text) = text else {
        return Ok(Some(Withdrawal::default()));
    };
    let mut config: Config = serde_yaml_ng::from_str(text).map_err(Error::Render)?;
    let secret = secrets
        .get_opt(&render::dkim_secret_name(&name))
        .await
        .map_err(Error::kube("get DKIM Secret"))?;
    let mut keys = secret.as_ref().and_then(|s| s.data.clone()).unwrap_or_default();
    let had_keys = keys.len();
    let withdrawn = strip(&mut config, &mut keys, &granted);
    let left = config.domains.iter().map(|d| d.domain.clone()).collect();
    if withdrawn.is_empty() && keys.len() == had_keys {
        return Ok(Some(Withdrawal { withdrawn, left }));
    }
    // A sidecar reads key files only when its config changes, and the new config names none of
    // the keys that go: whichever of the two updates the kubelet delivers first, no reload looks
    // for a key that is gone.
    let keep = |meta: &ObjectMeta| ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
        owner_references: meta.owner_references.clone(),
        ..Default::default()
    };
    let cm = ConfigMap {
        metadata: keep(&cm.metadata),
        data: Some(BTreeMap::from([(
            render::CONFIG_KEY.to_string(),
            render::to_yaml(relay, &config)?,
        )])),
        ..Default::default()
    };
    apply(&cms, &with_type(cm, "v1", "ConfigMap")?, "apply ConfigMap").await?;
    if let Some(secret) = secret {
        let secret = Secret {
            metadata: keep(&secret.metadata),
            type_: secret.type_.clone(),
            data: Some(keys),
            ..Default::default()
        };
        apply(&secrets, &with_type(secret, "v1", "Secret")?, "apply DKIM Secret").await?;
    }
    shared.written.forget(&ObjectRef::from_obj(relay));
    tracing::warn!(
        relay = %format!("{ns}/{name}"),
        withdrawn = %withdrawn.join(","),
        "domains withdrawn from the Relay's sidecars"
    );
    Ok(Some(Withdrawal { withdrawn, left }))
}

#[cfg(test)]
mod tests;
