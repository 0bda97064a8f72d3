//! `cargo run --release -p remora-bench -- <bench>`: Remora beside its peers.

use clap::{Parser, Subcommand};

/// Remora's comparative benchmarks.
#[derive(Parser, Debug)]
#[command(name = "remora-bench", about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {}

fn main() {
    let cli = Cli::parse();
    match cli.bench {}
}
