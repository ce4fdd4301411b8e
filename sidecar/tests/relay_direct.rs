//! Direct delivery end to end: the real `mailroom-sidecar` process resolves MX records from a
//! real authoritative DNS server on loopback (`tests/peers/dnsserver.py`, dnslib) and delivers
//! to aiosmtpd receivers bound on 127.0.0.2 and 127.0.0.3.

use mailroom_test_support::{
    certs::test_ca,
    peers::{DnsServer, Upstream},
    relay::{
        Reservation, Sidecar, direct_config, eventually, reserve_port, smtp_accepted, smtp_commands,
        smtplib_send,
    },
};
use std::path::Path;

fn config(dns: u16, smtp_port: u16, tls: &str) -> String {
    direct_config(dns, smtp_port, &format!("    tls: {tls}\n"))
}

/// A DNS server with `zone` and a sidecar delivering direct through it, to MX hosts on
/// `smtp_port`, with TLS `tls`.
fn direct_sidecar(dir: &Path, zone: &str, smtp_port: u16, tls: &str) -> (DnsServer, Sidecar) {
    let dns = DnsServer::with_zone(dir, zone);
    let sidecar = Sidecar::start(dir, &config(dns.port, smtp_port, tls));
    (dns, sidecar)
}

/// An aiosmtpd receiver on `address`, on the port `port` holds (the port the sidecar connects to
/// on every MX host), or on a port of its own when it is the only receiver.
fn upstream(
    dir: &Path,
    address: &str,
    port: Option<&Reservation>,
    tls: Option<&mailroom_test_support::certs::TestCa>,
) -> Upstream {
    let mut args = vec!["--address", address];
    let (cert, key);
    if let Some(ca) = tls {
        cert = ca.cert.display().to_string();
        key = ca.key.display().to_string();
        args.extend(["--tls", "starttls", "--cert", &cert, "--key", &key]);
    }
    match port {
        Some(port) => Upstream::start_on(dir, port, &args),
        None => Upstream::start(dir, &args),
    }
}

fn message(to: &str) -> String {
    format!(
        "From: App <app@example.com>\r\nTo: {to}\r\nSubject: direct\r\nMessage-ID: <d@example.com>\r\n\r\nhello\r\n"
    )
}

/// Proves routing: MX preference order with fallback when the preferred host (127.0.0.2) is
/// down, opportunistic STARTTLS to a host whose certificate we cannot verify, implicit MX
/// (RFC 5321 5.1), null MX (RFC 7505, bounced 5.1.10 without connecting) and NXDOMAIN
/// (bounced 5.1.2). The bounce itself goes direct to the sender domain's MX.
#[test]
fn mx_order_fallback_implicit_null_and_nxdomain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(&dir.path().join("ca"));
    // mx1 (127.0.0.2) is down: nothing listens there on the port, and nothing else can.
    let port = reserve_port();
    let mx2 = upstream(dir.path(), "127.0.0.3", Some(&port), Some(&ca));
    let (_dns, sidecar) = direct_sidecar(
        dir.path(),
        "a.test. 300 IN MX 10 mx1.a.test.
a.test. 300 IN MX 20 mx2.a.test.
mx1.a.test. 300 IN A 127.0.0.2
mx2.a.test. 300 IN A 127.0.0.3
implicit.test. 300 IN A 127.0.0.3
null.test. 300 IN MX 0 .
example.com. 300 IN MX 10 mx2.a.test.
",
        port.port(),
        "opportunistic",
    );
    let rcpts = ["u@a.test", "v@implicit.test", "w@null.test", "x@missing.test"];
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &rcpts,
        message("u@a.test").as_bytes(),
    )
    .expect("accepted");

    let got = eventually("two deliveries and one bounce", || {
        let r = mx2.received();
        (r.len() == 3).then_some(r)
    });
    let mut delivered: Vec<String> = got
        .iter()
        .filter(|r| r.meta["mail_from"] != "<>" && r.meta["mail_from"] != "")
        .flat_map(|r| r.meta["rcpt_tos"].as_array().expect("rcpts").clone())
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["u@a.test", "v@implicit.test"]);
    assert!(
        got.iter().all(|r| r.meta["tls"] == true),
        "opportunistic STARTTLS used: {got:?}"
    );
    let dsn = got
        .iter()
        .find(|r| r.meta["rcpt_tos"][0] == "app@example.com")
        .expect("bounce to the sender");
    let dsn = String::from_utf8_lossy(&dsn.data);
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    let m = |s: &str| sidecar.metric(&format!("mailroom_sidecar_mx_lookups_total{{result=\"{s}\"}}"));
    assert!(m("ok") >= 2.0 && m("implicit") == 1.0 && m("null") == 1.0 && m("nxdomain") == 1.0);
    assert_eq!(
        sidecar.metric(
            r#"mailroom_sidecar_outbound_tls_total{outcome="ok",policy="opportunistic",version="TLSv1.3"}"#
        ),
        2.0,
        "one TLS session per delivery: {}",
        sidecar.metrics()
    );
}

