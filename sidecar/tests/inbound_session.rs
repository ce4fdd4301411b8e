//! The inbound SMTP session driven over `tokio::io::duplex` with an in-memory sink: relay, DATA
//! framing, pipelining, limits, policy, timeouts, spool back-pressure and shutdown.

use mailroom_sidecar::testing::{Harness, config, split_received};
use mailroom_sidecar::{config::BareLineEndings, message::SinkError, metrics::SessionEnd};

const HEADER: &str = "From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: hi\r\n\r\n";

/// MAIL + RCPT + DATA, expecting 354.
async fn start_data(h: &mut Harness) {
    h.client.command("MAIL FROM:<app@example.com>", "250 2.1.0").await;
    h.client.command("RCPT TO:<user@dest.test>", "250 2.1.5").await;
    h.client.command("DATA", "354 ").await;
}

#[tokio::test]
async fn message_is_relayed_byte_exact_with_dot_unstuffing_and_one_received_field() {
    let mut h = Harness::ready(config()).await;
    start_data(&mut h).await;
    let body = "line 1\r\n..leading dot\r\n..\r\n...\r\n\r\nlast \u{e9}\r\n";
    h.client.send(format!("{HEADER}{body}.\r\n")).await;
    let queued = h.client.expect("250 2.0.0 Ok: queued as ").await;
    h.client.command("QUIT", "221 2.0.0").await;
    assert_eq!(h.end().await, SessionEnd::Quit);

    let [stored] = &h.sink.messages()[..] else {
        panic!("one message")
    };
    let (received, rest) = split_received(&stored.bytes);
    let unstuffed = "line 1\r\n.leading dot\r\n.\r\n..\r\n\r\nlast \u{e9}\r\n";
    assert_eq!(String::from_utf8_lossy(&rest), format!("{HEADER}{unstuffed}"));
    assert!(
        received.starts_with(
            "Received: from client.test (localhost [127.0.0.1])\r\n\tby relay.test (mailroom) with ESMTP id "
        ),
        "{received}"
    );
    assert!(queued.ends_with(&format!("{:016x}", 1)), "{queued}");
    assert!(received.contains(&format!("id {:016x};\r\n\t", 1)), "{received}");
    assert_eq!(stored.envelope.sender, "app@example.com");
    assert_eq!(stored.envelope.recipients, ["user@dest.test"]);
    assert!(!stored.envelope.smtputf8);
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order_in_one_batch() {
    let mut h = Harness::start(config());
    h.client.expect("220 ").await;
    h.client
        .send("EHLO client.test\r\nMAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<x@dest.test>\r\nRCPT TO:<bad>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n")
        .await;
    // RFC 2920 3.2: the server sends the whole group of replies at once.
    let batch = String::from_utf8(h.client.read_once().await).expect("ascii replies");
    let codes: Vec<&str> = batch.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        [
            "250-", "250-", "250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "501 ", "250 ",
            "354 "
        ]
    );
    h.client
        .send(format!("{HEADER}body\r\n.\r\nNOOP\r\nQUIT\r\n"))
        .await;
    h.client.expect("250 2.0.0 Ok: queued").await;
    h.client.expect("250 2.0.0").await;
    h.client.expect("221 2.0.0").await;
    assert_eq!(h.end().await, SessionEnd::Quit);
    let stored = &h.sink.messages()[0];
    assert_eq!(stored.envelope.recipients, ["x@dest.test", "y@dest.test"]);
}

