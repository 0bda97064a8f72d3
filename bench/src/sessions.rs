//! `remora-bench sessions`: the same tiny axum app (read the session, append
//! one number to a list, answer) built with `remora-session` and with
//! `tower-sessions`, each on Redis and on its memory store, each in its own
//! process, driven in one run by the same load generator whose clients each
//! keep their own session cookie.
//!
//! Remora's Redis keys carry a unique prefix and are deleted afterwards;
//! tower-sessions' store has no prefix (its keys are bare session IDs), so
//! the benchmark deletes exactly the IDs its clients were given. Nothing
//! else in Redis is touched (never a flush).

mod app;
mod load;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::Value;

use crate::proc::{self, Guard};
use crate::report::{self, note, num};
use crate::{BenchError, http};

use app::{AppConfig, AppKind};

/// Options of `remora-bench sessions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured length of each run.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Unmeasured time before each run (sessions created, connections open).
    #[arg(long, default_value = "2s")]
    warmup: humantime::Duration,
    /// Concurrent clients, each with one connection and one session.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// Tokio worker threads of each app.
    #[arg(long, default_value_t = 2)]
    app_threads: usize,
    /// Redis for both libraries' Redis stores (never flushed).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Connections in tower-sessions' fred pool.
    #[arg(long, default_value_t = 4)]
    tower_pool: usize,
    /// Multiplexed connections of Remora's `RedisStore`
    /// (`RedisStoreBuilder::connections`).
    #[arg(long, default_value_t = remora_session::store::DEFAULT_CONNECTIONS)]
    remora_connections: usize,
    /// Whether Remora's `RedisStore` coalesces concurrent commands into
    /// pipelines (`RedisStoreBuilder::coalesce`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    remora_coalesce: bool,
    /// Which apps to measure (comma-separated; default: all five).
    #[arg(long, value_enum, value_delimiter = ',')]
    apps: Vec<AppKind>,
    /// Measure every app this many times, interleaved, and report each
    /// app's median run (by requests/s).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Keep the temporary directory (app logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Internal: serve one app in this process (the benchmark re-executes
    /// itself with this).
    #[arg(long, hide = true, value_enum)]
    serve: Option<AppKind>,
    /// Internal: the app's listen address.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Internal: Remora's Redis key prefix.
    #[arg(long, hide = true, default_value = "remora-bench:sessions:")]
    prefix: String,
}

/// One app's figures in one run.
#[derive(Debug, Clone)]
struct Run {
    report: load::Report,
    /// CPU time of the app process per request, microseconds.
    cpu_us_per_req: f64,
    /// Redis commands processed per request (whole server: other clients'
    /// commands count too).
    redis_cmds_per_req: Option<f64>,
    /// Redis server CPU time (user + system) per request, microseconds
    /// (whole server, like the command count).
    redis_cpu_us_per_req: Option<f64>,
}

