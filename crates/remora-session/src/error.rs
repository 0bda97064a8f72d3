//! Error types: [`StoreError`] from stores, [`SessionError`] seen by handlers.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// A store operation failed. The session layer answers `503` with
/// `Retry-After` (or continues with a fresh session, if so configured).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the configured timeout.
    #[error("store operation `{op}` timed out after {millis} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout.
        millis: u64,
    },
    /// A record could not be encoded or decoded.
    #[error("session record encoding")]
    Codec(#[source] serde_json::Error),
    /// A concurrent request's load of the same session just failed; this
    /// one fails with it instead of waiting another timeout.
    #[error("the session store just failed for a concurrent request on this session")]
    Unavailable,
    /// A stored value is not in the store's format (written by something
    /// else, or damaged).
    #[error("stored session value is malformed: {0}")]
    Malformed(&'static str),
    /// Too many compare-and-set conflicts in a row.
    #[error("gave up after {0} conflicting concurrent writes")]
    Contention(u32),
    /// Redis failed.
    #[cfg(feature = "redis")]
    #[error("redis")]
    Redis(#[source] redis::RedisError),
    /// PostgreSQL failed.
    #[cfg(feature = "postgres")]
    #[error("postgres")]
    Postgres(#[source] tokio_postgres::Error),
    /// Getting a PostgreSQL connection from the pool failed.
    #[cfg(feature = "postgres")]
    #[error("postgres pool")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The PostgreSQL pool could not be built from its configuration.
    #[cfg(feature = "postgres")]
    #[error("postgres pool configuration")]
    CreatePool(#[source] deadpool_postgres::CreatePoolError),
    /// redb failed.
    #[cfg(feature = "redb")]
    #[error("redb")]
    Redb(#[source] Box<redb::Error>),
    /// A blocking store task failed to run.
    #[error("store task")]
    Join(#[source] tokio::task::JoinError),
}

#[cfg(feature = "redb")]
pub(crate) fn redb_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Redb(Box::new(e.into()))
}

/// An error seen by a handler using a [`Session`](crate::Session).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed or timed out.
    #[error("session store unavailable")]
    Store(#[source] StoreError),
    /// The session would exceed the configured size limit.
    #[error("session would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Serialized size the session would have.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A value could not be converted to or from JSON.
    #[error("session value (de)serialization")]
    Value(#[source] serde_json::Error),
    /// The session was invalidated earlier in this request.
    #[error("the session was invalidated")]
    Invalidated,
    /// The request did not pass through a `SessionLayer`.
    #[error("no SessionLayer in front of this handler")]
    MissingLayer,
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        match self {
            SessionError::Store(_) => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session store unavailable\n",
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            SessionError::TooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "session too large\n").into_response()
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "session error\n").into_response(),
        }
    }
}
