//! A fast MCP upstream for Meshgate's load benchmark (`make bench`).
//!
//! It answers one JSON-RPC message per HTTP/1.1 POST with an `application/json` reply, on
//! one thread by default, so that in a load test the proxy — not the upstream — is what
//! is measured:
//! - `initialize` → server info and an `Mcp-Session-Id`; `ping` → `{}`;
//! - notifications and responses → 202 with no body;
//! - `tools/list` → [`TOOLS`];
//! - `tools/call` → one text item holding [`MARKER`] (the load generator checks it) and one
//!   e-mail address, [`EMAIL`] (sparse personal data, so a redaction rule has real work);
//! - any other method → JSON-RPC `-32601`; a body that is not JSON → 400 with `-32700`.
//!
//! It is not a complete MCP server (no SSE, no session state): just enough, fast. The reply
//! logic is the pure [`reply`]; [`serve`] wraps it in hyper.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Text every successful `tools/call` result contains.
pub const MARKER: &str = "meshgate-bench-ok";
/// The personal data in every `tools/call` result (masked as `[EMAIL]` by a redaction rule).
pub const EMAIL: &str = "alice@example.com";
/// The tools `tools/list` returns.
pub const TOOLS: &[&str] = &["get_item", "search_items", "delete_item"];

const PROTOCOL_VERSION: &str = "2025-11-25";
const SESSION_ID: &str = "bench-session";
const METHOD_NOT_FOUND: i64 = -32601;
const PARSE_ERROR: i64 = -32700;

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Empty for 202.
    pub body: Vec<u8>,
    /// Set on `initialize`, like a stateful MCP server would.
    pub session_id: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Self {
        Self { status, body: serde_json::to_vec(body).unwrap_or_default(), session_id: None }
    }
}

/// The answer to one POSTed JSON-RPC message.
pub fn reply(body: &[u8]) -> Reply {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return Reply::json(400, &error(&Value::Null, PARSE_ERROR, "body is not a JSON object"));
    };
    let (Some(id), Some(method)) = (message.get("id"), message.get("method").and_then(Value::as_str)) else {
        // A notification, or a response to a server request: accepted, nothing to say.
        return if message.is_object() {
            Reply { status: 202, body: Vec::new(), session_id: None }
        } else {
            Reply::json(400, &error(&Value::Null, PARSE_ERROR, "body is not a JSON object"))
        };
    };
    let result = match method {
        "initialize" => json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "meshgate-bench-upstream", "version": env!("CARGO_PKG_VERSION")},
        }),
        "ping" => json!({}),
        "tools/list" => {
            let tools: Vec<Value> = TOOLS
                .iter()
                .map(|name| {
                    json!({
                        "name": name,
                        "description": "A benchmark tool.",
                        "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}},
                    })
                })
                .collect();
            json!({ "tools": tools })
        }
        "tools/call" => {
            let tool = message.pointer("/params/name").and_then(Value::as_str).unwrap_or("?");
            let text = format!(
                "{MARKER}: {tool} done. Item c-001 (order 2026-11-0042, 3 lines, total 129.90 EUR) is owned by \
                 {EMAIL}; status active, last change 2026-11-21T10:00:00Z."
            );
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        other => return Reply::json(200, &error(id, METHOD_NOT_FOUND, &format!("method {other} not found"))),
    };
    let mut out = Reply::json(200, &json!({"jsonrpc": "2.0", "id": id, "result": result}));
    if method == "initialize" {
        out.session_id = Some(SESSION_ID);
    }
    out
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Serves [`reply`] on every connection `listener` accepts, until the task is dropped or
/// accepting fails.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Replies are small and each is written at once: do not wait for more.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // A client that goes away mid-request is not an error worth reporting here.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(respond(Reply { status: 405, body: Vec::new(), session_id: None }));
    }
    let answer = match request.into_body().collect().await {
        Ok(body) => reply(&body.to_bytes()),
        Err(_) => Reply { status: 400, body: Vec::new(), session_id: None },
    };
    Ok(respond(answer))
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let has_body = !reply.body.is_empty();
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if has_body {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(id) = reply.session_id {
        response.headers_mut().insert("mcp-session-id", HeaderValue::from_static(id));
    }
    response
}

#[cfg(test)]
mod tests;
