//! The chart's monitoring with the real tools: the PrometheusRule passes `promtool check rules` and
//! a promtool unit test per alert; every alert is documented and links its runbook; and a real
//! Prometheus scraping a real sidecar and a real operator (installed with the chart, running with
//! the chart's ServiceAccount and environment) returns data for every dashboard panel; and the
//! dashboard decodes strictly into Grafana's published dashboard types.

use mailroom_e2e as common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use common::{
    chart, documents, find, repo, run,
    stack::{self, Proc, eventually, http_get, urlencode},
    template,
};
use mailroom_test_support::{
    prometheus::{Prometheus, sample_value},
    testenv,
};
use serde_json::{Value, json};

/// The rules as the chart renders them into the PrometheusRule, the operator scraped too.
fn rendered_rules() -> Result<Value> {
    rules_with(&["--set", "prometheusRule.enabled=true,serviceMonitor.enabled=true"])
}

fn rules_with(set: &[&str]) -> Result<Value> {
    let docs = documents(&template("mailroom", "mailroom-system", set)?)?;
    Ok(find(&docs, "PrometheusRule", None)?["spec"].clone())
}

/// The group of the alerts about the operator itself (files/prometheus-rules-operator.yaml).
const OPERATOR_GROUP: &str = "mailroom-operator-health";

/// Without the operator's ServiceMonitor nothing scrapes it, and an alert on its absence would
/// always fire: the chart leaves those alerts out.
#[test]
fn operator_health_alerts_come_only_with_the_operators_scrape() -> Result<()> {
    let names = |rules: &Value| -> Vec<String> {
        alerts(rules)
            .iter()
            .filter_map(|a| a["alert"].as_str().map(str::to_owned))
            .collect()
    };
    let without = names(&rules_with(&["--set", "prometheusRule.enabled=true"])?);
    let with = names(&rendered_rules()?);
    for alert in ["MailroomOperatorAbsent", "MailroomOperatorNoLeader"] {
        ensure!(
            with.contains(&alert.to_string()),
            "{alert} with the ServiceMonitor: {with:?}"
        );
        ensure!(
            !without.contains(&alert.to_string()),
            "{alert} without it: {without:?}"
        );
    }
    ensure!(with.len() == without.len() + 2, "{with:?} / {without:?}");
    Ok(())
}

/// `prometheusRule.alerts` drops, retimes, reclassifies and relabels single alerts, and
/// `alertLabels` labels all of them; the result still passes `promtool check rules`. A name that
/// is no alert fails the render and lists the real ones.
#[test]
fn alerts_can_be_dropped_retimed_and_relabelled() -> Result<()> {
    let set = [
        "--set",
        "prometheusRule.enabled=true,serviceMonitor.enabled=true,prometheusRule.alertLabels.team=mail",
        "--set",
        "prometheusRule.alerts.MailroomHandoffFailing.enabled=false",
        "--set",
        "prometheusRule.alerts.MailroomQueueBackingUp.for=30m,prometheusRule.alerts.MailroomQueueBackingUp.severity=critical",
        "--set",
        "prometheusRule.alerts.MailroomOperatorAbsent.labels.pager=night",
    ];
    let tuned = rules_with(&set)?;
    let defaults = rendered_rules()?;
    let by_name = |rules: &Value, name: &str| -> Option<Value> {
        alerts(rules).into_iter().find(|a| a["alert"] == name).cloned()
    };
    ensure!(by_name(&tuned, "MailroomHandoffFailing").is_none(), "disabled");
    ensure!(alerts(&tuned).len() + 1 == alerts(&defaults).len());
    let queue = by_name(&tuned, "MailroomQueueBackingUp").context("queue alert")?;
    assert_eq!(queue["for"], "30m");
    assert_eq!(queue["labels"]["severity"], "critical");
    let absent = by_name(&tuned, "MailroomOperatorAbsent").context("absent alert")?;
    assert_eq!(absent["labels"]["pager"], "night");
    let default_absent = by_name(&defaults, "MailroomOperatorAbsent").context("absent alert")?;
    assert_eq!(absent["labels"]["severity"], default_absent["labels"]["severity"]);
    assert_eq!(absent["for"], default_absent["for"], "untouched");
    for alert in alerts(&tuned) {
        assert_eq!(alert["labels"]["team"], "mail", "{}", alert["alert"]);
    }

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&tuned)?)?;
    let out = run(testenv::command("promtool")?.args(["check", "rules"]).arg(&file))?;
    ensure!(out.contains("SUCCESS"), "{out}");

    let home = tempfile::tempdir()?;
    let out = common::run_fails(
        common::helm(home.path())?
            .args(["template", "x"])
            .arg(chart())
            .args([
                "--set",
                "prometheusRule.enabled=true,prometheusRule.alerts.MailroomQueueBackingUP.enabled=false",
            ]),
    )?;
    ensure!(
        out.contains("prometheusRule.alerts.MailroomQueueBackingUP: there is no such alert")
            && out.contains("MailroomQueueBackingUp"),
        "{out}"
    );
    Ok(())
}

fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// `mailroom_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("mailroom_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// `promtool check rules` and `promtool test rules` on exactly what the PrometheusRule carries.
#[test]
fn rules_pass_promtool_check_and_a_unit_test_per_alert() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("files"))?;
    std::fs::create_dir_all(dir.path().join("tests"))?;
    // Split as the chart's two files are, for the rule_files of the unit tests.
    let rendered = rendered_rules()?;
    let groups = rendered["groups"].as_array().context("groups")?;
    let (operator, sidecar): (Vec<&Value>, Vec<&Value>) =
        groups.iter().partition(|g| g["name"] == OPERATOR_GROUP);
    let rules = dir.path().join("files/prometheus-rules.yaml");
    std::fs::write(&rules, serde_yaml_ng::to_string(&json!({ "groups": sidecar }))?)?;
    let operator_rules = dir.path().join("files/prometheus-rules-operator.yaml");
    std::fs::write(
        &operator_rules,
        serde_yaml_ng::to_string(&json!({ "groups": operator }))?,
    )?;
    let tests = std::fs::read_to_string(chart().join("tests/alerts.test.yaml"))?;
    std::fs::write(dir.path().join("tests/alerts.test.yaml"), &tests)?;

    let out = run(testenv::command("promtool")?
        .args(["check", "rules"])
        .arg(&rules)
        .arg(&operator_rules))?;
    ensure!(out.contains("SUCCESS"), "{out}");
    let out = run(testenv::command("promtool")?
        .args(["test", "rules"])
        .arg(dir.path().join("tests/alerts.test.yaml")))?;
    ensure!(out.contains("SUCCESS"), "{out}");

    // Every alert has a case where it fires (exp_alerts) and one where it stays quiet.
    let test_doc: Value = serde_yaml_ng::from_str(&tests)?;
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for group in test_doc["tests"].as_array().into_iter().flatten() {
        for case in group["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap_or_default().to_string();
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for alert in alerts(&rendered_rules()?) {
        let name = alert["alert"].as_str().unwrap_or_default().to_string();
        ensure!(
            fires.contains(&name),
            "{name} has no promtool case where it fires"
        );
        ensure!(
            quiet.contains(&name),
            "{name} has no promtool case where it stays quiet"
        );
    }
    Ok(())
}

/// Every alert carries severity, summary, description and a runbook_url whose anchor is a section
/// of docs/runbooks.md, is explained in docs/monitoring.md, and only uses metrics we export.
#[test]
fn every_alert_is_documented_and_uses_only_exported_metrics() -> Result<()> {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md"))?;
    let monitoring = std::fs::read_to_string(repo().join("docs/monitoring.md"))?;
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let known = documented_metrics()?;
    for alert in alerts(&rendered_rules()?) {
        let name = alert["alert"].as_str().context("alert name")?;
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        ensure!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            ensure!(
                alert["annotations"][key].as_str().is_some_and(|s| !s.is_empty()),
                "{name} has no {key}"
            );
        }
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or_default();
        let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
        ensure!(
            url.starts_with("https://github.com/mailroom-dev/mailroom/blob/main/docs/runbooks.md#"),
            "{name}: {url}"
        );
        ensure!(
            anchors.contains(anchor),
            "{name}: docs/runbooks.md has no section `## {name}`"
        );
        ensure!(
            monitoring.contains(name),
            "{name} is not explained in docs/monitoring.md"
        );
        for metric in metric_names(alert["expr"].as_str().unwrap_or_default()) {
            ensure!(
                known.contains(&metric),
                "{name} uses {metric}, which nothing exports"
            );
        }
    }
    Ok(())
}

