//! `remora-bench chaos`: shoppers keep shopping while shop servers are
//! killed (SIGKILL) and restarted, one server is drained and the balancer
//! reloaded; at the end every shopper's cart is compared with the one it
//! believes it has.
//!
//! Counting rules (see `docs/BENCHMARKS.md`, "Chaos"):
//! - a request answered 5xx, or not at all within 10 s, is a failed
//!   request; a GET is retried after a backoff; a POST or DELETE whose
//!   outcome is unknown is followed by a GET of the cart, and only then
//!   taken as applied (the cart shows it) or resent (it does not);
//! - every cart answer is compared with the shopper's expected cart:
//!   missing items are lost items, a signed-out answer is a lost session;
//!   the server's cart then becomes the expected one, so nothing is
//!   counted twice.

mod shopper;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::BenchError;
use crate::proc::{self, Guard};
use crate::report::{self, note, num};

use self::shopper::{Report, Shopper};

/// The admin token of the balancer under test.
const TOKEN: &str = "chaos-token";

/// Which session protection the shops run with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Memory stores; replicas carry sessions between servers.
    Replica,
    /// A shared Redis store; no replicas.
    Redis,
    /// A shared Redis store and replicas.
    #[value(name = "replica+redis")]
    ReplicaRedis,
    /// Memory stores, no replicas: the baseline that loses sessions.
    None,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Replica => "replica",
            Mode::Redis => "redis",
            Mode::ReplicaRedis => "replica+redis",
            Mode::None => "none",
        }
    }

    /// The `remora demo-app` flags of this mode.
    fn shop_args(self, redis: &str) -> Vec<String> {
        let redis_store = ["--store", "redis", "--redis", redis].map(str::to_owned);
        match self {
            Mode::Replica => vec![],
            Mode::Redis => [&redis_store[..], &["--no-replicas".to_owned()]].concat(),
            Mode::ReplicaRedis => redis_store.to_vec(),
            Mode::None => vec!["--no-replicas".to_owned()],
        }
    }

    fn uses_redis(self) -> bool {
        matches!(self, Mode::Redis | Mode::ReplicaRedis)
    }
}

/// Flags of `remora-bench chaos`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Session protection of the shops.
    #[arg(long, value_enum, default_value = "replica")]
    mode: Mode,
    /// Simulated shoppers.
    #[arg(long, default_value_t = 1000)]
    shoppers: usize,
    /// How long the shoppers shop.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// A shop server is killed (SIGKILL) this often.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// How long a killed shop stays down before it is restarted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    restart_after: Duration,
    /// Shop servers behind the balancer.
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// Mean pause of a shopper between two actions.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    think: Duration,
    /// Seed of the shoppers' and the killer's random choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Redis for `redis` modes (default: `REDIS_URL`, else the local one).
    #[arg(long)]
    redis: Option<String>,
    /// In `redis` modes: the shops' near cache, in sessions (`remora
    /// demo-app --redis-near-cache`; 0 = none).
    #[arg(long, default_value_t = 10_000)]
    redis_near_cache: usize,
    /// The `remora` binary (default: `REMORA_BIN`, beside this one, then
    /// target/release).
    #[arg(long)]
    remora: Option<PathBuf>,
    /// Keep the temporary directory (configs and every process's log; set
    /// `REMORA_LOG=info` for the balancer's access log).
    #[arg(long)]
    keep_dir: bool,
}

/// One shop server and its process.
struct Shop {
    name: String,
    port: u16,
    guard: Option<Guard>,
}

/// What the run needs to (re)start processes.
struct Topology {
    bin: PathBuf,
    dir: tempfile::TempDir,
    keys: PathBuf,
    pool: String,
    shop_args: Vec<String>,
    starts: usize,
}

