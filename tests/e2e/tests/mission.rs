//! The whole mission, as a platform team and an app team live it, on a real control plane: `helm
//! install` the chart, run the operator with the chart's ServiceAccount and webhook registration,
//! declare a MailDomain and publish its records to a real DNS server, declare a Relay, opt a
//! namespace and a pod in, run the injected sidecar as the kubelet would, send mail from a real
//! client, and watch it arrive (DKIM-verified by dkimpy against the published record) and show up
//! in a real Prometheus configured from the chart's monitors, rules and dashboard.
//!
//! Three scenarios: delivery through a STARTTLS+AUTH smarthost, a bounce (550 upstream, a DSN to
//! the sender, the bounce panel and alert), and staging `capture` mode.

use mailroom_e2e as common;

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use common::mission::{AppPod, Mission, condition};
use mailroom_test_support::{
    peers::{self, Upstream},
    prometheus::{self, Prometheus},
    stack::eventually,
};
use serde_json::Value;
use std::time::Duration;

/// Delivered, deferred and bounced recipients and DSNs sent, as Prometheus sees the sidecar.
#[derive(Debug, PartialEq)]
struct DeliverySummary {
    delivered: u64,
    deferred: u64,
    bounced: u64,
    dsns: u64,
}

/// The happy path. The MailDomain turns Ready and DnsVerified once its records are published;
/// a Relay to a smarthost that requires STARTTLS and AUTH turns Ready; a pod in the opted-in
/// namespace gets the sidecar; mail sent with Python's smtplib to `$SMTP_HOST:$SMTP_PORT` reaches
/// the smarthost over TLS, authenticated and DKIM-signed, and dkimpy verifies the signature with
/// the key it finds in DNS. Prometheus, configured from the chart's PodMonitor and
/// ServiceMonitor, shows the messages on the dashboard's delivery panels and the verified
/// records on its DNS panel; `kubectl get` shows both objects Ready. Deleting the Relay
/// garbage-collects its ConfigMap and DKIM Secret.
#[tokio::test]
async fn mail_from_an_opted_in_pod_reaches_the_smarthost_signed_and_shows_on_the_dashboard() -> Result<()> {
    let m = Mission::start().await?;
    declare_published_domain(&m).await?;
    let mut upstream = Upstream::starttls_with_auth(m.dir(), "mailer", "s3cret")?;
    declare_smarthost_relay(&m, &upstream).await?;
    m.opt_in_namespace().await?;
    let mut pod = m.run_pod("shop-0", "outbound").await?;

    send(&pod, &["someone@example.net"])?;
    let eml = upstream.wait_messages(1, &mut pod.proc)?.remove(0);
    let envelope = Upstream::envelope(&eml)?;
    assert_eq!(envelope["tls"], true, "{envelope}");
    assert_eq!(envelope["authenticated"], true, "{envelope}");
    assert_eq!(
        peers::dkim_verify_dns(&eml, m.dns.port)?,
        "d=example.com s=mailroom"
    );

    // rate() sees a counter move, not its first value: a second message moves the panels.
    let prom = m.prometheus(&pod).await?;
    wait_for_query(&prom, "mailroom_sidecar_messages_delivered_total", &mut pod)?;
    send(&pod, &["someone@example.net"])?;
    upstream.wait_messages(2, &mut pod.proc)?;
    let dashboard = m.dashboard().await?;
    let panels = [
        ("Messages per second [A]", "accepted"),
        ("Messages per second [B]", "delivered"),
        ("Delivery latency [A]", "p50"),
        ("DKIM signing [A]", "signed"),
        ("Reply classes from upstream [A]", "delivered"),
        ("DNS verification per MailDomain [A]", "verified"),
    ];
    for (panel, what) in panels {
        let value = panel_value(&prom, &m, &dashboard, panel, &mut pod)?;
        ensure!(value > 0.0, "{panel} ({what}) shows {value}");
    }

    let (columns, rows) = m.kubectl_get("maildomains", false).await?;
    assert_eq!(columns, ["Name", "Domain", "Ready", "Reason", "DNS", "Age"]);
    assert_eq!(
        rows[0][..5],
        ["example-com", "example.com", "True", "Reconciled", "True"]
    );
    let (columns, rows) = m.kubectl_get("relays", true).await?;
    eprintln!("kubectl get relays: {columns:?} {rows:?}");
    assert_eq!(
        columns,
        ["Name", "Mode", "Domains", "Ready", "Reason", "Pods", "Hub", "Age"]
    );
    assert_eq!(
        rows[0][..5],
        ["outbound", "smarthost", "[\"example-com\"]", "True", "Reconciled"]
    );

    for (plural, child) in [("configmaps", "outbound-sidecar"), ("secrets", "outbound-dkim")] {
        ensure!(
            m.exists(plural, child).await?,
            "{plural}/{child} missing before the delete"
        );
    }
    m.delete("Relay", "outbound").await?;
    m.wait_gone("configmaps", "outbound-sidecar").await?;
    m.wait_gone("secrets", "outbound-dkim").await?;

    assert_summary(
        &prom,
        DeliverySummary {
            delivered: 2,
            deferred: 0,
            bounced: 0,
            dsns: 0,
        },
    )?;
    Ok(())
}

