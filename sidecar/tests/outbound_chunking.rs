//! The sidecar's SMTP client and CHUNKING (RFC 3030): to a hub it sends MAIL, RCPT and the whole
//! message as one `BDAT … LAST` before reading any reply (one round trip per copy), and to any
//! other server, even one that offers CHUNKING, it sends DATA.

use mailroom_sidecar::{
    config::{Handoff, ListenTls, ShadowCopies, Smarthost, TlsMode},
    message::{Envelope, handoff::Owner},
    metrics::Metrics,
    outbound::{Outcome, SmarthostTransport, Transport, shadow::ShadowClient},
};
use mailroom_test_support::{certs::test_ca, peers::Upstream};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const MESSAGE: &[u8] =
    b"From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: x\r\n\r\n.\r\n..two\r\nend\r\n";

fn envelope() -> Envelope {
    Envelope {
        sender: "app@example.com".into(),
        recipients: vec!["user@example.net".into()],
        smtputf8: false,
        received_at: 1_700_000_000,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    }
}

/// A hub that offers CHUNKING, PIPELINING, AUTH, XHANDOFF and XSHADOW, and answers nothing of a
/// transaction until all of it is in: a client that waited for a reply before sending the rest
/// would never finish. Returns what the client sent after AUTH.
async fn scripted_hub(listener: tokio::net::TcpListener, tls: ListenTls) -> Vec<u8> {
    let acceptor = mailroom_sidecar::inbound::tls::load(&tls).expect("hub certificate");
    let (tcp, _) = listener.accept().await.expect("accept");
    let stream = acceptor.accept(tcp).await.expect("TLS");
    let mut s = BufReader::new(stream);
    let mut line = String::new();
    s.get_mut()
        .write_all(b"220 hub.test ESMTP\r\n")
        .await
        .expect("greeting");
    s.read_line(&mut line).await.expect("EHLO");
    assert!(line.starts_with("EHLO "), "{line}");
    s.get_mut()
        .write_all(
            b"250-hub.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-AUTH PLAIN\r\n250-XHANDOFF\r\n\
              250-XSHADOW\r\n250 ENHANCEDSTATUSCODES\r\n",
        )
        .await
        .expect("EHLO reply");
    line.clear();
    s.read_line(&mut line).await.expect("AUTH");
    assert!(line.starts_with("AUTH PLAIN "), "{line}");
    s.get_mut()
        .write_all(b"235 2.7.0 ok\r\n")
        .await
        .expect("AUTH reply");
    let mut got = Vec::new();
    for want in ["MAIL FROM:", "RCPT TO:", "BDAT "] {
        line.clear();
        s.read_line(&mut line).await.expect("command");
        assert!(line.starts_with(want), "{want} expected, got {line:?}");
        got.extend_from_slice(line.as_bytes());
    }
    let size: usize = line["BDAT ".len()..]
        .trim_end()
        .strip_suffix(" LAST")
        .expect("one last chunk")
        .parse()
        .expect("chunk size");
    let mut chunk = vec![0; size];
    s.read_exact(&mut chunk).await.expect("the chunk");
    got.extend_from_slice(&chunk);
    s.get_mut()
        .write_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 Ok: queued as 1\r\n")
        .await
        .expect("replies");
    got
}

#[tokio::test]
async fn a_shadow_copy_goes_to_the_hub_as_one_pipelined_bdat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(&dir.path().join("ca"));
    let (user, pass) = (dir.path().join("user"), dir.path().join("pass"));
    std::fs::write(&user, "relay").expect("user");
    std::fs::write(&pass, "secret").expect("password");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hub = tokio::spawn(scripted_hub(
        listener,
        ListenTls {
            cert_file: ca.cert.clone(),
            key_file: ca.key.clone(),
        },
    ));
    let handoff: Handoff = serde_yaml_ng::from_str(&format!(
        "host: 127.0.0.1\nport: {port}\ncaFile: {}\nusernameFile: {}\npasswordFile: {}\n",
        ca.ca.display(),
        user.display(),
        pass.display()
    ))
    .expect("handoff config");
    let shadows = ShadowCopies {
        hosts: vec!["127.0.0.1".into()],
        max_connections: 1,
    };
    let owner = Owner {
        uid: "0b6f6b8e-3c1a-4c1e-9d7e-2f8a1b2c3d4e".into(),
        pod: "app-0".into(),
    };
    let client = ShadowClient::new(&handoff, &shadows, owner, "app.test").expect("client");
    let stored = tokio::time::timeout(
        Duration::from_secs(20),
        client.store(&envelope(), "k1.0001", MESSAGE),
    )
    .await
    .expect("the copy is stored without waiting for a reply in between");
    assert_eq!(stored.as_deref(), Ok("127.0.0.1"));
    let got = hub.await.expect("hub task");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("XSHADOW=0b6f6b8e-3c1a-4c1e-9d7e-2f8a1b2c3d4e,app-0"),
        "{text}"
    );
    assert!(
        got.ends_with(&[format!("BDAT {} LAST\r\n", MESSAGE.len()).as_bytes(), MESSAGE].concat()),
        "the message as it is, not dot-stuffed: {text}"
    );
}

#[tokio::test]
async fn a_smarthost_that_offers_chunking_still_gets_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none", "--pipelining", "--offer-chunking"]);
    let t = SmarthostTransport::new(
        &Smarthost {
            host: "127.0.0.1".into(),
            port: up.port,
            tls: TlsMode::None,
            ca_file: None,
            auth: None,
            connect_timeout_seconds: 5,
            command_timeout_seconds: 5,
            max_connections: 1,
            backup: None,
        },
        "relay.test",
        Metrics::new(),
    )
    .expect("transport");
    let env = envelope();
    let results = t.deliver(&env, &env.all_recipients(), MESSAGE).await;
    assert_eq!(results[0].outcome, Outcome::Delivered, "{results:?}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    // Dot-stuffed on the way (DATA), unstuffed by the upstream: the same bytes.
    assert_eq!(got[0].data, MESSAGE);
}
