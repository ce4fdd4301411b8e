//! RFC 3461 DSN parameters end to end, against the real sidecar: Python's smtplib writes the
//! MAIL and RCPT lines, aiosmtpd (`tests/peers/upstream.py`, with and without `--dsn`) records
//! what arrived byte for byte, and Python's email package reads the reports we generate.

use mailroom_test_support::{
    certs::test_ca,
    peers::{Upstream, dsn_summary},
    relay::{
        Sidecar, capture_config, eventually, sidecar_and_upstream, smarthost_config, smtp_accepted,
        smtp_commands,
    },
};
use serde_json::{Value, json};
use std::path::PathBuf;

const BODY: &[u8] = b"From: app@example.com\r\nSubject: dsn test\r\n\r\nthe body\r\n";

/// Waits for `n` transactions at the upstream; each as (envelope JSON, path of the `.eml`).
fn transactions(up: &Upstream, n: usize) -> Vec<(Value, PathBuf)> {
    let emls = eventually(&format!("{n} transactions at the upstream"), || {
        let emls = up.messages().ok()?;
        (emls.len() >= n).then_some(emls)
    });
    emls.into_iter()
        .map(|eml| (Upstream::envelope(&eml).expect("envelope"), eml))
        .collect()
}

/// The report whose delivery-status blocks have `Action: <action>`.
fn report_with_action(reports: &[(Value, PathBuf)], action: &str) -> Value {
    reports
        .iter()
        .filter(|(meta, _)| meta["mail_from"] == "<>")
        .map(|(_, eml)| dsn_summary(eml).expect("dsn_check.py"))
        .find(|s| s["status_blocks"][1]["Action"] == action)
        .unwrap_or_else(|| panic!("no {action} report among {reports:?}"))
}

/// A next hop that offers DSN gets RET and ENVID on MAIL and NOTIFY and ORCPT on RCPT exactly as
/// the client gave them (ENVID and ORCPT still xtext; RFC 3461 5.2.1), and then reports itself:
/// the sidecar sends no success notice of its own. Malformed parameters are refused at the door
/// with `501 5.5.4` naming the parameter.
#[test]
fn dsn_parameters_reach_a_next_hop_that_offers_dsn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(dir.path(), &["--tls", "none", "--dsn"]);
    let config = smarthost_config(up.port, "none", "", "  - domain: example.com", "");
    let sidecar = Sidecar::start(dir.path(), &config);

    let refused = smtp_commands(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> ENVID=bad+zz",
            "MAIL FROM:<app@example.com> RET=SOME",
            "MAIL FROM:<app@example.com>",
            "RCPT TO:<ok@example.net> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<ok@example.net> ORCPT=ok@example.net",
        ],
        BODY,
    );
    let codes: Vec<&str> = refused.iter().map(|r| &r[..r.len().min(25)]).collect();
    assert_eq!(
        codes,
        [
            "501 5.5.4 Bad ENVID param",
            "501 5.5.4 Bad RET paramet",
            "250 2.1.0 Sender ok",
            "501 5.5.4 Bad NOTIFY para",
            "501 5.5.4 Bad ORCPT param"
        ],
        "{refused:?}"
    );

    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> RET=HDRS ENVID=QQ314159+2Bx",
            "RCPT TO:<ok@example.net> NOTIFY=success,FAILURE ORCPT=rfc822;ok+2Btag@example.net",
            r#"RCPT TO:<"quoted x"@example.net> NOTIFY=NEVER"#,
            "RCPT TO:<plain@example.net>",
        ],
        BODY,
    );
    let got = transactions(&up, 1);
    let meta = &got[0].0;
    assert_eq!(
        meta["mail_raw"],
        "FROM:<app@example.com> RET=HDRS ENVID=QQ314159+2Bx"
    );
    assert_eq!(
        meta["rcpt_raw"],
        json!([
            "TO:<ok@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok+2Btag@example.net",
            r#"TO:<"quoted x"@example.net> NOTIFY=NEVER"#,
            "TO:<plain@example.net>",
        ])
    );
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_dsn_sent_total{kind="success"}"#),
        0.0
    );
    assert_eq!(up.messages().expect("messages").len(), 1, "nothing else was sent");
}

/// RFC 3207 4.2: what the server offered before STARTTLS is forgotten; DSN is learned from the
/// EHLO reply after it (the usual smarthost path), and the parameters go out over TLS.
#[test]
fn dsn_support_is_learned_from_the_ehlo_after_starttls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(&dir.path().join("ca"));
    let (cert, key) = (ca.cert.display().to_string(), ca.key.display().to_string());
    let up = Upstream::start(
        dir.path(),
        &["--tls", "starttls", "--cert", &cert, "--key", &key, "--dsn"],
    );
    let extra = format!("    caFile: {}", ca.ca.display());
    let config = smarthost_config(up.port, "starttls", &extra, "  - domain: example.com", "");
    let sidecar = Sidecar::start(dir.path(), &config);
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> ENVID=tls1",
            "RCPT TO:<ok@example.net> NOTIFY=SUCCESS",
        ],
        BODY,
    );
    let got = transactions(&up, 1);
    assert_eq!(got[0].0["tls"], true);
    assert_eq!(got[0].0["mail_raw"], "FROM:<app@example.com> ENVID=tls1");
    assert_eq!(
        got[0].0["rcpt_raw"],
        json!(["TO:<ok@example.net> NOTIFY=SUCCESS"])
    );
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(up.messages().expect("messages").len(), 1, "no relayed notice");
}

