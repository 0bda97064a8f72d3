//! `remora keygen`: print a fresh sealing key.

use std::process::ExitCode;

/// Arguments of `remora keygen`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How many keys to print, one a line.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

/// Prints `count` fresh base64url keys.
pub fn run(args: Args) -> ExitCode {
    for _ in 0..args.count.max(1) {
        println!("{}", remora_seal::generate_key_b64());
    }
    ExitCode::SUCCESS
}
