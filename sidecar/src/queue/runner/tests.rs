//! The runner in-process: a real spool in a temporary directory, a [`FakeTransport`] instead of
//! the network. Every wait has a deadline and waits for a positive signal (a call, a gauge).

use super::*;
use crate::queue::control::Control;
use crate::{
    config::Config,
    message::{Envelope, MessageSink, MessageWriter},
    outbound::Route,
    testing::FakeTransport,
};
use std::path::Path;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

struct Harness {
    _dir: tempfile::TempDir,
    spool: Spool,
    fake: FakeTransport,
    metrics: Metrics,
    drain: watch::Sender<Phase>,
    runner: JoinHandle<()>,
    control: Control,
}

fn config(dir: &Path, retry_seconds: u64) -> Config {
    let text = format!(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n  - domain: example.com\n\
         spool:\n  dir: {}\ndelivery:\n  capture:\n    dir: {}\n\
         retry:\n  initialSeconds: {retry_seconds}\n  multiplier: 1\n  maxSeconds: {retry_seconds}\n",
        dir.join("spool").display(),
        dir.join("capture").display(),
    );
    Config::parse(Path::new("test.yaml"), &text).expect("test config")
}

/// Starts a runner over an empty spool with `concurrency` and a retry every `retry_seconds`.
fn start(concurrency: usize, retry_seconds: u64, fake: &FakeTransport) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), retry_seconds);
    let metrics = Metrics::new();
    let (spool, found, arrivals) = Spool::open(&cfg.spool, metrics.clone()).expect("spool");
    assert!(found.is_empty());
    let delivery = Delivery::with_transport(&cfg, fake.clone(), concurrency).expect("delivery");
    let (_delivery_tx, delivery_rx) = watch::channel(Arc::new(delivery));
    let (drain, drain_rx) = watch::channel(Phase::Run);
    let mut runner = Runner::new(spool.clone(), delivery_rx, metrics.clone(), Vec::new());
    let control = runner.control();
    let runner = tokio::spawn(async move {
        // Keeps the sender alive (a dropped sender is not a reload).
        let _keep = _delivery_tx;
        runner.run(arrivals, drain_rx).await;
    });
    Harness {
        _dir: dir,
        spool,
        fake: fake.clone(),
        metrics,
        drain,
        runner,
        control,
    }
}

async fn put(spool: &Spool, subject: &str, rcpts: &[&str]) {
    let mut w = spool.begin().await.expect("begin");
    w.write(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes())
        .await
        .expect("write");
    w.commit(Envelope {
        sender: "app@example.com".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        received_at: crate::message::now_secs(),
        dsn: Default::default(),
        origin: None,
        shadow: None,
    })
    .await
    .expect("commit");
}

fn subject(call: &crate::testing::Call) -> String {
    let text = String::from_utf8_lossy(&call.message);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string()
}

async fn wait_for_calls(fake: &FakeTransport, n: usize, what: &str) {
    if let Err(seen) = fake.wait_for_calls(n, DEADLINE).await {
        panic!("{what}: expected {n} delivery calls within {DEADLINE:?}, saw {seen}");
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_go_out_in_arrival_order() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(1, 60, &fake);
    for n in 0..6 {
        put(&h.spool, &format!("m{n}"), &["a@example.net"]).await;
    }
    wait_for_calls(&h.fake, 6, "six messages").await;
    let order: Vec<String> = h.fake.calls().iter().map(subject).collect();
    assert_eq!(order, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    wait_until("an empty spool", || h.spool.usage().0 == 0).await;
    h.runner.abort();
}

#[tokio::test]
async fn the_queue_closes_stale_connections_while_idle() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(1, 60, &fake);
    put(&h.spool, "m0", &["a@example.net"]).await;
    wait_for_calls(&h.fake, 1, "one message").await;
    // Nothing more arrives: the sweep still runs, on the queue's one-second tick.
    let before = h.fake.stale_sweeps();
    wait_until("two sweeps with nothing to deliver", || {
        h.fake.stale_sweeps() >= before + 2
    })
    .await;
    h.runner.abort();
}

#[tokio::test]
async fn a_parked_route_holds_mail_until_it_comes_back() {
    let fake = FakeTransport::new(Route::Smarthost);
    fake.set_parked(true);
    let h = start(4, 60, &fake);
    put(&h.spool, "held-1", &["a@example.net"]).await;
    put(&h.spool, "held-2", &["b@example.net"]).await;
    // The gauge is set by the runner's own loop: once it counts both messages as ready, the
    // runner has them and chose not to try them.
    let ready = h.metrics.queue_messages.with_label_values(&["ready"]);
    wait_until("the runner to hold two ready messages", || ready.get() == 2).await;
    assert!(h.fake.calls().is_empty(), "an attempt was made on a parked route");
    h.fake.set_parked(false);
    wait_for_calls(&h.fake, 2, "after un-parking").await;
    wait_until("an empty spool", || h.spool.usage().0 == 0).await;
    h.runner.abort();
}

/// A delivery whose `Done` record cannot be written would go out again after a restart: while
/// the spool cannot record (disk full, reserve spent), the runner starts none.
#[tokio::test]
async fn no_delivery_starts_while_the_spool_cannot_record_it() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(4, 60, &fake);
    h.spool.set_recording(false);
    put(&h.spool, "held-1", &["a@example.net"]).await;
    put(&h.spool, "held-2", &["b@example.net"]).await;
    let ready = h.metrics.queue_messages.with_label_values(&["ready"]);
    wait_until("the runner to hold two ready messages", || ready.get() == 2).await;
    assert!(
        h.fake.calls().is_empty(),
        "a delivery started that could not be recorded"
    );
    h.spool.set_recording(true);
    wait_for_calls(&h.fake, 2, "once records can be written").await;
    wait_until("an empty spool", || h.spool.usage().0 == 0).await;
    h.runner.abort();
}

