//! Virtual servers in the session-based MCP eras (2025-11-25 and earlier): one client
//! session over one session per backing server ([`crate::session_seal`]).
//!
//! - `initialize` is answered by the filter: it is sent to every backing server (one
//!   callout each), and the client gets the merged capabilities, a negotiated protocol
//!   version and ONE `Mcp-Session-Id` sealing every backend's session id, the consumer and
//!   the virtual server. Protocol version: the one the client asked for when every backend
//!   answered with it; otherwise the oldest a backend answered with. Each backend keeps
//!   the version it negotiated itself (sealed too, sent as its `MCP-Protocol-Version`).
//! - Every later request carries that id. It is unsealed and checked (this consumer, this
//!   virtual server, not expired): a missing id is 400, an id that does not unseal (forged,
//!   altered, another key) or is expired or from another virtual server is 404 (the spec's
//!   answer to an unknown session: clients initialize again), and another consumer's id is
//!   403 (a replay). Nothing is forwarded before this check.
//! - Calls (`tools/call`, `prompts/get`) are routed by prefix as in the 2026-07-28 era, with
//!   the backend's own `Mcp-Session-Id` (removed for a stateless backend) and protocol
//!   version; the client's id never reaches a backend.
//! - Lists are the fan-out of [`super::virtual_fanout`], each callout carrying its
//!   backend's session. Notifications (`notifications/initialized`, `cancelled`, ...) go to
//!   every backend of the session, answered 202. `ping` is answered here.
//! - Server→client requests (elicitation, sampling) on a call's SSE answer get their id
//!   rewritten to name the backend ([`tag_server_request`]); the client's answer (a POST
//!   carrying a JSON-RPC response) is routed to that backend with the original id restored,
//!   with its original JSON type, at its exact place in the body ([`untag_answer`]). An id
//!   that does not name a backend of the session is refused.
//! - A backend answering 404 (its session ended) makes the client's request fail with 404,
//!   so the client initializes again.
//! - DELETE ends every backend session (one DELETE callout each) and answers 200.
//! - GET (the server→client stream) is not offered: 405, as the spec allows.

use serde_json::{json, Value};

use crate::jsonrpc::{self, code, JsonKind, StrictJson};
use crate::mcp::{self, header, method, Message, ReadMessage};
use crate::policy::Policy;
use crate::redact::RedactionCounts;
use crate::reject::{printable, Rejection};
use crate::session_seal::{BackendSession, Misuse, Session, SessionKeys};
use crate::sse::{EventData, Rewritten, SseRewriter};
use crate::virtual_server::{Upstream, VirtualServer, TARGET_HEADER};

use super::virtual_fanout::{
    CalloutRequest, CalloutResponse, FanOut, MergedCapabilities, Omission, FAN_OUT_TIMEOUT_MS,
};
use super::{media_type, BodyDecision, Gateway, HeadDecision, PendingRequest, RequestHead};
use crate::identity::Consumer;

/// Prefix of a server→client request id rewritten to name its backend:
/// `mg1.<server>.<n|s>.<original>` (`n`: the original was a number, `s`: a string).
const TAG_PREFIX: &str = "mg1.";

/// HTTP status of a request carrying another consumer's session id.
const REPLAY_STATUS: u16 = 403;

/// The protocol versions of the session-based eras, newest first. Only these are accepted
/// from a backend's `initialize` answer.
pub const SESSION_PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// What a virtual server answers itself in the session-based eras, from callouts (none
/// for `ping`).
#[derive(Debug)]
pub struct SessionOp {
    pub virtual_server: String,
    request_id: Option<Value>,
    /// One callout per backend, in backing-server order.
    pub callouts: Vec<(String, CalloutRequest)>,
    /// Backends left out before any callout, and why.
    skipped: Vec<Omission>,
    kind: OpKind,
}

#[derive(Debug)]
enum OpKind {
    /// `initialize`: issue a session.
    Initialize { consumer: String, requested: String, issued_secs: u64, selection: Box<VirtualServer> },
    /// A list: the merged answer of [`FanOut`], unless a backend's session ended.
    List(Box<FanOut>),
    /// A notification to every backend: 202.
    Notify,
    /// DELETE: 200.
    End,
    /// Answered without callouts.
    Local(Vec<u8>),
}

/// The answer to a [`SessionOp`].
#[derive(Debug)]
pub struct LocalAnswer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Backends left out of it (logged and counted as fan-out omissions).
    pub omitted: Vec<Omission>,
}

