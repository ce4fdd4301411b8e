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
    // (13 KiB in a release build) while the pod sits idle.
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
