//! The `remora` binary: one module per subcommand.

mod bayeux;
mod check;
mod demo;
mod demo_app;
mod keygen;
mod serve;
mod test_backend;

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
    /// Run the load balancer (`--config FILE`); SIGTERM drains, SIGHUP reloads.
    Serve(serve::Args),
    /// Validate a configuration and print it resolved; exit 2 on a mistake.
    Check(check::Args),
    /// A tiny HTTP/WebSocket backend for tests and examples.
    #[command(hide = true)]
    TestBackend(test_backend::Args),
    /// Print a fresh 256-bit sealing key (base64url), for the `[keys]` file.
    Keygen(keygen::Args),
    /// Serve Bayeux (CometD/Faye compatible) at `/cometd`.
    Bayeux(bayeux::Args),
    /// The demo: a shop behind the balancer whose cart survives a crashed server.
    Demo(demo::Args),
    /// The demo's shop server: sessions with replicas, the page, `/cometd`.
    DemoApp(demo_app::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::TestBackend(args) => test_backend::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Bayeux(args) => bayeux::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoApp(args) => demo_app::run(args),
    }
}
