//! The request pipeline: what the filter does with each HTTP exchange on an MCP route.
//!
//! The host glue (filters/wasm) calls, in order:
//! 1. [`Gateway::on_request_head`] with the request headers → pass through, refuse, forward
//!    (GET/DELETE: the SSE stream and session end carry no JSON-RPC body), or await the body;
//! 2. [`Gateway::on_request_body`] with the complete body → an [`Exchange`] to forward, or a
//!    [`Rejection`]. This is the one parse of the message;
//! 3. [`Exchange::response_plan`] with the response headers → how the response body must be
//!    handled (untouched, buffered JSON to filter, SSE stream to filter event by event).
//!
//! Fail closed: anything the gateway cannot read is refused, never forwarded.

use std::sync::Arc;

use crate::config::FilterConfig;
use crate::content_type::{self, ContentTypeAction};
use crate::identity::{AuthError, Consumer, Credentials, TokenCache, XFCC_HEADER};
use crate::jsonrpc::{self, code};
use crate::listing::{ListFilter, ListOutcome};
use crate::mcp::{self, header, Message, ReadError, ReadMessage, ResourceKind, MODERN_PROTOCOL_VERSIONS};
use crate::param_headers::{self, ParamHeaders};
use crate::policy::{Policy, Verdict};
use crate::quota::{self, Charges};
use crate::redact::{Blocked, Direction, Envelope, RedactionCounts, RedactionPlan, Refusal};
use crate::reject::{printable, Rejection};
use crate::resource_uri;
use crate::sse::{EventData, Rewritten};

/// Request headers the filter removes before forwarding: the client's own credentials
/// (MCP forbids token passthrough) and `accept-encoding` (the filter must be able to read
/// the response it governs).
pub const STRIPPED_REQUEST_HEADERS: &[&str] = &["authorization", "x-api-key", "accept-encoding"];

/// The request headers to remove before forwarding: those of [`STRIPPED_REQUEST_HEADERS`]
/// and every `x-meshgate-*` header the client sent (those are the filter's own, e.g. global
/// rate-limit descriptors; a client must not be able to choose its counter). Only headers
/// present in `headers` are named (each removal is a host call), lowercase, once each.
pub fn headers_to_strip(headers: &[(&str, &str)]) -> Vec<String> {
    let prefix = quota::RESERVED_HEADER_PREFIX;
    let mut names: Vec<String> = Vec::new();
    for (name, _) in headers {
        // Compared without a lowercase copy: every request runs this over all its headers.
        let strip = STRIPPED_REQUEST_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s))
            || name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
        if strip {
            let lower = name.to_ascii_lowercase();
            if !names.contains(&lower) {
                names.push(lower);
            }
        }
    }
    names
}

/// The first value of header `name` (any case) in a header list as the host presents it.
pub fn header_value<'h>(headers: &[(&'h str, &'h str)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// Paths outside the MCP routes that pass ungoverned (discovery documents only).
const UNGOVERNED_PREFIXES: &[&str] = &["/.well-known/"];

/// The request line and headers, as the host presents them (lowercase header names),
/// borrowed from the host for one callback.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// The request ends with its headers: no body follows (the host's `end_of_stream` in
    /// the request-headers callback). A GET or DELETE that does not end here carries a body.
    pub end_of_stream: bool,
}

impl<'a> RequestHead<'a> {
    /// The first value of header `name`, or `None`. Where a repeated header would be
    /// ambiguous the pipeline refuses it first (see [`Self::count`]).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        header_value(self.headers, name)
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count()
    }

    /// Every value of header `name`, in order.
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

/// What to do after the request headers. Returned once per request and matched at once, so
/// the variants' different sizes cost nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum HeadDecision {
    /// Not an MCP route the gateway governs (discovery documents): forward untouched.
    PassThrough,
    /// Refuse with this answer; nothing reaches the upstream.
    Reject(Rejection),
    /// Forward now (GET opens the server's SSE stream, DELETE ends a session).
    Forward(Exchange),
    /// A POST: the JSON-RPC body decides.
    AwaitBody(PendingRequest),
    /// A virtual server's session end (DELETE, session-based eras): answered by the filter
    /// from callouts ([`virtual_session`]).
    Session(SessionOp),
}

/// What the body of a POST decided, when it was not refused.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum BodyDecision {
    /// Forward the request (to its server, or a virtual server's call to a backing server).
    Forward(Exchange),
    /// A virtual server's discovery request: answered by the filter from one callout per
    /// backing server ([`virtual_fanout`]).
    FanOut(FanOut),
    /// A virtual server's request in the session-based eras answered by the filter
    /// (`initialize`, lists, notifications, `ping`: [`virtual_session`]).
    Session(SessionOp),
}

/// A POST waiting for its body.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    consumer: Arc<Consumer>,
    server: String,
    routing: RoutingHeaders,
    /// The `Content-Type` is an equivalent spelling of `application/json`: the canonical
    /// value is forwarded instead (see [`content_type`]).
    canonicalize_content_type: bool,
    /// The path names a virtual server (then [`Self::server`] is its name): the body
    /// decides which backing server the request goes to ([`virtual_call`]).
    via_virtual: bool,
    /// Virtual servers only: the client's `Mcp-Session-Id` (session-based eras,
    /// [`virtual_session`]).
    session_id: Option<String>,
    /// When the request headers were decided, Unix seconds.
    now_secs: u64,
    /// The approval id the caller presented ([`crate::approval::APPROVAL_ID_HEADER`]); read
    /// only when approval rules exist.
    approval_id: Option<String>,
}