impl Topology {
    fn start_shop(&mut self, shop: &mut Shop) -> Result<(), BenchError> {
        self.starts += 1;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["demo-app", "--name", &shop.name, "--port"])
            .arg(shop.port.to_string())
            .arg("--keys")
            .arg(&self.keys)
            .args(["--pool", &self.pool])
            .args(&self.shop_args);
        let log = self
            .dir
            .path()
            .join(format!("{}.{}.log", shop.name, self.starts));
        let mut guard = Guard::spawn(&shop.name, cmd, &log)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, shop.port));
        proc::wait_for_port(addr, &mut guard, Duration::from_secs(10))?;
        shop.guard = Some(guard);
        Ok(())
    }
}

/// Runs the chaos benchmark.
pub fn run(args: Args) -> Result<(), BenchError> {
    if args.shoppers == 0 || args.backends < 2 {
        return Err(BenchError::Setup(
            "need at least one shopper and two backends".into(),
        ));
    }
    let bin = crate::proc::find_remora(args.remora.as_deref()).ok_or_else(|| {
        BenchError::Setup(
            "no remora binary: run `cargo build --release -p remora` or pass --remora".into(),
        )
    })?;
    let redis = args
        .redis
        .clone()
        .or_else(|| std::env::var("REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let _ = rlimit::increase_nofile_limit(65_536);
    let dir = tempfile::tempdir().map_err(io_err("create a temp dir".into()))?;
    let keys = dir.path().join("remora.keys");
    let out = Command::new(&bin)
        .arg("keygen")
        .output()
        .map_err(io_err("run remora keygen".into()))?;
    std::fs::write(&keys, &out.stdout).map_err(io_err(format!("write {}", keys.display())))?;
    // A pool of its own per run: the Redis keys are `remora:demo:<pool>:`.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pool = format!("chaos-{}-{stamp}", std::process::id());
    let mut topo = Topology {
        bin: bin.clone(),
        dir,
        keys,
        pool: pool.clone(),
        shop_args: {
            let mut a = args.mode.shop_args(&redis);
            if args.mode.uses_redis() {
                a.push(format!("--redis-near-cache={}", args.redis_near_cache));
            }
            a
        },
        starts: 0,
    };
    let mut shops = Vec::new();
    for i in 0..args.backends {
        let mut shop = Shop {
            name: format!("shop-{}", (b'a' + (i % 26) as u8) as char),
            port: proc::free_port()?,
            guard: None,
        };
        topo.start_shop(&mut shop)?;
        shops.push(shop);
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, proc::free_port()?));
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, proc::free_port()?));
    let config = topo.dir.path().join("remora.toml");
    let text = balancer_config(addr, admin, &topo.keys, &pool, &shops);
    std::fs::write(&config, text).map_err(io_err(format!("write {}", config.display())))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--config"]).arg(&config);
    let log = topo.dir.path().join("remora.log");
    let mut balancer = Guard::spawn("remora serve", cmd, &log)?;
    proc::wait_for_port(addr, &mut balancer, Duration::from_secs(10))?;
    proc::wait_for_port(admin, &mut balancer, Duration::from_secs(10))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("start the runtime".into()))?;
    let admin_client = Admin::new(admin, &pool);
    rt.block_on(admin_client.wait_healthy(args.backends, Duration::from_secs(10)))?;

    let bar = report::progress(args.duration.as_secs().max(1));
    note(
        &bar,
        format!(
            "chaos: mode {}, {} shoppers, {} shops, {:?}, a kill every {:?}; logs in {}",
            args.mode.name(),
            args.shoppers,
            args.backends,
            args.duration,
            args.kill_every,
            topo.dir.path().display()
        ),
    );
    let requests = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (verify_tx, verify_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..args.shoppers)
        .map(|id| {
            let s = Shopper::new(id, addr, args.seed, requests.clone());
            rt.spawn(s.run(args.think, stop_rx.clone(), verify_rx.clone()))
        })
        .collect();

    // The killer, on this thread.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let started = Instant::now();
    let end = started + args.duration;
    let mut next_kill = started + args.kill_every;
    let drain_at = started + args.duration / 3;
    let undrain_at = started + args.duration * 2 / 3;
    let mut drained: Option<String> = None;
    let mut drain_done = false;
    let mut kills = 0u64;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "kills {kills}, requests {}",
            requests.load(Ordering::Relaxed)
        ));
        balancer.check_alive()?;
        let now = Instant::now();
        if !drain_done && now >= drain_at {
            drain_done = true;
            let victim = shops[rng.random_range(0..shops.len())].name.clone();
            rt.block_on(admin_client.set_state(&victim, "drain"))?;
            signal(balancer.pid(), "HUP")?;
            note(
                &bar,
                format!(
                    "+{:.1}s: drained {victim}; balancer reloaded (SIGHUP)",
                    started.elapsed().as_secs_f64()
                ),
            );
            drained = Some(victim);
        }
        if let Some(name) = drained.as_ref().filter(|_| now >= undrain_at) {
            rt.block_on(admin_client.set_state(name, "ready"))?;
            note(&bar, format!("{name} ready again"));
            drained = None;
        }
        if now >= next_kill && now + args.restart_after < end {
            next_kill = now + args.kill_every;
            let i = rng.random_range(0..shops.len());
            if let Some(guard) = shops[i].guard.take() {
                signal(guard.pid(), "KILL")?;
                drop(guard);
                kills += 1;
                let at = started.elapsed().as_secs_f64();
                note(&bar, format!("+{at:.1}s: killed {}", shops[i].name));
                std::thread::sleep(args.restart_after);
                topo.start_shop(&mut shops[i])?;
            }
        }
    }
    let _ = stop_tx.send(true);
    bar.set_message("verifying carts".to_owned());
    rt.block_on(admin_client.wait_healthy(args.backends, Duration::from_secs(15)))?;
    let _ = verify_tx.send(true);
    let reports: Vec<Report> = rt.block_on(async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    });
    bar.finish_and_clear();
    drop(balancer);
    for shop in &mut shops {
        shop.guard = None;
    }
    if args.mode.uses_redis() {
        forget_redis_keys(&redis, &pool);
    }
    if args.keep_dir {
        let kept = topo.dir.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    print_results(&args, kills, &reports);
    Ok(())
}

