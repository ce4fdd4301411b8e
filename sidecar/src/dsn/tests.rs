//! DSN structure, parsed back with mail-parser.

use super::*;
use mail_parser::{MessageParser, MimeHeaders};

const ORIGINAL: &[u8] = b"From: App <app@example.com>\r\nTo: a@example.net\r\nSubject: hello\r\n\r\nbody\r\n";

fn envelope() -> Envelope {
    crate::testing::envelope(&["a@example.net", "b@example.net"], 1_700_000_000)
}

fn report(envelope: &Envelope) -> Report<'_> {
    Report {
        hostname: "relay.example.com",
        envelope,
        message_id: MessageId(0xabc),
        original: ORIGINAL,
        remote_mta: Some("smtp.example.org"),
        now: 1_700_000_600,
    }
}

fn failed() -> Vec<Entry> {
    vec![
        Entry::new("a@example.net", "550 5.1.1 <a@example.net>: no such user"),
        Entry::new("b@example.net", "554 transaction failed"),
    ]
}

#[test]
fn failure_notice_is_a_multipart_report_with_three_parts() {
    let env = envelope();
    let bytes = failure(&report(&env), &failed());
    let msg = MessageParser::default().parse(&bytes).expect("parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(
        msg.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(
        msg.from().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("MAILER-DAEMON@example.com")
    );
    assert_eq!(
        msg.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("app@example.com")
    );
    assert!(
        msg.message_id()
            .is_some_and(|id| id.ends_with("@relay.example.com"))
    );
    assert!(msg.date().is_some());

    let root = msg.part(0).and_then(|p| p.sub_parts()).expect("multipart");
    assert_eq!(root.len(), 3);
    let part = |i: usize| msg.part(root[i]).expect("part");
    let types: Vec<_> = (0..3)
        .map(|i| {
            let ct = part(i).content_type().expect("part content type");
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        types,
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    );

    let human = part(0).text_contents().expect("text");
    assert!(
        human.contains("<a@example.net>: 550 5.1.1 <a@example.net>: no such user"),
        "{human}"
    );

    let status = String::from_utf8_lossy(part(1).contents()).into_owned();
    for want in [
        "Reporting-MTA: dns; relay.example.com\r\n",
        "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n",
        "\r\n\r\nFinal-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Remote-MTA: dns; smtp.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 <a@example.net>: no such user\r\n",
        "Final-Recipient: rfc822; b@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n",
    ] {
        assert!(status.contains(want), "missing {want:?} in\n{status}");
    }

    let headers = String::from_utf8_lossy(part(2).contents()).into_owned();
    assert!(headers.contains("Subject: hello\r\n"), "{headers}");
    assert!(!headers.contains("body"), "only the header section is returned");
}

#[test]
fn every_line_ends_with_crlf() {
    let env = envelope();
    for bytes in [
        failure(&report(&env), &failed()),
        expiry(&report(&env), &failed()),
        delay(&report(&env), &failed(), 1_700_400_000),
    ] {
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        assert!(bytes.ends_with(b"--\r\n"));
    }
}

#[test]
fn expiry_and_delay_notices_carry_their_action_and_status() {
    let env = envelope();
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    let expired = text(expiry(
        &report(&env),
        &[Entry::new("a@example.net", "connection refused")],
    ));
    assert!(
        expired.contains("Action: failed\r\nStatus: 4.4.7\r\n"),
        "{expired}"
    );
    assert!(
        expired.contains("Diagnostic-Code: X-Mailroom; connection refused\r\n"),
        "{expired}"
    );
    let delayed = text(delay(
        &report(&env),
        &[Entry::new("a@example.net", "451 4.3.0 try later")],
        1_700_400_000,
    ));
    assert!(
        delayed.contains("Action: delayed\r\nStatus: 4.3.0\r\n"),
        "{delayed}"
    );
    assert!(
        delayed.contains("Will-Retry-Until: Sun, 19 Nov 2023 13:20:00 +0000\r\n"),
        "{delayed}"
    );
    assert!(delayed.contains("Subject: Delayed Mail"), "{delayed}");
}

#[test]
fn status_comes_from_the_reply_when_it_fits() {
    struct Case {
        kind: Kind,
        diagnostic: &'static str,
        want: &'static str,
    }
    let delayed = Kind::Delayed { will_retry_until: 0 };
    let cases = [
        Case {
            kind: Kind::Failed,
            diagnostic: "550 5.1.1 no such user",
            want: "5.1.1",
        },
        Case {
            kind: Kind::Failed,
            diagnostic: "550 no such user",
            want: "5.0.0",
        },
        Case {
            kind: Kind::Failed,
            diagnostic: "550 4.1.1 mismatched class",
            want: "5.0.0",
        },
        Case {
            kind: Kind::Failed,
            diagnostic: "address is not valid",
            want: "5.0.0",
        },
        Case {
            kind: Kind::Failed,
            diagnostic: "552 5.3.4 too big",
            want: "5.3.4",
        },
        Case {
            kind: Kind::Expired,
            diagnostic: "451 4.3.0 later",
            want: "4.4.7",
        },
        Case {
            kind: delayed,
            diagnostic: "450 4.2.0 busy",
            want: "4.2.0",
        },
        Case {
            kind: delayed,
            diagnostic: "timed out waiting for a reply",
            want: "4.0.0",
        },
        Case {
            kind: delayed,
            diagnostic: "450 4.2.1000 bad",
            want: "4.0.0",
        },
    ];
    for c in cases {
        assert_eq!(status(c.kind, c.diagnostic), c.want, "{}", c.diagnostic);
    }
}

#[test]
fn header_section_is_cut_at_the_empty_line_and_normalised() {
    struct Case {
        input: &'static [u8],
        want: &'static [u8],
    }
    let cases = [
        Case {
            input: b"A: 1\r\nB: 2\r\n\r\nbody\r\n",
            want: b"A: 1\r\nB: 2\r\n",
        },
        Case {
            input: b"A: 1\nB: 2\n\nbody\n",
            want: b"A: 1\r\nB: 2\r\n",
        },
        Case {
            input: b"A: 1",
            want: b"A: 1\r\n",
        },
        Case {
            input: b"",
            want: b"",
        },
    ];
    for c in cases {
        assert_eq!(
            header_section(c.input),
            c.want,
            "{:?}",
            String::from_utf8_lossy(c.input)
        );
    }
}

#[test]
fn boundary_avoids_text_in_the_returned_headers() {
    let env = envelope();
    let mut r = report(&env);
    let original = b"X-Trap: =_mailroom-0000000000000abc-1700000600\r\n\r\n".to_vec();
    r.original = &original;
    let text = String::from_utf8(failure(&r, &failed())).expect("utf-8");
    assert!(
        text.contains("boundary=\"=_mailroom-0000000000000abc-1700000600-1\""),
        "{text}"
    );
}

#[test]
fn multiline_diagnostics_stay_on_one_line() {
    assert_eq!(one_line("550-5.1.1 a\r\n550 5.1.1 b"), "550-5.1.1 a 550 5.1.1 b");
    assert_eq!(one_line(&"x".repeat(2000)).len(), MAX_DIAGNOSTIC);
}

/// RFC 3461 6.3 / RFC 3464 2.2.1, 2.3.1: ENVID and ORCPT come back as the client sent them (xtext,
/// never decoded, so `+0D+0A` stays text), RET=FULL returns the whole message in a failure
/// notice only, and a success notice says `relayed` or `delivered` with a 2.x.x status.
#[test]
fn dsn_parameters_shape_the_notice() {
    let mut env = envelope();
    env.dsn = crate::message::DsnRequest {
        ret: Some(Ret::Full),
        envid: Some("QQ314159+0D+0AX-Injected:+20yes".into()),
        rcpts: vec![],
    };
    let mut entry = Entry::new("\"a b\"@example.net", "550 5.1.1 no such user");
    entry.orcpt = Some("rfc822;a+2Bb@example.net".into());
    let bounce = String::from_utf8(failure(&report(&env), std::slice::from_ref(&entry))).expect("utf-8");
    assert!(
        bounce.contains("\r\nOriginal-Envelope-Id: QQ314159+0D+0AX-Injected:+20yes\r\nReporting-MTA: "),
        "{bounce}"
    );
    assert!(
        bounce.contains(
            "\r\nOriginal-Recipient: rfc822;a+2Bb@example.net\r\nFinal-Recipient: rfc822; \"a b\"@example.net\r\n"
        ),
        "{bounce}"
    );
    assert!(!bounce.contains("\r\nX-Injected"), "{bounce}");
    assert!(bounce.contains("Content-Type: message/rfc822\r\n"), "{bounce}");
    assert!(
        bounce.contains("\r\n\r\nbody\r\n\r\n--="),
        "the body is returned: {bounce}"
    );

    let delivered = Entry::new("\"a b\"@example.net", "250 2.0.0 queued as 7");
    for (relayed, action) in [(true, "relayed"), (false, "delivered")] {
        let text = String::from_utf8(success(&report(&env), std::slice::from_ref(&delivered), relayed))
            .expect("utf-8");
        assert!(
            text.contains(&format!("Action: {action}\r\nStatus: 2.0.0\r\n")),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: text/rfc822-headers"),
            "headers only: {text}"
        );
        assert!(!text.contains("\r\nbody\r\n"), "{text}");
    }

    env.dsn.ret = Some(Ret::Hdrs);
    let headers_only = String::from_utf8(failure(&report(&env), &failed())).expect("utf-8");
    assert!(
        headers_only.contains("Content-Type: text/rfc822-headers"),
        "{headers_only}"
    );
    assert!(!headers_only.contains("\r\nbody\r\n"), "{headers_only}");
}