impl PendingRequest {
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The server the request's path names.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// The 2026-07-28 routing headers a request carried.
#[derive(Debug, Clone, Default)]
struct RoutingHeaders {
    modern: bool,
    /// The `MCP-Protocol-Version` header, if sent.
    version: Option<String>,
    method: Option<String>,
    name: Option<String>,
    /// The `Mcp-Param-*` headers (tool arguments mirrored by a 2026-07-28 client).
    params: ParamHeaders,
}

/// An exchange the gateway let through, with what its response needs.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub consumer: Arc<Consumer>,
    pub server: String,
    /// The JSON-RPC message, for POSTs.
    pub message: Option<Message>,
    /// Set when the message is a `*/list` request whose answer must be filtered.
    pub list_filter: Option<ListFilter>,
    /// Redaction of what the upstream sends back, when a rule applies.
    pub response_redaction: Option<RedactionPlan>,
    /// The request body to forward instead of the original (request-direction redaction).
    pub rewritten_request: Option<Vec<u8>>,
    /// Request headers to set (`Some`) or remove (`None`) before forwarding, applied with
    /// the body decision: the canonical `Content-Type`, `Mcp-Param-*` headers rewritten as
    /// the arguments they mirror were redacted. Lowercase names.
    pub request_header_rewrites: Vec<(String, Option<String>)>,
    /// Rate limits and quotas this `tools/call` is charged to (empty otherwise).
    pub charges: Charges,
    /// Whether this exchange holds one of its consumer's in-flight slots while it is open
    /// (a `tools/call` with `limits.max_in_flight_per_consumer` set).
    pub counts_in_flight: bool,
    /// Largest response body (JSON) or SSE event accepted for this request; `None` for
    /// exchanges without a request to answer (the GET stream, DELETE, notifications).
    pub response_limit: Option<u64>,
    /// The GET stream: it carries server notifications and requests, and JSON-RPC
    /// responses only when a client resumes a stream (`Last-Event-ID`). The request such a
    /// response answers is unknown here, so it is governed by what it is: a list result
    /// is filtered for the caller, and redaction is every rule for any tool of the server
    /// (see [`Self::rewrite_event`]).
    pub server_stream: bool,
    /// A virtual server's exchange in the session-based eras, on this backing server's
    /// session ([`virtual_session`]): server→client requests on its SSE answer get ids
    /// naming the server, and a 404 (the backend's session ended) is answered 404.
    pub session_backend: Option<String>,
    /// Pin drift seen in list answers of this exchange ([`crate::pinning`]), for the
    /// pipeline to count and log ([`Self::take_pin_drifts`]).
    pub pin_drifts: std::cell::RefCell<crate::pinning::PinReport>,
    /// The server's pins: on the GET stream (whose replayed list answers are checked too),
    /// on list requests (whose answers update the drift state), and on a call of a pinned
    /// item under `enforce` (checked against the drift state before it is forwarded).
    pub server_pins: Option<Arc<crate::pinning::ServerPins>>,
    /// An `initialize` / `server/discover` request: the capabilities the gateway refuses to
    /// carry are withheld from its answer ([`crate::capabilities`]).
    pub withholds_capabilities: bool,
}

/// How the response body must be handled.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponsePlan {
    /// Forward untouched, without buffering.
    PassThrough,
    /// Buffer the whole body (up to the response limit), then [`Exchange::rewrite_body`]
    /// with this kind.
    Buffer(BodyKind),
    /// SSE: [`Exchange::rewrite_event`] on each event as it completes.
    Stream,
    /// The response cannot be governed: replace its body with this JSON-RPC error.
    Replace(Vec<u8>),
    /// The upstream could not answer (Envoy's own reply when it is unreachable, resets
    /// before answering or times out, or an error page instead of MCP): replace the whole
    /// response, status included, with this answer ([`Rejection::upstream_failed`]).
    Fail(Rejection),
}

/// How a buffered body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON-RPC message (`application/json`): read strictly, refused when it cannot be
    /// read exactly as clients read it.
    Json,
    /// Anything else (an error page): no client reads it as a JSON-RPC message; redacted
    /// as text.
    Text,
}

/// The response headers the plan depends on. Repeated headers are joined with `", "`
/// ([`header_values`]), as clients join them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// The declared `content-length`, when present and numeric.
    pub content_length: Option<u64>,
}

/// Every value of header `name` (any case), joined with `", "` as HTTP clients join
/// repeated headers; `None` when absent. What the client reads of a repeated
/// `content-type` or `content-encoding` is the joined value, so the plan reads it too.
pub fn header_values<'h>(headers: &[(&'h str, &'h str)], name: &str) -> Option<std::borrow::Cow<'h, str>> {
    let mut values = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let first = values.next()?;
    match values.next() {
        None => Some(std::borrow::Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first}, {second}");
            for v in values {
                joined.push_str(", ");
                joined.push_str(v);
            }
            Some(std::borrow::Cow::Owned(joined))
        }
    }
}

impl Exchange {
    /// The id of the request this exchange answers, if it has one.
    pub fn request_id(&self) -> Option<&serde_json::Value> {
        self.message.as_ref().and_then(Message::id)
    }

    /// The JSON-RPC error that replaces a response over [`Self::response_limit`].
    pub fn oversized_response(&self, limit: u64) -> Vec<u8> {
        jsonrpc::error_body(
            self.request_id(),
            code::INTERNAL_ERROR,
            &format!("the response from {} exceeds the {limit}-byte limit", self.server),
        )
    }

    /// A complete SSE event carrying [`Self::oversized_response`]: what ends an SSE stream
    /// whose next event grew over the limit (the partial event is never sent).
    pub fn oversized_sse_event(&self, limit: u64) -> Vec<u8> {
        let mut event = b"event: message\ndata: ".to_vec();
        event.extend(self.oversized_response(limit));
        event.extend_from_slice(b"\n\n");
        event
    }

    /// The JSON-RPC error that replaces an answer from upstream the gateway cannot govern:
    /// for the request (its id), naming the server and why.
    fn unreadable_answer(&self, why: &str) -> Vec<u8> {
        jsonrpc::error_body(
            self.request_id(),
            code::INTERNAL_ERROR,
            &format!("the response from {} was refused: {why}", self.server),
        )
    }

