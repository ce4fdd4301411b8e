//! What `inbound::serve` keeps once a burst of sessions is over, counted by this test binary's
//! own allocator. A sidecar runs in every pod that sends mail, so memory held after a burst is
//! paid once per pod for as long as the pod lives.

use mailroom_sidecar::testing::{Server, config};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::{alloc::System, time::Duration};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocations live in this process.
fn live() -> isize {
    let s = GLOBAL.stats();
    s.allocations as isize - s.deallocations as isize
}

const BURST: isize = 50;

#[tokio::test]
async fn sessions_that_end_free_their_memory_with_no_further_connection() {
    let server = Server::start(config()).await;
    // One session first, so that what the runtime sets up once is in the baseline.
    let mut warm = server.connect().await;
    warm.expect("220 ").await;
    warm.command("EHLO warm.test", "250 ").await;
    warm.command("QUIT", "221").await;
    assert!(warm.is_closed().await);
    let baseline = settled(Duration::from_secs(5)).await;

    let mut clients = Vec::new();
    for n in 0..BURST {
        let mut client = server.connect().await;
        client.expect("220 ").await;
        client.command(&format!("EHLO c{n}.test"), "250 ").await;
        clients.push(client);
    }
    let held = live() - baseline;
    assert!(held > BURST, "{BURST} open sessions hold only {held} allocations");
    for client in &mut clients {
        client.command("QUIT", "221").await;
        assert!(client.is_closed().await);
    }
    drop(clients);

    // A session's task, with all of its state, is freed once it is joined. If ended sessions
    // were only joined when the next client connects, each would keep its task's allocation
    // (9 KiB in a release build) while the pod sits idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = live() - baseline;
        if left < BURST / 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{BURST} ended sessions still hold {left} allocations ({held} while open)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live count once it has stopped moving for a moment.
async fn settled(limit: Duration) -> isize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = live();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = live();
        if now == last || tokio::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn a_small_message_costs_a_few_kib_of_allocation() {
    const MESSAGES: usize = 20;
    let server = Server::start(config()).await;
    let mut client = server.connect().await;
    client.expect("220 ").await;
    client.command("EHLO c.test", "250 ").await;
    let body = format!(
        "From: a@example.com\r\nSubject: s\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(78)).repeat(25)
    );
    // The first message sets up what a session keeps; the rest are what each one costs.
    let mut before = 0;
    for n in 0..=MESSAGES {
        if n == 1 {
            before = allocated();
        }
        client.command("MAIL FROM:<a@example.com>", "250").await;
        client.command("RCPT TO:<x@dest.test>", "250").await;
        client.command("DATA", "354").await;
        client.send(format!("{body}.\r\n")).await;
        client.expect("250 ").await;
    }
    let per_message = (allocated() - before) / MESSAGES;
    // About 22 KiB in a debug build: the message, the sink's copy, the parsed header fields.
    // Buffers sized for the largest message (a 96 KiB data buffer, and a fresh 16 KiB input
    // buffer each time) came to 132 KiB, and kept megabytes of the allocator's pages busy at
    // 50 sessions.
    assert!(
        per_message < 64 * 1024,
        "a 2 KiB message allocated {per_message} bytes"
    );
    client.command("QUIT", "221").await;
}

/// Bytes allocated so far, counting growth in place.
fn allocated() -> usize {
    let s = GLOBAL.stats();
    s.bytes_allocated + s.bytes_reallocated.max(0) as usize
}
