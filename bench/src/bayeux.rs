//! `bayeux`: `remora bayeux` beside a Faye 1.4 Node server, same load.
//!
//! For each server and each subscriber transport (long-polling, then
//! WebSocket) a fresh server is started, `--clients` Bayeux clients
//! handshake and subscribe to `--rooms` rooms, `--publishers` long-polling
//! clients publish `{"t": µs}` to random rooms at `--rate` publishes/s
//! offered in total (`--batch` messages per request, `--in-flight` requests
//! at once per publisher), and for the publishes of `--duration` (after
//! `--warmup`) the load generator verifies and counts the deliveries, the
//! losses and publish-to-delivery latency, and the CPU per delivered
//! message of the server and of itself. Then, on another fresh server, `--hold-clients` long-polling
//! clients each keep one `/meta/connect` held while the server's resident
//! memory is read.

mod hold;
mod load;
mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::BenchError;
use crate::proc::{self, Guard};
use crate::report;
use wire::Transport;

/// Arguments of the `bayeux` benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Subscribing clients per run.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Rooms (`/rooms/0` ..); clients are spread evenly over them.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Publishes per second offered, all publishers together (the default,
    /// 2,000,000 deliveries/s with 50 subscribers per room, is above what
    /// either server delivers on two cores, so both are measured at
    /// capacity).
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
    /// Publishing clients (long-polling).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publish messages per request (a Bayeux message array, as the CometD
    /// client batches them).
    #[arg(long, default_value_t = 40)]
    batch: usize,
    /// Publish requests in flight per publisher (each on its own
    /// connection, same Bayeux client).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Measured time per run.
    #[arg(long, default_value = "20s")]
    duration: humantime::Duration,
    /// Time under load before measuring.
    #[arg(long, default_value = "3s")]
    warmup: humantime::Duration,
    /// How long after the window deliveries of its publishes still count
    /// (later ones count as lost).
    #[arg(long, default_value = "5s")]
    drain: humantime::Duration,
    /// Quiet long-polling clients for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    hold_clients: usize,
    /// Clients set up at once.
    #[arg(long, default_value_t = 100)]
    setup_parallel: usize,
    /// Skip the WebSocket runs.
    #[arg(long)]
    no_websocket: bool,
    /// Only the held-clients memory measurement (no throughput runs).
    #[arg(long)]
    only_hold: bool,
    /// Skip Faye (Remora only; its keys are then `null`).
    #[arg(long)]
    no_faye: bool,
    /// The `remora` release binary (default: next to this binary, then
    /// `$CARGO_TARGET_DIR/release/remora`, then `target/release/remora`).
    #[arg(long)]
    remora_bin: Option<PathBuf>,
    /// The Faye server directory (`server.mjs`, `node_modules/faye`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/faye"))]
    faye_dir: PathBuf,
    /// Keep the temporary directory (server logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
}

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Remora,
    Faye,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Remora => "remora",
            Server::Faye => "faye",
        }
    }
}

/// Where the servers' programs are.
struct Programs {
    remora: PathBuf,
    node: PathBuf,
    faye_dir: PathBuf,
    logs: PathBuf,
}

impl Programs {
    /// Starts `server` on a free port and waits until it listens.
    fn start(&self, server: Server, label: &str) -> Result<(Guard, SocketAddr), BenchError> {
        let port = proc::free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut cmd = match server {
            Server::Remora => {
                let mut c = Command::new(&self.remora);
                c.arg("bayeux")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .env("RUST_LOG", "warn");
                c
            }
            Server::Faye => {
                let mut c = Command::new(&self.node);
                c.arg("server.mjs")
                    .arg(port.to_string())
                    .current_dir(&self.faye_dir);
                c
            }
        };
        cmd.env_remove("NODE_OPTIONS");
        let log = self.logs.join(format!("{}-{label}.log", server.name()));
        let mut guard = Guard::spawn(server.name(), cmd, &log)?;
        proc::wait_for_port(addr, &mut guard, Duration::from_secs(20))?;
        Ok((guard, addr))
    }
}

/// One load run's row in the table.
struct Row {
    server: Server,
    transport: Transport,
    outcome: load::Outcome,
}

