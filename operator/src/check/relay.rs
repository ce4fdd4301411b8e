//! The temporary MailDomain and capture Relay, and the config the leader renders for it.

use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

use super::{CheckError, CheckSettings, until};
use crate::{
    conditions,
    crd::{MailDomain, Relay},
    render,
};

/// Field manager of the temporary objects.
const MANAGER: &str = "mailroom-check";

/// Creates (or takes over, after an interrupted run) the MailDomain and the Relay, waits until
/// the Relay is Ready for its current generation, and validates its rendered config with the
/// sidecar's own parser. Returns the config's size.
pub async fn create_and_render(client: &Client, s: &CheckSettings) -> Result<usize, CheckError> {
    let apply = PatchParams::apply(MANAGER).force();
    // ed25519: no RSA key generation to wait for. `.invalid` (RFC 2606): never a real domain.
    let domain = json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": s.name, "labels": {"app.kubernetes.io/component": "helm-test"}},
        "spec": {
            "domain": format!("{}.mailroom-check.invalid", s.name),
            "dkim": {"algorithm": "ed25519"},
            "allowedNamespaces": {"names": [s.namespace]},
        },
    });
    Api::<MailDomain>::all(client.clone())
        .patch(&s.name, &apply, &Patch::Apply(&domain))
        .await
        .map_err(CheckError::kube(format!("creating MailDomain {}", s.name)))?;
    let relay = json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "Relay",
        "metadata": {"name": s.name, "labels": {"app.kubernetes.io/component": "helm-test"}},
        "spec": {"domains": [s.name], "delivery": {"capture": {}}},
    });
    let relays: Api<Relay> = Api::namespaced(client.clone(), &s.namespace);
    relays
        .patch(&s.name, &apply, &Patch::Apply(&relay))
        .await
        .map_err(CheckError::kube(format!("creating Relay {}", s.name)))?;

    let what = format!("Relay {}/{} Ready", s.namespace, s.name);
    until(&what, s.timeout, || async {
        let r = relays
            .get(&s.name)
            .await
            .map_err(CheckError::kube("reading the Relay"))?;
        let status = r.status.unwrap_or_default();
        let ready = conditions::get(&status.conditions, conditions::READY);
        Ok(match ready {
            Some(c) if c.status == "True" && status.observed_generation == r.metadata.generation => Ok(()),
            Some(c) => Err(format!("Ready={} ({}: {})", c.status, c.reason, c.message)),
            None => Err("no status yet: is an operator replica the leader?".into()),
        })
    })
    .await?;

    let name = render::config_map_name(&s.name);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &s.namespace)
        .get(&name)
        .await
        .map_err(CheckError::kube(format!("reading ConfigMap {name}")))?;
    let text = cm
        .data
        .and_then(|d| d.get(render::CONFIG_KEY).cloned())
        .ok_or_else(|| CheckError::Rendered {
            relay: s.name.clone(),
            problem: format!("ConfigMap {name} has no {}", render::CONFIG_KEY),
        })?;
    mailroom_config::Config::parse(Path::new(render::CONFIG_KEY), &text).map_err(|e| {
        CheckError::Rendered {
            relay: s.name.clone(),
            problem: e.to_string(),
        }
    })?;
    Ok(text.len())
}

/// Deletes the Relay (its children go with it) and the MailDomain, and waits until both are gone.
pub async fn remove(client: &Client, s: &CheckSettings) -> Result<(), CheckError> {
    let relays: Api<Relay> = Api::namespaced(client.clone(), &s.namespace);
    let domains: Api<MailDomain> = Api::all(client.clone());
    let dp = DeleteParams::foreground();
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    };
    gone(relays.delete(&s.name, &dp).await.map(|_| ()))
        .map_err(CheckError::kube(format!("deleting Relay {}", s.name)))?;
    gone(domains.delete(&s.name, &dp).await.map(|_| ()))
        .map_err(CheckError::kube(format!("deleting MailDomain {}", s.name)))?;
    until("the temporary objects deleted", s.timeout, || async {
        let relay = relays
            .get_opt(&s.name)
            .await
            .map_err(CheckError::kube("reading the Relay"))?;
        let domain = domains
            .get_opt(&s.name)
            .await
            .map_err(CheckError::kube("reading the MailDomain"))?;
        Ok(match (relay, domain) {
            (None, None) => Ok(()),
            _ => Err("still present".into()),
        })
    })
    .await
}
