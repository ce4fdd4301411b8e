//! Relay against a real kube-apiserver with the operator running as its ServiceAccount (bound to
//! exactly operator/rbac/rules.yaml): the happy path renders a config the sidecar accepts, every
//! negative path sets Ready=False with its reason, and deleting the Relay garbage-collects its children.

use mailroom_test_support::operator as common;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use common::{Env, ready, rendered_config, wait_for, wait_gone, webhook::domain};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Pod, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use mailroom_config::Delivery;
use mailroom_operator::crd::{MailDomain, Relay, RelaySpec};

fn reason_is(want: &'static str) -> impl Fn(&Relay) -> bool {
    move |r: &Relay| {
        let conds = r
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        ready(&conds, "Ready").1 == want
    }
}

async fn relay(env: &Env, ns: &str, name: &str, yaml: &str) -> Result<Api<Relay>> {
    let spec: RelaySpec = serde_yaml_ng::from_str(yaml)?;
    let api: Api<Relay> = Api::namespaced(env.admin.clone(), ns);
    api.create(&PostParams::default(), &Relay::new(name, spec))
        .await?;
    Ok(api)
}

fn secret(name: &str, keys: &[&str]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(b"value".to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
async fn relay_renders_a_config_the_sidecar_accepts_and_children_are_garbage_collected() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace().await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "shop", &allowed).await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &secret("creds", &["username", "password"]),
        )
        .await?;
    let spec = "domains: [shop]
delivery:
  smarthost: {host: smtp.provider.net, port: 465, tls: implicit, credentialsSecretRef: {name: creds}}
limits: {maxRecipients: 10}";
    let api = relay(&env, &ns, "outbound", spec).await?;
    let r = wait_for(&api, "outbound", reason_is("Reconciled")).await?;
    let status = r.status.context("status")?;
    assert_eq!(status.effective_domains, ["shop.example.com"]);
    assert_eq!(status.mode.as_deref(), Some("smarthost"));
    assert_eq!(status.config_map_name.as_deref(), Some("outbound-sidecar"));

    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &ns);
    let (cm, text, config) = rendered_config(&cms, "outbound").await?;
    assert_eq!(config.relay, format!("{ns}/outbound"));
    assert_eq!(config.limits.max_recipients, 10);
    let Delivery::Smarthost(s) = &config.delivery else {
        panic!("smarthost expected")
    };
    assert_eq!((s.host.as_str(), s.port), ("smtp.provider.net", 465));
    assert!(!text.contains("value"), "secret values never enter the ConfigMap");
    assert_eq!(
        cm.metadata.owner_references.as_ref().map(|o| o[0].kind.as_str()),
        Some("Relay")
    );
    let managers: Vec<_> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["mailroom.dev/operator"]);

    let dkim = secrets.get("outbound-dkim").await?;
    let pem = dkim
        .data
        .as_ref()
        .and_then(|d| d.get("shop.example.com.mailroom.key"))
        .context("key")?;
    assert!(String::from_utf8_lossy(&pem.0).contains("BEGIN PRIVATE KEY"));

    // status.pods counts injected pods asking for this Relay, and follows pod changes.
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    for (name, injected) in [("a", true), ("b", true), ("c", false)] {
        let mut labels = vec![("mailroom.dev/relay", "outbound")];
        if injected {
            labels.push(("mailroom.dev/injected", "true"));
        }
        pods.create(&PostParams::default(), &plain_pod(name, &labels)?)
            .await?;
    }
    wait_for(&api, "outbound", |r: &Relay| {
        r.status.as_ref().is_some_and(|s| s.pods == 2)
    })
    .await?;
    pods.delete(
        "a",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    wait_for(&api, "outbound", |r: &Relay| {
        r.status.as_ref().is_some_and(|s| s.pods == 1)
    })
    .await?;

    api.delete("outbound", &DeleteParams::default()).await?;
    wait_gone(&cms, "outbound-sidecar").await?;
    wait_gone(&secrets, "outbound-dkim").await?;
    Ok(())
}