    /// Decides how to treat the response, from its headers. List filtering applies to
    /// successful answers; redaction to every body, errors included; the size limit to
    /// every answer to a request.
    ///
    /// A body that is rewritten is read as every client reads it ([`content_type::read`]):
    /// unencoded, JSON or SSE in UTF-8, or (redaction only) other text. On the GET stream
    /// any successful body is read as SSE whatever its declared type, because the
    /// TypeScript client reads it so.
    pub fn response_plan(&self, head: ResponseHead<'_>) -> ResponsePlan {
        if let Some(failure) = self.upstream_failure(head) {
            return ResponsePlan::Fail(failure);
        }
        if let (Some(server), 404) = (&self.session_backend, head.status) {
            // The backend's session ended: the client must initialize again.
            return ResponsePlan::Fail(virtual_session::session_ended(server, self.request_id()));
        }
        let filter = self.filters_list(head.status);
        let rewrites = self.rewrites_response(head.status);
        if let (Some(limit), Some(len)) = (self.response_limit, head.content_length) {
            if len > limit {
                return ResponsePlan::Replace(self.oversized_response(limit));
            }
        }
        let body_type = content_type::read(head.content_type);
        let encoded = !content_type::is_identity_encoding(head.content_encoding);
        if self.server_stream && (200..300).contains(&head.status) {
            // Only events are looked at (see `rewrite_event`), and every successful body is
            // one to the TypeScript client, which does not check the type on this stream.
            if encoded {
                return ResponsePlan::Replace(
                    self.unreadable_answer("it is an encoded event stream the gateway cannot inspect"),
                );
            }
            if let Err(e @ content_type::UnreadableContentType::Charset(_)) = body_type {
                return ResponsePlan::Replace(self.unreadable_answer(&e.to_string()));
            }
            return ResponsePlan::Stream;
        }
        let kind = |t: content_type::BodyType| match t {
            content_type::BodyType::Json => BodyKind::Json,
            _ => BodyKind::Text,
        };
        if !rewrites {
            if self.server_stream {
                return ResponsePlan::PassThrough;
            }
            return match (self.response_limit, head.content_length) {
                // Declared and within the limit (checked above), or nothing to answer.
                (None, _) | (Some(_), Some(_)) => ResponsePlan::PassThrough,
                // Unknown length: an SSE stream is checked event by event, anything else is
                // buffered up to the limit so an oversized body is never half-sent.
                (Some(_), None) => match body_type {
                    Ok(content_type::BodyType::EventStream) => ResponsePlan::Stream,
                    Ok(t) => ResponsePlan::Buffer(kind(t)),
                    Err(_) => ResponsePlan::Buffer(BodyKind::Text),
                },
            };
        }
        if encoded {
            return ResponsePlan::Replace(self.unreadable_answer("it is encoded and the gateway cannot inspect it"));
        }
        match body_type {
            Ok(content_type::BodyType::EventStream) => ResponsePlan::Stream,
            Ok(content_type::BodyType::Json) => ResponsePlan::Buffer(BodyKind::Json),
            // Redaction reads any other body as text; a list answer must be JSON or SSE.
            Ok(content_type::BodyType::Other) if !filter => ResponsePlan::Buffer(BodyKind::Text),
            Ok(content_type::BodyType::Other) => {
                ResponsePlan::Replace(self.unreadable_answer("it is a list response of an unexpected content type"))
            }
            Err(e) => ResponsePlan::Replace(self.unreadable_answer(&e.to_string())),
        }
    }

    /// [`Self::response_plan`] reading only the response headers this exchange's plan
    /// depends on: `header(name)` is called for `content-length` only when the answer is
    /// held to a size limit, for `content-type` only when the answer is a 5xx, the body may
    /// be rewritten or its length is unknown, and for `content-encoding` only when the body
    /// may be rewritten. `header` returns every value of a repeated header joined
    /// ([`header_values`]). Each lookup is a host call in the filter; the plan is the one
    /// the full head gives.
    pub fn response_plan_from(&self, status: u16, header: &mut dyn FnMut(&str) -> Option<String>) -> ResponsePlan {
        let rewrites = self.rewrites_response(status);
        let content_length = if self.response_limit.is_some() {
            header("content-length").and_then(|v| v.trim().parse().ok())
        } else {
            None
        };
        let failed = (500..600).contains(&status);
        let content_type = if failed
            || rewrites
            || self.server_stream
            || (self.response_limit.is_some() && content_length.is_none())
        {
            header("content-type")
        } else {
            None
        };
        let content_encoding = if rewrites || self.server_stream { header("content-encoding") } else { None };
        self.response_plan(ResponseHead {
            status,
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            content_length,
        })
    }

    /// A 5xx answer that is not MCP (no JSON or event-stream body): Envoy's local reply for
    /// an upstream that is down, reset before answering or timed out (`text/plain`), or an
    /// error page of a proxy or server in front of the upstream. Clients cannot read it, so
    /// it becomes a JSON-RPC error naming the server. 4xx answers are the upstream's own
    /// protocol answers (404 ends a session, 405 refuses the GET stream) and pass.
    fn upstream_failure(&self, head: ResponseHead<'_>) -> Option<Rejection> {
        if !(500..600).contains(&head.status) {
            return None;
        }
        let readable =
            head.content_type.map(media_type).is_some_and(|t| t == "application/json" || t == "text/event-stream");
        if readable {
            return None;
        }
        let what = match head.status {
            504 => "did not answer in time",
            502 | 503 => "is unavailable",
            _ => "failed",
        };
        let message = format!("the MCP server \"{}\" {what} (HTTP {}); retry later", self.server, head.status);
        Some(Rejection::upstream_failed(head.status, self.request_id(), message))
    }

    /// Whether a response with `status` may have its body rewritten (list filtering or
    /// redaction), which needs its type and encoding.
    fn rewrites_response(&self, status: u16) -> bool {
        self.filters_list(status)
            || self.response_redaction.is_some()
            || self.session_backend.is_some()
            || self.withholds_capabilities && (200..300).contains(&status) && status != 202
    }

    /// Whether a response with `status` is a list answer to filter (a 2xx with a body).
    fn filters_list(&self, status: u16) -> bool {
        self.list_filter.is_some() && (200..300).contains(&status) && status != 202
    }

    /// The pin drift seen so far in this exchange's answer (emptied).
    pub fn take_pin_drifts(&self) -> crate::pinning::PinReport {
        std::mem::take(&mut self.pin_drifts.borrow_mut())
    }

    /// Whether the messages of this exchange's answer are read at all (list filtering,
    /// redaction, or the GET stream's replayed answers).
    fn governs_messages(&self) -> bool {
        self.list_filter.is_some()
            || self.response_redaction.is_some()
            || self.server_stream
            || self.session_backend.is_some()
            || self.withholds_capabilities
    }

    /// Governs a buffered response body read as `kind` (see [`ResponsePlan::Buffer`]).
    /// `None` when it passes unchanged; otherwise the bytes to send instead.
    ///
    /// A governed body must be UTF-8; a JSON body may start with one byte order mark (the
    /// TypeScript client strips one), which is then removed so that every client reads
    /// what was governed.
    pub fn rewrite_body(
        &self,
        kind: BodyKind,
        body: &[u8],
        policy: &Policy,
        counts: &mut RedactionCounts,
    ) -> Option<Vec<u8>> {
        if let Some(limit) = self.response_limit.filter(|l| body.len() as u64 > *l) {
            return Some(self.oversized_response(limit));
        }
        if !self.governs_messages() {
            return None;
        }
        let (stripped, message) = match body.strip_prefix(BOM) {
            Some(rest) if kind == BodyKind::Json => (true, rest),
            _ => (false, body),
        };
        let Ok(text) = std::str::from_utf8(message) else {
            return Some(self.unreadable_answer("it is not valid UTF-8"));
        };
        let governed = match kind {
            BodyKind::Json => self.govern(text, policy, counts, self.request_id()).into_bytes(),
            BodyKind::Text => self.redact_text(text, counts),
        };
        match governed {
            None if stripped => Some(message.to_vec()),
            other => other,
        }
    }

