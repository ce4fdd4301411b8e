//! Clients we did not write (Python `smtplib`, `curl`, `lettre`) against `inbound::serve` on
//! `127.0.0.1:0`; each test asserts byte for byte what the sink received.

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::header::ContentType};
use mailroom_sidecar::testing::Stored;
use mailroom_sidecar::testing::{Server, config, split_received};
use mailroom_test_support::relay::run_ok;
use std::{process::Output, time::Duration};

/// Runs a required external tool off the runtime (the server under test runs on it); fails
/// (never skips) with install advice when it is missing.
async fn run(program: &str, args: &[&str], install: &str) -> Output {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let what = format!("`{program}` ({install})");
    tokio::task::spawn_blocking(move || run_ok(&mut cmd, &what))
        .await
        .expect("the tool's thread")
}

const PYTHON_INSTALL: &str =
    "install Python 3 (e.g. `apt-get install python3`); only the standard library is used";

/// Sends with `smtplib` and prints, base64, the bytes smtplib flattened (what must be stored).
const PYTHON: &str = r#"
import base64, email.generator, io, smtplib, sys
from email.message import EmailMessage
mode, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.test")
if mode == "sendmail":
    raw = (b"From: App <app@example.com>\r\nTo: a@dest.test\r\nSubject: several\r\n\r\n"
           b"first\r\n.dot line\r\n..two dots\r\n.\r\nlast\r\n")
    refused = s.sendmail("app@example.com", ["a@dest.test", "b@dest.test", "c@dest.test"], raw)
    assert refused == {}, refused
    flat = raw
else:
    msg = EmailMessage()
    msg["To"] = "a@dest.test"
    if mode == "utf8":
        msg["From"] = "J\u00f6rg <j\u00f6rg@example.com>"
        msg["Subject"] = "Gr\u00fc\u00dfe"
        msg.set_content("Gr\u00fc\u00dfe aus K\u00f6ln\n.\n")
    else:
        msg["From"] = "App <app@example.com>"
        msg["Subject"] = "hello"
        msg.set_content("Hello\n.leading dot\n")
    s.send_message(msg)
    buf = io.BytesIO()
    policy = msg.policy.clone(utf8=True) if mode == "utf8" else None
    gen = email.generator.BytesGenerator(buf, policy=policy) if policy else email.generator.BytesGenerator(buf)
    gen.flatten(msg, linesep="\r\n")
    flat = buf.getvalue()
s.quit()
sys.stdout.write(base64.b64encode(flat).decode())
"#;

async fn python(mode: &str, server: &Server) -> Vec<u8> {
    let port = server.port.to_string();
    let out = run("python3", &["-c", PYTHON, mode, &port], PYTHON_INSTALL).await;
    base64_decode(&String::from_utf8_lossy(&out.stdout))
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.trim().bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

/// The only stored message, after `serve` has drained.
async fn only_message(server: Server) -> Stored {
    server.stop.send(true).expect("serve listens");
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("drains")
        .expect("no panic");
    let messages = server.sink.messages();
    assert_eq!(messages.len(), 1, "exactly one message stored");
    messages.into_iter().next().expect("one message")
}

#[tokio::test]
async fn python_send_message_is_stored_byte_exact() {
    let server = Server::start(config()).await;
    let expected = python("send_message", &server).await;
    let stored = only_message(server).await;
    let (received, body) = split_received(&stored.bytes);
    assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&expected));
    assert!(
        received.starts_with("Received: from py.test (localhost [127.0.0.1])\r\n"),
        "{received}"
    );
    assert_eq!(stored.envelope.sender, "app@example.com");
    assert_eq!(stored.envelope.recipients, ["a@dest.test"]);
}

#[tokio::test]
async fn python_sendmail_with_several_recipients_and_dot_lines_is_byte_exact() {
    let server = Server::start(config()).await;
    let expected = python("sendmail", &server).await;
    let stored = only_message(server).await;
    assert_eq!(split_received(&stored.bytes).1, expected);
    assert_eq!(
        stored.envelope.recipients,
        ["a@dest.test", "b@dest.test", "c@dest.test"]
    );
}

#[tokio::test]
async fn python_smtputf8_message_is_stored_byte_exact() {
    let server = Server::start(config()).await;
    let expected = python("utf8", &server).await;
    let stored = only_message(server).await;
    let (received, body) = split_received(&stored.bytes);
    assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&expected));
    assert!(received.contains(" with UTF8SMTP id "), "{received}");
    assert!(stored.envelope.smtputf8);
    assert_eq!(stored.envelope.sender, "j\u{f6}rg@example.com");
}

#[tokio::test]
async fn curl_upload_is_stored_byte_exact() {
    let server = Server::start(config()).await;
    let message = b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: curl\r\n\r\n\
        hello from curl\r\n.leading dot\r\n.\r\nbye\r\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write message file");
    let url = format!("smtp://127.0.0.1:{}/curl.test", server.port);
    let path = path.to_string_lossy().into_owned();
    let args = [
        "-sS",
        "--url",
        &url,
        "--mail-from",
        "app@example.com",
        "--mail-rcpt",
        "user@dest.test",
    ];
    let args = [&args[..], &["--upload-file", &path]].concat();
    run("curl", &args, "install curl (e.g. `apt-get install curl`)").await;
    let stored = only_message(server).await;
    assert_eq!(
        String::from_utf8_lossy(&split_received(&stored.bytes).1),
        String::from_utf8_lossy(message)
    );
    assert_eq!(stored.envelope.recipients, ["user@dest.test"]);
}

#[tokio::test]
async fn lettre_message_is_stored_byte_exact() {
    let server = Server::start(config()).await;
    let message = Message::builder()
        .from("App <app@example.com>".parse().expect("mailbox"))
        .to("user@dest.test".parse().expect("mailbox"))
        .cc("other@dest.test".parse().expect("mailbox"))
        .subject("from lettre")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from("Hello\r\n.leading dot\r\n.\r\nbye\r\n"))
        .expect("message builds");
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let response = transport.send(message.clone()).await.expect("lettre sends");
    assert!(response.is_positive());
    let stored = only_message(server).await;
    // lettre always ends DATA with CRLF "." CRLF after the body (async_connection.rs `message`), so a
    // body ending in CRLF arrives with one more empty line: that line is message data (RFC 5321 4.1.1.4).
    let expected = [message.formatted(), b"\r\n".to_vec()].concat();
    assert_eq!(
        String::from_utf8_lossy(&split_received(&stored.bytes).1),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(stored.envelope.recipients, ["user@dest.test", "other@dest.test"]);
}
