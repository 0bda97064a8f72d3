//! One Bayeux client: its bounded message queue, subscriptions, connect
//! state and advice bookkeeping.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::channel::Pattern;
use crate::ext::ack::AckState;

/// The advice last sent to a client, to send it again only when it changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Advice {
    pub reconnect: &'static str,
    pub interval: u64,
    pub timeout: u64,
    pub max_interval: u64,
    pub multiple_clients: bool,
}

impl Advice {
    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "reconnect": self.reconnect,
            "interval": self.interval,
            "timeout": self.timeout,
            "maxInterval": self.max_interval,
        });
        if self.multiple_clients {
            v["multiple-clients"] = Value::Bool(true);
        }
        v
    }
}

/// Mutable state of a client, behind one lock.
#[derive(Debug)]
pub(crate) struct ClientInner {
    pub queue: VecDeque<Arc<str>>,
    pub dropped: u64,
    pub subscriptions: HashSet<Pattern>,
    pub connect_gen: u64,
    pub connected_once: bool,
    pub holding: u32,
    pub last_seen: Instant,
    pub removed: bool,
    pub ack: Option<AckState>,
    pub last_advice: Option<Advice>,
}

/// A Bayeux client known to this server.
#[derive(Debug)]
pub(crate) struct Client {
    pub id: Arc<str>,
    pub browser: Option<Arc<str>>,
    pub handshake_ext: Option<Value>,
    pub inner: Mutex<ClientInner>,
    pub notify: Notify,
}

impl Client {
    pub fn new(
        id: Arc<str>,
        browser: Option<Arc<str>>,
        handshake_ext: Option<Value>,
        ack: bool,
    ) -> Self {
        Client {
            id,
            browser,
            handshake_ext,
            inner: Mutex::new(ClientInner {
                queue: VecDeque::new(),
                dropped: 0,
                subscriptions: HashSet::new(),
                connect_gen: 0,
                connected_once: false,
                holding: 0,
                last_seen: Instant::now(),
                removed: false,
                ack: ack.then(AckState::default),
                last_advice: None,
            }),
            notify: Notify::new(),
        }
    }

    /// Queues a serialised message, dropping the oldest beyond `max_queue`.
    /// Returns `(queued, dropped_one)`.
    ///
    /// Waiters are woken only when the queue goes from empty to not empty:
    /// a waiter checks the queue after registering (see [`Client::wait`])
    /// and takes everything queued when it runs, so the messages that follow
    /// before it runs need no wake-up of their own.
    pub fn enqueue(&self, json: Arc<str>, max_queue: usize) -> (bool, bool) {
        let (dropped, was_empty) = {
            let mut inner = self.inner.lock();
            if inner.removed || max_queue == 0 {
                return (false, max_queue == 0);
            }
            let unacked = inner.ack.as_ref().map_or(0, AckState::unacked_len);
            let was_empty = inner.queue.is_empty();
            let mut dropped = false;
            if inner.queue.len() + unacked >= max_queue {
                if inner.queue.pop_front().is_none()
                    && let Some(ack) = inner.ack.as_mut()
                {
                    ack.drop_oldest();
                }
                inner.dropped += 1;
                dropped = true;
            }
            inner.queue.push_back(json);
            (dropped, was_empty)
        };
        if was_empty {
            self.notify.notify_waiters();
        }
        (true, dropped)
    }

    /// Waits until a message is queued, another connect supersedes `generation`,
    /// the client is removed, or `timeout` passes.
    pub async fn wait(&self, generation: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.inner.lock();
                if !inner.queue.is_empty() || inner.connect_gen != generation || inner.removed {
                    return;
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Whether messages are waiting.
    pub fn has_queued(&self) -> bool {
        !self.inner.lock().queue.is_empty()
    }
}

/// Marks a connect as held while alive; on drop (reply sent or request
/// abandoned) refreshes `last_seen` and frees the browser slot.
pub(crate) struct HoldGuard {
    pub client: Arc<Client>,
    pub browser_slot: Option<crate::engine::BrowserSlot>,
}

impl HoldGuard {
    pub fn new(client: Arc<Client>, browser_slot: Option<crate::engine::BrowserSlot>) -> Self {
        client.inner.lock().holding += 1;
        HoldGuard {
            client,
            browser_slot,
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut inner = self.client.inner.lock();
        inner.holding = inner.holding.saturating_sub(1);
        inner.last_seen = Instant::now();
        drop(inner);
        self.browser_slot.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_is_bounded_and_counts_drops() {
        let c = Client::new("c".into(), None, None, false);
        for i in 0..5 {
            c.enqueue(Arc::from(i.to_string()), 3);
        }
        let inner = c.inner.lock();
        assert_eq!(
            inner.queue.iter().map(|s| &**s).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        assert_eq!(inner.dropped, 2);
    }

    #[tokio::test]
    async fn waiters_are_woken_once_per_batch() {
        use futures_util::FutureExt;
        let c = Client::new("c".into(), None, None, false);
        // Empty to not empty: a registered waiter is woken.
        let first = c.notify.notified();
        tokio::pin!(first);
        first.as_mut().enable();
        c.enqueue(Arc::from("a"), 10);
        assert!(first.now_or_never().is_some());
        // Already not empty: no wake-up (the woken waiter takes it all)...
        let second = c.notify.notified();
        tokio::pin!(second);
        second.as_mut().enable();
        c.enqueue(Arc::from("b"), 10);
        assert!(second.as_mut().now_or_never().is_none());
        // ...and `wait` does not block while messages are queued.
        assert!(c.wait(0, Duration::from_secs(30)).now_or_never().is_some());
        // Once taken, the next message wakes again.
        c.inner.lock().queue.clear();
        c.enqueue(Arc::from("c"), 10);
        assert!(second.now_or_never().is_some());
    }

    #[tokio::test]
    async fn wait_wakes_on_message_and_on_new_connect() {
        let c = Arc::new(Client::new("c".into(), None, None, false));
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.wait(0, Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        c.enqueue(Arc::from("x"), 10);
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap();

        let c = Arc::new(Client::new("d".into(), None, None, false));
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.wait(0, Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        c.inner.lock().connect_gen = 1;
        c.notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap();
    }
}
