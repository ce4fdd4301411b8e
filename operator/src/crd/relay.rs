//! `Relay` (namespaced): which MailDomains a workload sends as and how its sidecar delivers mail.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::refs::{CredentialsSecretRef, SecretKeyRef, conditions};

/// The host name pattern of the rules below (a macro, so that both can be built from it).
macro_rules! name_rule {
    () => {
        r"self.matches('^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$')"
    };
}

/// A host name, not an IP address (RFC 5321 4.1.3 wants those as `[192.0.2.1]`), as a CEL
/// expression over `self`.
const NAME_RULE: &str = concat!(name_rule!(), " && !isIP(self)");

/// Host name or IPv4/IPv6 literal, as a CEL expression over `self`.
const HOST_RULE: &str = concat!(name_rule!(), " || isIP(self)");

/// An outbound mail relay for the pods of one namespace: the sidecar accepts mail on loopback in
/// each pod and delivers it as configured here, DKIM-signed for the listed MailDomains.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mailroom.dev",
    version = "v1alpha1",
    kind = "Relay",
    plural = "relays",
    shortname = "rly",
    category = "mailroom",
    doc = "A mail relay for the pods of one namespace: the sidecar the webhook injects into pods that opt in (label mailroom.dev/relay), how it delivers (smarthost, direct MX or capture), the MailDomains it may send as, its limits and retries, and optionally a hub that keeps mail when pods go away. See docs/crds.md.",
    namespaced,
    status = "RelayStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Domains","type":"string","jsonPath":".spec.domains"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Hub","type":"string","jsonPath":".status.conditions[?(@.type==\"HubReady\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Names of the MailDomains this relay sends as (at least one, at most 32, no duplicates). Each
    /// must exist, be Ready and allow this namespace.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub domains: Vec<String>,
    /// How mail leaves the pod: exactly one of `smarthost`, `direct` or `capture`.
    pub delivery: Delivery,
    /// Retry schedule for temporary failures. Default: sidecar defaults (60 s, doubling to 3600 s,
    /// give up after 5 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Limits on accepted mail. Default: sidecar defaults (25 MiB, 100 recipients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Loopback port the sidecar listens on inside each pod. Default 25.
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: u32,
    /// A durable hub for this Relay: a StatefulSet with a volume per pod, to which each sidecar
    /// hands the mail it has not delivered when its pod stops, so that accepted mail survives
    /// the pod (docs/hub.md). Absent: undelivered mail is lost with the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSpec>,
    /// The name the sidecar gives in EHLO, its greeting, `Received:` fields and bounces. Some
    /// smarthosts and receivers want a name that resolves. Default `<relay>.<namespace>.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(NAME_RULE).message("spec.ehloName must be a host name"))]
    pub ehlo_name: Option<String>,
    /// Delivery status notifications the sidecar sends itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounces: Option<BouncesSpec>,
    /// Per-destination shaping: attempts at once and messages a minute per recipient domain,
    /// with a default for every other domain. One destination's limits, slowness or deferrals
    /// hold back only its own mail (docs/operations.md "Per-destination shaping").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<ShapingSpec>,
}

/// Per-destination shaping.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShapingSpec {
    /// Every recipient domain not listed in `domains`. Absent `concurrency`: with direct delivery
    /// `maxConnectionsPerDomain`, with a smarthost its `maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DestinationLimitsSpec>,
    /// By recipient domain, lower case (`gmail.com: {concurrency: 20, ratePerMinute: 600}`); a
    /// listed domain without a `ratePerMinute` takes the default's. At most 200.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 200))]
    #[x_kube(validation = Rule::new("self.all(d, d.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$'))").message("spec.shaping.domains keys must be lower-case domain names, e.g. gmail.com"))]
    pub domains: BTreeMap<String, DestinationLimitsSpec>,
}

/// The limits of one destination.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationLimitsSpec {
    /// Delivery attempts to the destination at once, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency: Option<u32>,
    /// Messages to the destination a minute (a minute's worth may go at once), 1 to 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rate_per_minute: Option<u32>,
}

