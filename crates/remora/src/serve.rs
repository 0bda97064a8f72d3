//! `remora serve`: run the load balancer.

use std::path::PathBuf;
use std::process::ExitCode;

use remora_proxy::config::Config;

/// Arguments of `remora serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (TOML; see docs/configuration.md).
    #[arg(long, short, default_value = "remora.toml")]
    config: PathBuf,
    /// Worker threads for client connections (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the balancer until SIGTERM/SIGINT; exits 2 on a configuration error.
pub fn run(args: Args) -> ExitCode {
    init_tracing();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // A small runtime for accepting, health checks and the admin API; client
    // connections run on per-core worker threads started by remora-proxy.
    let workers = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(remora_proxy::serve::run_with_workers(
        config,
        workers.max(1),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora serve: {}", remora_proxy::admin::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `REMORA_LOG` (default `info`).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REMORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
