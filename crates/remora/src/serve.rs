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
    /// Worker threads (default: one per CPU).
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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(remora_proxy::serve::run(config)) {
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
