//! Clustering: broadcast publishes fan out between nodes through one Redis
//! pub/sub channel (`{prefix}:bayeux`). Each node hands what other nodes
//! publish to its own server-side listeners and delivers it to its own
//! subscribers; its own publishes it has handled already. Bayeux clients themselves are per node: a client that moves to
//! another node re-handshakes there.
//!
//! The link survives Redis outages. The subscriber notices a lost connection
//! (the connection closes, or a `PING` sent every [`PING_EVERY`] is not
//! answered within [`REPLY_TIMEOUT`]), counts an outage, and reconnects and
//! resubscribes with exponential backoff ([`BACKOFF_START`] doubling up to
//! [`BACKOFF_MAX`]). The publisher retries a failed `PUBLISH` with the same
//! backoff on a fresh connection; meanwhile publishes wait in the bounded
//! `cluster_queue` (beyond it they are dropped and counted). Publishes made
//! on other nodes while this node is not subscribed are not received: Redis
//! pub/sub does not keep them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::engine::{Bayeux, Inner};

/// First pause before reconnecting to Redis; doubles after each failure.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between two reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the subscriber connection is checked with a `PING`.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a connection attempt, `SUBSCRIBE`, `PING` or `PUBLISH` may take
/// before the connection is taken as lost.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why joining a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or refused a command.
    #[error("redis: {0}")]
    Redis(
        #[from]
        #[source]
        redis::RedisError,
    ),
    /// Redis did not answer within [`REPLY_TIMEOUT`].
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// This server already joined a cluster.
    #[error("this Bayeux server already joined a cluster")]
    AlreadyJoined,
}

/// The state of this node's link to the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Whether this node is subscribed now (receives other nodes' publishes).
    pub subscribed: bool,
    /// Times the subscription was lost since joining.
    pub outages: u64,
    /// Times it was restored (reconnected and resubscribed) since joining.
    pub restored: u64,
}

/// The sending side of the cluster link.
#[derive(Debug)]
pub(crate) struct Link {
    node: Arc<str>,
    tx: mpsc::Sender<String>,
    pub(crate) status: watch::Sender<ClusterStatus>,
}

impl Link {
    /// Queues a publish for the other nodes; false if the queue is full.
    pub fn send(&self, channel: &str, json: &str) -> bool {
        let mut payload = String::with_capacity(self.node.len() + channel.len() + json.len() + 2);
        payload.push_str(&self.node);
        payload.push('\n');
        payload.push_str(channel);
        payload.push('\n');
        payload.push_str(json);
        self.tx.try_send(payload).is_ok()
    }
}

fn split_payload(payload: &[u8]) -> Option<(&str, &str, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (node, rest) = text.split_once('\n')?;
    let (channel, json) = rest.split_once('\n')?;
    Some((node, channel, json))
}

/// `fut`, or [`ClusterError::Timeout`] after [`REPLY_TIMEOUT`].
async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, ClusterError> {
    match tokio::time::timeout(REPLY_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(REPLY_TIMEOUT)),
    }
}

/// A fresh subscriber connection, subscribed to `topic`.
async fn subscribe(
    client: &redis::Client,
    topic: &str,
) -> Result<(PubSubSink, PubSubStream), ClusterError> {
    let (mut sink, stream) = timed(client.get_async_pubsub()).await?.split();
    timed(sink.subscribe(topic)).await?;
    Ok((sink, stream))
}

/// The next pause of an exponential backoff.
fn next_backoff(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

impl Bayeux {
    /// Joins the cluster of every server using the same Redis and `prefix`:
    /// from now on, broadcast publishes on any node reach subscribers on all.
    /// Fails if Redis cannot be reached now; once joined, the link
    /// reconnects by itself after Redis outages (see [`Bayeux::cluster_status`]).
    pub async fn join_cluster(&self, redis_url: &str, prefix: &str) -> Result<(), ClusterError> {
        if self.inner.cluster.get().is_some() {
            return Err(ClusterError::AlreadyJoined);
        }
        let client = redis::Client::open(redis_url)?;
        let topic = format!("{prefix}:bayeux");
        let (sink, stream) = subscribe(&client, &topic).await?;
        let conn = timed(client.get_multiplexed_async_connection()).await?;
        let node: Arc<str> = Arc::from(crate::engine::new_browser_id());
        let (tx, rx) = mpsc::channel::<String>(self.config().cluster_queue.max(1));
        let (status, _) = watch::channel(ClusterStatus {
            subscribed: true,
            ..ClusterStatus::default()
        });
        let link = Link {
            node: node.clone(),
            tx,
            status,
        };
        self.inner
            .cluster
            .set(link)
            .map_err(|_| ClusterError::AlreadyJoined)?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(publisher(
            weak.clone(),
            client.clone(),
            topic.clone(),
            conn,
            rx,
        ));
        tokio::spawn(subscriber(weak, client, topic, node, sink, stream));
        Ok(())
    }

    /// The state of the cluster link, to read or await changes; `None` if
    /// this server has not joined a cluster.
    pub fn cluster_status(&self) -> Option<watch::Receiver<ClusterStatus>> {
        self.inner.cluster.get().map(|l| l.status.subscribe())
    }
}

/// Sends this node's publishes to Redis, in order, retrying each on a
/// fresh connection until it is sent or the server is gone.
async fn publisher(
    weak: Weak<Inner>,
    client: redis::Client,
    topic: String,
    conn: MultiplexedConnection,
    mut rx: mpsc::Receiver<String>,
) {
    let mut conn = Some(conn);
    let mut failing_since: Option<Instant> = None;
    while let Some(payload) = rx.recv().await {
        let mut delay = BACKOFF_START;
        loop {
            let result = match conn.as_mut() {
                Some(c) => {
                    timed(
                        redis::cmd("PUBLISH")
                            .arg(&topic)
                            .arg(payload.as_bytes())
                            .query_async::<()>(c),
                    )
                    .await
                }
                None => match timed(client.get_multiplexed_async_connection()).await {
                    Ok(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            let Some(inner) = weak.upgrade() else {
                return;
            };
            match result {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            "bayeux cluster: publishing to Redis again"
                        );
                    }
                    break;
                }
                Err(e) => {
                    conn = None;
                    inner
                        .counters
                        .cluster_publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            "bayeux cluster: publish to Redis failed; retrying with backoff \
                             (publishes wait in cluster_queue)"
                        );
                    } else {
                        tracing::debug!(error = %e, "bayeux cluster: publish retry failed");
                    }
                }
            }
            drop(inner);
            tokio::time::sleep(delay).await;
            delay = next_backoff(delay);
        }
    }
}

