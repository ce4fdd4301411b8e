//! `SmarthostTransport` against a scripted aiosmtpd upstream (tests/peers/upstream.py) on
//! 127.0.0.1: TLS modes, AUTH, per-recipient outcomes, timeouts, connection reuse and parking.

use mailroom_sidecar::{
    config::{Auth, AuthMechanism, Smarthost, TlsMode},
    message::Envelope,
    metrics::Metrics,
    outbound::{
        Outcome, RcptResult, ReplyClass, SmarthostTransport, Transport, park::ParkPolicy, pool::IDLE_TIMEOUT,
    },
};
use mailroom_test_support::{
    certs::{TestCa, test_ca},
    peers::Upstream,
    relay,
};
use std::{
    path::Path,
    time::{Duration, Instant},
};

const MESSAGE: &[u8] = b"From: App <app@example.com>\r\nTo: <ok@example.net>\r\nSubject: caf\xc3\xa9\r\n\
\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nlast line\r\n";

struct Harness {
    dir: tempfile::TempDir,
    ca: TestCa,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(&dir.path().join("ca"));
    Harness { dir, ca }
}

fn upstream(h: &Harness, args: &[&str]) -> Upstream {
    let mut all: Vec<&str> = args.to_vec();
    let (cert, key) = (
        h.ca.cert.to_str().expect("utf-8"),
        h.ca.key.to_str().expect("utf-8"),
    );
    all.extend(["--cert", cert, "--key", key]);
    Upstream::start(h.dir.path(), &all)
}

fn smarthost(port: u16, tls: TlsMode, ca_file: &Path) -> Smarthost {
    Smarthost {
        host: "127.0.0.1".into(),
        port,
        tls,
        ca_file: Some(ca_file.to_owned()),
        auth: None,
        connect_timeout_seconds: 5,
        command_timeout_seconds: 5,
        max_connections: 2,
        backup: None,
    }
}

fn auth(dir: &Path, mechanism: AuthMechanism, user: &str, pass: &str) -> Auth {
    let (u, p) = (dir.join("username"), dir.join("password"));
    std::fs::write(&u, format!("{user}\n")).expect("user file");
    std::fs::write(&p, format!("{pass}\n")).expect("password file");
    Auth {
        mechanism,
        username_file: u,
        password_file: p,
    }
}

fn transport(cfg: &Smarthost) -> SmarthostTransport {
    SmarthostTransport::new(cfg, "relay.example.com", Metrics::new()).expect("transport builds")
}

fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        received_at: 1_700_000_000,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    }
}

async fn send(t: &SmarthostTransport, sender: &str, rcpts: &[&str]) -> Vec<RcptResult> {
    let env = envelope(sender, rcpts);
    let results = t.deliver(&env, &env.all_recipients(), MESSAGE).await;
    assert_eq!(results.len(), rcpts.len());
    results
}

fn classes(results: &[RcptResult]) -> Vec<(Outcome, ReplyClass)> {
    results.iter().map(|r| (r.outcome, r.class)).collect()
}

/// One message to a recipient of each kind upstream.py knows, and the outcome each must get.
async fn send_mixed(t: &SmarthostTransport) {
    let rcpts = [
        "ok@example.net",
        "temp-fail@example.net",
        "perm-fail@example.net",
        "ok2@example.net",
    ];
    let results = send(t, "app@example.com", &rcpts).await;
    assert_eq!(
        classes(&results),
        [
            (Outcome::Delivered, ReplyClass::Ok),
            (Outcome::Deferred, ReplyClass::Transient),
            (Outcome::Bounced, ReplyClass::Permanent),
            (Outcome::Delivered, ReplyClass::Ok),
        ]
    );
    assert_eq!(
        results[1].diagnostic,
        "450 4.2.0 <temp-fail@example.net>: mailbox temporarily unavailable"
    );
    assert_eq!(
        results[2].diagnostic,
        "550 5.1.1 <perm-fail@example.net>: no such user"
    );
}

#[tokio::test]
async fn starttls_and_auth_deliver_the_bytes_unchanged() {
    let h = harness();
    let up = upstream(&h, &["--tls", "starttls", "--require-auth", "relay:s3cret"]);
    let mut cfg = smarthost(up.port, TlsMode::Starttls, &h.ca.ca);
    cfg.auth = Some(auth(h.dir.path(), AuthMechanism::Plain, "relay", "s3cret"));
    let results = send(&transport(&cfg), "app@example.com", &["ok@example.net"]).await;
    assert_eq!(
        classes(&results),
        [(Outcome::Delivered, ReplyClass::Ok)],
        "{results:?}\n{}",
        up.log()
    );
    assert!(
        results[0].diagnostic.starts_with("250 2.0.0"),
        "{}",
        results[0].diagnostic
    );
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].data, MESSAGE,
        "byte-exact after dot-stuffing and unstuffing"
    );
    assert_eq!(got[0].meta["tls"], true);
    assert_eq!(got[0].meta["authenticated"], true);
    assert_eq!(got[0].meta["mail_from"], "app@example.com");
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["ok@example.net"]));
    // RFC 6152: the 8-bit subject needs BODY=8BITMIME.
    assert_eq!(got[0].meta["mail_options"], serde_json::json!(["BODY=8BITMIME"]));
}

