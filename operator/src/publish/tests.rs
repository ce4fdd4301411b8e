use std::collections::BTreeMap;

use kube::Resource;

use super::*;
use crate::crd::{DnsRecordStatus, MailDomain};

fn record(name: &str, value: &[&str]) -> DnsRecordStatus {
    DnsRecordStatus {
        purpose: "dkim".into(),
        name: name.into(),
        type_: "TXT".into(),
        value: value.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn publish(md: &MailDomain) -> &DnsPublishSpec {
    md.spec
        .dns
        .as_ref()
        .and_then(|d| d.publish.as_ref())
        .expect("publishing")
}

#[test]
fn each_record_is_one_quoted_target_with_the_ttl_and_an_owner() {
    let md = MailDomain::test("shop", "shop.example").publishing();
    let owner = md.controller_owner_ref(&()).expect("has a uid");
    let records = [
        record(
            "mailroom._domainkey.shop.example",
            &["v=DKIM1; k=rsa; p=AAAA", "BBBB"],
        ),
        record("shop.example", &["v=spf1 ~all"]),
    ];
    let ep = dns_endpoint(&md, publish(&md), "mailroom", &records, owner.clone());
    assert_eq!(ep.metadata.name.as_deref(), Some("dns-shop"));
    assert_eq!(ep.metadata.namespace.as_deref(), Some("mailroom"));
    assert_eq!(ep.metadata.owner_references, Some(vec![owner]));
    assert_eq!(ep.spec.endpoints.len(), 2);
    let dkim = &ep.spec.endpoints[0];
    assert_eq!(dkim.dns_name, "mailroom._domainkey.shop.example");
    assert_eq!(dkim.record_type, "TXT");
    // Two strings of one record, not two records.
    assert_eq!(
        dkim.targets,
        vec![r#""v=DKIM1; k=rsa; p=AAAA" "BBBB""#.to_string()]
    );
    assert_eq!(dkim.record_ttl, Some(3600));
    assert_eq!(ep.spec.endpoints[1].targets, vec![r#""v=spf1 ~all""#.to_string()]);
}

#[test]
fn records_at_one_name_share_an_endpoint() {
    let md = MailDomain::test("shop", "shop.example").publishing();
    let owner = md.controller_owner_ref(&()).expect("has a uid");
    let records = [
        record("a.shop.example", &["one"]),
        record("a.shop.example", &["two"]),
    ];
    let ep = dns_endpoint(&md, publish(&md), "mailroom", &records, owner);
    assert_eq!(ep.spec.endpoints.len(), 1);
    assert_eq!(ep.spec.endpoints[0].targets, vec![r#""one""#, r#""two""#]);
}

#[test]
fn our_labels_win_and_annotations_pass_through() {
    let mut md = MailDomain::test("shop", "shop.example").publishing();
    let p = md
        .spec
        .dns
        .as_mut()
        .and_then(|d| d.publish.as_mut())
        .expect("publishing");
    p.labels = BTreeMap::from([
        ("team".to_string(), "mail".to_string()),
        (DOMAIN_LABEL.to_string(), "someone-else".to_string()),
    ]);
    p.annotations = BTreeMap::from([("external-dns.alpha.kubernetes.io/x".to_string(), "y".to_string())]);
    let owner = md.controller_owner_ref(&()).expect("has a uid");
    let ep = dns_endpoint(&md, publish(&md), "mailroom", &[], owner);
    let labels = ep.metadata.labels.expect("labels");
    assert_eq!(labels["team"], "mail");
    assert_eq!(labels[DOMAIN_LABEL], "shop");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "mailroom-operator");
    assert_eq!(
        ep.metadata.annotations.expect("annotations")["external-dns.alpha.kubernetes.io/x"],
        "y"
    );
}

#[test]
fn presentation_escapes_quotes_and_splits_at_255_octets() {
    assert_eq!(presentation(&[r#"a"b\c"#.into()]), r#""a\"b\\c""#);
    let long = "x".repeat(600);
    let out = presentation(&[long]);
    let strings: Vec<&str> = out.split(' ').collect();
    assert_eq!(strings.len(), 3);
    assert_eq!(strings[0].len(), 257);
    assert_eq!(strings[2].len(), 90 + 2);
    // A multi-byte character is never cut in half.
    let wide = "é".repeat(200);
    let out = presentation(&[wide]);
    assert!(out.split(' ').all(|s| s.len() <= 257));
    assert_eq!(out.replace(['"', ' '], ""), "é".repeat(200));
}
