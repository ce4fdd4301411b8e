//! The children a Relay reconcile applied and nobody has changed since: applying them again
//! would change nothing, so the reconcile skips it.
//!
//! A Relay's own writes wake it again (its ConfigMap and DKIM Secret watches, its status), and
//! each of those reconciles re-applied both children: 2,000 of the 7,500 requests of a cold start
//! with 1,000 Relays (docs/benchmarks.md). The rule here skips an apply only when the operator
//! itself wrote exactly this content, and the cached child still has the `resourceVersion` that
//! write returned: any other write (an edit, a delete, another field manager) changes it, and the
//! cache that holds it is filled by the watch that wakes the Relay on that change, so the repair
//! is never skipped. After a restart nothing is remembered, and every child is applied once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Resource,
    core::PartialObjectMeta,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};
use sha2::{Digest, Sha256};

use crate::{Error, Result, crd::Relay};

/// What the operator last applied for one Relay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// SHA-256 of the applied ConfigMap and Secret (kept in memory only).
    stamp: [u8; 32],
    /// The `resourceVersion`s the applies returned.
    config_map: String,
    secret: String,
}

/// The record of applied children, and caches of the children's metadata.
#[derive(Clone)]
pub struct Written {
    memo: Arc<Mutex<HashMap<ObjectRef<Relay>, Entry>>>,
    relays: Store<Relay>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    secrets: Store<PartialObjectMeta<Secret>>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written").finish_non_exhaustive()
    }
}

/// The children a Relay renders, as applied.
#[derive(Debug)]
pub struct Children<'a> {
    /// The sidecar config.
    pub config_map: &'a ConfigMap,
    /// The DKIM keys.
    pub secret: &'a Secret,
}

impl Children<'_> {
    /// A digest of both objects as they would be applied.
    pub fn stamp(&self) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        for part in [
            serde_json::to_vec(self.config_map),
            serde_json::to_vec(self.secret),
        ] {
            let bytes = part.map_err(Error::serde("serialize child"))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        Ok(h.finalize().into())
    }
}

