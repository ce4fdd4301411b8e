//! DKIM key rotation against a real kube-apiserver, a real DNS server on loopback and an
//! independent DKIM implementation (dkimpy): a new key is published next to the old one, Relays keep
//! signing with the old key until live DNS serves the new record, then switch; the old key retires
//! after the grace period; a restarted operator resumes a rotation from status; a period starts a
//! rotation by itself and removing it cancels a pending key that never signed.

use mailroom_test_support::operator as common;

use anyhow::{Context as _, Result};
use common::{DnsServer, Env, sidecar, wait_for, wait_gone};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret},
    events::v1::Event,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use mailroom_operator::crd::{DnsRecordStatus, MailDomain, MailDomainSpec, Relay, RelaySpec, RotationPhase};

const DOMAIN: &str = "rot.example.com";

fn phase(md: &MailDomain) -> Option<RotationPhase> {
    md.status.as_ref()?.dkim.as_ref().map(|d| d.phase)
}

fn records(md: &MailDomain) -> Vec<DnsRecordStatus> {
    md.status
        .as_ref()
        .map(|s| s.dns_records.clone())
        .unwrap_or_default()
}

fn dkim_records(md: &MailDomain) -> Vec<(String, String)> {
    records(md)
        .into_iter()
        .filter(|r| r.purpose == "dkim")
        .map(|r| (r.key.unwrap_or_default(), r.name))
        .collect()
}

/// Zone lines publishing exactly the records in status.
fn zone(records: &[DnsRecordStatus]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let strings: Vec<String> = r.value.iter().map(|s| format!("\"{s}\"")).collect();
            format!("{}. 300 IN TXT {}", r.name, strings.join(" "))
        })
        .collect()
}

/// The selector and key file the Relay's rendered config signs `DOMAIN` with.
async fn rendered(cms: &Api<ConfigMap>) -> Result<(String, String)> {
    let (_, _, config) = common::rendered_config(cms, "outbound").await?;
    let d = config
        .domains
        .iter()
        .find(|d| d.domain == DOMAIN)
        .and_then(|d| d.dkim.clone())
        .context("dkim of the domain")?;
    let file = d
        .key_file
        .file_name()
        .and_then(|f| f.to_str())
        .context("key file name")?
        .to_string();
    Ok((d.selector, file))
}

async fn wait_rendered(cms: &Api<ConfigMap>, selector: &str) -> Result<String> {
    for _ in 0..300 {
        if let Ok((s, file)) = rendered(cms).await
            && s == selector
        {
            return Ok(file);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "the Relay never rendered selector {selector}: {:?}",
        rendered(cms).await
    )
}

async fn key_secrets(env: &Env) -> Result<Vec<String>> {
    let list = Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .list(&ListParams::default().labels("mailroom.dev/mail-domain=rot"))
        .await?;
    let mut names: Vec<String> = list.items.into_iter().filter_map(|s| s.metadata.name).collect();
    names.sort();
    Ok(names)
}

/// dkimpy signs with `pem` under `selector` and verifies through the DNS server.
fn dkimpy_verifies(pem: &[u8], selector: &str, dns: &DnsServer) -> Result<()> {
    common::dkimpy_sign_verify(pem, selector, DOMAIN, dns.port)
}

fn record_value(md: &MailDomain, name: &str) -> Result<String> {
    records(md)
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.value.concat())
        .with_context(|| format!("record {name} in status"))
}