#[tokio::test]
async fn login_and_xoauth2_authenticate_too() {
    let h = harness();
    let up = upstream(&h, &["--tls", "starttls", "--require-auth", "relay:tok3n"]);
    for mechanism in [AuthMechanism::Login, AuthMechanism::Xoauth2] {
        let mut cfg = smarthost(up.port, TlsMode::Starttls, &h.ca.ca);
        cfg.auth = Some(auth(h.dir.path(), mechanism, "relay", "tok3n"));
        let results = send(&transport(&cfg), "app@example.com", &["ok@example.net"]).await;
        assert_eq!(
            classes(&results),
            [(Outcome::Delivered, ReplyClass::Ok)],
            "{mechanism:?}: {results:?}"
        );
    }
    assert_eq!(up.received().len(), 2);
}

#[tokio::test]
async fn each_recipient_gets_its_own_outcome() {
    let h = harness();
    let up = upstream(&h, &["--tls", "none"]);
    let cfg = smarthost(up.port, TlsMode::None, &h.ca.ca);
    send_mixed(&transport(&cfg)).await;
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].meta["rcpt_tos"],
        serde_json::json!(["ok@example.net", "ok2@example.net"])
    );
}

#[tokio::test]
async fn required_starttls_not_offered_defers_and_sends_nothing() {
    let h = harness();
    let up = upstream(&h, &["--tls", "none"]);
    let cfg = smarthost(up.port, TlsMode::Starttls, &h.ca.ca);
    let results = send(
        &transport(&cfg),
        "app@example.com",
        &["ok@example.net", "b@example.net"],
    )
    .await;
    assert_eq!(classes(&results), [(Outcome::Deferred, ReplyClass::Tls); 2]);
    assert!(
        results[0].diagnostic.contains("does not offer STARTTLS"),
        "{}",
        results[0].diagnostic
    );
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_defers_with_class_tls() {
    let h = harness();
    let other = test_ca(&h.dir.path().join("other-ca"));
    for (mode, flag) in [(TlsMode::Starttls, "starttls"), (TlsMode::Implicit, "implicit")] {
        let up = upstream(&h, &["--tls", flag]);
        let cfg = smarthost(up.port, mode, &other.ca);
        let results = send(&transport(&cfg), "app@example.com", &["ok@example.net"]).await;
        assert_eq!(
            classes(&results),
            [(Outcome::Deferred, ReplyClass::Tls)],
            "{mode:?}: {results:?}"
        );
        assert!(up.received().is_empty());
    }
}

#[tokio::test]
async fn rejected_credentials_defer_with_class_auth() {
    let h = harness();
    let up = upstream(&h, &["--tls", "starttls", "--require-auth", "relay:s3cret"]);
    let mut cfg = smarthost(up.port, TlsMode::Starttls, &h.ca.ca);
    cfg.auth = Some(auth(h.dir.path(), AuthMechanism::Plain, "relay", "wrong"));
    let t = transport(&cfg);
    let results = send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(classes(&results), [(Outcome::Deferred, ReplyClass::Auth)]);
    assert!(
        results[0].diagnostic.starts_with("535"),
        "{}",
        results[0].diagnostic
    );
    assert!(
        !results[0].diagnostic.contains("wrong"),
        "no secret in diagnostics"
    );
    assert!(!t.parked(), "AUTH failures do not park the route");

    cfg.auth = Some(Auth {
        password_file: h.dir.path().join("missing"),
        ..auth(h.dir.path(), AuthMechanism::Plain, "relay", "x")
    });
    let results = send(&transport(&cfg), "app@example.com", &["ok@example.net"]).await;
    assert_eq!(classes(&results), [(Outcome::Deferred, ReplyClass::Auth)]);
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let h = harness();
    let up = upstream(&h, &["--tls", "implicit"]);
    let mut cfg = smarthost(up.port, TlsMode::Implicit, &h.ca.ca);
    cfg.host = "localhost".into();
    let results = send(&transport(&cfg), "", &["ok@example.net"]).await;
    assert_eq!(
        classes(&results),
        [(Outcome::Delivered, ReplyClass::Ok)],
        "{results:?}"
    );
    let got = up.received();
    assert_eq!(got[0].meta["tls"], true);
    assert_eq!(
        got[0].meta["mail_from"], "<>",
        "null sender for bounces (RFC 5321 4.5.5)"
    );
}

#[tokio::test]
async fn a_421_greeting_defers() {
    let h = harness();
    let up = upstream(&h, &["--greeting-421"]);
    let cfg = smarthost(up.port, TlsMode::None, &h.ca.ca);
    let results = send(&transport(&cfg), "app@example.com", &["ok@example.net"]).await;
    assert_eq!(classes(&results), [(Outcome::Deferred, ReplyClass::Transient)]);
    assert!(
        results[0].diagnostic.starts_with("421 4.3.2"),
        "{}",
        results[0].diagnostic
    );
}

#[tokio::test]
async fn failed_data_applies_to_every_accepted_recipient() {
    let h = harness();
    for (code, want) in [("451", Outcome::Deferred), ("554", Outcome::Bounced)] {
        let up = upstream(&h, &["--fail-data", code]);
        let cfg = smarthost(up.port, TlsMode::None, &h.ca.ca);
        let results = send(
            &transport(&cfg),
            "app@example.com",
            &["a@example.net", "perm-fail@example.net", "b@example.net"],
        )
        .await;
        assert_eq!(results[0].outcome, want);
        assert_eq!(results[2].outcome, want);
        assert!(
            results[0].diagnostic.starts_with(code),
            "{}",
            results[0].diagnostic
        );
        assert_eq!(results[1].outcome, Outcome::Bounced, "its own RCPT reply");
    }
}

#[tokio::test]
async fn a_slow_reply_times_out_and_defers() {
    let h = harness();
    let up = upstream(&h, &["--slow-seconds", "4"]);
    let mut cfg = smarthost(up.port, TlsMode::None, &h.ca.ca);
    cfg.command_timeout_seconds = 1;
    let t = transport(&cfg);
    // The Timeout class (not a 250 after the upstream's 4 s pause) is the proof that our 1 s
    // limit fired; wall-clock assertions would be flaky on a shared machine.
    let results = send(
        &t,
        "app@example.com",
        &["ok@example.net", "slow@example.net", "later@example.net"],
    )
    .await;
    assert_eq!(
        classes(&results),
        [(Outcome::Deferred, ReplyClass::Timeout); 3],
        "{results:?}"
    );
    assert_eq!(t.idle_connections(), 0, "a timed-out connection is not reused");
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn connections_are_reused_between_messages() {
    let h = harness();
    let up = upstream(&h, &["--tls", "starttls", "--require-auth", "relay:s3cret"]);
    let mut cfg = smarthost(up.port, TlsMode::Starttls, &h.ca.ca);
    cfg.auth = Some(auth(h.dir.path(), AuthMechanism::Plain, "relay", "s3cret"));
    let t = transport(&cfg);
    for _ in 0..3 {
        let results = send(
            &t,
            "app@example.com",
            &["ok@example.net", "perm-fail@example.net"],
        )
        .await;
        assert_eq!(results[0].outcome, Outcome::Delivered);
    }
    let got = up.received();
    assert_eq!(got.len(), 3);
    assert_eq!(up.connections(), 1, "one connection for all three");
    for r in &got {
        // RFC 5321 4.1.1.4: the end of data ends the transaction; nothing to reset.
        assert_eq!(r.meta["rsets"], 0, "no RSET after a completed transaction");
        assert_eq!(r.meta["pipelined"], false, "PIPELINING was not offered");
    }
    assert_eq!(t.idle_connections(), 1);
    t.close().await;
    assert_eq!(t.idle_connections(), 0);
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_quit_once_stale() {
    let h = harness();
    let up = upstream(&h, &["--tls", "none"]);
    let t = transport(&smarthost(up.port, TlsMode::None, &h.ca.ca));
    send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(t.idle_connections(), 1);
    t.close_stale_at(Instant::now());
    assert_eq!(
        t.idle_connections(),
        1,
        "a fresh connection stays for the next message"
    );
    t.close_stale_at(Instant::now() + IDLE_TIMEOUT);
    assert_eq!(t.idle_connections(), 0, "a stale one leaves the pool");
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.quits() == 0 {
        assert!(Instant::now() < deadline, "the upstream never saw QUIT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(up.connections(), 2, "the next message opens a new connection");
    assert_eq!(up.received().len(), 2);
}

#[tokio::test]
async fn with_pipelining_the_envelope_goes_in_one_group() {
    let h = harness();
    let up = upstream(&h, &["--tls", "starttls", "--pipelining"]);
    let t = transport(&smarthost(up.port, TlsMode::Starttls, &h.ca.ca));
    for _ in 0..2 {
        send_mixed(&t).await;
    }
    let got = up.received();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(r.meta["pipelined"], true, "DATA arrived before MAIL was answered");
        assert_eq!(r.meta["rsets"], 0);
        assert_eq!(r.meta["tls"], true);
        assert_eq!(
            r.meta["rcpt_tos"],
            serde_json::json!(["ok@example.net", "ok2@example.net"])
        );
        // Dot-stuffed on the way, unstuffed by the upstream: the same bytes.
        assert_eq!(r.data, MESSAGE);
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn with_pipelining_a_transaction_without_recipients_is_reset_and_the_connection_kept() {
    let h = harness();
    let up = upstream(&h, &["--tls", "none", "--pipelining"]);
    let t = transport(&smarthost(up.port, TlsMode::None, &h.ca.ca));
    let results = send(
        &t,
        "app@example.com",
        &["perm-fail@example.net", "temp-fail@example.net"],
    )
    .await;
    assert_eq!(
        classes(&results),
        [
            (Outcome::Bounced, ReplyClass::Permanent),
            (Outcome::Deferred, ReplyClass::Transient)
        ]
    );
    assert!(up.received().is_empty());
    assert_eq!(t.idle_connections(), 1, "in a known state after RSET");
    let results = send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(classes(&results), [(Outcome::Delivered, ReplyClass::Ok)]);
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].meta["rsets"], 1, "the open transaction was reset");
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["ok@example.net"]));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_server_dropped_is_replaced_in_the_same_attempt() {
    for pipelining in [false, true] {
        let h = harness();
        let mut args = vec!["--tls", "none", "--drop-second-mail"];
        if pipelining {
            args.push("--pipelining");
        }
        let up = upstream(&h, &args);
        let t = transport(&smarthost(up.port, TlsMode::None, &h.ca.ca));
        for n in 1..=3 {
            let results = send(&t, "app@example.com", &["ok@example.net"]).await;
            assert_eq!(
                classes(&results),
                [(Outcome::Delivered, ReplyClass::Ok)],
                "message {n} (pipelining {pipelining}): {results:?}"
            );
        }
        assert_eq!(up.received().len(), 3);
        // Each reuse met the closed connection once and went on a new one.
        assert_eq!(up.connections(), 3, "pipelining {pipelining}");
    }
}

/// Waits for the parking period to end (the probe may go), with a deadline.
async fn unparked(t: &SmarthostTransport) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.parked() {
        assert!(tokio::time::Instant::now() < deadline, "the route stayed parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refused_connections_park_the_route_and_a_probe_unparks_it() {
    let h = harness();
    // Nothing listens on the port until the upstream starts there; nothing else can meanwhile.
    let port = relay::reserve_port();
    let metrics = Metrics::new();
    let cfg = smarthost(port.port(), TlsMode::None, &h.ca.ca);
    let policy = ParkPolicy {
        threshold: 2,
        initial: Duration::from_millis(300),
        max: Duration::from_secs(1),
    };
    let t = SmarthostTransport::new(&cfg, "relay.example.com", metrics.clone())
        .expect("builds")
        .with_park_policy(policy);
    let parked_gauge = || metrics.route_parked.with_label_values(&["smarthost"]).get();
    for _ in 0..2 {
        let results = send(&t, "app@example.com", &["ok@example.net"]).await;
        assert_eq!(
            classes(&results),
            [(Outcome::Deferred, ReplyClass::Connection)],
            "{results:?}"
        );
    }
    assert!(t.parked());
    assert_eq!(parked_gauge(), 1);
    let results = send(&t, "app@example.com", &["ok@example.net"]).await;
    assert!(
        results[0].diagnostic.contains("parked"),
        "{}",
        results[0].diagnostic
    );

    unparked(&t).await;
    let results = send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(results[0].class, ReplyClass::Connection, "the probe failed");
    assert!(t.parked(), "parked again, for longer");

    let up = Upstream::start_on(h.dir.path(), &port, &[]);
    unparked(&t).await;
    let results = send(&t, "app@example.com", &["ok@example.net"]).await;
    assert_eq!(
        classes(&results),
        [(Outcome::Delivered, ReplyClass::Ok)],
        "{results:?}"
    );
    assert!(!t.parked());
    assert_eq!(parked_gauge(), 0);
    assert_eq!(up.received().len(), 1);
}
