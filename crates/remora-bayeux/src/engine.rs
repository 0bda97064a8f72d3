//! The Bayeux engine: clients, subscriptions, the meta channels, publish and
//! delivery. Transports turn requests into [`Message`]s and call
//! `Bayeux::process`; they hold connects with `PendingConnect`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::channel::{self, ChannelKind, Pattern, SubscriptionIndex};
use crate::client::{Advice, Client, HoldGuard};
use crate::config::BayeuxConfig;
use crate::ext::{ExtContext, Extension};
use crate::message::{Json, Message, meta};
use crate::security::{AllowAll, RequestContext, SecurityPolicy};

/// A transport a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP POST, JSON or form `message=`.
    LongPolling,
    /// HTTP GET with `message=` and `jsonp=`.
    CallbackPolling,
    /// WebSocket text frames holding JSON arrays.
    WebSocket,
}

/// A lifecycle event of a Bayeux client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A handshake created the client.
    Added {
        /// Its client id.
        client_id: Arc<str>,
    },
    /// The client is gone.
    Removed {
        /// Its client id.
        client_id: Arc<str>,
        /// Why it was removed.
        reason: RemoveReason,
    },
}

/// Why a Bayeux client was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// It sent `/meta/disconnect`.
    Disconnect,
    /// No connect for `max_interval`.
    Expired,
    /// Removed from Rust with [`Bayeux::remove_client`].
    Server,
}

/// A message published on a channel, as seen by a server-side listener.
#[derive(Debug)]
pub struct Published<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// The publishing client, `None` when published from Rust or by a
    /// client of another node of the cluster.
    pub from: Option<&'a str>,
    /// The message as received (after incoming extensions).
    pub message: &'a Message,
}

/// A server-side channel listener.
pub type Listener = Arc<dyn Fn(&Bayeux, &Published<'_>) + Send + Sync>;

/// Why [`Bayeux::deliver`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// No Bayeux client with that id on this server.
    #[error("unknown Bayeux client")]
    UnknownClient,
    /// An outgoing extension dropped the message.
    #[error("dropped by an extension")]
    Dropped,
}

/// Why a channel name given to the Rust API was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Not a valid concrete broadcast or service channel.
    #[error("invalid channel {0:?}")]
    InvalidChannel(String),
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bayeux clients now.
    pub clients: usize,
    /// Messages published (broadcast and service, from clients and Rust).
    pub published: u64,
    /// Messages queued for delivery to clients.
    pub delivered: u64,
    /// Messages dropped because a client queue was full.
    pub dropped: u64,
    /// Publishes not sent to Redis because the cluster queue was full.
    pub cluster_dropped: u64,
    /// `PUBLISH` attempts to Redis that failed (each is retried).
    pub cluster_publish_errors: u64,
    /// Times the Redis subscription was lost (see [`Bayeux::cluster_status`]).
    pub cluster_outages: u64,
}

/// Public facts about a Bayeux client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client id.
    pub id: Arc<str>,
    /// `BAYEUX_BROWSER` cookie value of the handshake request, if any.
    pub browser: Option<Arc<str>>,
    /// The handshake's `ext` field (e.g. `ext.session`).
    pub handshake_ext: Option<Value>,
    /// Subscriptions (patterns as written).
    pub subscriptions: Vec<String>,
    /// Messages now queued.
    pub queued: usize,
    /// Messages dropped from its full queue.
    pub dropped: u64,
    /// Whether a `/meta/connect` of this client is being held now.
    pub connect_held: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    cluster_dropped: AtomicU64,
    pub(crate) cluster_publish_errors: AtomicU64,
}

pub(crate) struct Inner {
    pub config: BayeuxConfig,
    clients: RwLock<HashMap<Arc<str>, Arc<Client>>>,
    index: RwLock<SubscriptionIndex<Arc<str>, Arc<Client>>>,
    listeners: RwLock<Arc<Vec<(Pattern, Listener)>>>,
    extensions: RwLock<Arc<Vec<Arc<dyn Extension>>>>,
    security: RwLock<Arc<dyn SecurityPolicy>>,
    browsers: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    events: broadcast::Sender<ClientEvent>,
    pub(crate) counters: Counters,
    pub(crate) cluster: std::sync::OnceLock<crate::cluster::Link>,
}