impl SessionOp {
    /// A request the filter answers itself with `result` (no callout): `ping`.
    pub(super) fn answered(virtual_server: &VirtualServer, id: Option<&Value>, result: Value) -> SessionOp {
        SessionOp {
            virtual_server: virtual_server.name.clone(),
            request_id: id.cloned(),
            callouts: Vec::new(),
            skipped: Vec::new(),
            kind: OpKind::Local(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string().into_bytes()),
        }
    }

    /// The answer, from `answers[i]` for `self.callouts[i]`.
    pub fn answer(
        &self,
        answers: &[Result<CalloutResponse, String>],
        keys: Option<&SessionKeys>,
        policy: &Policy,
        counts: &mut RedactionCounts,
    ) -> LocalAnswer {
        let mut omitted = self.skipped.clone();
        let json = || vec![("content-type", "application/json".to_string())];
        match &self.kind {
            OpKind::Local(body) => LocalAnswer { status: 200, headers: json(), body: body.clone(), omitted },
            OpKind::Notify | OpKind::End => {
                for ((server, _), answer) in self.callouts.iter().zip(answers) {
                    match answer {
                        Ok(r) if (200..300).contains(&r.status) => {}
                        Ok(r) => {
                            omitted.push(Omission { server: server.clone(), reason: format!("HTTP {}", r.status) })
                        }
                        Err(e) => omitted.push(Omission { server: server.clone(), reason: e.clone() }),
                    }
                }
                let status = if matches!(self.kind, OpKind::Notify) { 202 } else { 200 };
                LocalAnswer { status, headers: Vec::new(), body: Vec::new(), omitted }
            }
            OpKind::List(fan_out) => {
                let ended = self
                    .callouts
                    .iter()
                    .zip(answers)
                    .find(|((_, request), answer)| {
                        matches!(answer, Ok(r) if r.status == 404) && request_has_session(request)
                    })
                    .map(|((server, _), _)| server.clone());
                if let Some(server) = ended {
                    let r = session_ended(&server, self.request_id.as_ref());
                    return LocalAnswer { status: r.status, headers: json(), body: r.body(), omitted };
                }
                let (body, more) = fan_out.answer(answers, policy, counts);
                LocalAnswer { status: 200, headers: json(), body, omitted: more }
            }
            OpKind::Initialize { consumer, requested, issued_secs, selection } => {
                let Some(keys) = keys else {
                    let body = jsonrpc::error_body(self.request_id.as_ref(), code::INTERNAL_ERROR, "no session key");
                    return LocalAnswer { status: 500, headers: json(), body, omitted };
                };
                let mut backends = Vec::new();
                let mut capabilities = MergedCapabilities::default();
                for ((server, _), answer) in self.callouts.iter().zip(answers) {
                    let read = answer
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|r| read_initialize(r, self.request_id.as_ref()));
                    match read {
                        Ok((backend, offered)) => {
                            capabilities.add(selection, server, &offered);
                            backends.push(BackendSession { server: server.clone(), ..backend });
                        }
                        Err(reason) => omitted.push(Omission { server: server.clone(), reason }),
                    }
                }
                if backends.is_empty() {
                    let r = Rejection::upstream_failed(
                        502,
                        self.request_id.as_ref(),
                        format!(
                            "virtual server \"{}\" could not initialize any of its servers: {}",
                            self.virtual_server,
                            omitted
                                .iter()
                                .map(|o| format!("{} ({})", o.server, o.reason))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    return LocalAnswer { status: r.status, headers: json(), body: r.body(), omitted };
                }
                let version = negotiate(requested, &backends);
                let session = Session {
                    virtual_server: self.virtual_server.clone(),
                    consumer: consumer.clone(),
                    issued_ns: issued_secs.saturating_mul(1_000_000_000),
                    protocol_version: version.clone(),
                    backends,
                };
                let capabilities = capabilities.to_json();
                let mut result = json!({
                    "protocolVersion": version,
                    "capabilities": capabilities,
                    "serverInfo": {"name": self.virtual_server, "version": env!("CARGO_PKG_VERSION")},
                });
                if let Some(description) = &selection.description {
                    result["instructions"] = Value::String(description.clone());
                }
                let body = json!({"jsonrpc": "2.0", "id": self.request_id, "result": result}).to_string().into_bytes();
                let mut headers = json();
                headers.push((header::SESSION_ID, keys.seal(&session)));
                LocalAnswer { status: 200, headers, body, omitted }
            }
        }
    }
}

/// The protocol version the client is answered with: `requested` when every backend
/// answered with it, else the oldest version a backend answered with.
fn negotiate(requested: &str, backends: &[BackendSession]) -> String {
    if backends.iter().all(|b| b.protocol_version == requested) {
        return requested.to_string();
    }
    backends.iter().map(|b| b.protocol_version.as_str()).min().unwrap_or(requested).to_string()
}

fn request_has_session(request: &CalloutRequest) -> bool {
    request.headers.iter().any(|(k, _)| k == header::SESSION_ID)
}

/// The 404 that makes the client initialize again when `server`'s session ended.
pub(super) fn session_ended(server: &str, id: Option<&Value>) -> Rejection {
    Rejection::new(
        404,
        code::INVALID_REQUEST,
        format!("the session of backing server \"{server}\" ended; initialize a new session"),
    )
    .with_id(id)
}

/// A backend's answer to `initialize`: its session (server name filled in by the caller)
/// and capabilities.
fn read_initialize(response: &CalloutResponse, id: Option<&Value>) -> Result<(BackendSession, Value), String> {
    if !(200..300).contains(&response.status) || response.status == 202 {
        return Err(format!("HTTP {}", response.status));
    }
    let session_id = response
        .headers
        .iter()
        .find(|(k, _)| k == header::SESSION_ID)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if session_id.as_deref().is_some_and(|s| !s.bytes().all(|b| (0x21..=0x7e).contains(&b))) {
        return Err("a session id with characters outside visible ASCII".to_string());
    }
    let message = response_message(response)?;
    let value: Value = serde_json::from_slice(&message).map_err(|_| "an answer that is not valid JSON".to_string())?;
    if value.get("id") != id {
        return Err("an answer to another request".to_string());
    }
    if let Some(error) = value.get("error") {
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
        return Err(format!("JSON-RPC error: {}", printable(message)));
    }
    let result =
        value.get("result").filter(|r| r.is_object()).ok_or_else(|| "an answer without a result".to_string())?;
    let version = result.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
    let Some(version) = SESSION_PROTOCOL_VERSIONS.iter().find(|v| **v == version) else {
        return Err(format!("protocol version \"{}\" is not one of the session-based eras", printable(version)));
    };
    let capabilities = result.get("capabilities").cloned().unwrap_or(Value::Null);
    Ok((BackendSession { server: String::new(), session_id, protocol_version: version.to_string() }, capabilities))
}

/// The one JSON-RPC response in a callout's answer: a JSON body, or the first response
/// event of an SSE stream.
fn response_message(response: &CalloutResponse) -> Result<Vec<u8>, String> {
    if response.headers.iter().any(|(k, v)| k == "content-encoding" && !v.trim().eq_ignore_ascii_case("identity")) {
        return Err("an encoded answer".to_string());
    }
    let content_type = response.headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| media_type(v));
    match content_type.as_deref() {
        Some("application/json") => Ok(response.body.clone()),
        Some("text/event-stream") => {
            let mut answer: Option<Vec<u8>> = None;
            let mut find = |data: EventData<'_>| {
                if let EventData::Text(text) = data {
                    let is_response = jsonrpc::validate_strict(text.as_bytes()).ok().is_some_and(|doc| {
                        let root = doc.root();
                        root.get("result").is_some() || root.get("error").is_some()
                    });
                    if is_response && answer.is_none() {
                        answer = Some(text.as_bytes().to_vec());
                    }
                }
                Rewritten::Keep
            };
            let mut sse = SseRewriter::new();
            sse.feed(&response.body, &mut find);
            sse.finish(&mut find);
            answer.ok_or_else(|| "its event stream carried no answer".to_string())
        }
        other => Err(format!("an answer of type {}", other.unwrap_or("(none)"))),
    }
}

