//! The watch streams that wake the controllers, each with a backoff of its own.
//!
//! kube-runtime merges a Controller's trigger streams (its own watch, `owns`, `watches`) and puts
//! one backoff on the merged stream: an error from any watch pauses all of them, and every error
//! lengthens the pause for all. After an etcd restart the apiserver's watch cache starts over and
//! each watch gets its own `410 Gone` in turn, so with seven watches the pauses added up to more
//! than two minutes (0.8 s doubling to 30 s plus jitter, reset only after 120 s without an
//! error), during which a Relay created after the restart was not reconciled at all.
//!
//! So every stream here carries the client-go backoff itself (one watch's failures delay only
//! that watch), and the merged stream gets [`Independent`], which never pauses.

use std::{collections::HashMap, fmt::Debug, time::Duration};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        utils::Backoff,
        watcher,
    },
};
use serde::de::DeserializeOwned;

/// The merged trigger stream's backoff: none, because each stream in it backs off by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Independent;

impl Iterator for Independent {
    type Item = Duration;

    // Never `None`: the Controller would take that as "give up" and stop for good.
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for Independent {
    fn reset(&mut self) {}
}

/// A Controller driven by `own` (see [`own`]) whose trigger streams back off each by itself:
/// add them with `owns_stream` / `watches_stream`, built by the functions below.
pub fn controller<K>(
    own: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    reader: Store<K>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    Controller::for_stream(own, reader).trigger_backoff(Independent)
}

/// Drops `metadata.managedFields` before an object is cached: nothing here reads them, and
/// kept for every cached object (tens of nested maps each) they were most of the caches' memory.
pub fn forget_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Every change to `K` (applied or deleted), recorded in `writer`'s store: a Controller's own
/// stream.
pub fn own<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(writer)
        .applied_objects()
}

/// Objects of kind `K` that changed or went away, metadata only: for `owns_stream` (children
/// carry an owner reference) and for mappers that need only names and labels. kube asks the
/// apiserver for metadata only (`as=PartialObjectMetadataList`) for `PartialObjectMeta`.
pub fn touched_metadata<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config).default_backoff().touched_objects()
}

/// Objects of kind `K` that changed or went away, each recorded in `writer` (without its
/// `managedFields`) before it is passed on: a reconcile woken by the change reads it from the
/// store. `K` may be a `PartialObjectMeta` (metadata only).
pub fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(writer)
        .touched_objects()
}

/// [`reflected`], but an object passes only when `changed` hashes it differently from its last
/// version, or when it was deleted. kube's `predicate_filter` would drop the deletion too: a
/// deleted object arrives as its last version, whose hash it has seen (kube-runtime's
/// "Deletion handling"), and a Relay would go on sending as a MailDomain that is gone.
pub fn reflected_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    changed: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let events = watcher(api, config)
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(writer);
    changes(events, changed)
}

