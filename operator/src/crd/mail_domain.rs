//! `MailDomain` (cluster-scoped): a sender domain, its DKIM key, the DNS records to publish and
//! which namespaces' Relays may send as it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DkimStatus, refs::conditions};

/// Lowercase DNS name with at least two labels (A-labels for IDNs), as an OpenAPI `pattern`.
pub const DOMAIN_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// The same regex inside a CEL string literal (so `\\.` is a literal dot).
pub const DOMAIN_REGEX: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A sender domain managed by mailroom. The operator generates its DKIM key into a Secret in the
/// operator's namespace, computes the DNS records to publish and checks them in live DNS.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mailroom.dev",
    version = "v1alpha1",
    kind = "MailDomain",
    plural = "maildomains",
    shortname = "md",
    category = "mailroom",
    doc = "A domain mail is sent as (cluster-scoped): its DKIM key, kept in a Secret and rotated; the SPF, DKIM and DMARC records to publish, checked against live DNS; and the namespaces whose Relays may use it. See docs/crds.md.",
    status = "MailDomainStatus",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"DNS","type":"string","jsonPath":".status.conditions[?(@.type==\"DnsVerified\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","priority":1,"jsonPath":".status.dkim.selector"}"#,
    printcolumn = r#"{"name":"Rotation","type":"string","priority":1,"jsonPath":".status.dkim.phase"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainSpec {
    /// The domain mail is sent as (the `From:` and `MAIL FROM` domain), e.g. `example.com`.
    /// Lowercase; use A-labels (`xn--...`) for internationalized names. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(format!("self.matches('{DOMAIN_REGEX}')")).message("spec.domain must be a lowercase DNS name with at least two labels, e.g. example.com"),
        validation = Rule::new("self == oldSelf").message("spec.domain is immutable; create a new MailDomain instead")
    )]
    pub domain: String,
    /// DKIM signing key settings. Default: an `rsa-2048` key published under selector `mailroom`.
    #[serde(default)]
    pub dkim: DkimSpec,
    /// SPF record the operator should recommend and check. Absent: no SPF record is recommended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<SpfSpec>,
    /// DMARC record the operator should recommend and check. Absent: no DMARC record is recommended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<DmarcSpec>,
    /// Which namespaces' Relays may send as this domain. Empty (the default) allows none.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
    /// How the records get into DNS. Absent: the operator lists them in `status.dnsRecords` and
    /// checks live DNS, and you publish them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,
}

/// How the records get into DNS.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// Publish the records automatically. Absent (the default): publish them yourself from
    /// `status.dnsRecords`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<DnsPublishSpec>,
}

/// Automatic publishing of the DKIM (every key a rotation needs), SPF and DMARC records.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DnsPublishSpec {
    /// `externalDNS`: the operator keeps the records in a `DNSEndpoint`
    /// (`externaldns.k8s.io/v1alpha1`, external-dns' CRD) named `dns-<MailDomain name>` in the
    /// operator's namespace, and external-dns (`--source=crd`) writes them to your DNS provider.
    /// See docs/dns.md for the external-dns flags this needs.
    pub mode: DnsPublishMode,
    /// TTL of the published records in seconds. Default 3600.
    #[serde(default = "default_publish_ttl")]
    #[schemars(range(min = 30, max = 604800))]
    pub ttl_seconds: u32,
    /// Labels on the DNSEndpoint, e.g. to match an external-dns `--label-filter`. The operator's
    /// own labels (`app.kubernetes.io/managed-by`, `mailroom.dev/mail-domain`) win over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub labels: BTreeMap<String, String>,
    /// Annotations on the DNSEndpoint, e.g. to match an external-dns `--annotation-filter`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub annotations: BTreeMap<String, String>,
}

/// Where published records go.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DnsPublishMode {
    /// A `DNSEndpoint` for external-dns.
    #[serde(rename = "externalDNS")]
    ExternalDns,
}

/// DKIM key settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DkimSpec {
    /// Key algorithm: `rsa-2048` (default, verifiable everywhere) or `ed25519` (RFC 8463).
    /// Immutable: every key of the MailDomain, rotated ones included, uses this algorithm; for
    /// another algorithm create a new MailDomain.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.dkim.algorithm is immutable"))]
    pub algorithm: DkimAlgorithm,
    /// DKIM selector: the public key is published at `<selector>._domainkey.<domain>`. A DNS label
    /// (letters, digits, `-`). Default `mailroom`. The first key uses it as is; keys made by
    /// rotation use `<selector>-<yyyymmdd>-<hhmmss>` (UTC time the rotation started), with the
    /// selector shortened so the result stays a 63-octet DNS label.
    #[serde(default = "default_selector")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.dkim.selector must be a lowercase DNS label, e.g. mailroom"))]
    pub selector: String,
    /// Automatic key rotation. Absent (the default): the key is kept until rotated by hand with
    /// the annotation `mailroom.dev/rotate-dkim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<DkimRotationSpec>,
}

