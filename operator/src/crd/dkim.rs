//! `MailDomain.status.dkim`: the signing key, the key being rotated in or out, and the rotation
//! phase.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The DKIM key that signs, and the rotation in progress, if any.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimStatus {
    /// Selector the signing key is published under.
    pub selector: String,
    /// `rsa-2048` or `ed25519`.
    pub algorithm: String,
    /// `sha256:<hex>` of the public key (DER SubjectPublicKeyInfo for RSA, raw key for Ed25519).
    pub fingerprint: String,
    /// Name of the Secret in the operator's namespace holding the signing key.
    pub secret_name: String,
    /// When this key started signing; a rotation is due `spec.dkim.rotation.periodSeconds` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<Time>,
    /// Rotation phase: `Stable` (one key), `Pending` (a new key waits for its DNS record) or
    /// `Retiring` (signing switched; the previous key stays published until its `retireAt`).
    #[serde(default)]
    pub phase: RotationPhase,
    /// When the next rotation starts (absent without `spec.dkim.rotation` or during one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Time>,
    /// The new key of a rotation, published in `status.dnsRecords` but not yet signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<DkimKeyStatus>,
    /// The previous key after a switch: no longer signing, still published until `retireAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<DkimKeyStatus>,
    /// The last key retired: its Secret is deleted and its DNS record may be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<DkimKeyStatus>,
    /// The last value of the annotation `mailroom.dev/rotate-dkim` that started (or joined) a
    /// rotation; another value starts the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_token: Option<String>,
}

/// A key other than the signing one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimKeyStatus {
    /// Selector the key is published under.
    pub selector: String,
    /// `sha256:<hex>` of the public key.
    pub fingerprint: String,
    /// Name of the Secret in the operator's namespace holding the key (gone once retired).
    pub secret_name: String,
    /// When the key was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// Retiring: when the key's Secret is deleted and its record leaves `status.dnsRecords`.
    /// Retired: when that happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<Time>,
}

/// Where a MailDomain is in DKIM key rotation.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RotationPhase {
    /// One key signs and is published.
    #[default]
    Stable,
    /// A new key exists and its record is listed; signing switches once DNS serves it.
    Pending,
    /// Signing switched to the new key; the previous key's record stays listed until it retires.
    Retiring,
}

impl RotationPhase {
    /// Every phase (metric label values).
    pub const ALL: [RotationPhase; 3] = [Self::Stable, Self::Pending, Self::Retiring];

    /// The spelling in status and the lowercase metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "Stable",
            Self::Pending => "Pending",
            Self::Retiring => "Retiring",
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Pending => "pending",
            Self::Retiring => "retiring",
        }
    }
}
