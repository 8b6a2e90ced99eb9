//! MCP message classification: what a parsed JSON-RPC message is and what it touches.
//!
//! Covers protocol versions 2025-03-26, 2025-06-18, 2025-11-25 (initialize handshake,
//! sessions) and 2026-07-28 (per-request envelope, `Mcp-Method` / `Mcp-Name` headers).
//! JSON-RPC batches (only ever legal in 2025-03-26) are refused: evaluating them element by
//! element would need per-element response filtering for no client that sends them.

use std::borrow::Cow;

use serde_json::Value;
use thiserror::Error;

use crate::jsonrpc::{self, code, JsonKind, ParseError, RawJson};

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
    /// 2025-03-26 … 2025-11-25: `params.uri` names a resource.
    pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
    pub const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
    /// `params.ref` names a prompt (`ref/prompt`) or a resource (template) (`ref/resource`).
    pub const COMPLETION_COMPLETE: &str = "completion/complete";
    /// 2026-07-28: `params.notifications.resourceSubscriptions` names resources.
    pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
    /// Every task method (`tasks/get`, `tasks/result`, `tasks/list`, `tasks/cancel`,
    /// `tasks/update`, and any later one) starts with this.
    pub const TASKS_PREFIX: &str = "tasks/";
}

/// `params.ref.type` values of `completion/complete`.
pub mod reference {
    pub const PROMPT: &str = "ref/prompt";
    pub const RESOURCE: &str = "ref/resource";
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
            method::RESOURCES_TEMPLATES_LIST => shape(ResourceKind::Resource, RESOURCE_TEMPLATES_ARRAY, "uriTemplate"),
            method::PROMPTS_LIST => shape(ResourceKind::Prompt, "prompts", "name"),
            _ => None,
        }
    }
}

/// The result array of `resources/templates/list`.
pub const RESOURCE_TEMPLATES_ARRAY: &str = "resourceTemplates";

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
    /// A request: has an id and a method. `target` is what `tools/call`, `resources/read`
    /// and `prompts/get` name (mirrored by `Mcp-Name`); `references` are the other tools,
    /// resources or prompts a request names (`completion/complete` refs, subscriptions),
    /// each authorized like a target.
    Request { id: Value, method: String, target: Option<Target>, references: Vec<Target> },
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
    /// Every tool, resource or prompt the message names: the target, then the references.
    pub fn named(&self) -> impl Iterator<Item = &Target> {
        let (target, references) = match self {
            Message::Request { target, references, .. } => (target.as_ref(), references.as_slice()),
            _ => (None, &[][..]),
        };
        target.into_iter().chain(references)
    }
}

/// Whether `method` names a tool, resource or prompt the policy governs (its requests must
/// carry an id: a notification could be neither authorized nor answered).
pub fn names_targets(method: &str) -> bool {
    ResourceKind::of_method(method).is_some()
        || matches!(
            method,
            method::RESOURCES_SUBSCRIBE
                | method::RESOURCES_UNSUBSCRIBE
                | method::COMPLETION_COMPLETE
                | method::SUBSCRIPTIONS_LISTEN
        )
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
    /// A governed method without an id: it could not be authorized by target nor answered,
    /// and an upstream that dispatches on the method alone would run it.
    #[error("{method} must be a request with an \"id\", not a notification")]
    GovernedNotification { method: String },
    #[error("completion/complete requires params.ref with type \"ref/prompt\" (and a string name) or \"ref/resource\" (and a string uri)")]
    BadReference,
    #[error("subscriptions/listen: params.notifications.resourceSubscriptions must be an array of strings")]
    BadSubscriptions,
    /// Tasks are refused: a task's result is fetched by task id alone, which the gateway
    /// cannot bind to the caller and tool that created the task (the upstream sees every
    /// caller as the gateway), so it could carry another caller's or a denied tool's output,
    /// past the redaction of the tool that produced it.
    #[error("{what} is not supported through the gateway: task results cannot be bound to the caller and tool that created them")]
    Tasks { what: String },
}

impl MessageError {
    /// The JSON-RPC error code this maps to.
    pub fn code(&self) -> i64 {
        match self {
            MessageError::MissingName { .. }
            | MessageError::BadParams
            | MessageError::BadReference
            | MessageError::BadSubscriptions => code::INVALID_PARAMS,
            MessageError::Tasks { .. } => code::METHOD_NOT_FOUND,
            _ => code::INVALID_REQUEST,
        }
    }
}

