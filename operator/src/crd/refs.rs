//! Shared CRD building blocks: Secret references and the `conditions` list schema.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A key in a Secret in the referring object's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Smarthost credentials: a Secret holding a user name and a password (or token) under two keys.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the Relay's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the user name. Default `username`.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key holding the password or OAuth token. Default `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Schema of `status.conditions`: a list of `metav1.Condition` keyed by `type` (a list-map, so
/// server-side apply merges conditions by type).
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Latest observations of the object's state. `Ready` is always set.",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": { "type": "string", "format": "date-time",
                    "description": "When the condition last changed status." },
                "message": { "type": "string", "description": "One sentence about the condition." },
                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0,
                    "description": "The metadata.generation the condition was computed from." },
                "reason": { "type": "string", "description": "CamelCase reason, also used for events." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"],
                    "description": "True, False or Unknown." },
                "type": { "type": "string", "description": "Condition type, e.g. Ready." }
            }
        }
    })
}
