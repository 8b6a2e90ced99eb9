//! MCP message classification: what a parsed JSON-RPC message is and what it touches.
//!
//! Covers protocol versions 2025-03-26, 2025-06-18, 2025-11-25 (initialize handshake,
//! sessions) and 2026-07-28 (per-request envelope, `Mcp-Method` / `Mcp-Name` headers).
//! JSON-RPC batches (only ever legal in 2025-03-26) are refused: evaluating them element by
//! element would need per-element response filtering for no client that sends them.

use serde_json::Value;
use thiserror::Error;

use crate::jsonrpc::code;

/// MCP method names the gateway treats specially.
pub mod method {
    pub const INITIALIZE: &str = "initialize";
    pub const SERVER_DISCOVER: &str = "server/discover";
    pub const PING: &str = "ping";
    pub const TOOLS_CALL: &str = "tools/call";
    pub const TOOLS_LIST: &str = "tools/list";
    pub const RESOURCES_READ: &str = "resources/read";
    pub const RESOURCES_LIST: &str = "resources/list";
    pub const RESOURCES_TEMPLATES_LIST: &str = "resources/templates/list";
    pub const PROMPTS_GET: &str = "prompts/get";
    pub const PROMPTS_LIST: &str = "prompts/list";
}

/// MCP HTTP header names (lowercase, as Envoy presents them).
pub mod header {
    pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
    pub const METHOD: &str = "mcp-method";
    pub const NAME: &str = "mcp-name";
    pub const SESSION_ID: &str = "mcp-session-id";
}

/// Protocol revisions that use the stateless per-request envelope and routing headers.
pub const MODERN_PROTOCOL_VERSIONS: &[&str] = &["2026-07-28"];

/// What kind of governed thing a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `tools/call` — the name is the tool name.
    Tool,
    /// `resources/read` — the name is the resource URI.
    Resource,
    /// `prompts/get` — the name is the prompt name.
    Prompt,
}

impl ResourceKind {
    /// The `params` key that carries the name, mirrored by the `Mcp-Name` header.
    pub fn param_key(self) -> &'static str {
        match self {
            ResourceKind::Tool | ResourceKind::Prompt => "name",
            ResourceKind::Resource => "uri",
        }
    }

    /// Human noun for messages.
    pub fn noun(self) -> &'static str {
        match self {
            ResourceKind::Tool => "tool",
            ResourceKind::Resource => "resource",
            ResourceKind::Prompt => "prompt",
        }
    }

    /// The governed kind a method names, if any.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            method::TOOLS_CALL => Some(ResourceKind::Tool),
            method::RESOURCES_READ => Some(ResourceKind::Resource),
            method::PROMPTS_GET => Some(ResourceKind::Prompt),
            _ => None,
        }
    }

    /// The kind whose items a list method returns, with the result array's key and the
    /// item field that names each item.
    pub fn of_list_method(method: &str) -> Option<ListShape> {
        let shape = |kind, array, field| Some(ListShape { kind, array, field });
        match method {
            method::TOOLS_LIST => shape(ResourceKind::Tool, "tools", "name"),
            method::RESOURCES_LIST => shape(ResourceKind::Resource, "resources", "uri"),
            method::RESOURCES_TEMPLATES_LIST => shape(ResourceKind::Resource, "resourceTemplates", "uriTemplate"),
            method::PROMPTS_LIST => shape(ResourceKind::Prompt, "prompts", "name"),
            _ => None,
        }
    }
}

/// Where the items of a `*/list` result live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListShape {
    pub kind: ResourceKind,
    /// Key of the array inside `result`.
    pub array: &'static str,
    /// Field of each item that is matched against the policy.
    pub field: &'static str,
}

/// The governed target of a request: which tool, resource or prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: ResourceKind,
    pub name: String,
}

/// One classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: has an id and a method.
    Request { id: Value, method: String, target: Option<Target> },
    /// A notification: a method, no id.
    Notification { method: String },
    /// A response to a server-initiated request (sampling, elicitation, roots).
    Response { id: Value },
}

