//! Relay reconcile: gather the MailDomains and Secrets it references (names and keys only),
//! render the sidecar config, apply ConfigMap + DKIM Secret owned by the Relay, patch status when
//! it changed, then announce a changed `Ready` as an event. MailDomains, Namespaces, DKIM keys
//! and pods are read from the operator's caches ([`Views`]).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, ResourceExt,
    api::ObjectMeta,
    core::{Selector, SelectorExt},
    runtime::{controller::Action, reflector::ObjectRef, watcher},
};

use super::{
    Context,
    mail_domain::PRIVATE_KEY,
    now,
    views::Views,
    write_status,
    written::{Children, Written},
};
use crate::{
    Error, Result,
    apply::{apply, owner_ref},
    conditions::{self, Cond, HUB_READY, READY},
    crd::{MailDomain, Relay, RelayStatus},
    events::{Note, Notes, Reason},
    render,
};

mod withdraw;

/// Label on every child of a Relay (ConfigMap, DKIM Secret), and on pods that ask for it.
pub const RELAY_LABEL: &str = "mailroom.dev/relay";
/// Label the webhook puts on injected pods.
pub const INJECTED_LABEL: &str = "mailroom.dev/injected";

/// Watch config selecting injected pods (to keep `status.pods` current).
pub fn injected_pods() -> watcher::Config {
    watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"))
}

/// Watch config selecting Relay children.
pub fn children() -> watcher::Config {
    watcher::Config::default().labels(RELAY_LABEL)
}

/// Whether `relay` references Secret `name` (credentials or CA).
pub fn references_secret(relay: &Relay, name: &str) -> bool {
    relay.spec.delivery.smarthost.as_ref().is_some_and(|s| {
        std::iter::once(s.clone()).chain(s.backup_endpoint()).any(|s| {
            s.credentials_secret_ref.as_ref().is_some_and(|c| c.name == name)
                || s.ca_secret_ref.as_ref().is_some_and(|c| c.name == name)
        })
    })
}

/// Whether `md` allows namespace `ns` (by name, or by label selector over `labels`).
pub fn allows(md: &MailDomain, ns: &str, labels: &BTreeMap<String, String>) -> bool {
    let allowed = &md.spec.allowed_namespaces;
    if allowed.names.iter().any(|n| n == ns) {
        return true;
    }
    match &allowed.selector {
        // An empty selector would select everything; we only honour explicit terms.
        Some(sel)
            if sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || sel.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) =>
        {
            Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
        }
        _ => false,
    }
}

/// What the Relay controller's reconciles share.
#[derive(Debug)]
pub struct Shared {
    /// The operator's context.
    pub ctx: Arc<Context>,
    /// The caches a reconcile reads.
    pub views: Views,
    /// The children applied and unchanged since.
    pub written: Written,
}