/// A request body read once, strictly: the message and what the header checks need.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadMessage {
    pub message: Message,
    /// See [`envelope_protocol_version`].
    envelope_version: Option<Option<String>>,
    /// Length in bytes of `params.arguments` exactly as sent, when present.
    pub arguments_bytes: Option<usize>,
}

impl ReadMessage {
    /// The same message read from a body whose only change is the value of the target's
    /// name field (`params.name` / `params.uri`), now `name`: what [`read_message`] returns
    /// for that body, without reading it again. Everything else (id, method, references,
    /// envelope, argument size) is the same bytes.
    pub fn with_target_name(mut self, name: &str) -> Self {
        if let Message::Request { target: Some(target), .. } = &mut self.message {
            target.name = name.to_string();
        }
        self
    }

    /// The same message with the name of its one reference (a `completion/complete`'s
    /// `params.ref`) replaced by `name`, as [`Self::with_target_name`] does for the target.
    pub fn with_reference_name(mut self, name: &str) -> Self {
        if let Message::Request { references, .. } = &mut self.message {
            if let [only] = references.as_mut_slice() {
                only.name = name.to_string();
            }
        }
        self
    }

    /// The protocol version the per-request envelope declares, as
    /// [`envelope_protocol_version`] reports it.
    pub fn envelope_version(&self) -> Option<Option<&str>> {
        self.envelope_version.as_ref().map(Option::as_deref)
    }
}

/// Why a request body is not one acceptable MCP message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ReadError {
    /// Not strict JSON.
    #[error(transparent)]
    Json(#[from] ParseError),
    /// JSON, but not an acceptable message; `id` is the message's id when it has a usable
    /// one, so the error can answer it.
    #[error("{error}")]
    Message { error: MessageError, id: Option<Value> },
}

impl ReadError {
    /// The JSON-RPC error code this maps to.
    pub fn code(&self) -> i64 {
        match self {
            ReadError::Json(e) => e.code(),
            ReadError::Message { error, .. } => error.code(),
        }
    }
}

/// The request path's one read of a body: [`jsonrpc::validate_strict`], then the fields
/// [`classify`] and [`envelope_protocol_version`] look at, read in place — the rest of the
/// document (tool arguments) is validated but never built. Same answers as
/// `classify(&parse_strict(body)?)`.
pub fn read_message(body: &[u8]) -> Result<ReadMessage, ReadError> {
    let doc = jsonrpc::validate_strict(body)?;
    read_message_in(&doc)
}

/// [`read_message`] on a body already validated (for a caller that reads more of the same
/// document, e.g. where a field lies).
pub fn read_message_in(doc: &jsonrpc::StrictJson<'_>) -> Result<ReadMessage, ReadError> {
    let raw = doc.root();
    // One walk of the envelope and one of `params` find everything read here.
    let (message, meta, arguments) = classify_view(raw).map_err(|error| ReadError::Message {
        error,
        id: raw.get("id").filter(|id| matches!(id.kind(), JsonKind::String | JsonKind::Number)).map(|id| id.to_value()),
    })?;
    let envelope_version = meta.and_then(|m| m.get(PROTOCOL_VERSION_META_KEY)).map(|v| v.as_str().map(Cow::into_owned));
    let arguments_bytes = arguments.map(|a| a.text().len());
    Ok(ReadMessage { message, envelope_version, arguments_bytes })
}

/// Classifies a strictly parsed JSON value as one MCP message.
pub fn classify(value: &Value) -> Result<Message, MessageError> {
    classify_view(value).map(|(message, _, _)| message)
}

/// The protocol version a message's per-request envelope declares, if it has one:
/// `params._meta["io.modelcontextprotocol/protocolVersion"]`. `Some(None)` when the key is
/// present but not a string.
pub fn envelope_protocol_version(value: &Value) -> Option<Option<&str>> {
    value.get("params")?.get("_meta")?.get(PROTOCOL_VERSION_META_KEY).map(Value::as_str)
}

/// The `_meta` key carrying a 2026-07-28 request's protocol version (the per-request envelope).
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// Read access to a JSON value, whether a built `Value` or validated text read in place, so
/// the classification rules are written once.
trait JsonView<'a>: Copy {
    fn kind(self) -> JsonKind;
    /// Several members at once (one walk for validated text); `None` for non-objects.
    fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Self>; N];
    fn string(self) -> Option<Cow<'a, str>>;
    fn to_value(self) -> Value;
    /// For numbers: an integer (`i64` or `u64`), not a float.
    fn is_integer(self) -> bool;
    /// The elements of an array; `None` for other values.
    fn items(self) -> Option<Vec<Self>>;
}