/// Runs the benchmark and prints the table and the JSON line.
pub fn run(args: Args) -> Result<(), BenchError> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let remora = crate::proc::find_remora(args.remora_bin.as_deref()).ok_or_else(|| {
        BenchError::Setup(
            "remora release binary not found: build it with `cargo build --release -p remora` \
             or pass --remora-bin"
                .into(),
        )
    })?;
    let node = if args.no_faye {
        PathBuf::new()
    } else {
        let node = proc::which("node")
            .ok_or_else(|| BenchError::Setup("node not found on PATH (needed for Faye)".into()))?;
        if !args.faye_dir.join("node_modules/faye").is_dir() {
            return Err(BenchError::Setup(format!(
                "Faye is not installed: run `npm ci` in {}",
                args.faye_dir.display()
            )));
        }
        node
    };
    let dir = tempfile::Builder::new()
        .prefix("remora-bench-bayeux-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "create a temporary directory".into(),
            source,
        })?;
    let programs = Programs {
        remora,
        node,
        faye_dir: args.faye_dir.clone(),
        logs: dir.path().to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "start the tokio runtime".into(),
            source,
        })?;

    let servers: Vec<Server> = if args.no_faye {
        vec![Server::Remora]
    } else {
        vec![Server::Remora, Server::Faye]
    };
    let transports: Vec<Transport> = if args.only_hold {
        vec![]
    } else if args.no_websocket {
        vec![Transport::LongPolling]
    } else {
        vec![Transport::LongPolling, Transport::WebSocket]
    };
    let runs = (servers.len() * (transports.len() + usize::from(args.hold_clients > 0))) as u64;
    let bar = report::progress(runs);
    report::note(
        &bar,
        format!(
            "bayeux: {} clients, {} rooms, {} publishes/s offered by {} publishers ({} per \
             request, {} requests in flight each), {} measured after {} warm-up (logs in {})",
            args.clients,
            args.rooms,
            args.rate,
            args.publishers,
            args.batch,
            args.in_flight,
            args.duration,
            args.warmup,
            dir.path().display()
        ),
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut held: Vec<(Server, hold::Outcome)> = Vec::new();
    for &server in &servers {
        for &transport in &transports {
            bar.set_message(format!("{} {}", server.name(), transport.name()));
            let (mut guard, addr) = programs.start(server, transport.name())?;
            let params = load::Params {
                clients: args.clients,
                rooms: args.rooms,
                rate: args.rate,
                publishers: args.publishers,
                batch: args.batch,
                in_flight: args.in_flight,
                warmup: args.warmup.into(),
                duration: args.duration.into(),
                drain: args.drain.into(),
                transport,
                setup_parallel: args.setup_parallel,
                setup_timeout: Duration::from_secs(30),
            };
            let outcome = runtime.block_on(load::run(addr, guard.pid(), &params))?;
            guard.check_alive()?;
            report::note(&bar, describe(server, transport, &outcome));
            rows.push(Row {
                server,
                transport,
                outcome,
            });
            guard.stop(Duration::from_secs(3));
            bar.inc(1);
        }
        if args.hold_clients > 0 {
            bar.set_message(format!(
                "{} {} held clients",
                server.name(),
                args.hold_clients
            ));
            let (mut guard, addr) = programs.start(server, "hold")?;
            let outcome = runtime.block_on(hold::run(
                addr,
                guard.pid(),
                args.hold_clients,
                args.setup_parallel,
                Duration::from_secs(2),
                Duration::from_secs(120),
            ))?;
            guard.check_alive()?;
            report::note(
                &bar,
                format!(
                    "{:<7} {} held long-polling clients: {:.1} MB RSS ({:.1} MB idle), opened in \
                     {:.1} s",
                    server.name(),
                    outcome.clients,
                    outcome.rss_kb as f64 / 1024.0,
                    outcome.rss_before_kb as f64 / 1024.0,
                    outcome.setup.as_secs_f64()
                ),
            );
            held.push((server, outcome));
            guard.stop(Duration::from_secs(3));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    print_table(&rows, &held);
    println!("{}", json(&args, &rows, &held));
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn describe(server: Server, transport: Transport, o: &load::Outcome) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let mut line = format!(
        "{:<7} {:<12} delivered {:>8.0}/s of {:>8.0}/s expected ({} lost), p50 {} ms, p99 {} ms, \
         max {} ms, {:.0} of {:.0} publishes/s acknowledged, server CPU {:.0}% ({} µs/msg), \
         generator CPU {:.0}% ({} µs/msg)",
        server.name(),
        transport.name(),
        o.delivered_per_s,
        o.expected_per_s,
        o.lost,
        ms(o.p50_ms),
        ms(o.p99_ms),
        ms(o.max_ms),
        o.published_per_s,
        o.offered_per_s,
        o.server_cpu_percent,
        us(o.server_cpu_us_per_msg),
        o.generator_cpu_percent,
        us(o.generator_cpu_us_per_msg),
    );
    if o.extra > 0 {
        line.push_str(&format!(", {} deliveries beyond those expected", o.extra));
    }
    if o.errors > 0 {
        line.push_str(&format!(
            ", {} client errors (last: {})",
            o.errors,
            o.last_error.as_deref().unwrap_or("?")
        ));
    }
    line
}

fn print_table(rows: &[Row], held: &[(Server, hold::Outcome)]) {
    println!(
        "{:<8} {:<13} {:>12} {:>12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7} {:>9} {:>7} {:>9} {:>6}",
        "server",
        "transport",
        "delivered/s",
        "expected/s",
        "lost",
        "p50 ms",
        "p99 ms",
        "max ms",
        "offered/s",
        "acked/s",
        "CPU %",
        "µs/msg",
        "gen %",
        "gen µs",
        "errors"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for r in rows {
        let o = &r.outcome;
        println!(
            "{:<8} {:<13} {:>12.0} {:>12.0} {:>8} {:>8} {:>8} {:>9} {:>9.0} {:>10.0} {:>7.0} {:>9} {:>7.0} {:>9} {:>6}",
            r.server.name(),
            r.transport.name(),
            o.delivered_per_s,
            o.expected_per_s,
            o.lost,
            ms(o.p50_ms),
            ms(o.p99_ms),
            ms(o.max_ms),
            o.offered_per_s,
            o.published_per_s,
            o.server_cpu_percent,
            us(o.server_cpu_us_per_msg),
            o.generator_cpu_percent,
            us(o.generator_cpu_us_per_msg),
            o.errors
        );
    }
    for (server, h) in held {
        println!(
            "{:<8} {} held long-polling clients: {:.1} MB RSS",
            server.name(),
            h.clients,
            h.rss_kb as f64 / 1024.0
        );
    }
}

fn json(args: &Args, rows: &[Row], held: &[(Server, hold::Outcome)]) -> String {
    let find = |server: Server, transport: Transport| {
        rows.iter()
            .find(|r| r.server == server && r.transport == transport)
            .map(|r| &r.outcome)
    };
    let rate = |s, t| report::num(find(s, t).map(|o| o.delivered_per_s));
    let p99 = |s, t| report::num(find(s, t).and_then(|o| o.p99_ms));
    let cpu = |s, t| report::num(find(s, t).and_then(|o| o.server_cpu_us_per_msg));
    let lost = |s, t| find(s, t).map_or(Value::Null, |o| Value::from(o.lost));
    let rss = |s: Server| {
        report::num(
            held.iter()
                .find(|(h, _)| *h == s)
                .map(|(_, o)| o.rss_kb as f64 / 1024.0),
        )
    };
    let (lp, ws) = (Transport::LongPolling, Transport::WebSocket);
    let (r, f) = (Server::Remora, Server::Faye);
    report::json_line(vec![
        ("bench", Value::from("bayeux")),
        ("remora_msgs_per_s", rate(r, lp)),
        ("faye_msgs_per_s", rate(f, lp)),
        ("remora_p99_ms", p99(r, lp)),
        ("faye_p99_ms", p99(f, lp)),
        ("remora_rss_mb_10k_clients", rss(r)),
        ("remora_ws_msgs_per_s", rate(r, ws)),
        ("faye_ws_msgs_per_s", rate(f, ws)),
        ("remora_ws_p99_ms", p99(r, ws)),
        ("faye_ws_p99_ms", p99(f, ws)),
        ("faye_rss_mb_10k_clients", rss(f)),
        ("remora_cpu_us_per_msg", cpu(r, lp)),
        ("faye_cpu_us_per_msg", cpu(f, lp)),
        ("remora_ws_cpu_us_per_msg", cpu(r, ws)),
        ("faye_ws_cpu_us_per_msg", cpu(f, ws)),
        ("remora_lost", lost(r, lp)),
        ("faye_lost", lost(f, lp)),
        ("remora_ws_lost", lost(r, ws)),
        ("faye_ws_lost", lost(f, ws)),
        ("hold_clients", Value::from(args.hold_clients)),
        ("clients", Value::from(args.clients)),
        ("rooms", Value::from(args.rooms)),
        ("publish_rate", report::num(Some(args.rate))),
        ("publishers", Value::from(args.publishers)),
        ("batch", Value::from(args.batch)),
        ("in_flight", Value::from(args.in_flight)),
        ("duration_s", report::num(Some(args.duration.as_secs_f64()))),
    ])
}