/// The filter of [`reflected_changes`], over any event stream. Objects `changed` gives no hash
/// always pass.
fn changes<K, E>(
    events: impl Stream<Item = Result<watcher::Event<K>, E>>,
    changed: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, E>>
where
    K: Resource<DynamicType = ()>,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&ObjectRef::from_obj(&obj));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => match changed(&obj) {
                None => Some(Ok(obj)),
                Some(hash) => {
                    let last = seen.insert(ObjectRef::from_obj(&obj), hash);
                    (last != Some(hash)).then_some(Ok(obj))
                }
            },
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{controller::Action, reflector, watcher::Event};
    use tokio::time::Instant;

    use super::*;

    #[test]
    fn the_merged_stream_never_pauses_and_never_gives_up() {
        let mut b = Independent;
        for _ in 0..1_000 {
            assert_eq!(b.next(), Some(Duration::ZERO));
        }
        b.reset();
        assert_eq!(b.next(), Some(Duration::ZERO));
    }

    fn cm(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm
    }

    /// The Controller's own watch: lists `early`, then `late` appears `after` later.
    fn own_watch(after: Duration) -> impl Stream<Item = Result<Event<ConfigMap>, watcher::Error>> {
        let first = futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(cm("early"))),
            Ok(Event::InitDone),
        ]);
        let late = futures::stream::once(async move {
            tokio::time::sleep(after).await;
            Ok(Event::Apply(cm("late")))
        });
        first.chain(late).chain(futures::stream::pending())
    }

    /// A watch that can never start (say, RBAC forbids it): an error every second, forever, as
    /// its own backoff would space them.
    fn broken_watch() -> impl Stream<Item = Result<ConfigMap, watcher::Error>> {
        futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
            Some((Err(watcher::Error::WatchError(Box::new(status))), ()))
        })
    }

    /// kube-runtime's longest pause between retries, without its jitter so the outcome is fixed.
    struct Fixed(Duration);

    impl Iterator for Fixed {
        type Item = Duration;
        fn next(&mut self) -> Option<Duration> {
            Some(self.0)
        }
    }

    impl Backoff for Fixed {
        fn reset(&mut self) {}
    }

    /// Runs a Controller over `own_watch` plus `broken_watch` (on `shared` backoff, or
    /// [`controller`]'s) until `late` is reconciled; returns how long after it appeared.
    async fn time_to_reconcile_late(shared: Option<Fixed>) -> Duration {
        let appears = Duration::from_secs(45);
        let (reader, writer) = reflector::store();
        let own = own_watch(appears).reflect(writer).applied_objects();
        let c = match shared {
            Some(b) => Controller::for_stream(own, reader).trigger_backoff(b),
            None => controller(own, reader),
        };
        let seen: Arc<OnceLock<Instant>> = Arc::default();
        let start = Instant::now();
        let record = seen.clone();
        let run = c
            .watches_stream(broken_watch(), |_| None::<reflector::ObjectRef<ConfigMap>>)
            .run(
                move |obj: Arc<ConfigMap>, _: Arc<()>| {
                    let record = record.clone();
                    async move {
                        if obj.metadata.name.as_deref() == Some("late") {
                            record.get_or_init(Instant::now);
                        }
                        Ok::<_, kube::Error>(Action::await_change())
                    }
                },
                |_, _, _| Action::await_change(),
                Arc::new(()),
            )
            .for_each(|_| async {});
        let reconciled = async {
            while seen.get().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // Virtual time: the hour only bounds the test, it measures nothing of the machine.
        tokio::select! {
            () = run => panic!("the Controller stopped"),
            () = reconciled => {}
            () = tokio::time::sleep(Duration::from_secs(3_600)) => panic!("late never reconciled"),
        }
        let at = *seen.get().expect("reconciled");
        at - start - appears
    }

    /// One watch that keeps failing must not hold back the others: the Relay created while the
    /// StatefulSet watch is forbidden (or while every watch takes its turn at `410 Gone`) is
    /// reconciled at once. A shared backoff (kube-runtime's default, here without its jitter)
    /// holds it back for the rest of its pause, which this test shows first so that it cannot
    /// pass for the wrong reason.
    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_does_not_delay_the_others() {
        // Errors at 1 s and 32 s pause everything until 31 s and 62 s; `late` appears at 45 s.
        let shared = time_to_reconcile_late(Some(Fixed(Duration::from_secs(30)))).await;
        assert!(
            shared >= Duration::from_secs(10),
            "the scenario should delay a shared-backoff Controller, it took {shared:?}"
        );
        let own = time_to_reconcile_late(None).await;
        assert!(
            own < Duration::from_millis(200),
            "reconciled {own:?} after it appeared"
        );
    }

    /// What a Relay takes from a ConfigMap here: its data.
    fn data(cm: &ConfigMap) -> Option<u64> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        cm.data.hash(&mut h);
        Some(h.finish())
    }

    fn with_data(name: &str, value: &str) -> ConfigMap {
        let mut c = cm(name);
        c.data = Some([("k".to_string(), value.to_string())].into());
        c
    }

    #[tokio::test]
    async fn unchanged_objects_are_dropped_but_deletions_always_pass() {
        let events = futures::stream::iter([
            Ok::<_, ()>(Event::Init),
            Ok(Event::InitApply(with_data("a", "1"))),
            Ok(Event::InitDone),
            // Only its status or resourceVersion changed: nothing a Relay takes.
            Ok(Event::Apply(with_data("a", "1"))),
            Ok(Event::Apply(with_data("a", "2"))),
            Err(()),
            // Deleted as it last was: the predicate has seen this version.
            Ok(Event::Delete(with_data("a", "2"))),
            // Created again with the same content: new to the filter.
            Ok(Event::Apply(with_data("a", "2"))),
        ]);
        let passed: Vec<Result<String, ()>> = changes(events, data)
            .map(|r| r.map(|c| c.data.unwrap_or_default()["k"].clone()))
            .collect()
            .await;
        assert_eq!(
            passed,
            [
                Ok("1".into()),
                Ok("2".into()),
                Err(()),
                Ok("2".into()),
                Ok("2".into())
            ]
        );
    }
}
