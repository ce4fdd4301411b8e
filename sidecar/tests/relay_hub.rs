//! The hub (docs/hub.md), with real processes: a sidecar hands its queue to its Relay's hub when
//! it drains, the hub keeps it through its own crash, and refuses everyone without the Relay's
//! credential. Independent peers: upstream.py (aiosmtpd), smtplib and ssl (bulk_send.py,
//! hub_probe.py), dkimpy and the email package (bulk_check.py).

use mailroom_test_support::{
    hub::{all_arrived_intact, app_config, bulk_send, drain_line, hub_config, probe, setup, within},
    peers::Upstream,
    ports::Reservation,
    relay::{self, Sidecar, reserve_port},
    stack,
};
use serde_json::Value;
use std::time::Duration;

/// Proof 1 of docs/hub.md: the smarthost is down, 1,000 messages wait in an app pod's sidecar,
/// and the pod goes away (SIGTERM). The sidecar hands all of them to the hub and leaves nothing;
/// the hub holds them, and once the smarthost is back it delivers every one, byte for byte, with
/// the sidecar's DKIM signature and no second one.
#[test]
fn a_drained_pod_hands_its_queue_to_the_hub_and_the_hub_delivers_it() {
    const COUNT: usize = 1000;
    let s = setup();
    let smarthost: Reservation = reserve_port();
    let port = smarthost.port();
    let hub = Sidecar::start(
        &s.dir.path().join("hub"),
        &hub_config(port, &s.ca, &s.creds, &s.key),
    );
    let mut app = Sidecar::start_with_env(
        &s.dir.path().join("app"),
        &app_config(port, hub.smtp.port(), &s.ca, &s.creds, &s.key, ""),
        &[("SIDECAR_DRAIN_SECONDS", "40")],
    );
    bulk_send(app.smtp, COUNT);
    assert_eq!(
        app.terminate(),
        Some(0),
        "the sidecar exits cleanly after its drain"
    );
    let report = drain_line(&app.log());
    assert!(
        report.contains("drain complete") && report.contains(&format!("handed_off={COUNT}")),
        "the drain handed every message to the hub and left nothing: {report}"
    );
    let held = hub.metric("mailroom_sidecar_handoff_received_total{result=\"queued\"}");
    assert_eq!(held as usize, COUNT, "the hub queued each message once");
    assert_eq!(
        hub.metric("mailroom_sidecar_messages_delivered_total"),
        0.0,
        "nothing was delivered while the smarthost was down"
    );
    let up = Upstream::start_on(&s.dir.path().join("up"), &smarthost, &["--tls", "none"]);
    // The hub's route was parked while the smarthost was down: its probe comes within a
    // parking period (30 s, then 60 s).
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(150));
    let duplicates = check["duplicates"].as_u64().expect("duplicates");
    assert!(
        duplicates * 1000 <= COUNT as u64,
        "duplicates at most 0.1 %: {check}"
    );
}