impl Gateway {
    /// The keys, or the refusal of the session-based eras when none are configured.
    fn session_keys(&self, virtual_server: &VirtualServer, id: Option<&Value>) -> Result<&SessionKeys, Rejection> {
        self.config.virtual_session_keys.as_ref().ok_or_else(|| {
            Rejection::bad_request(
                code::INVALID_REQUEST,
                format!(
                    "virtual server \"{}\" speaks only MCP {} (send MCP-Protocol-Version): the session-based protocol versions need virtual_session_key_env in the registry",
                    virtual_server.name,
                    mcp::MODERN_PROTOCOL_VERSIONS.join(", ")
                ),
            )
            .with_id(id)
        })
    }

    /// The session the request's `Mcp-Session-Id` seals, checked for this caller.
    pub(super) fn open_session(
        &self,
        virtual_server: &VirtualServer,
        consumer: &str,
        session_header: Option<&str>,
        now_secs: u64,
        id: Option<&Value>,
    ) -> Result<Session, Rejection> {
        let keys = self.session_keys(virtual_server, id)?;
        let Some(sealed) = session_header else {
            return Err(Rejection::bad_request(
                code::INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            )
            .with_id(id));
        };
        let not_found = |why: &str| {
            Rejection::new(404, code::INVALID_REQUEST, format!("Session not found: the Mcp-Session-Id {why}"))
                .with_id(id)
        };
        let session = keys.unseal(sealed).map_err(|e| not_found(&e.to_string()))?;
        match session.check(&virtual_server.name, consumer, now_secs.saturating_mul(1_000_000_000)) {
            Ok(()) => Ok(session),
            Err(Misuse::OtherVirtualServer) => Err(not_found("was issued on another virtual server")),
            Err(Misuse::Expired) => Err(not_found("has expired")),
            Err(Misuse::OtherConsumer) => {
                // Authenticated, but the session is someone else's: 403 (not the 200 of a
                // policy denial: this is no call the caller could make at all).
                let mut r = Rejection::forbidden(
                    "the Mcp-Session-Id was issued to another consumer; initialize your own session",
                )
                .with_id(id);
                r.status = REPLAY_STATUS;
                Err(r)
            }
        }
    }

