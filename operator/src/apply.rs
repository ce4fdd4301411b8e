//! Server-side apply helpers: one field manager, owner references, and status patches.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "mailroom.dev/operator";

/// `ownerReferences` entry making `owner` the controller of a child.
pub fn owner_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    owner.controller_owner_ref(&()).ok_or(Error::MissingIdentity)
}

/// Applies `obj` (which must carry apiVersion/kind, name and namespace) with SSA, forcing conflicts.
pub async fn apply<K>(api: &Api<K>, obj: &K, step: &'static str) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(Error::kube(step))
}

/// Applies `status` to the status subresource of `name` with SSA.
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch status"))?;
    Ok(())
}
