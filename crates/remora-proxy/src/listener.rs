//! Accepting client connections: connection cap, worker threads, PROXY
//! protocol, TLS; then [`crate::conn`] serves HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::conn::{self, Io};
use crate::proxy_protocol::{self, ProxiedAddr};
use crate::reload::ListenerRt;
use crate::serve::Shared;

/// Accepts on `listener` until `stop` turns `true` or the balancer drains.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let max = shared
        .runtime
        .load()
        .listeners
        .get(&addr)
        .map(|l| l.config.limits.max_connections)
        .unwrap_or(1);
    let permits = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    let mut shutdown = shared.shutdown_signal();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted::new(shared.clone(), permit);
        // On a worker, the socket moves to that worker's reactor: the
        // connection, its requests and their server connections then stay
        // on one thread.
        let worker = shared.workers.next();
        let socket = match worker {
            Some(_) => stream.into_std().map(Socket::Std),
            None => Ok(Socket::Tokio(stream)),
        };
        let task = connection_task(accepted, socket, peer, addr);
        match worker {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// The task of one accepted connection, from hand-off to close.
///
/// Not an `async fn`: the opening (socket registration, PROXY header, TLS,
/// HTTP/2) is boxed, and [`conn::serve`]'s future is the task's, with no
/// wrapping future around it (each level of `async fn` keeps its arguments
/// twice and its own state).
fn connection_task(
    accepted: Accepted,
    socket: std::io::Result<Socket>,
    peer: SocketAddr,
    addr: SocketAddr,
) -> impl Future<Output = ()> + Send + 'static {
    let shared = accepted.shared().clone();
    let opening = Box::pin(async move {
        let stream = match socket {
            Ok(Socket::Tokio(s)) => s,
            Ok(Socket::Std(s)) => TcpStream::from_std(s)
                .map_err(|e| tracing::warn!(error = %e, "cannot register connection"))
                .ok()?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand off connection");
                return None;
            }
        };
        conn::start(&shared, stream, peer, addr).await
    });
    conn::serve(accepted, opening)
}

/// One accepted connection's place: counted in the open connections and
/// holding a permit of its listener's connection cap until dropped, at the
/// end of its task.
pub(crate) struct Accepted {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Accepted {
    fn new(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Accepted {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.metrics.active_connections.inc();
        Accepted {
            shared,
            _permit: permit,
        }
    }

    /// The balancer's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.shared.metrics.active_connections.dec();
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Socket {
    Tokio(TcpStream),
    Std(std::net::TcpStream),
}

/// Threads, each with a single-threaded runtime, that run client
/// connections (thread per core, like HAProxy's `nbthread`).
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` worker threads (0: none; connections then run on the
    /// caller's runtime).
    pub fn start(n: usize) -> Workers {
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name(format!("remora-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a worker runtime");
                            return;
                        }
                    };
                    if tx.send(rt.handle().clone()).is_err() {
                        return;
                    }
                    rt.block_on(std::future::pending::<()>());
                });
            if spawned.is_err() {
                continue;
            }
            if let Ok(h) = rx.recv() {
                handles.push(h);
            }
        }
        Workers {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// The next worker, round-robin (`None` without workers).
    pub fn next(&self) -> Option<tokio::runtime::Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles.get(i).cloned()
    }
}

/// Reads the PROXY header (when configured) and completes the TLS
/// handshake (when configured): the client stream, whether TLS chose `h2`
/// (`None` without TLS) and the client's address. `None`: the client is
/// turned away.
pub(crate) async fn open(
    lst: &ListenerRt,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Box<dyn Io>, Option<bool>, SocketAddr)> {
    let limits = &lst.config.limits;
    let mut client_addr = peer;
    if lst.config.proxy_protocol {
        match tokio::time::timeout(
            limits.header_read_timeout,
            proxy_protocol::read_header(&mut stream),
        )
        .await
        {
            Ok(Ok(ProxiedAddr::Source(a))) => client_addr = a,
            Ok(Ok(ProxiedAddr::Unknown)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "PROXY header rejected");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY header timeout");
                return None;
            }
        }
    }
    match &lst.tls {
        None => Some((Box::new(stream), None, client_addr)),
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let h2 = s.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
                    Some((Box::new(s), Some(h2), client_addr))
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A task's future is as large as its largest state, and every parked
    /// connection keeps its task: hyper's connection, HTTP/2, the TLS
    /// handshake and the PROXY header must stay boxed, out of the task, and
    /// the parked state must stay flat (see [`conn::serve`]). 408 bytes plus
    /// tokio's 104 bytes of task header and trailer fit a 512-byte task cell
    /// (cells are aligned to 128 bytes). This runs in a debug build (400
    /// bytes when written); release futures are a little smaller.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(connection_task);
        assert!(size <= 408, "connection task future is {size} bytes");
    }
}