/// The balancer's config: the demo's shape, faster health checks.
fn balancer_config(
    addr: SocketAddr,
    admin: SocketAddr,
    keys: &Path,
    pool: &str,
    shops: &[Shop],
) -> String {
    let servers: String = shops
        .iter()
        .map(|s| {
            format!(
                "[[pool.server]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\n\n",
                s.name, s.port
            )
        })
        .collect();
    format!(
        r#"[admin]
listen = "{admin}"
token = "{TOKEN}"

[keys]
file = "{keys}"

[limits]
max_header_bytes = 131072

[[listener]]
name = "web"
listen = "{addr}"
pool = "{pool}"

[[pool]]
name = "{pool}"
algorithm = "least-connections"
retries = 2

[pool.affinity]
mode = "cookie"

[pool.health]
path = "/health"
interval = "250ms"
timeout = "250ms"
rise = 1
fall = 1
# A killed shop is back within about a second: with the default 10 s, a
# kill every 5 s keeps two of three servers ejected at once.
passive_backoff = "2s"

{servers}"#,
        keys = keys.display()
    )
}

/// Prints the table (stderr) and the JSON line (stdout).
fn print_results(args: &Args, kills: u64, reports: &[Report]) {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let mut restore_ms: Vec<f64> = reports.iter().flat_map(|r| r.restore_ms.clone()).collect();
    restore_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        (!restore_ms.is_empty()).then(|| {
            let i = ((restore_ms.len() - 1) as f64 * p).round() as usize;
            restore_ms[i.min(restore_ms.len() - 1)]
        })
    };
    let lost_sessions = reports.iter().filter(|r| r.lost_session).count() as u64;
    let finished = reports.len();
    eprintln!("shoppers finished        {finished}/{}", args.shoppers);
    eprintln!("checkouts placed         {}", sum(|r| r.checkouts));
    eprintln!("checkout conflicts (409) {}", sum(|r| r.checkout_conflicts));
    eprintln!("checkout replays         {}", sum(|r| r.checkout_replays));
    eprintln!("failed GETs              {}", sum(|r| r.failed_gets));
    eprintln!("unexpected items         {}", sum(|r| r.unexpected_items));
    eprintln!("unexpected statuses      {}", sum(|r| r.unexpected_status));
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    for line in failures.iter().take(5) {
        eprintln!("  failed: {line}");
    }
    let incidents: Vec<&String> = reports.iter().flat_map(|r| &r.incidents).collect();
    for line in incidents.iter().take(20) {
        eprintln!("  {line}");
    }
    if incidents.len() > 20 {
        eprintln!("  ... {} more incidents", incidents.len() - 20);
    }
    println!(
        "{}",
        report::json_line(vec![
            ("bench", Value::from("chaos")),
            ("mode", Value::from(args.mode.name())),
            ("shoppers", Value::from(args.shoppers)),
            ("kills", Value::from(kills)),
            ("requests", Value::from(sum(|r| r.requests))),
            ("failed_requests", Value::from(sum(|r| r.failed_requests))),
            ("lost_items", Value::from(sum(|r| r.lost_items))),
            ("lost_sessions", Value::from(lost_sessions)),
            ("restores", Value::from(sum(|r| r.restores))),
            ("restore_p50_ms", num(pct(0.5))),
            ("restore_p99_ms", num(pct(0.99))),
            (
                "checkout_replays_accepted",
                Value::from(sum(|r| r.checkout_replays_accepted))
            ),
        ])
    );
}

