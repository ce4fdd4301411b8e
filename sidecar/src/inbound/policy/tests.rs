use super::*;
use crate::{
    config::Config,
    message::{Envelope, MessageWriter},
    metrics::Metrics,
    spool::Spool,
};
use std::path::Path;

fn config() -> Config {
    let text = "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n  - domain: example.com\n  - domain: example.org\nspool:\n  dir: /s\ndelivery:\n  capture:\n    dir: /c\n";
    Config::parse(Path::new("t.yaml"), text).expect("valid config")
}

#[test]
fn envelope_sender_policy() {
    let c = config();
    let code = |sender: &str, utf8: bool| {
        envelope_sender(sender, utf8, &c).map_err(|(r, reason)| (format!("{} {}", r.code, r.status), reason))
    };
    assert_eq!(code("app@example.com", false), Ok(()));
    assert_eq!(code("app@EXAMPLE.org", false), Ok(()));
    assert_eq!(
        code("app@evil.com", false),
        Err(("550 5.7.1".to_string(), Some(RejectReason::SenderDomain)))
    );
    assert_eq!(
        code("j\u{f6}rg@example.com", false),
        Err(("553 5.6.7".to_string(), None))
    );
    assert_eq!(code("j\u{f6}rg@example.com", true), Ok(()));
    assert_eq!(
        code("", false),
        Ok(()),
        "RFC 1123 5.2.9: the null reverse-path is supported"
    );
}

struct Case {
    header: &'static str,
    want: Result<(), &'static str>,
}

#[test]
fn header_from_policy_table() {
    let cases = [
        Case {
            header: "From: a@example.com\r\n\r\n",
            want: Ok(()),
        },
        Case {
            header: "From: A <a@EXAMPLE.com>\r\nTo: x@y\r\n\r\n",
            want: Ok(()),
        },
        Case {
            header: "From: \"b@evil.com\" <a@example.org>\r\n\r\n",
            want: Ok(()),
        },
        Case {
            header: "From: a@evil.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
        Case {
            header: "From: a@example.com, b@evil.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
        Case {
            header: "From: a@example.com\r\nFrom: b@evil.com\r\n\r\n",
            want: Err("550 5.6.0"),
        },
        Case {
            header: "To: x@y\r\n\r\n",
            want: Err("550 5.6.0"),
        },
        Case {
            header: "\r\n",
            want: Err("550 5.6.0"),
        },
        Case {
            header: "From: undisclosed:;\r\n\r\n",
            want: Err("550 5.6.0"),
        },
        Case {
            header: "From: a@example.com\r\nSender: b@example.org\r\n\r\n",
            want: Ok(()),
        },
        Case {
            header: "From: a@example.com\r\nSender: b@evil.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
        Case {
            header: "From: a@example.com\r\nResent-From: r@example.com\r\nResent-Sender: s@example.org\r\n\r\n",
            want: Ok(()),
        },
        Case {
            header: "From: a@example.com\r\nResent-From: r@evil.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
        Case {
            header: "Resent-Sender: s@evil.com\r\nFrom: a@example.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
        Case {
            header: "From: a@example.com\r\nResent-From: one@example.com\r\nResent-From: two@evil.com\r\n\r\n",
            want: Err("550 5.7.1"),
        },
    ];
    let config = config();
    for case in cases {
        let got =
            header_from(case.header.as_bytes(), &config).map_err(|r| format!("{} {}", r.code, r.status));
        assert_eq!(got, case.want.map_err(String::from), "{:?}", case.header);
    }
}

#[test]
fn denied_originator_reply_names_the_field_and_the_domain() {
    let err =
        header_from(b"From: a@example.com\r\nSender: x@evil.com\r\n\r\n", &config()).expect_err("denied");
    assert!(
        err.text.contains("Sender:") && err.text.contains("evil.com"),
        "{err}"
    );
}

#[test]
fn denied_from_reply_names_the_domain() {
    let err = header_from(b"From: a@evil.com\r\n\r\n", &config()).expect_err("denied");
    assert!(err.text.contains("evil.com"), "{err}");
}

async fn put(sink: &impl MessageSink) -> Result<(), SinkError> {
    let mut w = sink.begin().await?;
    w.write(b"x\r\n").await?;
    w.commit(Envelope {
        sender: "app@example.com".into(),
        recipients: vec!["x@example.net".into()],
        smtputf8: false,
        received_at: 1,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    })
    .await
    .map(|_| ())
}

#[tokio::test]
async fn rate_limit_refuses_clients_but_not_the_sidecars_own_bounces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = crate::config::Spool {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 30,
        max_messages: 1000,
        reserve_bytes: 64 << 10,
    };
    let (spool, _, _) = Spool::open(&cfg, Metrics::new()).expect("open");
    let rate = RateLimit::default();
    let sink = RateLimited::new(spool.clone(), rate.clone());
    rate.set(Some(2));
    put(&sink).await.expect("first");
    put(&sink).await.expect("second");
    assert_eq!(put(&sink).await.err(), Some(SinkError::RateLimited));
    spool.begin_internal().expect("bounces are not rate limited");
    rate.set(Some(2));
    assert_eq!(
        put(&sink).await.err(),
        Some(SinkError::RateLimited),
        "an unchanged rate keeps its state"
    );
    rate.set(None);
    put(&sink).await.expect("no limit any more");
}
