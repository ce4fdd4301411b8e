//! The operator at scale against the real control plane: many Relays over many namespaces and
//! MailDomains, reconciled by the real operator binary (a separate process, so its memory can be
//! read). `make test` runs a small smoke size that proves the harness and the convergence; `make
//! bench-operator` runs it in release at 1,000 Relays / 50 namespaces / 100 MailDomains and
//! writes the figures to `bench/results/operator.json` (see docs/benchmarks.md).
//!
//! Sizes come from `MAILROOM_SCALE_{RELAYS,NAMESPACES,DOMAINS}`; `MAILROOM_SCALE_OUT` names the
//! results file. Half the Relays also send as MailDomain `md-0`: the fan-out case.

use mailroom_test_support::operator as common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use common::{DnsServer, install_crds, ready};
use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mailroom_operator::crd::{MailDomain, MailDomainSpec, Relay, RelaySpec};
use mailroom_test_support::{
    ControlPlane,
    stack::{find_in_log, listening_addr},
};

/// Concurrent creates from the test (the apiserver's default in-flight limit is far above it).
const CREATE_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Size {
    relays: usize,
    namespaces: usize,
    domains: usize,
}

impl Size {
    fn from_env() -> Result<Self> {
        let var = |name: &str, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}={v} is not a count")),
                Err(_) => Ok(default),
            }
        };
        let size = Self {
            relays: var("MAILROOM_SCALE_RELAYS", 40)?,
            namespaces: var("MAILROOM_SCALE_NAMESPACES", 4)?,
            domains: var("MAILROOM_SCALE_DOMAINS", 5)?,
        };
        anyhow::ensure!(
            size.relays >= 2 && size.namespaces >= 1 && size.domains >= 2,
            "need at least 2 Relays, 1 namespace and 2 MailDomains, got {size:?}"
        );
        Ok(size)
    }
}

/// The real operator binary, reconciling as cluster-admin (RBAC is proven elsewhere).
struct Operator {
    child: Child,
    log: std::path::PathBuf,
    /// Its admin address: port 0, read from its `admin server listening` line on first use.
    admin: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Operator {
    /// `phase` names its log (`operator-scale-<phase>.log`): each start keeps its own.
    fn spawn(cp: &ControlPlane, ns: &str, dns: &DnsServer, phase: &str) -> Result<Self> {
        let path = cp.logs_dir().join(format!("operator-scale-{phase}.log"));
        let log = std::fs::File::create(&path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_mailroom-operator"))
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("OPERATOR_NAMESPACE", ns)
            .env("OPERATOR_IDENTITY", "scale")
            .env("OPERATOR_ADMIN_ADDR", "127.0.0.1:0")
            .env("OPERATOR_WEBHOOK_ADDR", "127.0.0.1:0")
            // A real server with an empty zone: every check is a quick NXDOMAIN, as in a
            // cluster before the records are published.
            .env("OPERATOR_DNS_NAMESERVERS", dns.addr())
            // Warnings, and the line with the admin address.
            .env("RUST_LOG", "warn,mailroom_operator::admin=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            log: path,
            admin: std::sync::OnceLock::new(),
        })
    }

    /// Its /metrics text (an error until the admin server listens).
    fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let admin = match self.admin.get() {
            Some(addr) => *addr,
            None => {
                let addr = find_in_log(&self.log, 0, |l| listening_addr(l, "admin server listening"))?
                    .context("the operator has not logged its admin address yet")?;
                *self.admin.get_or_init(|| addr)
            }
        };
        let mut stream = std::net::TcpStream::connect(admin)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    }