/// Proof 2 of docs/hub.md: the hub is killed (SIGKILL) while a sidecar hands off to it and it
/// delivers. Its spool replays in the next hub process; the sidecar keeps what the hub did not
/// take, and hands it off again at its next stop; the hub takes each message once. Nothing is
/// lost.
#[test]
fn a_hub_killed_during_hand_offs_and_deliveries_loses_nothing() {
    const COUNT: usize = 600;
    let s = setup();
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    // The app's own route is down, so that everything goes through the hub.
    let down = reserve_port();
    let mut hub = Sidecar::start(
        &s.dir.path().join("hub"),
        &hub_config(up.port, &s.ca, &s.creds, &s.key),
    );
    let mut app = Sidecar::start_with_env(
        &s.dir.path().join("app"),
        // One connection, so that the hand-off takes long enough to be cut in the middle.
        &app_config(
            down.port(),
            hub.smtp.port(),
            &s.ca,
            &s.creds,
            &s.key,
            "  maxConnections: 1\n",
        ),
        &[("SIDECAR_DRAIN_SECONDS", "20")],
    );
    bulk_send(app.smtp, COUNT);
    let admin = hub.admin;
    let terminating = std::thread::spawn(move || {
        let code = app.terminate();
        (app, code)
    });
    within(Duration::from_secs(30), "the hub taking hand-offs", || {
        let text = stack::http_get(admin, "/metrics").ok()?.1;
        (relay::metric_value(
            &text,
            "mailroom_sidecar_handoff_received_total{result=\"queued\"}",
        ) >= 20.0)
            .then_some(())
    });
    hub.kill9();
    let (mut app, code) = terminating.join().expect("terminate thread");
    assert_eq!(code, Some(0));
    let report = drain_line(&app.log());
    assert!(
        report.contains("drain ended") && report.contains("hub_unreachable="),
        "the hub died during the hand-off: the sidecar kept the rest, and says why: {report}"
    );
    hub.restart();
    // The next start of the app pod (in Kubernetes: its next pod reads no emptyDir, but a
    // restarted container does) hands off the rest; the hub replayed its own spool.
    app.restart();
    assert_eq!(app.terminate(), Some(0));
    let report = drain_line(&app.log());
    assert!(report.contains("drain complete"), "{report}");
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(60));
    eprintln!("hub killed during hand-off: {check}");
}

/// Proof 4 of docs/hub.md: a client without TLS, without AUTH, with another Relay's credential,
/// or trying XHANDOFF unauthenticated is refused, and nothing it sends is queued.
#[test]
fn a_hub_refuses_everyone_without_the_relays_credential() {
    let s = setup();
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    let hub = Sidecar::start(
        &s.dir.path().join("hub"),
        &hub_config(up.port, &s.ca, &s.creds, &s.key),
    );
    let plain = probe(&hub, &s.ca, "plain", None);
    let raw = plain["replies"][0]["raw"].as_str().unwrap_or("");
    assert!(!raw.contains("250"), "no SMTP in clear text: {plain}");
    for mode in ["noauth", "handoff"] {
        let r = probe(&hub, &s.ca, mode, None);
        assert_eq!(r["replies"][1][0], 530, "{mode}: MAIL needs AUTH: {r}");
        assert_ne!(r["replies"][3][0], 250, "{mode}: no message accepted: {r}");
    }
    let other = probe(
        &hub,
        &s.ca,
        "login",
        Some(("relay-shop-other", "another relay's password")),
    );
    assert_eq!(other["replies"][1][0], 535, "another Relay's credential: {other}");
    assert_eq!(other["replies"][2][0], 530, "{other}");
    let wrong = probe(&hub, &s.ca, "login", Some(("shop-outbound", "guess")));
    assert_eq!(wrong["replies"][1][0], 535, "{wrong}");
    assert_eq!(hub.metric("mailroom_sidecar_auth_failures_total"), 2.0);
    assert_eq!(
        hub.metric("mailroom_sidecar_messages_received_total{reason=\"none\",result=\"accepted\"}"),
        0.0,
        "nothing was queued"
    );
    assert_eq!(hub.metric("mailroom_sidecar_queue_messages"), 0.0);
    // The Relay's own credential gets in (the refusals above are not a broken hub).
    let ok = probe(
        &hub,
        &s.ca,
        "login",
        Some(("shop-outbound", "correct horse battery")),
    );
    assert_eq!(ok["replies"][1][0], 235, "{ok}");
    assert_eq!(ok["replies"][4][0], 250, "{ok}");
}

