//! The end of a request: the last concurrent request on a session object
//! (or one that cycled or invalidated it) saves, touches or deletes it,
//! merging on version conflicts.

use std::sync::Arc;

use http::HeaderMap;

use crate::config::ms;
use crate::error::StoreError;
use crate::record::{Change, Record, merge, now_ms};
use crate::session::{Session, Shared};
use crate::store::SaveOutcome;

/// Ends one request's use of its session object; the last one flushes.
pub(crate) async fn finish(
    s: &Session,
    server_error: bool,
    headers: &mut HeaderMap,
) -> Result<(), StoreError> {
    let shared = &s.shared;
    let ctx = shared.ctx.clone();
    let last = ctx.detach(shared);
    let modified = s.local.lock().modified;
    let must_flush = {
        let mut st = shared.state.lock();
        if modified && !server_error {
            st.ok_changes = true;
        }
        st.must_flush() && modified
    };
    let r = if last || must_flush {
        flush(shared, headers).await
    } else {
        Ok(())
    };
    if last {
        ctx.forget_if_idle(shared);
    }
    r
}

/// Saves, touches and deletes as the state requires.
async fn flush(shared: &Arc<Shared>, headers: &mut HeaderMap) -> Result<(), StoreError> {
    let ctx = &shared.ctx;
    let _g = shared.save_lock.lock().await;
    let (allowed, dirty, loaded) = {
        let st = shared.state.lock();
        let allowed = st.ok_changes || ctx.cfg.save_on_server_error;
        (allowed, st.dirty() || !st.delete_ids.is_empty(), st.loaded)
    };
    if !loaded {
        return Ok(());
    }
    if !allowed && dirty {
        tracing::debug!("not saving the session after a server error");
        let mut st = shared.state.lock();
        st.changes.clear();
        st.force_save = false;
        st.delete_ids.clear();
        return Ok(());
    }
    if dirty {
        save(shared, headers).await
    } else {
        touch_if_due(shared).await
    }
}

async fn touch_if_due(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let ctx = &shared.ctx;
    let now = now_ms();
    let (id, due) = {
        let st = shared.state.lock();
        let due = st.stored_version > 0
            && now.saturating_sub(st.record.accessed_at) >= ms(ctx.cfg.save_period);
        (st.record.id.clone(), due)
    };
    if !due {
        return Ok(());
    }
    let idle = now.saturating_add(ms(ctx.cfg.idle_timeout));
    // A failed touch loses no data: log it (in `call`) and go on.
    if let Ok(true) = ctx.call("touch", ctx.store.touch(&id, now, idle)).await {
        let mut st = shared.state.lock();
        st.record.slide(now, ms(ctx.cfg.idle_timeout));
    }
    Ok(())
}

async fn save(shared: &Arc<Shared>, headers: &mut HeaderMap) -> Result<(), StoreError> {
    let ctx = &shared.ctx;
    let now = now_ms();
    let (mut rec, changes, snap_seq, mut expected, delete_ids, invalidated) = {
        let st = shared.state.lock();
        let changes: std::collections::BTreeMap<String, Change> = st
            .changes
            .iter()
            .map(|(k, (_, c))| (k.clone(), c.clone()))
            .collect();
        (
            st.record.clone(),
            changes,
            st.seq,
            st.stored_version,
            st.delete_ids.clone(),
            st.invalidated,
        )
    };
    // Every path that lets data in gives the record an ID; never write one
    // without.
    let nothing_to_write = rec.attributes.is_empty() && expected == 0;
    let write = !nothing_to_write && !rec.id.is_empty();
    let mut saved: Option<Record> = None;
    if write {
        rec.purge_expired_attributes(now);
        rec.slide(now, ms(ctx.cfg.idle_timeout));
        rec.version = rec.version.max(expected) + 1;
        rec.bump_replica_seq(now);
        let mut rounds = 0;
        loop {
            match ctx.call("save", ctx.store.save(&rec, expected)).await? {
                SaveOutcome::Saved { .. } => {
                    saved = Some(rec);
                    break;
                }
                SaveOutcome::Conflict { current: Some(cur) } => {
                    rounds += 1;
                    if rounds > ctx.cfg.merge_retries {
                        return Err(StoreError::Contention(ctx.cfg.merge_retries));
                    }
                    ctx.metrics.conflicts_merged.inc();
                    expected = cur.version;
                    rec = merge(&cur, &rec, &changes);
                    rec.bump_replica_seq(now);
                    rec.purge_expired_attributes(now);
                }
                SaveOutcome::Conflict { current: None } => {
                    // Deleted (invalidated) or expired elsewhere meanwhile:
                    // never resurrect it.
                    tracing::debug!("session vanished from the store before save; not recreated");
                    ctx.metrics.expired.inc();
                    break;
                }
            }
        }
    }
    for id in &delete_ids {
        ctx.call("delete", ctx.store.delete(id)).await?;
    }
    if invalidated && let Some(id) = delete_ids.last() {
        ctx.metrics.invalidated.inc();
        if let Some(h) = &ctx.hooks {
            h.on_invalidated(id, headers);
        }
    }
    // The size metric costs a serialization pass: outside the lock.
    let size = saved.as_ref().map(Record::encoded_len);
    let mut st = shared.state.lock();
    st.delete_ids.retain(|d| !delete_ids.contains(d));
    st.invalidated = false;
    st.changes.retain(|_, (seq, _)| *seq > snap_seq);
    if let Some(rec) = saved {
        let created = st.stored_version == 0 && !st.restored && expected == 0;
        ctx.metrics.saved.inc();
        ctx.metrics.size.observe(size.unwrap_or(0) as f64);
        if created {
            ctx.metrics.created.inc();
        }
        // Adopt the saved record, re-applying changes made meanwhile. The
        // record itself moves in; the hooks (replicas) get a copy only when
        // there are hooks.
        let for_hooks = ctx.hooks.as_ref().map(|_| rec.clone());
        if st.record.id == rec.id {
            let mut mine = rec;
            for (k, (_, c)) in st.changes.iter() {
                match c {
                    Change::Set(a) => {
                        mine.attributes.insert(k.clone(), a.clone());
                    }
                    Change::Removed => {
                        mine.attributes.remove(k);
                    }
                }
            }
            st.stored_version = mine.version;
            st.record = mine;
            st.force_save = false;
        }
        drop(st);
        if let (Some(h), Some(rec)) = (&ctx.hooks, for_hooks) {
            h.on_saved(&rec, headers);
        }
    } else if write {
        // Vanished: the object now describes nothing stored.
        st.stored_version = 0;
        st.record.attributes.clear();
        st.force_save = false;
    } else {
        st.force_save = false;
    }
    Ok(())
}