// Multi-threaded: the sidecar helpers block while the operator keeps reconciling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_switches_only_after_the_new_record_resolves_and_the_old_key_retires() -> Result<()> {
    let dns_dir = tempfile::tempdir()?;
    let dns = DnsServer::start(dns_dir.path())?;
    let addr = dns.addr();
    let mut env = Env::start(&[
        ("OPERATOR_DNS_NAMESERVERS", &addr),
        ("OPERATOR_DNS_RECHECK_SECONDS", "1"),
    ])
    .await?;
    let ns = env.cp.new_namespace().await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    // A year-long period: the rotation is started by hand; the grace is 3 seconds. RSA, because
    // dkimpy reads Ed25519 keys only in its own raw format.
    let spec: MailDomainSpec = serde_yaml_ng::from_str(&format!(
        "domain: {DOMAIN}
dkim: {{algorithm: rsa-2048, rotation: {{periodSeconds: 31536000, graceSeconds: 3}}}}
allowedNamespaces: {{names: [{ns}]}}"
    ))?;
    api.create(&PostParams::default(), &MailDomain::new("rot", spec))
        .await?;
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Stable)).await?;
    let first = md.status.as_ref().and_then(|s| s.dkim.clone()).context("dkim")?;
    assert_eq!(first.selector, "mailroom");
    assert!(first.next_rotation.is_some(), "{first:?}");
    dns.serve(&zone(&records(&md)))?;

    let relay: RelaySpec = serde_yaml_ng::from_str("domains: [rot]\ndelivery: {capture: {}}")?;
    Api::<Relay>::namespaced(env.admin.clone(), &ns)
        .create(&PostParams::default(), &Relay::new("outbound", relay))
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &ns);
    let relay_secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    wait_rendered(&cms, "mailroom").await?;

    // Start a rotation by hand.
    let patch = serde_json::json!({"metadata": {"annotations": {"mailroom.dev/rotate-dkim": "1"}}});
    api.patch("rot", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Pending)).await?;
    let dkim = md.status.as_ref().and_then(|s| s.dkim.clone()).context("dkim")?;
    let pending = dkim.pending.clone().context("pending key")?;
    assert_eq!(dkim.selector, "mailroom", "signing stays on the old key");
    assert!(
        pending.selector.starts_with("mailroom-") && pending.selector.len() == "mailroom-".len() + 15,
        "dated selector: {}",
        pending.selector
    );
    let new_name = format!("{}._domainkey.{DOMAIN}", pending.selector);
    assert_eq!(
        dkim_records(&md),
        [
            ("active".to_string(), format!("mailroom._domainkey.{DOMAIN}")),
            ("pending".to_string(), new_name.clone()),
        ]
    );
    assert_eq!(key_secrets(&env).await?.len(), 2);

    // The Relay carries the new key's file already, but signs with the old selector while DNS
    // does not serve the new record, through several rechecks.
    let pending_file = format!("{DOMAIN}.{}.key", pending.selector);
    wait_for(&relay_secrets, "outbound-dkim", |s: &Secret| {
        s.data.as_ref().is_some_and(|d| d.contains_key(&pending_file))
    })
    .await?;
    let mut seen = None;
    for _ in 0..3 {
        let md = wait_for(&api, "rot", |md| {
            let checked = records(md)
                .into_iter()
                .find(|r| r.name == new_name)
                .and_then(|r| r.last_checked);
            checked.is_some() && checked != seen
        })
        .await?;
        seen = records(&md)
            .into_iter()
            .find(|r| r.name == new_name)
            .and_then(|r| r.last_checked);
        assert_eq!(phase(&md), Some(RotationPhase::Pending));
    }
    assert_eq!(rendered(&cms).await?.0, "mailroom");

    // A real sidecar on the mounted files signs with the old key, which the active record verifies.
    let root = tempfile::tempdir()?;
    sidecar::mount(&env.admin, &ns, "outbound", root.path()).await?;
    let sc = sidecar::Sidecar::start(root.path())?;
    let from = format!("app@{DOMAIN}");
    let before = sc.send(&from, "before")?;
    assert_eq!(sidecar::signing_selector(&before)?, "mailroom");
    let md = api.get("rot").await?;
    sidecar::dkim_verifies(
        &before,
        &record_value(&md, &format!("mailroom._domainkey.{DOMAIN}"))?,
    )?;

    // A restarted operator resumes from status: same pending key, no new Secret.
    env.stop_operator();
    env.start_operator().await?;
    let patch = serde_json::json!({"metadata": {"labels": {"poke": "1"}}});
    api.patch("rot", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let after = wait_for(&api, "rot", |md| {
        records(md)
            .into_iter()
            .find(|r| r.name == new_name)
            .and_then(|r| r.last_checked)
            > seen
    })
    .await?;
    let resumed = after.status.and_then(|s| s.dkim).and_then(|d| d.pending);
    assert_eq!(resumed.as_ref(), Some(&pending));
    assert_eq!(key_secrets(&env).await?.len(), 2);

    // Publish both records: signing switches to the new key.
    let md = api.get("rot").await?;
    dns.serve(&zone(&records(&md)))?;
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Retiring)).await?;
    let dkim = md.status.as_ref().and_then(|s| s.dkim.clone()).context("dkim")?;
    assert_eq!(dkim.selector, pending.selector);
    assert_eq!(dkim.fingerprint, pending.fingerprint);
    assert_eq!(
        dkim.retiring.as_ref().map(|k| k.selector.as_str()),
        Some("mailroom")
    );
    assert_eq!(dkim_records(&md).len(), 2, "both records during the grace");
    let file = wait_rendered(&cms, &pending.selector).await?;
    assert_eq!(file, pending_file);
    let secret = relay_secrets.get("outbound-dkim").await?;
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&file))
        .context("the rendered key file is in the Relay's Secret")?;
    dkimpy_verifies(&pem.0, &pending.selector, &dns)?;

    // The sidecar picks the switch up from the remounted files (the new key file was mounted
    // before the switch) and signs with the new key, which the new record verifies.
    sidecar::mount(&env.admin, &ns, "outbound", root.path()).await?;
    let mut after = None;
    for i in 0..60 {
        let eml = sc.send(&from, &format!("after{i}"))?;
        if sidecar::signing_selector(&eml)? == pending.selector {
            after = Some(eml);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let after = after.context("the sidecar never signed with the new selector")?;
    sidecar::dkim_verifies(&after, &record_value(&md, &new_name)?)?;

    // After the grace the old key's Secret and record are gone; the Relay drops its file.
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Stable)).await?;
    let dkim = md.status.as_ref().and_then(|s| s.dkim.clone()).context("dkim")?;
    assert_eq!(
        dkim.retired.as_ref().map(|k| k.selector.as_str()),
        Some("mailroom")
    );
    wait_gone(
        &Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns),
        &first.secret_name,
    )
    .await?;
    assert_eq!(
        key_secrets(&env).await?,
        std::slice::from_ref(&pending.secret_name)
    );
    assert_eq!(dkim_records(&md), [("active".to_string(), new_name.clone())]);
    let old_file = format!("{DOMAIN}.mailroom.key");
    wait_for(&relay_secrets, "outbound-dkim", |s: &Secret| {
        s.data.as_ref().is_some_and(|d| !d.contains_key(&old_file))
    })
    .await?;
    assert_eq!(rendered(&cms).await?.0, pending.selector);

    // Each transition was published as an event on the MailDomain.
    let events = Api::<Event>::all(env.admin.clone())
        .list(&ListParams::default())
        .await?;
    let reasons: Vec<String> = events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("rot"))
        .filter_map(|e| e.reason)
        .filter(|r| r.starts_with("Key"))
        .collect();
    for want in ["KeyGenerated", "KeyRotationStarted", "KeyRotated", "KeyRetired"] {
        assert_eq!(
            reasons.iter().filter(|r| *r == want).count(),
            1,
            "{want} in {reasons:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_period_starts_a_rotation_and_removing_it_cancels_the_pending_key() -> Result<()> {
    let dns_dir = tempfile::tempdir()?;
    let dns = DnsServer::start(dns_dir.path())?;
    let addr = dns.addr();
    let env = Env::start(&[
        ("OPERATOR_DNS_NAMESERVERS", &addr),
        ("OPERATOR_DNS_RECHECK_SECONDS", "1"),
    ])
    .await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    let spec: MailDomainSpec = serde_yaml_ng::from_str(&format!(
        "domain: {DOMAIN}\ndkim: {{algorithm: ed25519, rotation: {{periodSeconds: 2}}}}"
    ))?;
    api.create(&PostParams::default(), &MailDomain::new("rot", spec))
        .await?;
    // The zone is empty, so the rotation stays pending.
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Pending)).await?;
    let pending = md
        .status
        .and_then(|s| s.dkim)
        .and_then(|d| d.pending)
        .context("pending")?;
    assert_eq!(key_secrets(&env).await?.len(), 2);

    let patch = serde_json::json!({"spec": {"dkim": {"rotation": null}}});
    api.patch("rot", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let md = wait_for(&api, "rot", |md| phase(md) == Some(RotationPhase::Stable)).await?;
    wait_gone(
        &Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns),
        &pending.secret_name,
    )
    .await?;
    assert_eq!(dkim_records(&md).len(), 1);
    assert_eq!(
        md.status.and_then(|s| s.dkim).map(|d| d.selector).as_deref(),
        Some("mailroom")
    );
    Ok(())
}