/// When to replace the DKIM key, and how long the previous key stays published.
///
/// A rotation creates a new key under a new selector and lists its record in
/// `status.dnsRecords` next to the current one; signing switches to the new key only once live DNS
/// serves its record, and the previous record stays listed for `graceSeconds` after the switch so
/// mail signed just before it still verifies.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DkimRotationSpec {
    /// Start a rotation once the signing key has signed for this many seconds, e.g. 7776000
    /// (90 days). At least 1; a new rotation waits until the previous key has retired.
    #[schemars(range(min = 1, max = 315360000))]
    pub period_seconds: u64,
    /// Seconds the previous key stays published after signing switched away from it (mail in
    /// queues and receivers that verify late still need it). Default 604800 (7 days); at least 1.
    #[serde(default = "default_grace_seconds")]
    #[schemars(range(min = 1, max = 31536000))]
    pub grace_seconds: u64,
}

/// DKIM key algorithm.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DkimAlgorithm {
    /// RSA with a 2048-bit key, signed as `rsa-sha256`.
    #[default]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// Ed25519, signed as `ed25519-sha256` (RFC 8463).
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// Inputs for the recommended SPF record (`v=spf1 include:... <all>`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpfSpec {
    /// Domains whose SPF records are included (`include:<domain>`), e.g. your smarthost provider's.
    #[serde(default)]
    #[schemars(length(max = 10), inner(length(min = 1, max = 253), regex(pattern = DOMAIN_PATTERN)))]
    pub includes: Vec<String>,
    /// What happens to mail from other hosts: `softfail` (`~all`, default), `fail` (`-all`) or
    /// `neutral` (`?all`).
    #[serde(default)]
    pub all: SpfAll,
}

/// The SPF `all` mechanism qualifier.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SpfAll {
    /// `~all`: other hosts soft-fail.
    #[default]
    Softfail,
    /// `-all`: other hosts fail.
    Fail,
    /// `?all`: no statement about other hosts.
    Neutral,
}

/// Inputs for the recommended DMARC record at `_dmarc.<domain>`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DmarcSpec {
    /// Policy for mail failing DMARC: `none` (default, monitor only), `quarantine` or `reject`.
    #[serde(default)]
    pub policy: DmarcPolicy,
    /// Address receiving aggregate reports (`rua=mailto:<address>`). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    #[x_kube(validation = Rule::new("self.matches('^[^@\\\\s;,]+@[^@\\\\s;,]+$')").message("spec.dmarc.reportEmail must be an email address"))]
    pub report_email: Option<String>,
}

/// DMARC policy (`p=`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DmarcPolicy {
    /// `p=none`: report only.
    #[default]
    None,
    /// `p=quarantine`: failing mail goes to spam.
    Quarantine,
    /// `p=reject`: failing mail is refused.
    Reject,
}

/// Namespaces whose Relays may send as the domain: listed by name, selected by label, or both
/// (a namespace matching either is allowed). Both empty allows no namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names.
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub names: Vec<String>,
    /// Label selector over namespaces (`matchLabels`, `matchExpressions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// What the operator observed about a MailDomain.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainStatus {
    /// `Ready`, `DkimKeyReady` and `DnsVerified`.
    #[serde(default)]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The DKIM key that signs, plus the key being rotated in or out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimStatus>,
    /// The records to publish in DNS, each with what live DNS said at the last check.
    #[serde(default)]
    pub dns_records: Vec<DnsRecordStatus>,
}

/// One DNS record to publish, and what live DNS says about it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecordStatus {
    /// `dkim`, `spf` or `dmarc`.
    pub purpose: String,
    /// Fully qualified owner name, e.g. `mailroom._domainkey.example.com`.
    pub name: String,
    /// Record type; always `TXT`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The record's character-strings, each at most 255 octets (RFC 1035 3.3.14); publish them as
    /// one TXT record.
    pub value: Vec<String>,
    /// Whether live DNS serves a matching record.
    #[serde(default)]
    pub verified: bool,
    /// What live DNS returned at the last check (each TXT record joined), or the lookup error.
    #[serde(default)]
    pub observed: Vec<String>,
    /// When DNS was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// DKIM records only: which key the record publishes. `active` signs; `pending` is the new
    /// key of a rotation (publish it: signing switches once it resolves); `retiring` is the
    /// previous key (keep it until `status.dkim.retiring.retireAt`, then remove it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Default `spec.dns.publish.ttlSeconds`.
pub const DEFAULT_PUBLISH_TTL: u32 = 3600;

fn default_publish_ttl() -> u32 {
    DEFAULT_PUBLISH_TTL
}

fn default_selector() -> String {
    "mailroom".into()
}

/// Default `spec.dkim.rotation.graceSeconds`: 7 days.
pub const DEFAULT_GRACE_SECONDS: u64 = 7 * 24 * 3600;

fn default_grace_seconds() -> u64 {
    DEFAULT_GRACE_SECONDS
}

impl Default for DkimSpec {
    fn default() -> Self {
        Self {
            algorithm: DkimAlgorithm::default(),
            selector: default_selector(),
            rotation: None,
        }
    }
}

impl DkimAlgorithm {
    /// The spelling used in the spec and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa-2048",
            Self::Ed25519 => "ed25519",
        }
    }
}
