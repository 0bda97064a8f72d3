//! `remora serve` with TLS: HTTP/2 negotiated by ALPN, Secure affinity cookie.

mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serve_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_via_alpn_with_secure_cookie() {
    let b1 = backend("b1");
    let (addr, adm) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
    let text = config(
        addr,
        adm,
        r#"tls = { cert = "cert.pem", key = "key.pem" }"#,
        COOKIE_POOL,
        &servers_toml(&[&b1]),
    );
    let r = start_in(dir, &text, addr, adm);

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

    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
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
    drop(r);
}
