//! external-dns' `DNSEndpoint` (`externaldns.k8s.io/v1alpha1`), the fields the operator writes.
//! The CRD belongs to external-dns: crdgen never emits it, and the operator only applies objects
//! of it when a MailDomain asks for `spec.dns.publish.mode: externalDNS`.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The records external-dns should publish (its `source/crd.go` reads `spec.endpoints`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[kube(
    group = "externaldns.k8s.io",
    version = "v1alpha1",
    kind = "DNSEndpoint",
    plural = "dnsendpoints",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DNSEndpointSpec {
    /// One entry per owner name and type.
    pub endpoints: Vec<Endpoint>,
}

/// One record set, as external-dns' `endpoint.Endpoint` serializes it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Owner name without a trailing dot.
    pub dns_name: String,
    /// `TXT`.
    pub record_type: String,
    /// One entry per record of the set. For TXT, the record in presentation format: quoted
    /// character-strings of at most 255 octets each (RFC 1035 5.1).
    pub targets: Vec<String>,
    /// TTL in seconds.
    #[serde(rename = "recordTTL", default, skip_serializing_if = "Option::is_none")]
    pub record_ttl: Option<i64>,
}
