use super::*;

/// The reply's code and enhanced status, e.g. "501 5.1.3".
fn code(r: &Reply) -> String {
    format!("{} {}", r.code, r.status)
}

/// Each line of `cases` parsed as `parse` reads it, against what is wanted: the value, or the
/// reply's code and status.
fn check<'a, T: PartialEq + std::fmt::Debug + Copy>(
    cases: &[(&'a str, Result<T, &str>)],
    parse: impl Fn(&'a str) -> Result<T, Reply>,
) {
    for &(line, want) in cases {
        let got = parse(line).map_err(|r| code(&r));
        assert_eq!(got, want.map_err(String::from), "{line:?}");
    }
}

#[test]
fn mail_lines_keep_the_path_as_written_and_map_errors_to_replies() {
    /// The sender, SIZE and SMTPUTF8, or the reply's code and status.
    type Want = Result<(&'static str, Option<u64>, bool), &'static str>;
    let cases: &[(&str, Want)] = &[
        (
            "MAIL FROM:<a@example.com>\r\n",
            Ok(("a@example.com", None, false)),
        ),
        ("mail from:<>\r\n", Ok(("", None, false))),
        (
            "MAIL FROM: <a@example.com>\r\n",
            Ok(("a@example.com", None, false)),
        ),
        (
            "MAIL FROM:<\"john q. public\"@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
            Ok(("\"john q. public\"@example.com", Some(10), true)),
        ),
        (
            "MAIL FROM:<\"a>b\"@example.com>\r\n",
            Ok(("\"a>b\"@example.com", None, false)),
        ),
        (
            "MAIL FROM:<@relay.example,@other.example:a@example.com>\r\n",
            Ok(("a@example.com", None, false)),
        ),
        (
            "MAIL FROM:<a@example.com>  body=7bit\n",
            Ok(("a@example.com", None, false)),
        ),
        (
            "MAIL FROM:<a@example.com> SIZE=99999999999999999999\r\n",
            Ok(("a@example.com", Some(u64::MAX), false)),
        ),
        ("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n", Err("555 5.5.4")),
        ("MAIL FROM:<a@example.com> AUTH=<>\r\n", Err("555 5.5.4")),
        ("MAIL FROM:<a@example.com> BODY=9BIT\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<a@example.com> SIZE=ten\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<a@example.com> SIZE=1 SIZE=2\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<a@example.com> SMTPUTF8=yes\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<a@example.com> =x\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<a@example.com>SIZE=1\r\n", Err("501 5.5.4")),
        ("MAIL FROM:<not an address>\r\n", Err("501 5.1.7")),
        ("MAIL FROM:<postmaster>\r\n", Err("501 5.1.7")),
        ("MAIL FROM:<\"unterminated@example.com>\r\n", Err("501 5.5.4")),
        ("MAIL FROM:a@example.com\r\n", Err("501 5.5.4")),
        ("MAIL TO:<a@example.com>\r\n", Err("501 5.5.4")),
    ];
    check(cases, |line| mail(line).map(|m| (m.sender, m.size, m.smtputf8)));
}

#[test]
fn rcpt_lines_keep_the_path_and_know_the_bare_postmaster() {
    // (line, Ok(Some(mailbox)), Ok(None) for `<Postmaster>`, or the reply)
    let cases: &[(&str, Result<Option<&str>, &str>)] = &[
        ("RCPT TO:<b@example.net>\r\n", Ok(Some("b@example.net"))),
        (
            "RCPT TO:<\"quoted local part\"@example.net>\r\n",
            Ok(Some("\"quoted local part\"@example.net")),
        ),
        (
            "RCPT TO:<\"a@b\"@example.net>\r\n",
            Ok(Some("\"a@b\"@example.net")),
        ),
        (
            "RCPT TO:<\"back\\\\slash \\\"q\\\"\"@example.net>\r\n",
            Ok(Some("\"back\\\\slash \\\"q\\\"\"@example.net")),
        ),
        ("RCPT TO:<user@[192.0.2.1]>\r\n", Ok(Some("user@[192.0.2.1]"))),
        ("RCPT TO:<postmaster>\r\n", Ok(None)),
        ("rcpt to:<PostMaster>\r\n", Ok(None)),
        (
            "RCPT TO:<Postmaster@example.com>\r\n",
            Ok(Some("Postmaster@example.com")),
        ),
        ("RCPT TO:<>\r\n", Err("501 5.1.3")),
        ("RCPT TO:<@>\r\n", Err("501 5.1.3")),
        ("RCPT TO:<a@b@example.net>\r\n", Err("501 5.1.3")),
        ("RCPT TO:<\"cr\r\"@example.net>\r\n", Err("501 5.1.3")),
        ("RCPT TO:<b@example.net> FOO=1\r\n", Err("555 5.5.4")),
        ("RCPT TO b@example.net\r\n", Err("501 5.5.4")),
    ];
    check(cases, |line| {
        rcpt(line).map(|r| match r.to {
            Forward::Mailbox(m) => Some(m.text),
            Forward::Postmaster => None,
        })
    });
}

#[test]
fn syntax_replies_say_what_was_wrong() {
    let r = rcpt("RCPT TO:<a..b@example.net>\r\n").expect_err("bad local part");
    assert!(r.text.contains("local part"), "{r}");
    let r = mail("MAIL FROM:<a@example.com> SIZE=1 size=2\r\n").expect_err("twice");
    assert!(r.text.contains("Duplicate SIZE"), "{r}");
}

#[test]
fn dsn_parameters_are_validated_and_kept_as_xtext() {
    let m = mail("MAIL FROM:<a@example.com> RET=full ENVID=QQ314159+2Bx\r\n").expect("valid");
    assert_eq!((m.ret, m.envid), (Some(Ret::Full), Some("QQ314159+2Bx")));
    let r = rcpt("RCPT TO:<b@example.net> notify=SUCCESS,delay ORCPT=rfc822;b+2B1@example.net\r\n")
        .expect("valid");
    assert_eq!(
        r.dsn.notify.map(Notify::to_param).as_deref(),
        Some("SUCCESS,DELAY")
    );
    assert_eq!(r.dsn.orcpt.as_deref(), Some("rfc822;b+2B1@example.net"));
    let pm = rcpt("RCPT TO:<postmaster> NOTIFY=NEVER\r\n").expect("valid");
    assert_eq!(
        (pm.to, pm.dsn.notify),
        (Forward::Postmaster, Some(Notify::default()))
    );

    struct Case {
        line: String,
        /// The start of the reply.
        want: &'static str,
    }
    let case = |line: &str, want| Case {
        line: line.to_owned(),
        want,
    };
    let cases = [
        case("MAIL FROM:<a@example.com> RET=ALL", "501 5.5.4 Bad RET parameter"),
        case("MAIL FROM:<a@example.com> RET", "501 5.5.4 Bad RET parameter"),
        case(
            "MAIL FROM:<a@example.com> RET=FULL RET=HDRS",
            "501 5.5.4 Duplicate RET",
        ),
        case(
            "MAIL FROM:<a@example.com> ENVID=a+2b",
            "501 5.5.4 Bad ENVID parameter",
        ),
        case(
            "MAIL FROM:<a@example.com> ENVID=a+0",
            "501 5.5.4 Bad ENVID parameter",
        ),
        case("MAIL FROM:<a@example.com> ENVID", "501 5.5.4 Bad ENVID parameter"),
        case(
            "MAIL FROM:<a@example.com> ENVID=a=b",
            "501 5.5.4 Bad ENVID parameter",
        ),
        case(
            &format!("MAIL FROM:<a@example.com> ENVID={}", "x".repeat(101)),
            "501 5.5.4 Bad ENVID parameter",
        ),
        case(
            "RCPT TO:<b@example.net> NOTIFY=NEVER,FAILURE",
            "501 5.5.4 Bad NOTIFY parameter",
        ),
        case(
            "RCPT TO:<b@example.net> NOTIFY=",
            "501 5.5.4 Bad NOTIFY parameter",
        ),
        case(
            "RCPT TO:<b@example.net> NOTIFY=SOMETIMES",
            "501 5.5.4 Bad NOTIFY parameter",
        ),
        case(
            "RCPT TO:<b@example.net> ORCPT=b@example.net",
            "501 5.5.4 Bad ORCPT parameter",
        ),
        case(
            "RCPT TO:<b@example.net> ORCPT=rfc822;",
            "501 5.5.4 Bad ORCPT parameter",
        ),
        case(
            "RCPT TO:<b@example.net> ORCPT=rfc822;a+zz",
            "501 5.5.4 Bad ORCPT parameter",
        ),
        case(
            "RCPT TO:<b@example.net> NOTIFY=DELAY NOTIFY=FAILURE",
            "501 5.5.4 Duplicate NOTIFY",
        ),
        case("RCPT TO:<b@example.net> RRVS=2030-01-01T00:00:00Z", "555 5.5.4"),
    ];
    for c in cases {
        let got = if c.line.starts_with("MAIL") {
            mail(&c.line).map(|_| ()).map_err(|r| r.to_string())
        } else {
            rcpt(&c.line).map(|_| ()).map_err(|r| r.to_string())
        };
        let err = got.expect_err(&c.line);
        assert!(err.starts_with(c.want), "{:?}: {err}", c.line);
    }
}
