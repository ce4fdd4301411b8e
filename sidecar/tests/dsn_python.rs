//! A failure DSN from `dsn::failure` read back by Python's `email` package (an independent MIME
//! parser): multipart/report with the three RFC 3464 parts and per-recipient status blocks.

use mailroom_sidecar::{
    dsn,
    message::{Envelope, MessageId},
};
use mailroom_test_support::relay::{self};
use std::process::Command;

#[test]
fn python_email_reads_the_failure_notice() {
    let envelope = Envelope {
        sender: "app@example.com".into(),
        recipients: vec!["a@example.net".into(), "b@example.net".into()],
        smtputf8: false,
        received_at: 1_700_000_000,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    };
    let report = dsn::Report {
        hostname: "relay.example.com",
        envelope: &envelope,
        message_id: MessageId(7),
        original: b"From: app@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
        remote_mta: None,
        now: 1_700_000_100,
    };
    let failed = [
        dsn::Entry::new("a@example.net", "550 5.1.1 <a@example.net>: no such user"),
        dsn::Entry::new("b@example.net", "address is not valid"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dsn.eml");
    std::fs::write(&path, dsn::failure(&report, &failed)).expect("write dsn");
    let out = Command::new(relay::python())
        .arg(relay::peer("dsn_check.py"))
        .arg(&path)
        .output()
        .expect("run dsn_check.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json summary");
    assert_eq!(got["content_type"], "multipart/report");
    assert_eq!(got["report_type"], "delivery-status");
    assert_eq!(
        got["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "text/rfc822-headers"])
    );
    assert_eq!(got["from"], "Mail Delivery System <MAILER-DAEMON@example.com>");
    assert_eq!(got["to"], "app@example.com");
    assert_eq!(got["auto_submitted"], "auto-replied");
    assert_eq!(got["defects"], serde_json::json!([]));
    let blocks = got["status_blocks"].as_array().expect("status blocks");
    assert_eq!(
        blocks.len(),
        3,
        "per-message block + one per recipient: {blocks:?}"
    );
    assert_eq!(blocks[0]["Reporting-MTA"], "dns; relay.example.com");
    assert_eq!(blocks[1]["Final-Recipient"], "rfc822; a@example.net");
    assert_eq!(blocks[1]["Status"], "5.1.1");
    assert_eq!(
        blocks[1]["Diagnostic-Code"],
        "smtp; 550 5.1.1 <a@example.net>: no such user"
    );
    assert_eq!(blocks[2]["Status"], "5.0.0");
    assert_eq!(blocks[2]["Action"], "failed");
}