/// Reconciles one Relay.
pub async fn reconcile(relay: Arc<Relay>, shared: &Shared) -> Result<Action> {
    let Shared { ctx, views, .. } = shared;
    let _timer = ctx.metrics.start("Relay");
    views.ready().await?;
    let ns = relay.namespace().ok_or(Error::MissingNamespace)?;
    let name = relay.name_any();
    let old = relay.status.clone().unwrap_or_default();
    let mut status = RelayStatus {
        conditions: old.conditions.clone(),
        observed_generation: relay.metadata.generation,
        mode: Some(relay.spec.delivery.mode().into()),
        ..Default::default()
    };
    status.pods = views.pods(&ns, &name);
    let t = now();
    let had_hub = old.hub.is_some();
    let mut withdrawn = None;
    let (action, ready) = match converge(&relay, &ns, shared, &mut status, had_hub).await {
        Ok(()) => {
            let msg = format!(
                "Relay {ns}/{name} is rendered into ConfigMap {}",
                render::config_map_name(&name)
            );
            (Action::await_change(), Cond::yes(READY, Reason::Reconciled, msg))
        }
        Err(e) if e.is_spec_error() => {
            let msg = format!("Relay {ns}/{name}: {e}");
            ctx.metrics.failure("Relay", e.metric_label());
            // Keep the last good children and their names in status, minus any domain the
            // namespace is no longer granted.
            status.config_map_name = old.config_map_name.clone();
            status.dkim_secret_name = old.dkim_secret_name.clone();
            let effective = &old.effective_domains;
            status.effective_domains = match withdraw::enforce(&relay, &ns, shared, effective).await? {
                None => old.effective_domains.clone(),
                Some(w) => {
                    withdrawn = (!w.withdrawn.is_empty()).then(|| Note::warning(
                        Reason::DomainWithdrawn,
                        format!(
                            "Relay {ns}/{name}: its sidecars no longer send as {} ({e}), and the {} keys left Secret {}",
                            w.withdrawn.join(", "),
                            if w.withdrawn.len() == 1 { "domain's" } else { "domains'" },
                            render::dkim_secret_name(&name)
                        ),
                    ));
                    w.left
                }
            };
            status.hub = old.hub.clone();
            status.rate_per_minute_per_pod = old.rate_per_minute_per_pod;
            (Action::await_change(), Cond::no(READY, e.reason(), msg))
        }
        Err(e) => return Err(e),
    };
    ctx.metrics
        .set_hub_ready(&ns, &name, status.hub.as_ref().map(|h| h.ready_replicas));
    let hub_ready = status
        .hub
        .as_ref()
        .map(|h| super::hub::readiness(&ns, &name, h.replicas, h.ready_replicas));
    let mut notes = Notes::repeating(announce(&old.conditions, &ready, hub_ready.as_ref()));
    // Published even if the status write fails: the children have changed already.
    if let Some(note) = withdrawn {
        notes.once(note);
    }
    conditions::set(&mut status.conditions, ready, status.observed_generation, &t);
    match hub_ready {
        Some(c) => conditions::set(&mut status.conditions, c, status.observed_generation, &t),
        None => status.conditions.retain(|c| c.type_ != HUB_READY),
    }
    ctx.metrics.set_ready(
        "Relay",
        &ns,
        &name,
        conditions::is_true(&status.conditions, READY),
    );
    // An unchanged status is not written again: the write would change nothing but wake this
    // Relay's own watch for another reconcile (and cost the apiserver a request).
    if relay.status.as_ref() == Some(&status) && notes == Notes::default() {
        return Ok(action);
    }
    let api = Api::<Relay>::namespaced(ctx.client.clone(), &ns);
    write_status(ctx, &api, &*relay, &status, notes).await?;
    Ok(action)
}

/// The events a Relay reconcile publishes: a change of `Ready`, or of `HubReady` when it has a
/// hub.
fn announce(old: &[Condition], ready: &Cond, hub: Option<&Cond>) -> Vec<Note> {
    let mut set = vec![ready.clone()];
    set.extend(hub.cloned());
    conditions::transitions(old, &set, &[READY, HUB_READY])
}

