//! `CaptureTransport` writes the message bytes unchanged plus an envelope file, atomically.

use mailroom_sidecar::{
    message::Envelope,
    outbound::{CaptureTransport, Outcome, ReplyClass, Transport, capture::CapturedEnvelope},
};

#[tokio::test]
async fn capture_writes_eml_and_envelope_and_delivers_every_recipient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = CaptureTransport::new(dir.path().join("out"));
    let env = Envelope {
        sender: "app@example.com".into(),
        recipients: vec!["a@example.net".into(), "b@example.net".into()],
        smtputf8: true,
        received_at: 1_700_000_000,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    };
    let message = b"From: app@example.com\r\nSubject: x\r\n\r\n.body\r\n";
    for _ in 0..2 {
        let results = t.deliver(&env, &env.all_recipients(), message).await;
        assert_eq!(results.len(), 2);
        assert!(
            results
                .iter()
                .all(|r| r.outcome == Outcome::Delivered && r.class == ReplyClass::Ok)
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(t.dir())
        .expect("capture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "two .eml and two .json, no temp files: {names:?}");
    for eml in names.iter().filter(|n| n.ends_with(".eml")) {
        assert_eq!(std::fs::read(t.dir().join(eml)).expect("eml"), message);
        let json = t.dir().join(eml.replace(".eml", ".json"));
        let meta: CapturedEnvelope =
            serde_json::from_slice(&std::fs::read(json).expect("json")).expect("parses");
        assert_eq!(meta.mail_from, "app@example.com");
        assert_eq!(meta.rcpt_to, env.recipients);
        assert!(meta.smtputf8);
        assert_eq!(meta.received_at, 1_700_000_000);
    }
}

#[tokio::test]
async fn an_unwritable_directory_defers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").expect("file");
    let t = CaptureTransport::new(&file);
    let env = Envelope {
        sender: String::new(),
        recipients: vec!["a@example.net".into()],
        smtputf8: false,
        received_at: 0,
        dsn: Default::default(),
        origin: None,
        shadow: None,
    };
    let results = t
        .deliver(&env, &env.all_recipients(), b"Subject: x\r\n\r\n")
        .await;
    assert_eq!(results[0].outcome, Outcome::Deferred);
    assert!(
        results[0].diagnostic.contains("cannot write capture file"),
        "{}",
        results[0].diagnostic
    );
}