/// A started app process and where it listens.
struct Running {
    guard: Guard,
    addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Outcome {
    runs: Vec<Run>,
    error: Option<String>,
}

impl Outcome {
    fn median(&self) -> Option<&Run> {
        let mut runs: Vec<&Run> = self.runs.iter().collect();
        runs.sort_by(|a, b| a.report.rps.total_cmp(&b.report.rps));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }
}

/// Runs the sessions benchmark (or, with `--serve`, one app) and prints its
/// table and final JSON line.
pub fn run(args: Args) -> Result<(), BenchError> {
    if let Some(kind) = args.serve {
        return app::serve(AppConfig {
            kind,
            addr: args.addr,
            redis: args.redis,
            prefix: args.prefix,
            threads: args.app_threads,
            tower_pool: args.tower_pool,
            remora_connections: args.remora_connections,
            remora_coalesce: args.remora_coalesce,
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("remora-bench-sessions-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "create a temporary directory".into(),
            source,
        })?;
    let redis = RedisProbe::connect(&args.redis)?;
    let prefix = format!(
        "remora-bench:sessions:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let load = load::Load {
        clients: args.clients,
        threads: args.load_threads,
        warmup: *args.warmup,
        duration: *args.duration,
    };
    let rounds = args.rounds.max(1);
    let kinds: Vec<AppKind> = if args.apps.is_empty() {
        AppKind::ALL.to_vec()
    } else {
        AppKind::ALL
            .into_iter()
            .filter(|k| args.apps.contains(k))
            .collect()
    };
    let bar = report::progress(kinds.len() as u64 * u64::from(rounds) * 100);

    let mut apps: Vec<(AppKind, Option<Running>, Outcome)> = Vec::new();
    for kind in kinds {
        bar.set_message(format!("starting {}", kind.name()));
        let mut outcome = Outcome::default();
        let started = start(kind, &args, &prefix, dir.path());
        let running = match started {
            Ok(r) => Some(r),
            Err(e) => {
                note(&bar, format!("{}: {e}", kind.name()));
                outcome.error = Some(e.to_string());
                None
            }
        };
        apps.push((kind, running, outcome));
    }
    let mut tower_cookies = std::collections::BTreeSet::new();
    let mut phase = 0u64;
    for round in 1..=rounds {
        for (kind, running, outcome) in apps.iter_mut() {
            let Some(Running { guard, addr }) = running else {
                continue;
            };
            bar.set_message(format!(
                "{} under load (round {round}/{rounds})",
                kind.name()
            ));
            bar.set_position(phase * 100);
            match measure(*kind, guard, *addr, &load, &redis, &bar, phase * 100) {
                Ok(run) => {
                    if *kind == AppKind::TowerRedis {
                        tower_cookies.extend(run.report.cookies.iter().cloned());
                    }
                    if run.report.lost > 0 || run.report.errors > 0 || run.report.non_2xx > 0 {
                        note(
                            &bar,
                            format!(
                                "{}: {} lost, {} errors, {} non-2xx",
                                kind.name(),
                                run.report.lost,
                                run.report.errors,
                                run.report.non_2xx
                            ),
                        );
                    }
                    outcome.runs.push(run);
                }
                Err(e) => {
                    note(&bar, format!("{}: {e}", kind.name()));
                    outcome.error = Some(e.to_string());
                }
            }
            phase += 1;
        }
    }
    bar.finish_and_clear();
    let outcomes: Vec<(AppKind, Outcome)> = apps
        .into_iter()
        .map(|(kind, running, outcome)| {
            drop(running);
            (kind, outcome)
        })
        .collect();
    match redis.clean(&prefix, &tower_cookies) {
        Ok(n) => eprintln!("deleted {n} benchmark keys from Redis"),
        Err(e) => eprintln!("could not delete the benchmark's Redis keys: {e}"),
    }

    print_table(&args, &load, &outcomes);
    println!("{}", json_line(&outcomes));
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("app logs kept in {}", kept.display());
    }
    Ok(())
}

/// Starts one app process and waits until it answers `/health`.
fn start(kind: AppKind, args: &Args, prefix: &str, dir: &Path) -> Result<Running, BenchError> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        what: "find the benchmark's own binary".into(),
        source,
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], proc::free_port()?));
    let mut cmd = Command::new(exe);
    cmd.arg("sessions")
        .arg("--serve")
        .arg(kind.name())
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--redis")
        .arg(&args.redis)
        .arg("--prefix")
        .arg(prefix)
        .arg("--app-threads")
        .arg(args.app_threads.to_string())
        .arg("--tower-pool")
        .arg(args.tower_pool.to_string())
        .arg("--remora-connections")
        .arg(args.remora_connections.to_string())
        .arg("--remora-coalesce")
        .arg(args.remora_coalesce.to_string());
    let log = dir.join(format!("{}.log", kind.name()));
    let mut guard = Guard::spawn(kind.name(), cmd, &log)?;
    proc::wait_for_port(addr, &mut guard, Duration::from_secs(15))?;
    let head = http::get(addr, "/health", &[])?;
    if head.status != 200 {
        return Err(BenchError::Setup(format!(
            "{} answered {} for /health",
            kind.name(),
            head.status
        )));
    }
    Ok(Running { guard, addr })
}

/// One load run against one app, with the CPU it used and Redis's command
/// count around it.
fn measure(
    kind: AppKind,
    guard: &mut Guard,
    addr: SocketAddr,
    load: &load::Load,
    redis: &RedisProbe,
    bar: &ProgressBar,
    base: u64,
) -> Result<Run, BenchError> {
    let total = (load.warmup + load.duration).as_secs_f64().max(1e-9);
    let pid = guard.pid();
    let mut cpu_at_start: Option<u64> = None;
    let mut redis_at_start: Option<RedisCounters> = None;
    let measure_from = load.warmup;
    let report = load::run(addr, load, |elapsed| {
        bar.set_position(base + ((elapsed.as_secs_f64() / total) * 100.0).min(99.0) as u64);
        if cpu_at_start.is_none() && elapsed >= measure_from {
            cpu_at_start = Some(proc::tree_cpu_ticks(pid));
            if kind.uses_redis() {
                redis_at_start = redis.counters().ok();
            }
        }
    })?;
    let cpu_end = proc::tree_cpu_ticks(pid);
    let redis_end = if kind.uses_redis() {
        redis.counters().ok()
    } else {
        None
    };
    guard.check_alive()?;
    let requests = report.requests.max(1) as f64;
    let ticks = cpu_end.saturating_sub(cpu_at_start.unwrap_or(cpu_end));
    let cpu_us_per_req = ticks as f64 * 1e6 / proc::clock_ticks_per_second() as f64 / requests;
    let (redis_cmds_per_req, redis_cpu_us_per_req) = match (redis_at_start, redis_end) {
        (Some(a), Some(b)) => (
            Some(b.commands.saturating_sub(a.commands) as f64 / requests),
            Some((b.cpu_seconds - a.cpu_seconds).max(0.0) * 1e6 / requests),
        ),
        _ => (None, None),
    };
    Ok(Run {
        report,
        cpu_us_per_req,
        redis_cmds_per_req,
        redis_cpu_us_per_req,
    })
}

