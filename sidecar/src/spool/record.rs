//! On-disk record format of spool segments (pure encode/decode).
//!
//! A record is `magic u32 | kind u8 | id u64 | len u32 | crc u32 | payload[len]`, little endian.
//! The CRC covers kind, id, len and payload, so a torn or corrupt record is always detected.

use crate::message::MessageId;

/// Marks the start of every record ("MRS1").
pub const MAGIC: u32 = 0x3153_524d;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 21;
/// Largest payload a record may carry; message bodies are split into chunks below this.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A piece of message bytes, in order.
    Chunk = 1,
    /// The message is complete; payload is its [`super::meta::Meta`].
    Commit = 2,
    /// The message is finished (delivered, bounced or expired); its space may be reclaimed.
    Done = 3,
    /// Some recipients are finished; payload is their indices as u32.
    RcptDone = 4,
    /// The DKIM-Signature header to prepend, computed once before the first attempt.
    Signature = 5,
    /// An administrator held (payload `1`) or released (payload `0`) the message: a held message
    /// gets no delivery attempt, also after a restart (docs/operations.md "Day two").
    Hold = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Chunk,
            2 => Self::Commit,
            3 => Self::Done,
            4 => Self::RcptDone,
            5 => Self::Signature,
            6 => Self::Hold,
            _ => return None,
        })
    }
}

/// Appends one encoded record to `out`; returns the payload's offset within `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, id: MessageId, payload: &[u8]) -> usize {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let len = payload.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    crc.update(&id.0.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    let at = out.len();
    out.extend_from_slice(payload);
    at
}

/// One decoded record, borrowing its payload from the segment bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Record kind.
    pub kind: Kind,
    /// Message the record belongs to.
    pub id: MessageId,
    /// Offset of the payload within the segment.
    pub payload_at: usize,
    /// The payload.
    pub payload: &'a [u8],
}

/// Result of decoding at one offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and the offset just after it.
    Record(Record<'a>, usize),
    /// Clean end of the segment.
    End,
    /// Bytes that are not a valid record (torn write or corruption).
    Invalid,
}

/// Decodes the record at `at` in `buf`.
pub fn decode(buf: &[u8], at: usize) -> Decoded<'_> {
    let rest = &buf[at.min(buf.len())..];
    if rest.is_empty() {
        return Decoded::End;
    }
    if rest.len() < HEADER_LEN {
        return Decoded::Invalid;
    }
    let u32_at = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    if u32_at(0) != MAGIC {
        return Decoded::Invalid;
    }
    let Some(kind) = Kind::from_u8(rest[4]) else {
        return Decoded::Invalid;
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&rest[5..13]);
    let len = u32_at(13) as usize;
    let crc = u32_at(17);
    if len > MAX_PAYLOAD || rest.len() < HEADER_LEN + len {
        return Decoded::Invalid;
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[4..17]);
    h.update(payload);
    if h.finalize() != crc {
        return Decoded::Invalid;
    }
    let record = Record {
        kind,
        id: MessageId(u64::from_le_bytes(id)),
        payload_at: at + HEADER_LEN,
        payload,
    };
    Decoded::Record(record, at + HEADER_LEN + len)
}

/// Offset of the next plausible record start after `at` (used to skip over corruption).
pub fn resync(buf: &[u8], at: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (at + 1..buf.len().saturating_sub(3))
        .find(|&i| buf[i..i + 4] == magic && matches!(decode(buf, i), Decoded::Record(..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        let at = encode(&mut buf, Kind::Chunk, MessageId(7), b"hello");
        encode(&mut buf, Kind::Done, MessageId(7), b"");
        let Decoded::Record(r, next) = decode(&buf, 0) else {
            panic!("first record")
        };
        assert_eq!(
            (r.kind, r.id, r.payload, r.payload_at),
            (Kind::Chunk, MessageId(7), &b"hello"[..], at)
        );
        let Decoded::Record(r, end) = decode(&buf, next) else {
            panic!("second record")
        };
        assert_eq!(r.kind, Kind::Done);
        assert_eq!(decode(&buf, end), Decoded::End);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Commit, MessageId(1), b"payload bytes");
        for cut in 1..buf.len() {
            assert_eq!(decode(&buf[..cut], 0), Decoded::Invalid, "cut at {cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad, 0), Decoded::Invalid, "flip at {i}");
        }
    }

    #[test]
    fn resync_finds_the_next_good_record() {
        let mut buf = b"garbage".to_vec();
        let start = buf.len();
        encode(&mut buf, Kind::Chunk, MessageId(2), b"x");
        assert_eq!(resync(&buf, 0), Some(start));
    }
}
