//! `mailroom-sidecar`: wiring only. Settings from the environment, config from the file, then
//! the app until SIGTERM, then drain.

use clap::Parser;
use mailroom_sidecar::{
    app::App,
    config::Config,
    control::cli,
    settings::{Env, LogFormat, Settings},
    shutdown,
};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

/// jemalloc, tuned at build time (.cargo/config.toml) to give memory back after a burst.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// BSD `EX_USAGE`: bad settings or config (as linkerd does).
const EX_USAGE: u8 = 64;
/// BSD `EX_UNAVAILABLE`: could not start (spool, bind).
const EX_UNAVAILABLE: u8 = 69;

/// The command line; settings come from the environment (docs/configuration.md).
#[derive(Debug, Parser)]
#[command(
    name = "mailroom-sidecar",
    version,
    about = "mailroom-sidecar: local SMTP relay with a durable spool",
    after_help = "Without options it runs with SIDECAR_CONFIG_PATH (default /etc/mailroom/sidecar.yaml).\n\
With `queue` or `quarantine` it is a client of a running sidecar's queue API.\n\n\
ENVIRONMENT:\n    SIDECAR_CONFIG_PATH, SIDECAR_LISTEN_ADDR, SIDECAR_ADMIN_ADDR, SIDECAR_QUEUE_API_ADDR,\n    \
SIDECAR_DRAIN_SECONDS, SIDECAR_RELOAD_INTERVAL_SECONDS, SIDECAR_DELIVERY_NICE (0-19),\n    \
SIDECAR_SESSION_THREADS (0 = one per CPU), SIDECAR_LOG_FORMAT (json|plain), RUST_LOG"
)]
#[group(id = "mode", multiple = false)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// See and steer a running sidecar's queue (docs/operations.md "Day two").
    #[command(subcommand)]
    command: Option<Command>,
    /// Run with FILE instead of SIDECAR_CONFIG_PATH.
    #[arg(long, value_name = "FILE", group = "mode")]
    config: Option<PathBuf>,
    /// Validate FILE as start-up would (overrides from the environment, the files it names) and
    /// exit: 0 valid, 64 not.
    #[arg(long, value_name = "FILE", group = "mode")]
    check_config: Option<PathBuf>,
    /// Validate the document alone (what the operator renders; the files it names need not
    /// exist here).
    #[arg(long, value_name = "FILE", group = "mode")]
    check_document: Option<PathBuf>,
}

/// Subcommands: clients of a running sidecar's queue API.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List, show, flush, retry, hold, release or delete queued mail.
    Queue {
        #[command(subcommand)]
        command: cli::QueueCommand,
        #[command(flatten)]
        opts: cli::ClientOpts,
    },
    /// List or release what the spool set aside as damaged.
    Quarantine {
        #[command(subcommand)]
        command: cli::QuarantineCommand,
        #[command(flatten)]
        opts: cli::ClientOpts,
    },
}

fn main() -> ExitCode {
    let json_requested = std::env::var(mailroom_sidecar::settings::ENV_LOG_FORMAT).as_deref() == Ok("json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // With JSON logs, one JSON object like every fatal error; else clap's own message.
        Err(e) if json_requested => {
            init_tracing(LogFormat::Json);
            let error = e.render().to_string();
            tracing::error!(error = error.trim_end(), "invalid command line");
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Some(Command::Queue { command, opts }) => {
            return ExitCode::from(cli::run(cli::Request::Queue(command), opts));
        }
        Some(Command::Quarantine { command, opts }) => {
            return ExitCode::from(cli::run(cli::Request::Quarantine(command), opts));
        }
        None => {}
    }
    if let Some(file) = &cli.check_document {
        return check_document(file);
    }
    let mut settings = match Settings::parse(&Env) {
        Ok(s) => s,
        Err(e) => {
            // Through the log formatter the settings asked for, as every later fatal error.
            init_tracing(if json_requested {
                LogFormat::Json
            } else {
                LogFormat::Plain
            });
            tracing::error!(error = %e, "invalid settings");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Some(file) = &cli.check_config {
        return check_config(&settings, file);
    }
    if let Some(file) = cli.config {
        settings.config_path = file;
    }
    init_tracing(settings.log_format);
    let path = settings.config_path.clone();
    let config = match Config::load(&path).and_then(|c| settings.finish(&path, c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let rt = match sessions_runtime(settings.session_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    rt.block_on(async move {
        let app = match App::build(settings, config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        tracing::info!(
            smtp = %app.smtp_addr(),
            admin = %app.admin_addr(),
            queue_api = %app.queue_api_addr(),
            session_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "listening"
        );
        let running = app.spawn();
        shutdown::signal_received().await;
        running.drain().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The runtime of the SMTP sessions and the admin and queue APIs (delivery has its own,
/// `DeliveryRuntime`): `threads` workers, or one per CPU the process may use (which honours a
/// cgroup CPU limit) when 0.
fn sessions_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.thread_name("sessions").enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.build()
}

/// Validates `file` exactly as start-up would: the document, the environment's overrides, and
/// the files it names.
fn check_config(settings: &Settings, path: &Path) -> ExitCode {
    let file = path.display();
    match Config::load(path).and_then(|c| settings.finish(path, c)) {
        Ok(_) => {
            println!("{file}: valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// Validates the document alone: for rendered configs checked away from the pod.
fn check_document(path: &Path) -> ExitCode {
    let file = path.display();
    match Config::load(path) {
        Ok(_) => {
            println!("{file}: valid document");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}