#[tokio::test]
async fn relay_negative_paths_set_ready_false_with_their_reason() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace().await?;
    domain(
        &env,
        "closed",
        "domain: closed.example.com\ndkim: {algorithm: ed25519}",
    )
    .await?;
    let open = format!(
        "domain: open.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "open", &open).await?;

    let api = relay(&env, &ns, "missing", "domains: [nope]\ndelivery: {capture: {}}").await?;
    wait_for(&api, "missing", reason_is("DomainNotFound")).await?;

    relay(&env, &ns, "closed", "domains: [closed]\ndelivery: {capture: {}}").await?;
    wait_for(&api, "closed", reason_is("DomainNotAllowed")).await?;
    // A namespace the MailDomain does not grant never gets its signing key, under any name.
    let key = Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .get("dkim-closed")
        .await?;
    let key_bytes: Vec<&[u8]> = key.data.iter().flatten().map(|(_, v)| v.0.as_slice()).collect();
    assert!(!key_bytes.is_empty(), "dkim-closed holds the key");
    let in_ns = Api::<Secret>::namespaced(env.admin.clone(), &ns)
        .list(&Default::default())
        .await?;
    for s in &in_ns.items {
        for (k, v) in s.data.iter().flatten() {
            assert!(
                !key_bytes.contains(&v.0.as_slice()) && !k.contains("closed.example.com"),
                "{ns}/{:?} holds the key of a MailDomain that does not grant {ns}",
                s.metadata.name
            );
        }
    }
    // Allowing the namespace re-triggers the Relay (the MailDomain watch).
    let patch = serde_json::json!({"spec": {"allowedNamespaces": {"names": [ns]}}});
    Api::<MailDomain>::all(env.admin.clone())
        .patch("closed", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(&api, "closed", reason_is("Reconciled")).await?;

    let spec = "domains: [open]\ndelivery: {smarthost: {host: smtp.provider.net, credentialsSecretRef: {name: creds}}}";
    relay(&env, &ns, "creds", spec).await?;
    wait_for(&api, "creds", reason_is("SecretNotFound")).await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    secrets
        .create(&PostParams::default(), &secret("creds", &["username"]))
        .await?;
    let r = wait_for(&api, "creds", reason_is("SecretKeyMissing")).await?;
    let msg = r
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .context("Ready")?
        .message;
    assert!(msg.contains("password") && msg.contains("creds"), "{msg}");
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(&secret("creds", &["username", "password"])),
        )
        .await?;
    wait_for(&api, "creds", reason_is("Reconciled")).await?;

    // A backup smarthost's Secret is checked like the primary's, and its creation is watched.
    let spec = "domains: [open]\ndelivery: {smarthost: {host: smtp.provider.net, credentialsSecretRef: {name: creds}, \
                backup: {host: smtp.backup.net, tls: implicit, port: 465, credentialsSecretRef: {name: backup-creds}}}}";
    relay(&env, &ns, "backup", spec).await?;
    let r = wait_for(&api, "backup", reason_is("SecretNotFound")).await?;
    let msg = r
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .context("Ready")?
        .message;
    assert!(msg.contains("backup-creds"), "{msg}");
    secrets
        .create(
            &PostParams::default(),
            &secret("backup-creds", &["username", "password"]),
        )
        .await?;
    wait_for(&api, "backup", reason_is("Reconciled")).await?;

    // A MailDomain that loses its key is not Ready; Relays using it say DomainNotReady.
    let key = format!("dkim-{}", "open");
    Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .delete(&key, &DeleteParams::default())
        .await?;
    wait_for(&api, "creds", reason_is("DomainNotReady")).await?;
    Ok(())
}

fn plain_pod(name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}

