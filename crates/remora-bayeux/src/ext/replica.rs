//! The replica carriage over Bayeux: the browser's Bayeux client receives
//! its session's replicas on `/service/ext/session`, and presents the newest
//! as `ext.session` in every `/meta/handshake`, which restores the session on
//! a server that does not know it (see `docs/replica-protocol.md`).
//!
//! The Bayeux client is tied to the HTTP session by the session cookie its
//! requests carry (long-polling requests and the WebSocket upgrade are
//! same-origin requests, so the browser sends it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use remora_session::SessionLayer;
use remora_session::replica::{Issued, Replicas, Via};
use serde_json::json;

use crate::engine::{Bayeux, ClientEvent};
use crate::ext::{ExtContext, Extension};
use crate::message::Message;

/// The channel replicas are pushed on.
pub const REPLICA_CHANNEL: &str = "/service/ext/session";

#[derive(Default)]
struct Links {
    /// Session id -> the Bayeux clients of that session.
    clients: HashMap<String, HashSet<Arc<str>>>,
    /// Bayeux client -> its session id.
    sessions: HashMap<Arc<str>, String>,
}

impl Links {
    fn link(&mut self, client: &str, session: &str) {
        if self.sessions.get(client).map(String::as_str) == Some(session) {
            return;
        }
        let client: Arc<str> = client.into();
        self.unlink(&client);
        self.clients
            .entry(session.to_owned())
            .or_default()
            .insert(client.clone());
        self.sessions.insert(client, session.to_owned());
    }

    fn unlink(&mut self, client: &str) {
        if let Some(old) = self.sessions.remove(client)
            && let Some(set) = self.clients.get_mut(&old)
        {
            set.remove(client);
            if set.is_empty() {
                self.clients.remove(&old);
            }
        }
    }
}

/// Carries replicas to and from Bayeux clients. Install with
/// [`ReplicaCarriage::install`].
pub struct ReplicaCarriage {
    replicas: Arc<Replicas>,
    layer: SessionLayer,
    cookie: String,
    links: Arc<Mutex<Links>>,
}

impl ReplicaCarriage {
    /// Installs the carriage on `bayeux`: restores sessions from handshakes,
    /// and pushes every replica `replicas` issues to the Bayeux clients of
    /// its session. `layer` is the session layer of the app Bayeux is
    /// mounted in (its store receives restored sessions).
    pub fn install(bayeux: &Bayeux, replicas: Arc<Replicas>, layer: SessionLayer) {
        let links = Arc::new(Mutex::new(Links::default()));
        let carriage = ReplicaCarriage {
            cookie: layer.cookie_name(),
            replicas: replicas.clone(),
            layer,
            links: links.clone(),
        };
        bayeux.add_extension(carriage);

        // Push issued replicas to the session's Bayeux clients.
        let push_to = bayeux.clone();
        let push_links = links.clone();
        replicas.subscribe(move |issued: &Issued| {
            let targets: Vec<Arc<str>> = push_links
                .lock()
                .clients
                .get(&issued.session_id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for client in targets {
                let data = match &issued.replica {
                    Some(r) => json!({ "replica": &**r, "seq": issued.seq }),
                    None => json!({ "replica": null, "seq": 0 }),
                };
                if push_to
                    .deliver(&client, Message::new(REPLICA_CHANNEL, data))
                    .is_err()
                {
                    push_links.lock().unlink(&client);
                }
            }
        });

        // Forget clients that are gone.
        let mut events = bayeux.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ClientEvent::Removed { client_id, .. }) => links.lock().unlink(&client_id),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    fn session_of(&self, ctx: &ExtContext<'_>) -> Option<String> {
        ctx.request?.cookie(&self.cookie).map(str::to_owned)
    }
}

impl Extension for ReplicaCarriage {
    fn incoming(&self, ctx: &ExtContext<'_>, message: &mut Message) -> bool {
        let Some(session) = self.session_of(ctx) else {
            return true;
        };
        if message.channel() == "/meta/handshake" {
            if let Some(replica) = message.ext_field("session").and_then(|v| v.as_str()) {
                let (replicas, layer, replica) = (
                    self.replicas.clone(),
                    self.layer.clone(),
                    replica.to_owned(),
                );
                // Restore off the message path; parked requests are released
                // when it lands.
                tokio::spawn(async move {
                    if let Err(e) = replicas
                        .restore(&layer, &session, &replica, Via::Bayeux)
                        .await
                    {
                        tracing::warn!(error = %e, "restoring a session from a Bayeux handshake failed");
                    }
                });
            }
        } else if let Some(client) = ctx.client_id {
            // Keep the link current: the session id changes on sign-in.
            self.links.lock().link(client, &session);
        }
        true
    }

    fn outgoing(&self, ctx: &ExtContext<'_>, message: &mut Message) -> bool {
        if message.channel() == "/meta/handshake"
            && message.successful == Some(true)
            && let (Some(session), Some(client)) =
                (self.session_of(ctx), message.client_id.as_deref())
        {
            self.links.lock().link(client, &session);
        }
        true
    }
}