impl<'a> JsonView<'a> for &'a Value {
    fn kind(self) -> JsonKind {
        match self {
            Value::Object(_) => JsonKind::Object,
            Value::Array(_) => JsonKind::Array,
            Value::String(_) => JsonKind::String,
            Value::Number(_) => JsonKind::Number,
            Value::Bool(_) => JsonKind::Bool,
            Value::Null => JsonKind::Null,
        }
    }
    fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Self>; N] {
        keys.map(|k| self.as_object().and_then(|o| o.get(k)))
    }
    fn string(self) -> Option<Cow<'a, str>> {
        self.as_str().map(Cow::Borrowed)
    }
    fn to_value(self) -> Value {
        self.clone()
    }
    fn is_integer(self) -> bool {
        self.is_i64() || self.is_u64()
    }
    fn items(self) -> Option<Vec<Self>> {
        self.as_array().map(|a| a.iter().collect())
    }
}

impl<'a> JsonView<'a> for RawJson<'a> {
    fn kind(self) -> JsonKind {
        RawJson::kind(&self)
    }
    fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Self>; N] {
        RawJson::fields(&self, keys)
    }
    fn string(self) -> Option<Cow<'a, str>> {
        self.as_str()
    }
    fn to_value(self) -> Value {
        RawJson::to_value(&self)
    }
    fn is_integer(self) -> bool {
        // `-0` and `1.0` are floats to serde_json: ask it rather than guess from the text.
        self.kind() == JsonKind::Number
            && (self.plain_integer().is_some()
                || RawJson::to_value(&self).as_number().is_some_and(|n| n.is_i64() || n.is_u64()))
    }
    fn items(self) -> Option<Vec<Self>> {
        (self.kind() == JsonKind::Array).then(|| self.elements().collect())
    }
}

/// The classification rules, once for both views. Also returns `params._meta` (whatever
/// the message), for the envelope version, and `params.arguments`, both read in the same
/// walk of `params`.
#[allow(clippy::type_complexity)]
fn classify_view<'a, J: JsonView<'a>>(value: J) -> Result<(Message, Option<J>, Option<J>), MessageError> {
    match value.kind() {
        JsonKind::Object => {}
        JsonKind::Array => return Err(MessageError::Batch),
        _ => return Err(MessageError::NotObject),
    }
    let [jsonrpc, id, method, params, result, error] =
        value.fields(["jsonrpc", "id", "method", "params", "result", "error"]);
    let [name, uri, meta, reference, notifications, task, arguments] =
        params.map_or([None; 7], |p| p.fields(["name", "uri", "_meta", "ref", "notifications", "task", "arguments"]));
    if jsonrpc.and_then(J::string).as_deref() != Some("2.0") {
        return Err(MessageError::Version);
    }
    let id = match id {
        None => None,
        Some(id) if id.kind() == JsonKind::String || id.is_integer() => Some(id.to_value()),
        Some(_) => return Err(MessageError::BadId),
    };
    let message = match method.map(J::string) {
        Some(Some(method)) if !method.is_empty() => {
            match params.map(J::kind) {
                None | Some(JsonKind::Object) => {}
                Some(JsonKind::Array) => return Err(MessageError::BadParams),
                Some(_) => return Err(MessageError::ParamsNotStructured),
            }
            if method.starts_with(method::TASKS_PREFIX) {
                return Err(MessageError::Tasks { what: format!("method {method}") });
            }
            if id.is_some() && task.is_some() {
                return Err(MessageError::Tasks { what: format!("a task-augmented {method} (params.task)") });
            }
            match id {
                None if names_targets(&method) => {
                    return Err(MessageError::GovernedNotification { method: method.into_owned() })
                }
                None => Message::Notification { method: method.into_owned() },
                Some(id) => {
                    let target = match ResourceKind::of_method(&method) {
                        None => None,
                        Some(kind) => {
                            let key = kind.param_key();
                            let name = match kind {
                                ResourceKind::Resource => uri,
                                ResourceKind::Tool | ResourceKind::Prompt => name,
                            };
                            match name.and_then(J::string) {
                                Some(name) => Some(Target { kind, name: name.into_owned() }),
                                None => return Err(MessageError::MissingName { method: method.into_owned(), key }),
                            }
                        }
                    };
                    let references = references_of(&method, uri, reference, notifications)?;
                    Message::Request { id, method: method.into_owned(), target, references }
                }
            }
        }
        Some(_) => return Err(MessageError::BadMethod),
        None => {
            let id = id.ok_or(MessageError::BadResponse)?;
            if result.is_some() == error.is_some() {
                return Err(MessageError::BadResponse);
            }
            Message::Response { id }
        }
    };
    Ok((message, meta, arguments))
}