    /// (current RSS, peak RSS) in KiB, from /proc.
    fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("{name} in /proc status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Watches Relays (all namespaces) and MailDomains until `done` holds for the (name -> Ready
/// reason) maps; returns the time it took.
async fn watch_until(
    client: &Client,
    started: Instant,
    done: impl Fn(&HashMap<String, String>, &HashMap<String, String>) -> bool,
) -> Result<Duration> {
    let relays = watcher(Api::<Relay>::all(client.clone()), watcher::Config::default())
        .applied_objects()
        .map_ok(|r| {
            let key = format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
            let status = r.status.map(|s| s.conditions).unwrap_or_default();
            (true, key, reason(&status))
        });
    let domains = watcher(Api::<MailDomain>::all(client.clone()), watcher::Config::default())
        .applied_objects()
        .map_ok(|d| {
            let name = d.name_any();
            let status = d.status.map(|s| s.conditions).unwrap_or_default();
            (false, name, reason(&status))
        });
    let mut events = stream::select(relays.boxed(), domains.boxed());
    let (mut r, mut d) = (HashMap::new(), HashMap::new());
    // The last objects to become Ready, with when and what they waited in before: the tail of
    // a convergence is where a missed wake-up shows.
    let mut last: Vec<(Duration, String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        if done(&r, &d) {
            last.sort();
            for (at, key, before) in last.iter().rev().take(5) {
                eprintln!("scale: {key} Ready at {:.2} s (was {before:?})", at.as_secs_f64());
            }
            return Ok(started.elapsed());
        }
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("not converged within 600 s")?;
        let Some(event) = next else { bail!("watch ended") };
        let (is_relay, key, why) = event?;
        let map = if is_relay { &mut r } else { &mut d };
        let kind = if is_relay { "Relay" } else { "MailDomain" };
        let before = map.insert(key.clone(), why.clone()).unwrap_or_default();
        if why == "Ready" && before != "Ready" {
            last.push((started.elapsed(), format!("{kind} {key}"), before));
        }
    }
}

/// "Ready" when the Ready condition is True, else its reason ("" before the first status).
fn reason(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> String {
    match ready(conditions, "Ready") {
        (s, _) if s == "True" => "Ready".into(),
        (_, why) => why,
    }
}

fn count(map: &HashMap<String, String>, want: &str) -> usize {
    map.values().filter(|v| *v == want).count()
}

async fn create_all(client: &Client, cp: &ControlPlane, size: Size) -> Result<Vec<String>> {
    let mut namespaces = Vec::new();
    for _ in 0..size.namespaces {
        namespaces.push(cp.new_namespace_with_labels(&[("mailroom-scale", "yes")]).await?);
    }
    let domains: Api<MailDomain> = Api::all(client.clone());
    stream::iter(0..size.domains)
        .map(|i| {
            let domains = domains.clone();
            async move {
                let spec: MailDomainSpec = serde_yaml_ng::from_str(&format!(
                    "domain: d{i}.scale.example\nallowedNamespaces:\n  selector:\n    matchLabels: {{mailroom-scale: \"yes\"}}"
                ))?;
                domains.create(&PostParams::default(), &MailDomain::new(&format!("md-{i}"), spec)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    stream::iter(0..size.relays)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].clone();
            let relays: Api<Relay> = Api::namespaced(client.clone(), &ns);
            async move {
                // Even Relays also send as md-0 (half of all Relays depend on it).
                let own = 1 + i % (size.domains - 1);
                let doms = if i % 2 == 0 { format!("[md-0, md-{own}]") } else { format!("[md-{own}]") };
                let spec: RelaySpec = serde_yaml_ng::from_str(&format!(
                    "domains: {doms}\ndelivery:\n  smarthost: {{host: smtp.scale.example, port: 587, tls: starttls}}"
                ))?;
                relays.create(&PostParams::default(), &Relay::new(&format!("r-{i}"), spec)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(namespaces)
}

#[tokio::test]
async fn relays_at_scale_converge_and_follow_a_shared_domain_change() -> Result<()> {
    let size = Size::from_env()?;
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    install_crds(&admin).await?;
    let operator_ns = cp.new_namespace().await?;
    let dns_dir = tempfile::tempdir()?;
    let dns = DnsServer::start(dns_dir.path())?;
    let t = Instant::now();
    create_all(&admin, &cp, size).await?;
    let created_in = t.elapsed();
    let fan_out = size.relays.div_ceil(2);

    // Cold start: every DKIM key is generated (RSA-2048, the default) and every Relay rendered.
    let before = api_requests(&admin).await?;
    let started = Instant::now();
    let mut op = Operator::spawn(&cp, &operator_ns, &dns, "cold")?;
    let all_ready = |r: &HashMap<String, String>, d: &HashMap<String, String>| {
        count(r, "Ready") == size.relays && count(d, "Ready") == size.domains
    };
    let cold = watch_until(&admin, started, all_ready).await?;
    let (rss_cold, peak_cold) = op.rss_kib()?;
    let cold_requests = requests_since(&before, &api_requests(&admin).await?);
    let cold_reconciles = reconcile_runs(&op.metrics()?);

    // The fan-out: md-0 stops granting the namespaces; every Relay using it must notice.
    let domains: Api<MailDomain> = Api::all(admin.clone());
    let grant = |label: &str| serde_json::json!({"spec": {"allowedNamespaces": {"selector": {"matchLabels": {"mailroom-scale": label}}}}});
    let started = Instant::now();
    domains
        .patch("md-0", &PatchParams::default(), &Patch::Merge(grant("no")))
        .await?;
    let revoke = watch_until(&admin, started, |r, _| count(r, "DomainNotAllowed") == fan_out).await?;
    let started = Instant::now();
    domains
        .patch("md-0", &PatchParams::default(), &Patch::Merge(grant("yes")))
        .await?;
    let restore = watch_until(&admin, started, |r, d| all_ready(r, d)).await?;

    // Warm restart: keys exist, so this is reconciling alone.
    drop(op);
    let started = Instant::now();
    op = Operator::spawn(&cp, &operator_ns, &dns, "warm")?;
    // A fresh process re-reads everything; "Ready" from before counts only once it reconciled
    // again, so wait for its own metric instead of the (already Ready) statuses.
    let before = api_requests(&admin).await?;
    let warm = wait_reconciled(&op, size, started).await?;
    let (rss_warm, peak_warm) = op.rss_kib()?;
    let warm_requests = requests_since(&before, &api_requests(&admin).await?);
    let warm_reconciles = reconcile_runs(&op.metrics()?);

    let report = serde_json::json!({
        "relays": size.relays, "namespaces": size.namespaces, "maildomains": size.domains,
        "fan_out_relays": fan_out,
        "create_seconds": created_in.as_secs_f64(),
        "cold_start_to_all_ready_seconds": cold.as_secs_f64(),
        "rss_after_cold_start_kib": rss_cold, "peak_rss_cold_kib": peak_cold,
        "fan_out_revoke_seconds": revoke.as_secs_f64(),
        "fan_out_revoke_relays_per_second": fan_out as f64 / revoke.as_secs_f64(),
        "fan_out_restore_seconds": restore.as_secs_f64(),
        "warm_restart_all_reconciled_seconds": warm.as_secs_f64(),
        "rss_after_warm_restart_kib": rss_warm, "peak_rss_warm_kib": peak_warm,
        "cold_start_apiserver_requests": cold_requests,
        "cold_start_reconciles": cold_reconciles,
        "warm_restart_apiserver_requests": warm_requests,
        "warm_restart_reconciles": warm_reconciles,
    });
    eprintln!("operator at scale: {report:#}");
    if let Ok(out) = std::env::var("MAILROOM_SCALE_OUT") {
        std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Time until the operator's own metrics count one successful reconcile of every object.
async fn wait_reconciled(op: &Operator, size: Size, started: Instant) -> Result<Duration> {
    let want = size.relays + size.domains;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let metrics = op.metrics().unwrap_or_default();
        let ready: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("mailroom_operator_object_ready{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if ready as usize >= want {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!("operator reports {ready} of {want} objects ready after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The apiserver's `apiserver_request_total`, summed by verb and resource (with subresource), from
/// its own /metrics: how many requests a phase cost, whoever made them. The test's own watches
/// make one LIST and one WATCH each; the rest is the operator.
async fn api_requests(client: &Client) -> Result<HashMap<String, u64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let (labels, value) = line.rsplit_once(' ').context("a sample has a value")?;
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = match sub.as_str() {
            "" => format!("{verb} {resource}"),
            _ => format!("{verb} {resource}/{sub}"),
        };
        let n: f64 = value.parse().with_context(|| format!("sample value in {line}"))?;
        *out.entry(key).or_default() += n as u64;
    }
    anyhow::ensure!(
        !out.is_empty(),
        "the apiserver's /metrics has no apiserver_request_total"
    );
    Ok(out)
}

/// What `after` counted beyond `before`, by key, with the total under "all"; zeros left out.
fn requests_since(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> serde_json::Value {
    let mut delta: std::collections::BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    // The metrics scrapes themselves.
    delta.remove("GET ");
    let all = delta.values().sum::<u64>();
    delta.insert("all".into(), all);
    serde_json::json!(delta)
}

/// The operator's `mailroom_operator_reconcile_runs_total`, by kind.
fn reconcile_runs(metrics: &str) -> serde_json::Value {
    let runs: std::collections::BTreeMap<String, f64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("mailroom_operator_reconcile_runs_total{kind=\""))
        .filter_map(|l| {
            let (kind, rest) = l.split_once('"')?;
            Some((kind.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    serde_json::json!(runs)
}