async fn converge(
    relay: &Relay,
    ns: &str,
    shared: &Shared,
    status: &mut RelayStatus,
    had_hub: bool,
) -> Result<()> {
    let Shared { ctx, views, written } = shared;
    let domains = gather_domains(relay, ns, ctx, views).await?;
    check_secrets(relay, ns, ctx).await?;
    let keys = gather_keys(&domains, ctx, views).await?;
    let mut config = render::sidecar_config(relay, &domains)?;
    // The Relay's budget, shared by its live pods (the pod watch re-renders as they come and go).
    config.limits.rate_per_minute = render::rate_share(config.limits.rate_per_minute, status.pods);
    status.rate_per_minute_per_pod = config.limits.rate_per_minute;
    let text = render::to_yaml(relay, &config)?;
    let name = relay.name_any();
    let owner = owner_ref(relay)?;
    let meta = |child: String| ObjectMeta {
        name: Some(child),
        namespace: Some(ns.into()),
        labels: Some(BTreeMap::from([(RELAY_LABEL.to_string(), name.clone())])),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let cm = ConfigMap {
        metadata: meta(render::config_map_name(&name)),
        data: Some(BTreeMap::from([(render::CONFIG_KEY.to_string(), text)])),
        ..Default::default()
    };
    let secret = Secret {
        metadata: meta(render::dkim_secret_name(&name)),
        type_: Some("Opaque".into()),
        data: Some(keys),
        ..Default::default()
    };
    let (secret, cm) = (
        with_type(secret, "v1", "Secret")?,
        with_type(cm, "v1", "ConfigMap")?,
    );
    let children = Children {
        config_map: &cm,
        secret: &secret,
    };
    let stamp = children.stamp()?;
    let key = ObjectRef::from_obj(relay);
    if !written.current(&key, &children, &stamp) {
        let secret = apply(
            &Api::namespaced(ctx.client.clone(), ns),
            &secret,
            "apply DKIM Secret",
        )
        .await?;
        let cm = apply(&Api::namespaced(ctx.client.clone(), ns), &cm, "apply ConfigMap").await?;
        written.record(key, stamp, (&cm, &secret));
    }
    let hub = super::hub::converge(relay, ns, ctx, &config, &meta, had_hub).await?;
    status.hub = hub.map(|(h, _)| h);
    status.effective_domains = domains.iter().map(|d| d.spec.domain.clone()).collect();
    status.config_map_name = Some(render::config_map_name(&name));
    status.dkim_secret_name = Some(render::dkim_secret_name(&name));
    Ok(())
}

/// SSA needs apiVersion/kind in the body; k8s-openapi types serialize them, so round-trip.
pub(super) fn with_type<K: serde::Serialize + serde::de::DeserializeOwned>(
    obj: K,
    api_version: &str,
    kind: &str,
) -> Result<K> {
    let mut v = serde_json::to_value(&obj).map_err(Error::serde("serialize child"))?;
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    serde_json::from_value(v).map_err(Error::serde("deserialize child"))
}

async fn gather_domains(relay: &Relay, ns: &str, ctx: &Context, views: &Views) -> Result<Vec<MailDomain>> {
    let mut labels: Option<BTreeMap<String, String>> = None;
    let mut out = Vec::new();
    for name in &relay.spec.domains {
        let md = views
            .domain(ctx, name)
            .await?
            .ok_or_else(|| Error::DomainNotFound { domain: name.clone() })?;
        let labels = match &labels {
            Some(l) => l,
            None => labels.insert(views.namespace_labels(ctx, ns).await?),
        };
        if !allows(&md, ns, labels) {
            return Err(Error::DomainNotAllowed {
                domain: name.clone(),
                namespace: ns.into(),
            });
        }
        let ready = md
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, READY));
        if !ready || md.status.as_ref().and_then(|s| s.dkim.as_ref()).is_none() {
            return Err(Error::DomainNotReady { domain: name.clone() });
        }
        out.push(Arc::unwrap_or_clone(md));
    }
    Ok(out)
}