/// `allowedNamespaces.selector` follows the namespace's labels: labelling the namespace grants the
/// MailDomain to its Relays, and removing the label takes it away, with no change to the Relay or
/// the MailDomain (the operator watches Namespaces and reads their labels from that cache).
/// Taking it away, or deleting the MailDomain, withdraws the domain and its key from the Relays'
/// children at once; the domains still granted stay.
#[tokio::test]
async fn namespace_labels_grant_and_revoke_a_domain_by_selector() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace().await?;
    domain(
        &env,
        "team",
        "domain: team.example.com\ndkim: {algorithm: ed25519}\n\
         allowedNamespaces: {selector: {matchLabels: {mail: granted}}}",
    )
    .await?;
    let api = relay(&env, &ns, "outbound", "domains: [team]\ndelivery: {capture: {}}").await?;
    wait_for(&api, "outbound", reason_is("DomainNotAllowed")).await?;

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.admin.clone());
    let label = async |value: Option<&str>| -> Result<()> {
        let patch = serde_json::json!({"metadata": {"labels": {"mail": value}}});
        namespaces
            .patch(&ns, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    };
    label(Some("granted")).await?;
    let r = wait_for(&api, "outbound", reason_is("Reconciled")).await?;
    assert_eq!(
        r.status.map(|s| s.effective_domains).unwrap_or_default(),
        ["team.example.com"]
    );

    // A second Relay sends as `team` and as `always`, which grants the namespace by name.
    let always = format!(
        "domain: always.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "always", &always).await?;
    relay(
        &env,
        &ns,
        "both",
        "domains: [team, always]\ndelivery: {capture: {}}",
    )
    .await?;
    wait_for(&api, "both", reason_is("Reconciled")).await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let domains_of = |relay: &'static str| {
        let cms = cms.clone();
        async move {
            let (_, _, config) = rendered_config(&cms, relay).await?;
            anyhow::Ok(config.domains.into_iter().map(|d| d.domain).collect::<Vec<_>>())
        }
    };
    let keys_of = |s: &Secret| -> Vec<String> { s.data.iter().flatten().map(|(k, _)| k.clone()).collect() };
    assert_eq!(domains_of("outbound").await?, ["team.example.com"]);
    assert_eq!(
        keys_of(&secrets.get("outbound-dkim").await?),
        ["team.example.com.mailroom.key"]
    );

    // Revoking the grant withdraws the domain from the sidecars at once, although the Relay
    // cannot render: its key leaves the Secret and its name the config (which then refuses
    // every sender). The other Relay keeps the domain it is still granted.
    label(None).await?;
    let r = wait_for(&api, "outbound", reason_is("DomainNotAllowed")).await?;
    wait_for(&secrets, "outbound-dkim", |s: &Secret| keys_of(s).is_empty()).await?;
    let r = wait_for(&api, "outbound", |r: &Relay| {
        r.status.as_ref().is_some_and(|s| s.effective_domains.is_empty())
    })
    .await
    .with_context(|| format!("{:?}", r.status))?;
    assert_eq!(
        r.status.and_then(|s| s.config_map_name).as_deref(),
        Some("outbound-sidecar"),
        "the children stay"
    );
    assert!(domains_of("outbound").await?.is_empty());
    let (_, text, _) = rendered_config(&cms, "outbound").await?;
    mailroom_config::Config::parse(std::path::Path::new("sidecar.yaml"), &text)
        .context("a sidecar takes the config without domains")?;
    wait_for(&api, "both", reason_is("DomainNotAllowed")).await?;
    wait_for(&secrets, "both-dkim", |s: &Secret| {
        keys_of(s) == ["always.example.com.mailroom.key"]
    })
    .await?;
    assert_eq!(domains_of("both").await?, ["always.example.com"]);
    let r = api.get("both").await?;
    assert_eq!(
        r.status.map(|s| s.effective_domains).unwrap_or_default(),
        ["always.example.com"]
    );
    // Each withdrawal was announced once on its Relay.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.admin.clone(), &ns)
        .list(&Default::default())
        .await?;
    for relay in ["outbound", "both"] {
        let notes: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(relay))
            .filter(|e| e.reason.as_deref() == Some("DomainWithdrawn"))
            .filter_map(|e| e.note.clone())
            .collect();
        assert_eq!(
            notes,
            [format!(
                "Relay {ns}/{relay}: its sidecars no longer send as team.example.com (MailDomain team \
                 does not allow namespace {ns}), and the domain's keys left Secret {relay}-dkim"
            )]
        );
    }

    // Deleting a MailDomain withdraws it the same way (Ready still names the first problem,
    // `team`).
    Api::<MailDomain>::all(env.admin.clone())
        .delete("always", &DeleteParams::default())
        .await?;
    wait_for(&secrets, "both-dkim", |s: &Secret| keys_of(s).is_empty()).await?;
    assert!(domains_of("both").await?.is_empty());
    wait_for(&api, "both", |r: &Relay| {
        r.status.as_ref().is_some_and(|s| s.effective_domains.is_empty())
    })
    .await?;

    // Granting the namespace again renders the domain and its key back.
    label(Some("granted")).await?;
    wait_for(&api, "outbound", reason_is("Reconciled")).await?;
    wait_for(&secrets, "outbound-dkim", |s: &Secret| {
        keys_of(s) == ["team.example.com.mailroom.key"]
    })
    .await?;
    assert_eq!(domains_of("outbound").await?, ["team.example.com"]);

    // A domain the Relay itself stops listing goes too, even when the new list cannot render.
    let patch = serde_json::json!({"spec": {"domains": ["nope"]}});
    api.patch("outbound", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(&api, "outbound", reason_is("DomainNotFound")).await?;
    wait_for(&secrets, "outbound-dkim", |s: &Secret| keys_of(s).is_empty()).await?;
    assert!(domains_of("outbound").await?.is_empty());
    Ok(())
}