/// Metric names the sidecar documents (docs/metrics.md) and the operator registers
/// (operator/src/metrics.rs), with histogram series suffixes.
fn documented_metrics() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for file in ["docs/metrics.md", "operator/src/metrics.rs"] {
        let text = std::fs::read_to_string(repo().join(file))?;
        for name in metric_names(&text) {
            for suffix in ["", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    Ok(names)
}

/// Proves the dashboard against real data. The chart is installed on a real apiserver; the
/// operator runs as the chart's ServiceAccount with the Deployment's environment, reconciling a
/// MailDomain (DNS not published) and a Relay (credentials Secret missing) and answering one pod
/// admission. A real sidecar relays a known workload to a scripted upstream: delivered, deferred
/// (450), bounced (550, with its DSN), rejected (foreign sender) and DKIM-signed. Prometheus
/// scrapes both every second and loads the chart's rules. Then: `promtool check metrics` finds
/// nothing in either `/metrics`, every panel query (variables substituted) returns data, every
/// variable query returns its value, and no panel names a metric that is not exported.
/// `dashboard-check` (tests/env/go/dashboard-check: grafana-foundation-sdk's Dashboard, strict, with
/// every default panel and query plugin) accepts the chart's dashboard, and names the path of each
/// mistake planted in a copy: so the check reads what Grafana reads, and can fail.
#[test]
fn dashboard_decodes_strictly_into_grafanas_published_types() -> Result<()> {
    let path = chart().join("dashboards/mailroom.json");
    let out = testenv::command("dashboard-check")?.arg(&path).output()?;
    ensure!(
        out.status.success(),
        "dashboard-check rejects the chart's dashboard:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut bad: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let panels = bad["panels"].as_array_mut().context("panels")?;
    let i = panels
        .iter()
        .position(|p| p["type"] == "timeseries")
        .context("a timeseries panel")?;
    let panel = &mut panels[i];
    let grid = panel["gridPos"].take();
    panel["gridPoss"] = grid;
    panel["options"]["legend"]["showLegendd"] = json!(true);
    panel["targets"][0]["exprr"] = panel["targets"][0]["expr"].clone();
    bad["refresh"] = json!(30);
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("bad.json");
    std::fs::write(&copy, serde_json::to_vec_pretty(&bad)?)?;
    let out = testenv::command("dashboard-check")?.arg(&copy).output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    for want in [
        format!("$.panels[{i}].gridPoss: unexpected field"),
        format!("$.panels[{i}].options.legend.showLegendd: unexpected field"),
        format!("$.panels[{i}].targets[0].exprr: unexpected field"),
        "$.refresh: ".to_string(),
    ] {
        ensure!(report.contains(&want), "no `{want}` in:\n{report}");
    }
    Ok(())
}

#[tokio::test]
async fn every_dashboard_panel_returns_data_from_a_real_sidecar_and_operator() -> Result<()> {
    let bin = stack::build_binaries()?;
    let dir = tempfile::tempdir()?;
    let (operator, app_namespace) = common::operator::start(&bin, dir.path()).await?;
    let mut upstream = stack::Upstream::plain(dir.path())?;
    let mut sidecar = start_sidecar(&bin, dir.path(), upstream.port)?;
    let mut hub = start_hub(&bin, dir.path(), upstream.port)?;

    // promtool check metrics: no findings on either exposition.
    for (what, addr) in [
        ("sidecar", sidecar.1),
        ("operator", operator.admin),
        ("hub", hub.hub_admin),
    ] {
        let (_, text) = http_get(addr, "/metrics")?;
        let mut child = testenv::command("promtool")?
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, text.as_bytes())?;
        let out = child.wait_with_output()?;
        let findings = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success() && findings.trim().is_empty(),
            "promtool check metrics on the {what}:\n{findings}"
        );
    }

    let prom = start_prometheus(dir.path(), sidecar.1, operator.admin, &operator.namespace, &hub)?;
    let query = |q: &str| -> Result<Vec<Value>> { prom.query(q) };
    eventually("every target up", Duration::from_secs(60), || {
        Ok((query("sum(up)")?.first().map(sample_value) == Some(4.0)).then_some(()))
    })?;

    // The workload runs twice: the first round creates the series (a counter child appears with
    // its first increment, which rate() cannot see), the second one moves them.
    let smtp = sidecar.2;
    let workload = || -> Result<()> {
        stack::smtp_send(
            smtp,
            "app@example.com",
            &["ok@example.net", "temp-fail@example.net", "perm-fail@example.net"],
        )?
        .map_err(anyhow::Error::msg)?;
        for _ in 0..3 {
            stack::smtp_send(smtp, "app@example.com", &["ok@example.net"])?.map_err(anyhow::Error::msg)?;
        }
        let refused = stack::smtp_send(smtp, "app@elsewhere.org", &["ok@example.net"])?;
        ensure!(refused.is_err(), "a foreign sender must be rejected: {refused:?}");
        // The second pod's route is down: its mail goes to the hub once the route is parked.
        stack::smtp_send(hub.parked_smtp, "app@example.com", &["ok@example.net"])?
            .map_err(anyhow::Error::msg)?;
        common::operator::admit_one_pod(&operator, &app_namespace)
    };
    let moved = [
        r#"mailroom_sidecar_messages_received_total{result="accepted"}"#,
        r#"mailroom_sidecar_messages_received_total{result="rejected"}"#,
        r#"mailroom_sidecar_messages_delivered_total{sender_domain="example.com"}"#,
        "mailroom_sidecar_messages_deferred_total",
        "mailroom_sidecar_messages_bounced_total",
        "mailroom_sidecar_dsn_sent_total",
        "mailroom_sidecar_dkim_signatures_total",
        "mailroom_operator_webhook_admissions_total",
        r#"mailroom_sidecar_handoff_messages_total{result="accepted"}"#,
        r#"mailroom_sidecar_handoff_received_total{result="queued",role="hub"}"#,
        r#"mailroom_sidecar_shadow_copies_total{result="stored"}"#,
        r#"mailroom_sidecar_shadows_total{event="replaced",role="hub"}"#,
    ];
    let present = [
        "mailroom_operator_reconcile_failures_total",
        "mailroom_operator_dns_record_verified",
        "mailroom_operator_hub_ready_replicas",
        r#"mailroom_sidecar_shadows_held{role="hub"}"#,
    ];
    for round in ["series appear", "counters move"] {
        workload()?;
        for series in moved.iter().chain(if round == "series appear" {
            &present[..]
        } else {
            &[]
        }) {
            let q = if round == "series appear" {
                series.to_string()
            } else {
                format!("increase({series}[1m]) > 0")
            };
            eventually(&format!("{round}: {q}"), Duration::from_secs(60), || {
                sidecar.0.check_running()?;
                hub.hub.check_running()?;
                hub.parked.check_running()?;
                upstream.proc.check_running()?;
                Ok(query(&q)?.first().map(|_| ()))
            })?;
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        chart().join("dashboards/mailroom.json"),
    )?)?;
    let vars = [
        ("$cluster", CLUSTER),
        ("$namespace", "shop"),
        ("$relay", "outbound"),
        ("$sender_domain", "example.com"),
        ("$__rate_interval", "1m"),
    ];
    let substitute = |expr: &str| vars.iter().fold(expr.to_string(), |e, (k, v)| e.replace(k, v));
    let exported = exported_names(prom.addr)?;
    let mut summary = BTreeMap::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("target expr")?;
            for metric in metric_names(expr) {
                ensure!(
                    exported.contains(&metric),
                    "panel {title:?} uses {metric}, which nobody exports"
                );
            }
            let q = substitute(expr);
            ensure!(!q.contains('$'), "panel {title:?}: unsubstituted variable in {q}");
            // Rate windows need a few samples after the last increase: poll until the panel has
            // data rather than sleeping a guessed while.
            let result = eventually(
                &format!("panel {title:?} returns data: {q}"),
                Duration::from_secs(60),
                || {
                    let result = query(&q).with_context(|| format!("panel {title:?}: {q}"))?;
                    Ok((!result.is_empty()).then_some(result))
                },
            )?;
            summary.insert(
                format!("{title} [{}]", target["refId"].as_str().unwrap_or("?")),
                result.len(),
            );
        }
    }
    eprintln!("panel targets and their series: {summary:#?}");

    // The recording rules: per Relay and cluster, the hub apart (its own `role`).
    for (record, want) in [
        (
            "cluster_namespace_relay:mailroom_sidecar_messages_received:rate5m",
            1.0,
        ),
        ("cluster_namespace_relay:mailroom_sidecar_queue_messages:sum", 0.0),
        (
            "cluster_namespace_relay:mailroom_sidecar_accept_duration_seconds_bucket:rate5m",
            1.0,
        ),
    ] {
        let q = format!("{record}{{cluster=\"{CLUSTER}\", namespace=\"shop\", relay=\"outbound\"}}");
        eventually(&format!("{q} recorded"), Duration::from_secs(60), || {
            let result = query(&q)?;
            Ok(
                (!result.is_empty() && (want == 0.0 || result.iter().map(sample_value).any(|v| v > 0.0)))
                    .then_some(()),
            )
        })?;
    }

    // Variables: label_values(selector, label) with the previous variables substituted.
    let want = BTreeMap::from([
        ("cluster", CLUSTER),
        ("namespace", "shop"),
        ("relay", "outbound"),
        ("sender_domain", "example.com"),
    ]);
    for var in dashboard["templating"]["list"].as_array().context("templating")? {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or_default();
        let q = substitute(var["query"]["query"].as_str().context("variable query")?);
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .with_context(|| format!("variable {name}: {q}"))?;
        let (selector, label) = inner.rsplit_once(',').context("label_values(selector, label)")?;
        let (status, body) = http_get(
            prom.addr,
            &format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                urlencode(selector.trim())
            ),
        )?;
        ensure!(status == 200, "variable {name}: {body}");
        let values: Value = serde_json::from_str(&body)?;
        let want = want.get(name).context("unexpected variable")?;
        ensure!(
            values["data"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == want)),
            "variable {name} ({q}) does not offer {want}: {body}"
        );
    }
    Ok(())
}

