//! `kubectl-mailroom`: the kubectl plugin. Copy it onto the PATH and run `kubectl mailroom`.
//! Everything goes through the apiserver with the user's own credentials and RBAC: object reads,
//! `pods/exec` (to run `mailroom-sidecar queue ...` in each pod of a Relay) and
//! `pods/portforward` (test sends). docs/operations.md "Day two" lists the verbs it needs.

mod dns;
mod exec;
mod pods;
mod send;
mod status;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use pods::Target;
use serde_json::Value;
use std::{fmt::Write as _, process::ExitCode, time::Duration};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl mailroom",
    bin_name = "kubectl mailroom",
    version,
    about = "See and steer mailroom: queues across a Relay's pods, status, DNS records, test sends"
)]
struct Cli {
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace of the Relay (default: the context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every queued message in every pod of a Relay (its app pods and its hub), with pod names.
    Queue {
        /// The Relay.
        relay: String,
    },
    /// Retry deferred mail now in every pod of a Relay, opening a parked route.
    Flush {
        /// The Relay.
        relay: String,
        /// Only messages with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// MailDomains and Relays with their readiness, DNS and hub state.
    Status {
        /// Relays of every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// A MailDomain's DNS records as a zone-file snippet.
    Dns {
        /// The MailDomain.
        mail_domain: String,
    },
    /// Send a test message through one pod's sidecar and follow it until it leaves the queue.
    TestSend {
        /// The Relay.
        relay: String,
        /// The recipient.
        #[arg(long)]
        to: String,
        /// The sender (default: mailroom-test@ the Relay's first MailDomain).
        #[arg(long)]
        from: Option<String>,
        /// The pod to send through (default: the first running one).
        #[arg(long)]
        pod: Option<String>,
        /// How long to follow the message.
        #[arg(long, default_value = "120")]
        timeout_seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match Kubeconfig::read() {
        Ok(kc) => Config::from_custom_kubeconfig(kc, &options).await?,
        Err(_) => Config::infer().await.context("no kubeconfig (set KUBECONFIG)")?,
    };
    let default_ns = config.default_namespace.clone();
    let client = Client::try_from(config)?;
    let ns = cli.namespace.clone().unwrap_or(default_ns);
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Queue { relay } => queue(&client, &ns, &relay, json).await,
        Command::Flush { relay, domain } => flush(&client, &ns, &relay, domain, json).await,
        Command::Status { all_namespaces } => {
            let v = status::gather(&client, (!all_namespaces).then_some(ns.as_str())).await?;
            print(json, &v, status::text);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dns { mail_domain } => {
            let md = status::mail_domains(&client)
                .get(&mail_domain)
                .await
                .with_context(|| format!("MailDomain {mail_domain}"))?;
            let md = serde_json::to_value(md)?;
            let ttl = md["spec"]["dns"]["publish"]["ttlSeconds"]
                .as_u64()
                .unwrap_or(3600);
            if json {
                println!("{}", serde_json::to_string_pretty(&md["status"]["dnsRecords"])?);
            } else {
                print!("{}", dns::zone_snippet(&md, ttl));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::TestSend {
            relay,
            to,
            from,
            pod,
            timeout_seconds,
        } => {
            test_send(
                &client,
                &ns,
                &relay,
                &to,
                from,
                pod,
                Duration::from_secs(timeout_seconds),
            )
            .await
        }
    }
}

fn print(json: bool, v: &Value, text: impl Fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", text(v));
    }
}

/// Who the apiserver says we are, for the sidecars' logs (`kube:<user>`).
async fn actor(client: &Client) -> String {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = SelfSubjectReview::default();
    match reviews.create(&PostParams::default(), &review).await {
        Ok(r) => {
            let user = r
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .unwrap_or_else(|| "unknown".into());
            format!("kube:{user}")
        }
        Err(_) => "kube:unknown".into(),
    }
}

/// Runs `mailroom-sidecar <args> -o json --actor <who>` in every target; returns each pod's
/// parsed answer or its error.
async fn each(client: &Client, ns: &str, targets: &[Target], args: &[&str]) -> Vec<(Target, Result<Value>)> {
    let who = actor(client).await;
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["-o".into(), "json".into(), "--actor".into(), who]);
    let runs = targets.iter().map(|t| {
        let all = all.clone();
        async move {
            let answer = match exec::sidecar(client, ns, t, &all).await {
                Ok(out) if out.code == 0 => serde_json::from_str(&out.stdout)
                    .with_context(|| format!("unexpected answer: {}", out.stdout.trim())),
                Ok(out) => Err(anyhow::anyhow!("{}", out.error())),
                Err(e) => Err(e),
            };
            (t.clone(), answer)
        }
    });
    futures_util::future::join_all(runs).await
}

async fn queue(client: &Client, ns: &str, relay: &str, json: bool) -> Result<ExitCode> {
    let targets = pods::relay_pods(client, ns, relay).await?;
    let answers = each(client, ns, &targets, &["queue", "list"]).await;
    let mut rows = Vec::new();
    let mut failed = false;
    for (t, answer) in answers {
        match answer {
            Ok(Value::Array(list)) => rows.extend(list.into_iter().map(|mut r| {
                r["pod"] = Value::from(t.pod.clone());
                r
            })),
            Ok(other) => {
                failed = true;
                eprintln!("{}: unexpected answer {other}", t.pod);
            }
            Err(e) => {
                failed = true;
                eprintln!("{}: {e:#}", t.pod);
            }
        }
    }
    rows.sort_by_key(|r| r["received_at"].as_u64().unwrap_or(0));
    print(json, &Value::Array(rows), |v| queue_text(v, targets.len()));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn queue_text(rows: &Value, pods: usize) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return format!("no queued mail in {pods} pod(s)\n");
    }
    let mut out = format!(
        "{:<28} {:<16} {:<8} {:>7} {:>8} {:<20} {:<24} {}\n",
        "POD", "ID", "STATE", "AGE", "ATTEMPTS", "SENDER", "RECIPIENTS", "LAST ERROR"
    );
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let mut rcpt = r["recipient_domains"][0].as_str().unwrap_or("-").to_owned();
        let n = r["recipients"].as_u64().unwrap_or(0);
        if n > 1 {
            let _ = write!(rcpt, " (+{})", n - 1);
        }
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:<8} {:>6}s {:>8} {:<20} {:<24} {}",
            s("pod"),
            s("id"),
            s("state"),
            r["age_seconds"].as_u64().unwrap_or(0),
            r["attempts"].as_u64().unwrap_or(0),
            s("sender_domain"),
            rcpt,
            s("last_error")
        );
    }
    let _ = writeln!(out, "-- {} message(s) in {pods} pod(s)", rows.len());
    out
}

