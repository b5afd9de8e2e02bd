use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    // Usage errors exit 2; --help and --version exit 0 (clap's own exits).
    let args = <cairn_node::cli::Cairnd as clap::Parser>::parse();
    let config_path: Option<PathBuf> = args.config;
    let config = match cairn_catalog::Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "cairnd: failed to load the configuration: {:#}",
                anyhow::Error::from(e)
            );
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &config.daemon.log_dir {
        Some(dir) => match cairn_node::logfile::DailyLog::open(dir, config.daemon.log_keep_days) {
            Ok(log) => builder
                .with_ansi(false)
                .with_writer(move || log.writer())
                .init(),
            Err(e) => {
                eprintln!(
                    "cairnd: cannot write logs in {} (daemon.log_dir): {e}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    let result = serve(config);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon on a multi-threaded runtime until SIGTERM or SIGINT.
fn serve(config: cairn_catalog::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.daemon.workers + 16)
        .enable_all()
        .build()
        .context("failed to start the runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        cairn_syncd::run(config, shutdown).await
    })
}