/// A recipient the smarthost refuses with 550: the sidecar bounces it and sends an RFC 3464 DSN
/// back to the sender through the same smarthost (parsed by Python's email package), the
/// dashboard's bounce panels show it, and the chart's MailroomBounceRatioHigh alert, loaded by
/// the real Prometheus, goes pending. It cannot fire here: its `for:` is 15 minutes.
#[tokio::test]
async fn a_refused_recipient_bounces_to_the_sender_and_the_bounce_alert_goes_pending() -> Result<()> {
    let m = Mission::start().await?;
    declare_published_domain(&m).await?;
    let mut upstream = Upstream::starttls_with_auth(m.dir(), "mailer", "s3cret")?;
    declare_smarthost_relay(&m, &upstream).await?;
    m.opt_in_namespace().await?;
    let mut pod = m.run_pod("shop-0", "outbound").await?;
    let prom = m.prometheus(&pod).await?;

    // One delivered and one bounced recipient: the first message and its DSN.
    send(&pod, &["someone@example.net", "perm-fail-0@example.net"])?;
    let emls = upstream.wait_messages(2, &mut pod.proc)?;
    let dsn = dsn_to(&emls, "app@example.com")?;
    let report = peers::dsn_summary(&dsn)?;
    assert_eq!(report["content_type"], "multipart/report");
    assert_eq!(report["report_type"], "delivery-status");
    assert_eq!(report["defects"], serde_json::json!([]));
    let blocks = report["status_blocks"].as_array().context("status blocks")?;
    assert_eq!(blocks[1]["Final-Recipient"], "rfc822; perm-fail-0@example.net");
    assert_eq!(blocks[1]["Action"], "failed");
    assert_eq!(blocks[1]["Status"], "5.1.1");
    wait_for_query(&prom, "mailroom_sidecar_messages_bounced_total", &mut pod)?;

    // Twelve more bounces: over the alert's 5% ratio and its floor of 10 in 15 minutes.
    let refused: Vec<String> = (1..=12).map(|i| format!("perm-fail-{i}@example.net")).collect();
    send(&pod, &refused.iter().map(String::as_str).collect::<Vec<_>>())?;
    upstream.wait_messages(3, &mut pod.proc)?;
    let dashboard = m.dashboard().await?;
    for panel in [
        "Messages per second [D]",
        "Bounce and deferral ratios [A]",
        "Reply classes from upstream [C]",
        "DSNs sent [A]",
    ] {
        let value = panel_value(&prom, &m, &dashboard, panel, &mut pod)?;
        ensure!(value > 0.0, "{panel} shows {value}");
    }
    let alert = eventually("MailroomBounceRatioHigh pending", Duration::from_secs(60), || {
        pod.proc.check_running()?;
        Ok(prom
            .alerts()?
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "MailroomBounceRatioHigh"))
    })?;
    assert_eq!(alert["state"], "pending", "{alert}");
    assert_eq!(alert["labels"]["namespace"], m.app_ns.as_str());
    assert_eq!(alert["labels"]["relay"], "outbound");
    let rule = prom
        .alert_rules()?
        .into_iter()
        .find(|r| r["name"] == "MailroomBounceRatioHigh")
        .context("the chart's bounce alert is loaded")?;
    assert_eq!(
        rule["duration"], 900.0,
        "for: 15m, so pending is as far as it gets here"
    );

    // Delivered: the one accepted recipient and the two DSNs (they go out like any message).
    assert_summary(
        &prom,
        DeliverySummary {
            delivered: 3,
            deferred: 0,
            bounced: 13,
            dsns: 2,
        },
    )?;
    Ok(())
}