async fn flush(
    client: &Client,
    ns: &str,
    relay: &str,
    domain: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let targets = pods::relay_pods(client, ns, relay).await?;
    let mut args = vec!["queue", "flush"];
    if let Some(d) = &domain {
        args.extend(["--domain", d.as_str()]);
    }
    let answers = each(client, ns, &targets, &args).await;
    let mut failed = false;
    let mut report = Vec::new();
    for (t, answer) in answers {
        match answer {
            Ok(mut v) => {
                v["pod"] = Value::from(t.pod.clone());
                report.push(v);
            }
            Err(e) => {
                failed = true;
                eprintln!("{}: {e:#}", t.pod);
            }
        }
    }
    print(json, &Value::Array(report), |v| {
        let mut out = String::new();
        for r in v.as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{}: {} message(s) due now{}{}",
                r["pod"].as_str().unwrap_or("?"),
                r["flushed"],
                if r["held"].as_u64().unwrap_or(0) > 0 {
                    format!(", {} held", r["held"])
                } else {
                    String::new()
                },
                if r["unparked"] == true {
                    ", route unparked"
                } else {
                    ""
                }
            );
        }
        out
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn test_send(
    client: &Client,
    ns: &str,
    relay: &str,
    to: &str,
    from: Option<String>,
    pod: Option<String>,
    timeout: Duration,
) -> Result<ExitCode> {
    let targets = pods::relay_pods(client, ns, relay).await?;
    let target = match &pod {
        Some(p) => targets
            .iter()
            .find(|t| &t.pod == p && !t.hub)
            .with_context(|| format!("pod {p} is not a running app pod of Relay {ns}/{relay}"))?,
        None => targets
            .iter()
            .find(|t| !t.hub)
            .with_context(|| format!("Relay {ns}/{relay} has no running app pod to send through"))?,
    }
    .clone();
    let from = match from {
        Some(f) => f,
        None => default_sender(client, ns, relay).await?,
    };
    let port = listen_port(client, ns, &target).await?;
    let pods_api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let mut forward = pods_api
        .portforward(&target.pod, &[port])
        .await
        .with_context(|| format!("port-forward to {}/{}:{port}", ns, target.pod))?;
    let stream = forward.take_stream(port).context("no port-forward stream")?;
    let now = httpdate_now();
    let id = send::smtp(stream, &from, to, &send::message(&from, to, &now)).await?;
    drop(forward);
    println!("{}: accepted as {id} (from <{from}> to <{to}>)", target.pod);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let answer = each(
            client,
            ns,
            std::slice::from_ref(&target),
            &["queue", "status", &id],
        )
        .await
        .remove(0)
        .1?;
        let state = answer["state"].as_str().unwrap_or("?").to_owned();
        if state != last {
            let error = answer["last_error"]
                .as_str()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            println!("{}: {id} {state}{error}", target.pod);
            last = state.clone();
        }
        if answer["queued"] == false {
            return Ok(if state == "delivered" || state == "handed_off" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{id} is still queued ({state}) after {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `mailroom-test@<domain>` of the Relay's first MailDomain.
async fn default_sender(client: &Client, ns: &str, relay: &str) -> Result<String> {
    let r = status::relays(client, Some(ns)).get(relay).await?;
    let r = serde_json::to_value(r)?;
    let first = r["spec"]["domains"][0]
        .as_str()
        .with_context(|| format!("Relay {ns}/{relay} names no MailDomain"))?;
    let md = status::mail_domains(client)
        .get(first)
        .await
        .with_context(|| format!("MailDomain {first} (or pass --from)"))?;
    let md = serde_json::to_value(md)?;
    let domain = md["spec"]["domain"]
        .as_str()
        .context("MailDomain without spec.domain")?;
    Ok(format!("mailroom-test@{domain}"))
}

/// The port the sidecar listens on in the pod (`SIDECAR_LISTEN_ADDR`, default 2525).
async fn listen_port(client: &Client, ns: &str, target: &Target) -> Result<u16> {
    let pods_api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods_api.get(&target.pod).await?;
    let spec = pod.spec.unwrap_or_default();
    let containers = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers);
    let port = containers
        .filter(|c| c.name == target.container)
        .flat_map(|c| c.env.unwrap_or_default())
        .find(|e| e.name == "SIDECAR_LISTEN_ADDR")
        .and_then(|e| e.value)
        .and_then(|v| v.rsplit(':').next().and_then(|p| p.parse().ok()));
    Ok(port.unwrap_or(2525))
}

/// Now as an RFC 5322 date.
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc5322_date(secs)
}

/// `Thu, 01 Jan 1970 00:00:00 +0000` for `secs` since the epoch (RFC 5322 3.3), civil from days
/// (Howard Hinnant's algorithm).
fn rfc5322_date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_796_342_400), "Fri, 04 Dec 2026 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(951_782_400 + 3661),
            "Tue, 29 Feb 2000 01:01:01 +0000"
        );
    }
}
