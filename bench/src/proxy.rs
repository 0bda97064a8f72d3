//! `remora-bench proxy`: one nginx backend serving a 1 KiB file, measured
//! with the same wrk settings directly and through Remora, HAProxy and
//! nginx, each with cookie affinity on the sticky path; then resident memory
//! of Remora and HAProxy holding many idle keep-alive client connections.

mod configs;
mod output;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use crate::proc::{self, Guard};
use crate::report::{self, note};
use crate::wrk::{self, Load, Report};
use crate::{BenchError, http, idle};

use configs::Limits;

/// Options of `remora-bench proxy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Length of each wrk run.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// wrk connections (`-c`), the same for every target.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads (`-t`), the same for every target.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Idle keep-alive client connections for the memory measurement
    /// (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The `remora` release binary (default: next to this binary, then
    /// `$CARGO_TARGET_DIR/release/remora`, then `target/release/remora`).
    #[arg(long)]
    remora_bin: Option<PathBuf>,
    /// A second `remora` binary (another build), measured as
    /// `remora-compare` with the same config, interleaved with the others:
    /// two builds compared within one sitting.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// Targets not to measure under load, comma-separated (`direct`,
    /// `remora`, `remora-compare`, `haproxy`, `haproxy-bare`, `nginx`): shorter sittings when
    /// only some figures are wanted.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Measure every target this many times, interleaved, and report the
    /// median run of each (by requests/s).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Keep the temporary directory (configs and logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Skip the wrk runs: measure only the idle connections (their figures
    /// are deterministic enough to compare builds one at a time).
    #[arg(long)]
    only_idle: bool,
    /// How long the idle connections settle before the proxy's memory is
    /// read (longer: time to inspect the proxy by hand meanwhile).
    #[arg(long, default_value = "2s")]
    idle_settle: humantime::Duration,
}

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Remora,
    /// Remora from `--compare-bin`.
    RemoraCompare,
    Haproxy,
    /// HAProxy adding no forwarding fields (its default): less work per
    /// request than the others, shown for comparison.
    HaproxyBare,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Remora => "remora",
            Target::RemoraCompare => "remora-compare",
            Target::Haproxy => "haproxy",
            Target::HaproxyBare => "haproxy-bare",
            Target::Nginx => "nginx",
        }
    }
}

/// A started target: where to send requests and with which cookie.
struct Running {
    name: &'static str,
    guard: Option<Guard>,
    addr: SocketAddr,
    /// `Cookie: ...` carrying the affinity, if the target gave one.
    cookie: Option<String>,
    /// The name of the affinity cookie the target issues, if it issues one.
    cookie_name: Option<&'static str>,
}

impl Running {
    /// Sends one request with the cookie and keeps the one the answer sets
    /// in its place, as a browser would. wrk sends one fixed cookie; a
    /// cookie that records when it was last seen (Remora's) would be a
    /// minute old after a few rounds, and every request of a run would then
    /// take the refresh path (seal, `Set-Cookie`), which a real client takes
    /// once a minute.
    fn renew_cookie(&mut self) -> Result<(), BenchError> {
        let (Some(name), Some(cookie)) = (self.cookie_name, &self.cookie) else {
            return Ok(());
        };
        let head = http::get(self.addr, configs::FILE, &[format!("Cookie: {cookie}")])?;
        if let Some(renewed) = find_cookie(&head.set_cookies, name) {
            self.cookie = Some(renewed);
        }
        Ok(())
    }
}

/// One wrk run and the CPU the target used for it.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    report: Report,
    /// CPU time (user + system) of the target's processes per completed
    /// request, microseconds; `None` for the direct run.
    cpu_us_per_req: Option<f64>,
    /// Times the target's threads were preempted, per completed request
    /// (see `proc::tree_preemptions`); `None` for the direct run.
    preempted_per_req: Option<f64>,
    /// CPU time of the backend (nginx) per completed request, microseconds:
    /// what serving through this target costs the server.
    backend_us_per_req: Option<f64>,
}

