//! SMTP conformance of the real sidecar against independent peers (Python's smtplib as the app,
//! aiosmtpd as the smarthost): what RFC 5321 says a relay must accept, and the tricks it must
//! refuse.

use mailroom_test_support::{
    peers::{Received, Upstream, smtp_bdat},
    relay::{
        Sidecar, capture_config, eventually, sidecar_and_upstream, smtp_accepted, smtp_commands, smtplib_send,
    },
};

/// Waits until the queue is empty, checks that exactly one message reached the upstream, and
/// returns it: what a test expects after refusing one message and accepting another.
fn only_message(sidecar: &Sidecar, up: &Upstream) -> Received {
    eventually("a message at the upstream", || {
        (!up.received().is_empty()).then_some(())
    });
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    let mut got = up.received();
    assert_eq!(got.len(), 1, "exactly one message went out");
    got.remove(0)
}

/// RFC 1123 5.2.9: "an empty reverse path MUST be supported". The message is relayed with
/// `MAIL FROM:<>`, and a recipient that fails permanently is not bounced (RFC 5321 6.1: no
/// bounce loops), only counted.
#[test]
fn null_reverse_path_is_relayed_and_never_bounced() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    let body = b"From: Auto Reply <auto@example.com>\r\nAuto-Submitted: auto-replied\r\nSubject: away\r\n\r\nI am away.\r\n";
    smtplib_send(
        sidecar.smtp,
        "",
        &["ok@example.net", "perm-fail@example.net"],
        body,
    )
    .expect("the null reverse-path is accepted");
    let got = eventually("the message at the upstream", || {
        let r = up.received();
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(got[0].meta["mail_from"], "<>");
    assert_eq!(got[0].meta["rcpt_tos"], serde_json::json!(["ok@example.net"]));
    // The refused recipient is counted as bounced, and the queue empties without a report.
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_bounced_total{reply_class="5xx",route="smarthost",sender_domain="none"}"#,
        |v| v == 1.0,
    );
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(
        sidecar.metric("mailroom_sidecar_dsn_sent_total"),
        0.0,
        "no bounce of a null sender"
    );
    assert_eq!(up.received().len(), 1, "nothing else was sent");
}

/// SMTP smuggling with NUL: a next hop that drops NUL octets would read `CRLF NUL . CRLF` as the
/// end of data and run the rest as commands. The sidecar refuses such a message (`550 5.6.0`)
/// and forwards nothing of it.
#[test]
fn nul_in_data_is_refused_and_never_forwarded() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    let smuggled = b"From: app@example.com\r\nSubject: smuggle\r\n\r\nhi\r\n\x00.\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\npay now\r\n";
    let err = smtplib_send(sidecar.smtp, "app@example.com", &["ok@example.net"], smuggled)
        .expect_err("a NUL octet is refused");
    assert!(err.contains("550") && err.contains("5.6.0"), "{err}");
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_messages_received_total{reason="nul",result="rejected"}"#),
        1.0
    );
    // A clean message afterwards is the positive signal: once it is at the upstream, the refused
    // one would have been too.
    let clean = b"From: app@example.com\r\nSubject: clean\r\n\r\nhello\r\n";
    smtplib_send(sidecar.smtp, "app@example.com", &["ok@example.net"], clean).expect("accepted");
    let got = only_message(&sidecar, &up);
    assert!(String::from_utf8_lossy(&got.data).contains("Subject: clean"));
    assert!(!got.data.contains(&0));
}

/// Under `limits.bareLineEndings: normalize` a NUL octet is removed instead: the message goes
/// out once, without it, and what followed the fake end stays message text.
#[test]
fn nul_is_removed_under_normalize() {
    let (_dir, up, sidecar) = sidecar_and_upstream("limits:\n  bareLineEndings: normalize\n");
    let body = b"From: app@example.com\r\nSubject: nul\r\n\r\na\x00b\r\n\x00.\r\nQUIT\r\n";
    smtplib_send(sidecar.smtp, "app@example.com", &["ok@example.net"], body).expect("accepted");
    let got = only_message(&sidecar, &up);
    let data = &got.data;
    assert!(!data.contains(&0), "a NUL was forwarded");
    let text = String::from_utf8_lossy(data);
    assert!(text.contains("\r\nab\r\n.\r\nQUIT\r\n"), "{text:?}");
}