    /// [`Self::rewrite_body`] for a JSON body.
    pub fn rewrite_message(&self, message: &[u8], policy: &Policy, counts: &mut RedactionCounts) -> Option<Vec<u8>> {
        self.rewrite_body(BodyKind::Json, message, policy, counts)
    }

    /// Redaction of a body that is not JSON, as text.
    fn redact_text(&self, text: &str, counts: &mut RedactionCounts) -> Option<Vec<u8>> {
        let plan = self.response_redaction.as_ref()?;
        match plan.redact_text(text, counts) {
            Ok(redacted) => redacted.map(String::into_bytes),
            Err(blocked) => Some(self.blocked_answer(self.request_id(), &blocked)),
        }
    }

    /// Governs one SSE event ([`crate::sse::SseRewriter`]): [`Self::govern`] on its data,
    /// plus, on the GET stream, what a response there needs. An event that is not UTF-8 is
    /// refused wherever messages are read.
    ///
    /// On a POST stream, a refused event is replaced by the JSON-RPC error that answers the
    /// request, and ends the stream ([`Rewritten::Last`]): the client has its answer, and
    /// whatever the upstream sends next is dropped unread.
    ///
    /// A response replayed on the GET stream (a resumed stream) answers a request the
    /// gateway cannot see: a `*/list` result is filtered for the caller by the shape of its
    /// result (every list array it carries), and redaction already covers every tool of
    /// the server. An event there that is not one MCP message, or that is refused, is
    /// replaced by an error and the stream goes on.
    pub fn rewrite_event(&self, data: EventData<'_>, policy: &Policy, counts: &mut RedactionCounts) -> Rewritten {
        let governed = self.govern_event(data, policy, counts);
        match governed {
            Governed::Unchanged => Rewritten::Keep,
            Governed::Rewritten(bytes) => Rewritten::Data(bytes),
            Governed::Refused(bytes) if self.server_stream => Rewritten::Data(bytes),
            Governed::Refused(bytes) => Rewritten::Last(bytes),
        }
    }

    fn govern_event(&self, data: EventData<'_>, policy: &Policy, counts: &mut RedactionCounts) -> Governed {
        let data = match data {
            EventData::Text(data) => data,
            EventData::NotUtf8 if self.governs_messages() => {
                return Governed::Refused(self.unreadable_answer("an event of its stream is not valid UTF-8"))
            }
            EventData::NotUtf8 => return Governed::Unchanged,
        };
        if !self.server_stream {
            if let Some(limit) = self.response_limit.filter(|l| data.len() as u64 > *l) {
                return Governed::Refused(self.oversized_response(limit));
            }
            let governed = self.govern(data, policy, counts, self.request_id());
            return match &self.session_backend {
                Some(server) => tag_server_requests(governed, data, server, || {
                    self.unreadable_answer("an event of its stream is not one JSON-RPC message")
                }),
                None => governed,
            };
        }
        let id = match mcp::read_message(data.as_bytes()) {
            Ok(ReadMessage { message: Message::Response { id }, .. }) => id,
            Ok(_) => return self.govern(data, policy, counts, None),
            Err(_) => {
                let why = "upstream sent an event on the GET stream that is not one JSON-RPC message";
                return Governed::Refused(jsonrpc::error_body(None, code::INTERNAL_ERROR, why));
            }
        };
        let shapes: Vec<_> = jsonrpc::validate_strict(data.as_bytes())
            .ok()
            .and_then(|doc| {
                let result = doc.root().get("result")?;
                Some(
                    LIST_SHAPES
                        .iter()
                        .filter_map(|m| ResourceKind::of_list_method(m))
                        .filter(|s| result.get(s.array).is_some())
                        .collect(),
                )
            })
            .unwrap_or_default();
        // Every list array the result carries is filtered: a client reads the one its
        // request asked for, which the gateway cannot know.
        let mut filtered: Option<Vec<u8>> = None;
        for shape in shapes {
            let request_id = id.clone();
            let filter = ListFilter {
                shape,
                request_id,
                server: self.server.clone(),
                roles: self.consumer.roles.clone(),
                pins: self.server_pins.clone().filter(|p| pins_cover(p, shape)),
            };
            let mut drifts = self.pin_drifts.borrow_mut();
            match filter.apply_pinned(filtered.as_deref().unwrap_or(data.as_bytes()), policy, &mut drifts) {
                ListOutcome::Unchanged => {}
                ListOutcome::Rewritten(b) => filtered = Some(b),
                ListOutcome::Unreadable(error) => return Governed::Refused(error),
            }
        }
        match filtered {
            None => self.govern(data, policy, counts, Some(&id)),
            Some(list) => {
                // The filter keeps the upstream's own text: still UTF-8.
                let text = String::from_utf8_lossy(&list).into_owned();
                match self.govern(&text, policy, counts, Some(&id)) {
                    Governed::Unchanged => Governed::Rewritten(list),
                    other => other,
                }
            }
        }
    }

    /// Governs one upstream message (a JSON body, or one SSE event's data): capabilities
    /// withheld from an `initialize` / `server/discover` answer, then [`Self::govern_message`].
    fn govern(
        &self,
        message: &str,
        policy: &Policy,
        counts: &mut RedactionCounts,
        id: Option<&serde_json::Value>,
    ) -> Governed {
        let withheld =
            if self.withholds_capabilities { crate::capabilities::withhold(message.as_bytes()) } else { None };
        let Some(withheld) = withheld else {
            return self.govern_message(message, policy, counts, id);
        };
        // Only ASCII punctuation and whole members were cut: still UTF-8.
        let text = String::from_utf8_lossy(&withheld).into_owned();
        match self.govern_message(&text, policy, counts, id) {
            Governed::Unchanged => Governed::Rewritten(withheld),
            other => other,
        }
    }

