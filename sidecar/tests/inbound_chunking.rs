//! CHUNKING (RFC 3030) on the inbound session, over `tokio::io::duplex` with an in-memory sink:
//! messages in BDAT chunks, pipelined whole transactions, and every way a chunk can arrive
//! where there is no message for it. In each refusal the chunk's bytes must be read as data,
//! never as commands.

use mailroom_sidecar::testing::{Harness, config, split_received};
use mailroom_sidecar::{message::SinkError, metrics::SessionEnd};

const HEADER: &str = "From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: hi\r\n\r\n";

/// Text that would be a whole second transaction if it were read as commands.
const SMUGGLED: &str = "MAIL FROM:<app@example.com>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n";

async fn envelope(h: &mut Harness) {
    h.client.command("MAIL FROM:<app@example.com>", "250 2.1.0").await;
    h.client.command("RCPT TO:<user@dest.test>", "250 2.1.5").await;
}

async fn quit(h: &mut Harness) {
    h.client.command("QUIT", "221 2.0.0").await;
    assert_eq!(h.end().await, SessionEnd::Quit);
}

#[tokio::test]
async fn a_message_in_chunks_is_stored_as_sent_with_no_dot_unstuffing() {
    let mut h = Harness::ready(config()).await;
    envelope(&mut h).await;
    let first = format!("{HEADER}line 1\r\n..two dots\r\n.\r\n");
    let second = "last line\r\n";
    h.client.send(format!("BDAT {}\r\n{first}", first.len())).await;
    h.client
        .expect(&format!("250 2.0.0 {} octets received", first.len()))
        .await;
    h.client
        .send(format!("BDAT {} LAST\r\n{second}", second.len()))
        .await;
    h.client.expect("250 2.0.0 Ok: queued as ").await;
    quit(&mut h).await;

    let [stored] = &h.sink.messages()[..] else {
        panic!("one message")
    };
    let (received, rest) = split_received(&stored.bytes);
    assert_eq!(String::from_utf8_lossy(&rest), format!("{first}{second}"));
    assert!(received.starts_with("Received: from client.test"), "{received}");
    assert_eq!(stored.envelope.recipients, ["user@dest.test"]);
}

#[tokio::test]
async fn a_whole_transaction_pipelined_in_one_write_gets_its_replies_in_one_batch() {
    let mut h = Harness::ready(config()).await;
    let body = format!("{HEADER}hello\r\n");
    h.client
        .send(format!(
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<user@dest.test>\r\nBDAT {} LAST\r\n{body}NOOP\r\n",
            body.len()
        ))
        .await;
    let batch = String::from_utf8(h.client.read_once().await).expect("ascii replies");
    let lines: Vec<&str> = batch.lines().collect();
    assert_eq!(lines.len(), 4, "{batch}");
    assert!(
        lines[0].starts_with("250 2.1.0") && lines[1].starts_with("250 2.1.5"),
        "{batch}"
    );
    assert!(lines[2].starts_with("250 2.0.0 Ok: queued as "), "{batch}");
    assert!(lines[3].starts_with("250 2.0.0"), "{batch}");
    quit(&mut h).await;
    assert_eq!(split_received(&h.sink.messages()[0].bytes).1, body.as_bytes());
}

