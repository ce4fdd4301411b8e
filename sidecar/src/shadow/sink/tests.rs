use super::*;

/// Every session's task holds its largest path inline, and a future is copied whole each
/// time it moves (into its parent, into the task). Inline, the replicated commit, which
/// talks to the hubs, made this future 6.8 KiB instead of 2.5 (a debug build) and a
/// session's task 12.6 KiB instead of 9.4 (release), replicated or not. It stays on the
/// heap, off the common path.
#[tokio::test]
async fn a_commit_holds_no_replication_inline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = crate::testing::config();
    cfg.spool.dir = dir.path().join("spool");
    let metrics = Metrics::new();
    let (spool, _, _arrivals) = Spool::open(&cfg.spool, metrics.clone()).expect("spool");
    let delivery = Delivery::build(&cfg, &metrics).expect("delivery");
    let (_tx, delivery_rx) = watch::channel(Arc::new(delivery));
    let (_removed_tx, removed_rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = ShadowSink::new(
        spool,
        delivery_rx,
        Ledger::new(metrics.clone(), removed_rx),
        metrics,
    );
    let writer = sink.begin().await.expect("begin");
    let commit = writer.commit(Envelope {
        sender: "app@example.com".into(),
        recipients: vec!["user@example.net".into()],
        smtputf8: false,
        received_at: crate::message::now_secs(),
        dsn: Default::default(),
        origin: None,
        shadow: None,
    });
    let size = std::mem::size_of_val(&commit);
    assert!(size <= 4096, "a commit's future is {size} bytes");
}