/// Every metric name Prometheus stored, histogram suffixes included.
fn exported_names(prom: SocketAddr) -> Result<BTreeSet<String>> {
    let (_, body) = http_get(prom, "/api/v1/label/__name__/values")?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["data"]
        .as_array()
        .context("names")?
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect())
}

/// The sidecar, relaying to the upstream with a DKIM key for example.com; (process, admin, smtp).
fn start_sidecar(
    bin: &std::path::Path,
    dir: &std::path::Path,
    upstream: u16,
) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let key = stack::dkim_key(dir)?;
    let config = dir.join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
relay: shop/outbound
hostname: sidecar.test
domains:
  - domain: example.com
    dkim:
      selector: s1
      algorithm: ed25519-sha256
      keyFile: {key}
spool:
  dir: {spool}
delivery:
  smarthost:
    host: 127.0.0.1
    port: {upstream}
    tls: none
    connectTimeoutSeconds: 5
    commandTimeoutSeconds: 10
retry:
  initialSeconds: 1
  multiplier: 1.5
  maxSeconds: 2
  maxAgeSeconds: 600
",
            key = key.display(),
            spool = dir.join("spool").display(),
        ),
    )?;
    let mut proc = Proc::spawn(
        "sidecar",
        Command::new(bin.join("mailroom-sidecar"))
            .arg("--config")
            .arg(&config)
            .env("SIDECAR_LISTEN_ADDR", "127.0.0.1:0")
            .env("SIDECAR_ADMIN_ADDR", "127.0.0.1:0")
            .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info"),
        dir,
    )?;
    let (smtp, admin) = proc.sidecar_addrs()?;
    stack::wait_http_ok("sidecar /readyz", admin, "/readyz", &mut proc)?;
    Ok((proc, admin, smtp))
}

