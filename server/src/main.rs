//! `hulld [--config FILE] [--print-config] [--log-format text|json]`
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 for a bad config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hulld::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};
use hulld::daemon::{self, Daemon};

#[derive(Parser, Debug)]
#[command(
    name = "hulld",
    version,
    about = "hull: a CRI runtime that runs every pod in a microVM"
)]
struct Args {
    /// Config file (every key optional).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log format; overrides `log_format` in the config.
    #[arg(long, value_enum)]
    log_format: Option<Format>,
    /// Log level or filter; overrides `log_level` in the config.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = match Config::load(&path, required) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hulld: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    if let Some(format) = args.log_format {
        config.log_format = match format {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        };
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    hulld::logging::init(&config.log_level, config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hulld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hulld")
        .build()?;
    runtime.block_on(async move {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "hulld starting");
        let shutdown = daemon::shutdown_signal()?;
        // The socket first: a second hulld is refused before it touches the store.
        let socket = config.socket.clone();
        let listener = daemon::bind_socket(&socket).await?;
        let daemon = match Daemon::open(config) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                drop(listener);
                let _ = std::fs::remove_file(&socket);
                return Err(e.into());
            }
        };
        daemon::serve(daemon, listener, shutdown).await?;
        Ok(())
    })
}
