//! `remora serve` with TLS: HTTP/2 negotiated by ALPN, Secure affinity cookie.

mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serve_support::*;

/// A self-signed certificate for `localhost`, written as `cert.pem` and
/// `key.pem` into `dir`.
fn certificate(dir: &std::path::Path) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
    ck
}

/// `remora serve` with a TLS listener (a fresh self-signed certificate)
/// and cookie affinity over `servers`: the process, its address and the
/// certificate to trust.
fn start_tls(
    servers: &[&Backend],
) -> (
    Remora,
    std::net::SocketAddr,
    rcgen::CertifiedKey<rcgen::KeyPair>,
) {
    let (addr, adm) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = certificate(dir.path());
    let text = config(
        addr,
        adm,
        r#"tls = { cert = "cert.pem", key = "key.pem" }"#,
        COOKIE_POOL,
        &servers_toml(servers),
    );
    (start_in(dir, &text, addr, adm), addr, ck)
}

/// An HTTP/2 connection to `addr` over TLS (ALPN `h2` checked), trusting
/// `ck`'s certificate.
async fn h2_client(
    addr: std::net::SocketAddr,
    ck: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from("localhost").expect("name"), tcp),
    )
    .await
    .expect("handshake timeout")
    .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// An extended CONNECT (RFC 8441) for `path` with `cookie`.
fn ws_connect(addr: std::net::SocketAddr, path: &str, cookie: &str) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("sec-websocket-version", "13")
        .header("cookie", cookie)
        .body(Empty::<Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_via_alpn_with_secure_cookie() {
    let b1 = backend("b1");
    let (r, addr, ck) = start_tls(&[&b1]);

    let mut sender = h2_client(addr, &ck).await;
    let mut cookie = None;
    for i in 0..3 {
        let mut b = http::Request::builder().uri(format!("https://localhost:{}/echo", addr.port()));
        if let Some(c) = &cookie {
            b = b.header("cookie", c);
        }
        let req = b.body(Empty::<Bytes>::new()).expect("request");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        if i == 0 {
            let set = resp
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .expect("affinity cookie")
                .to_string();
            assert!(set.contains("Secure"), "{set}");
            cookie = Some(set.split(';').next().unwrap_or("").to_string());
        } else {
            assert!(resp.headers().get("set-cookie").is_none());
        }
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("\"x-forwarded-proto\":[\"https\"]"), "{body}");
        assert!(body.contains("2 remora"), "Via names HTTP/2: {body}");
    }
    // Cookies split over several HTTP/2 fields reach the server as one
    // field, without the affinity cookie.
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}/echo", addr.port()))
        .header("cookie", "a=1")
        .header("cookie", cookie.as_deref().expect("pinned"))
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert!(resp.headers().get("set-cookie").is_none(), "still pinned");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"cookie\":[\"a=1; b=2\"]"), "{body}");
    drop(r);
}

/// WebSocket over HTTP/2 (RFC 8441): the extended CONNECT reaches the
/// pinned server as an HTTP/1.1 upgrade, the client gets `200` and frames
/// flow both ways on its stream, several tunnels on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_follows_affinity() {
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (b1, b2) = (backend("b1"), backend("b2"));
    let (r, addr, ck) = start_tls(&[&b1, &b2]);
    let mut sender = h2_client(addr, &ck).await;

    // The first answer pins the client; by then the server's SETTINGS,
    // which allow extended CONNECT, have arrived too.
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}/whoami", addr.port()))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("affinity cookie")
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let pinned = String::from_utf8_lossy(&body).trim().to_string();
    assert!(pinned == "b1" || pinned == "b2", "{pinned}");

    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut resp = sender
            .send_request(ws_connect(addr, "/ws", &cookie))
            .await
            .expect("extended CONNECT");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        let stream = hyper::upgrade::on(&mut resp).await.expect("tunnel");
        tunnels.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(stream),
                Role::Client,
                None,
            )
            .await,
        );
    }
    // Both tunnels open at once on the one connection.
    for (i, ws) in tunnels.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        assert_eq!(ws_round_trip(ws, &msg).await, format!("{pinned}:{msg}"));
    }
    for mut ws in tunnels {
        ws.close(None).await.expect("close");
    }

    // A server that answers without switching protocols must not open a
    // tunnel: a 2xx would tell the client it had one.
    let resp = sender
        .send_request(ws_connect(addr, "/whoami", &cookie))
        .await
        .expect("extended CONNECT");
    assert_eq!(resp.status(), 502);
    // Its other answers go to the client as they are.
    let resp = sender
        .send_request(ws_connect(addr, "/status/404", &cookie))
        .await
        .expect("extended CONNECT");
    assert_eq!(resp.status(), 404);
    // A plain CONNECT is still refused, and the connection goes on.
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("localhost:{}", addr.port()))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("CONNECT");
    assert_eq!(resp.status(), 405);
    drop(r);
}
