//! End to end through the real `mailroom-sidecar` process: a client we did not write (Python
//! smtplib) sends to it, and an upstream we did not write (aiosmtpd) receives from it.

use mailroom_test_support::{
    certs::test_ca,
    peers::Upstream,
    relay::{self, Sidecar, dkim_key, eventually, smarthost_config, smtplib_send},
};
use std::process::Command;

/// Proves the main path: STARTTLS (verified against the test CA) and AUTH to the smarthost; the
/// message arrives byte-exact (lines starting with dots survive both dot-stuffing hops) with one
/// Received header and a DKIM signature that dkimpy verifies against the published key.
#[test]
fn starttls_auth_relay_is_byte_exact_and_dkim_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, extra) = tls_upstream_with_auth(dir.path(), "s3cret", "s3cret");
    let (rsa_key, rsa_txt) = dkim_key(dir.path(), "rsa", "rsa");
    let (ed_key, ed_txt) = dkim_key(dir.path(), "ed", "ed25519");
    let domains = format!(
        "  - domain: example.com\n    dkim:\n      selector: s1\n      algorithm: rsa-sha256\n      keyFile: {}\n\
         \x20 - domain: ed.example.com\n    dkim:\n      selector: s2\n      algorithm: ed25519-sha256\n      keyFile: {}",
        rsa_key.display(),
        ed_key.display()
    );
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(up.port, "starttls", &extra, &domains, ""),
    );

    let body = "From: App <app@example.com>\r\nTo: user@example.net\r\nSubject: dots\r\n\
                Message-ID: <1@example.com>\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n";
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["user@example.net"],
        body.as_bytes(),
    )
    .expect("accepted");
    let ed_body = body.replace("app@example.com", "news@ed.example.com");
    smtplib_send(
        sidecar.smtp,
        "news@ed.example.com",
        &["user@example.net"],
        ed_body.as_bytes(),
    )
    .expect("accepted");

    let mut got = eventually("two messages upstream", || {
        let r = up.received();
        (r.len() == 2).then_some(r)
    });
    // The two messages are delivered concurrently, so they may arrive in either order.
    got.sort_by_key(|r| String::from_utf8_lossy(&r.data).contains("<news@ed.example.com>"));
    for (received, original, txt) in [(&got[0], body, &rsa_txt), (&got[1], &ed_body[..], &ed_txt)] {
        assert_eq!(received.meta["tls"], true, "{:?}", received.meta);
        assert_eq!(received.meta["authenticated"], true);
        let data = String::from_utf8(received.data.clone()).expect("utf8");
        assert!(
            data.ends_with(original),
            "message bytes relayed unchanged:\n{data}"
        );
        let prefix = &data[..data.len() - original.len()];
        assert!(prefix.starts_with("DKIM-Signature: v=1; a="), "{prefix}");
        assert_eq!(
            prefix.matches("\r\nReceived: from ").count(),
            1,
            "exactly one Received header: {prefix}"
        );
        let file = dir.path().join("signed.eml");
        std::fs::write(&file, &received.data).expect("write");
        relay::run_ok(
            Command::new(relay::python())
                .arg(relay::peer("dkim_verify.py"))
                .arg(&file)
                .arg(txt),
            "dkimpy (dkim_verify.py)",
        );
    }
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_delivered_total{reply_class="2xx",route="smarthost",sender_domain="example.com"}"#,
        |v| v == 1.0,
    );
    assert_eq!(sidecar.metric(r#"mailroom_sidecar_dkim_signatures_total{algorithm="rsa-sha256",domain="example.com",result="ok"}"#), 1.0);
    assert_eq!(sidecar.metric(r#"mailroom_sidecar_dkim_signatures_total{algorithm="ed25519-sha256",domain="ed.example.com",result="ok"}"#), 1.0);
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_messages_received_total{reason="none",result="accepted"}"#),
        2.0
    );
}

/// Proves per-recipient outcomes in one transaction, the bounce (an RFC 3464 report with the
/// upstream's 5.1.1 to the envelope sender, with the null sender), and expiry of a recipient
/// that only ever gets 4xx (a second report, status 4.4.7). A bounce is never bounced.
#[test]
fn mixed_recipients_deliver_bounce_and_expire_with_dsns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", "")
        .replace("maxAgeSeconds: 600", "maxAgeSeconds: 3");
    let sidecar = Sidecar::start(dir.path(), &config);
    let body = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: mixed\r\n\r\nhello\r\n";
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["ok@example.net", "temp-fail@example.net", "perm-fail@example.net"],
        body,
    )
    .expect("accepted");

    let got = eventually("delivery, bounce and expiry notice", || {
        let r = up.received();
        (r.len() >= 3).then_some(r)
    });
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["ok@example.net"]));
    assert_eq!(got[0].meta["mail_from"], "app@example.com");
    let bounce = String::from_utf8_lossy(&got[1].data).to_string();
    assert_eq!(got[1].meta["mail_from"], "<>", "DSNs use the null sender");
    assert_eq!(got[1].meta["rcpt_tos"], serde_json::json!(["app@example.com"]));
    assert!(bounce.contains("report-type=delivery-status"), "{bounce}");
    assert!(
        bounce.contains("Final-Recipient: rfc822; perm-fail@example.net"),
        "{bounce}"
    );
    assert!(bounce.contains("Status: 5.1.1"), "{bounce}");
    assert!(bounce.contains("Subject: mixed"), "original headers are returned");
    let expiry = String::from_utf8_lossy(&got[2].data).to_string();
    assert!(
        expiry.contains("Final-Recipient: rfc822; temp-fail@example.net"),
        "{expiry}"
    );
    assert!(expiry.contains("Status: 4.4.7"), "{expiry}");

    let labels = r#"{reply_class="5xx",route="smarthost",sender_domain="example.com"}"#;
    assert_eq!(
        sidecar.metric(&format!("mailroom_sidecar_messages_bounced_total{labels}")),
        1.0
    );
    sidecar.wait_metric(r#"mailroom_sidecar_dsn_sent_total{kind="failure"}"#, |v| v == 2.0);
    assert!(sidecar.metric(r#"mailroom_sidecar_messages_deferred_total{reply_class="4xx""#) >= 1.0);
    // Both DSNs were delivered (not deferred, not bounced): nothing is left that could bounce.
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_delivered_total{reply_class="2xx",route="smarthost",sender_domain="none"}"#,
        |v| v == 2.0,
    );
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(
        up.received().len(),
        3,
        "nothing else is sent: no bounce of a bounce, no duplicate"
    );
}

/// Proves retry: the upstream first fails every DATA with 451, then comes back healthy on the
/// same port; the message is delivered once, without a bounce.
#[test]
fn deferred_message_is_retried_until_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = relay::reserve_port();
    let first = dir.path().join("first");
    std::fs::create_dir_all(&first).expect("dir");
    let down = Upstream::start_on(&first, &port, &["--tls", "none", "--fail-data", "451"]);
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(port.port(), "none", "", "  - domain: example.com", ""),
    );
    send_one(&sidecar);
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="4xx""#,
        |v| v >= 1.0,
    );
    drop(down);
    let up = Upstream::start_on(dir.path(), &port, &["--tls", "none"]);
    eventually("delivery after retry", || {
        (up.received().len() == 1).then_some(())
    });
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(sidecar.metric("mailroom_sidecar_messages_delivered_total"), 1.0);
    assert_eq!(sidecar.metric("mailroom_sidecar_dsn_sent_total"), 0.0);
}

