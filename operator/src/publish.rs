//! Pure record publishing: the `DNSEndpoint` that hands a MailDomain's records to external-dns
//! (`spec.dns.publish.mode: externalDNS`).

use std::collections::BTreeMap;

use kube::{ResourceExt, api::ObjectMeta};

use crate::{
    crd::{DNSEndpoint, DNSEndpointSpec, DnsPublishSpec, DnsRecordStatus, Endpoint, MailDomain},
    dkim::TXT_STRING_MAX,
};

/// Label on the DNSEndpoint naming its MailDomain (the key Secrets carry the same one).
pub const DOMAIN_LABEL: &str = "mailroom.dev/mail-domain";

/// The DNSEndpoint of MailDomain `name`, in the operator's namespace.
pub fn endpoint_name(name: &str) -> String {
    format!("dns-{name}")
}

/// The DNSEndpoint publishing `records` (the MailDomain's `status.dnsRecords`, every key a
/// rotation needs included), owned by `md` so that deleting the MailDomain deletes it.
pub fn dns_endpoint(
    md: &MailDomain,
    publish: &DnsPublishSpec,
    namespace: &str,
    records: &[DnsRecordStatus],
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> DNSEndpoint {
    let mut labels = publish.labels.clone();
    labels.insert("app.kubernetes.io/managed-by".into(), "mailroom-operator".into());
    labels.insert(DOMAIN_LABEL.into(), md.name_any());
    // One endpoint per owner name: external-dns treats (name, type) as one record set.
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for record in records {
        by_name
            .entry(record.name.as_str())
            .or_default()
            .push(presentation(&record.value));
    }
    let endpoints = by_name
        .into_iter()
        .map(|(name, targets)| Endpoint {
            dns_name: name.to_string(),
            record_type: "TXT".into(),
            targets,
            record_ttl: Some(i64::from(publish.ttl_seconds)),
        })
        .collect();
    DNSEndpoint {
        metadata: ObjectMeta {
            name: Some(endpoint_name(&md.name_any())),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: (!publish.annotations.is_empty()).then(|| publish.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: DNSEndpointSpec { endpoints },
    }
}

/// A TXT record in zone-file presentation format (RFC 1035 5.1): each character-string quoted,
/// with `"` and `\` escaped. This is the form external-dns hands to the RFC 2136 provider (which
/// parses it as zone-file text) and that Route 53 and Cloud DNS expect; one target is one record,
/// so a DKIM key longer than 255 octets stays one record of several strings (RFC 6376 3.6.2.2).
pub fn presentation(strings: &[String]) -> String {
    strings
        .iter()
        .flat_map(|s| split(s))
        .map(|s| {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` in pieces of at most 255 octets, never inside a UTF-8 sequence (status values are
/// already split; this only guards the invariant).
fn split(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > TXT_STRING_MAX {
        let mut at = TXT_STRING_MAX;
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        let (head, tail) = rest.split_at(at);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests;
