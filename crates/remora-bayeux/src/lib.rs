//! A Bayeux 1.0 server (CometD and Faye compatible) that carries session
//! replicas.
//!
//! [`Bayeux`] is the server: create it with a [`BayeuxConfig`], add
//! [`Extension`]s, a [`SecurityPolicy`] and channel listeners, then mount
//! [`Bayeux::router`] in an axum app, or serve it on its own with
//! [`Bayeux::serve`] (cheapest per held long-polling connect). It speaks
//! `long-polling`, `callback-polling` and `websocket`;
//! [`Bayeux::join_cluster`] fans publishes out between nodes through Redis,
//! and reconnects after Redis outages. See `docs/bayeux.md`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use remora_bayeux::{Bayeux, BayeuxConfig};
//! let bayeux = Bayeux::new(BayeuxConfig::default());
//! bayeux.add_listener("/service/echo", |b, p| {
//!     if let Some(from) = p.from {
//!         let mut reply = p.message.reply();
//!         reply.data = p.message.data.clone();
//!         let _ = b.deliver(from, reply);
//!     }
//! }).expect("valid channel");
//! let app = axum::Router::new().merge(bayeux.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

pub mod channel;
mod client;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod ext;
pub mod message;
pub mod security;
pub mod transport;

pub use cluster::{ClusterError, ClusterStatus};
pub use config::BayeuxConfig;
pub use engine::{
    Bayeux, ClientEvent, ClientInfo, DeliverError, Listener, PublishError, Published, RemoveReason,
    Stats, Transport,
};
pub use ext::{ExtContext, Extension};
pub use message::Message;
pub use security::{AllowAll, RequestContext, SecurityPolicy};
