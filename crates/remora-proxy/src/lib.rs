//! Remora's session-aware HTTP/WebSocket load balancer.
pub mod affinity;
pub mod select;