    /// List filtering, then redaction, and on a POST exchange whose answer is governed, the
    /// check that a response on it answers this request. A refusal is a JSON-RPC error for
    /// `id` (the message cannot be read, is blocked or answers another id).
    fn govern_message(
        &self,
        message: &str,
        policy: &Policy,
        counts: &mut RedactionCounts,
        id: Option<&serde_json::Value>,
    ) -> Governed {
        let filtered = match &self.list_filter {
            None => None,
            Some(filter) => match filter.apply_pinned(message.as_bytes(), policy, &mut self.pin_drifts.borrow_mut()) {
                ListOutcome::Unchanged => None,
                ListOutcome::Rewritten(b) => Some(b),
                ListOutcome::Unreadable(error) => return Governed::Refused(error),
            },
        };
        let Some(plan) = &self.response_redaction else {
            return filtered.map_or(Governed::Unchanged, Governed::Rewritten);
        };
        let current = filtered.as_deref().unwrap_or(message.as_bytes());
        match plan.redact_json(current, counts) {
            Ok(redacted) => {
                // The list filter checked the envelope of a list answer already.
                if self.list_filter.is_none() && !self.server_stream {
                    if let Some(why) = self.answers_another_request(current, &redacted.envelope) {
                        return Governed::Refused(self.unreadable_answer(&why));
                    }
                }
                redacted.bytes.or(filtered).map_or(Governed::Unchanged, Governed::Rewritten)
            }
            Err(Refusal::Blocked(blocked)) => Governed::Refused(self.blocked_answer(id, &blocked)),
            Err(Refusal::Unreadable) => Governed::Refused(jsonrpc::error_body(
                id,
                code::INTERNAL_ERROR,
                &format!(
                    "the response from {} was refused: it is not a JSON-RPC message the gateway can read exactly",
                    self.server
                ),
            )),
        }
    }

    /// Why a message on this POST exchange's answer cannot be passed on as it is: it is
    /// not one JSON object (a batch would be matched to other requests by id), or it is a
    /// response whose id is not exactly this request's (same JSON type and value) — clients
    /// match responses loosely (the TypeScript client by `Number(id)`, the Python client
    /// takes any response on the stream as the answer), so such a response could pass as
    /// the answer to this or another pending request without being governed as one.
    fn answers_another_request(&self, message: &[u8], envelope: &Envelope) -> Option<String> {
        let expected = self.request_id()?;
        if !envelope.object {
            return Some("it is not one JSON-RPC message".to_string());
        }
        if !envelope.answer {
            return None; // a request or notification from the server
        }
        if envelope.method {
            return Some("it is both a request and a response".to_string());
        }
        let id = envelope.id.clone().and_then(|span| message.get(span));
        let same = envelope.ids == 1
            && id.and_then(|id| serde_json::from_slice::<serde_json::Value>(id).ok()).as_ref() == Some(expected);
        (!same).then(|| {
            let shown = id.map_or_else(|| "(none)".to_string(), |id| printable(&String::from_utf8_lossy(id)));
            format!("it answers id {shown}, not the request's id {expected}")
        })
    }

    /// The JSON-RPC error that replaces a message a `block` rule refused.
    fn blocked_answer(&self, id: Option<&serde_json::Value>, blocked: &Blocked) -> Vec<u8> {
        jsonrpc::error_body(
            id,
            code::FORBIDDEN,
            &format!(
                "the response from {} was blocked: it contains a value of kind {}",
                self.server,
                blocked.detector()
            ),
        )
    }
}

/// A governed event of a virtual server's call in the session-based eras, with the id of
/// a server→client request rewritten to name the backend it came from
/// ([`virtual_session::tag_server_request`]); an event that cannot be read is refused.
fn tag_server_requests(governed: Governed, data: &str, server: &str, refuse: impl FnOnce() -> Vec<u8>) -> Governed {
    let current: &[u8] = match &governed {
        Governed::Refused(_) => return governed,
        Governed::Unchanged => data.as_bytes(),
        Governed::Rewritten(bytes) => bytes,
    };
    match virtual_session::tag_server_request(current, server) {
        Ok(None) => governed,
        Ok(Some(tagged)) => Governed::Rewritten(tagged),
        Err(()) => Governed::Refused(refuse()),
    }
}

/// What governing one upstream message gave.
#[derive(Debug)]
enum Governed {
    /// Pass the original bytes.
    Unchanged,
    /// Send these instead (filtered, redacted).
    Rewritten(Vec<u8>),
    /// Send this JSON-RPC error instead: the message cannot be passed on.
    Refused(Vec<u8>),
}

impl Governed {
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Governed::Unchanged => None,
            Governed::Rewritten(bytes) | Governed::Refused(bytes) => Some(bytes),
        }
    }
}

/// Whether `pins` govern the items of a list of `shape` (resource templates are not pinned).
fn pins_cover(pins: &crate::pinning::ServerPins, shape: mcp::ListShape) -> bool {
    shape.array != mcp::RESOURCE_TEMPLATES_ARRAY && pins.governs(shape.kind)
}

/// A UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The list methods whose results a replayed response on the GET stream is matched against.
const LIST_SHAPES: [&str; 4] = [
    mcp::method::TOOLS_LIST,
    mcp::method::RESOURCES_LIST,
    mcp::method::RESOURCES_TEMPLATES_LIST,
    mcp::method::PROMPTS_LIST,
];

/// The lowercase media type of a `Content-Type` value, without parameters.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The compiled pipeline; one per configuration, shared by all requests of a worker.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: FilterConfig,
    /// Virtual servers' merged lists ([`virtual_cache`]); empty for each new configuration.
    lists: Arc<virtual_cache::ListCache>,
}

impl Gateway {
    pub fn new(config: FilterConfig) -> Self {
        Self { config, lists: Arc::default() }
    }

    /// The merged answer of a virtual server's list request, when a fresh one is cached
    /// for this caller ([`virtual_cache`]): answered without any callout.
    pub fn cached_fan_out(&self, fan_out: &FanOut, now_ns: u64) -> Option<Vec<u8>> {
        let (key, consumer) = fan_out.cache_key()?;
        self.lists.get(key, consumer, now_ns).map(|list| list.body(fan_out.request_id()))
    }