impl Message {
    pub fn id(&self) -> Option<&Value> {
        match self {
            Message::Request { id, .. } | Message::Response { id } => Some(id),
            Message::Notification { .. } => None,
        }
    }
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method } => Some(method),
            Message::Response { .. } => None,
        }
    }
    pub fn target(&self) -> Option<&Target> {
        match self {
            Message::Request { target, .. } => target.as_ref(),
            _ => None,
        }
    }
}

/// Why a parsed JSON value is not an acceptable MCP message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MessageError {
    #[error("JSON-RPC batches are not supported; send one message per request")]
    Batch,
    #[error("a JSON-RPC message must be an object")]
    NotObject,
    #[error("\"jsonrpc\" must be \"2.0\"")]
    Version,
    #[error("\"id\" must be a string or an integer")]
    BadId,
    #[error("\"method\" must be a non-empty string")]
    BadMethod,
    #[error("\"params\" must be a structured value (an object)")]
    ParamsNotStructured,
    #[error("\"params\" must be an object")]
    BadParams,
    #[error("a response must carry exactly one of \"result\" and \"error\"")]
    BadResponse,
    #[error("{method} requires a string params.{key}")]
    MissingName { method: String, key: &'static str },
}

impl MessageError {
    /// The JSON-RPC error code this maps to.
    pub fn code(&self) -> i64 {
        match self {
            MessageError::MissingName { .. } | MessageError::BadParams => code::INVALID_PARAMS,
            _ => code::INVALID_REQUEST,
        }
    }
}

/// Classifies a strictly parsed JSON value as one MCP message.
pub fn classify(value: &Value) -> Result<Message, MessageError> {
    let obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => return Err(MessageError::Batch),
        _ => return Err(MessageError::NotObject),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(MessageError::Version);
    }
    let id = match obj.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(id @ Value::Number(n)) if n.is_i64() || n.is_u64() => Some(id.clone()),
        Some(_) => return Err(MessageError::BadId),
    };
    match obj.get("method") {
        Some(Value::String(method)) if !method.is_empty() => {
            let params = match obj.get("params") {
                None => None,
                Some(Value::Object(p)) => Some(p),
                Some(Value::Array(_)) => return Err(MessageError::BadParams),
                Some(_) => return Err(MessageError::ParamsNotStructured),
            };
            match id {
                None => Ok(Message::Notification { method: method.clone() }),
                Some(id) => {
                    let target = match ResourceKind::of_method(method) {
                        None => None,
                        Some(kind) => {
                            let key = kind.param_key();
                            let name = params.and_then(|p| p.get(key)).and_then(Value::as_str);
                            match name {
                                Some(name) => Some(Target { kind, name: name.to_string() }),
                                None => return Err(MessageError::MissingName { method: method.clone(), key }),
                            }
                        }
                    };
                    Ok(Message::Request { id, method: method.clone(), target })
                }
            }
        }
        Some(_) => Err(MessageError::BadMethod),
        None => {
            let id = id.ok_or(MessageError::BadResponse)?;
            if obj.contains_key("result") == obj.contains_key("error") {
                return Err(MessageError::BadResponse);
            }
            Ok(Message::Response { id })
        }
    }
}

/// The `_meta` key carrying a 2026-07-28 request's protocol version (the per-request envelope).
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// The protocol version a message's per-request envelope declares, if it has one:
/// `params._meta["io.modelcontextprotocol/protocolVersion"]`. `Some(None)` when the key is
/// present but not a string.
pub fn envelope_protocol_version(value: &Value) -> Option<Option<&str>> {
    value.get("params")?.get("_meta")?.get(PROTOCOL_VERSION_META_KEY).map(Value::as_str)
}

