//! The `remora` binary: one module per subcommand.

mod keygen;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Remora keeps web sessions alive while traffic moves between servers.
#[derive(Parser, Debug)]
#[command(name = "remora", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a fresh 256-bit sealing key (base64url), for the `[keys]` file.
    Keygen(keygen::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen(args) => keygen::run(args),
    }
}
