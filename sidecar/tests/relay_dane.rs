//! DANE end to end (RFC 7672): the real `mailroom-sidecar` process validates DNSSEC up to the
//! trust anchor of a signed root zone served on loopback (`tests/peers/dnsserver.py --dnssec`,
//! dnspython signatures, a key made per run), looks up TLSA records of each MX host and
//! authenticates aiosmtpd receivers on 127.0.0.2/3 by them.

use mailroom_test_support::{
    certs::{spki_sha256, test_ca_for},
    peers::{DnsServer, PolicyServer, Upstream},
    relay::{Sidecar, direct_config, eventually, smtplib_send},
};
use std::path::Path;

fn config(dns: &DnsServer, smtp_port: u16, extra: &str) -> String {
    let anchor = dns.anchor.as_ref().expect("signed zone").display();
    direct_config(
        dns.port,
        smtp_port,
        &format!("    dane: \"on\"\n    dnssecTrustAnchorFile: {anchor}\n{extra}"),
    )
}

/// An aiosmtpd receiver on `address` offering STARTTLS with `cert` (a PEM chain) or none. Each
/// test has one MX host, so the port it binds is the one the sidecar connects to (and the one
/// the TLSA records name).
fn upstream(dir: &Path, address: &str, tls: Option<(&Path, &Path)>) -> Upstream {
    let mut args = vec!["--address", address];
    let (cert, key);
    if let Some((c, k)) = tls {
        cert = c.display().to_string();
        key = k.display().to_string();
        args.extend(["--tls", "starttls", "--cert", &cert, "--key", &key]);
    }
    Upstream::start(dir, &args)
}

fn send(sidecar: &Sidecar, to: &str) {
    let message = format!(
        "From: App <app@example.com>\r\nTo: {to}\r\nSubject: dane\r\nMessage-ID: <{to}>\r\n\r\nhello\r\n"
    );
    smtplib_send(sidecar.smtp, "app@example.com", &[to], message.as_bytes()).expect("accepted");
}

fn tls_metric(sidecar: &Sidecar, policy: &str, outcome: &str) -> f64 {
    let version = if outcome == "ok" || outcome == "testing_violation" {
        "TLSv1.3"
    } else {
        "none"
    };
    sidecar.metric(&format!(
        "mailroom_sidecar_outbound_tls_total{{outcome=\"{outcome}\",policy=\"{policy}\",version=\"{version}\"}}"
    ))
}

const DEFERRED_TLS: &str = r#"mailroom_sidecar_messages_deferred_total{reply_class="tls",route="direct",sender_domain="example.com"}"#;