/// With a next hop that does not offer DSN the parameters stay here (aiosmtpd would refuse them
/// with 555), and the reports the sidecar writes follow them: NOTIFY=NEVER gets no bounce,
/// NOTIFY=FAILURE gets one with `Original-Envelope-Id`, `Original-Recipient` and, for RET=FULL,
/// the whole message (RFC 3461 4.3, RFC 3464 2.2.1, 2.3.1), and NOTIFY=SUCCESS gets a "relayed"
/// notice (RFC 3461 5.2.2).
#[test]
fn notify_and_ret_shape_the_reports_the_sidecar_writes() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> RET=FULL ENVID=env+2B1",
            "RCPT TO:<perm-fail-never@example.net> NOTIFY=NEVER",
            "RCPT TO:<perm-fail-report@example.net> NOTIFY=FAILURE ORCPT=rfc822;orig+2Breport@example.net",
            "RCPT TO:<ok@example.net> NOTIFY=SUCCESS",
            "RCPT TO:<quiet@example.net>",
        ],
        BODY,
    );
    let got = transactions(&up, 3);
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(
        up.messages().expect("messages").len(),
        3,
        "message, bounce, relayed notice"
    );

    let message = got
        .iter()
        .find(|(meta, _)| meta["mail_from"] != "<>")
        .expect("the message");
    assert_eq!(message.0["mail_raw"], "FROM:<app@example.com>");
    assert_eq!(
        message.0["rcpt_raw"],
        json!(["TO:<ok@example.net>", "TO:<quiet@example.net>"])
    );

    let bounce = report_with_action(&got, "failed");
    assert_eq!(
        bounce["parts"],
        json!(["text/plain", "message/delivery-status", "message/rfc822"])
    );
    assert_eq!(bounce["defects"], json!([]));
    let blocks = bounce["status_blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "only the recipient that asked: {blocks:?}");
    assert_eq!(blocks[0]["Original-Envelope-Id"], "env+2B1");
    assert_eq!(
        blocks[1]["Original-Recipient"],
        "rfc822;orig+2Breport@example.net"
    );
    assert_eq!(
        blocks[1]["Final-Recipient"],
        "rfc822; perm-fail-report@example.net"
    );
    assert_eq!(blocks[1]["Status"], "5.1.1");
    let bounce_eml = got
        .iter()
        .find(|(meta, eml)| {
            meta["mail_from"] == "<>"
                && std::fs::read_to_string(eml).is_ok_and(|t| t.contains("Action: failed"))
        })
        .expect("bounce file");
    let text = std::fs::read_to_string(&bounce_eml.1).expect("read bounce");
    assert!(
        text.contains("\r\nthe body\r\n"),
        "RET=FULL returns the body: {text}"
    );

    let relayed = report_with_action(&got, "relayed");
    let blocks = relayed["status_blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[1]["Final-Recipient"], "rfc822; ok@example.net");
    assert_eq!(blocks[1]["Status"], "2.0.0");
    assert_eq!(
        relayed["parts"],
        json!(["text/plain", "message/delivery-status", "text/rfc822-headers"])
    );
    for kind in ["success", "failure"] {
        let sent = sidecar.metric(&format!(r#"mailroom_sidecar_dsn_sent_total{{kind="{kind}""#));
        assert_eq!(sent, 1.0, "{kind} notices");
    }
}

/// A delay notice lists only the recipients whose NOTIFY includes DELAY (or that gave none).
#[test]
fn delay_notices_follow_notify() {
    let (_dir, up, sidecar) = sidecar_and_upstream("bounces:\n  delayNoticeAfterSeconds: 1\n");
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com>",
            "RCPT TO:<temp-fail-a@example.net> NOTIFY=DELAY",
            "RCPT TO:<temp-fail-b@example.net> NOTIFY=FAILURE",
        ],
        BODY,
    );
    let got = transactions(&up, 1);
    let notice = report_with_action(&got, "delayed");
    let blocks = notice["status_blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[1]["Final-Recipient"], "rfc822; temp-fail-a@example.net");
}

/// Capture mode is the final delivery: NOTIFY=SUCCESS gets a "delivered" notice (RFC 3461
/// 5.2.3), captured like any message, and the captured envelope keeps the parameters.
#[test]
fn capture_reports_delivered_and_keeps_the_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = Sidecar::start(dir.path(), &capture_config(""));
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com> ENVID=e1",
            "RCPT TO:<u@example.net> NOTIFY=SUCCESS ORCPT=rfc822;u@example.net",
        ],
        BODY,
    );
    let envelopes = eventually("the message and the notice captured", || {
        let dir = std::fs::read_dir(dir.path().join("capture")).ok()?;
        let jsons: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        (jsons.len() == 2).then_some(jsons)
    });
    let read =
        |p: &PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json") };
    let (message, notice): (Vec<&PathBuf>, Vec<&PathBuf>) =
        envelopes.iter().partition(|p| read(p)["mail_from"] != "");
    let meta = read(message[0]);
    assert_eq!(meta["dsn"]["envid"], "e1");
    assert_eq!(
        meta["dsn"]["rcpts"],
        json!([{"notify": {"success": true}, "orcpt": "rfc822;u@example.net"}])
    );
    let summary = dsn_summary(&notice[0].with_extension("eml")).expect("dsn_check.py");
    assert_eq!(summary["status_blocks"][0]["Original-Envelope-Id"], "e1");
    assert_eq!(summary["status_blocks"][1]["Action"], "delivered");
    assert_eq!(
        summary["status_blocks"][1]["Original-Recipient"],
        "rfc822;u@example.net"
    );
}