/// `handoff.afterParkedSeconds`: while the route stays parked, a running sidecar hands its mail
/// to the hub instead of holding it (small pod spools during a long outage).
#[test]
fn a_long_parked_route_sends_the_queue_to_the_hub_while_the_pod_runs() {
    const COUNT: usize = 50;
    let s = setup();
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    let down = reserve_port();
    let hub = Sidecar::start(
        &s.dir.path().join("hub"),
        &hub_config(up.port, &s.ca, &s.creds, &s.key),
    );
    let app = Sidecar::start(
        &s.dir.path().join("app"),
        &app_config(
            down.port(),
            hub.smtp.port(),
            &s.ca,
            &s.creds,
            &s.key,
            "  afterParkedSeconds: 1\n",
        ),
    );
    bulk_send(app.smtp, COUNT);
    within(Duration::from_secs(60), "the queue handed to the hub", || {
        let handed = app.metric("mailroom_sidecar_handoff_messages_total{result=\"accepted\"}");
        (handed as usize == COUNT).then_some(())
    });
    assert_eq!(
        app.metric("mailroom_sidecar_route_parked{route=\"smarthost\"}"),
        1.0
    );
    let check = all_arrived_intact(&up, COUNT, &s.txt, Duration::from_secs(60));
    assert_eq!(check["duplicates"], 0, "{check}");
    within(Duration::from_secs(10), "the pod's queue gauge at 0", || {
        (app.metric("mailroom_sidecar_queue_messages") == 0.0).then_some(())
    });
    assert_eq!(
        app.metric("mailroom_sidecar_handoff_messages_total{result=\"failed\"}"),
        0.0
    );
}

/// Only the recipients not yet delivered go over, with their DSN parameters and the message's
/// arrival time, and the hub does not sign again (the hub here captures what it would send).
#[test]
fn a_hand_off_carries_only_the_remaining_recipients_with_their_dsn_parameters() {
    let s = setup();
    let up = Upstream::start(&s.dir.path().join("up"), &["--tls", "none"]);
    let capture = s.dir.path().join("hub/capture");
    let hub_config = hub_config(1, &s.ca, &s.creds, &s.key).replace(
        "delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: 1\n    tls: none\n    connectTimeoutSeconds: 2\n    commandTimeoutSeconds: 10\n",
        &format!("delivery:\n  capture:\n    dir: {}\n", capture.display()),
    );
    assert!(hub_config.contains("capture:"), "{hub_config}");
    let hub = Sidecar::start(&s.dir.path().join("hub"), &hub_config);
    let mut app = Sidecar::start(
        &s.dir.path().join("app"),
        &app_config(up.port, hub.smtp.port(), &s.ca, &s.creds, &s.key, ""),
    );
    let before = mailroom_sidecar::message::now_secs();
    relay::smtp_accepted(
        app.smtp,
        &[
            "MAIL FROM:<app@example.com> RET=HDRS ENVID=env-42",
            "RCPT TO:<ok@example.net> NOTIFY=NEVER",
            "RCPT TO:<temp-fail@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;temp-fail@example.net",
        ],
        b"From: app@example.com\r\nTo: ok@example.net\r\nSubject: split\r\n\r\nbody\r\n",
    );
    within(
        Duration::from_secs(30),
        "ok@ delivered, temp-fail@ deferred",
        || {
            let delivered = app.metric("mailroom_sidecar_messages_delivered_total");
            let deferred = app.metric("mailroom_sidecar_messages_deferred_total");
            (delivered >= 1.0 && deferred >= 1.0).then_some(())
        },
    );
    assert_eq!(app.terminate(), Some(0));
    let log = app.log();
    let report = drain_line(&log);
    assert!(report.contains("handed_off=1"), "{report}");
    // The trail: ok@ delivered here, temp-fail@ handed off (the hub answered), one line each.
    let trail = |what: &str| log.lines().filter(|l| l.contains(what)).collect::<Vec<_>>();
    assert_eq!(trail("recipient delivered").len(), 1, "{log}");
    let [handed] = &trail("recipient handed off")[..] else {
        panic!("one hand-off line: {log}")
    };
    assert!(
        handed.contains("route=\"hub\"") || handed.contains("route=hub"),
        "{handed}"
    );
    assert!(handed.contains("***@example.net"), "{handed}");
    // The capture writes a message's .json and .eml one after the other: wait for both.
    let envelope = within(Duration::from_secs(30), "the hub's capture", || {
        let files: Vec<_> = std::fs::read_dir(&capture).ok()?.filter_map(Result::ok).collect();
        files
            .iter()
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"))?;
        let json = files
            .iter()
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))?;
        serde_json::from_slice::<Value>(&std::fs::read(json.path()).ok()?).ok()
    });
    assert_eq!(
        envelope["rcpt_to"],
        serde_json::json!(["temp-fail@example.net"]),
        "{envelope}"
    );
    let text = envelope.to_string();
    for want in ["env-42", "rfc822;temp-fail@example.net"] {
        assert!(text.contains(want), "DSN parameter {want} travelled: {envelope}");
    }
    let received_at = envelope["received_at"].as_u64().expect("received_at");
    assert!(
        received_at >= before && received_at <= mailroom_sidecar::message::now_secs(),
        "{envelope}"
    );
    let eml = std::fs::read_dir(&capture)
        .expect("capture")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .expect("eml");
    let message = std::fs::read_to_string(eml.path()).expect("eml text");
    assert_eq!(message.matches("DKIM-Signature:").count(), 1, "{message}");
}

