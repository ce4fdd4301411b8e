//! `mailroom-sidecar`: wiring only. Settings from the environment, config from the file, then
//! the app until SIGTERM, then drain.

use mailroom_sidecar::{
    app::App,
    config::Config,
    settings::{Env, LogFormat, Settings},
    shutdown,
};
use std::process::ExitCode;

/// jemalloc, tuned at build time (.cargo/config.toml) to give memory back after a burst.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// BSD `EX_USAGE`: bad settings or config (as linkerd does).
const EX_USAGE: u8 = 64;
/// BSD `EX_UNAVAILABLE`: could not start (spool, bind).
const EX_UNAVAILABLE: u8 = 69;

const HELP: &str = "mailroom-sidecar: local SMTP relay with a durable spool

USAGE:
    mailroom-sidecar                      run with SIDECAR_CONFIG_PATH (default /etc/mailroom/sidecar.yaml)
    mailroom-sidecar --config FILE        run with FILE
    mailroom-sidecar --check-config FILE  validate FILE as start-up would (overrides from the
                                          environment, files it names) and exit: 0 valid, 64 not
    mailroom-sidecar --check-document FILE
                                          validate the document alone (what the operator renders;
                                          the files it names need not exist here)
    mailroom-sidecar --version

ENVIRONMENT:
    SIDECAR_CONFIG_PATH, SIDECAR_LISTEN_ADDR, SIDECAR_ADMIN_ADDR, SIDECAR_DRAIN_SECONDS,
    SIDECAR_RELOAD_INTERVAL_SECONDS, SIDECAR_LOG_FORMAT (json|plain), RUST_LOG
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut settings = match Settings::parse(&Env) {
        Ok(s) => s,
        Err(e) => {
            // Through the log formatter the settings asked for, as every later fatal error.
            let json = std::env::var(mailroom_sidecar::settings::ENV_LOG_FORMAT).as_deref() == Ok("json");
            init_tracing(if json { LogFormat::Json } else { LogFormat::Plain });
            tracing::error!(error = %e, "invalid settings");
            return ExitCode::from(EX_USAGE);
        }
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["--check-config", file] => return check_config(&settings, file),
        ["--check-document", file] => return check_document(file),
        ["--config", file] => settings.config_path = file.into(),
        ["--version"] => {
            println!("mailroom-sidecar {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h"] => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("mailroom-sidecar: unexpected arguments {args:?}\n\n{HELP}");
            return ExitCode::from(EX_USAGE);
        }
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
    let rt = match tokio::runtime::Runtime::new() {
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
        tracing::info!(smtp = %app.smtp_addr(), admin = %app.admin_addr(), "listening");
        let running = app.spawn();
        shutdown::signal_received().await;
        running.drain().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Validates `file` exactly as start-up would: the document, the environment's overrides, and
/// the files it names.
fn check_config(settings: &Settings, file: &str) -> ExitCode {
    let path = std::path::Path::new(file);
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
fn check_document(file: &str) -> ExitCode {
    match Config::load(file.as_ref()) {
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
