//! Bayeux on the wire for the load generator: one keep-alive HTTP/1.1
//! connection for long-polling, or one WebSocket, each carrying JSON arrays
//! of messages; and the few messages the benchmark sends.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::BenchError;
use crate::http::MAX_BODY;

/// The Bayeux path both servers are mounted at.
pub const PATH: &str = "/cometd";

/// How Bayeux clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `long-polling`: POSTed JSON arrays, a held `/meta/connect`.
    LongPolling,
    /// `websocket`: JSON arrays in text frames, deliveries pushed.
    WebSocket,
}

impl Transport {
    /// The Bayeux `connectionType` name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::LongPolling => "long-polling",
            Transport::WebSocket => "websocket",
        }
    }
}

fn http_err(what: &str, addr: SocketAddr, e: impl std::fmt::Display) -> BenchError {
    BenchError::Http(format!("{what} {addr}{PATH}: {e}"))
}

/// A TCP connection to `addr` with Nagle off.
async fn tcp(addr: SocketAddr) -> Result<TcpStream, BenchError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| BenchError::Io {
            what: format!("connect to {addr} (bayeux)"),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One keep-alive HTTP/1.1 connection POSTing Bayeux message arrays.
pub struct Http {
    addr: SocketAddr,
    send: SendRequest<Full<Bytes>>,
}

impl Http {
    /// Opens the connection.
    pub async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = tcp(addr).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_err("handshake with", addr, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { addr, send })
    }

    /// POSTs `messages` and returns the reply array.
    pub async fn post(&mut self, messages: &Value) -> Result<Vec<Value>, BenchError> {
        let body = self.post_raw(Bytes::from(messages.to_string())).await?;
        parse_array(&body).map_err(|e| http_err("parse a reply from", self.addr, e))
    }

    /// POSTs an already serialised message array and returns the reply
    /// body unparsed (the load loops parse it with [`parse_deliveries`]).
    pub async fn post_raw(&mut self, messages: Bytes) -> Result<Bytes, BenchError> {
        let request = http::Request::post(PATH)
            .header(http::header::HOST, "bench.test")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(messages))
            .map_err(|e| http_err("build a request for", self.addr, e))?;
        self.send
            .ready()
            .await
            .map_err(|e| http_err("connection lost to", self.addr, e))?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| http_err("POST", self.addr, e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_err("read a reply from", self.addr, e))?
            .to_bytes();
        if !status.is_success() {
            return Err(http_err(
                "POST",
                self.addr,
                format!("status {status}: {}", String::from_utf8_lossy(&body)),
            ));
        }
        Ok(body)
    }
}

/// A minimal keep-alive HTTP/1.1 client for the load loops: one POST at a
/// time on one connection, driven by the task that uses it (no connection
/// task, no request channel), its read buffer reused from one response to
/// the next. It needs a `Content-Length` on every response (both servers
/// send one; anything else is an error, never a guess).
pub struct RawHttp {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

/// Most header fields read in a response.
const RAW_MAX_HEADERS: usize = 32;

impl RawHttp {
    /// Opens the connection.
    pub async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = tcp(addr).await?;
        Ok(Self {
            addr,
            stream,
            buf: Vec::with_capacity(4096),
            request: Vec::with_capacity(512),
        })
    }

    /// POSTs `messages` (a serialised JSON array) to the Bayeux path and
    /// returns the response body, which must have status 200.
    pub async fn post(&mut self, messages: &[u8]) -> Result<&[u8], BenchError> {
        use tokio::io::AsyncWriteExt;
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: bench.test\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                messages.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(messages);
        self.stream
            .write_all(&self.request)
            .await
            .map_err(|e| http_err("POST", self.addr, e))?;
        // Whatever is left of the previous response was consumed with it.
        self.buf.clear();
        loop {
            if let Some((head_len, body_len)) = self.parse_head()? {
                let end = head_len + body_len;
                while self.buf.len() < end {
                    self.read_some(end - self.buf.len(), "mid-body").await?;
                }
                return Ok(&self.buf[head_len..end]);
            }
            self.read_some(4096, "before a reply").await?;
        }
    }

