//! `RedisStore`'s near cache against a real Redis: loads are answered from
//! memory, a change by another client is seen (Redis pushes the
//! invalidation), our own saves keep the entry, and a lost connection drops
//! everything.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use remora_session::record::now_ms;
use remora_session::store::{NearCache, RedisStore};
use remora_session::{Attribute, Record, SaveOutcome, Store};

async fn near(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .near_cache(NearCache::new(1000))
        .connect()
        .await
        .expect("connect with a near cache")
}

fn record(id: &str, version: u64, key: &str) -> Record {
    let mut r = Record::new(id.to_owned(), now_ms(), 60_000, 600_000);
    r.version = version;
    r.attributes.insert(
        key.to_owned(),
        Attribute::from_value(&serde_json::json!(version)).unwrap(),
    );
    r
}

/// Loads through `s` until `ok` holds (Redis's invalidation push is
/// asynchronous), failing after 5 s.
async fn load_until(s: &RedisStore, id: &str, ok: impl Fn(&Option<Record>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.load(id).await.expect("load");
        if ok(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw the change: {r:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_hit_memory_and_see_other_clients_changes() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("near"));
    let a = near(&url, &prefix).await;
    let b = near(&url, &prefix).await;
    let plain = RedisStore::connect(&url)
        .await
        .unwrap()
        .with_prefix(&prefix);
    let id = remora_session::id::new_id();

    assert_eq!(
        a.save(&record(&id, 1, "a"), 0).await.unwrap(),
        SaveOutcome::Saved { new_version: 1 }
    );
    for _ in 0..3 {
        assert_eq!(a.load(&id).await.unwrap().unwrap().version, 1);
    }
    let st = a.near_cache_stats().unwrap();
    assert_eq!((st.hits, st.misses), (3, 0), "{st:?}");

    // Another near-cached server changes it.
    let mut v2 = b.load(&id).await.unwrap().unwrap();
    v2.version = 2;
    v2.attributes.insert(
        "b".into(),
        Attribute::from_value(&serde_json::json!(2)).unwrap(),
    );
    assert_eq!(
        b.save(&v2, 1).await.unwrap(),
        SaveOutcome::Saved { new_version: 2 }
    );
    load_until(&a, &id, |r| {
        r.as_ref()
            .is_some_and(|r| r.version == 2 && r.attributes.contains_key("b"))
    })
    .await;
    assert!(a.near_cache_stats().unwrap().invalidations >= 1);

    // A client without tracking (RESP2, no cache) changes it.
    let mut v3 = v2.clone();
    v3.version = 3;
    assert_eq!(
        plain.save(&v3, 2).await.unwrap(),
        SaveOutcome::Saved { new_version: 3 }
    );
    load_until(&a, &id, |r| r.as_ref().is_some_and(|r| r.version == 3)).await;

    // A delete elsewhere is seen too.
    plain.delete(&id).await.unwrap();
    load_until(&a, &id, Option::is_none).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_saves_stay_cached() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("own"));
    let a = near(&url, &prefix).await;
    let ids: Vec<String> = (0..20).map(|_| remora_session::id::new_id()).collect();
    for id in &ids {
        assert_eq!(
            a.save(&record(id, 1, "x"), 0).await.unwrap(),
            SaveOutcome::Saved { new_version: 1 }
        );
        assert_eq!(
            a.save(&record(id, 2, "y"), 1).await.unwrap(),
            SaveOutcome::Saved { new_version: 2 }
        );
    }
    // Give any (wrong) self-invalidation time to arrive: a round trip on
    // every connection orders it before the loads below.
    for id in &ids {
        assert!(a.touch(id, now_ms(), now_ms() + 60_000).await.unwrap());
    }
    for id in &ids {
        let r = a.load(id).await.unwrap().unwrap();
        assert_eq!(r.version, 2);
        assert!(r.attributes.contains_key("y"));
    }
    let st = a.near_cache_stats().unwrap();
    assert_eq!((st.hits, st.misses, st.invalidations), (20, 0, 0), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_drops_the_cache() {
    let Some(mut redis) = common::PrivateRedis::start() else {
        common::skip("no redis-server on PATH");
        return;
    };
    let a = near(&redis.url(), "lost:").await;
    let id = remora_session::id::new_id();
    a.save(&record(&id, 1, "a"), 0).await.unwrap();
    assert!(a.load(&id).await.unwrap().is_some());
    assert_eq!(a.near_cache_stats().unwrap().hits, 1);

    // Restarted without persistence: the session is gone, and nothing
    // told us key by key.
    redis.stop();
    assert!(redis.resume(), "restart redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Errors while the connection is re-established are expected.
        if let Ok(None) = a.load(&id).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale cache survived the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.near_cache_stats().unwrap().flushes >= 1);

    // And caching works again on the new connection.
    a.save(&record(&id, 1, "b"), 0).await.unwrap();
    let hits = a.near_cache_stats().unwrap().hits;
    assert!(a.load(&id).await.unwrap().is_some());
    assert_eq!(a.near_cache_stats().unwrap().hits, hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_moving_between_servers_never_read_stale() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("bounce"));
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(near(&url, &prefix).await);
    }
    let ids: Vec<String> = (0..10).map(|_| remora_session::id::new_id()).collect();
    for id in &ids {
        stores[0].save(&record(id, 1, "a"), 0).await.unwrap();
    }
    let mut last = vec![1u64; ids.len()];
    for round in 0..200usize {
        let i = round % ids.len();
        let s = &stores[(round / ids.len() + round) % 3];
        // The invalidation of another server's save is asynchronous: wait
        // for this server to see the last save (a missed invalidation
        // would leave it stale for the 60 s max age: a failure here).
        load_until(s, &ids[i], |r| {
            r.as_ref().is_some_and(|r| r.version == last[i])
        })
        .await;
        let mut r = s.load(&ids[i]).await.unwrap().expect("live");
        assert_eq!(r.version, last[i], "round {round}");
        let expected = r.version;
        r.version = last[i] + 1;
        match s.save(&r, expected).await.unwrap() {
            SaveOutcome::Saved { new_version } => last[i] = new_version,
            SaveOutcome::Conflict { current } => {
                last[i] = current.expect("live").version;
            }
        }
    }
}
