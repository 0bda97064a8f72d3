//! `websocket`: JSON arrays of messages in text frames, both ways, as the
//! CometD and Faye clients frame them.
//!
//! A `/meta/connect` is held on the socket up to `timeout`; meanwhile
//! messages for the client are pushed as they arrive (clients using the ack
//! extension get them with the connect reply instead, which is then released
//! at once).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::client::Client;
use crate::engine::{Bayeux, PendingConnect, Transport};
use crate::message::{Json, join_array, parse_messages};
use crate::security::RequestContext;

/// WebSocket close code for a frame that is not Bayeux JSON.
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;

/// Accepts the upgrade with the configured frame size limit.
pub(crate) fn upgrade(bayeux: Bayeux, ws: WebSocketUpgrade, ctx: RequestContext) -> Response {
    let max = bayeux.config().max_request_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(bayeux, socket, ctx))
}

struct Held {
    pending: PendingConnect,
    deadline: Instant,
}

async fn run(bayeux: Bayeux, socket: WebSocket, ctx: RequestContext) {
    let (mut tx, mut rx) = socket.split();
    let cfg = bayeux.config();
    let idle = cfg.timeout() + cfg.max_interval();
    let mut bound: Option<Arc<Client>> = None;
    let mut held: Option<Held> = None;
    let mut idle_deadline = Instant::now() + idle;
    loop {
        let client = bound.clone();
        let notified = client.as_ref().map(|c| c.notify.notified());
        tokio::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        // Deliver what is queued, release a superseded or due connect.
        let mut out: Vec<Json> = Vec::new();
        if let Some(c) = &client {
            if let Some(msgs) = bayeux.drain_for_push(c) {
                out.extend(msgs.into_iter().map(Json::Shared));
            }
            if let Some(h) = &held {
                let release = {
                    let inner = c.inner.lock();
                    inner.connect_gen != h.pending.generation
                        || inner.removed
                        || !inner.queue.is_empty()
                        || Instant::now() >= h.deadline
                };
                if release && let Some(h) = held.take() {
                    out.extend(bayeux.finish_connect(h.pending, &ctx));
                }
            }
        }
        if !out.is_empty()
            && tx
                .send(WsMessage::Text(join_array(&out).into()))
                .await
                .is_err()
        {
            return;
        }
        let wake_at = held
            .as_ref()
            .map_or(idle_deadline, |h| h.deadline.min(idle_deadline));
        tokio::select! {
            _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } else { std::future::pending().await } } => {}
            _ = tokio::time::sleep_until(wake_at) => {
                if held.is_none() && Instant::now() >= idle_deadline {
                    let _ = tx.send(WsMessage::Close(None)).await;
                    return;
                }
            }
            frame = rx.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(s) => s.into(),
                        Err(_) => return close_bad(&mut tx).await,
                    },
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                };
                idle_deadline = Instant::now() + idle;
                let messages = match parse_messages(text.as_bytes(), cfg.max_messages_per_request) {
                    Ok(m) => m,
                    Err(_) => return close_bad(&mut tx).await,
                };
                if messages.is_empty() {
                    continue;
                }
                let mut processed = bayeux.process(messages, &ctx, Transport::WebSocket, None);
                // A held connect ended by this batch (disconnect) is answered
                // before the batch, as clients expect it settled first.
                let mut out = Vec::new();
                if processed.connect.is_none() && held.as_ref().is_some_and(|h| {
                    let inner = h.pending.client.inner.lock();
                    inner.removed || inner.connect_gen != h.pending.generation
                }) && let Some(h) = held.take()
                {
                    out.extend(bayeux.finish_connect(h.pending, &ctx));
                }
                out.append(&mut processed.replies);
                if let Some(pending) = processed.connect.take() {
                    if let Some(h) = held.take() {
                        out.extend(bayeux.finish_connect(h.pending, &ctx));
                    }
                    if bound.as_ref().is_none_or(|b| !Arc::ptr_eq(b, &pending.client)) {
                        bound = Some(pending.client.clone());
                    }
                    if pending.hold.is_zero() {
                        out.extend(bayeux.finish_connect(pending, &ctx));
                    } else {
                        let deadline = Instant::now() + pending.hold;
                        held = Some(Held { pending, deadline });
                    }
                }
                if !out.is_empty() && tx.send(WsMessage::Text(join_array(&out).into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn close_bad<S>(tx: &mut S)
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    let _ = tx
        .send(WsMessage::Close(Some(CloseFrame {
            code: CLOSE_UNSUPPORTED_DATA,
            reason: "invalid Bayeux JSON".into(),
        })))
        .await;
}