    /// Reads once into `buf` (room for `room` more bytes made first); end
    /// of stream is an error, described by `when`.
    async fn read_some(&mut self, room: usize, when: &str) -> Result<(), BenchError> {
        use tokio::io::AsyncReadExt;
        self.buf.reserve(room);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| http_err("read a reply from", self.addr, e))?;
        if n == 0 {
            return Err(http_err("connection closed by", self.addr, when));
        }
        Ok(())
    }

    /// POSTs `messages` and returns the parsed reply array (setup only).
    pub async fn call(&mut self, messages: &Value) -> Result<Vec<Value>, BenchError> {
        let addr = self.addr;
        let body = self.post(messages.to_string().as_bytes()).await?;
        parse_array(body).map_err(|e| http_err("parse a reply from", addr, e))
    }

    /// The head's length and the body's, once the head is complete.
    fn parse_head(&self) -> Result<Option<(usize, usize)>, BenchError> {
        let mut fields = [httparse::EMPTY_HEADER; RAW_MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let head_len = match response.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(http_err("parse a reply head from", self.addr, e)),
        };
        if response.code != Some(200) {
            return Err(http_err(
                "POST",
                self.addr,
                format!(
                    "status {:?}: {}",
                    response.code,
                    String::from_utf8_lossy(&self.buf[head_len..])
                ),
            ));
        }
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .ok_or_else(|| http_err("read a reply from", self.addr, "no Content-Length"))?;
        if length > MAX_BODY {
            return Err(http_err("read a reply from", self.addr, "reply too large"));
        }
        Ok(Some((head_len, length)))
    }
}

/// One WebSocket carrying Bayeux message arrays.
pub struct Ws {
    addr: SocketAddr,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Opens the WebSocket at `ws://addr/cometd`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{PATH}"))
            .await
            .map_err(|e| http_err("open a WebSocket to", addr, e))?;
        Ok(Self { addr, socket })
    }

    /// Sends `messages` as one text frame.
    pub async fn send(&mut self, messages: &Value) -> Result<(), BenchError> {
        self.socket
            .send(WsMessage::text(messages.to_string()))
            .await
            .map_err(|e| http_err("send on the WebSocket to", self.addr, e))
    }

    /// Sends already serialised messages as one text frame.
    pub async fn send_text(&mut self, messages: &str) -> Result<(), BenchError> {
        self.socket
            .send(WsMessage::text(messages))
            .await
            .map_err(|e| http_err("send on the WebSocket to", self.addr, e))
    }

    /// The next array of messages (pings and other control frames skipped).
    pub async fn recv(&mut self) -> Result<Vec<Value>, BenchError> {
        let frame = self.recv_raw().await?;
        parse_array(&frame).map_err(|e| http_err("parse a frame from", self.addr, e))
    }

    /// The payload of the next text or binary frame, unparsed.
    pub async fn recv_raw(&mut self) -> Result<Bytes, BenchError> {
        loop {
            let frame = self
                .socket
                .next()
                .await
                .ok_or_else(|| http_err("WebSocket closed by", self.addr, "end of stream"))?
                .map_err(|e| http_err("read the WebSocket from", self.addr, e))?;
            match frame {
                WsMessage::Text(text) => return Ok(Bytes::from(text)),
                WsMessage::Binary(bin) => return Ok(bin),
                WsMessage::Close(_) => {
                    return Err(http_err("WebSocket closed by", self.addr, "close frame"));
                }
                _ => {}
            }
        }
    }

    /// Sends `messages` and waits (up to `timeout`) for the reply on
    /// `channel`, returning it; other messages received meanwhile are
    /// dropped (the benchmark sends nothing else before it subscribes).
    pub async fn call(
        &mut self,
        messages: &Value,
        channel: &str,
        timeout: Duration,
    ) -> Result<Value, BenchError> {
        self.send(messages).await?;
        let wait = async {
            loop {
                for m in self.recv().await? {
                    if m.get("channel").and_then(Value::as_str) == Some(channel) {
                        return Ok(m);
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            BenchError::Timeout(format!(
                "no {channel} reply from {} within {timeout:?}",
                self.addr
            ))
        })?
    }
}

/// A JSON array of messages (a lone object is taken as an array of one).
fn parse_array(body: &[u8]) -> Result<Vec<Value>, serde_json::Error> {
    match serde_json::from_slice(body)? {
        Value::Array(items) => Ok(items),
        other => Ok(vec![other]),
    }
}

/// One message received by a load loop, parsed without building a
/// `serde_json::Value`: only the fields the benchmark checks are kept, the
/// rest is skipped.
#[derive(Debug, serde::Deserialize)]
pub struct Delivery<'a> {
    /// The channel (borrowed from the frame unless it holds escapes).
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    /// `data` of a room message.
    #[serde(default)]
    pub data: Option<Stamp>,
    /// `successful` of a reply.
    #[serde(default)]
    pub successful: Option<bool>,
    /// `error` of a failed reply.
    #[serde(borrow, default)]
    pub error: Option<Cow<'a, str>>,
}