    /// Keeps a merged list answer for reuse, when it may be reused.
    pub fn store_fan_out(&self, fan_out: &FanOut, list: &virtual_fanout::MergedList, now_ns: u64) {
        if let Some((key, consumer)) = fan_out.cache_key() {
            self.lists.put(key.clone(), consumer, list, now_ns);
        }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// A token cache sized for this configuration.
    pub fn new_token_cache(&self) -> TokenCache {
        TokenCache::new(self.config.authenticator.token_cache_entries())
    }

    /// Step 1: Host, route, Origin, method, content checks, identity. `now` is Unix seconds.
    pub fn on_request_head(&self, head: RequestHead<'_>, now: u64, cache: &mut TokenCache) -> HeadDecision {
        let path = head.path.split(['?', '#']).next().unwrap_or_default();
        if UNGOVERNED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return HeadDecision::PassThrough;
        }
        // Before anything else answers (a DNS-rebinding page learns nothing from the gateway):
        // a foreign Origin (403, as MCP requires, whatever else is wrong), then a foreign Host.
        let origins = &self.config.origin_policy;
        let host = origins.check_host(head.header(":authority").or_else(|| head.header("host")));
        let named = path.strip_prefix(self.config.route_prefix.as_str());
        let server = named.filter(|n| self.config.servers.contains(*n));
        // A virtual server's path: the body names the backing server ([`virtual_call`]).
        let via_virtual = server.is_none() && named.is_some_and(|n| self.config.virtual_servers.get(n).is_some());
        let server = if via_virtual { named } else { server };
        let origin_values = head.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("origin")).map(|(_, v)| *v);
        if let Err(r) = origins.check_origin(server, origin_values).and(host) {
            return HeadDecision::Reject(r);
        }
        let Some(server) = server.map(str::to_string) else {
            return HeadDecision::Reject(Rejection::not_found(path));
        };
        let consumer = match self.authenticate(head, now, cache) {
            Ok(c) => c,
            Err(rejection) => return HeadDecision::Reject(rejection),
        };
        if via_virtual && head.count(mcp::header::SESSION_ID) > 1 {
            return HeadDecision::Reject(Rejection::bad_request(
                code::INVALID_REQUEST,
                "header mcp-session-id is repeated",
            ));
        }
        if via_virtual && head.method != "POST" {
            return self.on_virtual_head(head, &server, &consumer, now);
        }
        match head.method {
            "GET" | "DELETE" if !head.end_of_stream => HeadDecision::Reject(Rejection::bad_request(
                code::INVALID_REQUEST,
                format!(
                    "{} requests to MCP endpoints must not carry a body; send JSON-RPC messages with POST",
                    head.method
                ),
            )),
            "GET" | "DELETE" => {
                // The GET stream carries server notifications and requests, and replays of
                // any tool's results: every rule for any tool of the server covers it.
                let response_redaction =
                    self.config.redactor.plan_any_tool(&server, &consumer.roles, Direction::Response);
                let server_pins = self.config.pins.server(&server).cloned();
                HeadDecision::Forward(Exchange {
                    consumer,
                    server,
                    message: None,
                    list_filter: None,
                    response_redaction,
                    rewritten_request: None,
                    request_header_rewrites: Vec::new(),
                    charges: Charges::default(),
                    counts_in_flight: false,
                    response_limit: None,
                    server_stream: head.method == "GET",
                    session_backend: None,
                    pin_drifts: Default::default(),
                    server_pins,
                    withholds_capabilities: false,
                })
            }
            "POST" => match self.check_post_head(head, &server) {
                Ok((routing, content_type)) => HeadDecision::AwaitBody(PendingRequest {
                    consumer,
                    server,
                    routing,
                    canonicalize_content_type: content_type == ContentTypeAction::Canonicalize,
                    via_virtual,
                    session_id: via_virtual.then(|| head.header(mcp::header::SESSION_ID).map(str::to_string)).flatten(),
                    now_secs: now,
                    approval_id: if self.config.approvals.is_empty() {
                        None
                    } else {
                        head.header(crate::approval::APPROVAL_ID_HEADER).map(str::to_string)
                    },
                }),
                Err(r) => HeadDecision::Reject(r),
            },
            other => HeadDecision::Reject(
                Rejection::new(
                    405,
                    code::INVALID_REQUEST,
                    format!("method {} is not allowed on MCP endpoints", printable(other)),
                )
                .with_header("allow", "GET, POST, DELETE".to_string()),
            ),
        }
    }

    fn authenticate(
        &self,
        head: RequestHead<'_>,
        now: u64,
        cache: &mut TokenCache,
    ) -> Result<Arc<Consumer>, Rejection> {
        if head.count("authorization") > 1 || head.count("x-api-key") > 1 {
            return Err(self.unauthenticated(&AuthError::Ambiguous));
        }
        // Only with `auth.mtls`: no scan of the headers otherwise. Envoy sets at most one.
        let authenticator = &self.config.authenticator;
        let peer_certificate = if authenticator.uses_peer_certificates() {
            if head.count(XFCC_HEADER) > 1 {
                return Err(self.unauthenticated(&AuthError::BadPeerCertificate));
            }
            head.header(XFCC_HEADER)
        } else {
            None
        };
        let creds = Credentials {
            authorization: head.header("authorization"),
            api_key: head.header("x-api-key"),
            peer_certificate,
        };
        self.config.authenticator.authenticate(creds, now, cache).map_err(|e| self.unauthenticated(&e))
    }

    fn unauthenticated(&self, error: &AuthError) -> Rejection {
        let mut challenge = String::from("Bearer realm=\"meshgate\"");
        if let Some(kind) = error.bearer_error() {
            challenge.push_str(&format!(", error=\"{kind}\""));
        }
        if let Some(url) = &self.config.resource_metadata {
            challenge.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        Rejection::unauthenticated(error.to_string(), challenge)
    }

    fn check_post_head(
        &self,
        head: RequestHead<'_>,
        server: &str,
    ) -> Result<(RoutingHeaders, ContentTypeAction), Rejection> {
        let max_request_bytes = self.config.limits.head_request_bytes(server);
        let unsupported = |e: content_type::ContentTypeError| Rejection::new(415, code::INVALID_REQUEST, e.to_string());
        let content_type = content_type::check_content_type(head.values("content-type")).map_err(unsupported)?;
        content_type::check_content_encoding(head.values("content-encoding")).map_err(unsupported)?;
        if let Some(len) = head.header("content-length") {
            match len.trim().parse::<u64>() {
                Ok(n) if n > max_request_bytes => return Err(Rejection::too_large(max_request_bytes)),
                Ok(_) => {}
                Err(_) => return Err(Rejection::bad_request(code::INVALID_REQUEST, "invalid content-length")),
            }
        }
        for name in [header::PROTOCOL_VERSION, header::METHOD, header::NAME] {
            if head.count(name) > 1 {
                return Err(Rejection::bad_request(code::HEADER_MISMATCH, format!("header {name} is repeated")));
            }
        }
        let params = ParamHeaders::from_headers(head.headers)
            .map_err(|e| Rejection::bad_request(code::HEADER_MISMATCH, e.to_string()))?;
        let version = head.header(header::PROTOCOL_VERSION).map(str::trim);
        let routing = RoutingHeaders {
            modern: version.is_some_and(|v| MODERN_PROTOCOL_VERSIONS.contains(&v)),
            version: version.map(String::from),
            method: head.header(header::METHOD).map(|v| v.trim().to_string()),
            name: head.header(header::NAME).map(|v| v.trim().to_string()),
            params,
        };
        Ok((routing, content_type))
    }

    /// The policy decision on one tool, resource or prompt a request names. Resource URIs
    /// are matched in canonical form; a URI that readers resolve differently is refused
    /// (400) rather than matched (see [`resource_uri`]).
    fn authorize(&self, consumer: &Consumer, server: &str, target: &mcp::Target) -> Result<(), Rejection> {
        let canonical = match target.kind {
            ResourceKind::Resource => resource_uri::canonical(&target.name).map_err(|e| {
                Rejection::bad_request(
                    code::INVALID_PARAMS,
                    format!("resource URI \"{}\" is refused: {e}", printable(&target.name)),
                )
            })?,
            ResourceKind::Tool | ResourceKind::Prompt => std::borrow::Cow::Borrowed(target.name.as_str()),
        };
        match self.config.policy.decide(&consumer.roles, target.kind, server, &canonical) {
            Verdict::Allow => Ok(()),
            Verdict::Deny(reason) => Err(Rejection::forbidden(format!(
                "{} \"{}/{}\" is not allowed: {}",
                target.kind.noun(),
                server,
                printable(&target.name),
                reason.describe()
            ))),
        }
    }

    /// Whether a body of `len` bytes so far is already over the request limit (checked on
    /// every chunk so an oversized chunked body is refused before it is all buffered). The
    /// tool is not known yet: the bound is the largest any of the server's tools accepts.
    pub fn request_too_large(&self, pending: &PendingRequest, len: u64) -> Option<Rejection> {
        let max = self.config.limits.head_request_bytes(&pending.server);
        (len > max).then(|| Rejection::too_large(max))
    }

    /// The response size limit for buffered bodies of exchanges without their own
    /// [`Exchange::response_limit`].
    pub fn max_response_bytes(&self) -> u64 {
        self.config.limits.defaults.max_response_bytes
    }

    /// `limits.max_local_counters`.
    pub fn max_local_counters(&self) -> u64 {
        self.config.limits.max_local_counters
    }

    /// `limits.max_in_flight_per_consumer`.
    pub fn max_in_flight(&self) -> Option<u64> {
        self.config.limits.max_in_flight_per_consumer
    }

    /// The answer to a forwarded call that Envoy's `ratelimit` filter refused (see
    /// [`quota::QuotaRules::global_rejection`]): header values as the response carried them.
    pub fn global_rejection(&self, exchange: &Exchange, refusal: &quota::GlobalRefusal<'_>) -> Rejection {
        self.config.quotas.global_rejection(refusal, exchange.request_id())
    }

    /// The approval a forwarded `tools/call` needs before it may reach the upstream: `None`
    /// when no approval rule matches (the common case: one look at an empty rule list),
    /// else the check to ask meshgate, or the refusal of arguments that have no hash.
    /// `forwarded` is the body as it will be forwarded (after request redaction).
    pub fn approval_check(
        &self,
        pending: &PendingRequest,
        exchange: &Exchange,
        forwarded: &[u8],
    ) -> Option<Result<crate::approval::CheckRequest, Rejection>> {
        let rules = &self.config.approvals;
        if rules.is_empty() {
            return None;
        }
        let target = exchange.message.as_ref()?.target().filter(|t| t.kind == ResourceKind::Tool)?;
        let rule = rules.rule_for(&exchange.server, &target.name, &exchange.consumer.roles)?;
        let (hash, arguments) = match crate::approval::arguments_hash(forwarded) {
            Ok(hashed) => hashed,
            Err(e) => {
                return Some(Err(Rejection::forbidden(format!(
                    "tool \"{}/{}\" needs an approval, and its arguments have no canonical form: {e}",
                    exchange.server,
                    printable(&target.name)
                ))
                .with_id(exchange.request_id())))
            }
        };
        Some(Ok(crate::approval::CheckRequest {
            rule: rule.name.clone(),
            consumer: exchange.consumer.name.clone(),
            server: exchange.server.clone(),
            tool: target.name.clone(),
            arguments_sha256: hash,
            approval_id: pending.approval_id.clone(),
            arguments: rule.show_arguments.then_some(arguments),
        }))
    }

    /// Step 2, as the pipeline runs it: forward the request ([`Self::on_request_body`]), or,
    /// for a virtual server's discovery request, answer it from its backing servers.
    pub fn decide_request_body(&self, pending: &PendingRequest, body: &[u8]) -> Result<BodyDecision, Rejection> {
        if pending.via_virtual {
            return self.on_virtual_request_body(pending, body);
        }
        self.on_request_body(pending, body).map(BodyDecision::Forward)
    }

    /// Step 2: the one parse of the message, header agreement, RBAC. A virtual server's
    /// discovery request, which only [`Self::decide_request_body`] answers, is refused.
    pub fn on_request_body(&self, pending: &PendingRequest, body: &[u8]) -> Result<Exchange, Rejection> {
        if pending.via_virtual {
            return match self.on_virtual_request_body(pending, body)? {
                BodyDecision::Forward(exchange) => Ok(exchange),
                BodyDecision::FanOut(_) | BodyDecision::Session(_) => {
                    Err(Rejection::new(500, code::INTERNAL_ERROR, "discovery of a virtual server needs callouts"))
                }
            };
        }
        if let Some(r) = self.request_too_large(pending, body.len() as u64) {
            return Err(r);
        }
        let read = mcp::read_message(body).map_err(unreadable)?;
        check_routing_headers(&pending.routing, &read.message, read.envelope_version())?;
        self.govern_read(pending, body, read)
    }

    /// Step 2 after the read and the header checks: RBAC, limits, redaction, quotas, on the
    /// message `read` from `body`.
    fn govern_read(&self, pending: &PendingRequest, body: &[u8], read: ReadMessage) -> Result<Exchange, Rejection> {
        let arguments_bytes = read.arguments_bytes;
        let message = read.message;

        let consumer = &pending.consumer;
        let server = &pending.server;
        for target in message.named() {
            self.authorize(consumer, server, target).map_err(|r| r.with_id(message.id()))?;
        }
        // Pinned definitions: an unpinned name is refused here (one lookup in the pins); a
        // pinned one is checked against what the last listing showed when it is admitted
        // (the drift state the workers share, `pipeline`).
        let mut server_pins = None;
        if let Some(pins) = self.config.pins.server(server) {
            if let Some(target) = message.target() {
                if let Some(why) = pins.refuse_call(target.kind, &target.name) {
                    return Err(Rejection::forbidden(why).with_id(message.id()));
                }
                if pins.watches(target.kind, &target.name) {
                    server_pins = Some(pins.clone());
                }
            } else if message.method().and_then(ResourceKind::of_list_method).is_some() {
                server_pins = Some(pins.clone());
            }
        }
        let tool = message.target().filter(|t| t.kind == ResourceKind::Tool).map(|t| t.name.as_str());
        let sizes = self.config.limits.sizes(server, tool);
        if body.len() as u64 > sizes.max_request_bytes {
            return Err(Rejection::too_large(sizes.max_request_bytes).with_id(message.id()));
        }
        if let (Some(name), Some(max)) = (tool, sizes.max_argument_bytes) {
            let size = arguments_bytes.unwrap_or(0) as u64;
            if size > max {
                return Err(Rejection::arguments_too_large(format!(
                    "arguments of tool \"{server}/{}\" are {size} bytes, over the {max}-byte limit",
                    printable(name)
                ))
                .with_id(message.id()));
            }
        }
        // Each `Mcp-Param-*` header must mirror an argument of the call (read only when the
        // request has such headers).
        let mirrored = param_headers::match_arguments(&pending.routing.params, body)
            .map_err(|e| Rejection::bad_request(code::HEADER_MISMATCH, e.to_string()).with_id(message.id()))?;
        let redactor = &self.config.redactor;
        let mut rewritten_request = None;
        if let Some(plan) = redactor.plan(server, tool, &consumer.roles, Direction::Request) {
            let mut counts = RedactionCounts::new();
            match plan.redact_message(body, &mut counts) {
                Ok(rewritten) => rewritten_request = rewritten,
                Err(Refusal::Blocked(blocked)) => {
                    return Err(Rejection::blocked(format!(
                        "the request to {server} was blocked: it contains a value of kind {}",
                        blocked.detector()
                    ))
                    .with_id(message.id()))
                }
                // Not reached: the body was parsed strictly above.
                Err(Refusal::Unreadable) => {
                    return Err(Rejection::bad_request(
                        code::PARSE_ERROR,
                        "request body is not JSON the gateway can read exactly",
                    )
                    .with_id(message.id()))
                }
            }
        }
        let mut request_header_rewrites = Vec::new();
        if pending.canonicalize_content_type {
            request_header_rewrites.push(("content-type".to_string(), Some(content_type::CANONICAL_JSON.to_string())));
        }
        if let Some(rewritten) = &rewritten_request {
            // The body's arguments changed: each header mirroring one now says what it says.
            request_header_rewrites.extend(param_headers::rewrites_after_redaction(&mirrored, rewritten));
        }
        let response_redaction = redactor.plan(server, tool, &consumer.roles, Direction::Response);
        let list_filter = match (&message, message.method().and_then(ResourceKind::of_list_method)) {
            (Message::Request { id, .. }, Some(shape)) => Some(ListFilter {
                shape,
                request_id: id.clone(),
                server: server.clone(),
                roles: consumer.roles.clone(),
                pins: self.config.pins.server(server).filter(|p| pins_cover(p, shape)).cloned(),
            }),
            _ => None,
        };
        // Charged last: a call refused for any other reason costs no quota.
        let charges = match tool {
            Some(name) => self.config.quotas.charges(&consumer.name, server, name, &consumer.roles),
            None => Charges::default(),
        };
        let counts_in_flight = tool.is_some() && self.config.limits.max_in_flight_per_consumer.is_some();
        let response_limit = matches!(message, Message::Request { .. }).then_some(sizes.max_response_bytes);
        let withholds_capabilities = matches!(&message, Message::Request { method, .. }
            if method == mcp::method::INITIALIZE || method == mcp::method::SERVER_DISCOVER);
        Ok(Exchange {
            consumer: consumer.clone(),
            server: server.clone(),
            withholds_capabilities,
            message: Some(message),
            list_filter,
            response_redaction,
            rewritten_request,
            request_header_rewrites,
            charges,
            counts_in_flight,
            response_limit,
            server_stream: false,
            session_backend: None,
            pin_drifts: Default::default(),
            server_pins,
        })
    }
}

