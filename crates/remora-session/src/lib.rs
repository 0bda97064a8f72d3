//! Server-side sessions for tower/axum with stores, expiry, CSRF and sealed client-held replicas.
