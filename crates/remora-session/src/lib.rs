//! Server-side sessions for tower/axum that never lose an update: stores
//! (memory, redb, Redis, PostgreSQL) with versioned compare-and-set and
//! per-attribute merge, expiry, CSRF, metrics, and hooks for sealed
//! client-held replicas.
//!
//! Start with [`SessionLayer`] and the [`Session`] extractor; the full guide
//! is `docs/sessions.md`.

pub mod config;
pub mod csrf;
pub mod error;
mod extract;
mod flush;
pub mod hooks;
pub mod id;
mod layer;
mod metrics;
pub mod record;
pub mod replica;
mod session;
pub mod store;

pub use config::{OnStoreFailure, SameSite};
pub use csrf::{CsrfLayer, CsrfService};
pub use error::{SessionError, StoreError};
pub use hooks::{ReplicaHooks, UnknownIdOutcome};
pub use layer::{SessionLayer, SessionService};
pub use record::{Attribute, Change, Record};
pub use session::{CSRF_KEY, Session};
#[cfg(feature = "memory")]
pub use store::MemoryStore;
pub use store::{BoxFuture, SaveOutcome, Store};
