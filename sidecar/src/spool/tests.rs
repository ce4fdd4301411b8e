use super::*;
use crate::message::{Envelope, MessageWriter};

fn cfg(dir: &Path) -> config::Spool {
    config::Spool {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        max_messages: 1000,
        reserve_bytes: 64 << 10,
    }
}

fn envelope(rcpts: &[&str]) -> Envelope {
    crate::testing::envelope(rcpts, 1)
}

async fn put(spool: &Spool, body: &[u8], rcpts: &[&str]) -> MessageId {
    let mut w = spool.begin().await.expect("begin");
    for piece in body.chunks(100_000) {
        w.write(piece).await.expect("write");
    }
    w.commit(envelope(rcpts)).await.expect("commit")
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut s = list_segments(dir).expect("list");
    s.sort_unstable();
    s
}

#[tokio::test]
async fn committed_messages_survive_reopen_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (spool, found, mut arrivals) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    assert!(found.is_empty());
    let a = put(&spool, b"Subject: a\r\n\r\nbody a\r\n", &["x@example.net"]).await;
    let b = put(&spool, &big, &["y@example.net", "z@example.net"]).await;
    assert_eq!(arrivals.recv().await.map(|q| q.id), Some(a));
    assert_eq!(arrivals.recv().await.map(|q| q.id), Some(b));
    spool.recipients_done(b, &[1]).await;
    spool.set_signature(b, "DKIM-Signature: v=1\r\n".into()).await;
    drop(spool);

    let (spool, found, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("reopen");
    assert_eq!(found.iter().map(|q| q.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(found[1].meta.done, [1]);
    assert_eq!(
        spool.read(a).await.expect("read a"),
        b"Subject: a\r\n\r\nbody a\r\n"
    );
    let got = spool.read(b).await.expect("read b");
    assert_eq!(&got[..21], b"DKIM-Signature: v=1\r\n");
    assert!(got[21..] == big[..], "big body differs");
}

#[tokio::test]
async fn removed_messages_stay_removed_and_space_is_reclaimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    let a = put(&spool, b"a\r\n", &["x@example.net"]).await;
    spool.remove(a).await;
    assert_eq!(spool.usage(), (0, 0));
    spool.close().await;
    let before = segments(dir.path());
    let (spool, found, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("reopen");
    assert!(found.is_empty());
    let after = segments(dir.path());
    assert_eq!(
        after.len(),
        1,
        "old segments {before:?} reclaimed, only the new active one is left: {after:?}"
    );
    drop(spool);
}

#[tokio::test]
async fn torn_tail_is_ignored_and_corruption_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    let a = put(&spool, b"first\r\n", &["x@example.net"]).await;
    let b = put(&spool, b"second\r\n", &["x@example.net"]).await;
    let c = put(&spool, b"third\r\n", &["x@example.net"]).await;
    spool.close().await;
    let seg = segment_path(dir.path(), segments(dir.path())[0]);
    let mut bytes = std::fs::read(&seg).expect("read segment");
    // Corrupt message b's body and tear the segment's tail (a crash mid-write).
    let at = bytes.windows(6).position(|w| w == b"second").expect("find b");
    bytes[at] = b'S';
    bytes.extend_from_slice(&[0x4d, 0x52, 0x53, 0x31, 1, 2, 3]);
    std::fs::write(&seg, bytes).expect("write segment");

    let metrics = Metrics::new();
    let (spool, found, _) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("reopen");
    assert_eq!(
        found.iter().map(|q| q.id).collect::<Vec<_>>(),
        [a, c],
        "b is quarantined, not delivered"
    );
    assert!(metrics.spool_quarantined.get() >= 1);
    assert!(
        dir.path()
            .join("quarantine")
            .read_dir()
            .expect("quarantine dir")
            .count()
            >= 1
    );
    assert_eq!(spool.read(c).await.expect("read c"), b"third\r\n");
    let _ = b;
}

#[tokio::test]
async fn limits_answer_full_and_release_on_abort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.max_messages = 1;
    c.max_bytes = 10;
    let (spool, _, _) = Spool::open(&c, Metrics::new()).expect("open");
    let mut w = spool.begin().await.expect("first begin");
    assert_eq!(spool.begin().await.err(), Some(SinkError::Full), "count limit");
    assert_eq!(
        w.write(b"0123456789abc").await,
        Err(SinkError::Full),
        "byte limit"
    );
    drop(w);
    assert_eq!(spool.usage(), (0, 0));
    let mut w = spool.begin().await.expect("begin after abort");
    w.write(b"ok").await.expect("fits");
}