    /// Step 2 for a virtual server's request in the session-based eras (the message `read`
    /// from `body`, its headers already checked against it).
    pub(super) fn on_session_era_body(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        doc: &StrictJson<'_>,
        read: &ReadMessage,
    ) -> Result<BodyDecision, Rejection> {
        let message = &read.message;
        let id = message.id();
        // Refused at once when no key is configured (the session-based eras are off).
        self.session_keys(virtual_server, id)?;
        if message.method() == Some(method::INITIALIZE) {
            return self.plan_initialize(pending, virtual_server, body, read).map(BodyDecision::Session);
        }
        let session = self.open_session(
            virtual_server,
            &pending.consumer.name,
            pending.session_id.as_deref(),
            pending.now_secs,
            id,
        )?;
        match message {
            Message::Request { method, .. } => match method.as_str() {
                method::PING => Ok(BodyDecision::Session(SessionOp::answered(virtual_server, id, json!({})))),
                method::TOOLS_LIST | method::PROMPTS_LIST | method::RESOURCES_LIST | method::RESOURCES_TEMPLATES_LIST => {
                    let mut fan_out = self.plan_fan_out(pending, virtual_server, body, read.clone())?;
                    let mut callouts = Vec::new();
                    let mut skipped = Vec::new();
                    let mut kept = Vec::new();
                    for backend in std::mem::take(&mut fan_out.backends) {
                        match session.backend(&backend.server) {
                            Some(own) => {
                                let mut request = backend.request.clone();
                                with_session_headers(&mut request, own);
                                callouts.push((backend.server.clone(), request.clone()));
                                let mut backend = backend;
                                backend.request = request;
                                kept.push(backend);
                            }
                            None => skipped.push(Omission {
                                server: backend.server.clone(),
                                reason: "it did not initialize in this session".to_string(),
                            }),
                        }
                    }
                    fan_out.backends = kept;
                    fan_out.skipped.extend(skipped);
                    Ok(BodyDecision::Session(SessionOp {
                        virtual_server: virtual_server.name.clone(),
                        request_id: id.cloned(),
                        callouts,
                        skipped: Vec::new(),
                        kind: OpKind::List(Box::new(fan_out)),
                    }))
                }
                method::TOOLS_CALL | method::PROMPTS_GET | method::RESOURCES_READ | method::COMPLETION_COMPLETE => {
                    let mut exchange = self.route_virtual_call(pending, virtual_server, body, doc, read)?;
                    let server = exchange.server.clone();
                    let Some(own) = session.backend(&server) else {
                        return Err(not_in_session(&server, id));
                    };
                    exchange.request_header_rewrites.extend(session_header_rewrites(own));
                    exchange.session_backend = Some(server);
                    Ok(BodyDecision::Forward(exchange))
                }
                other => Err(Rejection::new(
                    200,
                    code::METHOD_NOT_FOUND,
                    format!(
                        "method {} is not supported on virtual server \"{}\"; it answers initialize, ping, the list methods, tools/call and prompts/get (names prefixed {}), resources/read and completion/complete",
                        printable(other),
                        virtual_server.name,
                        virtual_server.prefixes().join(", ")
                    ),
                )
                .with_id(id)),
            },
            Message::Notification { .. } => {
                self.plan_notify(pending, virtual_server, body, read, &session).map(BodyDecision::Session)
            }
            Message::Response { .. } => {
                self.route_answer(pending, virtual_server, body, doc, read, &session).map(BodyDecision::Forward)
            }
        }
    }

