//! Two Bayeux nodes sharing one Redis: a publish on one reaches subscribers
//! on the other.
#![allow(missing_docs)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{deliveries, quick, start};
use remora_bayeux::ClusterStatus;
use serde_json::json;

/// A private `redis-server` on a fixed free port, killed on drop; it can
/// be stopped and started again on the same port.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts one, or `None` (skip) when `redis-server` cannot be run and
    /// `REMORA_REQUIRE_SERVICES` is not `1`.
    async fn start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("local address").port()
        };
        let mut r = PrivateRedis {
            port,
            child: None,
            dir,
        };
        if let Err(e) = r.resume().await {
            if std::env::var("REMORA_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("REMORA_REQUIRE_SERVICES=1 but cannot start redis-server: {e}");
            }
            eprintln!("skipping: cannot start redis-server: {e}");
            return None;
        }
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it listens.
    async fn resume(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other("redis-server did not start"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the server (its clients see their connections closed).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `REDIS_URL`, else a private redis-server from PATH; `None` (skip) only
/// when neither is possible and `REMORA_REQUIRE_SERVICES` is not `1`.
async fn redis() -> Option<(String, Option<PrivateRedis>)> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some((url, None));
    }
    let r = PrivateRedis::start().await?;
    Some((r.url(), Some(r)))
}

/// Waits (at most 20 s) until `node`'s cluster status satisfies `f`.
async fn status_becomes(
    node: &remora_bayeux::Bayeux,
    what: &str,
    f: impl FnMut(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let mut rx = node.cluster_status().expect("joined");
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        rx.wait_for(f).await.map(|s| *s)
    })
    .await;
    match waited {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("cluster status closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}: {:?}", *rx.borrow()),
    }
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

    // A server-side listener on B hears publishes made on A.
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    b.bayeux
        .add_listener("/room/*", move |_, p| {
            let _ = heard_tx.send((
                p.channel.to_owned(),
                p.from.is_none(),
                p.message.data.clone(),
            ));
        })
        .unwrap();
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
    let (channel, no_local_client, data) =
        tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("B's listener heard A's publish")
            .unwrap();
    assert_eq!((channel.as_str(), no_local_client), ("/room/1", true));
    assert_eq!(data, Some(json!("from-a")));
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

#[tokio::test]
async fn cluster_link_survives_a_redis_restart() {
    // Always a private server: this test stops and restarts it.
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let url = redis.url();
    let prefix = format!("test-{}-{}", std::process::id(), rand_suffix());
    let a = start(quick()).await;
    let b = start(quick()).await;
    a.bayeux.join_cluster(&url, &prefix).await.unwrap();
    b.bayeux.join_cluster(&url, &prefix).await.unwrap();
    assert_eq!(
        *b.bayeux.cluster_status().unwrap().borrow(),
        ClusterStatus {
            subscribed: true,
            outages: 0,
            restored: 0
        }
    );

    redis.stop();
    for node in [&a.bayeux, &b.bayeux] {
        status_becomes(node, "the outage", |s| !s.subscribed && s.outages == 1).await;
    }
    assert_eq!(b.bayeux.stats().cluster_outages, 1);
    // Published during the outage: delivered locally, kept in the queue for
    // Redis (not lost on the publishing side).
    let on_a = a.client().await;
    assert_eq!(
        a.publish(&on_a, "/room/0", json!("during")).await["successful"],
        true
    );

    redis.resume().await.expect("redis-server restarts");
    for node in [&a.bayeux, &b.bayeux] {
        let s = status_becomes(node, "the resubscription", |s| s.subscribed).await;
        assert_eq!((s.outages, s.restored), (1, 1), "{s:?}");
    }

    // After the restart: a publish on A reaches a subscriber on B.
    let on_b = b.client().await;
    b.subscribe(&on_b, json!("/room/*")).await;
    assert_eq!(
        a.publish(&on_a, "/room/1", json!("after")).await["successful"],
        true
    );
    // A's publisher may still be in its backoff: connect until it arrives.
    let mut got = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !got.contains(&json!("after")) && tokio::time::Instant::now() < deadline {
        let r = b
            .send(json!([{"channel":"/meta/connect","clientId":on_b,"connectionType":"long-polling","advice":{"timeout":1000}}]))
            .await;
        got.extend(deliveries(&r).into_iter().map(|m| m["data"].clone()));
    }
    assert!(got.contains(&json!("after")), "{got:?}");
    assert_eq!(b.bayeux.stats().cluster_outages, 1);
    // A's publisher failed at least once while Redis was down, then resent.
    assert!(a.bayeux.stats().cluster_publish_errors >= 1);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
