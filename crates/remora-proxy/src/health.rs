//! Active health checks (HTTP or TCP) with rise/fall, and the start-up report.
//!
//! Passive ejection (consecutive connect errors or 5xx on live traffic) is
//! recorded by the forwarder ([`crate::pool::Server::record_failure`]); an
//! ejected server is re-admitted only by active checks, after its backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::HealthConfig;
use crate::pool::{Pool, Server};
use crate::reload::Runtime;
use crate::serve::Shared;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Connecting or exchanging failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The answer was not an HTTP status line.
    #[error("malformed HTTP response")]
    Malformed,
    /// Status outside `expect_status`.
    #[error("status {0}")]
    Status(u16),
}

/// Checks `address` once.
pub async fn check(address: &str, cfg: &HealthConfig) -> Result<(), CheckError> {
    match tokio::time::timeout(cfg.timeout, check_inner(address, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout),
    }
}

async fn check_inner(address: &str, cfg: &HealthConfig) -> Result<(), CheckError> {
    let mut s = TcpStream::connect(address).await.map_err(CheckError::Io)?;
    let Some(path) = &cfg.path else {
        return Ok(());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: remora-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(CheckError::Io)?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(CheckError::Io)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let status = parse_status(&buf[..n]).ok_or(CheckError::Malformed)?;
    if (cfg.expect_status.0..=cfg.expect_status.1).contains(&status) {
        Ok(())
    } else {
        Err(CheckError::Status(status))
    }
}

fn parse_status(b: &[u8]) -> Option<u16> {
    let rest = b
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| b.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?;
    code.parse().ok()
}

/// Checks one server forever, with rise/fall hysteresis.
pub async fn run(shared: Arc<Shared>, pool: Arc<Pool>, server: Arc<Server>) {
    let cfg = pool.config.health.clone();
    let labels = crate::metrics::ServerLabels {
        pool: pool.name().to_string(),
        server: server.name().to_string(),
    };
    let mut ok_run = 0u32;
    let mut fail_run = 0u32;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        shared
            .metrics
            .server_up
            .get_or_create(&labels)
            .set(i64::from(server.serves_pinned()));
        tick.tick().await;
        match check(&server.config.address, &cfg).await {
            Ok(()) => {
                fail_run = 0;
                ok_run = ok_run.saturating_add(1);
                if !server.healthy() && ok_run >= cfg.rise && !server.ejection_holds() {
                    server.set_healthy(true);
                    tracing::info!(pool = pool.name(), server = server.name(), "server UP");
                }
            }
            Err(e) => {
                ok_run = 0;
                fail_run = fail_run.saturating_add(1);
                if server.healthy() && fail_run >= cfg.fall {
                    server.set_healthy(false);
                    tracing::warn!(pool = pool.name(), server = server.name(), reason = %e, "server DOWN");
                }
            }
        }
    }
}

/// At start, checks every server once and says clearly which are down.
pub async fn initial_report(rt: &Runtime) {
    let mut checks = Vec::new();
    for pool in rt.pools.values() {
        for s in &pool.servers {
            let (pool, s) = (pool.clone(), s.clone());
            checks.push(tokio::spawn(async move {
                let mut cfg = pool.config.health.clone();
                cfg.timeout = cfg.timeout.min(Duration::from_secs(1));
                if let Err(e) = check(&s.config.address, &cfg).await {
                    s.set_healthy(false);
                    tracing::warn!(
                        pool = pool.name(),
                        server = s.name(),
                        address = %s.config.address,
                        reason = %e,
                        "server DOWN at start; is it running? (for a quick try: \
                         `remora test-backend --name {} --listen {}`)",
                        s.name(),
                        s.config.address
                    );
                }
            }));
        }
    }
    for c in checks {
        let _ = c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
    }
}
