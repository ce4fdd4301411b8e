//! A hub's listener at the session level (docs/hub.md): AUTH PLAIN required before MAIL
//! (RFC 4954), the Relay's credential and nothing else, and the XHANDOFF parameter taken only
//! from an authenticated client, keeping the sidecar's arrival time and key.

use mailroom_sidecar::{
    config::{Config, ListenAuth, ListenTls},
    metrics::SessionEnd,
    testing::{Harness, config},
};
use std::path::Path;

const MESSAGE: &str = "From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n";

fn b64(text: &[u8]) -> String {
    mailroom_test_support::relay::base64(text)
}

/// The test config as a hub: AUTH as `hub` / `s3cret` (files in `dir`); the TLS files are not
/// read by the session (TLS is the listener's, proven in relay_hub.rs).
fn hub_config(dir: &Path) -> Config {
    let (user, password) = (dir.join("user"), dir.join("password"));
    std::fs::write(&user, "hub\n").expect("user file");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let mut c = config();
    // The refusal test makes more mistakes than the default allows before 421.
    c.limits.max_bad_commands = 20;
    c.listen.tls = Some(ListenTls {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    });
    c.listen.auth = Some(ListenAuth {
        username_file: user,
        password_file: password,
    });
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

#[tokio::test]
async fn only_a_hub_offers_auth_and_xhandoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (cfg, offered) in [(config(), false), (hub_config(dir.path()), true)] {
        let mut h = Harness::start(cfg);
        h.client.expect("220 ").await;
        h.client.send("EHLO client.test\r\n").await;
        let ehlo = h.client.reply().await.join("\n");
        assert_eq!(ehlo.contains("AUTH PLAIN"), offered, "{ehlo}");
        assert_eq!(ehlo.contains("XHANDOFF"), offered, "{ehlo}");
        if !offered {
            // RFC 5321 4.1.1.11: a parameter EHLO did not offer is refused.
            h.client
                .command("MAIL FROM:<app@example.com> XHANDOFF=k.1,1700000000", "555 5.5.4")
                .await;
            h.client.command("AUTH PLAIN AGh1YgBzM2NyZXQ=", "502 5.5.1").await;
        }
        h.client.command("QUIT", "221 ").await;
        assert_eq!(h.end().await, SessionEnd::Quit);
        assert!(h.sink.messages().is_empty());
    }
}

#[tokio::test]
async fn a_hub_refuses_mail_without_the_relays_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::ready(hub_config(dir.path())).await;
    h.client.command("MAIL FROM:<app@example.com>", "530 5.7.0").await;
    h.client
        .command("MAIL FROM:<app@example.com> XHANDOFF=k.1,1700000000", "530 5.7.0")
        .await;
    h.client.command("RCPT TO:<user@dest.test>", "503 5.5.1").await;
    h.client.command("DATA", "503 5.5.1").await;
    // Another Relay's credential, the right user with a wrong password, a foreign authzid.
    for blob in [
        &b"\0shop-other\0s3cret"[..],
        b"\0hub\0wrong",
        b"admin\0hub\0s3cret",
        b"\0hub\0s3cret\0",
    ] {
        h.client
            .command(&format!("AUTH PLAIN {}", b64(blob)), "535 5.7.8")
            .await;
    }
    h.client.command("AUTH LOGIN", "504 5.5.4").await;
    h.client.command("AUTH PLAIN !!!", "501 5.5.2").await;
    h.client.command("AUTH PLAIN", "334").await;
    h.client.command("*", "501 5.0.0").await;
    h.client.command("MAIL FROM:<app@example.com>", "530 5.7.0").await;
    h.client.command("QUIT", "221 ").await;
    h.end().await;
    assert!(h.sink.messages().is_empty(), "nothing was queued");
    let failures = h.metrics.auth_failures.get();
    assert_eq!(failures, 4, "each wrong credential is counted");
}

#[tokio::test]
async fn an_authenticated_sidecar_hands_off_with_its_key_and_arrival_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::ready(hub_config(dir.path())).await;
    // RFC 4954 4: without an initial response the server sends an empty challenge.
    h.client.command("AUTH PLAIN", "334").await;
    h.client.command(&b64(b"\0hub\0s3cret"), "235 2.7.0").await;
    h.client.command("AUTH PLAIN", "503 5.5.1").await;
    // A hub relays hand-offs only, even for its own sidecars.
    h.client.command("MAIL FROM:<app@example.com>", "550 5.7.1").await;
    h.client
        .command(
            "MAIL FROM:<app@example.com> RET=HDRS XHANDOFF=00ff.0000000000000007,1700000000",
            "250 2.1.0",
        )
        .await;
    h.client
        .command("RCPT TO:<user@dest.test> NOTIFY=FAILURE", "250 2.1.5")
        .await;
    h.client.command("DATA", "354").await;
    h.client.send(MESSAGE).await;
    h.client.expect("250 2.0.0").await;
    // A malformed value is refused, naming the parameter.
    let bad = h
        .client
        .command("MAIL FROM:<app@example.com> XHANDOFF=no-arrival", "501 5.5.4")
        .await;
    assert!(bad.contains("XHANDOFF"), "{bad}");
    h.client.command("QUIT", "221 ").await;
    h.end().await;
    let [stored] = &h.sink.messages()[..] else {
        panic!("one message")
    };
    assert_eq!(stored.envelope.origin.as_deref(), Some("00ff.0000000000000007"));
    assert_eq!(
        stored.envelope.received_at, 1_700_000_000,
        "the age counts from the app's 250, not from the hand-off"
    );
    assert!(stored.envelope.dsn.ret.is_some(), "DSN parameters travel with it");
    assert!(stored.envelope.dsn.rcpt(0).notify.is_some());
}
