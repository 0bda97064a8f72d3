//! Running `wrk` and reading its report.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// The load settings every target of one benchmark run shares.
#[derive(Debug, Clone)]
pub struct Load {
    /// wrk threads (`-t`).
    pub threads: u32,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Run length (`-d`).
    pub duration: Duration,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Requests completed per second.
    pub rps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Responses outside 2xx/3xx.
    pub non_2xx: u64,
    /// Socket errors (connect + read + write + timeout).
    pub socket_errors: u64,
}

/// Runs wrk against `url` with `headers`, calling `tick(elapsed)` about
/// every 100 ms while it runs (to sample memory and move the progress bar).
pub fn run(
    url: &str,
    headers: &[String],
    load: &Load,
    mut tick: impl FnMut(Duration),
) -> Result<Report, BenchError> {
    let mut cmd = Command::new("wrk");
    cmd.arg("--latency")
        .arg("-t")
        .arg(load.threads.to_string())
        .arg("-c")
        .arg(load.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s");
    for header in headers {
        cmd.arg("-H").arg(header);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| BenchError::Io {
        what: "start wrk".into(),
        source,
    })?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(source) => {
                return Err(BenchError::Io {
                    what: "poll wrk".into(),
                    source,
                });
            }
        }
        tick(started.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().map_err(|source| BenchError::Io {
        what: "read wrk output".into(),
        source,
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(BenchError::Wrk(format!(
            "wrk exited with {}: {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    parse(&text)
}

/// Parses wrk's `--latency` report.
pub fn parse(text: &str) -> Result<Report, BenchError> {
    let mut report = Report::default();
    let mut seen_rps = false;
    let mut in_distribution = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.rps = rest
                .trim()
                .parse()
                .map_err(|_| BenchError::Wrk(format!("bad Requests/sec line: {line}")))?;
            seen_rps = true;
        } else if line.starts_with("Latency Distribution") {
            in_distribution = true;
        } else if in_distribution && let Some((pct, value)) = line.split_once('%') {
            let ms = duration_ms(value.trim())
                .ok_or_else(|| BenchError::Wrk(format!("bad latency line: {line}")))?;
            match pct.trim() {
                "50" => report.p50_ms = ms,
                "99" => report.p99_ms = ms,
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            in_distribution = false;
            report.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    if !seen_rps {
        return Err(BenchError::Wrk(format!("no Requests/sec in: {text}")));
    }
    Ok(report)
}

/// `635.00us`, `2.11ms`, `1.02s`, `1.50m` as milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/1k.bin
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  512.00us  20.00ms   90.00%
    Req/Sec    29.00k     1.00k   31.00k    70.00%
  Latency Distribution
     50%  635.00us
     75%    1.20ms
     90%    1.80ms
     99%    2.11ms
  577000 requests in 10.00s, 700.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  57700.12
Transfer/sec:     70.00MB
";

    #[test]
    fn parses_a_full_report() {
        let r = parse(SAMPLE).expect("parse");
        assert_eq!(r.rps, 57700.12);
        assert!((r.p50_ms - 0.635).abs() < 1e-9);
        assert!((r.p99_ms - 2.11).abs() < 1e-9);
        assert_eq!(r.requests, 577_000);
        assert_eq!(r.socket_errors, 5);
        assert_eq!(r.non_2xx, 7);
    }

    #[test]
    fn rejects_output_without_a_rate() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn units_convert() {
        assert_eq!(duration_ms("1.5s"), Some(1500.0));
        assert_eq!(duration_ms("250.00us"), Some(0.25));
        assert_eq!(duration_ms("12"), None);
        assert_eq!(duration_ms("3.0parsecs"), None);
    }
}