#[tokio::test]
async fn ehlo_advertises_exactly_the_extensions_we_implement() {
    let mut h = Harness::start(config());
    h.client.expect("220 relay.test ").await;
    h.client.send("EHLO client.test\r\n").await;
    let reply = h.client.reply().await;
    assert_eq!(
        reply,
        [
            "250-relay.test Hello client.test",
            "250-PIPELINING",
            "250-SIZE 26214400",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-DSN",
            "250-CHUNKING",
            "250 ENHANCEDSTATUSCODES"
        ]
    );
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn empty_message_right_after_data_is_a_message_without_from() {
    let mut h = Harness::ready(config()).await;
    start_data(&mut h).await;
    h.client.send(".\r\n").await;
    h.client.expect("550 5.6.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    assert!(h.sink.messages().is_empty());
}

/// Each attempt hides a second transaction behind a fake end of data. The smuggled commands
/// must never run: one 550 5.5.2 at the real end, nothing stored, and the next command is ours.
#[tokio::test]
async fn smuggling_attempts_are_one_rejected_message() {
    let fake_ends = ["\n.\n", "\r\n.\n", "\n.\r\n", "\r\n.\r\r\n", "\r.\r", "\r\n.\r"];
    for fake in fake_ends {
        let mut h = Harness::ready(config()).await;
        start_data(&mut h).await;
        let smuggled = format!(
            "{HEADER}hello{fake}MAIL FROM:<app@example.com>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n{HEADER}evil\r\n.\r\n"
        );
        h.client.send(smuggled).await;
        h.client.expect("550 5.5.2").await;
        h.client.command("NOOP", "250 2.0.0").await;
        h.client.command("QUIT", "221").await;
        h.end().await;
        assert!(h.sink.messages().is_empty(), "{fake:?} stored something");
    }
}

#[tokio::test]
async fn bare_line_endings_are_normalized_when_configured_and_still_never_end_data() {
    let mut config = config();
    config.limits.bare_line_endings = BareLineEndings::Normalize;
    let mut h = Harness::ready(config).await;
    start_data(&mut h).await;
    h.client.send(format!("{HEADER}a\n.\nb\rc\r\n.\r\n")).await;
    h.client.expect("250 2.0.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    let [stored] = &h.sink.messages()[..] else {
        panic!("exactly one message")
    };
    assert_eq!(
        split_received(&stored.bytes).1,
        format!("{HEADER}a\r\n.\r\nb\r\nc\r\n").as_bytes()
    );
}

#[tokio::test]
async fn declared_size_over_the_limit_is_refused_at_mail() {
    let mut config = config();
    config.limits.max_message_bytes = 1000;
    let mut h = Harness::ready(config).await;
    h.client
        .command("MAIL FROM:<a@example.com> SIZE=1001", "552 5.3.4")
        .await;
    h.client
        .command("MAIL FROM:<a@example.com> SIZE=1000", "250 2.1.0")
        .await;
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn actual_size_over_the_limit_is_refused_after_the_end_of_data() {
    let mut config = config();
    config.limits.max_message_bytes = 1000;
    let mut h = Harness::ready(config).await;
    start_data(&mut h).await;
    h.client
        .send(format!("{HEADER}{}.\r\n", "x".repeat(78).repeat(20) + "\r\n"))
        .await;
    h.client.expect("552 5.3.4").await;
    // The session goes on: a fitting message is accepted.
    start_data(&mut h).await;
    h.client.send(format!("{HEADER}small\r\n.\r\n")).await;
    h.client.expect("250 2.0.0").await;
    h.client.command("QUIT", "221").await;
    let metrics = h.metrics.clone();
    h.end().await;
    assert_eq!(h.sink.messages().len(), 1);
    assert_eq!(metrics.received.with_label_values(&["rejected", "size"]).get(), 1);
    assert_eq!(metrics.received.with_label_values(&["accepted", "none"]).get(), 1);
}

#[tokio::test]
async fn mail_from_domain_must_be_configured() {
    let mut h = Harness::ready(config()).await;
    let denied = h.client.command("MAIL FROM:<a@evil.test>", "550 5.7.1").await;
    assert!(denied.contains("evil.test"), "{denied}");
    h.client.command("MAIL FROM:<a@EXAMPLE.ORG>", "250 2.1.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn null_sender_from_a_client_is_accepted_but_the_header_policy_holds() {
    let mut h = Harness::ready(config()).await;
    // RFC 1123 5.2.9: an empty reverse-path MUST be supported (apps' DSNs, RFC 3834 replies).
    h.client.command("MAIL FROM:<>", "250 2.1.0").await;
    h.client.command("RCPT TO:<x@dest.test>", "250").await;
    h.client.command("DATA", "354").await;
    h.client
        .send("From: auto@example.com\r\n\r\nout of office\r\n.\r\n")
        .await;
    h.client.expect("250 2.0.0").await;
    // The From: header is still held to the configured domains.
    h.client.command("MAIL FROM:<>", "250 2.1.0").await;
    h.client.command("RCPT TO:<x@dest.test>", "250").await;
    h.client.command("DATA", "354").await;
    h.client
        .send("From: someone@evil.test\r\n\r\nspoof\r\n.\r\n")
        .await;
    h.client.expect("550 5.7.1").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    let stored = h.sink.messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].envelope.sender, "");
}

#[tokio::test]
async fn header_from_domain_must_be_configured_and_present() {
    let cases = [
        ("From: x@evil.test\r\n\r\nhi\r\n", "550 5.7.1"),
        ("To: y@dest.test\r\n\r\nhi\r\n", "550 5.6.0"),
        (
            "From: a@example.com\r\nFrom: x@evil.test\r\n\r\nhi\r\n",
            "550 5.6.0",
        ),
    ];
    for (message, want) in cases {
        let mut h = Harness::ready(config()).await;
        start_data(&mut h).await;
        h.client.send(format!("{message}.\r\n")).await;
        let reply = h.client.expect(want).await;
        if want == "550 5.7.1" {
            assert!(reply.contains("evil.test"), "{reply}");
        }
        h.client.command("QUIT", "221").await;
        h.end().await;
        assert!(h.sink.messages().is_empty());
    }
}

#[tokio::test]
async fn recipients_over_the_limit_get_452_and_the_rest_is_delivered() {
    let mut config = config();
    config.limits.max_recipients = 2;
    let mut h = Harness::ready(config).await;
    h.client.command("MAIL FROM:<a@example.com>", "250").await;
    h.client.command("RCPT TO:<1@dest.test>", "250 2.1.5").await;
    h.client.command("RCPT TO:<2@dest.test>", "250 2.1.5").await;
    h.client.command("RCPT TO:<3@dest.test>", "452 4.5.3").await;
    h.client.command("DATA", "354").await;
    h.client.send(format!("{HEADER}x\r\n.\r\n")).await;
    h.client.expect("250 2.0.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    assert_eq!(
        h.sink.messages()[0].envelope.recipients,
        ["1@dest.test", "2@dest.test"]
    );
}

#[tokio::test]
async fn over_long_command_line_gets_500_and_the_session_goes_on() {
    let mut h = Harness::ready(config()).await;
    // 3000 bytes arrive as one line; 100 000 span several reads (answered once, rest skipped).
    for len in [3000, 100_000] {
        h.client.send(format!("NOOP {}\r\n", "x".repeat(len))).await;
        h.client.expect("500 5.5.2").await;
        h.client.command("NOOP", "250 2.0.0").await;
    }
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn too_many_bad_commands_close_the_connection() {
    let mut config = config();
    config.limits.max_bad_commands = 2;
    let mut h = Harness::ready(config).await;
    h.client.command("FOO", "500 5.5.2").await;
    h.client.command("RCPT TO:<x@dest.test>", "503 5.5.1").await;
    h.client.command("EXPN list", "421 4.7.0").await;
    assert_eq!(h.end().await, SessionEnd::ProtocolError);
}

#[tokio::test]
async fn commands_not_offered_and_informational_commands() {
    let mut h = Harness::ready(config()).await;
    for (command, want) in [
        ("STARTTLS", "502 5.5.1"),
        ("AUTH PLAIN AGFAAGI=", "502 5.5.1"),
        // CHUNKING is offered: without MAIL, BDAT is out of sequence.
        ("BDAT 0 LAST", "503 5.5.1"),
        ("EXPN staff", "502 5.5.1"),
        ("XYZZY", "500 5.5.2"),
        ("VRFY someone", "252 2.1.5"),
        ("HELP", "214 2.0.0"),
        ("NOOP", "250 2.0.0"),
        ("RSET", "250 2.0.0"),
        ("DATA", "503 5.5.1"),
        ("MAIL FROM:<a@example.com> MT-PRIORITY=3", "555 5.5.4"),
        ("MAIL FROM:<a@example.com>", "250 2.1.0"),
        ("MAIL FROM:<a@example.com>", "503 5.5.1"),
        ("RCPT TO:<x@dest.test> RRVS=2030-01-01T00:00:00Z", "555 5.5.4"),
        ("DATA", "554 5.5.1"),
    ] {
        h.client.command(command, want).await;
    }
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn mail_before_ehlo_is_out_of_sequence() {
    let mut h = Harness::start(config());
    h.client.expect("220").await;
    h.client.command("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    h.client.command("HELO client.test", "250 relay.test").await;
    h.client.command("MAIL FROM:<a@example.com>", "250 2.1.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
}

#[tokio::test]
async fn smtputf8_addresses_need_the_parameter_and_mark_the_envelope() {
    let mut h = Harness::ready(config()).await;
    h.client
        .command("MAIL FROM:<j\u{f6}rg@example.com>", "553 5.6.7")
        .await;
    h.client
        .command("MAIL FROM:<j\u{f6}rg@example.com> SMTPUTF8", "250 2.1.0")
        .await;
    h.client
        .command("RCPT TO:<\u{7528}\u{6237}@dest.test>", "250 2.1.5")
        .await;
    h.client.command("DATA", "354").await;
    h.client
        .send("From: j\u{f6}rg@example.com\r\n\r\nhi\r\n.\r\n")
        .await;
    h.client.expect("250 2.0.0").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    let stored = &h.sink.messages()[0];
    assert!(stored.envelope.smtputf8);
    assert!(split_received(&stored.bytes).0.contains(" with UTF8SMTP id "));
}

#[tokio::test]
async fn idle_client_gets_421_after_the_idle_timeout() {
    let mut config = config();
    config.limits.idle_timeout_seconds = 1;
    let mut h = Harness::ready(config).await;
    h.client.expect("421 4.4.2").await;
    assert_eq!(h.end().await, SessionEnd::Timeout);
}

#[tokio::test]
async fn stalled_data_gets_421_after_the_data_timeout_and_nothing_is_stored() {
    let mut config = config();
    config.limits.data_timeout_seconds = 1;
    let mut h = Harness::ready(config).await;
    start_data(&mut h).await;
    h.client.send(format!("{HEADER}partial")).await;
    h.client.expect("421 4.4.2").await;
    assert_eq!(h.end().await, SessionEnd::Timeout);
    assert!(h.sink.messages().is_empty());
}

/// After a refused DATA, a new MAIL without RSET starts over (what Python's smtplib.sendmail
/// sends next), while DATA may also be tried again (the test below).
#[tokio::test]
async fn a_new_mail_after_a_refused_data_starts_over() {
    let mut h = Harness::ready(config()).await;
    h.sink.fail_begin(Some(SinkError::RateLimited));
    h.client.command("MAIL FROM:<a@example.com>", "250").await;
    h.client.command("RCPT TO:<x@dest.test>", "250").await;
    h.client.command("DATA", "451 4.7.1").await;
    h.sink.fail_begin(None);
    h.client.command("MAIL FROM:<a@example.com>", "250").await;
    h.client.command("RCPT TO:<y@dest.test>", "250").await;
    h.client.command("DATA", "354").await;
    h.client.send(format!("{HEADER}x\r\n.\r\n")).await;
    h.client.expect("250").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    let messages = h.sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].envelope.recipients,
        ["y@dest.test"],
        "only the second transaction's recipient"
    );
}

#[tokio::test]
async fn full_spool_answers_data_itself_with_452() {
    let mut h = Harness::ready(config()).await;
    h.sink.fail_begin(Some(SinkError::Full));
    h.client.command("MAIL FROM:<a@example.com>", "250").await;
    h.client.command("RCPT TO:<x@dest.test>", "250").await;
    h.client.command("DATA", "452 4.3.1").await;
    h.sink.fail_begin(None);
    h.sink.fail_commit(Some(SinkError::Io));
    h.client.command("DATA", "354").await;
    h.client.send(format!("{HEADER}x\r\n.\r\n")).await;
    h.client.expect("451 4.3.0").await;
    h.client.command("QUIT", "221").await;
    let metrics = h.metrics.clone();
    h.end().await;
    assert_eq!(
        metrics
            .received
            .with_label_values(&["rejected", "spool_full"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .received
            .with_label_values(&["rejected", "spool_error"])
            .get(),
        1
    );
}

#[tokio::test]
async fn shutdown_lets_a_message_in_data_finish_then_answers_421() {
    let mut h = Harness::ready(config()).await;
    start_data(&mut h).await;
    h.client.send(HEADER).await;
    h.shutdown.send(true).expect("session listens");
    h.client.send("still coming\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    // The next command boundary (here: waiting for the next command) gets 421.
    h.client.expect("421 4.3.2").await;
    assert_eq!(h.end().await, SessionEnd::Shutdown);
    assert_eq!(h.sink.messages().len(), 1);
}

#[tokio::test]
async fn shutdown_interrupts_an_idle_wait() {
    let mut h = Harness::ready(config()).await;
    h.shutdown.send(true).expect("session listens");
    h.client.expect("421 4.3.2").await;
    let metrics = h.metrics.clone();
    assert_eq!(h.end().await, SessionEnd::Shutdown);
    assert_eq!(metrics.sessions.with_label_values(&["shutdown"]).get(), 1);
    assert_eq!(metrics.sessions_active.get(), 0);
}

#[tokio::test]
async fn client_vanishing_mid_data_stores_nothing() {
    let mut h = Harness::ready(config()).await;
    start_data(&mut h).await;
    h.client.send(format!("{HEADER}partial")).await;
    let Harness {
        client,
        session,
        sink,
        ..
    } = h;
    drop(client);
    assert_eq!(session.await.expect("no panic"), SessionEnd::Disconnected);
    assert!(sink.messages().is_empty());
}

/// RFC 3461: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT are accepted and stored with the
/// envelope as given (ENVID and ORCPT still xtext); a malformed one gets `501 5.5.4` naming it;
/// `<postmaster>` gets the ORCPT it was received as (RFC 3461 4.2).
#[tokio::test]
async fn dsn_parameters_are_stored_with_the_envelope() {
    let mut h = Harness::ready(config()).await;
    for (command, want) in [
        ("MAIL FROM:<a@example.com> ENVID=a+2Bb=c", "501 5.5.4 Bad ENVID"),
        (
            "MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159+2Bx",
            "250 2.1.0",
        ),
        (
            "RCPT TO:<x@dest.test> NOTIFY=success,DELAY ORCPT=rfc822;X+2Bx@dest.test",
            "250 2.1.5",
        ),
        ("RCPT TO:<y@dest.test>", "250 2.1.5"),
        ("RCPT TO:<z@dest.test> NOTIFY=NEVER", "250 2.1.5"),
        ("RCPT TO:<w@dest.test> ORCPT=rfc822", "501 5.5.4 Bad ORCPT"),
        ("RCPT TO:<postmaster>", "250 2.1.5"),
    ] {
        h.client.command(command, want).await;
    }
    h.client.command("DATA", "354").await;
    h.client.send(format!("{HEADER}body\r\n.\r\n")).await;
    h.client.expect("250 2.0.0 Ok: queued").await;
    h.client.command("QUIT", "221").await;
    h.end().await;
    let stored = &h.sink.messages()[0].envelope;
    assert_eq!(
        stored.recipients,
        [
            "x@dest.test",
            "y@dest.test",
            "z@dest.test",
            "postmaster@example.com"
        ]
    );
    let json = serde_json::to_value(&stored.dsn).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "ret": "hdrs",
            "envid": "QQ314159+2Bx",
            "rcpts": [
                {"notify": {"success": true, "delay": true}, "orcpt": "rfc822;X+2Bx@dest.test"},
                {},
                {"notify": {}},
                {"orcpt": "rfc822;postmaster"},
            ],
        })
    );
}
