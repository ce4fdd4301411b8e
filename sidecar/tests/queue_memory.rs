//! What a queued message costs while it waits, counted by this test binary's own allocator.
//! When the upstream is slow or down, or the sessions accept faster than delivery sends on, the
//! backlog sits in the spool's index and the runner's queue: thousands of messages after a
//! burst, in every pod that sends mail.

use mailroom_sidecar::{
    config::Config,
    message::{Envelope, MessageSink, MessageWriter},
    metrics::Metrics,
    outbound::Route,
    queue::{
        delivery::Delivery,
        runner::{Phase, Runner},
    },
    spool::Spool,
    testing::FakeTransport,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::{alloc::System, path::Path, sync::Arc, time::Duration};
use tokio::sync::watch;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed in this process.
fn live_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize + s.bytes_reallocated - s.bytes_deallocated as isize
}

/// Fills the index's maps to about 83 % of a power-of-two capacity, so that the figure is
/// the entries' own cost and not a map's spare room.
const BACKLOG: usize = 1_700;

fn config(dir: &Path) -> Config {
    let text = format!(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n  - domain: example.com\n\
         spool:\n  dir: {}\ndelivery:\n  capture:\n    dir: {}\n",
        dir.join("spool").display(),
        dir.join("capture").display(),
    );
    Config::parse(Path::new("test.yaml"), &text).expect("test config")
}

async fn put(spool: &Spool, n: usize) {
    let mut w = spool.begin().await.expect("begin");
    w.write(format!("Subject: m{n}\r\n\r\nbody\r\n").as_bytes())
        .await
        .expect("write");
    w.commit(Envelope {
        sender: "app@example.com".into(),
        recipients: vec![format!("user{n}@example.net")],
        smtputf8: false,
        received_at: mailroom_sidecar::message::now_secs(),
        dsn: Default::default(),
        origin: None,
        shadow: None,
    })
    .await
    .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_costs_its_envelope_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let metrics = Metrics::new();
    let (spool, found, arrivals) = Spool::open(&cfg.spool, metrics.clone()).expect("spool");
    assert!(found.is_empty());
    // A parked route: the runner holds every message and starts no attempt.
    let fake = FakeTransport::new(Route::Smarthost);
    fake.set_parked(true);
    let delivery = Delivery::with_transport(&cfg, fake, 4).expect("delivery");
    let (_delivery_tx, delivery_rx) = watch::channel(Arc::new(delivery));
    let (_phase_tx, phase_rx) = watch::channel(Phase::Run);
    let runner = Runner::new(spool.clone(), delivery_rx, metrics.clone(), Vec::new());
    let runner = tokio::spawn(runner.run(arrivals, phase_rx));
    let queued = || -> i64 {
        ["ready", "deferred", "held"]
            .iter()
            .map(|s| metrics.queue_messages.with_label_values(&[s]).get())
            .sum()
    };

    // One message first, so that what the spool and the runner set up once is in the baseline.
    put(&spool, 0).await;
    wait_for(|| queued() == 1, "the first message in the runner's queue").await;
    let before = live_bytes();
    for n in 1..=BACKLOG {
        put(&spool, n).await;
    }
    wait_for(
        || queued() == BACKLOG as i64 + 1,
        "every message in the runner's queue",
    )
    .await;
    let per_message = (live_bytes() - before) / BACKLOG as isize;
    // 635 bytes: the envelope once (shared by the spool's index and the runner), the two maps'
    // slots, and the chunk and segment lists inline. With a copy each and a B-tree node for the
    // segments it was 1,253 (1.5 KiB per message in the release build under jemalloc).
    assert!(
        per_message < 768,
        "a queued 1-recipient message holds {per_message} bytes"
    );
    assert!(
        per_message > 200,
        "the count missed the backlog: {per_message} bytes each"
    );
    runner.abort();
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
