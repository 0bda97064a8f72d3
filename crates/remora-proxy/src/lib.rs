//! Remora's session-aware HTTP/WebSocket load balancer.
