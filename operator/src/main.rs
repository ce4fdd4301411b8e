//! mailroom operator entry point: `mailroom-operator` runs the controllers (behind a Lease when
//! leader election is on) and the admin server; `mailroom-operator render -f DIR` works offline.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use mailroom_operator::{
    admin,
    check::{self, CheckSettings},
    dns::HickoryDns,
    events::Events,
    leader::Elector,
    metrics::Metrics,
    offline, reconcile,
    settings::{self, Env, Settings, Strings},
    telemetry,
    webhook::Webhook,
};

const USAGE: &str = "usage:
  mailroom-operator                          run the operator (settings from OPERATOR_* env)
  mailroom-operator render -f DIR [-o OUT]   render MailDomain/Relay YAML in DIR offline into OUT (default ./rendered)
  mailroom-operator check --namespace NS --webhook-config NAME [--name NAME] [--timeout SECONDS]
                                             prove an installation works (what `helm test` runs)
  mailroom-operator --version";

/// BSD `EX_USAGE`: a bad command line, settings or input files (as the sidecar exits).
const EX_USAGE: u8 = 64;

/// Why the process ends early, and the exit code that says so.
struct Exit {
    code: u8,
    error: anyhow::Error,
}

impl Exit {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EX_USAGE,
            error: error.into(),
        }
    }

    fn fatal(error: anyhow::Error) -> Self {
        Self { code: 1, error }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let json_logs = Env.get(settings::ENV_LOG_FORMAT).as_deref() == Some("json");
    telemetry::init(json_logs);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => run().await,
        Some("render") => render(&args[1..]),
        Some("check") => check(&args[1..]).await,
        Some("--version") => {
            println!("mailroom-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Exit::usage(anyhow::anyhow!(
            "unknown argument {other:?}\n{USAGE}"
        ))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Through the log formatter, so that with JSON logs the last line is JSON too.
        Err(Exit { code, error }) => {
            tracing::error!(error = format!("{error:#}"), "mailroom-operator stopped");
            std::process::ExitCode::from(code)
        }
    }
}

/// Offline rendering; what it reads is the user's input, so every failure is a usage error.
fn render(args: &[String]) -> Result<(), Exit> {
    let (mut dir, mut out) = (None, PathBuf::from("rendered"));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-f" => dir = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "-o" => {
                out = it
                    .next()
                    .map(PathBuf::from)
                    .context("-o needs a directory")
                    .map_err(Exit::usage)?;
            }
            other => {
                return Err(Exit::usage(anyhow::anyhow!(
                    "unknown argument {other:?}\n{USAGE}"
                )));
            }
        }
    }
    let dir = dir
        .context(format!("-f DIR is required\n{USAGE}"))
        .map_err(Exit::usage)?;
    let summary = offline::render_dir(&dir, &out).map_err(Exit::usage)?;
    for path in summary.configs.iter().chain(&summary.keys).chain(&summary.dns) {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `helm test`: a temporary Relay rendered and injected through every webhook replica.
async fn check(args: &[String]) -> Result<(), Exit> {
    let mut settings = CheckSettings {
        namespace: String::new(),
        name: "mailroom-check".into(),
        webhook_config: String::new(),
        timeout: std::time::Duration::from_secs(120),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
                .map_err(Exit::usage)
        };
        match arg.as_str() {
            "--namespace" => settings.namespace = value(arg)?,
            "--name" => settings.name = value(arg)?,
            "--webhook-config" => settings.webhook_config = value(arg)?,
            "--timeout" => {
                let v = value(arg)?;
                let secs: u64 = v
                    .parse()
                    .with_context(|| format!("--timeout {v}: not a whole number of seconds"))
                    .map_err(Exit::usage)?;
                settings.timeout = std::time::Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => {
                return Err(Exit::usage(anyhow::anyhow!(
                    "unknown argument {other:?}\n{USAGE}"
                )));
            }
        }
    }
    if settings.namespace.is_empty() || settings.webhook_config.is_empty() {
        return Err(Exit::usage(anyhow::anyhow!(
            "check needs --namespace and --webhook-config\n{USAGE}"
        )));
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the apiserver")
        .map_err(Exit::fatal)?;
    check::run(&client, &settings, &mut |line| println!("{line}"))
        .await
        .map_err(|e| Exit::fatal(e.into()))
}

async fn run() -> Result<(), Exit> {
    let settings = Settings::parse(&Env).map_err(Exit::usage)?;
    serve(settings).await.map_err(Exit::fatal)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the apiserver")?;
    let metrics = Arc::new(Metrics::new());
    let dns = HickoryDns::new(&settings.dns_nameservers).map_err(anyhow::Error::msg)?;
    // Every replica serves the webhook, leader or not: pod admission must not wait for an election.
    let mut checks = Vec::new();
    if let Some(addr) = settings.webhook.addr {
        let webhook = Webhook::bind(addr, client.clone(), &settings, metrics.clone())
            .await
            .with_context(|| format!("binding the webhook on {addr}"))?;
        checks.push(webhook.readiness());
        tokio::spawn(async move {
            if let Err(error) = webhook.run().await {
                tracing::error!(%error, "webhook stopped");
            }
        });
    }
    tokio::spawn(admin::serve(settings.admin_addr, metrics.clone(), checks));
    let ctx = Arc::new(reconcile::Context {
        events: Events::new(client.clone(), &settings.identity),
        client: client.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        dns: Arc::new(dns),
        backoff: Default::default(),
    });
    if !settings.leader_election {
        reconcile::run(ctx).await;
        return Ok(());
    }
    let mut elector = Elector::new(
        client,
        &settings.namespace,
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );
    tokio::select! {
        r = elector.acquire() => r?,
        _ = shutdown() => return Ok(()),
    }
    metrics.set_leader(&settings.lease_name, true);
    tokio::select! {
        // Controllers stop on SIGTERM/SIGINT themselves (shutdown_on_signal); then we release.
        _ = reconcile::run(ctx) => {
            elector.release().await;
            Ok(())
        }
        _ = elector.keep() => {
            // Another replica may already reconcile: exit rather than act on stale leadership.
            bail!("lost the leader lease {}", settings.lease_name)
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
