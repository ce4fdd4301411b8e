//! A Relay's `limits.ratePerMinute` is a Relay-wide budget: the operator (in process, as its
//! ServiceAccount, against a real kube-apiserver) divides it among the Relay's live pods and
//! re-renders as they come and go; three real sidecars on the rendered config, each driven as
//! fast as smtplib can, deliver to one counting upstream (upstream.py) no more than the budget
//! allows.

use mailroom_test_support::{operator as common, peers::Upstream, testenv};

use anyhow::{Context as _, Result, ensure};
use common::{Env, sidecar, wait_for, webhook::domain};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use mailroom_operator::crd::Relay;
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BUDGET: u32 = 120;
/// How long the three clients send.
const SECONDS: u64 = 10;

fn app_pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"mailroom.dev/relay": "outbound", "mailroom.dev/injected": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}

fn share(r: &Relay) -> Option<u32> {
    r.status.as_ref().and_then(|s| s.rate_per_minute_per_pod)
}

/// Sends to `port` as fast as the sidecar takes it for `seconds`, waiting 50 ms after each
/// `451`; prints how many it got `250` for.
const BLAST: &str = r#"
import smtplib, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end, ok, n = time.time() + seconds, 0, 0
msg = b"From: app@quota.example.com\r\nTo: x@example.net\r\nSubject: q\r\n\r\nbody\r\n"
with smtplib.SMTP("127.0.0.1", port) as s:
    while time.time() < end:
        n += 1
        try:
            s.sendmail("app@quota.example.com", ["x@example.net"], msg)
            ok += 1
        except smtplib.SMTPResponseException as e:
            if e.smtp_code != 451:
                raise
            time.sleep(0.05)
print(ok)
"#;

#[tokio::test]
async fn a_relays_rate_is_one_budget_shared_by_its_pods() -> Result<()> {
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace().await?;
    domain(
        &env,
        "quota",
        &format!(
            "domain: quota.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
        ),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let upstream = Upstream::start(dir.path(), &["--tls", "none"]);
    let spec = format!(
        "domains: [quota]\nlimits: {{ratePerMinute: {BUDGET}}}\n\
         delivery: {{smarthost: {{host: 127.0.0.1, port: {}, tls: none}}}}",
        upstream.port
    );
    let relays: Api<Relay> = Api::namespaced(env.admin.clone(), &ns);
    relays
        .create(
            &PostParams::default(),
            &Relay::new("outbound", serde_yaml_ng::from_str(&spec)?),
        )
        .await?;
    // No pod yet: the first one gets the whole budget.
    wait_for(&relays, "outbound", |r| share(r) == Some(BUDGET)).await?;

    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    for n in 0..3 {
        pods.create(&PostParams::default(), &app_pod(&format!("app-{n}"))?)
            .await?;
    }
    let t0 = Instant::now();
    wait_for(&relays, "outbound", |r| share(r) == Some(BUDGET / 3)).await?;
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &ns);
    let (_, _, config) = common::rendered_config(&cms, "outbound").await?;
    ensure!(
        config.limits.rate_per_minute == Some(BUDGET / 3),
        "{:?}",
        config.limits
    );
    eprintln!("quota: 3 pods to a re-rendered share in {:.1?}", t0.elapsed());

    // Three sidecars on the rendered config, driven at once.
    let roots: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<std::io::Result<_>>()?;
    let mut sidecars = Vec::new();
    for root in &roots {
        sidecar::mount(&env.admin, &ns, "outbound", root.path()).await?;
        sidecars.push(sidecar::Sidecar::start(root.path())?);
    }
    let clients: Vec<_> = sidecars
        .iter()
        .map(|s| {
            Command::new(testenv::python()?)
                .args(["-c", BLAST, &s.port.to_string(), &SECONDS.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("python3")
        })
        .collect::<Result<_>>()?;
    let mut accepted = 0u64;
    for c in clients {
        let out = c.wait_with_output()?;
        ensure!(
            out.status.success(),
            "a client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        accepted += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
    }
    // Each pod may take its minute's share at once, then its share a minute: over SECONDS the
    // Relay takes at most BUDGET * (1 + SECONDS / 60), plus one per pod for the clock's edges.
    let ceiling = u64::from(BUDGET) + u64::from(BUDGET) * SECONDS / 60 + 3;
    eprintln!("quota: {accepted} accepted in {SECONDS} s by 3 pods sharing {BUDGET}/min (ceiling {ceiling})");
    ensure!(
        accepted <= ceiling,
        "{accepted} accepted over {SECONDS} s: more than the budget allows ({ceiling}); \
         each pod used more than its share"
    );
    ensure!(
        accepted >= u64::from(BUDGET) - 3,
        "{accepted} accepted: the pods did not even get their first minute's share"
    );
    // The counting upstream gets exactly what was accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (upstream.received().len() as u64) < accepted {
        ensure!(
            Instant::now() < deadline,
            "{} of {accepted} delivered",
            upstream.received().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(upstream.received().len() as u64 == accepted);

    // A pod goes: the two left share the budget.
    pods.delete("app-2", &DeleteParams::default().grace_period(0))
        .await?;
    wait_for(&relays, "outbound", |r| share(r) == Some(BUDGET / 2)).await?;
    let (_, _, config) = common::rendered_config(&cms, "outbound").await?;
    ensure!(
        config.limits.rate_per_minute == Some(BUDGET / 2),
        "{:?}",
        config.limits
    );
    Ok(())
}
