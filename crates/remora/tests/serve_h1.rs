//! Remora's own HTTP/1.1 server side, on the wire: pipelining, chunked
//! uploads, `100 Continue`, HTTP/1.0 clients, `HEAD`, and the refusals of
//! heads it cannot serve.

mod serve_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serve_support::*;

/// Reads one response (head, then a `Content-Length` or chunked body, or
/// until close) from `s`, after `pending` (bytes already read); returns
/// it and whatever followed it.
fn one_response(s: &mut TcpStream, pending: Vec<u8>) -> (String, Vec<u8>) {
    read_response(s, pending, false)
}

/// [`one_response`] to a `HEAD` request (a head only).
fn head_response(s: &mut TcpStream, pending: Vec<u8>) -> (String, Vec<u8>) {
    read_response(s, pending, true)
}

fn read_response(s: &mut TcpStream, mut pending: Vec<u8>, head_request: bool) -> (String, Vec<u8>) {
    let mut buf = [0u8; 8192];
    let fill = |s: &mut TcpStream, pending: &mut Vec<u8>, buf: &mut [u8]| -> bool {
        match s.read(buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                true
            }
        }
    };
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(
            fill(s, &mut pending, &mut buf),
            "connection closed before a head: {pending:?}"
        );
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().expect("length"));
    let bodiless =
        head_request || head.starts_with("http/1.1 1") || head.starts_with("http/1.1 304");
    let end = if bodiless {
        head_end
    } else if let Some(n) = length {
        while pending.len() < head_end + n {
            assert!(fill(s, &mut pending, &mut buf), "cut body");
        }
        head_end + n
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = pending[head_end..]
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")
            {
                break head_end + i + 5;
            }
            assert!(fill(s, &mut pending, &mut buf), "cut chunked body");
        }
    } else {
        while fill(s, &mut pending, &mut buf) {}
        pending.len()
    };
    let rest = pending.split_off(end);
    (String::from_utf8_lossy(&pending).into_owned(), rest)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Whether the server closed `s` (reads end) within the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http1_server_side_speaks_rfc_9112() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let _r = start(
        &config(addr, adm, "", COOKIE_POOL, &servers_toml(&[&b1])),
        addr,
        adm,
    );

    // Pipelining: three requests in one write, three answers in order.
    let mut s = connect(addr);
    s.write_all(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut rest = Vec::new();
    for n in 1..=3 {
        let (resp, more) = one_response(&mut s, rest);
        rest = more;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains(&format!("/echo?n={n}")),
            "answer {n} in order: {resp}"
        );
        assert!(resp.to_ascii_lowercase().contains("\r\ndate: "), "{resp}");
    }

    // A chunked upload reaches the server whole, and the connection
    // carries the next request.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
    )
    .unwrap();
    let (resp, more) = one_response(&mut s, rest);
    assert!(resp.contains("\"body_len\":5"), "{resp}");
    s.write_all(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (resp, more) = head_response(&mut s, more);
    // HEAD: the length of the body a GET would get, and no body: the
    // next answer follows the head at once.
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("content-length: "),
        "{resp}"
    );
    assert!(more.is_empty(), "{more:?}");
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (resp, more) = one_response(&mut s, more);
    assert!(
        resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("b1"),
        "{resp}"
    );
    assert!(more.is_empty(), "{more:?}");

    // Expect: 100-continue: the interim answer comes before the body is
    // sent, then the final one.
    let mut s = connect(addr);
    s.write_all(
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (interim, rest) = one_response(&mut s, Vec::new());
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(b"data").unwrap();
    let (resp, _) = one_response(&mut s, rest);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\"body_len\":4"), "{resp}");

    // HTTP/1.0: the connection closes after the answer unless kept alive.
    let mut s = connect(addr);
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
    let (resp, rest) = one_response(&mut s, Vec::new());
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    assert!(resp.ends_with("b1"), "{resp}");
    assert!(rest.is_empty() && closed(&mut s));
    let mut s = connect(addr);
    s.write_all(b"GET /whoami HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (resp, rest) = one_response(&mut s, Vec::new());
    assert!(resp.contains("connection: keep-alive\r\n"), "{resp}");
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (resp, rest) = one_response(&mut s, rest);
    assert!(
        resp.contains("connection: close\r\n") && resp.ends_with("b1"),
        "{resp}"
    );
    assert!(rest.is_empty() && closed(&mut s));

    // Heads that cannot be served: a status that says why, then close.
    let cases: [(&[u8], &str); 5] = [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 501 ",
        ),
        (
            b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
    ];
    for (case, want) in cases {
        let mut s = connect(addr);
        s.write_all(case).unwrap();
        let (resp, rest) = one_response(&mut s, Vec::new());
        assert!(
            resp.starts_with(want),
            "{:?}: {resp}",
            String::from_utf8_lossy(case)
        );
        assert!(resp.contains("connection: close\r\n"), "{resp}");
        assert!(
            rest.is_empty() && closed(&mut s),
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }

    // An answer before the body was read (413 from its declared length):
    // no 100 Continue, and the connection closes, since the body's bytes
    // would otherwise be read as the next request.
    let mut s = connect(addr);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (resp, rest) = one_response(&mut s, Vec::new());
    assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    assert!(rest.is_empty() && closed(&mut s));
}
