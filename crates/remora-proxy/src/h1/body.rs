//! A client's request body on an HTTP/1.1 connection: the request's
//! forwarding holds a [`ClientBody`] and asks it for data; the connection
//! ([`Feed`]) reads the socket only then, one read at a time, so a body is
//! never buffered whole and a slow server slows the client down.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::head::BodyFraming;
use crate::conn::ClientIo;
use crate::upstream::wire::{Chunked, Decoded};

/// What is in transit between the connection and the body.
#[derive(Default)]
struct Pipe {
    /// Data read and not yet taken.
    data: Option<Bytes>,
    /// The chunked body's trailer section, not yet taken.
    trailers: Option<HeaderMap>,
    /// The body is complete (after `data` and `trailers`).
    done: bool,
    /// The body failed (the client left or sent a malformed chunk).
    failed: Option<&'static str>,
    /// The body asks for more.
    wanted: bool,
    /// The body was dropped: nobody reads the rest.
    dropped: bool,
    /// The task polling the body, waiting for data.
    body_waker: Option<Waker>,
    /// The connection, waiting for the body to ask.
    conn_waker: Option<Waker>,
}

type Shared = Arc<parking_lot::Mutex<Pipe>>;

/// The request body a client sends on Remora's HTTP/1.1 connection.
pub struct ClientBody {
    pipe: Option<Shared>,
    /// Bytes still to come, for a body with a `Content-Length`.
    remaining: Option<u64>,
}

/// The request body failed: the client closed the connection before its
/// end, or its chunked coding is malformed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBodyError(&'static str);

impl ClientBody {
    /// No body.
    pub fn empty() -> Self {
        ClientBody {
            pipe: None,
            remaining: None,
        }
    }

