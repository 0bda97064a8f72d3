//! Server extensions: code that sees (and may change or reject) every
//! incoming and outgoing message. The `ack` extension lives here too.

pub mod ack;
pub mod replica;

use crate::engine::Bayeux;
use crate::message::Message;
use crate::security::RequestContext;

/// Where a message passing through an [`Extension`] comes from or goes to.
#[derive(Clone, Copy)]
pub struct ExtContext<'a> {
    /// The server, e.g. to [`Bayeux::deliver`] a message to a client.
    pub bayeux: &'a Bayeux,
    /// The HTTP request (or WebSocket upgrade request) that carried the
    /// incoming message or its reply; `None` for messages the server
    /// originates (publishes from Rust, deliveries on a held connect).
    pub request: Option<&'a RequestContext>,
    /// The Bayeux client the message comes from (incoming) or goes to
    /// (outgoing replies and deliveries); `None` for a handshake request or
    /// a broadcast before fan-out.
    pub client_id: Option<&'a str>,
}

/// A server extension. Both methods default to passing the message on.
///
/// `incoming` runs on every message a client sends, before the server
/// handles it; returning `false` rejects the message (its reply fails with
/// `403::denied_by_extension`). `outgoing` runs on every reply (after the
/// server set `successful`, `clientId`, ...), on every message delivered to
/// one client with [`Bayeux::deliver`], and once per broadcast publish
/// before fan-out (with `client_id = None`); returning `false` drops it.
pub trait Extension: Send + Sync + 'static {
    /// Sees a message from a client.
    fn incoming(&self, _ctx: &ExtContext<'_>, _message: &mut Message) -> bool {
        true
    }
    /// Sees a message to a client (or to every subscriber of a channel).
    fn outgoing(&self, _ctx: &ExtContext<'_>, _message: &mut Message) -> bool {
        true
    }
}