#[tokio::test]
async fn fresh_mail_is_not_starved_by_retries() {
    let fake = FakeTransport::new(Route::Smarthost);
    // Each attempt takes a while, and the retries are due again after about a second, so the
    // single delivery slot is never idle while the deferred messages keep coming back.
    fake.set_latency(Duration::from_millis(100));
    let h = start(1, 1, &fake);
    const DEFERRED: usize = 8;
    for n in 0..DEFERRED {
        put(&h.spool, &format!("stuck-{n}"), &["defer@example.net"]).await;
    }
    // Wait until retries are being made (some message tried twice).
    wait_until("retries to be made", || {
        let calls = h.fake.calls();
        let subjects: Vec<String> = calls.iter().map(subject).collect();
        subjects
            .iter()
            .enumerate()
            .any(|(i, s)| subjects[..i].contains(s))
    })
    .await;
    let before = h.fake.calls().len();
    put(&h.spool, "fresh", &["ok@example.net"]).await;
    wait_until("the fresh message to be delivered", || {
        h.fake.calls().iter().any(|c| subject(c) == "fresh")
    })
    .await;
    let calls = h.fake.calls();
    let position = calls
        .iter()
        .position(|c| subject(c) == "fresh")
        .expect("fresh delivered");
    // First come, first served: at most the attempts already due (one per deferred message)
    // and the one in flight go before it.
    assert!(
        position - before <= DEFERRED + 1,
        "the fresh message waited behind {} attempts with only {DEFERRED} messages deferred",
        position - before
    );
    h.runner.abort();
}

#[tokio::test]
async fn a_connection_failure_probes_with_one_message_at_a_time() {
    let fake = FakeTransport::new(Route::Smarthost);
    fake.set_latency(Duration::from_millis(50));
    let h = start(4, 1, &fake);
    for n in 0..8 {
        put(&h.spool, &format!("m{n}"), &["refuse@example.net"]).await;
    }
    // The first round goes out four at a time; the failures make the runner suspect the route.
    wait_for_calls(&h.fake, 8, "the first round").await;
    assert_eq!(h.fake.max_in_flight(), 4, "the first round should use every slot");
    h.fake.reset_max_in_flight();
    wait_for_calls(&h.fake, 16, "the retries").await;
    assert_eq!(
        h.fake.max_in_flight(),
        1,
        "a suspect route is probed one message at a time"
    );
    // The route comes back: the first success lifts the suspicion and the queue empties.
    h.fake.set_rule(crate::testing::by_local_part_ok);
    wait_until("an empty spool", || h.spool.usage().0 == 0).await;
    h.runner.abort();
}

#[tokio::test]
async fn drain_delivers_what_it_can_and_returns() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(2, 60, &fake);
    for n in 0..3 {
        put(&h.spool, &format!("m{n}"), &["a@example.net", "b@example.net"]).await;
    }
    h.drain.send_replace(Phase::Drain);
    tokio::time::timeout(DEADLINE, h.runner)
        .await
        .expect("the runner returns once the queue is empty")
        .expect("runner task");
    assert_eq!(h.fake.calls().len(), 3);
    assert_eq!(h.spool.usage().0, 0);
}

