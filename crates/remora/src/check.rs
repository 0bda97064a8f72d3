//! `remora check`: validate a configuration and print it resolved.

use std::path::PathBuf;
use std::process::ExitCode;

use remora_proxy::config::Config;

/// Output format of the resolved configuration.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// JSON (pretty).
    Json,
    /// TOML.
    Toml,
}

/// Arguments of `remora check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file to check.
    #[arg(long, short, default_value = "remora.toml")]
    config: PathBuf,
    /// How to print the resolved configuration.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

/// Exits 0 and prints the resolved configuration, or prints
/// `FILE:LINE:COL: message` and exits 2.
pub fn run(args: Args) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Also load what the file points to (keyring, TLS material).
    if let Err(e) = remora_proxy::reload::Runtime::build(config.clone(), None) {
        eprintln!(
            "{}: {}",
            args.config.display(),
            remora_proxy::admin::error_chain(&e)
        );
        return ExitCode::from(2);
    }
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&config).map_err(|e| e.to_string()),
        Format::Toml => toml::to_string_pretty(&config).map_err(|e| e.to_string()),
    };
    match text {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}