/// The `data` the publishers send: `{"t": µs since the run's epoch}`.
#[derive(Debug, serde::Deserialize)]
pub struct Stamp {
    /// When the publish was sent.
    pub t: Option<u64>,
}

/// Parses a JSON array of messages (a lone object as an array of one).
pub fn parse_deliveries(body: &[u8]) -> Result<Vec<Delivery<'_>>, serde_json::Error> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(vec![serde_json::from_slice(body)?]),
        _ => serde_json::from_slice(body),
    }
}

/// A batch of publishes of `{"t": sent_us}`, one per channel of `rooms`
/// (`/rooms/N`), as one JSON array: a Bayeux client may send several
/// messages in one request, as the CometD client batches them.
pub fn publish_batch(client_id: &str, rooms: &[usize], sent_us: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rooms.len() * (client_id.len() + 64) + 2);
    out.push('[');
    for (i, room) in rooms.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Client ids are the servers' own (hex / alphanumeric): no escaping.
        let _ = write!(
            out,
            r#"{{"channel":"/rooms/{room}","clientId":"{client_id}","data":{{"t":{sent_us}}}}}"#
        );
    }
    out.push(']');
    out
}

/// `[{"channel":"/meta/handshake",...}]` offering `transport`.
pub fn handshake(transport: Transport) -> Value {
    json!([{
        "channel": "/meta/handshake",
        "version": "1.0",
        "minimumVersion": "1.0",
        "supportedConnectionTypes": [transport.name()],
    }])
}

/// `[{"channel":"/meta/connect",...}]`.
pub fn connect(client_id: &str, transport: Transport) -> Value {
    json!([{
        "channel": "/meta/connect",
        "clientId": client_id,
        "connectionType": transport.name(),
    }])
}

/// `[{"channel":"/meta/subscribe",...}]` to `subscription`.
pub fn subscribe(client_id: &str, subscription: &str) -> Value {
    json!([{
        "channel": "/meta/subscribe",
        "clientId": client_id,
        "subscription": subscription,
    }])
}