/// Proves TLS is required by default: a smarthost that does not offer STARTTLS gets no mail in
/// clear; the recipient is deferred with reply_class "tls".
#[test]
fn starttls_required_but_not_offered_defers_and_sends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(up.port, "starttls", "", "  - domain: example.com", ""),
    );
    send_one(&sidecar);
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="tls""#,
        |v| v >= 1.0,
    );
    assert!(up.connections() >= 1, "the sidecar did connect");
    assert!(up.received().is_empty(), "nothing was sent in clear");
}

/// Proves an AUTH rejection defers (the credentials may be fixed by a Secret update) and is
/// visible in metrics as reply_class "auth".
#[test]
fn auth_failure_defers_with_metric() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, extra) = tls_upstream_with_auth(dir.path(), "right", "wrong");
    let sidecar = Sidecar::start(
        dir.path(),
        &smarthost_config(up.port, "starttls", &extra, "  - domain: example.com", ""),
    );
    send_one(&sidecar);
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="auth""#,
        |v| v >= 1.0,
    );
    assert!(up.received().is_empty());
    assert!(
        !sidecar.log().contains("wrong"),
        "the password never reaches the log"
    );
}

/// An upstream with STARTTLS (test CA) requiring AUTH `relay:<secret>`, and the smarthost config
/// lines that make the sidecar log in with `relay:<password>`.
fn tls_upstream_with_auth(dir: &std::path::Path, secret: &str, password: &str) -> (Upstream, String) {
    let ca = test_ca(&dir.join("ca"));
    let auth = format!("relay:{secret}");
    let args = [
        "--tls",
        "starttls",
        "--cert",
        path(&ca.cert),
        "--key",
        path(&ca.key),
        "--require-auth",
        &auth,
    ];
    let up = Upstream::start(dir, &args);
    std::fs::write(dir.join("user"), "relay\n").expect("user file");
    std::fs::write(dir.join("pass"), format!("{password}\n")).expect("pass file");
    let extra = format!(
        "    caFile: {}\n    auth:\n      mechanism: plain\n      usernameFile: {{dir}}/user\n      passwordFile: {{dir}}/pass",
        ca.ca.display()
    );
    (up, extra)
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Proves the metrics a known workload produces, exactly: three accepted messages (one with two
/// recipients), one refused for its sender domain, all delivered through capture.
#[test]
fn metrics_match_a_known_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay::capture_config("");
    let sidecar = Sidecar::start(dir.path(), &config);
    let msg = b"From: app@example.com\r\nSubject: m\r\n\r\nhello\r\n";
    smtplib_send(sidecar.smtp, "app@example.com", &["a@example.net"], msg).expect("1");
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["b@example.net", "c@example.org"],
        msg,
    )
    .expect("2");
    smtplib_send(sidecar.smtp, "app@example.com", &["d@example.net"], msg).expect("3");
    smtplib_send(sidecar.smtp, "app@elsewhere.example", &["d@example.net"], msg).expect_err("not ours");
    sidecar.wait_metric("mailroom_sidecar_messages_delivered_total", |v| v == 4.0);
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    let text = sidecar.metrics();
    let m = |series: &str| relay::metric_value(&text, series);
    let delivered = r#"mailroom_sidecar_messages_delivered_total{reply_class="2xx",route="capture",sender_domain="example.com"}"#;
    assert_eq!(m(delivered), 4.0);
    assert_eq!(
        m(r#"mailroom_sidecar_messages_received_total{reason="none",result="accepted"}"#),
        3.0
    );
    assert_eq!(
        m(r#"mailroom_sidecar_messages_received_total{reason="sender_domain",result="rejected"}"#),
        1.0
    );
    assert_eq!(m("mailroom_sidecar_accept_duration_seconds_count"), 3.0);
    assert_eq!(m("mailroom_sidecar_message_size_bytes_count"), 3.0);
    assert_eq!(m(r#"mailroom_sidecar_sessions_total{end="quit"}"#), 4.0);
    assert_eq!(m("mailroom_sidecar_messages_bounced_total"), 0.0);
    assert_eq!(m("mailroom_sidecar_messages_deferred_total"), 0.0);
    assert_eq!(m("mailroom_sidecar_dsn_sent_total"), 0.0);
    assert_eq!(m("mailroom_sidecar_queue_oldest_message_age_seconds"), 0.0);
    assert_eq!(
        m(r#"mailroom_sidecar_delivery_duration_seconds_count{outcome="delivered",route="capture"}"#),
        3.0
    );
    assert!(text.contains("mailroom_sidecar_build_info{version=\""), "{text}");
}

/// Proves the optional delay notice: with `bounces.delayNoticeAfterSeconds` set, a recipient
/// still deferred after that long gets one RFC 3464 "delayed" report, and delivery goes on.
#[test]
fn delay_notice_is_sent_once_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none"]);
    let config = smarthost_config(
        up.port,
        "none",
        "",
        "  - domain: example.com",
        "bounces:\n  delayNoticeAfterSeconds: 1\n",
    );
    let sidecar = Sidecar::start(dir.path(), &config);
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["temp-fail@example.net"],
        b"From: app@example.com\r\n\r\nx\r\n",
    )
    .expect("accepted");
    let got = eventually("delay notice", || {
        let r = up.received();
        (!r.is_empty()).then_some(r)
    });
    let notice = String::from_utf8_lossy(&got[0].data).to_string();
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["app@example.com"]));
    assert!(notice.contains("Action: delayed"), "{notice}");
    assert!(
        notice.contains("Final-Recipient: rfc822; temp-fail@example.net"),
        "{notice}"
    );
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="4xx""#,
        |v| v >= 3.0,
    );
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_dsn_sent_total{kind="delay"}"#),
        1.0
    );
    assert_eq!(
        up.received().len(),
        1,
        "one notice only, and the message itself is still queued"
    );
}

/// Sends one small message from app@example.com to user@example.net; it must be accepted.
fn send_one(sidecar: &Sidecar) {
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["user@example.net"],
        b"From: app@example.com\r\n\r\nx\r\n",
    )
    .expect("accepted");
}