    /// `initialize`: one callout per backing server with the client's message (governed as
    /// through the server's own endpoint).
    fn plan_initialize(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        read: &ReadMessage,
    ) -> Result<SessionOp, Rejection> {
        let id = read.message.id();
        let requested = jsonrpc::validate_strict(body)
            .ok()
            .and_then(|doc| doc.root().get("params")?.get("protocolVersion")?.as_str().map(|v| v.into_owned()))
            .unwrap_or_default();
        let mut callouts = Vec::new();
        let mut skipped = Vec::new();
        for server in virtual_server.servers() {
            match self.backend_message(pending, server, body, read) {
                Ok((upstream, forwarded)) => {
                    let request = session_callout(upstream, "POST", Some(&forwarded), None);
                    callouts.push((server.clone(), request));
                }
                Err(reason) => skipped.push(Omission { server: server.clone(), reason }),
            }
        }
        Ok(SessionOp {
            virtual_server: virtual_server.name.clone(),
            request_id: id.cloned(),
            callouts,
            skipped,
            kind: OpKind::Initialize {
                consumer: pending.consumer.name.clone(),
                requested,
                issued_secs: pending.now_secs,
                selection: Box::new(virtual_server.clone()),
            },
        })
    }

    /// A notification: to every backend of the session.
    fn plan_notify(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        read: &ReadMessage,
        session: &Session,
    ) -> Result<SessionOp, Rejection> {
        let mut callouts = Vec::new();
        let mut skipped = Vec::new();
        for own in &session.backends {
            match self.backend_message(pending, &own.server, body, read) {
                Ok((upstream, forwarded)) => {
                    callouts.push((own.server.clone(), session_callout(upstream, "POST", Some(&forwarded), Some(own))));
                }
                Err(reason) => skipped.push(Omission { server: own.server.clone(), reason }),
            }
        }
        Ok(SessionOp {
            virtual_server: virtual_server.name.clone(),
            request_id: None,
            callouts,
            skipped,
            kind: OpKind::Notify,
        })
    }

    /// DELETE on a virtual server: ends every backend session.
    pub(super) fn plan_session_end(&self, virtual_server: &VirtualServer, session: &Session) -> SessionOp {
        let mut callouts = Vec::new();
        let mut skipped = Vec::new();
        for own in session.backends.iter().filter(|b| b.session_id.is_some()) {
            match self.config.upstreams.get(&own.server) {
                Some(upstream) if !upstream.credentials => {
                    callouts.push((own.server.clone(), session_callout(upstream, "DELETE", None, Some(own))));
                }
                _ => skipped.push(Omission {
                    server: own.server.clone(),
                    reason: "no callout route to it (upstreams)".to_string(),
                }),
            }
        }
        SessionOp {
            virtual_server: virtual_server.name.clone(),
            request_id: None,
            callouts,
            skipped,
            kind: OpKind::End,
        }
    }

