//! Many quiet long-polling clients: each handshakes, then keeps one
//! `/meta/connect` held, and the server's resident memory is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::wire::{self, Http, Transport};
use crate::BenchError;

/// What holding the clients measured.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Clients holding a connect when memory was read.
    pub clients: usize,
    /// Resident memory of the server before any client, KiB.
    pub rss_before_kb: u64,
    /// Resident memory of the server with every client held, KiB.
    pub rss_kb: u64,
    /// Time to open every client.
    pub setup: Duration,
}

/// Opens `clients` long-polling clients against `addr`, `parallel` at a
/// time, waits until each has sent its held connect and `settle` more,
/// then reads the resident memory of `server_pid`'s tree. The clients are
/// closed on return.
pub async fn run(
    addr: SocketAddr,
    server_pid: u32,
    clients: usize,
    parallel: usize,
    settle: Duration,
    timeout: Duration,
) -> Result<Outcome, BenchError> {
    let rss_before_kb = crate::proc::tree_rss_kb(server_pid);
    let started = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Setup("hold gate closed".into()))?;
        let ready = Arc::clone(&ready);
        tasks.spawn(async move {
            let opened = tokio::time::timeout(timeout, open(addr)).await;
            drop(permit);
            hold_one(opened, &ready, addr, timeout).await
        });
    }
    let deadline = Instant::now() + timeout;
    while ready.load(Ordering::Relaxed) < clients {
        match tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await {
            Ok(Some(Ok(Err(e)))) => return Err(e),
            Ok(Some(Err(e))) => return Err(BenchError::Setup(format!("held client task: {e}"))),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "only {} of {clients} held clients ready within {timeout:?}",
                ready.load(Ordering::Relaxed)
            )));
        }
    }
    let setup = started.elapsed();
    tokio::time::sleep(settle).await;
    let held = tasks.len();
    let rss_kb = crate::proc::tree_rss_kb(server_pid);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(Outcome {
        clients: held,
        rss_before_kb,
        rss_kb,
        setup,
    })
}

/// Once `opened`, counts the client as ready and keeps a connect held
/// until aborted or an exchange fails.
async fn hold_one(
    opened: Result<Result<(Http, String), BenchError>, tokio::time::error::Elapsed>,
    ready: &AtomicUsize,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), BenchError> {
    let (mut http, id) = opened.map_err(|_| {
        BenchError::Timeout(format!("held client setup at {addr} took over {timeout:?}"))
    })??;
    ready.fetch_add(1, Ordering::Relaxed);
    let body = wire::connect(&id, Transport::LongPolling);
    loop {
        http.post(&body).await?;
    }
}

/// Handshakes one client and sends its first connect with `timeout: 0`
/// advice (answered at once by both servers), so the next one is held.
async fn open(addr: SocketAddr) -> Result<(Http, String), BenchError> {
    let mut http = Http::connect(addr).await?;
    let replies = http.post(&wire::handshake(Transport::LongPolling)).await?;
    let id = wire::client_id(&replies)?;
    let mut first = wire::connect(&id, Transport::LongPolling);
    first[0]["advice"] = json!({ "timeout": 0 });
    let replies = http.post(&first).await?;
    wire::expect_reply(&replies, "/meta/connect")?;
    Ok((http, id))
}
