//! Controllers: `Context`, `run()` wiring both Controllers with their watches, and the shared
//! `error_policy` (spec errors wait for a change, transient errors back off).

pub mod backoff;
pub mod hub;
pub mod mail_domain;
pub mod relay;
pub mod triggers;
pub mod views;
pub mod written;

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Namespace, Pod, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Predicate, PredicateConfig, WatchStreamExt, controller, controller::Action, predicates, reflector,
        reflector::ObjectRef, watcher,
    },
};

use crate::{
    Error,
    apply::patch_status,
    crd::{MailDomain, Relay},
    dns::DnsCheck,
    events::{Events, Notes},
    metrics::Metrics,
    settings::Settings,
};

/// Reconciles in flight at once. Unbounded, a cold start with 1,000 Relays opened a connection
/// (and TLS buffers) per reconcile and generated every DKIM key at once; a few at a time
/// finishes sooner and keeps memory flat. MailDomains may generate an RSA key each (about 60 ms
/// of CPU on a blocking thread), and their Relays wait for them to be Ready: as many at once as
/// Relays, so that a cold start is not held back by a few domains at a time.
const DOMAIN_CONCURRENCY: u16 = 16;
const RELAY_CONCURRENCY: u16 = 16;

/// What every reconcile needs.
#[derive(Clone)]
pub struct Context {
    /// Client with the operator's identity.
    pub client: Client,
    /// Process settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher.
    pub events: Events,
    /// DNS checker.
    pub dns: Arc<dyn DnsCheck>,
    /// Retry delays for transient errors, per object.
    pub backoff: Arc<backoff::Backoff>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Runs both controllers until the returned future is dropped.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    // A MailDomain is reconciled when its spec or annotations (the rotation trigger) change, not
    // when its own status does: every status patch (DNS findings carry `lastChecked`) would
    // otherwise schedule another reconcile, which patches status again.
    let (reader, writer) = reflector::store();
    let own_changes = watcher(Api::<MailDomain>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(triggers::forget_managed_fields)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            PredicateConfig::default(),
        );
    let domains = triggers::controller(own_changes, reader)
        .with_config(controller::Config::default().concurrency(DOMAIN_CONCURRENCY))
        .watches_stream(
            triggers::touched_metadata(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &ctx.settings.namespace),
                watcher::Config::default().labels(mail_domain::KEY_LABEL),
            ),
            |secret| {
                let owner = secret.labels().get(mail_domain::KEY_LABEL).cloned();
                owner.map(|name| ObjectRef::<MailDomain>::new(&name))
            },
        )
        .shutdown_on_signal()
        .run(reconcile_domain, error_policy_domain, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let (reader, writer) = reflector::store();
    let own_changes = triggers::own(
        Api::<Relay>::all(client.clone()),
        watcher::Config::default(),
        writer,
    );
    // What Relay reconciles read comes from caches filled by the streams that wake them.
    let (views, fill) = views::Views::new();
    let (written, config_maps, secrets) = written::Written::new(reader.clone());
    let store = reader.clone();
    let secrets_store = reader.clone();
    let namespace_store = reader.clone();
    let relays = triggers::controller(own_changes, reader)
        .with_config(controller::Config::default().concurrency(RELAY_CONCURRENCY))
        .owns_stream(triggers::reflected(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            relay::children(),
            config_maps,
        ))
        .owns_stream(triggers::reflected(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            relay::children(),
            secrets,
        ))
        // The hub's readiness (`HubReady`) follows its StatefulSet's status.
        .owns_stream(triggers::touched_metadata(
            Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
            relay::children(),
        ))
        // Only changes a Relay renders from wake its Relays: with hundreds of Relays on one
        // MailDomain, each DNS recheck of it would otherwise reconcile all of them.
        .watches_stream(
            triggers::reflected_changes(
                Api::<MailDomain>::all(client.clone()),
                watcher::Config::default(),
                fill.domains,
                what_relays_use,
            ),
            move |md| {
                let name = md.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|r| r.spec.domains.contains(&name))
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        // A Namespace's labels decide which MailDomains it may use (`allowedNamespaces.selector`).
        .watches_stream(
            triggers::reflected(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
                fill.namespaces,
            )
            .predicate_filter(predicates::labels, PredicateConfig::default()),
            move |namespace| {
                let ns = Some(namespace.name_any());
                namespace_store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == ns)
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        // DKIM keys never change once written: this stream only fills the cache.
        .watches_stream(
            triggers::reflected(
                Api::<Secret>::namespaced(client.clone(), &ctx.settings.namespace),
                watcher::Config::default().labels(mail_domain::KEY_LABEL),
                fill.keys,
            ),
            |_| None::<ObjectRef<Relay>>,
        )
        // Names are all a Relay needs of other Secrets: metadata only, so the operator never
        // receives (or holds) the values of every Secret in the cluster.
        .watches_stream(
            triggers::touched_metadata(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                watcher::Config::default(),
            ),
            move |secret| {
                let (ns, name) = (secret.namespace(), secret.name_any());
                secrets_store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == ns && relay::references_secret(r, &name))
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            triggers::reflected(
                Api::<PartialObjectMeta<Pod>>::all(client),
                relay::injected_pods(),
                fill.pods,
            ),
            |pod| {
                let name = pod
                    .labels()
                    .get(relay::RELAY_LABEL)
                    .filter(|n| !n.is_empty())
                    .cloned();
                name.zip(pod.namespace())
                    .map(|(name, ns)| ObjectRef::<Relay>::new(&name).within(&ns))
            },
        )
        .shutdown_on_signal()
        .run(
            reconcile_relay,
            error_policy_relay,
            Arc::new(relay::Shared { ctx, views, written }),
        )
        .for_each(|_| futures::future::ready(()));
    futures::join!(domains, relays);
}

/// A hash of what Relays take from a MailDomain: its spec (by generation), whether it is Ready,
/// and its DKIM keys (selector, fingerprint, Secret; rotation adds and retires keys).
fn what_relays_use(md: &MailDomain) -> Option<u64> {
    let mut h = DefaultHasher::new();
    md.metadata.generation.hash(&mut h);
    if let Some(status) = &md.status {
        let ready = crate::conditions::get(&status.conditions, crate::conditions::READY);
        ready.map(|c| (&c.status, &c.reason)).hash(&mut h);
        serde_json::to_string(&status.dkim).ok().hash(&mut h);
    }
    Some(h.finish())
}

async fn reconcile_domain(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = backoff_key("MailDomain", &md.name_any(), None);
    let result = mail_domain::reconcile(md, ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

async fn reconcile_relay(relay: Arc<Relay>, work: Arc<relay::Shared>) -> Result<Action, Error> {
    let key = backoff_key("Relay", &relay.name_any(), relay.namespace().as_deref());
    let result = relay::reconcile(relay, &work).await;
    if result.is_ok() {
        work.ctx.backoff.succeeded(&key);
    }
    result
}

fn error_policy_domain(md: Arc<MailDomain>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = backoff_key("MailDomain", &md.name_any(), None);
    error_policy("MailDomain", &key, error, &ctx)
}

fn error_policy_relay(relay: Arc<Relay>, error: &Error, work: Arc<relay::Shared>) -> Action {
    let key = backoff_key("Relay", &relay.name_any(), relay.namespace().as_deref());
    error_policy("Relay", &key, error, &work.ctx)
}

fn backoff_key(kind: &str, name: &str, namespace: Option<&str>) -> String {
    format!("{kind}/{}/{name}", namespace.unwrap_or(""))
}

/// Transient errors (spec errors are handled inside reconcile and never reach here) requeue with
/// per-object exponential backoff.
fn error_policy(kind: &str, key: &str, error: &Error, ctx: &Context) -> Action {
    let delay = ctx.backoff.failed(key);
    tracing::warn!(kind, object = key, error = %error, retry_in = ?delay, "reconcile failed");
    ctx.metrics.failure(kind, error.metric_label());
    Action::requeue(delay)
}

/// Ends a reconcile of `obj`: writes `status`, then publishes the reconcile's events. This is the
/// one place either kind publishes, so an event never announces a status that was not written.
async fn write_status<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    status: &impl serde::Serialize,
    notes: Notes,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let written = match serde_json::to_value(status) {
        Ok(value) => patch_status(api, &obj.name_any(), value).await,
        Err(e) => Err(Error::serde("serialize status")(e)),
    };
    ctx.events.publish(obj, notes.outgoing(written.is_ok())).await;
    written
}

/// Current time as a `metav1.Time`.
pub(crate) fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Reason;

    #[test]
    fn serde_failures_are_transient_and_labelled_on_their_own() {
        let source = serde_json::from_str::<serde_json::Value>("{").expect_err("truncated JSON");
        let error = Error::serde("serialize status")(source);
        assert!(!error.is_spec_error(), "a serde failure goes to error_policy");
        assert_eq!(error.reason(), Reason::ApplyFailed);
        assert_eq!(error.metric_label(), "serde");
        assert!(
            error.to_string().starts_with("serialize status failed: "),
            "{error}"
        );
    }
}