/// A relay that sends only as its domains puts no other domain into any originator field:
/// `Sender:`, `Resent-From:` and `Resent-Sender:` get the same check as `From:` (RFC 5322 3.6.2,
/// 3.6.6), answered `550 5.7.1` naming the field.
#[test]
fn every_originator_field_is_held_to_the_relays_domains() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    for field in ["Sender", "Resent-From", "Resent-Sender"] {
        let body = format!("From: app@example.com\r\n{field}: boss@evil.test\r\nSubject: x\r\n\r\nhi\r\n");
        let err = smtplib_send(
            sidecar.smtp,
            "app@example.com",
            &["ok@example.net"],
            body.as_bytes(),
        )
        .expect_err("a foreign originator is refused");
        assert!(
            err.contains("550") && err.contains("5.7.1") && err.contains(&format!("{field}:")),
            "{field}: {err}"
        );
    }
    let fine = b"From: app@example.com\r\nSender: ops@example.com\r\nResent-From: app@example.com\r\nSubject: ok\r\n\r\nhi\r\n";
    smtplib_send(sidecar.smtp, "app@example.com", &["ok@example.net"], fine).expect("own domains are fine");
    let got = only_message(&sidecar, &up);
    assert!(String::from_utf8_lossy(&got.data).contains("Subject: ok"));
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_messages_received_total{reason="header_from",result="rejected"}"#),
        3.0
    );
}

/// Command lines: RFC 5321 4.5.3.1.4's 512 octets plus what the extensions add (RFC 3461 4: 500
/// for ORCPT) fit in the default 1024; a longer line gets `500 5.5.2` and the session goes on.
#[test]
fn command_lines_up_to_1024_octets_are_served_and_longer_ones_refused() {
    let (_dir, _up, sidecar) = sidecar_and_upstream("");
    // smtplib's docmd sends "NOOP <arg>\r\n": 5 + len + 2 octets.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo("client.test")
for n in sys.argv[3:]:
    code, text = s.docmd("NOOP", "x" * (int(n) - 7))
    print(n, code, text.decode())
code, _ = s.noop()
print("after", code)
s.quit()
"#;
    let out = mailroom_test_support::relay::run_ok(
        std::process::Command::new(mailroom_test_support::relay::python())
            .args(["-c", script])
            .args([sidecar.smtp.ip().to_string(), sidecar.smtp.port().to_string()])
            .args(["512", "1024", "1025", "2048"]),
        "the smtplib client",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("512 250"), "{text}");
    assert!(lines[1].starts_with("1024 250"), "{text}");
    assert!(lines[2].starts_with("1025 500 5.5.2"), "{text}");
    assert!(lines[3].starts_with("2048 500 5.5.2"), "{text}");
    assert_eq!(lines[4], "after 250", "the session goes on: {text}");
}

/// RFC 5322 2.1.1: a line is at most 998 octets. Strict next hops refuse longer ones, so the
/// sidecar decides at the door (`550 5.6.0`) instead of accepting and bouncing later.
#[test]
fn lines_over_998_octets_are_refused_at_the_door() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    let long = format!(
        "From: app@example.com\r\nSubject: long\r\n\r\n{}\r\n",
        "a".repeat(999)
    );
    let err = smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["ok@example.net"],
        long.as_bytes(),
    )
    .expect_err("a 999-octet line is refused");
    assert!(err.contains("550") && err.contains("5.6.0"), "{err}");
    let fits = format!(
        "From: app@example.com\r\nSubject: fits\r\n\r\n{}\r\n",
        "a".repeat(998)
    );
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["ok@example.net"],
        fits.as_bytes(),
    )
    .expect("998 octets fit");
    let got = only_message(&sidecar, &up);
    assert!(String::from_utf8_lossy(&got.data).contains("Subject: fits"));
    assert_eq!(
        sidecar
            .metric(r#"mailroom_sidecar_messages_received_total{reason="line_too_long",result="rejected"}"#),
        1.0
    );
}

/// A client that trickles a byte at a time (0.3 s apart) through `tests/peers`-style raw
/// sockets; prints what the server said and how much it managed to send.
const TRICKLE: &str = r#"
import socket, sys, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=30)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline().decode()
        if len(line) < 4 or line[3] == " ":
            return line.strip()
reply()
if mode == "command":
    payload = b"EHLO trickle.example.com\r\n"