/// A small synchronous handle on Redis for the orchestrator: checks it is
/// there, reads its command counter, deletes our keys. (Synchronous so it
/// can be called from the load generator's progress callback.)
struct RedisProbe {
    client: redis::Client,
}

/// How long the orchestrator waits for Redis on any one call.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisProbe {
    fn connect(url: &str) -> Result<Self, BenchError> {
        let client = redis::Client::open(url)
            .map_err(|e| BenchError::Setup(format!("bad Redis URL {url}: {e}")))?;
        let probe = Self { client };
        probe.counters().map_err(|e| {
            BenchError::Setup(format!(
                "Redis at {url} is not reachable ({e}): start one (`redis-server`) or pass --redis"
            ))
        })?;
        Ok(probe)
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self.client.get_connection_with_timeout(REDIS_TIMEOUT)?;
        conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
        Ok(conn)
    }

    /// Commands processed and CPU used so far by the Redis server.
    fn counters(&self) -> redis::RedisResult<RedisCounters> {
        let mut conn = self.conn()?;
        let stats: String = redis::cmd("INFO").arg("stats").query(&mut conn)?;
        let cpu: String = redis::cmd("INFO").arg("cpu").query(&mut conn)?;
        let missing = |what: &'static str| redis::RedisError::from((redis::ErrorKind::Parse, what));
        let commands = info_field(&stats, "total_commands_processed")
            .ok_or_else(|| missing("no total_commands_processed in INFO stats"))?;
        let user: f64 = info_field(&cpu, "used_cpu_user")
            .ok_or_else(|| missing("no used_cpu_user in INFO cpu"))?;
        let sys: f64 = info_field(&cpu, "used_cpu_sys")
            .ok_or_else(|| missing("no used_cpu_sys in INFO cpu"))?;
        Ok(RedisCounters {
            commands,
            cpu_seconds: user + sys,
        })
    }

    /// Deletes Remora's keys under `prefix` and tower-sessions' keys named
    /// by `cookies` (`id=VALUE`: the value is the key). Returns how many
    /// keys were deleted.
    fn clean(
        &self,
        prefix: &str,
        cookies: &std::collections::BTreeSet<String>,
    ) -> redis::RedisResult<u64> {
        let mut conn = self.conn()?;
        let mut keys: Vec<String> = cookies
            .iter()
            .filter_map(|c| c.split_once('=').map(|(_, v)| v.to_owned()))
            .filter(|v| !v.is_empty())
            .collect();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", escape_glob(prefix)))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut deleted = 0u64;
        for chunk in keys.chunks(500) {
            let n: u64 = redis::cmd("DEL").arg(chunk).query(&mut conn)?;
            deleted += n;
        }
        Ok(deleted)
    }
}

/// Redis's cumulative counters at one moment.
#[derive(Debug, Clone, Copy)]
struct RedisCounters {
    /// `total_commands_processed`.
    commands: u64,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    cpu_seconds: f64,
}

/// A `field:value` line of an `INFO` reply, parsed.
fn info_field<T: std::str::FromStr>(info: &str, field: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// `prefix` with Redis glob metacharacters escaped.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn print_table(args: &Args, load: &load::Load, outcomes: &[(AppKind, Outcome)]) {
    println!(
        "sessions: {} clients (one session each), {} load thread(s), {} app threads, \
         {:?} warmup + {:?} measured, {} round(s), tower-sessions fred pool {}",
        load.clients,
        load.threads,
        args.app_threads,
        load.warmup,
        load.duration,
        args.rounds.max(1),
        args.tower_pool
    );
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>8} {:>8} {:>6} {:>12} {:>14} {:>13}",
        "app",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "non-2xx",
        "lost",
        "CPU µs/req",
        "Redis cmd/req",
        "Redis µs/req"
    );
    for (kind, outcome) in outcomes {
        match outcome.median() {
            Some(run) => {
                let r = &run.report;
                let cmds = run
                    .redis_cmds_per_req
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
                let redis_cpu = run
                    .redis_cpu_us_per_req
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
                println!(
                    "{:<14} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>8} {:>6} {:>12.1} {:>14} {:>13}",
                    kind.name(),
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    r.non_2xx,
                    r.lost,
                    run.cpu_us_per_req,
                    cmds,
                    redis_cpu
                );
            }
            None => println!(
                "{:<14} failed: {}",
                kind.name(),
                outcome.error.as_deref().unwrap_or("no run")
            ),
        }
    }
    let rps = |k: AppKind| {
        outcomes
            .iter()
            .find(|(kind, _)| *kind == k)
            .and_then(|(_, o)| o.median())
            .map(|r| r.report.rps)
    };
    if let (Some(r), Some(t)) = (rps(AppKind::RemoraRedis), rps(AppKind::TowerRedis))
        && t > 0.0
    {
        println!("remora/tower on Redis: {:.2}x req/s", r / t);
    }
    if let (Some(r), Some(t)) = (rps(AppKind::RemoraRedisNocache), rps(AppKind::TowerRedis))
        && t > 0.0
    {
        println!("remora (no near cache)/tower on Redis: {:.2}x req/s", r / t);
    }
}