/// A Relay's hub (docs/hub.md) relaying to the upstream, and a second app pod's sidecar whose own
/// route is down and which hands its mail to the hub once that route is parked. That sidecar is
/// replicated (`durability: replicated`): each message's copy goes to the hub first, and the
/// hand-off replaces it.
struct Hub {
    hub: Proc,
    hub_admin: SocketAddr,
    parked: Proc,
    parked_admin: SocketAddr,
    parked_smtp: SocketAddr,
    _down: mailroom_test_support::ports::Reservation,
}

fn start_hub(bin: &std::path::Path, dir: &std::path::Path, upstream: u16) -> Result<Hub> {
    let dir = dir.join("hub");
    std::fs::create_dir_all(&dir)?;
    let ca = mailroom_test_support::certs::test_ca(&dir.join("ca"));
    let (user, password) = (dir.join("user"), dir.join("password"));
    std::fs::write(&user, "relay-shop-outbound")?;
    std::fs::write(&password, "hub password")?;
    let head = |spool: &str, port: u16| {
        format!(
            "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
relay: shop/outbound
domains:
  - domain: example.com
spool:
  dir: {}
delivery:
  smarthost: {{host: 127.0.0.1, port: {port}, tls: none, connectTimeoutSeconds: 2}}
retry: {{initialSeconds: 1, multiplier: 1.5, maxSeconds: 2, maxAgeSeconds: 600}}
",
            dir.join(spool).display()
        )
    };
    let hub_config = dir.join("hub.yaml");
    std::fs::write(
        &hub_config,
        format!(
            "{}listen:
  address: 127.0.0.1:2465
  tls: {{certFile: {}, keyFile: {}}}
  auth: {{usernameFile: {}, passwordFile: {}}}
shadows: {{namespace: shop, podSelector: mailroom.dev/hub-client=outbound, checkSeconds: 3600}}
",
            head("hub-spool", upstream),
            ca.cert.display(),
            ca.key.display(),
            user.display(),
            password.display()
        ),
    )?;
    let spawn = |name: &str, config: &std::path::Path| -> Result<(Proc, SocketAddr, SocketAddr)> {
        let mut proc = Proc::spawn(
            name,
            Command::new(bin.join("mailroom-sidecar"))
                .arg("--config")
                .arg(config)
                .env("SIDECAR_LISTEN_ADDR", "127.0.0.1:0")
                .env("SIDECAR_ADMIN_ADDR", "127.0.0.1:0")
                .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
                .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
                .env("RUST_LOG", "info")
                // The parked sidecar's pod (its copies' owner); the hub asks no apiserver here.
                .env("SIDECAR_POD_NAME", "app-1")
                .env("SIDECAR_POD_UID", "6f1c2a9e-0000-4000-8000-000000000001")
                .env("KUBECONFIG", "/nonexistent"),
            &dir,
        )?;
        let (smtp, admin) = proc.sidecar_addrs()?;
        stack::wait_http_ok(&format!("{name} /readyz"), admin, "/readyz", &mut proc)?;
        Ok((proc, smtp, admin))
    };
    let (hub, hub_smtp, hub_admin) = spawn("hub", &hub_config)?;
    let down = mailroom_test_support::ports::Reservation::any()?;
    let parked_config = dir.join("parked.yaml");
    std::fs::write(
        &parked_config,
        format!(
            "{}handoff:
  host: localhost
  port: {}
  caFile: {}
  usernameFile: {}
  passwordFile: {}
  afterParkedSeconds: 1
  shadows:
    hosts: [localhost]
",
            head("parked-spool", down.port()),
            hub_smtp.port(),
            ca.ca.display(),
            user.display(),
            password.display()
        ),
    )?;
    let (parked, parked_smtp, parked_admin) = spawn("parked sidecar", &parked_config)?;
    Ok(Hub {
        hub,
        hub_admin,
        parked,
        parked_admin,
        parked_smtp,
        _down: down,
    })
}

