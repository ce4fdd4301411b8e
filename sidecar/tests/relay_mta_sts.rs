//! MTA-STS end to end (RFC 8461): the real `mailroom-sidecar` process reads `_mta-sts` TXT
//! records from the loopback DNS server (`tests/peers/dnsserver.py`), fetches the policy over
//! HTTPS from `tests/peers/policy_server.py` (Python's http.server and ssl) with a
//! certificate from a test CA given as `caFile`, and delivers to aiosmtpd on 127.0.0.2.
//! `mtaStsPort` points the fetch at the test server's port instead of 443.

use mailroom_test_support::{
    certs::{TestCa, test_ca_for},
    peers::{DnsServer, PolicyServer, Upstream},
    relay::{Sidecar, direct_config, eventually, smtplib_send},
};
use std::path::Path;

fn config(dns: u16, smtp_port: u16, https_port: u16, ca: &Path) -> String {
    direct_config(
        dns,
        smtp_port,
        &format!(
            "    mtaSts: enforce\n    mtaStsPort: {https_port}\n    caFile: {}\n",
            ca.display()
        ),
    )
}

/// The receiver on 127.0.0.2 with STARTTLS and `ca`'s server certificate, the policy host on
/// 127.0.0.3 with the same certificate.
fn peers(dir: &Path, san: &str) -> (TestCa, u16, Upstream, PolicyServer) {
    let ca = test_ca_for(&dir.join("ca"), san);
    let (cert, key) = (ca.cert.display().to_string(), ca.key.display().to_string());
    // The only MX host: the port it binds is the one the sidecar connects to.
    let mx = Upstream::start(
        dir,
        &[
            "--address",
            "127.0.0.2",
            "--tls",
            "starttls",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
    );
    let https = PolicyServer::start(dir, "127.0.0.3", &ca);
    (ca, mx.port, mx, https)
}

fn zone(domain: &str, mx: &str) -> String {
    format!(
        "{domain}. 1 IN MX 10 {mx}.
{mx}. 1 IN A 127.0.0.2
_mta-sts.{domain}. 1 IN TXT \"v=STSv1; id=20261128\"
mta-sts.{domain}. 1 IN A 127.0.0.3
"
    )
}

fn send(sidecar: &Sidecar, to: &str) {
    let message = format!(
        "From: App <app@example.com>\r\nTo: {to}\r\nSubject: sts\r\nMessage-ID: <{to}>\r\n\r\nhi\r\n"
    );
    smtplib_send(sidecar.smtp, "app@example.com", &[to], message.as_bytes()).expect("accepted");
}

/// Proves `mode: enforce` (RFC 8461 5): while the domain's MX host is not in the policy, the
/// mail is deferred with a reason naming MTA-STS and nothing is sent; once the MX record names
/// a host the policy lists, with a certificate valid for it, the message is delivered under
/// policy `mta_sts`.
#[test]
fn enforce_defers_a_mismatching_mx_and_delivers_to_a_matching_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, port, mx, https) = peers(dir.path(), "DNS:mta-sts.sts.test,DNS:mx.sts.test");
    https.publish(
        "sts.test",
        "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n",
    );
    let dns = DnsServer::with_zone(dir.path(), &zone("sts.test", "rogue.sts.test"));
    let sidecar = Sidecar::start(dir.path(), &config(dns.port, port, https.port, &ca.ca));
    send(&sidecar, "u@sts.test");
    sidecar.wait_metric(
        r#"mailroom_sidecar_messages_deferred_total{reply_class="tls",route="direct",sender_domain="example.com"}"#,
        |v| v >= 1.0,
    );
    assert!(
        mx.received().is_empty(),
        "nothing sent to a host outside the policy"
    );
    assert!(
        sidecar
            .log()
            .contains("4.7.5 no MX host of sts.test matches its MTA-STS policy"),
        "clear reason: {}",
        sidecar.log()
    );
    assert!(sidecar.metric(r#"mailroom_sidecar_mta_sts_policies_total{result="enforce"}"#) >= 1.0);

    dns.publish(&zone("sts.test", "mx.sts.test"));
    let got = eventually("delivery to the policy's MX", || {
        let r = mx.received();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(got[0].meta["tls"], true);
    assert_eq!(
        sidecar.metric(
            r#"mailroom_sidecar_outbound_tls_total{outcome="ok",policy="mta_sts",version="TLSv1.3"}"#
        ),
        1.0,
        "{}",
        sidecar.metrics()
    );
}

/// Proves `mode: testing` (RFC 8461 5): an MX host outside the policy, whose certificate is not
/// valid for its name, still receives the mail, and the violation is logged and counted
/// (`testing_violation`) instead of enforced.
#[test]
fn testing_mode_delivers_and_reports_the_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, port, mx, https) = peers(dir.path(), "DNS:mta-sts.tst.test,DNS:mx.tst.test");
    https.publish(
        "tst.test",
        "version: STSv1\r\nmode: testing\r\nmx: mx.tst.test\r\nmax_age: 86400\r\n",
    );
    let dns = DnsServer::with_zone(dir.path(), &zone("tst.test", "rogue.tst.test"));
    let sidecar = Sidecar::start(dir.path(), &config(dns.port, port, https.port, &ca.ca));
    send(&sidecar, "u@tst.test");
    eventually("delivery despite the violation", || {
        (mx.received().len() == 1).then_some(())
    });
    assert_eq!(
        sidecar.metric(r#"mailroom_sidecar_mta_sts_policies_total{result="testing"}"#),
        1.0
    );
    assert_eq!(
        sidecar.metric(
            r#"mailroom_sidecar_outbound_tls_total{outcome="testing_violation",policy="mta_sts_testing",version="TLSv1.3"}"#
        ),
        1.0,
        "{}",
        sidecar.metrics()
    );
    assert!(
        sidecar.log().contains("does not match the mta-sts policy"),
        "{}",
        sidecar.log()
    );
}