/// Staging: a Relay with `delivery: {capture: {}}` keeps every message, DKIM-signed, as a file in
/// the sidecar's capture volume, and nothing connects to the smarthost the other Relays use.
#[tokio::test]
async fn a_capture_relay_keeps_signed_mail_in_the_pod_and_sends_nothing() -> Result<()> {
    let m = Mission::start().await?;
    declare_published_domain(&m).await?;
    let upstream = Upstream::plain(m.dir())?;
    m.apply(&format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: Relay
metadata: {{name: staging, namespace: {ns}}}
spec:
  domains: [example-com]
  listenPort: {port}
  delivery: {{capture: {{}}}}",
        ns = m.app_ns,
        port = LISTEN_PORT,
    ))
    .await?;
    let relay = m.wait_condition("Relay", "staging", "Ready").await?;
    assert_eq!(relay["status"]["mode"], "capture");
    m.opt_in_namespace().await?;
    let mut pod = m.run_pod("shop-staging-0", "staging").await?;

    send(&pod, &["someone@example.net", "perm-fail@example.net"])?;
    let capture = capture_dir(&pod)?;
    let eml = eventually("a captured message", Duration::from_secs(30), || {
        pod.proc.check_running()?;
        Ok(std::fs::read_dir(&capture)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "eml")))
    })?;
    assert_eq!(
        peers::dkim_verify_dns(&eml, m.dns.port)?,
        "d=example.com s=mailroom"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(eml.with_extension("json"))?)?;
    assert_eq!(envelope["mail_from"], "app@example.com");
    assert_eq!(
        envelope["rcpt_to"],
        serde_json::json!(["someone@example.net", "perm-fail@example.net"])
    );
    assert_eq!(upstream.connections(), 0, "capture mode must not send");
    Ok(())
}

/// The MailDomain, its records published exactly as its status lists them, Ready and DnsVerified.
async fn declare_published_domain(m: &Mission) -> Result<()> {
    // The MailDomain the platform team declares.
    let extra = "  spf: {includes: [spf.provider.example.net]}\n  dmarc: {policy: none}\n";
    m.apply(&m.mail_domain(extra)).await?;
    let domain = m.wait_condition("MailDomain", "example-com", "Ready").await?;
    assert_eq!(
        condition(&domain, "DnsVerified").0,
        "False",
        "nothing is published yet"
    );
    let zone = m.publish_dns_records(&domain)?;
    assert_eq!(zone.len(), 3, "DKIM, SPF and DMARC: {zone:?}");
    m.wait_condition("MailDomain", "example-com", "DnsVerified")
        .await?;
    Ok(())
}

/// Relay `outbound` to `upstream` with STARTTLS, AUTH and the upstream's CA, Ready.
async fn declare_smarthost_relay(m: &Mission, upstream: &Upstream) -> Result<()> {
    m.smarthost_secrets(upstream, "mailer", "s3cret").await?;
    m.apply(&format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: Relay
metadata: {{name: outbound, namespace: {ns}}}
spec:
  domains: [example-com]
  listenPort: {port}
  delivery:
    smarthost:
      host: 127.0.0.1
      port: {upstream}
      tls: starttls
      credentialsSecretRef: {{name: smarthost-credentials}}
      caSecretRef: {{name: smarthost-ca, key: ca.crt}}",
        ns = m.app_ns,
        port = LISTEN_PORT,
        upstream = upstream.port,
    ))
    .await?;
    m.wait_condition("Relay", "outbound", "Ready").await?;
    Ok(())
}

