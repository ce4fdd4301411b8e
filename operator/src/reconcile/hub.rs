//! The hub part of a Relay reconcile (docs/hub.md): its certificate and credential Secrets, its
//! ConfigMap, StatefulSet, Service, PodDisruptionBudget and NetworkPolicy, and `HubReady` from the
//! StatefulSet's status. Removing `spec.hub` deletes the workload; the volumes stay (they may
//! hold mail), and so do the two Secrets and the ConfigMap (small, and the operator may not
//! delete Secrets).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, ResourceExt, api::DeleteParams};
use mailroom_config::Config;

use super::{Context, relay::with_type};
use crate::{
    Error, Result,
    apply::apply,
    conditions::{Cond, HUB_READY},
    crd::{HubStatus, Relay},
    events::Reason,
    render::{
        self, CONFIG_KEY,
        hub::{self, CA_KEY, PASSWORD_KEY, USERNAME_KEY},
    },
    webhook::certs::{self, Material, Plan},
};

/// Lifetime of the hub's serving certificate; renewed when a third is left.
const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of the hub's CA.
const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// User name in the credential (the password is what matters; the name says whose it is).
const USERNAME_PREFIX: &str = "relay";

/// Applies the hub of `relay` (rendered from its sidecars' `config`), or removes its workload
/// when `spec.hub` is gone. Returns what goes into status.
pub async fn converge(
    relay: &Relay,
    ns: &str,
    ctx: &Context,
    config: &Config,
    meta: &(dyn Fn(String) -> ObjectMeta + Sync),
    had_hub: bool,
) -> Result<Option<(HubStatus, Cond)>> {
    let name = relay.name_any();
    let Some(spec) = &relay.spec.hub else {
        if had_hub {
            remove(ctx, ns, &name).await?;
        }
        return Ok(None);
    };
    let hub_config = hub::config(config, &name, ns, spec)?;
    let material = certificate(ctx, ns, &name, meta).await?;
    credential(ctx, ns, &name, &material, meta).await?;
    let text = render::to_yaml(relay, &hub_config)?;
    let cm = ConfigMap {
        metadata: meta(hub::name(&name)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), text)])),
        ..Default::default()
    };
    apply(
        &Api::namespaced(ctx.client.clone(), ns),
        &with_type(cm, "v1", "ConfigMap")?,
        "apply hub ConfigMap",
    )
    .await?;
    let w = &ctx.settings.webhook;
    let objects = hub::objects(relay, &w.sidecar_image, &w.sidecar_log_format, meta);
    let client = ctx.client.clone();
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(objects.service_account, "v1", "ServiceAccount")?,
        "apply hub ServiceAccount",
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(objects.role, "rbac.authorization.k8s.io/v1", "Role")?,
        "apply hub Role",
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(
            objects.role_binding,
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
        )?,
        "apply hub RoleBinding",
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(objects.service, "v1", "Service")?,
        "apply hub Service",
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(objects.disruption_budget, "policy/v1", "PodDisruptionBudget")?,
        "apply hub PodDisruptionBudget",
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &with_type(objects.network_policy, "networking.k8s.io/v1", "NetworkPolicy")?,
        "apply hub NetworkPolicy",
    )
    .await?;
    let sts = apply(
        &Api::namespaced(client, ns),
        &with_type(objects.stateful_set, "apps/v1", "StatefulSet")?,
        "apply hub StatefulSet",
    )
    .await?;
    let replicas = spec.replicas.unwrap_or(hub::DEFAULT_REPLICAS);
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let status = HubStatus {
        service: hub::name(&name),
        replicas,
        ready_replicas: ready,
    };
    Ok(Some((status, readiness(ns, &name, replicas, ready))))
}

/// `HubReady`: one Ready hub pod is enough to take hand-offs.
pub fn readiness(ns: &str, name: &str, replicas: u32, ready: u32) -> Cond {
    let msg = format!("{ready}/{replicas} hub pods of Relay {ns}/{name} are Ready");
    if ready > 0 {
        Cond::yes(HUB_READY, Reason::HubReady, msg)
    } else {
        Cond::no(HUB_READY, Reason::HubNotReady, msg)
    }
}