/// Notices to the sender.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BouncesSpec {
    /// Send one "delayed" notice (RFC 3464) once a message has waited this many seconds, to the
    /// recipients whose NOTIFY includes DELAY or who gave none. 60 to 2592000. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 2592000))]
    pub delay_notice_after_seconds: Option<u64>,
}

/// The Relay's hub (docs/hub.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubSpec {
    /// Hub pods, 1 to 9. Default 2, so that one can be rolled or lost while the other takes
    /// hand-offs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<u32>,
    /// Size of each hub pod's volume (a PersistentVolumeClaim). Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub storage: Option<String>,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Resources of each hub pod's container. Default: requests of 50m CPU and 64Mi memory, a
    /// limit of 256Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Seconds at the end of a sidecar's drain kept for the hand-off, 1 to 300. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub drain_reserve_seconds: Option<u64>,
    /// Also hand off mail whose route has been parked (down) this many seconds, to keep pod
    /// spools small during a long outage; 60 to 604800. Default: only when a pod stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub after_parked_seconds: Option<u64>,
    /// What an app's `250` means. `handoff` (default): the message is on the pod's disk, and
    /// goes to the hub when the pod drains. `replicated`: it is also on a hub's disk (a shadow
    /// copy), so a node lost without a drain loses nothing; costs one round trip to the hub per
    /// message (docs/hub.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
}

/// `spec.hub.durability`.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// Durable on the pod's disk; handed to the hub when the pod drains.
    #[default]
    Handoff,
    /// Durable on the pod's disk and on a hub's before `250`.
    Replicated,
}

/// Delivery mode; exactly one field is set.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.smarthost), has(self.direct), has(self.capture)].filter(x, x).size() == 1").message("spec.delivery must set exactly one of smarthost, direct or capture"))]
pub struct Delivery {
    /// Relay all mail through one SMTP server (your provider's submission endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<SmarthostSpec>,
    /// Deliver to each recipient domain's mail exchangers (MX lookup), as an MTA does. Needs
    /// outbound port 25 and a sending IP with a good reputation; see docs/delivery.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectSpec>,
    /// Keep every message as a file in the sidecar and send nothing (staging, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSpec>,
}

/// Direct delivery: MX lookup through the pod's resolver, opportunistic or required TLS.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectSpec {
    /// `opportunistic` (default: STARTTLS when offered, RFC 7435) or `require` (never plain text;
    /// destinations without STARTTLS are deferred).
    #[serde(default)]
    pub tls: DirectTls,
    /// MTA-STS (RFC 8461): `none` (default: not consulted), `testing` (report only) or `enforce`
    /// (MX must match the published policy and present a valid certificate).
    #[serde(default)]
    pub mta_sts: MtaSts,
    /// DANE (RFC 7672): `opportunistic` (default: DNSSEC-validate DNS answers and, where an MX
    /// host publishes secure TLSA records, require a certificate matching them; takes precedence
    /// over MTA-STS) or `none` (no DNSSEC validation, no TLSA lookups). With `opportunistic` the
    /// pod's resolver must pass DNSSEC records through: answers that fail validation defer mail.
    #[serde(default)]
    pub dane: Dane,
    /// Connections to one recipient domain at once, 1 to 100. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_connections_per_domain: Option<u32>,
}

/// DANE handling for direct delivery.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Dane {
    /// No DNSSEC validation and no TLSA lookups.
    None,
    /// TLSA records are used where DNSSEC proves them; plain opportunistic TLS elsewhere.
    #[default]
    Opportunistic,
}

/// TLS for direct delivery.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DirectTls {
    /// STARTTLS when the server offers it.
    #[default]
    Opportunistic,
    /// STARTTLS always; never plain text.
    Require,
}

