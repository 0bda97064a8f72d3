//! `cargo run --release -p remora-bench -- <bench>`: Remora beside its peers.
//!
//! Each subcommand starts what it measures itself, shows a progress bar on
//! stderr, prints a table and ends with one JSON line on stdout.
//!
//! Shared helpers for every subcommand: `proc` (start and always stop child
//! processes, free ports, resident memory and CPU time of a process tree),
//! `http` (a tiny bounded HTTP/1.1 client), `idle` (many idle keep-alive
//! connections), `wrk` (run wrk, parse its report) and `report` (the
//! progress bar and the ordered JSON line).

mod bayeux;
mod chaos;
mod failover;
mod http;
mod idle;
mod proc;
mod proxy;
mod report;
mod sessions;
mod wrk;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Remora's comparative benchmarks.
#[derive(Parser, Debug)]
#[command(name = "remora-bench", about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Bayeux fan-out: `remora bayeux` vs Faye, messages/s, latency, memory.
    Bayeux(bayeux::Args),
    /// Shoppers while shop servers are killed: what is lost, per mode.
    Chaos(chaos::Args),
    /// Time a replica restore adds to the first request after a failover.
    Failover(failover::Args),
    /// Requests/s, latency and memory: direct, Remora, HAProxy, nginx.
    Proxy(proxy::Args),
    /// Session layer: remora-session vs tower-sessions, Redis and memory.
    Sessions(sessions::Args),
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An operating-system call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A prerequisite is missing or a target is misconfigured.
    #[error("{0}")]
    Setup(String),
    /// A child process exited while it should be serving.
    #[error("{name} exited early ({status}); see its log")]
    Exited {
        /// Which child.
        name: String,
        /// Its exit status.
        status: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// wrk failed or printed something unexpected.
    #[error("wrk: {0}")]
    Wrk(String),
    /// A probe request got a bad response.
    #[error("http: {0}")]
    Http(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Bayeux(args) => bayeux::run(args),
        Bench::Chaos(args) => chaos::run(args),
        Bench::Failover(args) => failover::run(args),
        Bench::Proxy(args) => proxy::run(args),
        Bench::Sessions(args) => sessions::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("remora-bench: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