/// The Relays' `listenPort`: the port inside the pod (each pod has its own network namespace;
/// `Mission::run_pod` runs the sidecar on a port of its own on this machine).
const LISTEN_PORT: u16 = 2525;

/// Python's smtplib, as the app, to `$SMTP_HOST:$SMTP_PORT`, from app@example.com.
fn send(pod: &AppPod, to: &[&str]) -> Result<()> {
    peers::smtp_send(pod.smtp, "app@example.com", to)?.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Waits until Prometheus has scraped `series` from the sidecar.
fn wait_for_query(prom: &Prometheus, series: &str, pod: &mut AppPod) -> Result<()> {
    eventually(
        &format!("Prometheus to scrape {series}"),
        Duration::from_secs(60),
        || {
            pod.proc.check_running()?;
            Ok(prom.query(series)?.first().map(|_| ()))
        },
    )
}

/// The value one dashboard panel target shows (variables set to the app namespace, the Relay
/// and the domain), once it is above zero or after 60 s.
fn panel_value(
    prom: &Prometheus,
    m: &Mission,
    dashboard: &Value,
    panel: &str,
    pod: &mut AppPod,
) -> Result<f64> {
    let vars = [
        // One cluster, no `cluster` label: the variable at All (its allValue) matches everything.
        ("$cluster", ".*"),
        ("$namespace", m.app_ns.as_str()),
        ("$relay", "outbound"),
        ("$sender_domain", "example.com"),
        ("$__rate_interval", "1m"),
    ];
    prometheus::panel_value(prom, dashboard, &vars, panel, Duration::from_secs(60), || {
        pod.proc.check_running()
    })
}

/// Asserts the summary once Prometheus has scraped the last change (it scrapes every second).
fn assert_summary(prom: &Prometheus, want: DeliverySummary) -> Result<()> {
    let mut last = None;
    let _ = eventually("the delivery summary", Duration::from_secs(10), || {
        let got = summary(prom)?;
        let done = got == want;
        last = Some(got);
        Ok(done.then_some(()))
    });
    assert_eq!(last, Some(want));
    Ok(())
}

/// The counters behind the dashboard, summed over every label.
fn summary(prom: &Prometheus) -> Result<DeliverySummary> {
    let total = |metric: &str| -> Result<u64> {
        let v = prom.query(&format!("sum({metric})"))?;
        Ok(v.first().map(prometheus::sample_value).unwrap_or(0.0) as u64)
    };
    Ok(DeliverySummary {
        delivered: total("mailroom_sidecar_messages_delivered_total")?,
        deferred: total("mailroom_sidecar_messages_deferred_total")?,
        bounced: total("mailroom_sidecar_messages_bounced_total")?,
        dsns: total("mailroom_sidecar_dsn_sent_total")?,
    })
}

/// The saved message with the null reverse-path (aiosmtpd records it as `<>`) to `rcpt`: a DSN
/// (RFC 5321 4.5.5).
fn dsn_to(emls: &[PathBuf], rcpt: &str) -> Result<PathBuf> {
    for eml in emls {
        let env = Upstream::envelope(eml)?;
        if env["mail_from"] == "<>"
            && env["rcpt_tos"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == rcpt))
        {
            return Ok(eml.clone());
        }
    }
    let envelopes: Vec<Value> = emls
        .iter()
        .map(|e| Upstream::envelope(e))
        .collect::<Result<_>>()?;
    anyhow::bail!("no DSN to {rcpt} among {envelopes:#?}")
}

/// The host directory of the sidecar's capture volume.
fn capture_dir(pod: &AppPod) -> Result<PathBuf> {
    let mount = pod
        .sidecar
        .spec
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "mailroom-capture")
        .context("the capture volume is mounted")?;
    Ok(pod.sidecar.host_path(&mount.mount_path))
}