#[tokio::test]
async fn compaction_moves_live_messages_so_old_segments_can_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    let keep = put(&spool, b"keep me\r\n", &["x@example.net"]).await;
    spool.set_signature(keep, "DKIM-Signature: k\r\n".into()).await;
    // Fill past a segment boundary with messages that then finish.
    let filler = vec![b'x'; 8 << 20];
    for _ in 0..9 {
        let id = put(&spool, &filler, &["x@example.net"]).await;
        spool.remove(id).await;
    }
    put(&spool, b"tail\r\n", &["x@example.net"]).await;
    assert!(segments(dir.path()).len() >= 2);
    assert_eq!(spool.compact().await, 1);
    assert!(
        !segments(dir.path()).contains(&1),
        "oldest segment deleted: {:?}",
        segments(dir.path())
    );
    spool.close().await;
    let (spool, found, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("reopen");
    assert!(found.iter().any(|q| q.id == keep));
    assert_eq!(
        spool.read(keep).await.expect("read"),
        b"DKIM-Signature: k\r\nkeep me\r\n"
    );
}

/// A segment written by the sidecar before DSN support (its Commit record has no `dsn` field),
/// kept byte for byte in `fixtures/v0-segment.seg`: it still replays, with the message, its
/// envelope and its finished recipient, and no DSN parameters.
#[tokio::test]
async fn segments_written_before_dsn_support_still_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        segment_path(dir.path(), 1),
        include_bytes!("fixtures/v0-segment.seg"),
    )
    .expect("copy fixture");
    let (spool, found, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    assert_eq!(found.len(), 1, "{found:?}");
    let meta = &found[0].meta;
    assert_eq!(
        meta.envelope,
        crate::testing::envelope(&["a@example.net", "b@example.net"], 1_700_000_000)
    );
    assert_eq!(meta.done, [0]);
    assert_eq!(
        spool.read(found[0].id).await.expect("read"),
        b"From: <app@example.com>\r\nSubject: v0\r\n\r\nbody\r\n"
    );
}

/// DSN parameters survive a restart; an envelope without them is written exactly as before, so
/// a spool can still go back to a version without DSN support.
#[tokio::test]
async fn dsn_parameters_survive_reopen_and_are_absent_when_not_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    let mut env = envelope(&["a@example.net", "b@example.net"]);
    env.dsn = crate::message::DsnRequest {
        ret: Some(crate::message::Ret::Hdrs),
        envid: Some("QQ+2B1".into()),
        rcpts: vec![crate::message::RcptDsn {
            notify: crate::message::Notify::parse("SUCCESS,DELAY"),
            orcpt: Some("rfc822;a@example.net".into()),
        }],
    };
    let mut w = spool.begin().await.expect("begin");
    w.write(b"x\r\n").await.expect("write");
    w.commit(env.clone()).await.expect("commit");
    spool.close().await;
    let (_, found, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("reopen");
    assert_eq!(found[0].meta.envelope, env);
    assert_eq!(found[0].meta.envelope.dsn.rcpt(1), Default::default());

    let plain = serde_json::to_value(envelope(&["a@example.net"])).expect("json");
    assert_eq!(
        plain,
        serde_json::json!({
            "sender": "app@example.com",
            "recipients": ["a@example.net"],
            "smtputf8": false,
            "received_at": 1,
        })
    );
}