else:
    for command in [b"EHLO t.example.com", b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>", b"DATA"]:
        s.sendall(command + b"\r\n")
        reply()
    payload = b"From: app@example.com\r\nSubject: slow\r\n\r\n" + b"x" * 60 + b"\r\n.\r\n"
s.settimeout(0.3)
sent = 0
for byte in payload:
    try:
        s.sendall(bytes([byte]))
        sent += 1
        data = s.recv(4096)
        print("server:", data.decode().strip() if data else "closed")
        break
    except socket.timeout:
        continue
    except OSError as e:
        print("server: error", e)
        break
print("sent", sent, "of", len(payload))
"#;

/// Deadlines, not only idle timeouts: a command line must be complete within
/// `commandDeadlineSeconds` of its first byte, and DATA must average `dataMinBytesPerSecond`
/// past `dataDeadlineFloorSeconds`. A trickling client gets `421 4.4.2`; others are served
/// meanwhile, and nothing of the slow message is delivered.
#[test]
fn trickling_clients_are_cut_and_others_served() {
    let limits =
        "limits:\n  commandDeadlineSeconds: 2\n  dataDeadlineFloorSeconds: 2\n  dataMinBytesPerSecond: 100\n";
    let (_dir, up, sidecar) = sidecar_and_upstream(limits);
    let trickle = |mode: &'static str| {
        let smtp = sidecar.smtp;
        std::thread::spawn(move || {
            let out = std::process::Command::new(mailroom_test_support::relay::python())
                .args([
                    "-c",
                    TRICKLE,
                    &smtp.ip().to_string(),
                    &smtp.port().to_string(),
                    mode,
                ])
                .output()
                .expect("run the trickling client");
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        })
    };
    let (command, data) = (trickle("command"), trickle("data"));
    // Served while both trickle.
    smtplib_send(
        sidecar.smtp,
        "app@example.com",
        &["ok@example.net"],
        b"From: app@example.com\r\nSubject: prompt\r\n\r\nhi\r\n",
    )
    .expect("a well-behaved client is served");
    for (what, out) in [("command", command), ("data", data)] {
        let out = out.join().expect("trickling client thread");
        assert!(out.contains("server: 421 4.4.2"), "{what}: {out}");
        let sent: Vec<usize> = out
            .lines()
            .find_map(|l| l.strip_prefix("sent "))
            .map(|l| l.split(" of ").filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_default();
        assert!(
            sent.len() == 2 && sent[0] < sent[1],
            "{what}: cut before the end: {out}"
        );
    }
    let got = only_message(&sidecar, &up);
    assert!(String::from_utf8_lossy(&got.data).contains("Subject: prompt"));
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_sessions_total{end="timeout"}"#),
        2.0
    );
}

/// RFC 5321 4.1.2: a `Quoted-string` local part (with spaces, an `@`, escaped quotes) and an
/// address literal are valid mailboxes. They were accepted and then bounced as "not valid for
/// SMTP"; now each reaches the upstream byte for byte, in MAIL and RCPT, and the bounce for a
/// refused quoted recipient goes back to the quoted sender and names that recipient exactly.
#[test]
fn quoted_local_parts_and_literals_reach_the_upstream_byte_exact() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    let sender = r#""app team"@example.com"#;
    let rcpts = [
        r#""quoted local part"@example.net"#,
        r#""a@b"@example.net"#,
        r#""esc\\aped \"q\""@example.net"#,
        "user@[127.0.0.1]",
        r#""perm-fail x"@example.net"#,
    ];
    let mut commands = vec![format!("MAIL FROM:<{sender}>")];
    commands.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let body = b"From: \"App Team\" <\"app team\"@example.com>\r\nSubject: quoted\r\n\r\nhi\r\n";
    let replies = smtp_commands(sidecar.smtp, &commands, body);
    assert!(
        replies.iter().all(|r| r.starts_with("250")),
        "every path is accepted at the door: {replies:?}"
    );

    let got = eventually("the message and the bounce at the upstream", || {
        let r = up.received();
        (r.len() == 2).then_some(r)
    });
    let (message, bounce) = if got[0].meta["mail_from"] == "<>" {
        (&got[1], &got[0])
    } else {
        (&got[0], &got[1])
    };
    assert_eq!(message.meta["mail_raw"], format!("FROM:<{sender}>"));
    let want: Vec<String> = rcpts[..4].iter().map(|r| format!("TO:<{r}>")).collect();
    assert_eq!(message.meta["rcpt_raw"], serde_json::json!(want));

    assert_eq!(bounce.meta["mail_raw"], "FROM:<>");
    assert_eq!(
        bounce.meta["rcpt_raw"],
        serde_json::json!([format!("TO:<{sender}>")])
    );
    let report = String::from_utf8_lossy(&bounce.data);
    assert!(report.contains(&format!("To: <{sender}>")), "{report}");
    assert!(
        report.contains(r#"Final-Recipient: rfc822; "perm-fail x"@example.net"#),
        "{report}"
    );
    assert!(report.contains("Status: 5.1.1"), "{report}");
    sidecar.wait_metric("mailroom_sidecar_queue_messages", |v| v == 0.0);
    assert_eq!(up.received().len(), 2, "nothing else was sent");
}