/// A held message gets no attempt, a drain does not wait for it (without a hub it would wait
/// for deferred mail until the deadline), and a release makes it due at once.
#[tokio::test]
async fn a_held_message_gets_no_attempt_and_does_not_hold_up_a_drain() {
    let fake = FakeTransport::new(Route::Smarthost);
    fake.set_parked(true);
    let h = start(1, 60, &fake);
    put(&h.spool, "held", &["a@example.net"]).await;
    let ready = h.metrics.queue_messages.with_label_values(&["ready"]);
    wait_until("the runner to have the message", || ready.get() == 1).await;
    let id = h.spool.live()[0].id;
    let held = h
        .control
        .ask(|r| crate::queue::control::Command::Hold(id, r))
        .await
        .expect("runner answers");
    assert_eq!(held.expect("held").result, "held");
    assert!(h.spool.live()[0].meta.held, "the spool knows");
    h.fake.set_parked(false);
    let rows = h
        .control
        .ask(crate::queue::control::Command::List)
        .await
        .expect("runner answers");
    assert_eq!(rows[0].state, crate::queue::control::State::Held);
    h.drain.send_replace(Phase::Drain);
    tokio::time::timeout(DEADLINE, h.runner)
        .await
        .expect("the drain ended with only a held message left")
        .expect("runner");
    assert!(h.fake.calls().is_empty(), "a held message was attempted");
    assert_eq!(h.spool.usage().0, 1, "the held message stays in the spool");
}

/// The spool's index and the runner hold one copy of a message's envelope between them, also
/// after an attempt or an administrator changed it (tests/queue_memory.rs counts the bytes).
#[tokio::test]
async fn the_runner_shares_the_spools_copy_of_a_message_as_it_changes() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(1, 60, &fake);
    put(&h.spool, "m", &["a@example.net", "defer@example.net"]).await;
    wait_for_calls(&h.fake, 1, "the first attempt").await;
    let deferred = h.metrics.queue_messages.with_label_values(&["deferred"]);
    wait_until("the retry to be scheduled", || deferred.get() == 1).await;
    let id = h.spool.live()[0].id;
    let shared = |what: &str| {
        let control = h.control.clone();
        let spool = h.spool.clone();
        let what = what.to_owned();
        async move {
            let (_, runners) = control
                .ask(|r| crate::queue::control::Command::Get(id, r))
                .await
                .expect("runner answers")
                .expect("the runner has the message");
            let spools = spool.live()[0].meta.clone();
            assert!(Arc::ptr_eq(&runners, &spools), "{what}: two copies");
            runners
        }
    };
    let meta = shared("after a partial delivery").await;
    assert_eq!(meta.done, [0], "the delivered recipient is recorded");
    h.control
        .ask(|r| crate::queue::control::Command::Hold(id, r))
        .await
        .expect("runner answers")
        .expect("held");
    assert!(shared("after a hold").await.held);
    h.runner.abort();
}

#[tokio::test]
async fn drain_keeps_going_while_mail_is_deferred() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(1, 1, &fake);
    put(&h.spool, "stuck", &["defer@example.net"]).await;
    h.drain.send_replace(Phase::Drain);
    // Two attempts: the runner went round its loop with mail left and did not stop.
    wait_for_calls(&h.fake, 2, "a retry during the drain").await;
    assert!(
        !h.runner.is_finished(),
        "the runner gave up on deferred mail during a drain"
    );
    assert_eq!(h.spool.usage().0, 1, "the deferred message stays in the spool");
    h.runner.abort();
}

#[tokio::test]
async fn a_bounce_is_queued_to_the_sender_and_delivered() {
    let fake = FakeTransport::new(Route::Smarthost);
    let h = start(1, 60, &fake);
    put(&h.spool, "doomed", &["bounce@example.net", "ok@example.net"]).await;
    // The original, then the DSN to app@example.com from the null reverse-path.
    wait_for_calls(&h.fake, 2, "the original and its bounce").await;
    let calls = h.fake.calls();
    assert_eq!(calls[0].recipients, ["bounce@example.net", "ok@example.net"]);
    assert_eq!(calls[1].sender, "");
    assert_eq!(calls[1].recipients, ["app@example.com"]);
    let dsn = String::from_utf8_lossy(&calls[1].message);
    assert!(dsn.contains("multipart/report"), "not a DSN:\n{dsn}");
    assert!(
        dsn.contains("bounce@example.net"),
        "the DSN does not name the recipient:\n{dsn}"
    );
    wait_until("an empty spool", || h.spool.usage().0 == 0).await;
    h.runner.abort();
}