#[tokio::test]
async fn segments_are_allocated_ahead_and_replay_stops_only_at_an_all_zero_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _, _) = Spool::open(&cfg(dir.path()), Metrics::new()).expect("open");
    let a = put(&spool, b"first\r\n", &["x@example.net"]).await;
    let b = put(&spool, b"second\r\n", &["x@example.net"]).await;
    spool.close().await;
    let seg = segment_path(dir.path(), segments(dir.path())[0]);
    let bytes = std::fs::read(&seg).expect("read segment");
    assert_eq!(
        bytes.len() as u64,
        writer::ALLOCATE_STEP,
        "allocated ahead of the records, so that an fdatasync need not write the inode"
    );
    // Written, not fallocated: a filesystem reports an fallocated range (an unwritten extent on
    // ext4, which the first write into it must convert) as a hole, and an fdatasync after that
    // write has the conversion to write too.
    let last_block = writer::ALLOCATE_STEP - 4096;
    assert!(bytes[..last_block as usize].iter().rposition(|&b| b != 0) < Some(4096));
    let file = std::fs::File::open(&seg).expect("open segment");
    assert_eq!(
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(last_block)).ok(),
        Some(last_block),
        "the tail past the records is zeros written ahead, not a hole"
    );
    drop(file);

    // The zero tail is the end: nothing quarantined.
    let metrics = Metrics::new();
    let (spool, found, _) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("reopen");
    assert_eq!(found.iter().map(|q| q.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(metrics.spool_quarantined.get(), 0);
    spool.close().await;

    // Zeros with records after them are damage, not the end: b is still found.
    let magic = record::MAGIC.to_le_bytes();
    let starts: Vec<usize> = (0..bytes.len() - 4)
        .filter(|&i| bytes[i..i + 4] == magic)
        .collect();
    let b_at = starts
        .iter()
        .copied()
        .find(|&i| bytes[i + 5..i + 13] == b.0.to_le_bytes())
        .expect("b's first record");
    let mut damaged = bytes[..b_at].to_vec();
    damaged.extend_from_slice(&[0; 64]);
    damaged.extend_from_slice(&bytes[b_at..]);
    std::fs::write(&seg, damaged).expect("write segment");
    let metrics = Metrics::new();
    let (spool, found, _) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("reopen damaged");
    assert_eq!(found.iter().map(|q| q.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(metrics.spool_quarantined.get(), 1, "the zeros were set aside");
    drop(spool);
}

/// A hub (docs/hub.md): a hand-off key is stored once, across a reopen and after delivery, and a
/// handed-off message is never signed again.
#[tokio::test]
async fn a_handoff_key_is_held_once_through_reopen_and_after_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handoff = |key: &str| {
        let mut e = envelope(&["x@example.net"]);
        e.origin = Some(key.to_owned());
        e
    };
    let put_keyed = |spool: Spool, key: &'static str| async move {
        let mut w = spool.begin().await.expect("begin");
        w.write(b"DKIM-Signature: theirs\r\n\r\nbody\r\n")
            .await
            .expect("write");
        w.commit(handoff(key)).await
    };
    let metrics = Metrics::new();
    let (spool, _, _) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("open");
    let a = put_keyed(spool.clone(), "k.1").await.expect("first hand-off");
    let again = put_keyed(spool.clone(), "k.1").await.expect("retried hand-off");
    assert_eq!(again, a, "the retry is answered with the message already held");
    assert_eq!(spool.usage().0, 1, "one copy");
    assert_eq!(
        spool.live()[0].meta.signature.as_deref(),
        Some(""),
        "never signed here"
    );
    drop(spool);

    let (spool, found, _) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("reopen");
    assert_eq!(found.len(), 1);
    assert_eq!(put_keyed(spool.clone(), "k.1").await.expect("after reopen"), a);
    spool.remove(a).await;
    assert_eq!(
        put_keyed(spool.clone(), "k.1").await.expect("after delivery"),
        a,
        "a delivered key is remembered"
    );
    assert_eq!(spool.usage().0, 0, "and not queued again");
    let b = put_keyed(spool.clone(), "k.2").await.expect("another key");
    assert_ne!(a, b);
    let received = |r: &str| metrics.handoff_received.with_label_values(&[r]).get();
    assert_eq!((received("queued"), received("duplicate")), (2, 3));
    assert_ne!(spool.handoff_key(a), spool.handoff_key(b));
    let instance = spool.handoff_key(a);
    drop(spool);
    let (spool, _, _) = Spool::open(&cfg(dir.path()), metrics).expect("reopen");
    assert_eq!(
        spool.handoff_key(a),
        instance,
        "the instance id is kept in the directory"
    );
}

/// Every group commit is timed (`spool_fsync_duration_seconds`, the disk's part of an accept)
/// and counted with its batch; a lazy sync of delivery records alone is timed too.
#[tokio::test]
async fn each_group_commit_is_timed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Metrics::new();
    let (spool, _, _arrivals) = Spool::open(&cfg(dir.path()), metrics.clone()).expect("open");
    assert_eq!(metrics.spool_fsync_duration.get_sample_count(), 0);
    let id = put(&spool, b"Subject: t\r\n\r\nbody\r\n", &["x@example.net"]).await;
    let commits = metrics.spool_fsync_duration.get_sample_count();
    assert!(commits >= 1, "a commit was acknowledged without a timed fsync");
    assert_eq!(metrics.spool_batch.get_sample_count(), commits);
    assert!(metrics.spool_fsync_duration.get_sample_sum() > 0.0);
    spool.remove(id).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metrics.spool_fsync_duration.get_sample_count() == commits {
        assert!(
            std::time::Instant::now() < deadline,
            "the Done record was never synced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.spool_batch.get_sample_count(),
        commits,
        "a lazy sync is no batch of commits"
    );
}
