//! The spool's quarantine: what replay or a read found damaged, set aside in `quarantine/`
//! instead of delivered. A damaged message keeps its body (`<id>.partial`) and its envelope and
//! progress (`<id>.json`), so that an administrator can inspect it and release it on purpose;
//! a corrupt region of a segment (`segment-<seq>-at-<offset>.bin`) names no message and can only
//! be inspected.

use super::Meta;
use crate::message::MessageId;
use serde::{Deserialize, Serialize};
use std::{
    io,
    path::{Path, PathBuf},
};

/// The quarantine folder of spool `dir`.
pub fn dir(spool: &Path) -> PathBuf {
    spool.join("quarantine")
}

/// Writes `bytes` as `name` (best effort: a quarantine that cannot be written is logged; the
/// damaged bytes are not delivered either way).
pub fn write(spool: &Path, name: &str, bytes: &[u8]) {
    let qdir = dir(spool);
    if let Err(e) = std::fs::create_dir_all(&qdir).and_then(|()| std::fs::write(qdir.join(name), bytes)) {
        tracing::error!(error = %e, "cannot write to spool quarantine");
    }
}

/// Sets a damaged message aside: its body as found and its commit record's contents.
pub fn write_message(spool: &Path, id: MessageId, meta: &Meta, body: &[u8]) {
    write(spool, &format!("{id}.partial"), body);
    match serde_json::to_vec_pretty(meta) {
        Ok(json) => write(spool, &format!("{id}.json"), &json),
        Err(e) => tracing::error!(error = %e, "cannot write a quarantined message's envelope"),
    }
}

/// One thing in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// What to pass to `quarantine release`: the message id, or the region's file name.
    pub name: String,
    /// `message` (releasable) or `region` (a corrupt stretch of a segment).
    pub kind: String,
    /// Bytes set aside.
    pub bytes: u64,
    /// When it was set aside (seconds since the epoch).
    pub quarantined_at: u64,
    /// The envelope sender, for a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The recipients still to be delivered, for a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// For a message: whether all its bytes were found (damaged, but whole). One whose chunk
    /// records were themselves corrupt has its bytes in a `region` and cannot be released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
}

/// Everything in quarantine, messages first, each group by name.
pub fn list(spool: &Path) -> io::Result<Vec<Quarantined>> {
    let entries = match std::fs::read_dir(dir(spool)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let md = entry.metadata()?;
        if !md.is_file() {
            continue;
        }
        let at = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        if let Some(id) = name.strip_suffix(".partial") {
            let meta = read_meta(spool, id).ok();
            out.push(Quarantined {
                name: id.to_owned(),
                kind: "message".into(),
                bytes: md.len(),
                quarantined_at: at,
                sender: meta.as_ref().map(|m| m.envelope.sender.clone()),
                recipients: meta.as_ref().map(remaining).unwrap_or_default(),
                complete: meta.as_ref().map(|m| m.len == md.len()),
            });
        } else if name.ends_with(".bin") {
            out.push(Quarantined {
                name,
                kind: "region".into(),
                bytes: md.len(),
                quarantined_at: at,
                sender: None,
                recipients: Vec::new(),
                complete: None,
            });
        }
    }
    out.sort_by(|a, b| (a.kind != "message", &a.name).cmp(&(b.kind != "message", &b.name)));
    Ok(out)
}

/// The recipients of `meta` not yet finished.
fn remaining(meta: &Meta) -> Vec<String> {
    (0..meta.envelope.recipients.len())
        .filter(|i| !meta.done.contains(&(*i as u32)))
        .filter_map(|i| meta.envelope.recipients.get(i).cloned())
        .collect()
}

fn read_meta(spool: &Path, id: &str) -> io::Result<Meta> {
    let json = std::fs::read(dir(spool).join(format!("{id}.json")))?;
    serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Why a quarantined message cannot be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// No quarantined message of that id.
    #[error("no quarantined message {0}")]
    NotFound(String),
    /// A corrupt region, or a message quarantined without its envelope.
    #[error(
        "{0} has no envelope on record and cannot be released; inspect it in the spool's quarantine folder"
    )]
    NoEnvelope(String),
    /// Some of its bytes are missing (they were in a corrupt record, set aside as a region).
    #[error(
        "{id} is incomplete: {found} of its {len} bytes were found; the rest is in a corrupt region and it cannot be released"
    )]
    Incomplete {
        /// The message.
        id: String,
        /// Bytes found.
        found: u64,
        /// Bytes it had.
        len: u64,
    },
    /// Reading or moving its files failed.
    #[error("quarantine: {0}")]
    Io(#[from] io::Error),
}

/// A quarantined message ready to be queued again: its body as found, and an envelope with only
/// its unfinished recipients.
#[derive(Debug)]
pub struct Releasable {
    /// The body as found.
    pub body: Vec<u8>,
    /// Sender, unfinished recipients and their DSN parameters.
    pub envelope: crate::message::Envelope,
}

/// Reads quarantined message `id` for release.
pub fn take(spool: &Path, id: &str) -> Result<Releasable, ReleaseError> {
    // Only names this module wrote: an id is hex, never a path.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReleaseError::NotFound(id.to_owned()));
    }
    let body = match std::fs::read(dir(spool).join(format!("{id}.partial"))) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReleaseError::NotFound(id.to_owned())),
        Err(e) => return Err(e.into()),
    };
    let meta = read_meta(spool, id).map_err(|_| ReleaseError::NoEnvelope(id.to_owned()))?;
    if body.len() as u64 != meta.len {
        return Err(ReleaseError::Incomplete {
            id: id.to_owned(),
            found: body.len() as u64,
            len: meta.len,
        });
    }
    let keep: Vec<usize> = (0..meta.envelope.recipients.len())
        .filter(|i| !meta.done.contains(&(*i as u32)))
        .collect();
    let mut envelope = meta.envelope;
    envelope.dsn.rcpts = keep.iter().map(|&i| envelope.dsn.rcpt(i)).collect();
    envelope.recipients = keep
        .iter()
        .filter_map(|&i| envelope.recipients.get(i).cloned())
        .collect();
    if envelope.dsn.rcpts.iter().all(|r| r.is_empty()) {
        envelope.dsn.rcpts.clear();
    }
    // Released mail counts its age from the release: it was out of the queue meanwhile.
    envelope.received_at = crate::message::now_secs();
    Ok(Releasable { body, envelope })
}

/// Moves a released message's files to `quarantine/released/`, where they stay for inspection
/// but are no longer listed.
pub fn mark_released(spool: &Path, id: &str) -> io::Result<()> {
    let done = dir(spool).join("released");
    std::fs::create_dir_all(&done)?;
    for name in [format!("{id}.partial"), format!("{id}.json")] {
        std::fs::rename(dir(spool).join(&name), done.join(&name))?;
    }
    Ok(())
}
