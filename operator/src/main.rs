//! mailroom operator entry point: `mailroom-operator` runs the controllers (behind a Lease when
//! leader election is on) and the admin server; `mailroom-operator render -f DIR` works offline.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Parser, Subcommand};

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

/// The command line; without a subcommand the operator runs (settings from `OPERATOR_*`).
#[derive(Debug, Parser)]
#[command(
    name = "mailroom-operator",
    version,
    about = "The mailroom operator: reconciles MailDomains and Relays, serves the injection webhook.",
    after_help = "Without a command it runs the operator; settings come from OPERATOR_* variables (docs/operations.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render MailDomain and Relay YAML offline: sidecar configs, DKIM keys, DNS records.
    #[command(override_usage = "mailroom-operator render -f DIR [-o OUT]")]
    Render {
        /// Directory of MailDomain and Relay YAML files.
        #[arg(short = 'f', value_name = "DIR")]
        dir: PathBuf,
        /// Where to write what it renders.
        #[arg(short = 'o', value_name = "OUT", default_value = "rendered")]
        out: PathBuf,
    },
    /// Prove an installation works (what `helm test` runs): a temporary Relay rendered and
    /// injected by every webhook replica.
    Check {
        /// Namespace of the temporary Relay (the release namespace).
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// The MutatingWebhookConfiguration to probe.
        #[arg(long, value_name = "NAME")]
        webhook_config: String,
        /// Name of the temporary MailDomain and Relay.
        #[arg(long, value_name = "NAME", default_value = "mailroom-check")]
        name: String,
        /// Seconds each step may take.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
}

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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        // With JSON logs, through the log formatter like every fatal error (one JSON object
        // per line); otherwise clap's own message, for a person at a terminal.
        Err(e) if json_logs => {
            let error = e.render().to_string();
            tracing::error!(error = error.trim_end(), "mailroom-operator stopped");
            return std::process::ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(EX_USAGE);
        }
    };
    let result = match cli.command {
        None => run().await,
        Some(Command::Render { dir, out }) => render(&dir, &out),
        Some(Command::Check {
            namespace,
            webhook_config,
            name,
            timeout,
        }) => {
            check(CheckSettings {
                namespace,
                name,
                webhook_config,
                timeout: std::time::Duration::from_secs(timeout),
            })
            .await
        }
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
fn render(dir: &Path, out: &Path) -> Result<(), Exit> {
    let summary = offline::render_dir(dir, out).map_err(Exit::usage)?;
    for path in summary.configs.iter().chain(&summary.keys).chain(&summary.dns) {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `helm test`: a temporary Relay rendered and injected through every webhook replica.
async fn check(settings: CheckSettings) -> Result<(), Exit> {
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
