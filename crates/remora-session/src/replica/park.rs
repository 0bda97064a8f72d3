//! Parking: a request for a session this server does not know waits, for a
//! bounded time, for a replica of that session to arrive on another request
//! or a Bayeux handshake to the same process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::record::Record;

/// Requests waiting for a replica, by session id. Bounded: beyond
/// `max_parked` waiting requests, [`Park::wait`] returns at once.
#[derive(Debug)]
pub struct Park {
    slots: Mutex<Slots>,
    max_parked: usize,
}

#[derive(Debug, Default)]
struct Slots {
    by_id: HashMap<String, watch::Sender<Option<Arc<Record>>>>,
    waiting: usize,
    /// Records released lately, so a request that misses the store just
    /// before a release still finds it. Bounded by `max_parked`.
    recent: HashMap<String, (Instant, Arc<Record>)>,
}

/// How long a released record is remembered for requests about to park.
const RECENT_FOR: Duration = Duration::from_secs(5);

/// One waiting request: owns its receiver, and undoes the bookkeeping
/// however the wait ends (timeout, release, or the request being dropped).
struct Waiting<'a> {
    park: &'a Park,
    id: &'a str,
    rx: Option<watch::Receiver<Option<Arc<Record>>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Drop our receiver first, so an id nobody else waits for loses its slot.
        drop(self.rx.take());
        let mut slots = self.park.slots.lock();
        slots.waiting -= 1;
        if slots
            .by_id
            .get(self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            slots.by_id.remove(self.id);
        }
    }
}

impl Park {
    /// A park holding at most `max_parked` waiting requests at once.
    pub fn new(max_parked: usize) -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            max_parked,
        }
    }

    /// How many requests wait now.
    pub fn waiting(&self) -> usize {
        self.slots.lock().waiting
    }

    /// Whether any request waits for session `id`.
    pub fn is_waiting_for(&self, id: &str) -> bool {
        self.slots.lock().by_id.contains_key(id)
    }

    /// Waits up to `grace` for [`Park::release`] of session `id`. Returns the
    /// released record, or `None` on timeout or when the park is full.
    pub async fn wait(&self, id: &str, grace: Duration) -> Option<Arc<Record>> {
        let rx = {
            let mut slots = self.slots.lock();
            if let Some((at, rec)) = slots.recent.get(id)
                && at.elapsed() < RECENT_FOR
            {
                return Some(rec.clone());
            }
            if slots.waiting >= self.max_parked {
                return None;
            }
            slots.waiting += 1;
            slots
                .by_id
                .entry(id.to_owned())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        let mut waiting = Waiting {
            park: self,
            id,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut()?;
        match tokio::time::timeout(grace, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }

    /// Forgets a released record (the session was invalidated).
    pub fn forget(&self, id: &str) {
        self.slots.lock().recent.remove(id);
    }

    /// Hands `record` to every request waiting for its session id. Returns
    /// whether any waited.
    pub fn release(&self, record: Record) -> bool {
        let record = Arc::new(record);
        let mut slots = self.slots.lock();
        if slots.recent.len() >= self.max_parked.max(1) {
            slots.recent.retain(|_, (at, _)| at.elapsed() < RECENT_FOR);
            if slots.recent.len() >= self.max_parked.max(1) {
                slots.recent.clear();
            }
        }
        slots
            .recent
            .insert(record.id.clone(), (Instant::now(), record.clone()));
        match slots.by_id.get(&record.id) {
            Some(tx) => {
                tx.send_replace(Some(record));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Record {
        Record::new(id.into(), 0, 1000, 1000)
    }

    #[tokio::test]
    async fn release_wakes_the_waiter_with_the_record() {
        let park = Arc::new(Park::new(10));
        let p = park.clone();
        let waiter = tokio::spawn(async move { p.wait("a", Duration::from_secs(30)).await });
        while !park.is_waiting_for("a") {
            tokio::task::yield_now().await;
        }
        assert!(!park.release(rec("b")), "nobody waits for b");
        assert!(park.release(rec("a")));
        let got = waiter.await.unwrap().expect("released");
        assert_eq!(got.id, "a");
        assert_eq!(park.waiting(), 0);
        assert!(!park.is_waiting_for("a"), "slot removed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_just_before_the_wait_is_not_lost() {
        let park = Park::new(10);
        assert!(!park.release(rec("a")));
        let started = tokio::time::Instant::now();
        assert_eq!(
            park.wait("a", Duration::from_secs(2)).await.unwrap().id,
            "a"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_and_cleans_up() {
        let park = Park::new(10);
        assert!(park.wait("a", Duration::from_millis(50)).await.is_none());
        assert_eq!(park.waiting(), 0);
        assert!(!park.is_waiting_for("a"));
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_no_slot() {
        let park = Arc::new(Park::new(10));
        let p = park.clone();
        let waiter = tokio::spawn(async move { p.wait("a", Duration::from_secs(30)).await });
        while !park.is_waiting_for("a") {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(park.waiting(), 0);
        assert!(!park.is_waiting_for("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let park = Arc::new(Park::new(1));
        let p = park.clone();
        let first = tokio::spawn(async move { p.wait("a", Duration::from_secs(5)).await });
        while park.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // The park is full: a second request does not wait at all.
        let started = tokio::time::Instant::now();
        assert!(park.wait("b", Duration::from_secs(5)).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(first.await.unwrap().is_none());
    }
}