/// MTA-STS handling for direct delivery.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MtaSts {
    /// Not consulted (RFC 8461's own name for the mode; also not a YAML 1.1 boolean like `off`).
    #[default]
    None,
    /// Fetched and evaluated; violations are only reported.
    Testing,
    /// Enforced when the domain publishes `mode: enforce`.
    Enforce,
}

/// An SMTP smarthost.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretRef) || self.tls != 'none'").message("spec.delivery.smarthost.credentialsSecretRef needs tls starttls or implicit; credentials are never sent in plain text"))]
#[x_kube(validation = Rule::new("!has(self.authMechanism) || has(self.credentialsSecretRef)").message("spec.delivery.smarthost.authMechanism needs credentialsSecretRef"))]
pub struct SmarthostSpec {
    /// Host name or IP address of the smarthost.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(HOST_RULE).message("spec.delivery.smarthost.host must be a host name or IP address"))]
    pub host: String,
    /// TCP port, 1 to 65535. Default 587 (submission).
    #[serde(default = "default_smarthost_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// `starttls` (default; required, never downgraded), `implicit` (TLS from the first byte, port
    /// 465) or `none` (plain text).
    #[serde(default)]
    pub tls: SmarthostTls,
    /// Secret with the SMTP AUTH user name and password. Absent: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Secret key holding a PEM CA bundle that must have signed the smarthost's certificate.
    /// Absent: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// SMTP AUTH mechanism with the credentials: `plain` (default, RFC 4616), `login`, or
    /// `xoauth2` (the password key then holds an OAuth 2.0 access token, kept fresh by whoever
    /// writes the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mechanism: Option<SmarthostAuth>,
    /// Connections to the smarthost at once, 1 to 100. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_connections: Option<u32>,
    /// A backup smarthost with its own TLS, CA and credentials: used while this one is parked
    /// (down after repeated connection failures) and, within the same attempt, for each
    /// recipient this one refuses with a temporary failure (4xx). Delivery goes back to this one
    /// as soon as it answers again. The `route` label of the delivery metrics says which one
    /// took each recipient (`smarthost` or `backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSmarthostSpec>,
}

/// The backup smarthost: the same fields as the smarthost, without a backup of its own.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretRef) || self.tls != 'none'").message("spec.delivery.smarthost.backup.credentialsSecretRef needs tls starttls or implicit; credentials are never sent in plain text"))]
#[x_kube(validation = Rule::new("!has(self.authMechanism) || has(self.credentialsSecretRef)").message("spec.delivery.smarthost.backup.authMechanism needs credentialsSecretRef"))]
pub struct BackupSmarthostSpec {
    /// Host name or IP address of the backup smarthost.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(HOST_RULE).message("spec.delivery.smarthost.backup.host must be a host name or IP address"))]
    pub host: String,
    /// TCP port, 1 to 65535. Default 587 (submission).
    #[serde(default = "default_smarthost_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// `starttls` (default), `implicit` or `none`, as for the smarthost.
    #[serde(default)]
    pub tls: SmarthostTls,
    /// Secret with the backup's SMTP AUTH user name and password. Absent: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Secret key holding a PEM CA bundle for the backup's certificate. Absent: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// SMTP AUTH mechanism: `plain` (default), `login` or `xoauth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mechanism: Option<SmarthostAuth>,
    /// Connections to the backup at once, 1 to 100. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_connections: Option<u32>,
}

impl SmarthostSpec {
    /// The backup's settings as a smarthost of their own (without a backup).
    pub fn backup_endpoint(&self) -> Option<SmarthostSpec> {
        self.backup.as_ref().map(|b| SmarthostSpec {
            host: b.host.clone(),
            port: b.port,
            tls: b.tls,
            credentials_secret_ref: b.credentials_secret_ref.clone(),
            ca_secret_ref: b.ca_secret_ref.clone(),
            auth_mechanism: b.auth_mechanism,
            max_connections: b.max_connections,
            backup: None,
        })
    }
}