/// Keeps the serving certificate valid for the hub's names, issuing it (and its CA) as needed.
async fn certificate(
    ctx: &Context,
    ns: &str,
    name: &str,
    meta: &(dyn Fn(String) -> ObjectMeta + Sync),
) -> Result<Material> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = hub::tls_secret_name(name);
    let current = api
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("get hub TLS Secret"))?
        .and_then(|s| s.data)
        .and_then(|d| Material::from_data(&d));
    let names = hub::cert_names(name, ns);
    let now = super::now().0.as_second();
    let plan = certs::plan(current.as_ref(), &names, now, CERT_VALIDITY, CA_VALIDITY)
        .map_err(|e| Error::HubCertificate(e.to_string()))?;
    let material = match (plan, current) {
        (Plan::Keep, Some(m)) => return Ok(m),
        (Plan::Keep, None) => return Err(Error::HubCertificate("no certificate to keep".into())),
        (Plan::Write { material, .. }, _) => material,
    };
    let secret = Secret {
        metadata: meta(secret_name),
        type_: Some("Opaque".into()),
        data: Some(material.to_data()),
        ..Default::default()
    };
    apply(&api, &with_type(secret, "v1", "Secret")?, "apply hub TLS Secret").await?;
    Ok(material)
}

/// The Relay's hand-off credential: made once, kept; the CA follows the certificate.
async fn credential(
    ctx: &Context,
    ns: &str,
    name: &str,
    material: &Material,
    meta: &(dyn Fn(String) -> ObjectMeta + Sync),
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = hub::auth_secret_name(name);
    let current = api
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("get hub credential Secret"))?
        .and_then(|s| s.data)
        .unwrap_or_default();
    let kept = |key: &str| current.get(key).filter(|v| !v.0.is_empty()).cloned();
    let ca = ByteString(material.ca_bundle.clone().into_bytes());
    let (user, password) = match (kept(USERNAME_KEY), kept(PASSWORD_KEY)) {
        (Some(_), Some(_)) if current.get(CA_KEY) == Some(&ca) => return Ok(()),
        (Some(user), Some(password)) => (user, password),
        _ => (
            ByteString(format!("{USERNAME_PREFIX}-{ns}-{name}").into_bytes()),
            ByteString(random_password()?.into_bytes()),
        ),
    };
    let secret = Secret {
        metadata: meta(secret_name),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (USERNAME_KEY.to_string(), user),
            (PASSWORD_KEY.to_string(), password),
            (CA_KEY.to_string(), ca),
        ])),
        ..Default::default()
    };
    apply(
        &api,
        &with_type(secret, "v1", "Secret")?,
        "apply hub credential Secret",
    )
    .await?;
    Ok(())
}

/// 32 random bytes as hex (256 bits, from the system's generator).
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::HubCertificate("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Deletes the hub's workload objects and its account (not its volumes, Secrets or ConfigMap).
async fn remove(ctx: &Context, ns: &str, name: &str) -> Result<()> {
    let hub = hub::name(name);
    let c = &ctx.client;
    delete::<StatefulSet>(c, ns, &hub, "delete hub StatefulSet").await?;
    delete::<Service>(c, ns, &hub, "delete hub Service").await?;
    delete::<PodDisruptionBudget>(c, ns, &hub, "delete hub PodDisruptionBudget").await?;
    delete::<NetworkPolicy>(c, ns, &hub, "delete hub NetworkPolicy").await?;
    delete::<RoleBinding>(c, ns, &hub, "delete hub RoleBinding").await?;
    delete::<Role>(c, ns, &hub, "delete hub Role").await?;
    delete::<ServiceAccount>(c, ns, &hub, "delete hub ServiceAccount").await
}

/// Deletes `ns/name` of kind `K`; one already gone is fine.
async fn delete<K>(client: &kube::Client, ns: &str, name: &str, step: &'static str) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match Api::<K>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(step)(e)),
    }
}
