//! The payload of a Commit record: everything needed to resume a message after a restart.

use crate::message::Envelope;
use serde::{Deserialize, Serialize};

/// Commit payload (JSON: small, and readable when inspecting a spool by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The envelope as accepted.
    pub envelope: Envelope,
    /// Length of the message body (all Chunk payloads).
    pub len: u64,
    /// CRC-32 of the message body, checked on replay.
    pub crc: u32,
    /// Recipients (indices into `envelope.recipients`) already finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<u32>,
    /// DKIM-Signature header computed before the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Held by an administrator: no delivery attempt until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}
