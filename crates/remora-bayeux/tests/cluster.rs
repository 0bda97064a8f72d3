//! Two Bayeux nodes sharing one Redis: a publish on one reaches subscribers
//! on the other.
#![allow(missing_docs)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{deliveries, quick, start};
use serde_json::json;

/// A private `redis-server`, killed on drop.
struct PrivateRedis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `REDIS_URL`, else a private redis-server from PATH; `None` (skip) only
/// when neither is possible and `REMORA_REQUIRE_SERVICES` is not `1`.
async fn redis() -> Option<(String, Option<PrivateRedis>)> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some((url, None));
    }
    let dir = tempfile::tempdir().ok()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("REMORA_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("REMORA_REQUIRE_SERVICES=1 but no REDIS_URL and no redis-server: {e}");
            }
            eprintln!("skipping: no REDIS_URL and cannot start redis-server: {e}");
            return None;
        }
    };
    let private = PrivateRedis { child, _dir: dir };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((url, Some(private)))
}

#[tokio::test]
async fn publish_on_one_node_reaches_the_other() {
    let Some((url, _guard)) = redis().await else {
        return;
    };
    let prefix = format!("test-{}", std::process::id());
    let prefix = format!("{prefix}-{}", rand_suffix());
    let a = start(quick()).await;
    let b = start(quick()).await;
    a.bayeux.join_cluster(&url, &prefix).await.unwrap();
    b.bayeux.join_cluster(&url, &prefix).await.unwrap();
    assert!(a.bayeux.join_cluster(&url, &prefix).await.is_err());

    let on_b = b.client().await;
    b.subscribe(&on_b, json!("/room/*")).await;
    let on_a = a.client().await;
    a.subscribe(&on_a, json!("/room/*")).await;
    // Held connect on B, publish from a client on A.
    let held = tokio::spawn(async move {
        let r = b.connect(&on_b).await;
        (b, r)
    });
    assert_eq!(
        a.publish(&on_a, "/room/1", json!("from-a")).await["successful"],
        true
    );
    let (b, r) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    let got = deliveries(&r);
    assert_eq!(got.len(), 1, "{r:?}");
    assert_eq!(got[0]["data"], "from-a");
    // Published from Rust on B: reaches A; A's own subscriber got it once.
    b.bayeux.publish("/room/2", json!("from-b")).unwrap();
    let mut data = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while data.len() < 2 && tokio::time::Instant::now() < deadline {
        let r = a
            .send(json!([{"channel":"/meta/connect","clientId":on_a,"connectionType":"long-polling","advice":{"timeout":500}}]))
            .await;
        data.extend(deliveries(&r).into_iter().map(|m| m["data"].clone()));
    }
    assert_eq!(data, [json!("from-a"), json!("from-b")]);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
