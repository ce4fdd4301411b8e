//! Spool replay fuzzing: segment files from arbitrary bytes, then `Spool::open` (replay,
//! quarantine, reclaim) and a read of every message it hands to the queue.

use crate::{
    config,
    message::{Envelope, MessageId},
    spool::{
        Meta, Queued, Spool,
        record::{self, Kind},
        segment_path,
    },
};
use std::{collections::HashMap, path::Path};

/// Separates segments in raw mode.
const SEGMENT_BREAK: &[u8] = b"\xffSEG";
/// Most segments one input makes.
const MAX_SEGMENTS: usize = 8;

/// Writes segment files made from `input` into the empty directory `dir`, opens the spool there
/// and reads back every queued message. The first byte picks the mode: odd is structured
/// (the rest is a list of operations encoded as records with valid checksums: chunks, commits
/// with right, wrong or absurd length and wrong CRC, done, recipient-done, signature, segment break, garbage,
/// bit flips and truncation), even is raw (the rest is the segments' bytes, split at `\xffSEG`).
///
/// Invariants: the spool opens; a message it queues reads back with the length its commit
/// states, or fails with an error (never a panic); opening the same directory again queues the
/// same messages; and, in structured mode without corruption, every message committed once
/// with a correct length and CRC and never cancelled is queued and reads back byte-exact.
/// Returns the number of messages queued.
pub fn spool_replay(dir: &Path, input: &[u8]) -> usize {
    let Some((&mode, rest)) = input.split_first() else {
        return 0;
    };
    let (segments, expect) = if mode & 1 == 1 {
        structured(rest)
    } else {
        let segs = rest
            .split_inner(SEGMENT_BREAK)
            .take(MAX_SEGMENTS)
            .map(<[u8]>::to_vec);
        (segs.collect(), HashMap::new())
    };
    for (i, seg) in segments.iter().enumerate() {
        std::fs::write(segment_path(dir, i as u64 + 1), seg).expect("write segment");
    }
    let cfg = config::Spool {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        max_messages: 1 << 20,
        reserve_bytes: 64 << 10,
    };
    let first = open_and_read(&cfg, &expect);
    let second = open_and_read(&cfg, &HashMap::new());
    let ids = |q: &[Queued]| q.iter().map(|q| (q.id, q.meta.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second), "a second replay queued other messages");
    first.len()
}

fn open_and_read(cfg: &config::Spool, expect: &HashMap<MessageId, Vec<u8>>) -> Vec<Queued> {
    let (spool, queued, _arrivals) = Spool::open(cfg, super::metrics()).expect("spool opens");
    super::block_on(async {
        for q in &queued {
            let sig = q.meta.signature.as_ref().map_or(0, String::len);
            match spool.read(q.id).await {
                Ok(bytes) => assert_eq!(
                    bytes.len() as u64,
                    sig as u64 + q.meta.len,
                    "message {} read back with another length than committed",
                    q.id
                ),
                Err(_) => assert!(!expect.contains_key(&q.id), "clean message {} unreadable", q.id),
            }
        }
        for (id, body) in expect {
            assert!(
                queued.iter().any(|q| q.id == *id),
                "clean message {id} not queued"
            );
            let got = spool.read(*id).await.expect("clean message reads");
            assert!(
                got.ends_with(body),
                "clean message {id} read back different bytes"
            );
        }
    });
    queued
}

/// Per-id state of the structured generator.
#[derive(Debug, Default)]
struct Model {
    body: Vec<u8>,
    /// Operations on this id other than its chunks before one good commit, and
    /// recipient-done/signature after it.
    tainted: bool,
    committed: bool,
}