/// Why a subscription ended.
enum Ended {
    /// The server is gone: stop.
    Stopped,
    /// The connection was lost.
    Lost(String),
}

/// Delivers other nodes' publishes to local subscribers, and resubscribes
/// with backoff whenever the subscription is lost.
async fn subscriber(
    weak: Weak<Inner>,
    client: redis::Client,
    topic: String,
    node: Arc<str>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) {
    loop {
        let reason = match receive(&weak, &node, sink, &mut stream).await {
            Ended::Stopped => return,
            Ended::Lost(reason) => reason,
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if let Some(link) = inner.cluster.get() {
            link.status.send_modify(|s| {
                s.subscribed = false;
                s.outages += 1;
            });
        }
        drop(inner);
        tracing::warn!(
            reason = %reason,
            "bayeux cluster: lost the Redis subscription; other nodes' publishes are not \
             received until it is restored; reconnecting with backoff"
        );
        let since = Instant::now();
        let mut delay = BACKOFF_START;
        let mut attempts = 0u32;
        loop {
            tokio::time::sleep(delay).await;
            if weak.strong_count() == 0 {
                return;
            }
            attempts += 1;
            match subscribe(&client, &topic).await {
                Ok((s, st)) => {
                    sink = s;
                    stream = st;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempts, "bayeux cluster: resubscribe failed");
                }
            }
            delay = next_backoff(delay);
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if let Some(link) = inner.cluster.get() {
            link.status.send_modify(|s| {
                s.subscribed = true;
                s.restored += 1;
            });
        }
        tracing::info!(
            outage_ms = since.elapsed().as_millis() as u64,
            attempts,
            "bayeux cluster: Redis subscription restored"
        );
    }
}

/// Receives on one subscription until it is lost or the server is gone. A
/// side task pings through `sink` and reports a connection that stopped
/// answering.
async fn receive(
    weak: &Weak<Inner>,
    node: &str,
    mut sink: PubSubSink,
    stream: &mut PubSubStream,
) -> Ended {
    let (dead_tx, mut dead_rx) = oneshot::channel::<String>();
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tick.tick().await;
            if let Err(e) = timed(sink.ping::<redis::Value>()).await {
                let _ = dead_tx.send(e.to_string());
                return;
            }
        }
    });
    let ended = loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    break Ended::Lost("connection closed".into());
                };
                let Some(inner) = weak.upgrade() else {
                    break Ended::Stopped;
                };
                match split_payload(msg.get_payload_bytes()) {
                    Some((from, channel, json)) if from != node => {
                        Bayeux { inner }.receive_remote(channel, Arc::from(json));
                    }
                    Some(_) => {}
                    None => tracing::warn!("bayeux cluster: malformed payload ignored"),
                }
            }
            dead = &mut dead_rx => {
                if weak.strong_count() == 0 {
                    break Ended::Stopped;
                }
                break Ended::Lost(dead.unwrap_or_else(|_| "ping task ended".into()));
            }
        }
    };
    pinger.abort();
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_split() {
        assert_eq!(
            split_payload(b"n1\n/a/b\n{\"x\":\"1\\n\"}"),
            Some(("n1", "/a/b", "{\"x\":\"1\\n\"}"))
        );
        assert_eq!(split_payload(b"n1\n/a"), None);
        assert_eq!(split_payload(&[0xff, b'\n', b'a', b'\n']), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut d = BACKOFF_START;
        let mut seen = vec![d];
        for _ in 0..10 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[1], BACKOFF_START * 2);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
    }
}
