//! The axum extractor for [`Session`].

use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::error::SessionError;
use crate::session::Session;

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionError::MissingLayer)
    }
}