/// The `cluster` label a multi-cluster Prometheus adds; the dashboard's `cluster` variable
/// offers it and every panel filters on it. (The node scenario shows the one-cluster case: no
/// label, the variable at All.)
const CLUSTER: &str = "test-cluster";

/// Prometheus scraping every target every second, with the target labels the chart's
/// PodMonitors and ServiceMonitor add (and `cluster`), and the chart's alert rules loaded.
fn start_prometheus(
    dir: &std::path::Path,
    sidecar: SocketAddr,
    operator: SocketAddr,
    ns: &str,
    hub: &Hub,
) -> Result<Prometheus> {
    let jobs = [
        json!({"job_name": "mailroom-sidecars", "static_configs": [
               {"targets": [sidecar.to_string()],
                "labels": {"cluster": CLUSTER, "namespace": "shop", "pod": "app-0", "relay": "outbound"}},
               {"targets": [hub.parked_admin.to_string()],
                "labels": {"cluster": CLUSTER, "namespace": "shop", "pod": "app-1", "relay": "outbound"}}]}),
        json!({"job_name": "mailroom-hubs", "static_configs": [{"targets": [hub.hub_admin.to_string()],
               "labels": {"cluster": CLUSTER, "namespace": "shop", "pod": "outbound-hub-0", "relay": "outbound", "role": "hub"}}]}),
        json!({"job_name": "mailroom-operator", "static_configs": [{"targets": [operator.to_string()],
               "labels": {"cluster": CLUSTER, "namespace": ns, "pod": "mailroom-0"}}]}),
    ];
    let prom = Prometheus::start(dir, &jobs, &rendered_rules()?)?;
    ensure!(
        prom.alert_rules()?
            .iter()
            .any(|r| r["name"] == "MailroomQueueBackingUp"),
        "prometheus did not load the chart's rules"
    );
    Ok(prom)
}
