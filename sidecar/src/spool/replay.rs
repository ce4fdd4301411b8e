//! Start-up replay: rebuilds the set of queued messages from the segments on disk. Torn tails are
//! ignored; corrupt records and messages are counted and copied to `quarantine/`.

use super::{
    Entry,
    meta::Meta,
    quarantine,
    record::{self, Decoded, Kind},
    writer::Loc,
};
use crate::message::MessageId;
use std::{collections::HashMap, io, path::Path, sync::Arc};

/// What replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Live messages.
    pub entries: HashMap<MessageId, Entry>,
    /// Highest id seen (new ids start above it).
    pub max_id: u64,
    /// Corrupt regions and messages set aside.
    pub quarantined: u64,
}

/// Replays segments `seqs` (ascending) from `dir`.
pub fn replay(dir: &Path, seqs: &[u64]) -> io::Result<Replayed> {
    let mut out = Replayed::default();
    let mut pending: HashMap<MessageId, Vec<Loc>> = HashMap::new();
    for &seq in seqs {
        let path = super::segment_path(dir, seq);
        let buf = std::fs::read(&path)?;
        let mut at = 0;
        loop {
            match record::decode(&buf, at) {
                Decoded::End => break,
                Decoded::Record(r, next) => {
                    out.max_id = out.max_id.max(r.id.0);
                    apply(&mut out, &mut pending, seq, &r);
                    at = next;
                }
                // The segment's allocated, never written tail.
                Decoded::Invalid if buf[at..].iter().all(|&b| b == 0) => break,
                Decoded::Invalid => match record::resync(&buf, at) {
                    // A torn tail is the normal result of a crash mid-write: nothing after it
                    // was acknowledged, so it is simply ignored.
                    None => break,
                    Some(next) => {
                        quarantine::write(dir, &format!("segment-{seq}-at-{at}.bin"), &buf[at..next]);
                        tracing::warn!(segment = seq, offset = at, "corrupt spool region skipped");
                        out.quarantined += 1;
                        at = next;
                    }
                },
            }
        }
        verify(dir, &mut out, seq, &buf);
    }
    Ok(out)
}

fn apply(out: &mut Replayed, pending: &mut HashMap<MessageId, Vec<Loc>>, seq: u64, r: &record::Record<'_>) {
    let loc = Loc {
        seg: seq,
        offset: r.payload_at as u64,
        len: r.payload.len() as u32,
    };
    match r.kind {
        Kind::Chunk => pending.entry(r.id).or_default().push(loc),
        Kind::Commit => {
            let Ok(meta) = serde_json::from_slice::<Meta>(r.payload) else {
                out.quarantined += 1;
                return;
            };
            let chunks = pending.remove(&r.id).unwrap_or_default();
            let mut segs: super::Segs = chunks.iter().map(|l| l.seg).collect();
            segs.insert(seq);
            out.entries.insert(
                r.id,
                Entry {
                    meta: Arc::new(meta),
                    // Collected, not converted: a converted Vec keeps its heap buffer.
                    chunks: chunks.into_iter().collect(),
                    segs,
                    verified: false,
                },
            );
        }
        Kind::Done => {
            pending.remove(&r.id);
            out.entries.remove(&r.id);
        }
        Kind::RcptDone => {
            if let Some(e) = out.entries.get_mut(&r.id) {
                e.segs.insert(seq);
                for idx in r.payload.chunks_exact(4) {
                    let i = u32::from_le_bytes([idx[0], idx[1], idx[2], idx[3]]);
                    if !e.meta.done.contains(&i) {
                        Arc::make_mut(&mut e.meta).done.push(i);
                    }
                }
            }
        }
        Kind::Signature => {
            if let Some(e) = out.entries.get_mut(&r.id) {
                e.segs.insert(seq);
                Arc::make_mut(&mut e.meta).signature = String::from_utf8(r.payload.to_vec()).ok();
            }
        }
        Kind::Hold => {
            if let Some(e) = out.entries.get_mut(&r.id) {
                e.segs.insert(seq);
                Arc::make_mut(&mut e.meta).held = r.payload == [1];
            }
        }
    }
}

/// Checks length and CRC of every message whose last chunk is in segment `seq`, while its bytes
/// are at hand; a message that fails is quarantined rather than delivered damaged.
fn verify(dir: &Path, out: &mut Replayed, seq: u64, buf: &[u8]) {
    let mut bad = Vec::new();
    for (id, e) in out.entries.iter_mut().filter(|(_, e)| !e.verified) {
        if e.chunks.iter().any(|l| l.seg > seq) {
            continue;
        }
        if e.chunks.iter().any(|l| l.seg != seq) {
            // Spans segments: checked when first read for delivery.
            e.verified = true;
            continue;
        }
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0u64;
        for l in &e.chunks {
            let (from, to) = (l.offset as usize, l.offset as usize + l.len as usize);
            crc.update(&buf[from..to]);
            len += u64::from(l.len);
        }
        if len == e.meta.len && crc.finalize() == e.meta.crc {
            e.verified = true;
        } else {
            bad.push(*id);
        }
    }
    for id in bad {
        tracing::warn!(message_id = %id, "spooled message failed its checksum; quarantined");
        if let Some(e) = out.entries.remove(&id) {
            let body: Vec<u8> = e
                .chunks
                .iter()
                .filter_map(|l| buf.get(l.offset as usize..(l.offset + u64::from(l.len)) as usize))
                .flatten()
                .copied()
                .collect();
            quarantine::write_message(dir, id, &e.meta, &body);
        }
        out.quarantined += 1;
    }
}