#[tokio::test]
async fn bdat_0_last_ends_a_message_and_an_unterminated_last_line_gets_its_crlf() {
    let mut h = Harness::ready(config()).await;
    envelope(&mut h).await;
    let chunk = format!("{HEADER}no line end");
    h.client.send(format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    h.client.expect("250 2.0.0").await;
    h.client.command("BDAT 0 LAST", "250 2.0.0 Ok: queued as ").await;
    quit(&mut h).await;
    assert_eq!(
        split_received(&h.sink.messages()[0].bytes).1,
        format!("{chunk}\r\n").as_bytes()
    );
}

#[tokio::test]
async fn a_chunk_without_a_transaction_is_read_as_data_and_refused() {
    for (name, setup, want) in [
        ("no MAIL", false, "503 5.5.1"),
        ("no valid recipient", true, "554 5.5.1"),
    ] {
        let mut h = Harness::ready(config()).await;
        if setup {
            h.client.command("MAIL FROM:<app@example.com>", "250").await;
            h.client.command("RCPT TO:<bad>", "501").await;
        }
        h.client
            .send(format!("BDAT {} LAST\r\n{SMUGGLED}", SMUGGLED.len()))
            .await;
        h.client.expect(want).await;
        // The next command is the client's own: the chunk's text ran as nothing.
        h.client.command("NOOP", "250 2.0.0").await;
        quit(&mut h).await;
        assert!(h.sink.messages().is_empty(), "{name}: stored something");
    }
}

#[tokio::test]
async fn a_full_spool_refuses_the_first_chunk_after_reading_it() {
    let mut h = Harness::ready(config()).await;
    h.sink.fail_begin(Some(SinkError::Full));
    envelope(&mut h).await;
    h.client
        .send(format!("BDAT {}\r\n{SMUGGLED}", SMUGGLED.len()))
        .await;
    h.client.expect("452 4.3.1").await;
    h.client.command("RSET", "250 2.0.0").await;
    quit(&mut h).await;
    assert!(h.sink.messages().is_empty());
}

#[tokio::test]
async fn data_or_rcpt_after_bdat_is_out_of_sequence_and_rset_drops_the_chunks() {
    let mut h = Harness::ready(config()).await;
    envelope(&mut h).await;
    h.client.send(format!("BDAT {}\r\n{HEADER}", HEADER.len())).await;
    h.client.expect("250 2.0.0").await;
    h.client.command("DATA", "503 5.5.1").await;
    h.client.command("RCPT TO:<other@dest.test>", "503 5.5.1").await;
    h.client.command("MAIL FROM:<app@example.com>", "503 5.5.1").await;
    h.client.command("RSET", "250 2.0.0").await;
    // After RSET, nothing of the first message is left: a new one starts clean.
    envelope(&mut h).await;
    let body = format!("{HEADER}second\r\n");
    h.client.send(format!("BDAT {} LAST\r\n{body}", body.len())).await;
    h.client.expect("250 2.0.0 Ok: queued").await;
    quit(&mut h).await;
    let [stored] = &h.sink.messages()[..] else {
        panic!("only the second message")
    };
    assert_eq!(split_received(&stored.bytes).1, body.as_bytes());
}

#[tokio::test]
async fn chunks_get_the_checks_of_data_and_a_refused_message_leaves_nothing() {
    let mut small = config();
    small.limits.max_message_bytes = 1000;
    let cases: [(&str, String, &str); 3] = [
        ("bare LF", format!("{HEADER}a\nb\r\n"), "550 5.5.2"),
        ("NUL", format!("{HEADER}a\0b\r\n"), "550 5.6.0"),
        ("too big", format!("{HEADER}{}\r\n", "x".repeat(990)), "552 5.3.4"),
    ];
    for (name, body, want) in cases {
        let mut h = Harness::ready(small.clone()).await;
        envelope(&mut h).await;
        let (a, b) = body.split_at(body.len() / 2);
        h.client.send(format!("BDAT {}\r\n{a}", a.len())).await;
        h.client.expect("250 2.0.0").await;
        h.client.send(format!("BDAT {} LAST\r\n{b}", b.len())).await;
        h.client.expect(want).await;
        h.client.command("NOOP", "250 2.0.0").await;
        quit(&mut h).await;
        assert!(h.sink.messages().is_empty(), "{name}: stored something");
    }
}

#[tokio::test]
async fn a_chunk_that_arrives_in_pieces_is_waited_for() {
    let mut h = Harness::ready(config()).await;
    envelope(&mut h).await;
    let body = format!("{HEADER}{}\r\n", "y".repeat(500));
    h.client.send(format!("BDAT {} LAST\r\n", body.len())).await;
    for piece in body.as_bytes().chunks(97) {
        h.client.send(piece).await;
    }
    h.client.expect("250 2.0.0 Ok: queued").await;
    quit(&mut h).await;
    assert_eq!(split_received(&h.sink.messages()[0].bytes).1, body.as_bytes());
}
