//! A deliberately tiny HTTP/1.1 client: enough to probe a target, fetch an
//! affinity cookie and park keep-alive connections. Responses are bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::BenchError;

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The largest response body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// The parts of a response the benchmarks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `name=value` of each `Set-Cookie` (attributes dropped).
    pub set_cookies: Vec<String>,
    /// How the body is delimited.
    pub body: BodyLen,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// `Content-Length`.
    Exact(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A keep-alive `GET` request with optional extra header lines.
pub fn request(path: &str, headers: &[String]) -> Vec<u8> {
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: remora-bench\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Where the head ends (index after `\r\n\r\n`), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete response head.
pub fn parse_head(head: &[u8]) -> Result<Head, BenchError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| BenchError::Http("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BenchError::Http(format!("bad status line: {status_line:?}")))?;
    let mut set_cookies = Vec::new();
    let mut body = BodyLen::Exact(0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("set-cookie") {
            let pair = value.split(';').next().unwrap_or_default().trim();
            set_cookies.push(pair.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| BenchError::Http(format!("bad Content-Length: {value:?}")))?;
            if len > MAX_BODY {
                return Err(BenchError::Http(format!("body of {len} bytes is too big")));
            }
            body = BodyLen::Exact(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            body = BodyLen::Chunked;
        }
    }
    Ok(Head {
        status,
        set_cookies,
        body,
    })
}

/// Whether `body` (the bytes after the head) holds the whole body.
pub fn body_complete(len: BodyLen, body: &[u8]) -> bool {
    match len {
        BodyLen::Exact(n) => body.len() >= n,
        // Our targets send no trailers: the last chunk ends the body.
        BodyLen::Chunked => body.ends_with(b"0\r\n\r\n"),
    }
}

/// One blocking `GET` on a fresh connection; returns the head.
pub fn get(addr: SocketAddr, path: &str, headers: &[String]) -> Result<Head, BenchError> {
    let io = |what: &str| {
        let what = format!("{what} {addr}");
        move |source| BenchError::Io { what, source }
    };
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connect"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("configure"))?;
    stream
        .write_all(&request(path, headers))
        .map_err(io("write to"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut head: Option<(usize, Head)> = None;
    loop {
        if let Some((end, h)) = &head
            && body_complete(h.body, &buf[*end..])
        {
            break;
        }
        let n = stream.read(&mut chunk).map_err(io("read from"))?;
        if n == 0 {
            return Err(BenchError::Http(format!(
                "{addr} closed the connection mid-response"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD + MAX_BODY {
            return Err(BenchError::Http(format!("{addr} sent too much")));
        }
        if head.is_none() {
            if let Some(end) = head_end(&buf) {
                head = Some((end, parse_head(&buf[..end])?));
            } else if buf.len() > MAX_HEAD {
                return Err(BenchError::Http(format!("{addr} sent an oversized head")));
            }
        }
    }
    head.map(|(_, h)| h)
        .ok_or_else(|| BenchError::Http(format!("{addr} sent no head")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_cookies_and_length() {
        let raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: SRV=b1; path=/\r\nset-cookie: A=x=y; HttpOnly\r\nContent-Length: 1024\r\n\r\n";
        let end = head_end(raw).expect("complete");
        assert_eq!(end, raw.len());
        let head = parse_head(&raw[..end]).expect("parse");
        assert_eq!(head.status, 200);
        assert_eq!(head.set_cookies, vec!["SRV=b1", "A=x=y"]);
        assert_eq!(head.body, BodyLen::Exact(1024));
    }

    #[test]
    fn chunked_and_limits() {
        let head =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").expect("parse");
        assert_eq!(head.body, BodyLen::Chunked);
        assert!(body_complete(BodyLen::Chunked, b"4\r\nabcd\r\n0\r\n\r\n"));
        assert!(!body_complete(BodyLen::Chunked, b"4\r\nabcd\r\n"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn get_reads_a_real_response() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).expect("read");
            s.write_all(b"HTTP/1.1 200 OK\r\nSet-Cookie: K=v\r\nContent-Length: 3\r\n\r\nabc")
                .expect("write");
        });
        let head = get(addr, "/", &[]).expect("get");
        server.join().expect("server thread");
        assert_eq!(head.status, 200);
        assert_eq!(head.set_cookies, vec!["K=v"]);
    }
}