/// The tools, resources and prompts a request names besides its target.
fn references_of<'a, J: JsonView<'a>>(
    method: &str,
    uri: Option<J>,
    reference: Option<J>,
    notifications: Option<J>,
) -> Result<Vec<Target>, MessageError> {
    let resource = |name: Cow<'a, str>| Target { kind: ResourceKind::Resource, name: name.into_owned() };
    match method {
        method::RESOURCES_SUBSCRIBE | method::RESOURCES_UNSUBSCRIBE => match uri.and_then(J::string) {
            Some(uri) => Ok(vec![resource(uri)]),
            None => Err(MessageError::MissingName { method: method.to_string(), key: "uri" }),
        },
        method::COMPLETION_COMPLETE => {
            let [kind, name, uri] = reference.map_or([None; 3], |r| r.fields(["type", "name", "uri"]));
            let target = match kind.and_then(J::string).as_deref() {
                Some(reference::PROMPT) => {
                    name.and_then(J::string).map(|n| Target { kind: ResourceKind::Prompt, name: n.into_owned() })
                }
                Some(reference::RESOURCE) => uri.and_then(J::string).map(resource),
                _ => None,
            };
            target.map(|t| vec![t]).ok_or(MessageError::BadReference)
        }
        method::SUBSCRIPTIONS_LISTEN => {
            let [subscriptions, task_ids] =
                notifications.map_or([None; 2], |n| n.fields(["resourceSubscriptions", "taskIds"]));
            if task_ids.is_some() {
                return Err(MessageError::Tasks { what: "a subscription to task notifications (taskIds)".into() });
            }
            let Some(subscriptions) = subscriptions else {
                return Ok(Vec::new());
            };
            let items = subscriptions.items().ok_or(MessageError::BadSubscriptions)?;
            items.into_iter().map(|u| u.string().map(resource).ok_or(MessageError::BadSubscriptions)).collect()
        }
        _ => Ok(Vec::new()),
    }
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

/// Encodes a value for `Mcp-Name` or `Mcp-Param-*` as the spec's Value Encoding (and the
/// official SDKs) do: verbatim when it is visible ASCII or space without leading or
/// trailing whitespace and does not look like the sentinel, else `=?base64?…?=`.
pub fn encode_header_value(value: &str) -> String {
    use base64::Engine;
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value
        && !(value.starts_with("=?base64?") && value.ends_with("?="));
    if plain {
        return value.to_string();
    }
    format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_tool_call() {
        let m = classify(
            &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{}}}),
        );
        assert_eq!(
            m,
            Ok(Message::Request {
                id: json!(1),
                method: "tools/call".into(),
                target: Some(Target { kind: ResourceKind::Tool, name: "get_customer".into() }),
                references: vec![],
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
        // Governed methods are requests only: without an id they cannot be authorized.
        for method in ["tools/call", "resources/read", "prompts/get"] {
            let m = classify(&json!({"jsonrpc":"2.0","method":method,"params":{"name":"x","uri":"y"}}));
            assert_eq!(m, Err(MessageError::GovernedNotification { method: method.into() }));
            assert_eq!(MessageError::GovernedNotification { method: method.into() }.code(), code::INVALID_REQUEST);
        }
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
        assert_eq!(
            envelope_protocol_version(&meta(json!({PROTOCOL_VERSION_META_KEY: "2026-07-28"}))),
            Some(Some("2026-07-28"))
        );
        assert_eq!(envelope_protocol_version(&meta(json!({PROTOCOL_VERSION_META_KEY: 1}))), Some(None));
        assert_eq!(envelope_protocol_version(&meta(json!({}))), None);
        assert_eq!(envelope_protocol_version(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})), None);
    }

    /// `read_message` must answer exactly what `parse_strict` + `classify` +
    /// `envelope_protocol_version` answer.
    fn assert_read_agrees(body: &[u8]) {
        let expected = match jsonrpc::parse_strict(body) {
            Err(e) => Err(ReadError::Json(e)),
            Ok(v) => match classify(&v) {
                Err(error) => Err(ReadError::Message {
                    error,
                    id: v.get("id").filter(|id| id.is_string() || id.is_number()).cloned(),
                }),
                Ok(message) => Ok(ReadMessage {
                    message,
                    envelope_version: envelope_protocol_version(&v).map(|o| o.map(String::from)),
                    // Checked on its own below: a tree cannot tell how many bytes were sent.
                    arguments_bytes: None,
                }),
            },
        };
        let read = read_message(body).map(|r| ReadMessage { arguments_bytes: None, ..r });
        assert_eq!(read, expected, "{}", String::from_utf8_lossy(body));
    }

    #[test]
    fn arguments_bytes_are_the_arguments_as_sent() {
        let body =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments": {"a" : [1, "}"]} }}"#;
        assert_eq!(read_message(body).unwrap().arguments_bytes, Some(r#"{"a" : [1, "}"]}"#.len()));
        let none = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#;
        assert_eq!(read_message(none).unwrap().arguments_bytes, None);
    }

    #[test]
    fn read_message_agrees_with_classify() {
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{"a":[1,{"b":"}"}]}}}"#,
            r#"{"params":{"arguments":{"name":"evil"},"name":"get"},"method":"tools/call","id":"x","jsonrpc":"2.0"}"#,
            r#" { "jsonrpc" : "2.0" , "id" : 7 , "method" : "tools/call" , "params" : { "name" : "a\"b" } } "#,
            r#"{"jsonrpc":"2.0","id":1,"\u006dethod":"tools/call","params":{"n\u0061me":"x\u00e9\/"}}"#,
            r#"{"jsonrpc":"2\u002e0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":-0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1e2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":"","method":""}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"crm://x","name":"n"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"uri":"crm://x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/x","params":7}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":null}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":1},"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":3}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol\/protocolVersion":"2026\u002d07-28"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":null}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"v"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":[1]}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#""2.0""#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","id":2}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call""#,
        ];
        for body in bodies {
            assert_read_agrees(body.as_bytes());
        }
        assert_read_agrees(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}");
    }

    proptest::proptest! {
        /// Random envelopes: any mix of fields, in any order, with values of any kind.
        #[test]
        fn read_message_agrees_on_random_envelopes(
            fields in proptest::collection::vec((0usize..9, 0usize..12), 0..7),
            pretty in proptest::bool::ANY,
        ) {
            let keys = ["jsonrpc", "id", "method", "params", "result", "error", "name", "\\u006dethod", "_meta"];
            let values = [
                r#""2.0""#, "1", "-0", "2.5", r#""tools/call""#, r#""prompts/get""#, "null", "[]",
                r#"{"name":"get_x","arguments":{"name":"y"}}"#, r#"{"uri":"crm://a"}"#,
                r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"n"}"#, r#""""#,
            ];
            let sep = if pretty { ",\n  " } else { "," };
            let members: Vec<String> = fields.iter().map(|(k, v)| format!(r#""{}":{}"#, keys[*k], values[*v])).collect();
            let body = format!("{{{}}}", members.join(sep));
            assert_read_agrees(body.as_bytes());
        }
    }

    #[test]
    fn decodes_header_values() {
        assert_eq!(decode_header_value("get_customer").as_deref(), Some("get_customer"));
        assert_eq!(decode_header_value("=?base64?w6k=?=").as_deref(), Some("é"));
        assert_eq!(decode_header_value("=?base64?w6k?=").as_deref(), None);
        assert_eq!(decode_header_value("=?base64?!!!?=").as_deref(), None);
    }

    #[test]
    fn encodes_header_values_as_the_spec_does() {
        for (value, want) in [
            ("us-west1", "us-west1"),
            ("[CREDIT_CARD]", "[CREDIT_CARD]"),
            ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
            (" padded ", "=?base64?IHBhZGRlZCA=?="),
            ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
            ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
        ] {
            assert_eq!(encode_header_value(value), want, "{value:?}");
            assert_eq!(decode_header_value(&encode_header_value(value)).as_deref(), Some(value));
        }
    }
}