/// A Relay that gets a hub later: pods injected before have no credential mounted, and their
/// reloads must still apply (without a hand-off); once the files are there, a reload turns the
/// hand-off on and the next drain uses it.
#[test]
fn a_hub_added_by_reload_is_used_and_missing_credential_files_do_not_block_reloads() {
    let s = setup();
    let down = reserve_port();
    let hub = Sidecar::start(
        &s.dir.path().join("hub"),
        &hub_config(down.port(), &s.ca, &s.creds, &s.key),
    );
    let without = app_config(down.port(), hub.smtp.port(), &s.ca, &s.creds, &s.key, "");
    let plain = without.split("handoff:").next().expect("config head").to_string();
    let mut app = Sidecar::start(&s.dir.path().join("app"), &plain);
    let missing = without.replace(&s.ca.ca.display().to_string(), "/nonexistent/hub/ca.crt");
    app.swap_config(&missing);
    app.wait_metric("mailroom_sidecar_config_reloads_total", |v| v >= 1.0);
    assert_eq!(app.metric("mailroom_sidecar_config_reload_failures_total"), 0.0);
    assert!(app.log().contains("will not hand off"), "{}", app.log());
    app.swap_config(&without);
    app.wait_metric("mailroom_sidecar_config_reloads_total", |v| v >= 2.0);
    bulk_send(app.smtp, 20);
    assert_eq!(app.terminate(), Some(0));
    let report = drain_line(&app.log());
    assert!(report.contains("handed_off=20"), "{report}");
}

/// A hand-off that cannot reach the hub at the start of a drain (a DNS or connection hiccup) is
/// tried again within the drain: the hub that comes up a moment later gets every message.
#[test]
fn a_drain_tries_again_when_the_hub_was_not_reachable_at_first() {
    const COUNT: usize = 20;
    let s = setup();
    let down = reserve_port();
    let hub_port = reserve_port();
    let mut app = Sidecar::start_with_env(
        &s.dir.path().join("app"),
        &app_config(down.port(), hub_port.port(), &s.ca, &s.creds, &s.key, ""),
        &[("SIDECAR_DRAIN_SECONDS", "30")],
    );
    bulk_send(app.smtp, COUNT);
    let log = app.log_handle();
    let terminating = std::thread::spawn(move || {
        let code = app.terminate();
        (app, code)
    });
    within(Duration::from_secs(20), "a first hand-off failing", || {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains("hand-off to the hub failed")
            .then_some(())
    });
    let listen = format!("127.0.0.1:{}", hub_port.port());
    drop(hub_port);
    let hub = Sidecar::start_with_env(
        &s.dir.path().join("hub"),
        &hub_config(down.port(), &s.ca, &s.creds, &s.key),
        &[("SIDECAR_LISTEN_ADDR", &listen)],
    );
    let (app, code) = terminating.join().expect("terminate thread");
    assert_eq!(code, Some(0));
    let report = drain_line(&app.log());
    assert!(
        report.contains("drain complete") && report.contains(&format!("handed_off={COUNT}")),
        "the retry within the drain reached the hub: {report}"
    );
    assert_eq!(
        hub.metric("mailroom_sidecar_handoff_received_total{result=\"queued\"}") as usize,
        COUNT
    );
}
