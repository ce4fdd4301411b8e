//! `spec.dns.publish`: keeps the MailDomain's DNSEndpoint equal to `status.dnsRecords` (applied
//! on every reconcile, so an edited or deleted DNSEndpoint is repaired at the next DNS check), or
//! deletes it once publishing is turned off.

use kube::{Api, ResourceExt, api::DeleteParams};

use crate::{
    Error, Result,
    apply::{self, owner_ref},
    conditions::{Cond, DNS_PUBLISHED},
    crd::{DNSEndpoint, DnsRecordStatus, MailDomain},
    events::Reason,
    publish,
};

use super::Context;

/// What publishing did this reconcile.
#[derive(Debug)]
pub enum Published {
    /// The MailDomain does not publish (and no DNSEndpoint of it is left).
    Off,
    /// The `DnsPublished` condition to set; `True` when the DNSEndpoint holds `records`.
    On(Cond),
}

/// Applies the DNSEndpoint for `records`, or deletes it when `md` stopped publishing and
/// `was_publishing` (its status still has `DnsPublished`). Refusals that only a person can fix
/// (the CRD missing, RBAC, a label the apiserver rejects) become a `False` condition; other
/// errors are returned for the reconcile to retry.
pub async fn sync(
    md: &MailDomain,
    ctx: &Context,
    records: &[DnsRecordStatus],
    was_publishing: bool,
) -> Result<Published> {
    let namespace = &ctx.settings.namespace;
    let api: Api<DNSEndpoint> = Api::namespaced(ctx.client.clone(), namespace);
    let name = md.name_any();
    let target = format!("DNSEndpoint {namespace}/{}", publish::endpoint_name(&name));
    let Some(spec) = md.spec.dns.as_ref().and_then(|d| d.publish.as_ref()) else {
        if was_publishing {
            match api
                .delete(&publish::endpoint_name(&name), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                // Gone already, or the CRD is gone with it.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube("delete DNSEndpoint")(e)),
            }
        }
        return Ok(Published::Off);
    };
    let ep = publish::dns_endpoint(md, spec, namespace, records, owner_ref(md)?);
    let cond = match apply::apply(&api, &ep, "apply DNSEndpoint").await {
        Ok(_) => Cond::yes(
            DNS_PUBLISHED,
            Reason::RecordsPublished,
            format!(
                "MailDomain {name}: {} records are in {target} for external-dns to publish",
                records.len()
            ),
        ),
        Err(Error::Kube {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 404 => Cond::no(
            DNS_PUBLISHED,
            Reason::DNSEndpointCRDMissing,
            format!(
                "MailDomain {name}: the DNSEndpoint CRD (externaldns.k8s.io/v1alpha1) is not installed; install external-dns' CRD, or remove spec.dns.publish and publish status.dnsRecords yourself"
            ),
        ),
        Err(Error::Kube {
            source: kube::Error::Api(e),
            ..
        }) if matches!(e.code, 403 | 422 | 400) => Cond::no(
            DNS_PUBLISHED,
            Reason::PublishRefused,
            format!("MailDomain {name}: the apiserver refused {target}: {}", e.message),
        ),
        Err(e) => return Err(e),
    };
    Ok(Published::On(cond))
}