/// The balancer's admin API.
struct Admin {
    base: String,
    pool: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Admin {
    fn new(addr: SocketAddr, pool: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            pool: pool.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Result<Value, BenchError> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| BenchError::Timeout(format!("admin {method} {path}")))?
            .map_err(|e| BenchError::Http(format!("admin {method} {path}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(BenchError::Http(format!(
                "admin {method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn set_state(&self, server: &str, state: &str) -> Result<(), BenchError> {
        let path = format!("/api/pools/{}/servers/{server}/state", self.pool);
        let body = serde_json::json!({ "state": state }).to_string();
        self.call("PUT", &path, &body).await.map(drop)
    }

    /// Waits until the balancer sees `count` healthy servers.
    async fn wait_healthy(&self, count: usize, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.call("GET", "/api/servers", "").await {
                let healthy = v["pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| p["servers"].as_array().into_iter().flatten())
                    .filter(|s| s["healthy"] == true)
                    .count();
                if healthy >= count {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!(
                    "{count} healthy servers within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends a signal with the system's `kill` (the crate forbids unsafe code).
fn signal(pid: u32, sig: &str) -> Result<(), BenchError> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_err(io_err(format!("kill -{sig} {pid}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!("kill -{sig} {pid} failed")))
    }
}

/// Deletes this run's session keys (`remora:demo:<pool>:*`) and nothing
/// else, with `redis-cli` if it is installed; they would expire anyway.
fn forget_redis_keys(redis: &str, pool: &str) {
    let pattern = format!("remora:demo:{pool}:*");
    let Ok(out) = Command::new("redis-cli")
        .args(["-u", redis, "--scan", "--pattern", &pattern])
        .output()
    else {
        return;
    };
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|k| k.starts_with(&format!("remora:demo:{pool}:")))
        .map(str::to_owned)
        .collect();
    for batch in keys.chunks(500) {
        let _ = Command::new("redis-cli")
            .args(["-u", redis, "DEL"])
            .args(batch)
            .output();
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}