/// Proves SERVFAIL is temporary: the recipient is deferred (reply class `dns`) and delivered
/// once the zone answers.
#[test]
fn servfail_defers_then_delivers_when_dns_is_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mx = upstream(dir.path(), "127.0.0.2", None, None);
    let good = "flaky.test. 300 IN MX 10 mx.flaky.test.\nmx.flaky.test. 300 IN A 127.0.0.2\n";
    let dns = DnsServer::with_zone(dir.path(), &format!("; SERVFAIL flaky.test.\n{good}"));
    let sidecar = Sidecar::start(dir.path(), &config(dns.port, mx.port, "opportunistic"));
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["a@flaky.test"],
        message("a@flaky.test").as_bytes(),
    )
    .expect("accepted");
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="dns",route="direct",sender_domain="example.com"}"#,
        |v| v >= 1.0,
    );
    assert!(mx.received().is_empty());
    dns.publish(good);
    eventually("delivery after the fix", || {
        (mx.received().len() == 1).then_some(())
    });
    assert!(sidecar.metric(r#"mailroom_sidecar_mx_lookups_total{result="servfail"}"#) >= 1.0);
    assert_eq!(
        mx.received()[0].meta["tls"],
        false,
        "plain text when STARTTLS is not offered"
    );
}

/// Proves `tls: require` never sends in plain text: the preferred MX offers no STARTTLS, so it
/// is skipped (counted as `not_offered`) and the message goes to the next MX, which offers it;
/// with only the plain host left, the recipient stays deferred with class `tls`.
#[test]
fn required_tls_is_refused_when_not_offered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(&dir.path().join("ca"));
    let port = reserve_port();
    let plain = upstream(dir.path(), "127.0.0.2", Some(&port), None);
    let tls = upstream(dir.path(), "127.0.0.3", Some(&port), Some(&ca));
    let (_dns, sidecar) = direct_sidecar(
        dir.path(),
        "both.test. 300 IN MX 10 plain.both.test.
both.test. 300 IN MX 20 tls.both.test.
plain.both.test. 300 IN A 127.0.0.2
tls.both.test. 300 IN A 127.0.0.3
plainonly.test. 300 IN MX 10 plain.both.test.
",
        port.port(),
        "require",
    );
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["a@both.test"],
        message("a@both.test").as_bytes(),
    )
    .expect("accepted");
    let got = eventually("delivery over TLS", || {
        let r = tls.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["tls"], true);
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["b@plainonly.test"],
        message("b@plainonly.test").as_bytes(),
    )
    .expect("accepted");
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="tls",route="direct",sender_domain="example.com"}"#,
        |v| v >= 2.0,
    );
    assert!(plain.received().is_empty(), "nothing sent in plain text");
    assert!(
        sidecar.metric(
            r#"mailroom_sidecar_outbound_tls_total{outcome="not_offered",policy="require",version="none"}"#
        ) >= 3.0
    );
}

