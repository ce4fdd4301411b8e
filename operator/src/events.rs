//! Kubernetes Events for our objects (events.k8s.io), and the `Reason` enum that conditions share.

use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// CamelCase reasons used in conditions and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Everything is in place.
    Reconciled,
    /// The spec is invalid in a way the schema could not reject.
    InvalidSpec,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret lacks a key.
    SecretKeyMissing,
    /// Applying a child object or status failed.
    ApplyFailed,
    /// A Relay names a MailDomain that does not exist.
    DomainNotFound,
    /// A MailDomain does not allow the Relay's namespace.
    DomainNotAllowed,
    /// A MailDomain is not Ready.
    DomainNotReady,
    /// The DKIM key Secret was deleted after its key was published.
    DkimKeyLost,
    /// The DKIM key Secret holds a different key than the one published.
    DkimKeyChanged,
    /// Generating a DKIM key failed.
    KeyGenerationFailed,
    /// A new DKIM key was generated.
    KeyGenerated,
    /// The DKIM key exists and matches status.
    KeyReady,
    /// Every recommended DNS record is served.
    RecordsVerified,
    /// At least one recommended DNS record is missing or different.
    RecordsNotVerified,
    /// DNS has not been checked yet.
    DnsPending,
    /// A DKIM rotation started: a new key waits for its DNS record (`DkimKeyReady` reason while
    /// pending).
    KeyRotationStarted,
    /// Signing switched to the new DKIM key; the previous key is retiring (`DkimKeyReady` reason
    /// while retiring).
    KeyRotated,
    /// The previous DKIM key retired: its Secret is deleted and its DNS record may be removed.
    KeyRetired,
    /// A pending DKIM key was dropped before it ever signed.
    KeyRotationCancelled,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 20] = [
        Self::Reconciled,
        Self::InvalidSpec,
        Self::SecretNotFound,
        Self::SecretKeyMissing,
        Self::ApplyFailed,
        Self::DomainNotFound,
        Self::DomainNotAllowed,
        Self::DomainNotReady,
        Self::DkimKeyLost,
        Self::DkimKeyChanged,
        Self::KeyGenerationFailed,
        Self::KeyGenerated,
        Self::KeyReady,
        Self::RecordsVerified,
        Self::RecordsNotVerified,
        Self::DnsPending,
        Self::KeyRotationStarted,
        Self::KeyRotated,
        Self::KeyRetired,
        Self::KeyRotationCancelled,
    ];

    /// The reason spelled `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The CamelCase spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconciled => "Reconciled",
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyMissing => "SecretKeyMissing",
            Self::ApplyFailed => "ApplyFailed",
            Self::DomainNotFound => "DomainNotFound",
            Self::DomainNotAllowed => "DomainNotAllowed",
            Self::DomainNotReady => "DomainNotReady",
            Self::DkimKeyLost => "DkimKeyLost",
            Self::DkimKeyChanged => "DkimKeyChanged",
            Self::KeyGenerationFailed => "KeyGenerationFailed",
            Self::KeyGenerated => "KeyGenerated",
            Self::KeyReady => "KeyReady",
            Self::RecordsVerified => "RecordsVerified",
            Self::RecordsNotVerified => "RecordsNotVerified",
            Self::DnsPending => "DnsPending",
            Self::KeyRotationStarted => "KeyRotationStarted",
            Self::KeyRotated => "KeyRotated",
            Self::KeyRetired => "KeyRetired",
            Self::KeyRotationCancelled => "KeyRotationCancelled",
        }
    }
}

/// Publishes events as the operator.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

// === impl Events ===

impl Events {
    /// A publisher reporting as `mailroom-operator` / `instance`.
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: "mailroom-operator".into(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// A Normal event on `obj`. Failures are logged, not returned: an event is never worth a retry.
    pub async fn normal<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: Reason, note: String) {
        self.publish(obj, EventType::Normal, reason, note).await;
    }

    /// A Warning event on `obj`.
    pub async fn warn<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: Reason, note: String) {
        self.publish(obj, EventType::Warning, reason, note).await;
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: Reason,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.as_str().into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason = reason.as_str(), "publishing event failed");
        }
    }
}
