use super::*;

#[test]
fn xtext_is_checked_as_rfc_3461_4_defines_it() {
    struct Case {
        input: &'static str,
        want: bool,
    }
    let cases = [
        Case {
            input: "QQ314159",
            want: true,
        },
        Case {
            input: "a+2Bb+3Dc",
            want: true,
        },
        Case {
            input: "!\"#$%&'()*,-./:;<>?@[\\]^_`{|}~",
            want: true,
        },
        Case {
            input: "+0D+0A",
            want: true,
        },
        Case {
            input: "",
            want: false,
        },
        Case {
            input: "a b",
            want: false,
        },
        Case {
            input: "a=b",
            want: false,
        },
        Case {
            input: "a+2b",
            want: false,
        },
        Case {
            input: "a+2",
            want: false,
        },
        Case {
            input: "a+",
            want: false,
        },
        Case {
            input: "a+G0",
            want: false,
        },
        Case {
            input: "caf\u{e9}",
            want: false,
        },
        Case {
            input: "a\r\nRSET",
            want: false,
        },
    ];
    for c in cases {
        assert_eq!(is_xtext(c.input), c.want, "{:?}", c.input);
    }
}

#[test]
fn orcpt_is_an_addr_type_and_xtext_within_500_octets() {
    assert!(is_orcpt("rfc822;a@example.net"));
    assert!(is_orcpt("RFC822;a+2Bb@example.net"));
    assert!(is_orcpt("utf-8;caf\\x{E9}@example.net"));
    assert!(!is_orcpt("a@example.net"));
    assert!(!is_orcpt(";a@example.net"));
    assert!(!is_orcpt("rfc 822;a@example.net"));
    assert!(!is_orcpt("rfc822;"));
    assert!(!is_orcpt("rfc822;a b@example.net"));
    let long = format!("rfc822;{}", "a".repeat(MAX_ORCPT_PARAM - "ORCPT=rfc822;".len()));
    assert!(is_orcpt(&long));
    assert!(!is_orcpt(&format!("{long}a")));
}

#[test]
fn notify_parses_and_prints_in_rfc_order() {
    struct Case {
        input: &'static str,
        want: Option<&'static str>,
    }
    let cases = [
        Case {
            input: "NEVER",
            want: Some("NEVER"),
        },
        Case {
            input: "never",
            want: Some("NEVER"),
        },
        Case {
            input: "DELAY,success",
            want: Some("SUCCESS,DELAY"),
        },
        Case {
            input: "FAILURE,DELAY,SUCCESS,FAILURE",
            want: Some("SUCCESS,FAILURE,DELAY"),
        },
        Case {
            input: "NEVER,SUCCESS",
            want: None,
        },
        Case {
            input: "SUCCESS,",
            want: None,
        },
        Case {
            input: "",
            want: None,
        },
        Case {
            input: "ALWAYS",
            want: None,
        },
    ];
    for c in cases {
        let got = Notify::parse(c.input).map(Notify::to_param);
        assert_eq!(got.as_deref(), c.want, "{:?}", c.input);
    }
    assert_eq!(RcptDsn::default().wants(), Notify::DEFAULT);
    assert_eq!(Ret::parse("hdrs"), Some(Ret::Hdrs));
    assert_eq!(Ret::parse("ALL"), None);
}

#[test]
fn an_empty_request_is_not_written_and_a_missing_recipient_has_none() {
    let empty = DsnRequest::default();
    assert!(empty.is_empty());
    assert_eq!(empty.rcpt(3), RcptDsn::default());
    let only_blank_rcpts = DsnRequest {
        rcpts: vec![RcptDsn::default(); 2],
        ..DsnRequest::default()
    };
    assert!(only_blank_rcpts.is_empty());
}