async fn check_secrets(relay: &Relay, ns: &str, ctx: &Context) -> Result<()> {
    let Some(s) = &relay.spec.delivery.smarthost else {
        return Ok(());
    };
    let mut wanted: Vec<(String, String)> = Vec::new();
    for s in std::iter::once(s.clone()).chain(s.backup_endpoint()) {
        if let Some(c) = &s.credentials_secret_ref {
            wanted.push((c.name.clone(), c.username_key.clone()));
            wanted.push((c.name.clone(), c.password_key.clone()));
        }
        if let Some(c) = &s.ca_secret_ref {
            wanted.push((c.name.clone(), c.key.clone()));
        }
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for (name, key) in &wanted {
        let secret = api
            .get_opt(name)
            .await
            .map_err(Error::kube("get Secret"))?
            .ok_or_else(|| Error::SecretNotFound {
                namespace: ns.into(),
                name: name.into(),
            })?;
        // Names and keys only: the values stay in the Secret.
        let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret.string_data.as_ref().is_some_and(|d| d.contains_key(key));
        if !has {
            return Err(Error::SecretKeyMissing {
                namespace: ns.into(),
                name: name.into(),
                key: key.into(),
            });
        }
    }
    Ok(())
}

/// The private keys of every domain, keyed as the rendered config expects: the signing key, and
/// during a rotation the pending or retiring one too, so that the switch only changes the config.
async fn gather_keys(
    domains: &[MailDomain],
    ctx: &Context,
    views: &Views,
) -> Result<BTreeMap<String, ByteString>> {
    let mut out = BTreeMap::new();
    for md in domains {
        let Some(dkim) = md.status.as_ref().and_then(|s| s.dkim.as_ref()) else {
            return Err(Error::DomainNotReady {
                domain: md.name_any(),
            });
        };
        let name = dkim.secret_name.clone();
        let secret = views
            .key(ctx, &name)
            .await?
            .ok_or_else(|| Error::DomainNotReady {
                domain: md.name_any(),
            })?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get(PRIVATE_KEY))
            .cloned()
            .ok_or(Error::SecretKeyMissing {
                namespace: ctx.settings.namespace.clone(),
                name,
                key: PRIVATE_KEY.into(),
            })?;
        out.insert(render::dkim_key_name(&md.spec.domain, &dkim.selector), pem);
        // The other key is a courtesy: missing means it is being created or retired.
        for other in [&dkim.pending, &dkim.retiring].into_iter().flatten() {
            let pem = views
                .key(ctx, &other.secret_name)
                .await?
                .and_then(|s| s.data.as_ref()?.get(PRIVATE_KEY).cloned());
            if let Some(pem) = pem {
                out.insert(render::dkim_key_name(&md.spec.domain, &other.selector), pem);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    #[test]
    fn namespaces_are_allowed_by_name_or_selector_only() {
        let labels = BTreeMap::from([("team".to_string(), "shop".to_string())]);
        let none = MailDomain::test("d", "example.com");
        assert!(!allows(&none, "shop", &labels), "empty allows nothing");
        assert!(allows(&none.clone().allowing(&["shop"]), "shop", &labels));
        let mut by_label = none.clone();
        by_label.spec.allowed_namespaces.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_string(), "shop".to_string())])),
            ..Default::default()
        });
        assert!(allows(&by_label, "shop", &labels));
        assert!(!allows(&by_label, "other", &BTreeMap::new()));
        let mut empty_selector = none;
        empty_selector.spec.allowed_namespaces.selector = Some(LabelSelector::default());
        assert!(
            !allows(&empty_selector, "shop", &labels),
            "an empty selector allows nothing"
        );
    }

    #[test]
    fn only_a_changed_ready_is_announced() {
        struct Case {
            name: &'static str,
            old: Option<Cond>,
            now: Cond,
            want: Option<(bool, Reason)>,
        }
        let ok = || Cond::yes(READY, Reason::Reconciled, "rendered");
        let missing = || Cond::no(READY, Reason::SecretNotFound, "no Secret");
        let cases = [
            Case {
                name: "first success",
                old: None,
                now: ok(),
                want: Some((false, Reason::Reconciled)),
            },
            Case {
                name: "first failure",
                old: None,
                now: missing(),
                want: Some((true, Reason::SecretNotFound)),
            },
            Case {
                name: "still rendered",
                old: Some(ok()),
                now: ok(),
                want: None,
            },
            Case {
                name: "still the same spec error",
                old: Some(missing()),
                now: missing(),
                want: None,
            },
            Case {
                name: "another spec error",
                old: Some(missing()),
                now: Cond::no(READY, Reason::SecretKeyMissing, "no key"),
                want: Some((true, Reason::SecretKeyMissing)),
            },
            Case {
                name: "fixed",
                old: Some(missing()),
                now: ok(),
                want: Some((false, Reason::Reconciled)),
            },
            Case {
                name: "broken",
                old: Some(ok()),
                now: Cond::no(READY, Reason::DomainNotReady, "domain"),
                want: Some((true, Reason::DomainNotReady)),
            },
        ];
        for case in cases {
            let mut old = Vec::new();
            if let Some(c) = case.old {
                conditions::set(&mut old, c, Some(1), &now());
            }
            let got: Vec<(bool, Reason)> = announce(&old, &case.now, None)
                .into_iter()
                .map(|n| (n.warning, n.reason))
                .collect();
            assert_eq!(got, Vec::from_iter(case.want), "{}", case.name);
        }
    }
}
