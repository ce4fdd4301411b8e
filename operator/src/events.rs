//! Kubernetes Events for our objects (events.k8s.io), the `Reason` enum that conditions share, and
//! [`Notes`]: the events one reconcile collects and publishes once, after its status patch.

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
    /// At least one hub pod is Ready to take hand-offs.
    HubReady,
    /// No hub pod is Ready: sidecars that stop now keep their mail (or lose it with the pod).
    HubNotReady,
    /// The records are in the MailDomain's DNSEndpoint for external-dns (`DnsPublished`).
    RecordsPublished,
    /// The DNSEndpoint CRD (`externaldns.k8s.io/v1alpha1`) is not installed.
    DNSEndpointCRDMissing,
    /// The apiserver refused the DNSEndpoint (RBAC, or a label or annotation it rejects).
    PublishRefused,
    /// A Relay's sidecars stopped sending as a domain its namespace is no longer granted (or
    /// whose MailDomain is gone), and its keys left the Relay's Secret.
    DomainWithdrawn,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 26] = [
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
        Self::HubReady,
        Self::HubNotReady,
        Self::RecordsPublished,
        Self::DNSEndpointCRDMissing,
        Self::PublishRefused,
        Self::DomainWithdrawn,
    ];

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
            Self::HubReady => "HubReady",
            Self::HubNotReady => "HubNotReady",
            Self::RecordsPublished => "RecordsPublished",
            Self::DNSEndpointCRDMissing => "DNSEndpointCRDMissing",
            Self::PublishRefused => "PublishRefused",
            Self::DomainWithdrawn => "DomainWithdrawn",
        }
    }
}

/// One event to publish on the reconciled object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A Warning rather than a Normal event.
    pub warning: bool,
    /// The reason, equal to the condition reason it announces.
    pub reason: Reason,
    /// One sentence that names the object.
    pub note: String,
}

/// The events of one reconcile, in the order they happened. Most wait for the status patch: a
/// failed patch retries the reconcile, which announces the same transitions and steps again.
/// Actions a retry does not repeat (a key generated) are announced even when the reconcile fails.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes(Vec<(Note, Retry)>);

/// Whether a retry of the reconcile would produce a note again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Repeats,
    Never,
}

// === impl Note ===

impl Note {
    /// A Normal event.
    pub fn normal(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            note: note.into(),
        }
    }

    /// A Warning event.
    pub fn warning(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            note: note.into(),
        }
    }
}

// === impl Notes ===

impl Notes {
    /// Notes a retry would produce again (condition transitions, rotation steps).
    pub fn repeating(notes: impl IntoIterator<Item = Note>) -> Self {
        let mut out = Self::default();
        out.push(notes);
        out
    }

    /// Adds notes a retry would produce again.
    pub fn push(&mut self, notes: impl IntoIterator<Item = Note>) {
        self.0.extend(notes.into_iter().map(|n| (n, Retry::Repeats)));
    }

    /// Adds the note of an action a retry will not take again.
    pub fn once(&mut self, note: Note) {
        self.0.push((note, Retry::Never));
    }

    /// What to publish: everything once status is written; otherwise only what no retry repeats.
    pub fn outgoing(self, status_written: bool) -> Vec<Note> {
        self.0
            .into_iter()
            .filter(|(_, retry)| status_written || *retry == Retry::Never)
            .map(|(note, _)| note)
            .collect()
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

    /// Publishes `notes` on `obj`, in order. Failures are logged, not returned: an event is never
    /// worth a retry.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, notes: Vec<Note>) {
        let regarding = obj.object_ref(&());
        for note in notes {
            let event = Event {
                type_: if note.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: note.reason.as_str().into(),
                note: Some(note.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &regarding).await {
                tracing::warn!(%error, reason = note.reason.as_str(), "publishing event failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reconcile_publishes_only_what_no_retry_repeats() {
        let mut notes = Notes::default();
        notes.once(Note::normal(Reason::KeyGenerated, "generated"));
        notes.push([Note::warning(Reason::RecordsNotVerified, "publish")]);
        notes.push([Note::normal(Reason::KeyRotationStarted, "started")]);
        let reasons = |written| {
            notes
                .clone()
                .outgoing(written)
                .into_iter()
                .map(|n| n.reason)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reasons(true),
            [
                Reason::KeyGenerated,
                Reason::RecordsNotVerified,
                Reason::KeyRotationStarted
            ]
        );
        assert_eq!(reasons(false), [Reason::KeyGenerated]);
    }

    #[test]
    fn reasons_are_distinct_camel_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.starts_with(|c: char| c.is_ascii_uppercase()), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert!(seen.insert(s), "{s} twice");
        }
    }
}