/// Proves DANE-EE `3 1 1` (RFC 7672 3.1.1): a TLSA record for another key defers the mail
/// (`4.7.5`, counted `verify_failed` under policy `dane`) and nothing reaches the receiver;
/// once the zone publishes the receiver's key, the same message is delivered over TLS. The
/// certificate is issued by a CA the sidecar does not trust, so only DANE can accept it.
#[test]
fn dane_ee_mismatch_defers_until_the_tlsa_record_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca_for(&dir.path().join("ca"), "DNS:mx.dane.test");
    let other = test_ca_for(&dir.path().join("other"), "DNS:mx.dane.test");
    let mx = upstream(dir.path(), "127.0.0.2", Some((&ca.cert, &ca.key)));
    let port = mx.port;
    let zone = |hash: &str| {
        format!(
            "dane.test. 1 IN MX 10 mx.dane.test.
mx.dane.test. 1 IN A 127.0.0.2
_{port}._tcp.mx.dane.test. 1 IN TLSA 3 1 1 {hash}
"
        )
    };
    let dns = DnsServer::signed(dir.path(), &zone(&spki_sha256(&other.cert)));
    let sidecar = Sidecar::start(dir.path(), &config(&dns, port, ""));
    send(&sidecar, "u@dane.test");
    sidecar.wait_metric(DEFERRED_TLS, |v| v >= 1.0);
    assert!(
        tls_metric(&sidecar, "dane", "verify_failed") >= 1.0,
        "{}",
        sidecar.metrics()
    );
    assert!(
        mx.received().is_empty(),
        "nothing sent to an unauthenticated host"
    );
    assert!(
        sidecar.log().contains("4.7.5 mx.dane.test failed DANE"),
        "clear reason: {}",
        sidecar.log()
    );

    dns.publish(&zone(&spki_sha256(&ca.cert)));
    let got = eventually("delivery after the TLSA fix", || {
        let r = mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["tls"], true);
    assert_eq!(tls_metric(&sidecar, "dane", "ok"), 1.0, "{}", sidecar.metrics());
    assert!(sidecar.metric(r#"mailroom_sidecar_dane_lookups_total{result="usable"}"#) >= 2.0);
}

/// Proves DANE-TA `2 1 1` (RFC 7672 3.1.2): the receiver presents its certificate and the test
/// CA, the TLSA record names the CA's key, and the chain must validate to it *and* carry the
/// MX host name: `mx.ta.test` (in the certificate) is delivered, `mx2.ta.test` (same server,
/// same TLSA record, name not in the certificate) is deferred.
#[test]
fn dane_ta_validates_the_chain_and_the_mx_host_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca_for(&dir.path().join("ca"), "DNS:mx.ta.test");
    let mx = upstream(dir.path(), "127.0.0.3", Some((&ca.chain(), &ca.key)));
    let port = mx.port;
    let ta = spki_sha256(&ca.ca);
    let dns = DnsServer::signed(
        dir.path(),
        &format!(
            "ta.test. 1 IN MX 10 mx.ta.test.
mx.ta.test. 1 IN A 127.0.0.3
_{port}._tcp.mx.ta.test. 1 IN TLSA 2 1 1 {ta}
ta2.test. 1 IN MX 10 mx2.ta.test.
mx2.ta.test. 1 IN A 127.0.0.3
_{port}._tcp.mx2.ta.test. 1 IN TLSA 2 1 1 {ta}
"
        ),
    );
    let sidecar = Sidecar::start(dir.path(), &config(&dns, port, ""));
    send(&sidecar, "u@ta.test");
    let got = eventually("delivery authenticated by DANE-TA", || {
        let r = mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["rcpt_tos"][0], "u@ta.test");
    assert_eq!(tls_metric(&sidecar, "dane", "ok"), 1.0, "{}", sidecar.metrics());

    send(&sidecar, "v@ta2.test");
    sidecar.wait_metric(DEFERRED_TLS, |v| v >= 1.0);
    assert!(tls_metric(&sidecar, "dane", "verify_failed") >= 1.0);
    assert_eq!(mx.received().len(), 1, "the name mismatch was not delivered");
}

/// Proves DANE does not apply to an unsigned zone (RFC 7672 2.2): `plain.test` is delegated
/// insecurely from the signed root, its TLSA record (for a wrong key) is ignored, and the mail
/// goes with opportunistic TLS. Also proves the validating resolver accepts a provably insecure
/// delegation instead of treating it as bogus.
#[test]
fn insecure_zone_falls_back_to_opportunistic_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca_for(&dir.path().join("ca"), "DNS:mx.plain.test");
    let other = test_ca_for(&dir.path().join("other"), "DNS:mx.plain.test");
    let mx = upstream(dir.path(), "127.0.0.2", Some((&ca.cert, &ca.key)));
    let port = mx.port;
    let dns = DnsServer::signed(
        dir.path(),
        &format!(
            "; INSECURE plain.test.
plain.test. 1 IN MX 10 mx.plain.test.
mx.plain.test. 1 IN A 127.0.0.2
_{port}._tcp.mx.plain.test. 1 IN TLSA 3 1 1 {}
",
            spki_sha256(&other.cert)
        ),
    );
    let sidecar = Sidecar::start(dir.path(), &config(&dns, port, ""));
    send(&sidecar, "u@plain.test");
    let got = eventually("delivery without DANE", || {
        let r = mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["tls"], true);
    assert_eq!(
        tls_metric(&sidecar, "opportunistic", "ok"),
        1.0,
        "{}",
        sidecar.metrics()
    );
    assert_eq!(tls_metric(&sidecar, "dane", "ok"), 0.0);
    assert!(sidecar.metric(r#"mailroom_sidecar_dane_lookups_total{result="insecure"}"#) >= 1.0);
}

/// Proves a bogus answer (RFC 4035 5.5: a corrupted RRSIG over the MX records) is a DNS
/// failure: the mail is deferred (reply class `dns`) and the receiver, which offers no TLS, gets
/// nothing, so a forged answer cannot downgrade delivery to plain text. Once the signatures are
/// good again the message is delivered.
#[test]
fn bogus_signatures_defer_and_never_fall_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mx = upstream(dir.path(), "127.0.0.2", None);
    let port = mx.port;
    let good = "bogus.test. 1 IN MX 10 mx.bogus.test.\nmx.bogus.test. 1 IN A 127.0.0.2\n";
    let dns = DnsServer::signed(dir.path(), &format!("; BOGUS bogus.test.\n{good}"));
    let sidecar = Sidecar::start(dir.path(), &config(&dns, port, ""));
    send(&sidecar, "u@bogus.test");
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="dns",route="direct",sender_domain="example.com"}"#,
        |v| v >= 2.0,
    );
    assert!(mx.received().is_empty(), "nothing delivered on a bogus answer");
    assert!(
        sidecar.log().contains("DNSSEC validation failed"),
        "{}",
        sidecar.log()
    );
    dns.publish(good);
    eventually("delivery once the zone validates", || {
        (mx.received().len() == 1).then_some(())
    });
}

/// Proves DANE takes precedence over MTA-STS (RFC 8461 2, RFC 7672 2.2): `pre.test` publishes
/// an enforced MTA-STS policy that names a different MX host, so MTA-STS alone would defer
/// (see `relay_mta_sts.rs`), but its MX host has a secure, matching TLSA record and the mail is
/// delivered under policy `dane`. The certificate is not WebPKI-valid for the sidecar either.
#[test]
fn dane_takes_precedence_over_mta_sts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = test_ca_for(&dir.path().join("web"), "DNS:mta-sts.pre.test");
    let smtp = test_ca_for(&dir.path().join("smtp"), "DNS:mx.pre.test");
    let mx = upstream(dir.path(), "127.0.0.2", Some((&smtp.cert, &smtp.key)));
    let port = mx.port;
    let https = PolicyServer::start(dir.path(), "127.0.0.3", &web);
    https.publish(
        "pre.test",
        "version: STSv1\r\nmode: enforce\r\nmx: policy-only.pre.test\r\nmax_age: 86400\r\n",
    );
    let dns = DnsServer::signed(
        dir.path(),
        &format!(
            "pre.test. 1 IN MX 10 mx.pre.test.
mx.pre.test. 1 IN A 127.0.0.2
_{port}._tcp.mx.pre.test. 1 IN TLSA 3 1 1 {}
_mta-sts.pre.test. 1 IN TXT \"v=STSv1; id=1\"
mta-sts.pre.test. 1 IN A 127.0.0.3
",
            spki_sha256(&smtp.cert)
        ),
    );
    let extra = format!(
        "    mtaSts: enforce\n    mtaStsPort: {}\n    caFile: {}\n",
        https.port,
        web.ca.display()
    );
    let sidecar = Sidecar::start(dir.path(), &config(&dns, port, &extra));
    send(&sidecar, "u@pre.test");
    eventually("delivery authenticated by DANE", || {
        (mx.received().len() == 1).then_some(())
    });
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_mta_sts_policies_total{result="enforce"}"#),
        1.0,
        "the policy was fetched and is enforced: {}",
        sidecar.metrics()
    );
    assert_eq!(tls_metric(&sidecar, "dane", "ok"), 1.0, "{}", sidecar.metrics());
}
