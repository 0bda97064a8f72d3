//! Hooks for client-held replicas, filled in by the replica layer.
//!
//! The session layer itself knows nothing about sealing or carriage; it only
//! calls these two hooks at the right moments. See `docs/sessions.md`.

use axum::body::Body;
use http::HeaderMap;
use http::request::Parts;

use crate::record::Record;
use crate::store::BoxFuture;

/// What to do with a request whose session ID the store does not know.
#[derive(Debug)]
pub enum UnknownIdOutcome {
    /// Restore this record (its `id` must be the requested ID and it must
    /// not be expired, else it is ignored). The layer saves it to the store
    /// (counted as `restored`) before the handler runs.
    Restore(Record),
    /// Go on with a fresh session.
    Fresh,
    /// Answer the request with this response; the handler does not run
    /// (e.g. `409` with `Session-Replica-Wanted: 1`).
    Respond(http::Response<Body>),
}

/// Hooks the replica layer plugs into a [`SessionLayer`](crate::SessionLayer).
///
/// When hooks are set, a request carrying a well-formed session ID has its
/// session loaded *before* the handler runs (no longer lazily), so that an
/// unknown ID can be restored.
pub trait ReplicaHooks: Send + Sync + 'static {
    /// Called, and awaited, before the handler when the request's session ID
    /// is unknown to the store (or expired there). May wait (e.g. park until
    /// a replica arrives on another request); the store timeout does not
    /// apply to it, so bound the wait yourself.
    fn on_unknown_id<'a>(
        &'a self,
        parts: &'a Parts,
        id: &'a str,
    ) -> BoxFuture<'a, UnknownIdOutcome>;

    /// Called, and awaited, before the handler when the store knows the
    /// request's session, with the stored record. Return `Respond` to answer
    /// instead of the handler (e.g. `409` when the client holds a newer
    /// replica than this copy), or `Restore` with a record whose
    /// `replica_seq` is higher than the stored one to replace it. Default:
    /// `None` (use the stored copy).
    fn on_known_id<'a>(
        &'a self,
        parts: &'a Parts,
        stored: &'a Record,
    ) -> BoxFuture<'a, Option<UnknownIdOutcome>> {
        let _ = (parts, stored);
        Box::pin(async { None })
    }

    /// Called after a save that changed data, with the record as saved and
    /// the response headers (e.g. to add `Session-Replica`). Not called
    /// after a touch, an invalidation or a failed save.
    fn on_saved(&self, record: &Record, headers: &mut HeaderMap);

    /// Called, synchronously, when a request presenting session `id`
    /// arrives, before its session object is shared with concurrent requests
    /// on the same ID. A replica carried by this request can then release a
    /// request that waits in [`ReplicaHooks::on_unknown_id`] for the same ID
    /// (which holds that object's load). Default: nothing.
    fn on_request(&self, headers: &HeaderMap, id: &str) {
        let _ = (headers, id);
    }

    /// Called after the session `id` was invalidated and deleted from the
    /// store, with the response headers (e.g. to tell the client to drop
    /// its replica, so that a logout cannot be undone by a restore).
    /// Default: nothing.
    fn on_invalidated(&self, id: &str, headers: &mut HeaderMap) {
        let _ = (id, headers);
    }
}
