//! Clustering: broadcast publishes fan out between nodes through one Redis
//! pub/sub channel (`{prefix}:bayeux`). Each node delivers what other nodes
//! publish to its own subscribers; its own publishes it has delivered
//! already. Bayeux clients themselves are per node: a client that moves to
//! another node re-handshakes there.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::engine::Bayeux;

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
    /// This server already joined a cluster.
    #[error("this Bayeux server already joined a cluster")]
    AlreadyJoined,
}

/// The sending side of the cluster link.
#[derive(Debug)]
pub(crate) struct Link {
    node: Arc<str>,
    tx: mpsc::Sender<String>,
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

impl Bayeux {
    /// Joins the cluster of every server using the same Redis and `prefix`:
    /// from now on, broadcast publishes on any node reach subscribers on all.
    pub async fn join_cluster(&self, redis_url: &str, prefix: &str) -> Result<(), ClusterError> {
        if self.inner.cluster.get().is_some() {
            return Err(ClusterError::AlreadyJoined);
        }
        let client = redis::Client::open(redis_url)?;
        let topic = format!("{prefix}:bayeux");
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&topic).await?;
        let mut conn = redis::aio::ConnectionManager::new(client).await?;
        let node: Arc<str> = Arc::from(crate::engine::new_browser_id());
        let (tx, mut rx) = mpsc::channel::<String>(self.config().cluster_queue.max(1));
        let link = Link {
            node: node.clone(),
            tx,
        };
        self.inner
            .cluster
            .set(link)
            .map_err(|_| ClusterError::AlreadyJoined)?;
        let publish_topic = topic.clone();
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                let r: redis::RedisResult<()> = redis::cmd("PUBLISH")
                    .arg(&publish_topic)
                    .arg(payload.as_bytes())
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "bayeux cluster publish failed");
                }
            }
        });
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let payload = msg.get_payload_bytes();
                match split_payload(payload) {
                    Some((from, channel, json)) if from != &*node => {
                        Bayeux { inner }.fan_out_local(channel, &Arc::from(json));
                    }
                    Some(_) => {}
                    None => tracing::warn!("bayeux cluster: malformed payload ignored"),
                }
            }
            tracing::warn!("bayeux cluster subscription ended");
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::split_payload;

    #[test]
    fn payload_split() {
        assert_eq!(
            split_payload(b"n1\n/a/b\n{\"x\":\"1\\n\"}"),
            Some(("n1", "/a/b", "{\"x\":\"1\\n\"}"))
        );
        assert_eq!(split_payload(b"n1\n/a"), None);
        assert_eq!(split_payload(&[0xff, b'\n', b'a', b'\n']), None);
    }
}