/// Direct delivery routes by the domain after the last `@`: a quoted local part holding an `@`
/// (`"a@b"@quoted.test`, RFC 5321 4.1.2) goes to quoted.test's MX with its path unchanged, and
/// `<postmaster>` (RFC 5321 4.5.1) to the MX of the configured postmaster's domain. An address
/// literal is refused at RCPT: direct delivery would connect wherever it points.
#[test]
fn quoted_local_parts_and_postmaster_route_by_their_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let quoted_mx = upstream(dir.path(), "127.0.0.2", Some(&port), None);
    let own_mx = upstream(dir.path(), "127.0.0.3", Some(&port), None);
    let (_dns, sidecar) = direct_sidecar(
        dir.path(),
        "quoted.test. 300 IN MX 10 mx.quoted.test.
mx.quoted.test. 300 IN A 127.0.0.2
example.com. 300 IN MX 10 mx.own.test.
mx.own.test. 300 IN A 127.0.0.3
",
        port.port(),
        "opportunistic",
    );
    let replies = smtp_commands(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com>",
            r#"RCPT TO:<"a@b"@quoted.test>"#,
            "RCPT TO:<user@[127.0.0.2]>",
            "RCPT TO:<Postmaster>",
        ],
        message("x@quoted.test").as_bytes(),
    );
    assert!(replies[1].starts_with("250"), "{replies:?}");
    assert!(replies[2].starts_with("550 5.7.1"), "{replies:?}");
    assert!(replies[3].starts_with("250"), "{replies:?}");
    assert!(replies[4].starts_with("250"), "accepted: {replies:?}");

    let quoted = eventually("delivery to quoted.test", || {
        let r = quoted_mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(
        quoted[0].meta["rcpt_raw"],
        serde_json::json!([r#"TO:<"a@b"@quoted.test>"#])
    );
    let own = eventually("delivery to the postmaster", || {
        let r = own_mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(
        own[0].meta["rcpt_raw"],
        serde_json::json!(["TO:<postmaster@example.com>"])
    );
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(quoted_mx.received().len() + own_mx.received().len(), 2);
}

/// RFC 3461 5.2 per next hop: the MX that offers DSN gets NOTIFY and ORCPT and reports itself;
/// the one that does not gets neither, and its recipient's NOTIFY=SUCCESS earns a "relayed"
/// notice from the sidecar, sent direct to the sender domain's MX.
#[test]
fn dsn_parameters_follow_each_mx_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let with_dsn = Upstream::start_on(dir.path(), &port, &["--address", "127.0.0.2", "--dsn"]);
    let without = Upstream::start_on(dir.path(), &port, &["--address", "127.0.0.3"]);
    let (_dns, sidecar) = direct_sidecar(
        dir.path(),
        "dsn.test. 300 IN MX 10 mx.dsn.test.
mx.dsn.test. 300 IN A 127.0.0.2
plain.test. 300 IN MX 10 mx.plain.test.
example.com. 300 IN MX 10 mx.plain.test.
mx.plain.test. 300 IN A 127.0.0.3
",
        port.port(),
        "opportunistic",
    );
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> ENVID=d1",
            "RCPT TO:<a@dsn.test> NOTIFY=SUCCESS ORCPT=rfc822;a@dsn.test",
            "RCPT TO:<b@plain.test> NOTIFY=SUCCESS",
        ],
        message("a@dsn.test").as_bytes(),
    );
    let got = eventually("delivery to dsn.test", || {
        let r = with_dsn.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["mail_raw"], "FROM:<app@example.com> ENVID=d1");
    assert_eq!(
        got[0].meta["rcpt_raw"],
        serde_json::json!(["TO:<a@dsn.test> NOTIFY=SUCCESS ORCPT=rfc822;a@dsn.test"])
    );
    let got = eventually("the message and the relayed notice at plain.test", || {
        let r = without.received();
        (r.len() == 2).then_some(r)
    });
    let message = got.iter().find(|r| r.meta["mail_from"] != "<>").expect("message");
    assert_eq!(message.meta["mail_raw"], "FROM:<app@example.com>");
    assert_eq!(message.meta["rcpt_raw"], serde_json::json!(["TO:<b@plain.test>"]));
    let notice = got.iter().find(|r| r.meta["mail_from"] == "<>").expect("notice");
    assert_eq!(
        notice.meta["rcpt_raw"],
        serde_json::json!(["TO:<app@example.com>"])
    );
    let text = String::from_utf8_lossy(&notice.data);
    assert!(text.contains("Original-Envelope-Id: d1\r\n"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; b@plain.test\r\nAction: relayed\r\n"),
        "{text}"
    );
    assert!(!text.contains("a@dsn.test>:"), "only b@ is reported: {text}");
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
}