impl Written {
    /// An empty record for the Relays in `relays`, and the writers of the ConfigMap and Secret
    /// metadata caches (Relay children: `relay::children()`).
    pub fn new(
        relays: Store<Relay>,
    ) -> (
        Self,
        Writer<PartialObjectMeta<ConfigMap>>,
        Writer<PartialObjectMeta<Secret>>,
    ) {
        let (config_maps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let written = Self {
            memo: Arc::default(),
            relays,
            config_maps,
            secrets,
        };
        (written, cm_writer, secret_writer)
    }

    /// Whether both children of `relay` are what the operator last applied with `stamp`, untouched
    /// since.
    pub fn current(&self, relay: &ObjectRef<Relay>, children: &Children<'_>, stamp: &[u8; 32]) -> bool {
        let Some(entry) = self.lock().get(relay).cloned() else {
            return false;
        };
        entry.stamp == *stamp
            && cached_version(&self.config_maps, children.config_map).as_deref()
                == Some(entry.config_map.as_str())
            && cached_version(&self.secrets, children.secret).as_deref() == Some(entry.secret.as_str())
    }

    /// Records what the applies of `relay`'s children returned. Entries of Relays that are gone
    /// are dropped once there are more entries than Relays (plus some slack), so the record
    /// stays bounded by the Relays that exist.
    pub fn record(&self, relay: ObjectRef<Relay>, stamp: [u8; 32], applied: (&ConfigMap, &Secret)) {
        let (Some(config_map), Some(secret)) = (
            applied.0.meta().resource_version.clone(),
            applied.1.meta().resource_version.clone(),
        ) else {
            return;
        };
        let mut memo = self.lock();
        memo.insert(
            relay,
            Entry {
                stamp,
                config_map,
                secret,
            },
        );
        if memo.len() > self.relays.len() + 64 {
            memo.retain(|r, _| self.relays.get(r).is_some());
        }
    }

    /// Forgets what was applied for `relay`: its children were changed outside [`Self::record`]
    /// (a domain withdrawn from the last good ones), so the next render is applied whatever its
    /// stamp.
    pub fn forget(&self, relay: &ObjectRef<Relay>) {
        self.lock().remove(relay);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Relay>, Entry>> {
        // A panic while holding the lock leaves a map that is still consistent: every insert
        // and remove is a single call.
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `resourceVersion` of `obj` as `store` holds it.
fn cached_version<K>(store: &Store<PartialObjectMeta<K>>, obj: &K) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let meta = obj.meta();
    let key = ObjectRef::new(meta.name.as_deref()?).within(meta.namespace.as_deref()?);
    store.get(&key)?.metadata.resource_version.clone()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;

    use super::*;

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            resource_version: Some(version.into()),
            ..Default::default()
        }
    }

    fn config_map(version: &str, text: &str) -> ConfigMap {
        ConfigMap {
            metadata: meta("out-sidecar", version),
            data: Some([("sidecar.yaml".to_string(), text.to_string())].into()),
            ..Default::default()
        }
    }

    fn secret(version: &str) -> Secret {
        Secret {
            metadata: meta("out-dkim", version),
            ..Default::default()
        }
    }

    fn cached<K: Resource<DynamicType = ()> + Clone>(obj: &K) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            types: None,
            metadata: obj.meta().clone(),
            _phantom: Default::default(),
        }
    }

    fn relay(name: &str) -> Relay {
        let mut r = Relay::new(
            name,
            serde_json::from_str(r#"{"domains": ["d"], "delivery": {"capture": {}}}"#).expect("a Relay spec"),
        );
        r.metadata.namespace = Some("shop".into());
        r
    }

    #[test]
    fn only_an_untouched_child_with_the_same_content_is_skipped() {
        let (relays, mut relays_w) = reflector::store::<Relay>();
        relays_w.apply_watcher_event(&Event::Apply(relay("out")));
        let (written, mut cms, mut secrets) = Written::new(relays);
        let key = ObjectRef::from_obj(&relay("out"));
        let (cm, s) = (config_map("", "a"), secret(""));
        let children = Children {
            config_map: &cm,
            secret: &s,
        };
        let stamp = children.stamp().expect("stamp");
        assert!(!written.current(&key, &children, &stamp), "never applied");

        // The applies returned versions 10 and 11; the watches have not delivered them yet.
        written.record(key.clone(), stamp, (&config_map("10", "a"), &secret("11")));
        assert!(
            !written.current(&key, &children, &stamp),
            "the cache has not seen the write"
        );
        cms.apply_watcher_event(&Event::Apply(cached(&config_map("10", "a"))));
        secrets.apply_watcher_event(&Event::Apply(cached(&secret("11"))));
        assert!(written.current(&key, &children, &stamp), "written and untouched");

        // New content is applied, whatever the cache holds.
        let other = config_map("", "b");
        let changed = Children {
            config_map: &other,
            secret: &s,
        };
        assert!(!written.current(&key, &changed, &changed.stamp().expect("stamp")));

        // Someone else wrote the ConfigMap: repaired.
        cms.apply_watcher_event(&Event::Apply(cached(&config_map("12", "a"))));
        assert!(
            !written.current(&key, &children, &stamp),
            "edited by another writer"
        );
        cms.apply_watcher_event(&Event::Apply(cached(&config_map("10", "a"))));
        assert!(written.current(&key, &children, &stamp));

        // The Secret was deleted: recreated.
        secrets.apply_watcher_event(&Event::Delete(cached(&secret("11"))));
        assert!(!written.current(&key, &children, &stamp), "deleted");
    }

    #[test]
    fn the_record_keeps_only_relays_that_exist() {
        let (relays, mut relays_w) = reflector::store::<Relay>();
        relays_w.apply_watcher_event(&Event::Apply(relay("kept")));
        let (written, _, _) = Written::new(relays);
        for i in 0..200 {
            let key = ObjectRef::from_obj(&relay(&format!("gone-{i}")));
            written.record(key, [0; 32], (&config_map("1", "a"), &secret("2")));
        }
        written.record(
            ObjectRef::from_obj(&relay("kept")),
            [0; 32],
            (&config_map("1", "a"), &secret("2")),
        );
        let memo = written.lock();
        assert!(memo.len() <= 1 + 64, "{} entries for 1 Relay", memo.len());
        assert!(memo.contains_key(&ObjectRef::from_obj(&relay("kept"))));
    }
}
