//! JSON logs as a log pipeline reads them: every line the operator binary writes with
//! `OPERATOR_LOG_FORMAT=json` is one JSON object, and no object repeats a key (a pipeline keeps
//! only one of two equal keys). Checked by Python's json module with a hook that refuses repeated
//! keys (tests/peers/json_lines.py), over a run against the real apiserver that makes a
//! MailDomain Ready, reconciles a Relay whose domain does not exist, and stops on SIGTERM; and
//! over the last line of a fatal start-up error.

use mailroom_test_support::operator as common;

use anyhow::{Context as _, Result};
use common::{install_crds, process::OperatorProcess as Operator, ready, wait_for};
use kube::{Api, api::PostParams};
use mailroom_operator::crd::{MailDomain, MailDomainSpec, Relay, RelaySpec};
use mailroom_test_support::{ControlPlane, relay, stack};
use serde_json::Value;
use std::{path::Path, process::Command};

fn strict(dir: &Path, log: &str) -> Result<Value> {
    Ok(relay::json_lines(dir, log))
}

#[tokio::test]
async fn every_json_log_line_is_one_object_without_repeated_keys() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    install_crds(&admin).await?;
    let ns = cp.new_namespace().await?;
    let mut op = Operator::spawn_with_env(&cp, &ns, "op-json", &[("OPERATOR_LOG_FORMAT", "json")])?;

    let domains: Api<MailDomain> = Api::all(admin.clone());
    let spec: MailDomainSpec =
        serde_yaml_ng::from_str("domain: logs.example.com\ndkim: {algorithm: ed25519}")?;
    domains
        .create(&PostParams::default(), &MailDomain::new("logs", spec))
        .await?;
    wait_for(&domains, "logs", |md| {
        md.status
            .as_ref()
            .is_some_and(|s| ready(&s.conditions, "Ready").0 == "True")
    })
    .await?;
    let relays: Api<Relay> = Api::namespaced(admin.clone(), &ns);
    let spec: RelaySpec = serde_yaml_ng::from_str("domains: [nope]\ndelivery: {capture: {}}")?;
    relays
        .create(&PostParams::default(), &Relay::new("missing", spec))
        .await?;
    wait_for(&relays, "missing", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ready(&s.conditions, "Ready").1 == "DomainNotFound")
    })
    .await?;
    op.signal("-TERM")?;
    let code = op.wait()?;
    let log = op.log_text()?;
    assert_eq!(code, Some(0), "stopped cleanly on SIGTERM:\n{log}");

    let dir = tempfile::tempdir()?;
    let summary = strict(dir.path(), &log)?;
    assert_eq!(
        summary["bad"],
        serde_json::json!([]),
        "every line strict JSON:\n{log}"
    );
    assert!(summary["lines"].as_u64() > Some(3), "{log}");
    Ok(())
}

#[test]
fn a_fatal_error_is_logged_as_json_too() -> Result<()> {
    let out = Command::new(stack::built_bin(
        "mailroom-operator",
        "cargo test -p mailroom-operator",
    ))
    .arg("no-such-command")
    .env("OPERATOR_LOG_FORMAT", "json")
    .output()
    .context("run mailroom-operator")?;
    assert_eq!(out.status.code(), Some(64), "EX_USAGE");
    let log = String::from_utf8_lossy(&out.stderr);
    let dir = tempfile::tempdir()?;
    let summary = strict(dir.path(), &log)?;
    assert_eq!(summary["bad"], serde_json::json!([]), "{log}");
    let events = summary["events"].as_array().context("events")?;
    assert!(
        events.iter().any(|e| e["level"] == "ERROR"),
        "the error is a JSON line: {log}"
    );
    assert!(log.contains("no-such-command"), "{log}");
    Ok(())
}