/// One target's figures.
#[derive(Debug, Default)]
struct Outcome {
    /// Every round's run.
    runs: Vec<Run>,
    /// The median round (by requests/s).
    report: Option<Report>,
    /// CPU per request in the median round.
    cpu_us_per_req: Option<f64>,
    /// Preemptions per request in the median round.
    preempted_per_req: Option<f64>,
    /// Backend CPU per request in the median round.
    backend_us_per_req: Option<f64>,
    peak_rss_kb: Option<u64>,
    sticky: bool,
    idle_rss_kb: Option<u64>,
    idle_open: Option<usize>,
    error: Option<String>,
}

struct Ctx {
    dir: PathBuf,
    backend: SocketAddr,
    nginx: PathBuf,
    haproxy: PathBuf,
    remora: Option<PathBuf>,
    /// `--compare-bin`.
    remora_compare: Option<PathBuf>,
    limits: Limits,
}

/// Runs the proxy benchmark and prints its table and final JSON line.
pub fn run(args: Args) -> Result<(), BenchError> {
    let tools = check_tools()?;
    let nofile = rlimit::increase_nofile_limit(u64::MAX).map_err(|source| BenchError::Io {
        what: "raise the open-file limit".into(),
        source,
    })?;
    let idle_count = args.idle_connections;
    if idle_count > 0 && (idle_count as u64) + 256 > nofile {
        return Err(BenchError::Setup(format!(
            "{idle_count} idle connections need an open-file limit above {}, have {nofile}: \
             raise the hard limit (ulimit -Hn) or pass --idle-connections",
            idle_count + 256
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("remora-bench-proxy-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            what: "create a temporary directory".into(),
            source,
        })?;
    let load = Load {
        threads: args.threads,
        connections: args.connections,
        duration: *args.duration,
    };
    let remora_bin = crate::proc::find_remora(args.remora_bin.as_deref());
    if remora_bin.is_none() {
        eprintln!(
            "remora release binary not found: build it with `cargo build --release -p remora` \
             (or pass --remora-bin); Remora's figures will be null"
        );
    }
    // Every proxy is sized for at least 10,000 clients, whatever this run
    // opens: HAProxy sized by a small `maxconn` (164 with
    // `--idle-connections 0`) served the same load at 56 CPU us per request
    // instead of 24, which compares nothing.
    let limits = Limits {
        nofile,
        max_clients: idle_count.max(load.connections as usize).max(MIN_CLIENTS) as u64,
        root: proc::is_root(),
    };

    let backend_addr = SocketAddr::from(([127, 0, 0, 1], proc::free_port()?));
    let mut backend = start_backend(dir.path(), &tools.0, backend_addr, &limits)?;
    let ctx = Ctx {
        dir: dir.path().to_owned(),
        backend: backend_addr,
        nginx: tools.0,
        haproxy: tools.1,
        remora: remora_bin,
        remora_compare: args.compare_bin.clone(),
        limits,
    };

    let all = [
        Target::Direct,
        Target::Remora,
        Target::RemoraCompare,
        Target::Haproxy,
        Target::HaproxyBare,
        Target::Nginx,
    ];
    for name in &args.skip {
        if !all.iter().any(|t| t.name() == name) {
            return Err(BenchError::Setup(format!(
                "--skip {name}: no such target (direct, remora, remora-compare, haproxy, haproxy-bare, nginx)"
            )));
        }
    }
    let targets: Vec<Target> = if args.only_idle {
        Vec::new()
    } else {
        all.into_iter()
            .filter(|t| *t != Target::RemoraCompare || args.compare_bin.is_some())
            .filter(|t| !args.skip.iter().any(|s| s == t.name()))
            .collect()
    };
    let idle_targets: &[Target] = if idle_count > 0 {
        &[Target::Remora, Target::Haproxy]
    } else {
        &[]
    };
    let rounds = u64::from(args.rounds.max(1));
    let phases = targets.len() as u64 * rounds + idle_targets.len() as u64;
    let bar = report::progress(phases * 100);

    // Start every target first, then measure them in turn, round after
    // round, so a burst of outside load hits each of them alike.
    let mut started: Vec<(Target, Option<Running>, Outcome)> = Vec::new();
    for &target in &targets {
        bar.set_message(format!("starting {}", target.name()));
        let mut outcome = Outcome::default();
        let running = match start(target, &ctx) {
            Ok(r) => {
                outcome.sticky = r.cookie.is_some();
                if target != Target::Direct && !outcome.sticky {
                    note(
                        &bar,
                        format!(
                            "{}: no affinity cookie in the first response; measuring without one",
                            target.name()
                        ),
                    );
                }
                Some(r)
            }
            Err(e) => {
                note(&bar, format!("{}: {e}", target.name()));
                outcome.error = Some(e.to_string());
                None
            }
        };
        started.push((target, running, outcome));
    }
    let mut phase = 0u64;
    for round in 1..=rounds {
        for (target, running, outcome) in started.iter_mut() {
            let Some(running) = running else { continue };
            bar.set_message(format!(
                "{} under load (round {round}/{rounds})",
                target.name()
            ));
            bar.set_position(phase * 100);
            let measured = running.renew_cookie().and_then(|()| {
                let at = Probe {
                    bar: &bar,
                    base: phase * 100,
                    backend: backend.pid(),
                };
                measure_load(running, &load, &at, outcome)
            });
            if let Err(e) = measured {
                note(&bar, format!("{}: {e}", target.name()));
                outcome.error = Some(e.to_string());
            }
            phase += 1;
            backend.check_alive()?;
        }
    }
    let mut outcomes: Vec<(Target, Outcome)> = Vec::new();
    for (target, running, mut outcome) in started {
        drop(running);
        if let Some(run) = median_by_rps(&outcome.runs) {
            outcome.report = Some(run.report);
            outcome.cpu_us_per_req = run.cpu_us_per_req;
            outcome.preempted_per_req = run.preempted_per_req;
            outcome.backend_us_per_req = run.backend_us_per_req;
        }
        if target == Target::Direct && outcome.report.is_none() {
            bar.finish_and_clear();
            return Err(BenchError::Setup(format!(
                "direct run failed: {}",
                outcome.error.unwrap_or_default()
            )));
        }
        outcomes.push((target, outcome));
    }
    for (j, target) in idle_targets.iter().enumerate() {
        let base = (targets.len() as u64 * rounds + j as u64) * 100;
        bar.set_message(format!(
            "{} with {idle_count} idle connections",
            target.name()
        ));
        bar.set_position(base);
        let result = measure_idle(*target, &ctx, idle_count, *args.idle_settle);
        if !outcomes.iter().any(|(t, _)| t == target) {
            outcomes.push((*target, Outcome::default()));
        }
        if let Some((_, outcome)) = outcomes.iter_mut().find(|(t, _)| t == target) {
            match result {
                Ok((rss, open, sticky)) => {
                    outcome.idle_rss_kb = Some(rss);
                    outcome.idle_open = Some(open);
                    outcome.sticky |= sticky;
                }
                Err(e) => note(&bar, format!("{} idle: {e}", target.name())),
            }
        }
        bar.set_position(base + 100);
    }
    bar.finish_and_clear();
    drop(backend);

    output::print_table(&load, &outcomes, idle_count);
    println!("{}", output::json_line(&load, &outcomes, idle_count));
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("configs and logs kept in {}", kept.display());
    }
    Ok(())
}

/// The fewest clients each proxy is configured for (see `Limits`).
const MIN_CLIENTS: usize = 10_000;

/// nginx, haproxy and wrk from PATH, or an error saying how to install them.
fn check_tools() -> Result<(PathBuf, PathBuf), BenchError> {
    let nginx = proc::which("nginx");
    let haproxy = proc::which("haproxy");
    let wrk = proc::which("wrk");
    match (nginx, haproxy, wrk) {
        (Some(n), Some(h), Some(_)) => Ok((n, h)),
        (n, h, w) => {
            let missing: Vec<&str> = [
                ("nginx", n.is_none()),
                ("haproxy", h.is_none()),
                ("wrk", w.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, gone)| gone.then_some(name))
            .collect();
            Err(BenchError::Setup(format!(
                "missing {}: install with `apt-get install -y nginx-light haproxy wrk`",
                missing.join(", ")
            )))
        }
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

fn nginx_prefix(dir: &Path, name: &str) -> Result<PathBuf, BenchError> {
    let prefix = dir.join(name);
    for sub in ["tmp", "www", "logs"] {
        let p = prefix.join(sub);
        fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
    }
    Ok(prefix)
}

fn spawn_nginx(name: &str, nginx: &Path, prefix: &Path, conf: &str) -> Result<Guard, BenchError> {
    let conf_path = prefix.join("nginx.conf");
    write_file(&conf_path, conf)?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg("daemon off;");
    Guard::spawn(name, cmd, &prefix.join("stdout.log"))
}

fn start_backend(
    dir: &Path,
    nginx: &Path,
    addr: SocketAddr,
    limits: &Limits,
) -> Result<Guard, BenchError> {
    let prefix = nginx_prefix(dir, "backend")?;
    write_file(&prefix.join("www/1k.bin"), &"x".repeat(configs::FILE_LEN))?;
    let conf = configs::backend_nginx(&prefix, addr, limits);
    let mut guard = spawn_nginx("backend nginx", nginx, &prefix, &conf)?;
    proc::wait_for_port(addr, &mut guard, Duration::from_secs(10))?;
    let head = http::get(addr, configs::FILE, &[])?;
    if head.status != 200 {
        return Err(BenchError::Setup(format!(
            "backend answered {} for {}",
            head.status,
            configs::FILE
        )));
    }
    Ok(guard)
}

/// Starts `target` and waits until it serves the file.
fn start(target: Target, ctx: &Ctx) -> Result<Running, BenchError> {
    let listen = SocketAddr::from(([127, 0, 0, 1], proc::free_port()?));
    let mut guard = match target {
        Target::Direct => {
            return Ok(Running {
                name: target.name(),
                guard: None,
                addr: ctx.backend,
                cookie: None,
                cookie_name: None,
            });
        }
        Target::Nginx => {
            let prefix = nginx_prefix(&ctx.dir, "nginx-proxy")?;
            let conf = configs::nginx_proxy(&prefix, listen, ctx.backend, &ctx.limits);
            spawn_nginx("nginx proxy", &ctx.nginx, &prefix, &conf)?
        }
        Target::Haproxy | Target::HaproxyBare => {
            let forwarding = target == Target::Haproxy;
            let name = target.name();
            let path = ctx.dir.join(format!("{name}.cfg"));
            let conf = configs::haproxy(listen, ctx.backend, &ctx.limits, forwarding);
            write_file(&path, &conf)?;
            let mut cmd = Command::new(&ctx.haproxy);
            cmd.arg("-db").arg("-f").arg(&path);
            Guard::spawn(name, cmd, &ctx.dir.join(format!("{name}.log")))?
        }
        Target::Remora | Target::RemoraCompare => {
            let bin = match target {
                Target::Remora => ctx.remora.as_ref(),
                _ => ctx.remora_compare.as_ref(),
            };
            let bin = bin.ok_or_else(|| {
                BenchError::Setup(
                    "no remora release binary (cargo build --release -p remora)".into(),
                )
            })?;
            let name = target.name();
            let keys = ctx.dir.join(format!("{name}.keys"));
            write_file(&keys, &format!("{}\n", remora_seal::generate_key_b64()))?;
            let admin = SocketAddr::from(([127, 0, 0, 1], proc::free_port()?));
            let path = ctx.dir.join(format!("{name}.toml"));
            write_file(
                &path,
                &configs::remora(listen, admin, ctx.backend, &keys, &ctx.limits),
            )?;
            let mut cmd = Command::new(bin);
            cmd.arg("serve").arg("--config").arg(&path);
            // Like HAProxy (no `log`) and nginx (`access_log off`): no
            // per-request access log; startup and warnings still logged.
            cmd.env("REMORA_LOG", "info,remora::access=off");
            Guard::spawn(name, cmd, &ctx.dir.join(format!("{name}.log")))?
        }
    };
    proc::wait_for_port(listen, &mut guard, Duration::from_secs(15))?;
    // Health checks may hold traffic back for a few intervals: poll for 200.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let head = loop {
        guard.check_alive()?;
        match http::get(listen, configs::FILE, &[]) {
            Ok(head) if head.status == 200 => break head,
            Ok(head) if std::time::Instant::now() >= deadline => {
                return Err(BenchError::Setup(format!(
                    "{} answered {} instead of 200",
                    target.name(),
                    head.status
                )));
            }
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let cookie_name = match target {
        Target::Direct | Target::Nginx => None,
        Target::Haproxy | Target::HaproxyBare => Some(configs::HAPROXY_COOKIE),
        Target::Remora | Target::RemoraCompare => Some(configs::REMORA_COOKIE),
    };
    let cookie = match target {
        Target::Nginx => Some(format!("{}=bench-client", configs::NGINX_COOKIE)),
        _ => cookie_name.and_then(|name| find_cookie(&head.set_cookies, name)),
    };
    Ok(Running {
        name: target.name(),
        guard: Some(guard),
        addr: listen,
        cookie,
        cookie_name,
    })
}

fn find_cookie(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies
        .iter()
        .find(|c| c.split_once('=').is_some_and(|(n, _)| n == name))
        .cloned()
}

/// Where a load run reports progress and what else it watches.
struct Probe<'a> {
    bar: &'a ProgressBar,
    /// Progress-bar position of the run's start.
    base: u64,
    /// The backend's pid.
    backend: u32,
}

/// One wrk run against a started target; adds its report to `outcome`
/// and raises the recorded peak memory.
fn measure_load(
    running: &Running,
    load: &Load,
    at: &Probe<'_>,
    outcome: &mut Outcome,
) -> Result<(), BenchError> {
    let (bar, base) = (at.bar, at.base);
    let headers: Vec<String> = running
        .cookie
        .iter()
        .map(|c| format!("Cookie: {c}"))
        .collect();
    let url = format!("http://{}{}", running.addr, configs::FILE);
    let pid = running.guard.as_ref().map(Guard::pid);
    let mut peak = outcome.peak_rss_kb.max(pid.map(proc::tree_rss_kb));
    let cpu_before = pid.map(proc::tree_cpu_ticks);
    let preempted_before = pid.map(proc::tree_preemptions);
    let backend_before = proc::tree_cpu_ticks(at.backend);
    let total = load.duration.as_secs_f64().max(1.0);
    let result = wrk::run(&url, &headers, load, |elapsed| {
        if let Some(pid) = pid {
            peak = peak.max(Some(proc::tree_rss_kb(pid)));
        }
        let frac = (elapsed.as_secs_f64() / total).min(1.0);
        bar.set_position(base + (frac * 100.0) as u64);
    });
    outcome.peak_rss_kb = peak;
    let report = result?;
    let us_per_req = |pid: u32, before: u64| {
        let ticks = proc::tree_cpu_ticks(pid).saturating_sub(before);
        let ticks_per_s = proc::clock_ticks_per_second() as f64;
        (report.requests > 0).then(|| ticks as f64 / ticks_per_s * 1e6 / report.requests as f64)
    };
    let cpu_us_per_req = pid
        .zip(cpu_before)
        .and_then(|(pid, before)| us_per_req(pid, before));
    let backend_us_per_req = us_per_req(at.backend, backend_before);
    let preempted_per_req = match (pid, preempted_before) {
        (Some(pid), Some(before)) if report.requests > 0 => {
            let count = proc::tree_preemptions(pid).saturating_sub(before);
            Some(count as f64 / report.requests as f64)
        }
        _ => None,
    };
    if report.non_2xx > 0 || report.socket_errors > 0 {
        note(
            bar,
            format!(
                "{}: {} non-2xx responses, {} socket errors",
                running.name, report.non_2xx, report.socket_errors
            ),
        );
    }
    outcome.runs.push(Run {
        report,
        cpu_us_per_req,
        preempted_per_req,
        backend_us_per_req,
    });
    Ok(())
}

/// The run with the median requests/s (the lower middle one of an even
/// count), so latency and rate come from the same run.
fn median_by_rps(runs: &[Run]) -> Option<Run> {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.report.rps.total_cmp(&b.report.rps));
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map(|r| (*r).clone())
}

/// Starts `target` afresh, opens `count` idle keep-alive connections that
/// each carried one request (with the affinity cookie), lets the proxy
/// settle, and returns its resident memory (KiB) and how many connections
/// are still open.
fn measure_idle(
    target: Target,
    ctx: &Ctx,
    count: usize,
    settle: Duration,
) -> Result<(u64, usize, bool), BenchError> {
    let running = start(target, ctx)?;
    let sticky = running.cookie.is_some();
    let pid = running
        .guard
        .as_ref()
        .map(Guard::pid)
        .ok_or_else(|| BenchError::Setup("idle memory needs a proxy process".into()))?;
    let headers: Vec<String> = running
        .cookie
        .iter()
        .map(|c| format!("Cookie: {c}"))
        .collect();
    let request = Arc::new(http::request(configs::FILE, &headers));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("build a tokio runtime".into()))?;
    let addr = running.addr;
    let result = rt.block_on(async move {
        let held = idle::open(addr, count, 256, request, Duration::from_secs(30)).await?;
        // Let the proxy finish its bookkeeping (idle pools, timers) before
        // reading its memory: a fixed settle time, not a synchronisation.
        eprintln!("{} pid {pid}: {count} idle connections open", target.name());
        tokio::time::sleep(settle).await;
        let rss = proc::tree_rss_kb(pid);
        let open = held.still_open();
        drop(held);
        Ok::<_, BenchError>((rss, open, sticky))
    });
    drop(running);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn report(rps: f64, p99: f64) -> Report {
        Report {
            rps,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            requests: 1,
            non_2xx: 0,
            socket_errors: 0,
        }
    }

    #[test]
    fn median_run_is_the_middle_rate() {
        let run = |rps, p99| Run {
            report: report(rps, p99),
            cpu_us_per_req: Some(p99 * 10.0),
            preempted_per_req: Some(p99 / 10.0),
            backend_us_per_req: None,
        };
        assert_eq!(median_by_rps(&[]), None);
        let runs = [run(3.0, 1.0), run(1.0, 2.0), run(2.0, 3.0)];
        let median = median_by_rps(&runs).expect("median");
        assert_eq!(median.report.p99_ms, 3.0);
        assert_eq!(median.cpu_us_per_req, Some(30.0));
        assert_eq!(median.preempted_per_req, Some(0.3));
        let even = [run(4.0, 1.0), run(1.0, 2.0)];
        assert_eq!(median_by_rps(&even).map(|r| r.report.rps), Some(1.0));
    }

    #[test]
    fn finds_the_named_cookie_only() {
        let cookies = vec!["SRVX=1".to_string(), "SRV=b1".to_string()];
        assert_eq!(find_cookie(&cookies, "SRV").as_deref(), Some("SRV=b1"));
        assert_eq!(find_cookie(&cookies, "REMORA_AFFINITY"), None);
    }
}
