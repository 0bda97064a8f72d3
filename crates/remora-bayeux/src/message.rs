//! Bayeux messages: parsing a request body (one message or an array) and
//! serialising replies.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Bayeux meta channel names.
pub mod meta {
    /// `/meta/handshake`.
    pub const HANDSHAKE: &str = "/meta/handshake";
    /// `/meta/connect`.
    pub const CONNECT: &str = "/meta/connect";
    /// `/meta/subscribe`.
    pub const SUBSCRIBE: &str = "/meta/subscribe";
    /// `/meta/unsubscribe`.
    pub const UNSUBSCRIBE: &str = "/meta/unsubscribe";
    /// `/meta/disconnect`.
    pub const DISCONNECT: &str = "/meta/disconnect";
}

/// One Bayeux message. Fields the protocol does not name are ignored on input.
///
/// `id`, `data`, `ext`, `advice` and `subscription` keep their JSON form, so a
/// string or numeric `id` is echoed as it came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The channel the message is sent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The client-chosen message id, echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The Bayeux client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Application payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Extension fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Value>,
    /// Advice (reconnect, interval, timeout, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<Value>,
    /// The connection type of a `/meta/connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<String>,
    /// Channel name or array of names of a (un)subscribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    /// Protocol version (handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Minimum protocol version (handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_version: Option<String>,
    /// Connection types (handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_connection_types: Option<Vec<String>>,
    /// Outcome of a meta message or publish (replies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful: Option<bool>,
    /// Error in the `code:args:message` form (replies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Optional timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Message {
    /// A message on `channel` carrying `data`.
    pub fn new(channel: impl Into<String>, data: Value) -> Self {
        Message {
            channel: Some(channel.into()),
            data: Some(data),
            ..Message::default()
        }
    }

    /// The channel, or `""` when absent.
    pub fn channel(&self) -> &str {
        self.channel.as_deref().unwrap_or("")
    }

    /// The `ext` field `name`, if `ext` is an object holding it.
    pub fn ext_field(&self, name: &str) -> Option<&Value> {
        self.ext.as_ref()?.get(name)
    }

    /// Sets the `ext` field `name`, turning `ext` into an object if needed.
    pub fn set_ext_field(&mut self, name: &str, value: Value) {
        let ext = self
            .ext
            .get_or_insert_with(|| Value::Object(Default::default()));
        if !ext.is_object() {
            *ext = Value::Object(Default::default());
        }
        if let Value::Object(map) = ext {
            map.insert(name.to_owned(), value);
        }
    }

    /// The reply skeleton for this message: same channel and id.
    pub fn reply(&self) -> Message {
        Message {
            channel: self.channel.clone(),
            id: self.id.clone(),
            ..Message::default()
        }
    }

    /// Marks a reply failed with `error` (`code:args:message`).
    pub fn fail(mut self, error: impl Into<String>) -> Message {
        self.successful = Some(false);
        self.error = Some(error.into());
        self
    }

    /// Serialises to JSON text.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and `Value`s cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Why a request body could not be turned into messages.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The body is not a JSON message or array of messages.
    #[error("invalid Bayeux JSON")]
    Json(#[source] serde_json::Error),
    /// The body is neither an object nor an array.
    #[error("a Bayeux body must be a JSON object or array")]
    NotMessages,
    /// More messages than `max_messages_per_request`.
    #[error("too many messages in one request (limit {limit})")]
    TooMany {
        /// The configured limit.
        limit: usize,
    },
}

/// Parses a body holding one message object or an array of them.
pub fn parse_messages(body: &[u8], max_messages: usize) -> Result<Vec<Message>, ParseError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let messages = match first {
        Some(b'[') => serde_json::from_slice::<Vec<Message>>(body).map_err(ParseError::Json)?,
        Some(b'{') => vec![serde_json::from_slice::<Message>(body).map_err(ParseError::Json)?],
        _ => return Err(ParseError::NotMessages),
    };
    if messages.len() > max_messages {
        return Err(ParseError::TooMany {
            limit: max_messages,
        });
    }
    Ok(messages)
}

/// One serialised message on its way out: a reply built for one request, or
/// a delivery serialised once at publish and shared by every subscriber it
/// was queued for (so it is never copied per subscriber before the final
/// JSON array is written).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    /// Built for this request.
    Own(String),
    /// Shared with other clients' queues.
    Shared(Arc<str>),
}

impl AsRef<str> for Json {
    fn as_ref(&self) -> &str {
        match self {
            Json::Own(s) => s,
            Json::Shared(s) => s,
        }
    }
}

/// Joins already-serialised messages into one JSON array.
pub fn join_array<S: AsRef<str>>(items: &[S]) -> String {
    let len = items.iter().map(|s| s.as_ref().len() + 1).sum::<usize>() + 2;
    let mut out = String::with_capacity(len);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_object_and_array() {
        let one = parse_messages(br#"{"channel":"/meta/handshake","id":7}"#, 10).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, Some(Value::from(7)));
        let many = parse_messages(br#" [{"channel":"/a"},{"channel":"/b","x":1}]"#, 10).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[1].channel(), "/b");
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(parse_messages(b"[", 10), Err(ParseError::Json(_))));
        assert!(matches!(
            parse_messages(b"42", 10),
            Err(ParseError::NotMessages)
        ));
        assert!(matches!(
            parse_messages(b"", 10),
            Err(ParseError::NotMessages)
        ));
        assert!(matches!(
            parse_messages(b"[null]", 10),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(
            parse_messages(b"[{},{},{}]", 2),
            Err(ParseError::TooMany { limit: 2 })
        ));
    }

    #[test]
    fn serialises_camel_case_and_skips_none() {
        let mut m = Message::new("/a", Value::from(1));
        m.client_id = Some("c".into());
        assert_eq!(m.to_json(), r#"{"channel":"/a","clientId":"c","data":1}"#);
        assert_eq!(join_array(&["1", "2"]), "[1,2]");
        assert_eq!(join_array::<&str>(&[]), "[]");
        let shared: Arc<str> = Arc::from("{\"a\":1}");
        let joined = join_array(&[Json::Shared(shared.clone()), Json::Own("2".into())]);
        assert_eq!(joined, r#"[{"a":1},2]"#);
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn ext_fields() {
        let mut m = Message::default();
        m.set_ext_field("ack", Value::Bool(true));
        assert_eq!(m.ext_field("ack"), Some(&Value::Bool(true)));
    }
}