/// A Bayeux server. Cheap to clone (a handle); create it inside a Tokio
/// runtime (it starts a task that removes expired clients).
#[derive(Clone)]
pub struct Bayeux {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Bayeux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bayeux")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A held slot of a browser's concurrent long-polling connects.
pub(crate) struct BrowserSlot {
    browsers: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    browser: Arc<str>,
}

impl Drop for BrowserSlot {
    fn drop(&mut self) {
        let mut map = self.browsers.lock();
        if let Some(n) = map.get_mut(&self.browser) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.browser);
            }
        }
    }
}

/// A `/meta/connect` being answered: the transport may wait on it
/// ([`PendingConnect::hold`]) before calling [`Bayeux::finish_connect`].
pub(crate) struct PendingConnect {
    pub client: Arc<Client>,
    pub reply: Message,
    pub generation: u64,
    pub hold: Duration,
    pub multiple_clients: bool,
    pub guard: HoldGuard,
}

/// What [`Bayeux::process`] produced for one request or frame.
pub(crate) struct Processed {
    /// Serialised replies (and deliveries of a finished connect), in order.
    pub replies: Vec<Json>,
    /// The connect of the batch, to finish after holding.
    pub connect: Option<PendingConnect>,
    /// Whether the batch held a handshake (the browser cookie is then set).
    pub handshook: bool,
}

fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    let mut s = String::with_capacity(bytes * 2);
    for b in buf {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// A fresh browser id for the `BAYEUX_BROWSER` cookie.
pub(crate) fn new_browser_id() -> String {
    random_id(16)
}

fn subscription_names(v: &Value) -> Option<Vec<&str>> {
    match v {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(a) if !a.is_empty() => a.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

impl Bayeux {
    /// A server with `config`, no extensions and the allow-all policy.
    pub fn new(config: BayeuxConfig) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let inner = Arc::new(Inner {
            config,
            clients: RwLock::new(HashMap::new()),
            index: RwLock::new(SubscriptionIndex::default()),
            listeners: RwLock::new(Arc::new(Vec::new())),
            extensions: RwLock::new(Arc::new(Vec::new())),
            security: RwLock::new(Arc::new(AllowAll)),
            browsers: Arc::new(Mutex::new(HashMap::new())),
            events,
            counters: Counters::default(),
            cluster: std::sync::OnceLock::new(),
        });
        spawn_sweeper(Arc::downgrade(&inner));
        Bayeux { inner }
    }

    /// The configuration.
    pub fn config(&self) -> &BayeuxConfig {
        &self.inner.config
    }

    /// Adds a server extension (runs after those added before it).
    pub fn add_extension(&self, extension: impl Extension) {
        let mut ext = self.inner.extensions.write();
        let mut v: Vec<Arc<dyn Extension>> = (**ext).clone();
        v.push(Arc::new(extension));
        *ext = Arc::new(v);
    }

    /// Replaces the security policy.
    pub fn set_security_policy(&self, policy: impl SecurityPolicy) {
        *self.inner.security.write() = Arc::new(policy);
    }

    /// Calls `listener` for every message published on a channel matching
    /// `pattern` (wildcards allowed), from a client or from Rust. This is how
    /// `/service/**` channels are served.
    pub fn add_listener(
        &self,
        pattern: &str,
        listener: impl Fn(&Bayeux, &Published<'_>) + Send + Sync + 'static,
    ) -> Result<(), PublishError> {
        let p = channel::parse_pattern(pattern)
            .map_err(|_| PublishError::InvalidChannel(pattern.to_owned()))?;
        let mut l = self.inner.listeners.write();
        let mut v = (**l).clone();
        v.push((p, Arc::new(listener)));
        *l = Arc::new(v);
        Ok(())
    }

    /// Lifecycle events (client added / removed). The channel is bounded by
    /// `event_capacity`; a slow receiver misses events (`Lagged`).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            clients: self.inner.clients.read().len(),
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            cluster_dropped: c.cluster_dropped.load(Ordering::Relaxed),
            cluster_publish_errors: c.cluster_publish_errors.load(Ordering::Relaxed),
            cluster_outages: self
                .inner
                .cluster
                .get()
                .map_or(0, |l| l.status.borrow().outages),
        }
    }

    /// Facts about one client.
    pub fn client(&self, client_id: &str) -> Option<ClientInfo> {
        let client = self.inner.clients.read().get(client_id).cloned()?;
        let inner = client.inner.lock();
        Some(ClientInfo {
            id: client.id.clone(),
            browser: client.browser.clone(),
            handshake_ext: client.handshake_ext.clone(),
            subscriptions: inner.subscriptions.iter().map(Pattern::to_name).collect(),
            queued: inner.queue.len(),
            dropped: inner.dropped,
            connect_held: inner.holding > 0,
        })
    }

    /// Ids of the clients now known.
    pub fn client_ids(&self) -> Vec<Arc<str>> {
        self.inner.clients.read().keys().cloned().collect()
    }

    /// Publishes `data` on broadcast `channel` from the server: delivered to
    /// this node's subscribers and, when clustered, to other nodes'. Returns
    /// the number of local subscribers it was queued for.
    pub fn publish(&self, channel: &str, data: Value) -> Result<usize, PublishError> {
        match channel::parse_channel(channel) {
            Ok(ChannelKind::Broadcast) => {}
            _ => return Err(PublishError::InvalidChannel(channel.to_owned())),
        }
        let message = Message::new(channel, data);
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.call_listeners(channel, None, &message);
        Ok(self.broadcast(message, None).unwrap_or(0))
    }

    /// Queues `message` for one client (on its pending connect or its
    /// WebSocket), after outgoing extensions. This is how a server pushes on
    /// a `/service/**` channel to one client.
    pub fn deliver(&self, client_id: &str, mut message: Message) -> Result<(), DeliverError> {
        let client = self
            .inner
            .clients
            .read()
            .get(client_id)
            .cloned()
            .ok_or(DeliverError::UnknownClient)?;
        let ctx = ExtContext {
            bayeux: self,
            request: None,
            client_id: Some(client_id),
        };
        if !self.run_outgoing(&ctx, &mut message) {
            return Err(DeliverError::Dropped);
        }
        self.enqueue(&client, Arc::from(message.to_json()));
        Ok(())
    }

    /// Removes a client (as if it had expired), dropping its subscriptions.
    pub fn remove_client(&self, client_id: &str) -> bool {
        self.remove(client_id, RemoveReason::Server)
    }

    /// Removes every client (e.g. before shutting down): held connects are
    /// answered at once with `402::session_unknown` and handshake advice, so
    /// clients re-handshake (on another node, behind a load balancer).
    pub fn remove_all_clients(&self) -> usize {
        let ids = self.client_ids();
        ids.iter()
            .filter(|id| self.remove(id, RemoveReason::Server))
            .count()
    }

    fn enqueue(&self, client: &Client, json: Arc<str>) {
        let (queued, dropped) = client.enqueue(json, self.inner.config.max_queue);
        self.count_deliveries(u64::from(queued), u64::from(dropped));
    }

    /// Adds to the shared delivery counters (once per fan-out, not per
    /// subscriber: every worker thread writes these).
    fn count_deliveries(&self, queued: u64, dropped: u64) {
        let c = &self.inner.counters;
        if queued > 0 {
            c.delivered.fetch_add(queued, Ordering::Relaxed);
        }
        if dropped > 0 {
            c.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn remove(&self, client_id: &str, reason: RemoveReason) -> bool {
        let Some(client) = self.inner.clients.write().remove(client_id) else {
            return false;
        };
        let subs = {
            let mut inner = client.inner.lock();
            inner.removed = true;
            inner.queue.clear();
            std::mem::take(&mut inner.subscriptions)
        };
        if !subs.is_empty() {
            let mut index = self.inner.index.write();
            for p in &subs {
                index.remove(p, &client.id);
            }
        }
        client.notify.notify_waiters();
        let _ = self.inner.events.send(ClientEvent::Removed {
            client_id: client.id.clone(),
            reason,
        });
        true
    }

    fn run_incoming(&self, ctx: &ExtContext<'_>, m: &mut Message) -> bool {
        let exts = self.inner.extensions.read().clone();
        exts.iter().all(|e| e.incoming(ctx, m))
    }

    fn run_outgoing(&self, ctx: &ExtContext<'_>, m: &mut Message) -> bool {
        let exts = self.inner.extensions.read().clone();
        exts.iter().all(|e| e.outgoing(ctx, m))
    }

    fn call_listeners(&self, channel: &str, from: Option<&str>, message: &Message) {
        let listeners = self.inner.listeners.read().clone();
        if listeners.is_empty() {
            return;
        }
        let published = Published {
            channel,
            from,
            message,
        };
        for (p, l) in listeners.iter() {
            if p.matches(channel) {
                l(self, &published);
            }
        }
    }

    /// Fans a broadcast out locally and to the cluster. `None` if an
    /// outgoing extension dropped it.
    fn broadcast(&self, mut message: Message, request: Option<&RequestContext>) -> Option<usize> {
        let ctx = ExtContext {
            bayeux: self,
            request,
            client_id: None,
        };
        if !self.run_outgoing(&ctx, &mut message) {
            return None;
        }
        let json: Arc<str> = Arc::from(message.to_json());
        let channel = message.channel();
        if let Some(link) = self.inner.cluster.get()
            && !link.send(channel, &json)
        {
            self.inner
                .counters
                .cluster_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(self.fan_out_local(channel, &json))
    }

    /// Handles a broadcast that another node of the cluster published:
    /// this node's server-side listeners on `channel` (with no publishing
    /// client: it is on the other node), then its subscribers. The message
    /// is parsed only when a listener matches.
    pub(crate) fn receive_remote(&self, channel: &str, json: Arc<str>) -> usize {
        let listening = self
            .inner
            .listeners
            .read()
            .iter()
            .any(|(p, _)| p.matches(channel));
        if listening {
            match serde_json::from_str::<Message>(&json) {
                Ok(m) => self.call_listeners(channel, None, &m),
                Err(e) => tracing::warn!(
                    %channel, error = %e,
                    "bayeux cluster: unparsable message; listeners skipped"
                ),
            }
        }
        self.fan_out_local(channel, &json)
    }

    /// Queues already-serialised `json` for every local subscriber of
    /// `channel`.
    pub(crate) fn fan_out_local(&self, channel: &str, json: &Arc<str>) -> usize {
        let max_queue = self.inner.config.max_queue;
        let (mut n, mut queued, mut dropped) = (0usize, 0u64, 0u64);
        {
            let index = self.inner.index.read();
            index.for_each_match(channel, |_, client| {
                let (q, d) = client.enqueue(json.clone(), max_queue);
                queued += u64::from(q);
                dropped += u64::from(d);
                n += 1;
            });
        }
        self.count_deliveries(queued, dropped);
        n
    }

    fn lookup(&self, m: &Message) -> Result<Arc<Client>, Box<Message>> {
        let Some(id) = m.client_id.as_deref() else {
            return Err(Box::new(m.reply().fail("401::no_client_id")));
        };
        match self.inner.clients.read().get(id) {
            Some(c) => Ok(c.clone()),
            None => {
                let mut r = m.reply().fail("402::session_unknown");
                r.advice = Some(json!({"reconnect": "handshake", "interval": 0}));
                Err(Box::new(r))
            }
        }
    }

    /// Handles one request's messages. Replies run through outgoing
    /// extensions and are serialised; a connect is returned pending.
    pub(crate) fn process(
        &self,
        messages: Vec<Message>,
        request: &RequestContext,
        transport: Transport,
        browser: Option<&Arc<str>>,
    ) -> Processed {
        let alone = messages.len() == 1;
        let mut out = Processed {
            replies: Vec::with_capacity(messages.len()),
            connect: None,
            handshook: false,
        };
        for mut m in messages {
            let client_id = m.client_id.clone();
            let ctx = ExtContext {
                bayeux: self,
                request: Some(request),
                client_id: client_id.as_deref(),
            };
            let mut reply = if !self.run_incoming(&ctx, &mut m) {
                m.reply().fail("403::denied_by_extension")
            } else {
                match m.channel.as_deref() {
                    None => m.reply().fail("400::channel_missing"),
                    Some(meta::HANDSHAKE) => {
                        out.handshook = true;
                        self.handshake(&m, request, browser)
                    }
                    Some(meta::CONNECT) => {
                        match self.begin_connect(&m, transport, alone, browser) {
                            Ok(pending) => {
                                if let Some(prev) = out.connect.replace(pending) {
                                    out.replies.extend(self.finish_connect(prev, request));
                                }
                                continue;
                            }
                            Err(r) => *r,
                        }
                    }
                    Some(meta::SUBSCRIBE) => self.subscribe(&m, request, true),
                    Some(meta::UNSUBSCRIBE) => self.subscribe(&m, request, false),
                    Some(meta::DISCONNECT) => self.disconnect(&m),
                    Some(ch) if channel::kind_of(ch) == ChannelKind::Meta => {
                        m.reply().fail(format!("404:{ch}:unknown_channel"))
                    }
                    Some(_) => self.client_publish(&m, request),
                }
            };
            let reply_client = reply.client_id.clone().or(client_id);
            let ctx = ExtContext {
                bayeux: self,
                request: Some(request),
                client_id: reply_client.as_deref(),
            };
            if self.run_outgoing(&ctx, &mut reply) {
                out.replies.push(Json::Own(reply.to_json()));
            }
        }
        out
    }

    fn handshake(
        &self,
        m: &Message,
        request: &RequestContext,
        browser: Option<&Arc<str>>,
    ) -> Message {
        let cfg = &self.inner.config;
        let mut r = m.reply();
        if !self.inner.security.read().can_handshake(request, m) {
            r.advice = Some(json!({"reconnect": "none"}));
            return r.fail("403::handshake_denied");
        }
        if let Some(types) = &m.supported_connection_types
            && !types.iter().any(|t| cfg.offers(t))
        {
            r.supported_connection_types = Some(cfg.transports.clone());
            return r.fail(format!(
                "400:{}:unsupported_connection_types",
                types.join(",")
            ));
        }
        if self.inner.clients.read().len() >= cfg.max_clients {
            r.advice = Some(json!({
                "reconnect": "handshake",
                "interval": cfg.multi_session_interval_ms,
            }));
            return r.fail("503::too_many_clients");
        }
        let ack = cfg.ack_extension && m.ext_field("ack") == Some(&Value::Bool(true));
        let id: Arc<str> = Arc::from(random_id(20));
        let client = Arc::new(Client::new(
            id.clone(),
            browser.cloned(),
            m.ext.clone(),
            ack,
        ));
        self.inner.clients.write().insert(id.clone(), client);
        let _ = self.inner.events.send(ClientEvent::Added {
            client_id: id.clone(),
        });
        r.version = Some("1.0".into());
        r.minimum_version = Some("1.0".into());
        r.supported_connection_types = Some(cfg.transports.clone());
        r.client_id = Some(id.to_string());
        r.successful = Some(true);
        r.advice = Some(json!({
            "reconnect": "retry",
            "interval": cfg.interval_ms,
            "timeout": cfg.timeout_ms,
        }));
        if ack {
            r.set_ext_field("ack", Value::Bool(true));
        }
        r
    }

    fn begin_connect(
        &self,
        m: &Message,
        transport: Transport,
        alone: bool,
        browser: Option<&Arc<str>>,
    ) -> Result<PendingConnect, Box<Message>> {
        let cfg = &self.inner.config;
        let client = self.lookup(m)?;
        if let Some(t) = m.connection_type.as_deref()
            && !cfg.offers(t)
        {
            return Err(Box::new(
                m.reply()
                    .fail(format!("400:{t}:unsupported_connection_type")),
            ));
        }
        let (generation, first) = {
            let mut inner = client.inner.lock();
            inner.connect_gen += 1;
            inner.last_seen = Instant::now();
            let first = !inner.connected_once;
            inner.connected_once = true;
            if let (Some(ack), Some(n)) = (
                inner.ack.as_mut(),
                m.ext_field("ack").and_then(Value::as_u64),
            ) {
                ack.confirm(n);
            }
            (inner.connect_gen, first)
        };
        // Release a connect held by an earlier request.
        client.notify.notify_waiters();
        let server_timeout = cfg.timeout();
        let mut hold = match m
            .advice
            .as_ref()
            .and_then(|a| a.get("timeout"))
            .and_then(Value::as_u64)
        {
            Some(t) => server_timeout.min(Duration::from_millis(t)),
            None => server_timeout,
        };
        if first || !alone {
            hold = Duration::ZERO;
        }
        let mut multiple_clients = false;
        let mut slot = None;
        if !hold.is_zero()
            && transport != Transport::WebSocket
            && let Some(b) = browser
        {
            let mut map = self.inner.browsers.lock();
            let n = map.entry(b.clone()).or_insert(0);
            if *n >= cfg.max_sessions_per_browser {
                multiple_clients = true;
                hold = Duration::ZERO;
                if *n == 0 {
                    map.remove(b);
                }
            } else {
                *n += 1;
                slot = Some(BrowserSlot {
                    browsers: self.inner.browsers.clone(),
                    browser: b.clone(),
                });
            }
        }
        let guard = HoldGuard::new(client.clone(), slot);
        Ok(PendingConnect {
            reply: m.reply(),
            client,
            generation,
            hold,
            multiple_clients,
            guard,
        })
    }

    /// Completes a connect: queued messages first, then the connect reply
    /// (with advice when it changed, and the ack batch).
    pub(crate) fn finish_connect(
        &self,
        pending: PendingConnect,
        request: &RequestContext,
    ) -> Vec<Json> {
        let cfg = &self.inner.config;
        let PendingConnect {
            client,
            mut reply,
            multiple_clients,
            guard,
            ..
        } = pending;
        let mut out: Vec<Json> = Vec::new();
        {
            let mut inner = client.inner.lock();
            if inner.removed {
                drop(inner);
                drop(guard);
                reply.advice = Some(json!({"reconnect": "handshake", "interval": 0}));
                return vec![Json::Own(reply.fail("402::session_unknown").to_json())];
            }
            let fresh = std::mem::take(&mut inner.queue);
            let messages: Vec<Arc<str>> = if let Some(ack) = inner.ack.as_mut() {
                let (batch, msgs) = ack.next_batch(fresh);
                reply.set_ext_field("ack", Value::from(batch));
                msgs
            } else {
                fresh.into()
            };
            out.reserve(messages.len() + 1);
            out.extend(messages.into_iter().map(Json::Shared));
            let advice = if multiple_clients {
                Advice {
                    reconnect: "retry",
                    interval: cfg.multi_session_interval_ms,
                    timeout: cfg.timeout_ms,
                    max_interval: cfg.max_interval_ms,
                    multiple_clients: true,
                }
            } else {
                Advice {
                    reconnect: "retry",
                    interval: cfg.interval_ms,
                    timeout: cfg.timeout_ms,
                    max_interval: cfg.max_interval_ms,
                    multiple_clients: false,
                }
            };
            if inner.last_advice.as_ref() != Some(&advice) {
                reply.advice = Some(advice.to_value());
                inner.last_advice = Some(advice);
            }
        }
        drop(guard);
        reply.successful = Some(true);
        reply.client_id = Some(client.id.to_string());
        let ctx = ExtContext {
            bayeux: self,
            request: Some(request),
            client_id: Some(&client.id),
        };
        if self.run_outgoing(&ctx, &mut reply) {
            out.push(Json::Own(reply.to_json()));
        }
        out
    }

    /// Takes queued messages of a client for immediate push (WebSocket,
    /// clients without the ack extension). `None` for ack clients, whose
    /// messages go only with connect replies.
    pub(crate) fn drain_for_push(&self, client: &Client) -> Option<Vec<Arc<str>>> {
        let mut inner = client.inner.lock();
        if inner.ack.is_some() {
            return None;
        }
        Some(std::mem::take(&mut inner.queue).into())
    }

    fn subscribe(&self, m: &Message, request: &RequestContext, add: bool) -> Message {
        let client = match self.lookup(m) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let mut r = m.reply();
        r.client_id = m.client_id.clone();
        r.subscription = m.subscription.clone();
        let Some(names) = m.subscription.as_ref().and_then(subscription_names) else {
            return r.fail("400::subscription_missing");
        };
        let policy = self.inner.security.read().clone();
        let max = self.inner.config.max_subscriptions_per_client;
        let mut error: Option<String> = None;
        for name in names {
            let pattern = match channel::parse_pattern(name) {
                Ok(p) => p,
                Err(_) => {
                    error.get_or_insert_with(|| format!("400:{name}:invalid_subscription"));
                    continue;
                }
            };
            match channel::kind_of(name) {
                ChannelKind::Meta => {
                    error.get_or_insert_with(|| format!("403:{name}:meta_subscription"));
                    continue;
                }
                // Accepted, not recorded: service messages are point-to-point.
                ChannelKind::Service => continue,
                ChannelKind::Broadcast => {}
            }
            if add {
                if !policy.can_subscribe(request, &client.id, name) {
                    error.get_or_insert_with(|| format!("403:{name}:subscribe_denied"));
                    continue;
                }
                let mut inner = client.inner.lock();
                if inner.removed {
                    continue;
                }
                if inner.subscriptions.contains(&pattern) {
                    continue;
                }
                if inner.subscriptions.len() >= max {
                    error.get_or_insert_with(|| format!("403:{name}:too_many_subscriptions"));
                    continue;
                }
                inner.subscriptions.insert(pattern.clone());
                // Lock order is index then client everywhere else: release
                // the client before taking the index.
                drop(inner);
                self.inner
                    .index
                    .write()
                    .insert(&pattern, client.id.clone(), client.clone());
                // A removal racing with us may have missed this entry.
                if client.inner.lock().removed {
                    self.inner.index.write().remove(&pattern, &client.id);
                }
            } else {
                let had = client.inner.lock().subscriptions.remove(&pattern);
                if had {
                    self.inner.index.write().remove(&pattern, &client.id);
                }
            }
        }
        match error {
            Some(e) => r.fail(e),
            None => {
                r.successful = Some(true);
                r
            }
        }
    }

    fn disconnect(&self, m: &Message) -> Message {
        let client = match self.lookup(m) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        self.remove(&client.id, RemoveReason::Disconnect);
        let mut r = m.reply();
        r.client_id = m.client_id.clone();
        r.successful = Some(true);
        r
    }

    fn client_publish(&self, m: &Message, request: &RequestContext) -> Message {
        let ch = m.channel();
        let client = match self.lookup(m) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let mut r = m.reply();
        let kind = match channel::parse_channel(ch) {
            Ok(k) => k,
            Err(channel::ChannelError::Wildcard) => {
                return r.fail(format!("400:{ch}:wildcard_publish"));
            }
            Err(_) => return r.fail(format!("400:{ch}:invalid_channel")),
        };
        if !self
            .inner
            .security
            .read()
            .can_publish(request, &client.id, m)
        {
            return r.fail(format!("403:{ch}:publish_denied"));
        }
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.call_listeners(ch, Some(&client.id), m);
        if kind == ChannelKind::Broadcast {
            // No `id`: it is the publisher's, and would collide with the
            // ids (e.g. pending remote calls) of the receivers.
            let out = Message {
                channel: m.channel.clone(),
                data: m.data.clone(),
                ..Message::default()
            };
            self.broadcast(out, Some(request));
        }
        r.successful = Some(true);
        r
    }

    /// Removes clients with no connect for `max_interval`.
    fn sweep(&self) {
        let max = self.inner.config.max_interval();
        let now = Instant::now();
        let expired: Vec<Arc<str>> = self
            .inner
            .clients
            .read()
            .values()
            .filter(|c| {
                let inner = c.inner.lock();
                inner.holding == 0 && now.duration_since(inner.last_seen) > max
            })
            .map(|c| c.id.clone())
            .collect();
        for id in expired {
            tracing::debug!(client_id = %id, "bayeux client expired");
            self.remove(&id, RemoveReason::Expired);
        }
    }
}

fn spawn_sweeper(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let period =
        (strong.config.max_interval() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    drop(strong);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            Bayeux { inner }.sweep();
        }
    });
}
