//! The one place request-path failures become a client-facing answer: an HTTP status, a
//! JSON-RPC error body carrying the request's id when known, and the headers that go with
//! it (`WWW-Authenticate` on 401). Messages name the offending value or tool and the
//! reason, never policy internals or credentials.
//!
//! HTTP statuses are chosen for what MCP clients do with them (checked against the Python
//! SDK in both protocol eras, the TypeScript SDK and the Inspector CLI):
//! - a call the caller may not make ([`Rejection::forbidden`], [`Rejection::blocked`]) and a
//!   request the upstream could not answer ([`Rejection::upstream_failed`]) are answered
//!   with HTTP **200** and the JSON-RPC error: every client then surfaces the gateway's
//!   message as the call's error. On 401 and 403 MCP clients start their OAuth flow (the
//!   Inspector reports `auth_required`), and the TypeScript SDK and the Inspector show any
//!   other non-2xx answer as an HTTP error around the raw body;
//! - 401 (with `WWW-Authenticate`) stays: missing or bad credentials *should* start the
//!   client's authorization flow;
//! - a request that is not readable MCP (400, 413, 415, 404, 405), a foreign Origin (403,
//!   as MCP requires) or Host (421) and a rate limit (429 with `Retry-After`, which the
//!   Inspector reads) keep their HTTP meaning.
//!
//! [`Refusal`] says why, independently of the status: audit and metrics classify by it.

use serde_json::Value;

use crate::jsonrpc::{code, error_body};

/// HTTP status of a policy denial or a redaction block: 200, the JSON-RPC error in the
/// body (see the module docs for why not 403).
pub const DENIED_STATUS: u16 = ANSWERED_STATUS;

/// HTTP status of an answer that is a JSON-RPC error for a request the client can
/// correlate by id.
const ANSWERED_STATUS: u16 = 200;

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
    /// Why the request was refused (what audit and metrics call it).
    pub refusal: Refusal,
}

/// Why the gateway refused a request, whatever HTTP status carries the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a request the gateway can read or route: malformed, wrong type, encoding,
    /// method or path, header mismatch.
    Invalid,
    /// No valid credentials.
    Unauthenticated,
    /// A call the caller may not make (policy), or over a size guardrail.
    Denied,
    /// A request carrying a value of a blocking redaction detector.
    Blocked,
    /// A Host or Origin the listener does not accept (DNS rebinding, cross-site pages).
    ForeignOrigin,
    /// A rate limit, quota or in-flight limit.
    RateLimited,
    /// The gateway could not check a limit, or the upstream could not answer.
    Unavailable,
}

impl Rejection {
    /// A refusal of an unreadable request ([`Refusal::Invalid`]); the constructors below
    /// build every other kind.
    pub fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            id: None,
            headers: Vec::new(),
            data: None,
            refusal: Refusal::Invalid,
        }
    }

    fn of(refusal: Refusal, status: u16, code: i64, message: impl Into<String>) -> Self {
        Self { refusal, ..Self::new(status, code, message) }
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

    /// A call the caller may not make, refused by policy (JSON-RPC `FORBIDDEN`). Every
    /// denial status is [`DENIED_STATUS`], chosen here (see the module docs).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::of(Refusal::Denied, DENIED_STATUS, code::FORBIDDEN, message)
    }

    /// A call that needs a person's approval first (JSON-RPC `URL_ELICITATION_REQUIRED`,
    /// [`DENIED_STATUS`]; see [`crate::approval`]).
    pub fn approval_required(message: impl Into<String>) -> Self {
        Self::of(Refusal::Denied, DENIED_STATUS, code::URL_ELICITATION_REQUIRED, message)
    }

    /// A request blocked by a redaction rule (JSON-RPC `FORBIDDEN`, [`DENIED_STATUS`]).
    pub fn blocked(message: impl Into<String>) -> Self {
        Self::of(Refusal::Blocked, DENIED_STATUS, code::FORBIDDEN, message)
    }

    /// 401 with the `WWW-Authenticate` challenge: clients start their authorization flow.
    pub fn unauthenticated(message: impl Into<String>, challenge: String) -> Self {
        Self::of(Refusal::Unauthenticated, 401, code::UNAUTHENTICATED, message)
            .with_header("www-authenticate", challenge)
    }

    /// 403 for an `Origin` the listener does not accept: MCP requires 403 for an invalid
    /// `Origin` (see [`crate::origin`]).
    pub fn foreign_origin(code: i64, message: impl Into<String>) -> Self {
        Self::of(Refusal::ForeignOrigin, 403, code, message)
    }

    /// 421 Misdirected Request for a `Host` the listener does not answer to (see
    /// [`crate::origin`] for why not 403).
    pub fn foreign_host(code: i64, message: impl Into<String>) -> Self {
        Self::of(Refusal::ForeignOrigin, 421, code, message)
    }

    /// 413 for `tools/call` arguments over their limit (JSON-RPC `INVALID_PARAMS`).
    pub fn arguments_too_large(message: impl Into<String>) -> Self {
        Self::of(Refusal::Denied, 413, code::INVALID_PARAMS, message)
    }

    /// The upstream could not answer a request (unreachable, reset, timed out, or an error
    /// page instead of MCP; JSON-RPC `UPSTREAM_UNAVAILABLE`). With the request's id: HTTP
    /// 200, so clients show the message as the call's error; without one (notifications,
    /// the GET stream, DELETE) the upstream's 5xx `status` is kept: there is nothing to
    /// correlate the error with.
    pub fn upstream_failed(status: u16, id: Option<&Value>, message: impl Into<String>) -> Self {
        let status = if id.is_some() { ANSWERED_STATUS } else { status };
        Self::of(Refusal::Unavailable, status, code::UPSTREAM_UNAVAILABLE, message).with_id(id)
    }

    /// 404 for paths the gateway does not serve.
    pub fn not_found(path: &str) -> Self {
        Self::new(404, code::INVALID_REQUEST, format!("no MCP server is served at {}", printable(path)))
    }

    /// 413 for bodies over the configured limit.
    pub fn too_large(limit: u64) -> Self {
        Self::of(Refusal::Denied, 413, code::INVALID_REQUEST, format!("request body exceeds the {limit}-byte limit"))
    }

    /// 429 for a call refused by a rate limit, quota or in-flight limit: `Retry-After` in
    /// whole seconds (≥ 1) and `error.data = {limit, retry_after_secs}` so clients can back
    /// off without parsing the message. `limit` names the rule (or `in_flight`).
    pub fn rate_limited(limit: &str, retry_after_secs: u64, message: impl Into<String>) -> Self {
        let retry = retry_after_secs.max(1);
        Self::of(Refusal::RateLimited, 429, code::RATE_LIMITED, message)
            .with_header("retry-after", retry.to_string())
            .with_data(serde_json::json!({ "limit": limit, "retry_after_secs": retry }))
    }

    /// 503 when the gateway cannot read or update its own limit counters: the call is
    /// refused (fail closed), never let through uncounted.
    pub fn limiter_unavailable(what: &str) -> Self {
        Self::of(
            Refusal::Unavailable,
            503,
            code::INTERNAL_ERROR,
            format!("the gateway could not check {what}; retry later"),
        )
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