/// The `clientId` of a successful handshake reply (first of `replies`).
pub fn client_id(replies: &[Value]) -> Result<String, BenchError> {
    let reply = replies
        .iter()
        .find(|m| m.get("channel").and_then(Value::as_str) == Some("/meta/handshake"))
        .ok_or_else(|| BenchError::Http(format!("no handshake reply in {replies:?}")))?;
    ensure_successful(reply)?;
    reply
        .get("clientId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| BenchError::Http(format!("handshake reply without clientId: {reply}")))
}

/// Fails unless `reply` says `"successful": true`.
pub fn ensure_successful(reply: &Value) -> Result<(), BenchError> {
    if reply.get("successful").and_then(Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(BenchError::Http(format!("unsuccessful reply: {reply}")))
    }
}

/// The reply on `channel` among `replies`, which must be successful.
pub fn expect_reply(replies: &[Value], channel: &str) -> Result<(), BenchError> {
    let reply = replies
        .iter()
        .find(|m| m.get("channel").and_then(Value::as_str) == Some(channel))
        .ok_or_else(|| BenchError::Http(format!("no {channel} reply in {replies:?}")))?;
    ensure_successful(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_client_id_is_found() {
        let replies = parse_array(
            br#"[{"channel":"/meta/handshake","successful":true,"clientId":"abc","version":"1.0"}]"#,
        )
        .expect("array");
        assert_eq!(client_id(&replies).expect("id"), "abc");
        let one =
            parse_array(br#"{"channel":"/meta/handshake","successful":false}"#).expect("object");
        assert!(client_id(&one).is_err());
        assert!(expect_reply(&one, "/meta/connect").is_err());
    }

    #[tokio::test]
    async fn raw_http_reads_bodies_by_length_and_refuses_the_rest() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server =
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 4096];
                let replies: [&[&[u8]]; 3] = [
                // A body split across writes, the head in two pieces.
                &[b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 7\r\n\r\n[1,", b"2,3]"],
                &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"],
                &[b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"],
            ];
                for parts in replies {
                    let n = s.read(&mut buf).await.expect("read");
                    assert!(buf[..n].starts_with(b"POST /cometd HTTP/1.1\r\n"));
                    for part in parts {
                        s.write_all(part).await.expect("write");
                        s.flush().await.expect("flush");
                        tokio::task::yield_now().await;
                    }
                }
            });
        let mut raw = RawHttp::connect(addr).await.expect("connect");
        assert_eq!(raw.post(b"[]").await.expect("a body"), b"[1,2,3]");
        assert!(raw.post(b"[]").await.is_err(), "no Content-Length");
        assert!(raw.post(b"[]").await.is_err(), "status 500");
        server.await.expect("server");
    }

    #[test]
    fn deliveries_parse_typed() {
        let d = parse_deliveries(
            br#"[{"channel":"/rooms/1","data":{"t":7},"id":"x","ext":{}},
                 {"channel":"/meta/connect","successful":false,"error":"402::session_unknown",
                  "advice":{"reconnect":"handshake"}}]"#,
        )
        .expect("array");
        assert_eq!(d[0].channel.as_deref(), Some("/rooms/1"));
        assert_eq!(d[0].data.as_ref().and_then(|s| s.t), Some(7));
        assert_eq!(d[1].successful, Some(false));
        assert_eq!(d[1].error.as_deref(), Some("402::session_unknown"));
        let one =
            parse_deliveries(br#" {"channel":"/meta/connect","successful":true}"#).expect("object");
        assert_eq!(one.len(), 1);
        assert!(parse_deliveries(b"[1]").is_err());
    }

    #[test]
    fn messages_have_the_bayeux_shape() {
        let p: Value = serde_json::from_str(&publish_batch("c1", &[3, 0], 42)).expect("JSON");
        assert_eq!(p[0]["channel"], "/rooms/3");
        assert_eq!(p[0]["clientId"], "c1");
        assert_eq!(p[0]["data"]["t"], 42);
        assert_eq!(p[1]["channel"], "/rooms/0");
        assert_eq!(p.as_array().map(Vec::len), Some(2));
        assert_eq!(
            connect("c1", Transport::WebSocket)[0]["connectionType"],
            "websocket"
        );
        assert_eq!(subscribe("c1", "/rooms/0")[0]["subscription"], "/rooms/0");
        assert_eq!(
            handshake(Transport::LongPolling)[0]["supportedConnectionTypes"][0],
            "long-polling"
        );
    }
}