/// SMTP AUTH mechanism for the smarthost.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SmarthostAuth {
    /// AUTH PLAIN (RFC 4616).
    Plain,
    /// AUTH LOGIN.
    Login,
    /// AUTH XOAUTH2.
    Xoauth2,
}

/// TLS to the smarthost.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SmarthostTls {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Implicit,
    /// Plain text.
    None,
}

/// Capture delivery: messages are written to files in the sidecar and never sent.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct CaptureSpec {}

/// Retry schedule; every duration is in whole seconds and greater than 0.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.initialSeconds) || !has(self.maxSeconds) || self.maxSeconds >= self.initialSeconds").message("spec.retry.maxSeconds must be at least spec.retry.initialSeconds"))]
pub struct RetrySpec {
    /// First retry after this many seconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub initial_seconds: Option<u64>,
    /// Longest wait between two attempts, in seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_seconds: Option<u64>,
    /// Give up and bounce after a message has been queued this many seconds. Default 432000 (5 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub max_age_seconds: Option<u64>,
    /// Each wait is this many times the one before, 1 to 10. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: Option<f64>,
}

/// Limits on accepted mail.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest accepted message in bytes, 1 KiB to 100 MiB. Default 26214400 (25 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 104857600))]
    pub max_message_bytes: Option<u64>,
    /// Recipients per message, 1 to 1000. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_recipients: Option<u32>,
    /// Messages the whole Relay accepts per minute: the operator divides this budget among the
    /// Relay's live pods (`status.ratePerMinutePerPod`, re-rendered as pods come and go), so a
    /// provider's quota holds however many replicas send. Each sidecar may take its minute's
    /// share at once, then its share per minute; over it apps get `451 4.7.1` and retry.
    /// 1 to 1000000. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rate_per_minute: Option<u32>,
    /// Most bytes the sidecar's spool holds; over it apps get `452 4.3.1`. 16 MiB to 1 TiB.
    /// Default 1073741824 (1 GiB). Size the pod's ephemeral storage for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16777216, max = 1099511627776_u64))]
    pub spool_max_bytes: Option<u64>,
    /// Most messages the sidecar's spool holds, 100 to 10000000. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 10000000))]
    pub spool_max_messages: Option<u64>,
}

/// What the operator observed about a Relay.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// `Ready`, with the reason when it is not.
    #[serde(default)]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Delivery mode in effect: `smarthost`, `direct` or `capture`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The sender domains (`spec.domain` of each MailDomain) in the rendered config.
    #[serde(default)]
    pub effective_domains: Vec<String>,
    /// Name of the ConfigMap holding the rendered sidecar config (key `sidecar.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// Name of the Secret holding the DKIM private keys the sidecar mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim_secret_name: Option<String>,
    /// Pods in this namespace with an injected sidecar for this Relay (label
    /// `mailroom.dev/relay=<name>` and `mailroom.dev/injected=true`).
    #[serde(default)]
    pub pods: u32,
    /// Each pod's share of `spec.limits.ratePerMinute`: the budget divided by the live pods
    /// (rounded down, at least 1), as rendered into the sidecar config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute_per_pod: Option<u32>,
    /// The hub, when `spec.hub` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubStatus>,
}

/// What the operator observed about a Relay's hub.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// The hub's Service (`<relay>-hub`), which the sidecars hand off to.
    pub service: String,
    /// Hub pods asked for.
    pub replicas: u32,
    /// Hub pods Ready (from the StatefulSet's status).
    pub ready_replicas: u32,
}

fn default_listen_port() -> u32 {
    25
}

fn default_smarthost_port() -> u32 {
    587
}

impl Delivery {
    /// `smarthost`, `direct` or `capture` (or `invalid` when the schema was bypassed).
    pub fn mode(&self) -> &'static str {
        match (&self.smarthost, &self.direct, &self.capture) {
            (Some(_), None, None) => "smarthost",
            (None, Some(_), None) => "direct",
            (None, None, Some(_)) => "capture",
            _ => "invalid",
        }
    }
}