/// Decodes an `Mcp-Name` header value: verbatim, or `=?base64?...?=` wrapped UTF-8 for
/// values that do not survive as plain header text. A malformed wrapper yields `None`, so a
/// corrupt header never matches a body value by accident.
pub fn decode_header_value(raw: &str) -> Option<String> {
    use base64::Engine;
    let payload = match raw.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        None => return Some(raw.to_string()),
        Some(p) => p,
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
    // Only canonical encodings are accepted (the encoder never emits anything else).
    if base64::engine::general_purpose::STANDARD.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_tool_call() {
        let m = classify(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{}}}));
        assert_eq!(
            m,
            Ok(Message::Request {
                id: json!(1),
                method: "tools/call".into(),
                target: Some(Target { kind: ResourceKind::Tool, name: "get_customer".into() })
            })
        );
    }

    #[test]
    fn classifies_resources_and_prompts() {
        let r = classify(&json!({"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"crm://stats"}}));
        assert_eq!(r.unwrap().target(), Some(&Target { kind: ResourceKind::Resource, name: "crm://stats".into() }));
        let p = classify(&json!({"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p"}}));
        assert_eq!(p.unwrap().target(), Some(&Target { kind: ResourceKind::Prompt, name: "p".into() }));
    }

    #[test]
    fn classifies_notifications_and_responses() {
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            Ok(Message::Notification { method: "notifications/initialized".into() })
        );
        assert_eq!(classify(&json!({"jsonrpc":"2.0","id":5,"result":{}})), Ok(Message::Response { id: json!(5) }));
        assert_eq!(classify(&json!({"jsonrpc":"2.0","id":5,"result":{},"error":{}})), Err(MessageError::BadResponse));
        assert_eq!(classify(&json!({"jsonrpc":"2.0","result":{}})), Err(MessageError::BadResponse));
    }

    #[test]
    fn refuses_invalid_shapes() {
        let cases = [
            (json!([{"jsonrpc":"2.0","id":1,"method":"ping"}]), MessageError::Batch),
            (json!("x"), MessageError::NotObject),
            (json!({"jsonrpc":"1.0","id":1,"method":"ping"}), MessageError::Version),
            (json!({"id":1,"method":"ping"}), MessageError::Version),
            (json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}), MessageError::BadId),
            (json!({"jsonrpc":"2.0","id":null,"method":"ping"}), MessageError::BadId),
            (json!({"jsonrpc":"2.0","id":{},"method":"ping"}), MessageError::BadId),
            (json!({"jsonrpc":"2.0","id":1,"method":7}), MessageError::BadMethod),
            (json!({"jsonrpc":"2.0","id":1,"method":""}), MessageError::BadMethod),
            (json!({"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}), MessageError::BadParams),
            (json!({"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}), MessageError::ParamsNotStructured),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}),
                MessageError::MissingName { method: "tools/call".into(), key: "name" },
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}),
                MessageError::MissingName { method: "tools/call".into(), key: "name" },
            ),
        ];
        for (value, want) in cases {
            assert_eq!(classify(&value), Err(want), "{value}");
        }
    }

    #[test]
    fn reads_the_envelope_version() {
        let meta = |m: Value| json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":m}});
        assert_eq!(envelope_protocol_version(&meta(json!({PROTOCOL_VERSION_META_KEY: "2026-07-28"}))), Some(Some("2026-07-28")));
        assert_eq!(envelope_protocol_version(&meta(json!({PROTOCOL_VERSION_META_KEY: 1}))), Some(None));
        assert_eq!(envelope_protocol_version(&meta(json!({}))), None);
        assert_eq!(envelope_protocol_version(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})), None);
    }

    #[test]
    fn decodes_header_values() {
        assert_eq!(decode_header_value("get_customer").as_deref(), Some("get_customer"));
        assert_eq!(decode_header_value("=?base64?w6k=?=").as_deref(), Some("é"));
        assert_eq!(decode_header_value("=?base64?w6k?=").as_deref(), None);
        assert_eq!(decode_header_value("=?base64?!!!?=").as_deref(), None);
    }
}
