//! Many idle keep-alive client connections, opened from this process: each
//! sends one request, reads the whole response, then stays open and silent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::BenchError;
use crate::http::{self, MAX_BODY, MAX_HEAD};

/// Connections held open; dropping it closes them all.
#[derive(Debug)]
pub struct Idle {
    streams: Vec<TcpStream>,
}

impl Idle {
    /// How many of the held connections the peer has not closed (a read
    /// would block rather than return end-of-stream or an error).
    pub fn still_open(&self) -> usize {
        let mut buf = [0u8; 1];
        self.streams
            .iter()
            .filter(|s| {
                matches!(s.try_read(&mut buf),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    }
}

/// Opens `count` connections to `addr`, at most `parallel` at a time, each
/// completing one keep-alive `request`. Fails on the first connection that
/// cannot be opened or gets no complete 2xx/3xx response within `timeout`.
pub async fn open(
    addr: SocketAddr,
    count: usize,
    parallel: usize,
    request: Arc<Vec<u8>>,
    timeout: Duration,
) -> Result<Idle, BenchError> {
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Http("connection gate closed".into()))?;
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let result = tokio::time::timeout(timeout, one(addr, &request)).await;
            drop(permit);
            match result {
                Ok(r) => r,
                Err(_) => Err(BenchError::Timeout(format!(
                    "idle connection to {addr}: no response within {timeout:?}"
                ))),
            }
        });
    }
    let mut streams = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        let stream = joined.map_err(|e| BenchError::Http(format!("task failed: {e}")))??;
        streams.push(stream);
    }
    Ok(Idle { streams })
}

async fn one(addr: SocketAddr, request: &[u8]) -> Result<TcpStream, BenchError> {
    let io = |what: &'static str| {
        move |source| BenchError::Io {
            what: format!("{what} {addr} (idle connection)"),
            source,
        }
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io("connect"))?;
    stream.write_all(request).await.map_err(io("write"))?;
    let mut buf = Vec::with_capacity(2048);
    let mut head = None;
    loop {
        if let Some((end, h)) = &head {
            let h: &http::Head = h;
            if http::body_complete(h.body, &buf[*end..]) {
                if !(200..400).contains(&h.status) {
                    return Err(BenchError::Http(format!(
                        "idle connection to {addr} got status {}",
                        h.status
                    )));
                }
                return Ok(stream);
            }
        }
        let n = stream.read_buf(&mut buf).await.map_err(io("read"))?;
        if n == 0 {
            return Err(BenchError::Http(format!(
                "{addr} closed an idle connection mid-response"
            )));
        }
        if buf.len() > MAX_HEAD + MAX_BODY {
            return Err(BenchError::Http(format!("{addr} sent too much")));
        }
        if head.is_none()
            && let Some(end) = http::head_end(&buf)
        {
            head = Some((end, http::parse_head(&buf[..end])?));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_connections_and_sees_closes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..20 {
                    let (mut s, _) = listener.accept().await.expect("accept");
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await.expect("read");
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .expect("write");
                    held.push(s);
                }
                held
            });
            let req = Arc::new(http::request("/", &[]));
            let idle = open(addr, 20, 4, req, Duration::from_secs(5))
                .await
                .expect("open");
            let held = server.await.expect("server");
            assert_eq!(idle.still_open(), 20);
            drop(held);
            // Closing is asynchronous: poll until the closes are visible.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while idle.still_open() != 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(idle.still_open(), 0);
        });
    }
}