    /// A body framed by `framing`, and the connection's end of it; `None`
    /// for [`BodyFraming::Empty`]. `expect_continue`: the client waits for
    /// `100 Continue` before sending it, which the feed writes when the body
    /// is first asked for.
    pub fn new(framing: BodyFraming, expect_continue: bool) -> (ClientBody, Option<Feed>) {
        let (remaining, decode) = match framing {
            BodyFraming::Empty => return (ClientBody::empty(), None),
            BodyFraming::Length(n) => (Some(n), Decode::Length(n)),
            BodyFraming::Chunked => (None, Decode::Chunked(Chunked::Size)),
        };
        let pipe = Shared::default();
        let feed = Feed {
            pipe: pipe.clone(),
            decode,
            interim: if expect_continue { CONTINUE.len() } else { 0 },
        };
        (
            ClientBody {
                pipe: Some(pipe),
                remaining,
            },
            Some(feed),
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let Some(pipe) = &self.pipe else {
            return Poll::Ready(None);
        };
        let mut p = pipe.lock();
        if let Some(d) = p.data.take() {
            drop(p);
            if let Some(r) = &mut self.remaining {
                *r = r.saturating_sub(d.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = p.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if let Some(e) = p.failed {
            return Poll::Ready(Some(Err(ClientBodyError(e))));
        }
        if p.done {
            return Poll::Ready(None);
        }
        p.wanted = true;
        if !p
            .body_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            p.body_waker = Some(cx.waker().clone());
        }
        if let Some(w) = p.conn_waker.take() {
            w.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.pipe {
            None => true,
            Some(pipe) => {
                let p = pipe.lock();
                p.done && p.data.is_none() && p.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.pipe, self.remaining) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(n)) => SizeHint::with_exact(n),
            (Some(_), None) => SizeHint::default(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(pipe) = &self.pipe {
            let mut p = pipe.lock();
            p.dropped = true;
            if let Some(w) = p.conn_waker.take() {
                w.wake();
            }
        }
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the rest of a body is delimited.
enum Decode {
    /// This many bytes to go.
    Length(u64),
    /// The chunked coding, in this state.
    Chunked(Chunked),
}

/// The connection's end of a [`ClientBody`].
pub struct Feed {
    pipe: Shared,
    decode: Decode,
    /// Bytes of `100 Continue` still to write before the body is read.
    interim: usize,
}

/// How a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// The whole body was read: the connection may carry another request.
    Complete,
    /// The body was dropped before its end, or failed: what is left of it
    /// is unread, so the connection cannot carry another request.
    Unread,
}

impl Feed {
    /// Reads the body from `buf` (bytes the connection read past the head)
    /// and `io` as the body asks for it. `Ready`: a step of the body (data,
    /// its end or its failure) was handed over, so the body's reader should
    /// be polled again. How the feed ended is [`Feed::ended`].
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut ClientIo,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Poll<()> {
        loop {
            {
                let mut p = self.pipe.lock();
                if p.dropped || p.done || p.failed.is_some() {
                    return Poll::Pending;
                }
                if !p.wanted || p.data.is_some() {
                    if !p
                        .conn_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        p.conn_waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
            // The client sends the body once told to.
            while self.interim > 0 {
                let from = CONTINUE.len() - self.interim;
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[from..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.interim -= n,
                    Poll::Ready(_) => {
                        self.fail("client connection failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.decode(buf, max_trailers) {
                Some(step) => {
                    self.deliver(step);
                    return Poll::Ready(());
                }
                None => {
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(8192);
                    }
                    let read = std::pin::pin!(io.read_buf(buf)).poll(cx);
                    match read {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            self.fail("request body ended early");
                            return Poll::Ready(());
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    /// How the feed ended, once it has (`None` while the body may still
    /// ask for more).
    pub fn ended(&self) -> Option<FeedEnd> {
        let p = self.pipe.lock();
        if p.failed.is_some() {
            Some(FeedEnd::Unread)
        } else if p.done {
            Some(FeedEnd::Complete)
        } else if p.dropped {
            Some(FeedEnd::Unread)
        } else {
            None
        }
    }

    /// One step of the body from what `buf` holds (`None`: nothing yet).
    fn decode(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Option<Step> {
        match &mut self.decode {
            Decode::Length(left) => {
                if buf.is_empty() {
                    return None;
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Some(Step::Data(buf.split_to(n).freeze(), *left == 0))
            }
            Decode::Chunked(state) => match state.decode(buf, max_trailers) {
                Ok(Decoded::Data(d)) => Some(Step::Data(d, false)),
                Ok(Decoded::Trailers(t)) => Some(Step::Trailers(t)),
                Ok(Decoded::End) => Some(Step::End),
                Ok(Decoded::NeedMore) => None,
                Err(_) => Some(Step::Failed("malformed chunked request body")),
            },
        }
    }

    fn deliver(&mut self, step: Step) {
        let mut p = self.pipe.lock();
        match step {
            Step::Data(d, last) => {
                p.data = Some(d);
                p.done = last;
            }
            Step::Trailers(t) => {
                p.trailers = Some(t);
                p.done = true;
            }
            Step::End => p.done = true,
            Step::Failed(e) => p.failed = Some(e),
        }
        p.wanted = false;
        if let Some(w) = p.body_waker.take() {
            w.wake();
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.deliver(Step::Failed(why));
    }
}

/// One step of a body, as decoded.
enum Step {
    /// Data; `true`: the last of it.
    Data(Bytes, bool),
    /// The trailer section (the end).
    Trailers(HeaderMap),
    /// The end.
    End,
    /// The body failed.
    Failed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::client_io;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    /// Runs `body`'s collection and `feed` in one task, as the connection
    /// does, until the body is collected.
    async fn collect(
        body: ClientBody,
        mut feed: Feed,
        io: &mut ClientIo,
        buf: &mut BytesMut,
    ) -> Result<http_body_util::Collected<Bytes>, ClientBodyError> {
        let mut collect = std::pin::pin!(body.collect());
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(r) = collect.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                if feed.poll(cx, io, buf, 4096).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_length_body_reads_the_buffer_then_the_socket_and_no_further() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        let mut buf = BytesMut::from(&b"hel"[..]);
        let (body, feed) = ClientBody::new(BodyFraming::Length(5), false);
        assert_eq!(body.size_hint().exact(), Some(5));
        peer.write_all(b"loNEXT").await.unwrap();
        let got = collect(body, feed.unwrap(), &mut io, &mut buf)
            .await
            .unwrap();
        assert_eq!(&got.to_bytes()[..], b"hello");
        // The next request's bytes stay for the connection (read with the
        // body's end, in the same read).
        assert_eq!(&buf[..], b"NEXT");
    }

    #[tokio::test]
    async fn a_chunked_body_with_trailers_is_decoded() {
        let (mut peer, ours) = tokio::io::duplex(256);
        let mut io = client_io(ours);
        let mut buf = BytesMut::new();
        let (body, feed) = ClientBody::new(BodyFraming::Chunked, false);
        peer.write_all(b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 9\r\n\r\n")
            .await
            .unwrap();
        let got = collect(body, feed.unwrap(), &mut io, &mut buf)
            .await
            .unwrap();
        assert_eq!(got.trailers().unwrap()["x-sum"], "9");
        assert_eq!(&got.to_bytes()[..], b"abcde");
    }

    #[tokio::test]
    async fn a_body_cut_short_fails_and_a_bad_chunk_fails() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        let mut buf = BytesMut::new();
        let (body, feed) = ClientBody::new(BodyFraming::Length(10), false);
        peer.write_all(b"short").await.unwrap();
        drop(peer);
        let feed = feed.unwrap();
        let pipe = feed.pipe.clone();
        let err = collect(body, feed, &mut io, &mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "request body ended early");
        assert!(pipe.lock().failed.is_some());

        let (mut peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        let (body, feed) = ClientBody::new(BodyFraming::Chunked, false);
        peer.write_all(b"zz\r\n").await.unwrap();
        let err = collect(body, feed.unwrap(), &mut io, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "malformed chunked request body");
    }

    #[tokio::test]
    async fn continue_is_sent_only_when_the_body_is_asked_for() {
        let (mut peer, ours) = tokio::io::duplex(256);
        let mut io = client_io(ours);
        let mut buf = BytesMut::new();
        let (body, feed) = ClientBody::new(BodyFraming::Length(2), true);
        let mut feed = feed.unwrap();
        // Not asked yet: nothing is written.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(feed.poll(&mut cx, &mut io, &mut buf, 4096).is_pending());
        assert_eq!(feed.ended(), None);
        peer.write_all(b"ok").await.unwrap();
        let got = collect(body, feed, &mut io, &mut buf).await.unwrap();
        assert_eq!(&got.to_bytes()[..], b"ok");
        let mut interim = [0u8; CONTINUE.len()];
        peer.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim[..], CONTINUE);
    }

    #[tokio::test]
    async fn a_dropped_body_ends_the_feed_unread() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut io = client_io(ours);
        let mut buf = BytesMut::new();
        let (body, feed) = ClientBody::new(BodyFraming::Length(10), false);
        let mut feed = feed.unwrap();
        drop(body);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(feed.poll(&mut cx, &mut io, &mut buf, 4096).is_pending());
        assert_eq!(feed.ended(), Some(FeedEnd::Unread));
        let (empty, none) = ClientBody::new(BodyFraming::Empty, true);
        assert!(none.is_none());
        assert!(empty.is_end_stream());
    }
}
