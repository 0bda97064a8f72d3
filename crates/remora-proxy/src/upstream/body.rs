//! A server's response body, read from the server connection by the task
//! that writes it to the client (no task or channel in between). The body
//! owns the connection while it streams and gives it back to the client
//! connection's [`Slot`] once the body has ended cleanly.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::wire::{Chunked, Decoded, Framing, WireError};
use super::{Conn, Slot};
use crate::forward::BoxError;
use crate::select::RequestGuard;

/// Bytes read from a server at once while a body streams.
const READ_CHUNK: usize = 16 * 1024;

/// The server closed the connection or failed in the middle of a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection ended before the body did.
    #[error("server closed the connection before the end of the body")]
    Truncated,
    /// Reading from the server failed.
    #[error("reading the response body failed")]
    Io(#[source] io::Error),
    /// The chunked coding was malformed.
    #[error("malformed response body")]
    Wire(#[source] WireError),
}

enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// A server's response body: streams from the server connection, holds the
/// server's in-flight request guard, and returns the connection to its
/// client connection's slot when the body has ended (dropped early, the
/// connection is closed instead).
pub struct UpstreamBody {
    conn: Option<Conn>,
    slot: Arc<Slot>,
    state: State,
    keep_alive: bool,
    max_trailers: usize,
    guard: Option<RequestGuard>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    pub(super) fn new(
        conn: Conn,
        slot: Arc<Slot>,
        framing: Framing,
        keep_alive: bool,
        max_trailers: usize,
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::Close => State::Close,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            slot,
            state,
            keep_alive,
            max_trailers,
            guard: None,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// Holds `guard` (the server's in-flight request count) until the body ends.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The body ended: the connection goes back to the slot if it can
    /// carry another request (nothing unread, keep-alive).
    fn finish(&mut self) {
        self.state = State::Done;
        self.guard = None;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.read_buf.is_empty()
        {
            self.slot.put(conn);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        self.guard = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Reads more from the server into the connection's buffer: `Ok(0)` at
    /// the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.read_buf.reserve(want.clamp(1, READ_CHUNK));
        loop {
            match conn.stream.try_read_buf(&mut conn.read_buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(conn.stream.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    let left = *left;
                    let buffered = this.conn.as_ref().map_or(0, |c| c.read_buf.len());
                    if buffered > 0 {
                        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buffered);
                        let Some(conn) = this.conn.as_mut() else {
                            return Poll::Ready(None);
                        };
                        let data = conn.read_buf.split_to(n).freeze();
                        let left = left - n as u64;
                        if left == 0 {
                            this.finish();
                        } else {
                            this.state = State::Length(left);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = usize::try_from(left).unwrap_or(usize::MAX);
                    match ready!(this.poll_fill(cx, want)) {
                        Ok(0) => return this.fail(BodyError::Truncated),
                        Ok(_) => {}
                        Err(e) => return this.fail(BodyError::Io(e)),
                    }
                }
                State::Chunked(chunked) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match chunked.decode(&mut conn.read_buf, this.max_trailers) {
                        Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Decoded::Trailers(t)) => {
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::End) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => match ready!(this.poll_fill(cx, READ_CHUNK)) {
                            Ok(0) => return this.fail(BodyError::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(BodyError::Io(e)),
                        },
                        Err(e) => return this.fail(BodyError::Wire(e)),
                    }
                }
                State::Close => {
                    if let Some(conn) = this.conn.as_mut()
                        && !conn.read_buf.is_empty()
                    {
                        let data = conn.read_buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(this.poll_fill(cx, READ_CHUNK)) {
                        Ok(0) => {
                            this.keep_alive = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(BodyError::Io(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
