//! Server configuration: timeouts and every limit, all documented in
//! `docs/bayeux.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of a [`crate::Bayeux`] server. Every field has a default;
/// in TOML, unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BayeuxConfig {
    /// How long a `/meta/connect` is held when nothing is queued (ms).
    pub timeout_ms: u64,
    /// Advised pause between a connect reply and the next connect (ms).
    pub interval_ms: u64,
    /// A Bayeux client with no connect for this long is removed (ms).
    pub max_interval_ms: u64,
    /// Messages queued per Bayeux client; beyond it the oldest is dropped.
    pub max_queue: usize,
    /// Largest request body or WebSocket frame accepted (bytes).
    pub max_request_bytes: usize,
    /// Most messages accepted in one request or frame.
    pub max_messages_per_request: usize,
    /// Most Bayeux clients alive at once; further handshakes are refused.
    pub max_clients: usize,
    /// Most subscriptions one Bayeux client may hold.
    pub max_subscriptions_per_client: usize,
    /// Concurrent held long-polling connects per browser (`BAYEUX_BROWSER`
    /// cookie) before `multiple-clients` advice is given.
    pub max_sessions_per_browser: usize,
    /// The interval advised with `multiple-clients` (ms).
    pub multi_session_interval_ms: u64,
    /// Name of the browser cookie.
    pub browser_cookie: String,
    /// Mark the browser cookie `Secure`.
    pub browser_cookie_secure: bool,
    /// Connection types offered at handshake, in preference order
    /// (`websocket`, `long-polling`, `callback-polling`).
    pub transports: Vec<String>,
    /// Capacity of the lifecycle event channel (slow readers miss events).
    pub event_capacity: usize,
    /// Offer the `ack` extension (at-least-once delivery to clients that ask).
    pub ack_extension: bool,
    /// Capacity of the queue of publishes waiting to be sent to Redis.
    pub cluster_queue: usize,
}

impl Default for BayeuxConfig {
    fn default() -> Self {
        BayeuxConfig {
            timeout_ms: 30_000,
            interval_ms: 0,
            max_interval_ms: 10_000,
            max_queue: 1_000,
            max_request_bytes: 1 << 20,
            max_messages_per_request: 1_000,
            max_clients: 100_000,
            max_subscriptions_per_client: 1_000,
            max_sessions_per_browser: 1,
            multi_session_interval_ms: 2_000,
            browser_cookie: "BAYEUX_BROWSER".into(),
            browser_cookie_secure: false,
            transports: vec![
                "websocket".into(),
                "long-polling".into(),
                "callback-polling".into(),
            ],
            event_capacity: 1_024,
            ack_extension: true,
            cluster_queue: 10_000,
        }
    }
}

impl BayeuxConfig {
    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `max_interval_ms` as a duration.
    pub fn max_interval(&self) -> Duration {
        Duration::from_millis(self.max_interval_ms)
    }

    /// Whether `connection_type` is offered.
    pub fn offers(&self, connection_type: &str) -> bool {
        self.transports.iter().any(|t| t == connection_type)
    }
}
