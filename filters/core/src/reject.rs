//! The one place request-path failures become a client-facing answer: an HTTP status, a
//! JSON-RPC error body carrying the request's id when known, and the headers that go with
//! it (`WWW-Authenticate` on 401). Messages name the offending value or tool and the
//! reason, never policy internals or credentials.

use serde_json::Value;

use crate::jsonrpc::{code, error_body};

/// A refused request (or a response the gateway cannot pass on).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// HTTP status sent to the client.
    pub status: u16,
    /// JSON-RPC error code.
    pub code: i64,
    /// Human-readable message (safe to show to the caller).
    pub message: String,
    /// The id of the request this answers, when it was parsed.
    pub id: Option<Value>,
    /// Extra response headers (lowercase names).
    pub headers: Vec<(&'static str, String)>,
    /// JSON-RPC `error.data`, when the client can act on details (e.g. when to retry).
    pub data: Option<Value>,
}

impl Rejection {
    pub fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), id: None, headers: Vec::new(), data: None }
    }

    /// Attaches the id of the request being answered.
    pub fn with_id(mut self, id: Option<&Value>) -> Self {
        self.id = id.cloned();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Attaches JSON-RPC `error.data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The JSON-RPC error response body.
    pub fn body(&self) -> Vec<u8> {
        let Some(data) = &self.data else {
            return error_body(self.id.as_ref(), self.code, &self.message);
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": self.id.clone().unwrap_or(Value::Null),
            "error": { "code": self.code, "message": self.message, "data": data },
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// All response headers, content type first.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", "application/json".to_string())];
        h.extend(self.headers.iter().cloned());
        h
    }

    /// 400, with the given JSON-RPC code.
    pub fn bad_request(code: i64, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// A call the caller may not make: refused by policy, or blocked by a redaction rule
    /// (JSON-RPC `FORBIDDEN`). Every such refusal is built here, so its HTTP status is
    /// chosen in one place.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, code::FORBIDDEN, message)
    }

    /// 404 for paths the gateway does not serve.
    pub fn not_found(path: &str) -> Self {
        Self::new(404, code::INVALID_REQUEST, format!("no MCP server is served at {}", printable(path)))
    }

    /// 413 for bodies over the configured limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(413, code::INVALID_REQUEST, format!("request body exceeds the {limit}-byte limit"))
    }

    /// 429 for a call refused by a rate limit, quota or in-flight limit: `Retry-After` in
    /// whole seconds (≥ 1) and `error.data = {limit, retry_after_secs}` so clients can back
    /// off without parsing the message. `limit` names the rule (or `in_flight`).
    pub fn rate_limited(limit: &str, retry_after_secs: u64, message: impl Into<String>) -> Self {
        let retry = retry_after_secs.max(1);
        Self::new(429, code::RATE_LIMITED, message)
            .with_header("retry-after", retry.to_string())
            .with_data(serde_json::json!({ "limit": limit, "retry_after_secs": retry }))
    }

    /// 503 when the gateway cannot read or update its own limit counters: the call is
    /// refused (fail closed), never let through uncounted.
    pub fn limiter_unavailable(what: &str) -> Self {
        Self::new(503, code::INTERNAL_ERROR, format!("the gateway could not check {what}; retry later"))
            .with_header("retry-after", "1".to_string())
    }
}

/// A value safe to echo in a message: at most 128 characters, control characters escaped.
pub fn printable(value: &str) -> String {
    let mut out: String = value.chars().take(128).flat_map(char::escape_debug).collect();
    if value.chars().count() > 128 {
        out.push('…');
    }
    out
}