/// A body that is not one readable message: 400 with the read error's code (and the id,
/// when the message had a usable one).
fn unreadable(e: ReadError) -> Rejection {
    match &e {
        ReadError::Json(_) => Rejection::bad_request(e.code(), e.to_string()),
        ReadError::Message { id, .. } => Rejection::bad_request(e.code(), e.to_string()).with_id(id.as_ref()),
    }
}

/// 2026-07-28: `MCP-Protocol-Version` must equal the envelope's version, `Mcp-Method` the
/// body's method and `Mcp-Name` the named param. Checked whenever the headers are present (a
/// gateway or server that routes or authorizes on headers must not be fooled), and required
/// when the request declares a modern version (by header or by envelope). A header that
/// names what the body does not have is a mismatch too: `Mcp-Method` on a response,
/// `Mcp-Name` on a message that names nothing, `Mcp-Param-*` on anything but `tools/call`.
fn check_routing_headers(
    routing: &RoutingHeaders,
    message: &Message,
    envelope_version: Option<Option<&str>>,
) -> Result<(), Rejection> {
    let mismatch = |what: &str| {
        Err(Rejection::bad_request(code::HEADER_MISMATCH, format!("{what} header does not match the request body"))
            .with_id(message.id()))
    };
    let Some(method) = message.method() else {
        // A response (to a server's request) has no method and names nothing.
        if routing.method.is_some() {
            return mismatch(header::METHOD);
        }
        if routing.name.is_some() {
            return mismatch(header::NAME);
        }
        if let Some(name) = routing.params.first_name() {
            return mismatch(name);
        }
        return Ok(());
    };
    if let Some(envelope) = envelope_version {
        if envelope.is_none() || routing.version.as_deref() != envelope {
            return mismatch(header::PROTOCOL_VERSION);
        }
    }
    let modern = routing.modern || envelope_version.is_some();
    match &routing.method {
        Some(h) if h != method => return mismatch(header::METHOD),
        None if modern => return mismatch(header::METHOD),
        _ => {}
    }
    match (message.target(), &routing.name) {
        (Some(target), Some(h)) if mcp::decode_header_value(h).as_deref() != Some(target.name.as_str()) => {
            return mismatch(header::NAME)
        }
        (Some(_), None) if modern => return mismatch(header::NAME),
        (None, Some(_)) => return mismatch(header::NAME),
        _ => {}
    }
    let is_call = matches!(message, Message::Request { method, .. } if method == mcp::method::TOOLS_CALL);
    if let (false, Some(name)) = (is_call, routing.params.first_name()) {
        return mismatch(name);
    }
    Ok(())
}

mod virtual_cache;
mod virtual_call;
pub mod virtual_fanout;
mod virtual_pagination;
mod virtual_resources;
pub mod virtual_session;

pub use virtual_fanout::{CalloutRequest, CalloutResponse, FanOut, Omission};
pub use virtual_session::{LocalAnswer, SessionOp};

#[cfg(test)]
mod tests;