/// RFC 5321 4.5.1: `RCPT TO:<Postmaster>` without a domain must be accepted. It means the
/// postmaster of this relay (`postmaster:` in the config) and is delivered there, under the same
/// rules as any recipient: a foreign sender is still refused at MAIL (no open relay), and the
/// rate limit still applies (no bypass). The null reverse-path cannot be `<postmaster>`.
#[test]
fn bare_postmaster_is_accepted_and_delivered_to_the_configured_address() {
    let (_dir, up, sidecar) =
        sidecar_and_upstream("postmaster: ops@example.org\nlimits:\n  ratePerMinute: 1\n");
    let body = b"From: app@example.com\r\nSubject: to the postmaster\r\n\r\nhi\r\n";
    smtp_accepted(
        sidecar.smtp,
        &[
            "MAIL FROM:<app@example.com>",
            "RCPT TO:<postmaster>",
            "RCPT TO:<PostMaster>",
        ],
        body,
    );
    let got = only_message(&sidecar, &up);
    assert_eq!(
        got.meta["rcpt_raw"],
        serde_json::json!(["TO:<ops@example.org>", "TO:<ops@example.org>"])
    );

    let replies = smtp_commands(
        sidecar.smtp,
        &["MAIL FROM:<boss@evil.test>", "RCPT TO:<postmaster>"],
        body,
    );
    assert!(replies[0].starts_with("550 5.7.1"), "no open relay: {replies:?}");
    let replies = smtp_commands(
        sidecar.smtp,
        &["MAIL FROM:<app@example.com>", "RCPT TO:<postmaster>"],
        body,
    );
    assert!(
        replies[2].starts_with("451 4.7.1"),
        "the rate limit applies to the postmaster too: {replies:?}"
    );
    let replies = smtp_commands(sidecar.smtp, &["MAIL FROM:<postmaster>"], b"");
    assert!(replies[0].starts_with("501 5.1.7"), "{replies:?}");
    assert_eq!(up.received().len(), 1, "nothing else was sent");
}

/// The postmaster default, `postmaster@<the first sender domain>`, in capture mode: the
/// captured envelope names the address the upstream would have been given.
#[test]
fn bare_postmaster_defaults_to_the_first_sender_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = Sidecar::start(dir.path(), &capture_config(""));
    let body = b"From: app@example.com\r\nSubject: pm\r\n\r\nhi\r\n";
    smtp_accepted(
        sidecar.smtp,
        &["MAIL FROM:<app@example.com>", "RCPT TO:<postmaster>"],
        body,
    );
    let captured = eventually("a captured envelope", || {
        let dir = std::fs::read_dir(dir.path().join("capture")).ok()?;
        dir.filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
    });
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(captured).expect("read envelope")).expect("json");
    assert_eq!(envelope["rcpt_to"], serde_json::json!(["postmaster@example.com"]));
}

/// RFC 3030: a message sent in BDAT chunks (smtplib's connection and reply parsing, our BDAT
/// lines) is relayed as it was sent, not dot-unstuffed: a line of one "." and one starting
/// ".." reach the upstream unchanged, through its DATA with dot-stuffing on the wire.
#[test]
fn a_message_in_bdat_chunks_is_relayed_as_sent() {
    let (_dir, up, sidecar) = sidecar_and_upstream("");
    let first: &[u8] = b"From: <app@example.com>\r\nTo: <a@example.net>\r\nSubject: chunks\r\n\r\n";
    let second: &[u8] = b".\r\n..two\r\nend\r\n";
    let replies = smtp_bdat(sidecar.smtp, "app@example.com", "a@example.net", &[first, second])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert!(
        replies[2].starts_with(&format!("250 2.0.0 {} octets received", first.len())),
        "{replies:?}"
    );
    assert!(replies[3].starts_with("250 2.0.0 Ok: queued as "), "{replies:?}");
    let got = only_message(&sidecar, &up);
    let body = String::from_utf8_lossy(&got.data);
    let sent = String::from_utf8_lossy(&[first, second].concat()).to_string();
    assert!(body.ends_with(&sent), "{body:?}");
}
