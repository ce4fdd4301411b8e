//! MailDomain against a real kube-apiserver: the DKIM key is generated once and kept across
//! operator restarts, a lost key is reported (never replaced), and DNS verification flips with
//! what a real DNS server on loopback serves, checked by an independent DKIM verifier (dkimpy).

use mailroom_test_support::operator as common;

use anyhow::{Context as _, Result, ensure};
use common::{DnsServer, Env, ready, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use mailroom_operator::crd::{MailDomain, MailDomainSpec};

fn domain(name: &str, yaml: &str) -> Result<MailDomain> {
    let spec: MailDomainSpec = serde_yaml_ng::from_str(yaml)?;
    Ok(MailDomain::new(name, spec))
}

fn has_key(md: &MailDomain) -> bool {
    md.status.as_ref().and_then(|s| s.dkim.as_ref()).is_some()
        && ready(
            &md.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            "Ready",
        )
        .0 == "True"
}

#[tokio::test]
async fn dkim_key_is_created_once_and_stable_across_operator_restarts() -> Result<()> {
    let mut env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    api.create(
        &PostParams::default(),
        &domain("stable", "domain: stable.example.com\ndkim: {algorithm: ed25519}")?,
    )
    .await?;
    let first = wait_for(&api, "stable", has_key).await?;
    let dkim = first
        .status
        .as_ref()
        .and_then(|s| s.dkim.clone())
        .context("dkim status")?;
    assert_eq!(dkim.algorithm, "ed25519");
    assert_eq!(dkim.selector, "mailroom");
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.operator_ns);
    let secret = secrets.get(&dkim.secret_name).await?;

    env.stop_operator();
    env.start_operator().await?;
    // A spec change forces a reconcile by the new operator.
    let patch = serde_json::json!({"spec": {"dkim": {"selector": "second"}}});
    api.patch("stable", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let after = wait_for(&api, "stable", |md| {
        md.status
            .as_ref()
            .and_then(|s| s.dkim.as_ref())
            .is_some_and(|d| d.selector == "second")
    })
    .await?;
    let again = after.status.and_then(|s| s.dkim).context("dkim status")?;
    assert_eq!(again.fingerprint, dkim.fingerprint, "the key must not change");
    let secret_after = secrets.get(&dkim.secret_name).await?;
    assert_eq!(secret_after.metadata.uid, secret.metadata.uid);
    assert_eq!(
        secret_after.metadata.resource_version,
        secret.metadata.resource_version
    );
    Ok(())
}

#[tokio::test]
async fn deleted_key_secret_is_reported_and_not_replaced() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    api.create(
        &PostParams::default(),
        &domain("lost", "domain: lost.example.com\ndkim: {algorithm: ed25519}")?,
    )
    .await?;
    let md = wait_for(&api, "lost", has_key).await?;
    let secret_name = md.status.and_then(|s| s.dkim).context("dkim")?.secret_name;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.operator_ns);
    secrets.delete(&secret_name, &DeleteParams::default()).await?;
    let md = wait_for(&api, "lost", |md| {
        let conds = md
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        ready(&conds, "Ready") == ("False".into(), "DkimKeyLost".into())
    })
    .await?;
    let conds = md.status.map(|s| s.conditions).unwrap_or_default();
    assert_eq!(
        ready(&conds, "DkimKeyReady"),
        ("False".into(), "DkimKeyLost".into())
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        secrets.get_opt(&secret_name).await?.is_none(),
        "a lost key is never silently replaced"
    );
    Ok(())
}

#[tokio::test]
async fn dns_verified_follows_live_dns_and_an_independent_verifier_accepts_the_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dns = DnsServer::start(tmp.path())?;
    let addr = dns.addr();
    let env = Env::start(&[
        ("OPERATOR_DNS_NAMESERVERS", &addr),
        ("OPERATOR_DNS_RECHECK_SECONDS", "1"),
    ])
    .await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    let spec = "domain: shop.example.com
dkim: {selector: s2026}
spf: {includes: [spf.provider.net], all: fail}
dmarc: {policy: reject, reportEmail: dmarc@shop.example.com}";
    api.create(&PostParams::default(), &domain("shop", spec)?).await?;
    let dns_state = |want: &'static str| {
        move |md: &MailDomain| {
            let conds = md
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            ready(&conds, "DnsVerified").0 == want
        }
    };
    let md = wait_for(&api, "shop", dns_state("False")).await?;
    let status = md.status.context("status")?;
    let records = &status.dns_records;
    ensure!(records.len() == 3, "want dkim, spf, dmarc: {records:?}");
    assert_eq!(records[0].name, "s2026._domainkey.shop.example.com");
    assert!(records[0].value.len() >= 2 && records[0].value.iter().all(|s| s.len() <= 255));
    assert_eq!(records[1].value, ["v=spf1 include:spf.provider.net -all"]);
    assert_eq!(
        records[2].value,
        ["v=DMARC1; p=reject; rua=mailto:dmarc@shop.example.com"]
    );

    // Publish exactly what status says; DnsVerified turns True.
    let zone: Vec<String> = records
        .iter()
        .map(|r| {
            let strings: Vec<String> = r.value.iter().map(|s| format!("\"{s}\"")).collect();
            format!("{}. 300 IN TXT {}", r.name, strings.join(" "))
        })
        .collect();
    dns.serve(&zone)?;
    let md = wait_for(&api, "shop", dns_state("True")).await?;
    assert!(
        md.status
            .as_ref()
            .is_some_and(|s| s.dns_records.iter().all(|r| r.verified))
    );

    // dkimpy signs with the generated key and verifies against the same DNS server.
    let secret_name = md.status.and_then(|s| s.dkim).context("dkim")?.secret_name;
    let secret = Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .get(&secret_name)
        .await?;
    let pem = secret
        .data
        .and_then(|d| d.get("private.pem").cloned())
        .context("private.pem")?;
    common::dkimpy_sign_verify(&pem.0, "s2026", "shop.example.com", dns.port)?;

    // Records disappear: DnsVerified turns False again.
    dns.serve(&[])?;
    wait_for(&api, "shop", dns_state("False")).await?;
    Ok(())
}