fn json_line(outcomes: &[(AppKind, Outcome)]) -> String {
    let pick = |k: AppKind, f: fn(&Run) -> f64| -> Value {
        num(outcomes
            .iter()
            .find(|(kind, _)| *kind == k)
            .and_then(|(_, o)| o.median())
            .map(f))
    };
    let rps = |r: &Run| r.report.rps;
    let p99 = |r: &Run| r.report.p99_ms;
    report::json_line(vec![
        ("bench", Value::from("sessions")),
        ("remora_redis_rps", pick(AppKind::RemoraRedis, rps)),
        ("tower_redis_rps", pick(AppKind::TowerRedis, rps)),
        ("remora_memory_rps", pick(AppKind::RemoraMemory, rps)),
        ("tower_memory_rps", pick(AppKind::TowerMemory, rps)),
        ("remora_redis_p99_ms", pick(AppKind::RemoraRedis, p99)),
        ("tower_redis_p99_ms", pick(AppKind::TowerRedis, p99)),
        (
            "remora_redis_nocache_rps",
            pick(AppKind::RemoraRedisNocache, rps),
        ),
        (
            "remora_redis_nocache_p99_ms",
            pick(AppKind::RemoraRedisNocache, p99),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(rps: f64, p99: f64) -> Run {
        Run {
            report: load::Report {
                rps,
                p99_ms: p99,
                ..Default::default()
            },
            cpu_us_per_req: 1.0,
            redis_cmds_per_req: None,
            redis_cpu_us_per_req: None,
        }
    }

    #[test]
    fn json_line_has_the_required_keys_in_order() {
        let outcomes = vec![
            (
                AppKind::RemoraRedis,
                Outcome {
                    runs: vec![
                        run_with(3000.0, 2.5),
                        run_with(1000.0, 9.0),
                        run_with(2000.0, 4.0),
                    ],
                    error: None,
                },
            ),
            (AppKind::TowerRedis, Outcome::default()),
        ];
        let line = json_line(&outcomes);
        assert_eq!(
            line,
            r#"{"bench":"sessions","remora_redis_rps":2000.0,"tower_redis_rps":null,"remora_memory_rps":null,"tower_memory_rps":null,"remora_redis_p99_ms":4.0,"tower_redis_p99_ms":null,"remora_redis_nocache_rps":null,"remora_redis_nocache_p99_ms":null}"#
        );
    }

    /// The load generator against both memory apps, in process: every
    /// client keeps its one session (each answer is the previous plus one,
    /// which a lost cookie or a lost update would break).
    #[test]
    fn each_client_keeps_its_session_on_both_libraries() {
        for kind in [AppKind::RemoraMemory, AppKind::TowerMemory] {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let cfg = AppConfig {
                kind,
                addr,
                redis: String::new(),
                prefix: String::new(),
                threads: 1,
                tower_pool: 1,
                remora_connections: 1,
                remora_coalesce: true,
            };
            let router = rt.block_on(app::build(&cfg)).expect("build the app");
            rt.spawn(async move { axum::serve(listener, router).await });
            let load = load::Load {
                clients: 4,
                threads: 1,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(400),
            };
            let report = load::run(addr, &load, |_| {}).expect("load run");
            let name = kind.name();
            assert!(
                report.requests > 4 * 3,
                "{name}: only {} requests",
                report.requests
            );
            assert_eq!(
                (report.lost, report.errors, report.non_2xx),
                (0, 0, 0),
                "{name}: lost, errors, non-2xx"
            );
            assert_eq!(report.cookies.len(), 4, "{name}: one session per client");
            assert!(
                report.p99_ms > 0.0 && report.rps > 0.0,
                "{name}: {report:?}"
            );
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }

    #[test]
    fn info_fields_parse() {
        let info =
            "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(info_field::<f64>(info, "used_cpu_sys"), Some(1.5));
        assert_eq!(info_field::<f64>(info, "used_cpu_user"), Some(2.25));
        assert_eq!(info_field::<u64>(info, "total_commands_processed"), None);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:");
    }
}