/// Turns operations into segments; returns them and the messages that must survive replay.
fn structured(input: &[u8]) -> (Vec<Vec<u8>>, HashMap<MessageId, Vec<u8>>) {
    let mut ops = Bytes(input);
    let mut segs = vec![Vec::new()];
    let mut models: HashMap<MessageId, Model> = HashMap::new();
    let mut corrupt = false;
    while let Some(op) = ops.byte() {
        let id = MessageId(u64::from(ops.byte().unwrap_or(0) % 4) + 1);
        let seg = segs.last_mut().expect("one segment at least");
        let m = models.entry(id).or_default();
        match op % 8 {
            0 => {
                let n = ops.len();
                let chunk = ops.take(n);
                record::encode(seg, Kind::Chunk, id, chunk);
                m.tainted |= m.committed;
                m.body.extend_from_slice(chunk);
            }
            1 => {
                let flags = ops.byte().unwrap_or(0);
                let meta = Meta {
                    envelope: Envelope {
                        sender: "app@example.com".into(),
                        recipients: vec!["rcpt@example.net".into(); usize::from(flags >> 4) + 1],
                        smtputf8: false,
                        received_at: 1,
                        dsn: Default::default(),
                        origin: None,
                        shadow: None,
                    },
                    // Bit 0: one byte too long; bit 2: absurdly long (the allocator must not see it).
                    len: m.body.len() as u64 + u64::from(flags & 1) + u64::from(flags & 4) * (1 << 40),
                    crc: crc32fast::hash(&m.body) ^ u32::from(flags & 2),
                    done: Vec::new(),
                    signature: None,
                    held: false,
                };
                let json = serde_json::to_vec(&meta).expect("meta serializes");
                record::encode(seg, Kind::Commit, id, &json);
                m.tainted |= m.committed || flags & 7 != 0;
                m.committed = true;
            }
            2 => {
                record::encode(seg, Kind::Done, id, b"");
                m.tainted = true;
            }
            3 => {
                let n = usize::from(ops.byte().unwrap_or(0) % 8);
                let idx: Vec<u8> = (0..n)
                    .flat_map(|_| u32::from(ops.byte().unwrap_or(0)).to_le_bytes())
                    .collect();
                record::encode(seg, Kind::RcptDone, id, &idx);
            }
            4 => {
                let n = ops.len();
                let sig = ops.take(n);
                record::encode(seg, Kind::Signature, id, sig);
            }
            5 => {
                if segs.len() < MAX_SEGMENTS {
                    segs.push(Vec::new());
                }
            }
            6 => {
                let n = ops.len();
                seg.extend_from_slice(ops.take(n));
                corrupt = true;
            }
            _ => {
                let at = usize::from(ops.byte().unwrap_or(0)) << 8 | usize::from(ops.byte().unwrap_or(0));
                let at = at % (seg.len() + 1);
                match ops.byte().unwrap_or(0) {
                    0 => seg.truncate(at),
                    x if at < seg.len() => seg[at] ^= x,
                    _ => {}
                }
                corrupt = true;
            }
        }
    }
    let expect = if corrupt {
        HashMap::new()
    } else {
        models
            .into_iter()
            .filter(|(_, m)| m.committed && !m.tainted)
            .map(|(id, m)| (id, m.body))
            .collect()
    };
    (segs, expect)
}

/// A cursor over the fuzz input.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A length: the next byte, 0 at the end.
    fn len(&mut self) -> usize {
        usize::from(self.byte().unwrap_or(0))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (now, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        now
    }
}

trait SplitInner {
    fn split_inner<'a>(&'a self, sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]>;
}

impl SplitInner for [u8] {
    /// Splits at every occurrence of `sep` (std's `split` takes a predicate per byte).
    fn split_inner<'a>(&'a self, sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = Some(self);
        std::iter::from_fn(move || {
            let s = rest?;
            match s.windows(sep.len()).position(|w| w == sep) {
                Some(i) => {
                    rest = Some(&s[i + sep.len()..]);
                    Some(&s[..i])
                }
                None => {
                    rest = None;
                    Some(s)
                }
            }
        })
    }
}
