//! `inbound::serve` over real loopback TCP: connection limit, hot reload for new sessions, and
//! shutdown that stops accepting and waits for open sessions.

use mailroom_sidecar::testing::{Server, config};
use std::{sync::Arc, time::Duration};

#[tokio::test]
async fn connection_over_the_limit_gets_421_at_once_and_is_counted_overloaded() {
    let mut limited = config();
    limited.limits.max_connections = 1;
    let server = Server::start(limited).await;
    let mut first = server.connect().await;
    first.expect("220 ").await;
    let mut second = server.connect().await;
    second.expect("421 4.3.2").await;
    assert!(second.is_closed().await);
    assert_eq!(
        server.metrics.sessions.with_label_values(&["overloaded"]).get(),
        1
    );
    // The first session is unaffected; once it ends there is room again.
    first.command("QUIT", "221 2.0.0").await;
    assert!(first.is_closed().await);
    // The ended session's task may take a moment to be reaped: retry briefly.
    for attempt in 0.. {
        let mut third = server.connect().await;
        if third.reply().await[0].starts_with("220 ") {
            third.command("QUIT", "221").await;
            break;
        }
        assert!(attempt < 50, "room never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hot_reload_applies_to_new_sessions_only() {
    let server = Server::start(config()).await;
    let mut old = server.connect().await;
    old.expect("220 ").await;
    let mut reloaded = config();
    reloaded.limits.max_message_bytes = 4096;
    server
        .config
        .send(Arc::new(reloaded))
        .expect("serve watches the config");
    let mut new = server.connect().await;
    new.expect("220 ").await;
    old.send("EHLO a.test\r\n").await;
    new.send("EHLO b.test\r\n").await;
    assert!(old.reply().await.contains(&"250-SIZE 26214400".to_string()));
    assert!(new.reply().await.contains(&"250-SIZE 4096".to_string()));
    old.command("QUIT", "221").await;
    new.command("QUIT", "221").await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_waits_for_open_sessions() {
    let server = Server::start(config()).await;
    let mut client = server.connect().await;
    client.expect("220 ").await;
    client.command("EHLO c.test", "250 ").await;
    client.command("MAIL FROM:<a@example.com>", "250").await;
    client.command("RCPT TO:<x@dest.test>", "250").await;
    client.command("DATA", "354").await;
    server.stop.send(true).expect("serve listens");
    // Once the listener is closed, serve has acted on the stop; mid-DATA the session is not
    // cut, so serve must still be waiting for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!server.task.is_finished(), "serve waits for the open session");
    client.send("From: a@example.com\r\n\r\nbye\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    client.expect("421 4.3.2").await;
    assert!(client.is_closed().await);
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("drained")
        .expect("no panic");
    assert_eq!(server.sink.messages().len(), 1);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .is_err(),
        "listener closed"
    );
    assert_eq!(server.metrics.sessions.with_label_values(&["shutdown"]).get(), 1);
}
