//! `spec.dns.publish.mode: externalDNS` against a real kube-apiserver, the operator running with
//! exactly the chart's RBAC: without external-dns' CRD the MailDomain says so; once the real CRD
//! (from external-dns' module) is installed, the DNSEndpoint passes its schema and holds exactly
//! `status.dnsRecords`, an edited copy is repaired, and turning publishing off deletes it.
//! tests/e2e/tests/external_dns.rs runs external-dns itself against BIND.

use mailroom_test_support::operator as common;

use anyhow::{Context as _, Result, ensure};
use common::{DnsServer, Env, wait_for};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use mailroom_operator::crd::{DNSEndpoint, MailDomain, MailDomainSpec};

fn condition(md: &MailDomain, type_: &str) -> (String, String) {
    common::domain_condition(md, type_)
}

#[tokio::test]
async fn records_are_handed_to_external_dns_in_a_dns_endpoint() -> Result<()> {
    // A real (empty) zone: every lookup answers at once, so reconciles are not held up by
    // timeouts, and the records are never served (publishing, not DNS, is under test).
    let tmp = tempfile::tempdir()?;
    let dns = DnsServer::start(tmp.path())?;
    let env = Env::start(&[
        ("OPERATOR_DNS_NAMESERVERS", &dns.addr()),
        ("OPERATOR_DNS_RECHECK_SECONDS", "1"),
    ])
    .await?;
    let api: Api<MailDomain> = Api::all(env.admin.clone());
    let spec: MailDomainSpec = serde_yaml_ng::from_str(
        "domain: shop.example.com
spf: {includes: [spf.provider.net]}
dmarc: {policy: quarantine}
dns:
  publish: {mode: externalDNS, ttlSeconds: 300, labels: {dns: external}}",
    )?;
    api.create(&PostParams::default(), &MailDomain::new("shop", spec))
        .await?;

    // No CRD: a condition that says what to do, and the domain still usable.
    let md = wait_for(&api, "shop", |md| {
        condition(md, "DnsPublished") == ("False".into(), "DNSEndpointCRDMissing".into())
    })
    .await?;
    ensure!(
        condition(&md, "Ready").0 == "True",
        "Ready does not wait for DNS: {:?}",
        md.status
    );

    // The real CRD: the DNSEndpoint passes its schema and mirrors status.dnsRecords.
    common::install_external_dns_crd(&env.admin).await?;
    let md = wait_for(&api, "shop", |md| {
        condition(md, "DnsPublished") == ("True".into(), "RecordsPublished".into())
    })
    .await?;
    let endpoints: Api<DNSEndpoint> = Api::namespaced(env.admin.clone(), &env.operator_ns);
    let ep = endpoints.get("dns-shop").await?;
    let records = md.status.as_ref().context("status")?.dns_records.clone();
    ensure!(records.len() == 3, "dkim, spf, dmarc: {records:?}");
    let want: Vec<(String, Vec<String>)> = records
        .iter()
        .map(|r| {
            let quoted: Vec<String> = r.value.iter().map(|s| format!("\"{s}\"")).collect();
            (r.name.clone(), vec![quoted.join(" ")])
        })
        .collect();
    let mut got: Vec<(String, Vec<String>)> = ep
        .spec
        .endpoints
        .iter()
        .map(|e| (e.dns_name.clone(), e.targets.clone()))
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    got.sort();
    assert_eq!(got, want_sorted);
    ensure!(
        ep.spec
            .endpoints
            .iter()
            .all(|e| e.record_type == "TXT" && e.record_ttl == Some(300)),
        "{:?}",
        ep.spec
    );
    assert_eq!(ep.labels().get("dns").map(String::as_str), Some("external"));
    let owner = ep.owner_references().first().context("owner reference")?;
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("MailDomain", "shop"));

    // Someone edits it: the next reconcile puts the records back.
    let vandal = serde_json::json!({"spec": {"endpoints": [
        {"dnsName": "shop.example.com", "recordType": "TXT", "targets": ["\"v=spf1 +all\""]}
    ]}});
    endpoints
        .patch("dns-shop", &PatchParams::default(), &Patch::Merge(&vandal))
        .await?;
    wait_for(&endpoints, "dns-shop", |ep: &DNSEndpoint| {
        ep.spec.endpoints.len() == 3
    })
    .await?;

    // Publishing turned off: the DNSEndpoint and the condition go.
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"dns": null}})),
    )
    .await?;
    wait_for(&api, "shop", |md| condition(md, "DnsPublished").0.is_empty()).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while endpoints.get_opt("dns-shop").await?.is_some() {
        ensure!(
            std::time::Instant::now() < deadline,
            "DNSEndpoint dns-shop still exists 30 s after spec.dns was removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}
