//! `cargo run --release -p remora-bench -- failover`: the time a restore adds
//! to the first request after a failover (parking excluded).
//!
//! Two `remora demo-app` shops share a keyring and have separate memory
//! stores. For each of N sessions: three items are added on shop A (the
//! client keeps the newest replica), then shop B receives `GET /api/cart`
//! with the session cookie and the replica (B does not know the session:
//! it opens the replica and restores it before the handler runs), then the
//! same request again (B knows it now). The difference between the two
//! latency distributions is what restoring costs; both go over the same
//! keep-alive connection, one after the other.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::BenchError;
use crate::proc::{Guard, find_remora, free_port, wait_for_port};
use crate::report::{json_line, num, progress};

/// Arguments of the `failover` benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sessions to fail over.
    #[arg(long, default_value_t = 2000)]
    sessions: u32,
    /// The remora binary (default: beside this one, `$REMORA_BIN`, or the release build).
    #[arg(long)]
    remora_bin: Option<PathBuf>,
}

/// A keep-alive HTTP/1.1 connection with a bounded response reader.
struct Conn {
    stream: TcpStream,
    host: String,
}

/// What the benchmark needs from a response.
struct Resp {
    status: u16,
    cookie: Option<String>,
    replica: Option<String>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr).map_err(|source| BenchError::Io {
            what: format!("connect {addr}"),
            source,
        })?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Ok(Self {
            stream,
            host: addr.to_string(),
        })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Resp, BenchError> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream
            .write_all(req.as_bytes())
            .map_err(|source| BenchError::Io {
                what: "send".into(),
                source,
            })?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        let (head_len, body_len) = loop {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|source| BenchError::Io {
                    what: "read".into(),
                    source,
                })?;
            if n == 0 {
                return Err(BenchError::Http("connection closed".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > crate::http::MAX_HEAD + crate::http::MAX_BODY {
                return Err(BenchError::Http("response too large".into()));
            }
            if let Some(end) = crate::http::head_end(&buf) {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| BenchError::Http("no content-length".into()))?;
                break (end, len);
            }
        };
        while buf.len() < head_len + body_len {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|source| BenchError::Io {
                    what: "read".into(),
                    source,
                })?;
            if n == 0 {
                return Err(BenchError::Http("connection closed mid-body".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let cookie = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case("set-cookie") && v.trim().starts_with("remora_session="))
                .then(|| v.trim().split(';').next().unwrap_or("").to_owned())
        });
        Ok(Resp {
            status,
            cookie,
            replica: header("session-replica"),
        })
    }
}

fn shop(
    bin: &std::path::Path,
    name: &str,
    keys: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(Guard, SocketAddr), BenchError> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "demo-app",
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--keys",
    ])
    .arg(keys);
    cmd.env("REMORA_LOG", "warn");
    let mut guard = Guard::spawn(name, cmd, &dir.join(format!("{name}.log")))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_port(addr, &mut guard, Duration::from_secs(10))?;
    Ok((guard, addr))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the benchmark and prints the final JSON line.
pub fn run(args: Args) -> Result<(), BenchError> {
    let bin = find_remora(args.remora_bin.as_deref()).ok_or_else(|| {
        BenchError::Setup(
            "no remora binary: cargo build --release -p remora, or --remora-bin".into(),
        )
    })?;
    let dir = tempfile::tempdir().map_err(|source| BenchError::Io {
        what: "tempdir".into(),
        source,
    })?;
    let keygen = Command::new(&bin)
        .arg("keygen")
        .output()
        .map_err(|source| BenchError::Io {
            what: "remora keygen".into(),
            source,
        })?;
    let keys = dir.path().join("remora.keys");
    std::fs::write(&keys, &keygen.stdout).map_err(|source| BenchError::Io {
        what: "write keys".into(),
        source,
    })?;
    let (_a, a_addr) = shop(&bin, "a", &keys, dir.path())?;
    let (_b, b_addr) = shop(&bin, "b", &keys, dir.path())?;
    let mut a = Conn::open(a_addr)?;
    let mut b = Conn::open(b_addr)?;
    let mut restore = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut known = restore.clone();
    let json = [("content-type", "application/json")];
    let bar = progress(u64::from(args.sessions));
    let mut restored = 0u64;
    for _ in 0..args.sessions {
        let mut cookie = String::new();
        let mut replica = String::new();
        for sku in ["tea", "coffee", "cocoa"] {
            let mut h: Vec<(&str, &str)> = json.to_vec();
            if !cookie.is_empty() {
                h.push(("cookie", &cookie));
            }
            let r = a.send(
                "POST",
                "/api/cart/items",
                &h,
                &format!(r#"{{"sku":"{sku}","qty":1}}"#),
            )?;
            if r.status != 200 {
                return Err(BenchError::Http(format!("add on shop a: {}", r.status)));
            }
            if let Some(c) = r.cookie {
                cookie = c;
            }
            replica = r
                .replica
                .ok_or_else(|| BenchError::Http("no Session-Replica".into()))?;
        }
        let t0 = Instant::now();
        let r = b.send(
            "GET",
            "/api/cart",
            &[("cookie", &cookie), ("session-replica", &replica)],
            "",
        )?;
        let took = t0.elapsed();
        if r.status != 200 {
            return Err(BenchError::Http(format!("restore on shop b: {}", r.status)));
        }
        restored += 1;
        restore.record(took.as_micros().max(1) as u64).ok();
        let t0 = Instant::now();
        let r = b.send("GET", "/api/cart", &[("cookie", &cookie)], "")?;
        known.record(t0.elapsed().as_micros().max(1) as u64).ok();
        if r.status != 200 {
            return Err(BenchError::Http(format!(
                "known session on shop b: {}",
                r.status
            )));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("request on shop b          p50 ms   p99 ms   max ms");
    println!(
        "first (restores)         {:7.3}  {:7.3}  {:7.3}",
        ms(&restore, 0.5),
        ms(&restore, 0.99),
        ms(&restore, 1.0)
    );
    println!(
        "next (session known)     {:7.3}  {:7.3}  {:7.3}",
        ms(&known, 0.5),
        ms(&known, 0.99),
        ms(&known, 1.0)
    );
    println!(
        "{}",
        json_line(vec![
            ("bench", "failover".into()),
            ("sessions", restored.into()),
            ("restore_p50_ms", num(Some(ms(&restore, 0.5)))),
            ("restore_p99_ms", num(Some(ms(&restore, 0.99)))),
            ("known_p50_ms", num(Some(ms(&known, 0.5)))),
            ("known_p99_ms", num(Some(ms(&known, 0.99)))),
            (
                "added_p50_ms",
                num(Some(ms(&restore, 0.5) - ms(&known, 0.5)))
            ),
            (
                "added_p99_ms",
                num(Some(ms(&restore, 0.99) - ms(&known, 0.99)))
            ),
        ])
    );
    Ok(())
}