    /// How to reach `server` with a callout, and the body its own endpoint would forward
    /// (governed as through `<route_prefix><server>`). `Err`: why it cannot be called.
    fn backend_message<'c>(
        &'c self,
        pending: &PendingRequest,
        server: &str,
        body: &[u8],
        read: &ReadMessage,
    ) -> Result<(&'c Upstream, Vec<u8>), String> {
        let upstream = match self.config.upstreams.get(server) {
            Some(u) if !u.credentials => u,
            Some(_) => {
                return Err(
                    "its upstream credential is injected by its route and is not available to callouts".to_string()
                )
            }
            None => return Err("the configuration does not say how to reach it (upstreams)".to_string()),
        };
        let mut own = pending.clone();
        own.via_virtual = false;
        own.server = server.to_string();
        let exchange = self.govern_read(&own, body, read.clone()).map_err(|r| r.message)?;
        Ok((upstream, exchange.rewritten_request.unwrap_or_else(|| body.to_vec())))
    }

    /// The client's answer to a server→client request: to the backend its id names, with
    /// the original id restored.
    fn route_answer(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        doc: &StrictJson<'_>,
        read: &ReadMessage,
        session: &Session,
    ) -> Result<super::Exchange, Rejection> {
        let id = read.message.id();
        let unmappable = || {
            Rejection::bad_request(
                code::INVALID_REQUEST,
                format!(
                    "the response's id {} answers no request of a server of virtual server \"{}\"",
                    printable(&id.map(Value::to_string).unwrap_or_default()),
                    virtual_server.name
                ),
            )
            .with_id(id)
        };
        let (server, restored) = untag_answer(body, doc).ok_or_else(unmappable)?;
        if !virtual_server.servers().contains(&server) {
            return Err(unmappable());
        }
        let Some(own) = session.backend(&server) else {
            return Err(not_in_session(&server, id));
        };
        let restored_read = mcp::read_message(&restored).map_err(|_| unmappable())?;
        let mut backend = pending.clone();
        backend.via_virtual = false;
        backend.server = server.clone();
        let mut exchange = self.govern_read(&backend, &restored, restored_read)?;
        if exchange.rewritten_request.is_none() {
            exchange.rewritten_request = Some(restored);
        }
        exchange.request_header_rewrites.extend(session_header_rewrites(own));
        exchange.request_header_rewrites.push((TARGET_HEADER.to_string(), Some(server.clone())));
        exchange.session_backend = Some(server);
        Ok(exchange)
    }
}

impl Gateway {
    /// A GET or DELETE on a virtual server. DELETE ends the session (when sessions are
    /// configured); the GET stream is not offered (405).
    pub(super) fn on_virtual_head(
        &self,
        head: RequestHead<'_>,
        name: &str,
        consumer: &Consumer,
        now_secs: u64,
    ) -> HeadDecision {
        let Some(virtual_server) = self.config.virtual_servers.get(name) else {
            return HeadDecision::Reject(Rejection::new(
                500,
                code::INTERNAL_ERROR,
                "virtual server configuration changed",
            ));
        };
        if self.config.virtual_session_keys.is_none() {
            return HeadDecision::Reject(super::virtual_call::method_not_allowed(head.method));
        }
        match head.method {
            "DELETE" if !head.end_of_stream => HeadDecision::Reject(Rejection::bad_request(
                code::INVALID_REQUEST,
                "DELETE requests to MCP endpoints must not carry a body",
            )),
            "DELETE" if head.count(header::SESSION_ID) > 1 => HeadDecision::Reject(Rejection::bad_request(
                code::INVALID_REQUEST,
                "header mcp-session-id is repeated",
            )),
            "DELETE" => {
                match self.open_session(virtual_server, &consumer.name, head.header(header::SESSION_ID), now_secs, None) {
                    Ok(session) => HeadDecision::Session(self.plan_session_end(virtual_server, &session)),
                    Err(r) => HeadDecision::Reject(r),
                }
            }
            other => HeadDecision::Reject(
                Rejection::new(
                    405,
                    code::INVALID_REQUEST,
                    format!(
                        "method {} is not supported on virtual server \"{}\": it offers no server-to-client stream (POST requests, DELETE ends a session)",
                        printable(other),
                        virtual_server.name
                    ),
                )
                .with_header("allow", "POST, DELETE".to_string()),
            ),
        }
    }
}

fn not_in_session(server: &str, id: Option<&Value>) -> Rejection {
    Rejection::new(
        200,
        code::UPSTREAM_UNAVAILABLE,
        format!("backing server \"{server}\" did not initialize in this session; initialize a new session to reach it"),
    )
    .with_id(id)
}

/// The request headers a forwarded request needs for `own`'s session: its session id (or
/// none: stateless) and its protocol version, replacing the client's.
fn session_header_rewrites(own: &BackendSession) -> Vec<(String, Option<String>)> {
    vec![
        (header::SESSION_ID.to_string(), own.session_id.clone()),
        (header::PROTOCOL_VERSION.to_string(), Some(own.protocol_version.clone())),
    ]
}

