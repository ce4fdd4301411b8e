//! mailroom operator: reconciles `MailDomain` and `Relay` into DKIM keys, DNS findings and the
//! sidecar configuration. This file holds the crate `Error` and the module list; nothing else.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod apply;
pub mod check;
pub mod conditions;
pub mod crd;
pub mod dkim;
pub mod dns;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod offline;
pub mod publish;
pub mod reconcile;
pub mod records;
pub mod render;
pub mod rotation;
pub mod settings;
pub mod telemetry;
pub mod webhook;

use events::Reason;

/// Everything that can go wrong in a reconcile. Spec errors ([`Error::is_spec_error`]) wait for the
/// user to change something; the others are transient and requeue with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver call failed; `step` says which one.
    #[error("{step} failed: {source}")]
    Kube {
        /// What we were doing (`get MailDomain`, `apply ConfigMap`, ...).
        step: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A namespaced object arrived without a namespace.
    #[error("object has no namespace")]
    MissingNamespace,
    /// An object arrived without a name or uid (cannot own children).
    #[error("object has no name or uid")]
    MissingIdentity,
    /// The spec is not acceptable in a way the schema cannot express.
    #[error("{0}")]
    InvalidSpec(String),
    /// A Relay names a MailDomain that does not exist.
    #[error("MailDomain {domain} does not exist")]
    DomainNotFound {
        /// The MailDomain name.
        domain: String,
    },
    /// A MailDomain does not allow the Relay's namespace.
    #[error("MailDomain {domain} does not allow namespace {namespace}")]
    DomainNotAllowed {
        /// The MailDomain name.
        domain: String,
        /// The Relay's namespace.
        namespace: String,
    },
    /// A MailDomain is not Ready yet (for example its DKIM key is missing).
    #[error("MailDomain {domain} is not Ready")]
    DomainNotReady {
        /// The MailDomain name.
        domain: String,
    },
    /// A referenced Secret does not exist.
    #[error("Secret {namespace}/{name} does not exist")]
    SecretNotFound {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// A referenced Secret lacks a key.
    #[error("Secret {namespace}/{name} has no key {key}")]
    SecretKeyMissing {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The missing key.
        key: String,
    },
    /// The DKIM key Secret was deleted after a key had been published; we never silently replace it.
    #[error("DKIM key Secret {name} was deleted after its key was published (fingerprint {fingerprint})")]
    DkimKeyLost {
        /// The key Secret's name.
        name: String,
        /// The fingerprint recorded in status.
        fingerprint: String,
    },
    /// The DKIM key in the Secret is not the key recorded in status, or cannot be read.
    #[error("DKIM key Secret {name} holds a different or unreadable key: {detail}")]
    DkimKeyChanged {
        /// The key Secret's name.
        name: String,
        /// What differs.
        detail: String,
    },
    /// Generating or parsing a key failed.
    #[error("DKIM key generation failed: {0}")]
    KeyGeneration(String),
    /// Issuing the hub's serving certificate failed.
    #[error("hub certificate: {0}")]
    HubCertificate(String),
    /// Serializing the sidecar config failed.
    #[error("rendering the sidecar config failed: {0}")]
    Render(#[source] serde_yaml_ng::Error),
    /// A cache a Relay reconcile reads has not received its first list (the watch may be
    /// forbidden, or the apiserver slow); the reconcile is retried with backoff.
    #[error("the operator's caches of {caches} have not synced")]
    CacheNotReady {
        /// The caches that have not synced, comma-separated.
        caches: String,
    },
    /// Converting one of our own objects to or from JSON failed. Never the user's doing (the
    /// types are ours), so it is transient rather than a spec error.
    #[error("{step} failed: {source}")]
    Serde {
        /// What we were converting (`serialize status`, ...).
        step: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// `Result` with the crate [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    /// Wraps a client error with the step that failed.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { step, source }
    }

    /// Wraps a serde error with the conversion that failed.
    pub fn serde(step: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Serde { step, source }
    }

    /// The condition and event reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Kube { .. }
            | Self::Render(_)
            | Self::Serde { .. }
            | Self::HubCertificate(_)
            | Self::CacheNotReady { .. } => Reason::ApplyFailed,
            Self::MissingNamespace | Self::MissingIdentity | Self::InvalidSpec(_) => Reason::InvalidSpec,
            Self::DomainNotFound { .. } => Reason::DomainNotFound,
            Self::DomainNotAllowed { .. } => Reason::DomainNotAllowed,
            Self::DomainNotReady { .. } => Reason::DomainNotReady,
            Self::SecretNotFound { .. } => Reason::SecretNotFound,
            Self::SecretKeyMissing { .. } => Reason::SecretKeyMissing,
            Self::DkimKeyLost { .. } => Reason::DkimKeyLost,
            Self::DkimKeyChanged { .. } => Reason::DkimKeyChanged,
            Self::KeyGeneration(_) => Reason::KeyGenerationFailed,
        }
    }

    /// A bounded metric label, one per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::MissingNamespace => "missing_namespace",
            Self::MissingIdentity => "missing_identity",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::DomainNotFound { .. } => "domain_not_found",
            Self::DomainNotAllowed { .. } => "domain_not_allowed",
            Self::DomainNotReady { .. } => "domain_not_ready",
            Self::SecretNotFound { .. } => "secret_not_found",
            Self::SecretKeyMissing { .. } => "secret_key_missing",
            Self::DkimKeyLost { .. } => "dkim_key_lost",
            Self::DkimKeyChanged { .. } => "dkim_key_changed",
            Self::KeyGeneration(_) => "key_generation",
            Self::HubCertificate(_) => "hub_certificate",
            Self::Render(_) => "render",
            Self::Serde { .. } => "serde",
            Self::CacheNotReady { .. } => "cache_not_ready",
        }
    }

    /// Spec errors need a change by the user: `Ready=False`, a Warning event, and no retry loop.
    pub fn is_spec_error(&self) -> bool {
        !matches!(
            self,
            Self::Kube { .. }
                | Self::KeyGeneration(_)
                | Self::HubCertificate(_)
                | Self::Render(_)
                | Self::Serde { .. }
                | Self::CacheNotReady { .. }
        )
    }
}
