//! Remora's session-aware HTTP/WebSocket load balancer.
//!
//! [`serve::run`] runs the balancer from a [`config::Config`]; the binary's
//! `remora serve` and `remora check` are thin wrappers around this crate.

pub mod admin;
pub mod affinity;
pub mod config;
pub mod conn;
pub mod fields;
pub mod forward;
pub mod h1;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod select;
pub mod serve;
pub mod tls;
pub mod upstream;
pub mod websocket;