/// Sets `own`'s session headers on a callout (replacing any the fan-out set).
fn with_session_headers(request: &mut CalloutRequest, own: &BackendSession) {
    request.headers.retain(|(k, _)| k != header::SESSION_ID && k != header::PROTOCOL_VERSION && k != header::METHOD);
    if let Some(session_id) = &own.session_id {
        request.headers.push((header::SESSION_ID.to_string(), session_id.clone()));
    }
    request.headers.push((header::PROTOCOL_VERSION.to_string(), own.protocol_version.clone()));
}

/// A callout to `upstream` in the session-based eras.
fn session_callout(
    upstream: &Upstream,
    http_method: &str,
    body: Option<&[u8]>,
    own: Option<&BackendSession>,
) -> CalloutRequest {
    let mut headers = vec![
        (":method".to_string(), http_method.to_string()),
        (":path".to_string(), upstream.path.clone()),
        (":authority".to_string(), upstream.authority.clone()),
        ("accept".to_string(), "application/json, text/event-stream".to_string()),
    ];
    if body.is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    let mut request = CalloutRequest {
        cluster: upstream.cluster.clone(),
        headers,
        body: body.map(<[u8]>::to_vec).unwrap_or_default(),
        timeout_ms: FAN_OUT_TIMEOUT_MS,
    };
    if let Some(own) = own {
        with_session_headers(&mut request, own);
    }
    request
}

/// A server→client request's data with its id rewritten to name `server`
/// (`mg1.<server>.n.<number>` or `mg1.<server>.s.<string>`), only the id value replaced in
/// the message's own text. `Ok(None)`: not a request (a notification or a response, passed
/// as they are). `Err`: the message cannot be read exactly (the event is refused).
pub(super) fn tag_server_request(data: &[u8], server: &str) -> Result<Option<Vec<u8>>, ()> {
    let doc = jsonrpc::validate_strict(data).map_err(|_| ())?;
    let root = doc.root();
    if root.kind() != JsonKind::Object {
        return Err(());
    }
    let [id, method_field] = root.fields(["id", "method"]);
    let (Some(id), Some(_)) = (id, method_field) else {
        return Ok(None);
    };
    let tagged = match id.kind() {
        JsonKind::Number => format!("{TAG_PREFIX}{server}.n.{}", id.text()),
        JsonKind::String => format!("{TAG_PREFIX}{server}.s.{}", id.as_str().ok_or(())?),
        _ => return Err(()),
    };
    let span = span_of(data, id.text()).ok_or(())?;
    let encoded = serde_json::to_string(&tagged).map_err(|_| ())?;
    Ok(Some(splice(data, span, encoded.as_bytes())))
}

/// The backend a client's answer is for, and the answer with the original id restored
/// (its JSON type included) at its place in the body. `None`: the id was not tagged here.
fn untag_answer(body: &[u8], doc: &StrictJson<'_>) -> Option<(String, Vec<u8>)> {
    let root = doc.root();
    let id = root.get("id").filter(|i| i.kind() == JsonKind::String)?;
    let text = id.as_str()?;
    let rest = text.strip_prefix(TAG_PREFIX)?;
    let (server, rest) = rest.split_once('.')?;
    let (kind, original) = rest.split_once('.')?;
    let restored = match kind {
        // Only an integer as JSON writes it (what was tagged).
        "n" => {
            let digits = original.strip_prefix('-').unwrap_or(original);
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && (original.parse::<i64>().is_ok() || original.parse::<u64>().is_ok());
            if !canonical {
                return None;
            }
            original.to_string()
        }
        "s" => serde_json::to_string(original).ok()?,
        _ => return None,
    };
    let span = span_of(body, id.text())?;
    Some((server.to_string(), splice(body, span, restored.as_bytes())))
}

/// Where `text`, a slice of `data` (a value the strict reader found in it), lies in `data`.
fn span_of(data: &[u8], text: &str) -> Option<std::ops::Range<usize>> {
    let start = (text.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (end <= data.len()).then_some(start..end)
}

/// `data` with `span` replaced by `with`.
fn splice(data: &[u8], span: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    let (head, tail) = (data.get(..span.start).unwrap_or_default(), data.get(span.end..).unwrap_or_default());
    let mut out = Vec::with_capacity(data.len() + with.len());
    out.extend_from_slice(head);
    out.extend_from_slice(with);
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
mod tests;
