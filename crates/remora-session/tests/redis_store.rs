//! `RedisStore` details the shared conformance suite does not see, against
//! a real Redis: a refused save leaves the newer value *and its expiry* as
//! they were (the save script writes first and puts the value back on a
//! conflict), a save for a session that is gone leaves no key behind, and
//! concurrent commands are coalesced into pipelines.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use remora_session::record::now_ms;
use remora_session::store::{NearCache, RedisStore};
use remora_session::{Attribute, Record, SaveOutcome, Store};

fn record(id: &str, version: u64, idle_ms: u64) -> Record {
    let mut r = Record::new(id.to_owned(), now_ms(), idle_ms, 3_600_000);
    r.version = version;
    r.attributes.insert(
        "n".into(),
        Attribute::from_value(&serde_json::json!(version)).unwrap(),
    );
    r
}

async fn pttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("PTTL")
}

async fn refused_save_keeps_the_newer_value_and_expiry(store: &RedisStore, url: &str, p: &str) {
    let id = remora_session::id::new_id();
    let key = format!("{p}{id}");
    // The stored session expires in about 10 minutes.
    let newer = record(&id, 1, 600_000);
    assert_eq!(
        store.save(&newer, 0).await.unwrap(),
        SaveOutcome::Saved { new_version: 1 }
    );
    // A writer that expected no session, with a far shorter expiry.
    let stale = record(&id, 1, 5_000);
    match store.save(&stale, 0).await.unwrap() {
        SaveOutcome::Conflict { current: Some(c) } => assert_eq!(c, newer),
        other => panic!("expected a conflict with the stored record, got {other:?}"),
    }
    assert_eq!(store.load(&id).await.unwrap(), Some(newer.clone()));
    let left = pttl(url, &key).await;
    assert!(
        left > 500_000,
        "the refused save changed the stored expiry: {left} ms left"
    );
    // A stale version conflicts the same way.
    let mut v2 = record(&id, 2, 600_000);
    v2.attributes.insert(
        "x".into(),
        Attribute::from_value(&serde_json::json!("y")).unwrap(),
    );
    assert_eq!(
        store.save(&v2, 1).await.unwrap(),
        SaveOutcome::Saved { new_version: 2 }
    );
    let late = record(&id, 2, 5_000);
    match store.save(&late, 1).await.unwrap() {
        SaveOutcome::Conflict { current: Some(c) } => assert_eq!(c, v2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(pttl(url, &key).await > 500_000);
    store.delete(&id).await.unwrap();
}

async fn save_for_a_gone_session_leaves_nothing(store: &RedisStore, url: &str, p: &str) {
    let id = remora_session::id::new_id();
    let r = record(&id, 5, 600_000);
    assert_eq!(
        store.save(&r, 4).await.unwrap(),
        SaveOutcome::Conflict { current: None }
    );
    assert_eq!(store.load(&id).await.unwrap(), None);
    // -2: no such key.
    assert_eq!(pttl(url, &format!("{p}{id}")).await, -2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_leave_the_stored_session_untouched() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("rstore"));
    for (coalesce, near) in [(true, false), (false, false), (true, true)] {
        let mut b = RedisStore::builder(&url).prefix(&prefix).coalesce(coalesce);
        if near {
            b = b.near_cache(NearCache::new(100));
        }
        let store = b.connect().await.expect("connect");
        refused_save_keeps_the_newer_value_and_expiry(&store, &url, &prefix).await;
        save_for_a_gone_session_leaves_nothing(&store, &url, &prefix).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_saves_share_pipelines() {
    let Some((url, _keep)) = common::redis() else {
        return;
    };
    let prefix = format!("{}:", common::unique("coalesce"));
    let store = Arc::new(
        RedisStore::builder(&url)
            .prefix(&prefix)
            .connections(1)
            .connect()
            .await
            .expect("connect"),
    );
    let before = store
        .coalescing_stats()
        .expect("coalescing is on by default");
    let ids: Vec<String> = (0..64).map(|_| remora_session::id::new_id()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for id in &ids {
        let (store, r) = (store.clone(), record(id, 1, 60_000));
        tasks.spawn(async move { store.save(&r, 0).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(matches!(
            r.expect("task").expect("save"),
            SaveOutcome::Saved { .. }
        ));
    }
    let after = store.coalescing_stats().unwrap();
    let (pipelines, commands) = (
        after.pipelines - before.pipelines,
        after.commands - before.commands,
    );
    assert_eq!(commands, 64, "one command per save");
    assert!(
        pipelines <= 8,
        "64 concurrent saves took {pipelines} pipelines"
    );
    for id in &ids {
        assert_eq!(store.load(id).await.unwrap().map(|r| r.version), Some(1));
        store.delete(id).await.unwrap();
    }
    let off = RedisStore::builder(&url)
        .coalesce(false)
        .connect()
        .await
        .unwrap();
    assert_eq!(off.coalescing_stats(), None);
}
