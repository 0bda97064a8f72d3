//! The load generator of the sessions benchmark: `clients` tasks, each with
//! its own keep-alive connection and its own cookie jar, so every request
//! after a client's first hits that client's existing session (wrk's Lua
//! state is per thread, not per connection, so it cannot do this).
//!
//! Each response body is the number the app appended to the session's
//! list; a client sends its requests one after another, so each answer must
//! be the previous one plus one. Anything else is a lost session or a lost
//! update and is counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BenchError;
use crate::http::{self, BodyLen};

/// What to run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent clients (one connection and one session each).
    pub clients: usize,
    /// Threads of the generator's runtime.
    pub threads: usize,
    /// Time before measuring (sessions are created and connections opened).
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Responses completed per second in the measured window.
    pub rps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Responses completed in the measured window.
    pub requests: u64,
    /// Responses outside 2xx.
    pub non_2xx: u64,
    /// Connect, I/O, timeout or parse failures in the measured window.
    pub errors: u64,
    /// Answers that were not the previous answer plus one (a lost session
    /// or a lost update), over the whole run.
    pub lost: u64,
    /// Every `name=value` cookie the app set (to clean up its sessions).
    pub cookies: BTreeSet<String>,
}

/// The most a single exchange may take before it counts as an error.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The path of the app's session-writing route.
const PATH: &str = "/add";

#[derive(Debug)]
struct ClientStats {
    hist: Histogram<u64>,
    requests: u64,
    non_2xx: u64,
    errors: u64,
    lost: u64,
    cookies: BTreeSet<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits; the bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Runs the load against `addr`, calling `tick(elapsed)` about every 100 ms.
pub fn run(
    addr: SocketAddr,
    load: &Load,
    mut tick: impl FnMut(Duration),
) -> Result<Report, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(load.threads.max(1))
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "start the load generator's runtime".into(),
            source,
        })?;
    rt.block_on(async {
        let started = Instant::now();
        let measure_from = started + load.warmup;
        let until = measure_from + load.duration;
        let tasks: Vec<_> = (0..load.clients.max(1))
            .map(|_| tokio::spawn(client(addr, measure_from, until)))
            .collect();
        while Instant::now() < until {
            tick(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut hist = histogram();
        let mut report = Report::default();
        for task in tasks {
            let stats = task
                .await
                .map_err(|e| BenchError::Setup(format!("a load client failed: {e}")))?;
            hist.add(&stats.hist)
                .map_err(|e| BenchError::Setup(format!("merge latency histograms: {e}")))?;
            report.requests += stats.requests;
            report.non_2xx += stats.non_2xx;
            report.errors += stats.errors;
            report.lost += stats.lost;
            report.cookies.extend(stats.cookies);
        }
        report.rps = report.requests as f64 / load.duration.as_secs_f64().max(1e-9);
        report.p50_ms = hist.value_at_quantile(0.50) as f64 / 1000.0;
        report.p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
        Ok(report)
    })
}

/// One client: requests one after another until `until`, keeping its
/// cookies and reconnecting after a failure.
async fn client(addr: SocketAddr, measure_from: Instant, until: Instant) -> ClientStats {
    let mut stats = ClientStats {
        hist: histogram(),
        requests: 0,
        non_2xx: 0,
        errors: 0,
        lost: 0,
        cookies: BTreeSet::new(),
    };
    // `name=value` pairs, one per cookie name.
    let mut jar: Vec<String> = Vec::new();
    let mut last: Option<u64> = None;
    let mut conn: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let measuring = sent >= measure_from;
        let headers: Vec<String> = if jar.is_empty() {
            Vec::new()
        } else {
            vec![format!("Cookie: {}", jar.join("; "))]
        };
        let req = http::request(PATH, &headers);
        let outcome = tokio::time::timeout(TIMEOUT, async {
            if conn.is_none() {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                conn = Some(stream);
            }
            match conn.as_mut() {
                Some(stream) => exchange(stream, &req, &mut buf).await,
                None => Err(std::io::Error::other("no connection")),
            }
        })
        .await;
        let done = Instant::now();
        let (status, set_cookies, body) = match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => {
                conn = None;
                if measuring && done <= until {
                    stats.errors += 1;
                }
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        for pair in set_cookies {
            let name = pair.split('=').next().unwrap_or_default().to_owned();
            jar.retain(|c| c.split('=').next() != Some(name.as_str()));
            if pair.len() > name.len() + 1 {
                stats.cookies.insert(pair.clone());
                jar.push(pair);
            }
        }
        if (200..300).contains(&status) {
            let n = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            match (last, n) {
                (Some(prev), Some(n)) if n == prev.saturating_add(1) => {}
                (None, Some(_)) => {}
                _ => stats.lost += 1,
            }
            last = n;
        }
        if measuring && done <= until {
            stats.requests += 1;
            if !(200..300).contains(&status) {
                stats.non_2xx += 1;
            }
            let us = done.duration_since(sent).as_micros();
            let _ = stats
                .hist
                .record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
    }
    stats
}

/// Writes `req` and reads one response: status, `Set-Cookie` pairs, body.
async fn exchange(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, Vec<String>, Vec<u8>)> {
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head, start) = loop {
        if let Some(end) = http::head_end(buf) {
            let head = http::parse_head(&buf[..end]).map_err(std::io::Error::other)?;
            break (head, end);
        }
        if buf.len() > http::MAX_HEAD {
            return Err(std::io::Error::other("response head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    while !http::body_complete(head.body, &buf[start..]) {
        if buf.len() - start > http::MAX_BODY {
            return Err(std::io::Error::other("response body too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = match head.body {
        BodyLen::Exact(n) => buf[start..start + n].to_vec(),
        // The app always sends a length; a chunked body is not checked.
        BodyLen::Chunked => Vec::new(),
    };
    Ok((head.status, head.set_cookies, body))
}
