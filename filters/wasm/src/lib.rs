//! Meshgate's Envoy filter: the only code that talks to the proxy-wasm host.
//!
//! Callbacks gather bytes and headers, call [`meshgate_core`], and map its answer to an
//! Envoy action or a local reply. No policy logic lives here. Each Envoy worker runs its
//! own VM: the [`Root`] of a worker holds the compiled [`Gateway`] and that worker's cache
//! of verified tokens; every HTTP stream gets a [`Stream`].
//!
//! Body handling follows the proxy-wasm rules verified on Envoy 1.40: a POST pauses in the
//! headers callback (the plugin needs `allow_on_headers_stop_iteration: true`) until the
//! whole body is buffered; responses that must be filtered lose their `content-length`
//! before the body is rewritten; SSE responses are rewritten chunk by chunk without pausing.
//!
//! Limits: after the core let a `tools/call` through, the stream takes an in-flight slot and
//! charges every local quota counter in shared data ([`shared`]), then adds the global
//! rules' descriptor headers for Envoy's `ratelimit` filter. The in-flight slot is given
//! back in `on_log`, which Envoy calls once for every stream, however it ended (including
//! client resets). Any failure to read or update a counter refuses the call (503).
//!
//! Audit: every governed stream carries a [`meshgate_core::audit::AuditRecord`]. Its fields
//! are written to filter state (`wasm.mcp_*`) in `on_log`, which Envoy runs before the
//! access loggers. With tracing configured they are also written when the exchange is
//! refused or its response ends (span tags read them when the stream ends: values written
//! in `on_log` come too late for a span), and `on_log` then rewrites only changed values.
//! Every field is a host call that copies into Envoy, so none is written twice with the
//! same value and empty values are not written (the access log shows `null`). Metrics are
//! recorded once, in `on_log`, through [`metrics`]; counters reach Envoy in per-worker
//! batches on the root context's tick (at most [`metrics::FLUSH_PERIOD`] late).

// Rejections are the cold path and carry what the client is told; boxing them buys nothing.
#![allow(clippy::result_large_err)]

mod metrics;
mod shared;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use meshgate_core::audit::{self, AuditRecord};
use meshgate_core::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use meshgate_core::gateway::{
    header_value, header_values, headers_to_strip, BodyKind, Exchange, Gateway, HeadDecision, PendingRequest,
    RequestHead, ResponsePlan,
};
use meshgate_core::identity::TokenCache;
use meshgate_core::jsonrpc::{code, error_body};
use meshgate_core::quota::{self, LocalCharge, State as QuotaState};
use meshgate_core::redact::RedactionCounts;
use meshgate_core::reject::Rejection;
use meshgate_core::sse::{EventData, SseRewriter};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per-worker state: the compiled configuration and the token cache.
#[derive(Default)]
struct Root {
    gateway: Option<Rc<Gateway>>,
    tokens: Rc<RefCell<TokenCache>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        metrics::flush();
        true
    }
}

impl RootContext for Root {
    fn on_tick(&mut self) {
        metrics::flush();
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let compiled = RawFilterConfig::from_json(&bytes).and_then(|raw| FilterConfig::compile(&raw, &EnvSecrets));
        match compiled {
            Ok(config) => {
                if let Err(e) = shared::ensure_lock() {
                    log::error!("meshgate: shared data unavailable: {e}");
                    return false;
                }
                let gateway = Gateway::new(config);
                self.tokens = Rc::new(RefCell::new(gateway.new_token_cache()));
                self.gateway = Some(Rc::new(gateway));
                self.set_tick_period(metrics::FLUSH_PERIOD);
                true
            }
            Err(e) => {
                log::error!("meshgate: configuration rejected: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = self.gateway.clone()?;
        Some(Box::new(Stream {
            gateway,
            tokens: self.tokens.clone(),
            state: State::Headers,
            response: Response::Untouched,
            redactions: RedactionCounts::new(),
            in_flight: None,
            audit: None,
            decision_ns: 0,
            published: RefCell::new(Vec::new()),
            #[cfg(feature = "test-crash-trigger")]
            crash_at: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a stream is in the request pipeline. One per stream, so variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Request headers not seen yet.
    Headers,
    /// Not governed (discovery documents) or already answered locally.
    Done,
    /// Waiting for the whole POST body; `buffered` is how much of it Envoy holds so far.
    /// The request ends with its last body chunk, or with trailers (HTTP/2, or HTTP/1.1
    /// chunked with trailers enabled): both end here, in [`Stream::decide_body`].
    AwaitingBody { pending: PendingRequest, buffered: usize },
    /// Let through; its response may need work.
    Forwarded(Exchange),
}

/// What the response body needs.
enum Response {
    Untouched,
    /// Buffer the whole body, then rewrite it (read as this kind).
    Buffer(BodyKind),
    /// Rewrite SSE events as they complete.
    Stream(SseRewriter),
    /// Drop the upstream body and send this instead.
    Replace(Vec<u8>),
}

struct Stream {
    gateway: Rc<Gateway>,
    tokens: Rc<RefCell<TokenCache>>,
    state: State,
    response: Response,
    /// Redactions made in this exchange, per detector (never values).
    redactions: RedactionCounts,
    /// The shared-data key of the in-flight slot this stream holds; given back once, in `on_log`.
    in_flight: Option<String>,
    /// What this exchange looked like so far; `None` for streams the gateway does not govern.
    audit: Option<AuditRecord>,
    /// Nanoseconds spent in the core's request-path decisions.
    decision_ns: u64,
    /// The audit fields already written to filter state: each host call copies into Envoy,
    /// so a field is written again only when its value changed.
    published: RefCell<Vec<(&'static str, String)>>,
    /// Test builds only: the callback this request asked the VM to crash in.
    #[cfg(feature = "test-crash-trigger")]
    crash_at: Option<String>,
}

/// When [`Stream::publish_audit`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// The exchange is settled (refused, or its response ended) before the stream ends:
    /// only span tags need the fields this early.
    Settled,
    /// `on_log`: the access loggers read the fields next.
    Log,
}

impl Context for Stream {}

impl Stream {
    /// Answers locally; the request never reaches the upstream.
    fn reject(&mut self, r: &Rejection) -> Action {
        let mut record = self.audit.take().unwrap_or_default();
        record.refused(r);
        self.audit = Some(record);
        self.publish_audit(Moment::Settled);
        self.state = State::Done;
        let headers = r.response_headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(u32::from(r.status), headers, Some(&r.body()));
        Action::Pause
    }

    /// Answers with `r` instead of the upstream's response (its headers not sent yet):
    /// status, headers and body. With `end_of_stream` no body callback follows: answer anew.
    fn replace_response(&mut self, r: &Rejection, end_of_stream: bool) -> Action {
        if let Some(record) = self.audit.as_mut() {
            record.refused(r);
        }
        if end_of_stream {
            return self.reject(r);
        }
        self.publish_audit(Moment::Settled);
        self.set_http_response_header(":status", Some(&r.status.to_string()));
        for (name, value) in r.response_headers() {
            self.set_http_response_header(name, Some(&value));
        }
        self.set_http_response_header("content-encoding", None);
        self.set_http_response_header("content-length", None);
        self.response = Response::Replace(r.body());
        Action::Continue
    }

    /// Writes the audit fields to filter state (`wasm.<key>`), for the access log and span
    /// tags: never when the configuration says nothing reads them, and at
    /// [`Moment::Settled`] only when tracing reads them that early. A field is
    /// written only when its value differs from what filter state holds (an empty value is
    /// what an unset field reads as).
    fn publish_audit(&self, moment: Moment) {
        let config = self.gateway.config();
        if !config.audit_fields || (moment == Moment::Settled && !config.audit_before_stream_end) {
            return;
        }
        let Some(record) = self.audit.as_ref() else {
            return;
        };
        let decision_us = (self.decision_ns / 1000).to_string();
        // Without tracing, `on_log` is the only write: nothing to compare with, nothing to keep.
        let once = !config.audit_before_stream_end;
        let mut published = self.published.borrow_mut();
        for (key, value) in record.fields() {
            let value = if key == audit::field::DECISION_US { &decision_us } else { &value };
            if once {
                if !value.is_empty() {
                    self.set_property(vec![key], Some(value.as_bytes()));
                }
                continue;
            }
            match published.iter_mut().find(|(k, _)| *k == key) {
                Some((_, old)) if old == value => continue,
                Some((_, old)) => old.clone_from(value),
                None if value.is_empty() => continue,
                None => published.push((key, value.clone())),
            }
            self.set_property(vec![key], Some(value.as_bytes()));
        }
    }

    /// The host's clock (a host call: callers read it once per step and pass it on).
    fn now_ns(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }

    fn strip_request_headers(&self, headers: &[(String, String)]) {
        for name in headers_to_strip(headers) {
            self.set_http_request_header(&name, None);
        }
    }

    /// Takes an in-flight slot and charges the local counters at `now_ns` (the time the
    /// body decision started). `Err` is the answer to send.
    fn admit(&mut self, exchange: &Exchange, now_ns: u64) -> Result<(), Rejection> {
        let id = exchange.request_id();
        if let (true, Some(max)) = (exchange.counts_in_flight, self.gateway.max_in_flight()) {
            let key = quota::in_flight_key(&exchange.consumer.name);
            let taken = shared::update(&key, now_ns, &mut |bytes| {
                let open = quota::decode_count(bytes);
                if open >= max {
                    (None, false)
                } else {
                    (Some(quota::encode_count(open + 1).to_vec()), true)
                }
            });
            match taken {
                Ok(true) => self.in_flight = Some(key),
                Ok(false) => return Err(quota::in_flight_rejection(max, id)),
                Err(e) => {
                    log::error!("meshgate: in-flight counter unavailable: {e}");
                    return Err(Rejection::limiter_unavailable("the in-flight limit").with_id(id));
                }
            }
        }
        for charge in &exchange.charges.local {
            match take(charge, self.gateway.max_local_counters(), now_ns) {
                Ok(None) => {}
                Ok(Some(retry_after)) => return Err(charge.rejection(retry_after, id)),
                Err(e) => {
                    log::error!("meshgate: quota counter {} unavailable: {e}", charge.rule);
                    return Err(Rejection::limiter_unavailable(&format!("rate limit \"{}\"", charge.rule)).with_id(id));
                }
            }
        }
        Ok(())
    }

    /// Gives the in-flight slot back (at most once per stream).
    fn release_in_flight(&mut self) {
        let Some(key) = self.in_flight.take() else {
            return;
        };
        let released = shared::update(&key, self.now_ns(), &mut |bytes| {
            let open = quota::decode_count(bytes);
            (Some(quota::encode_count(open.saturating_sub(1)).to_vec()), ())
        });
        if let Err(e) = released {
            log::error!("meshgate: could not release an in-flight slot ({key}): {e}");
        }
    }

    fn decide_body(&mut self, pending: &PendingRequest, body_size: usize) -> Action {
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let started = self.now_ns();
        let decided = self.gateway.on_request_body(pending, &body).and_then(|exchange| {
            self.admit(&exchange, started)?;
            Ok(exchange)
        });
        self.decision_ns += self.now_ns().saturating_sub(started);
        match decided {
            Ok(exchange) => {
                let mut record = AuditRecord::for_exchange(&exchange);
                let forwarded = exchange.rewritten_request.as_deref().unwrap_or(&body);
                record.capture_arguments(&self.gateway.config().audit_values, forwarded);
                self.audit = Some(record);
                for global in &exchange.charges.global {
                    self.set_http_request_header(&global.header, Some(&global.value));
                }
                for (name, value) in &exchange.request_header_rewrites {
                    self.set_http_request_header(name, value.as_deref());
                }
                if let Some(rewritten) = &exchange.rewritten_request {
                    self.set_http_request_header("content-length", Some(&rewritten.len().to_string()));
                    self.set_http_request_body(0, body_size, rewritten);
                }
                self.state = State::Forwarded(exchange);
                Action::Continue
            }
            Err(r) => {
                self.audit = Some(AuditRecord::for_pending(pending, &body));
                log::info!(
                    "meshgate: refused consumer={} status={} code={} reason={}",
                    pending.consumer().name,
                    r.status,
                    r.code,
                    r.message
                );
                self.reject(&r)
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = lenient(self.get_http_request_headers_bytes());
        #[cfg(feature = "test-crash-trigger")]
        {
            self.crash_at = header_value(&headers, test_crash::HEADER).map(str::to_string);
            test_crash::maybe(&self.crash_at, "request-headers");
        }
        let find = |name: &str| header_value(&headers, name).unwrap_or_default();
        let head = RequestHead { method: find(":method"), path: find(":path"), headers: &headers, end_of_stream };
        let started = self.now_ns();
        let now = started / 1_000_000_000;
        let decision = {
            let mut tokens = self.tokens.borrow_mut();
            self.gateway.on_request_head(head, now, &mut tokens)
        };
        self.decision_ns += self.now_ns().saturating_sub(started);
        match decision {
            HeadDecision::PassThrough => {
                self.state = State::Done;
                Action::Continue
            }
            HeadDecision::Reject(r) => {
                let config = self.gateway.config();
                self.audit = Some(AuditRecord::for_path(&config.route_prefix, &config.servers, head.path));
                self.reject(&r)
            }
            HeadDecision::Forward(exchange) => {
                self.audit = Some(AuditRecord::for_exchange(&exchange));
                self.strip_request_headers(&headers);
                self.state = State::Forwarded(exchange);
                Action::Continue
            }
            HeadDecision::AwaitBody(pending) => {
                self.strip_request_headers(&headers);
                if end_of_stream {
                    // A POST without a body: decide now (it is refused as unparsable).
                    return self.decide_body(&pending, 0);
                }
                self.state = State::AwaitingBody { pending, buffered: 0 };
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let State::AwaitingBody { pending, buffered } = &mut self.state else {
            return Action::Continue;
        };
        if let Some(r) = self.gateway.request_too_large(pending, body_size as u64) {
            self.audit = Some(AuditRecord::for_pending(pending, &[]));
            return self.reject(&r);
        }
        if !end_of_stream {
            *buffered = body_size;
            return Action::Pause;
        }
        let pending = pending.clone();
        self.decide_body(&pending, body_size)
    }

    /// Trailers end the request: no body callback with `end_of_stream` follows, and
    /// continuing here would send the buffered body upstream undecided. Decide on it now.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let State::AwaitingBody { pending, buffered } = &self.state else {
            return Action::Continue;
        };
        let (pending, buffered) = (pending.clone(), *buffered);
        self.decide_body(&pending, buffered)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-crash-trigger")]
        test_crash::maybe(&self.crash_at, "response-headers");
        let State::Forwarded(exchange) = &self.state else {
            return Action::Continue;
        };
        // One host call for every header: each host call that returns data costs a callback
        // into the VM to allocate its buffer, about as much as copying a whole header map.
        let headers = lenient(self.get_http_response_headers_bytes());
        let header = |name: &str| header_value(&headers, name).map(str::to_string);
        let status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some(record) = self.audit.as_mut() {
            record.upstream_answer(Some(status), None);
        }
        // Only a 429 can be the ratelimit filter's refusal.
        let ratelimited = status == 429
            && header(quota::ENVOY_RATELIMITED_HEADER).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if ratelimited {
            let rule = header(quota::LIMIT_RULE_RESPONSE_HEADER);
            let retry_after = header("retry-after");
            let reset = header("x-ratelimit-reset");
            let error = header(quota::LIMIT_ERROR_RESPONSE_HEADER);
            let refusal = quota::GlobalRefusal {
                rule: rule.as_deref(),
                retry_after: retry_after.as_deref(),
                ratelimit_reset: reset.as_deref(),
                error: error.as_deref(),
            };
            let r = self.gateway.global_rejection(exchange, &refusal);
            log::info!(
                "meshgate: refused by the global rate limit consumer={} reason={}",
                exchange.consumer.name,
                r.message
            );
            return self.replace_response(&r, end_of_stream);
        }
        if end_of_stream {
            // No body callback follows: settle now, the last chance before the span ends.
            if let Some(record) = self.audit.as_mut() {
                record.redactions = self.redactions.clone();
                record.finish();
            }
            self.publish_audit(Moment::Settled);
        }
        // Repeated headers joined, as clients read them.
        let plan = exchange.response_plan_from(status, &mut |name| header_values(&headers, name).map(String::from));
        self.response = match plan {
            ResponsePlan::Fail(r) => return self.replace_response(&r, end_of_stream),
            ResponsePlan::PassThrough => return Action::Continue,
            ResponsePlan::Buffer(kind) => Response::Buffer(kind),
            ResponsePlan::Stream => Response::Stream(SseRewriter::new()),
            ResponsePlan::Replace(body) => {
                self.set_http_response_header("content-encoding", None);
                self.set_http_response_header("content-type", Some("application/json"));
                Response::Replace(body)
            }
        };
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-crash-trigger")]
        test_crash::maybe(&self.crash_at, "response-body");
        // The chunk is copied out of Envoy at most once per callback, for the error check
        // and the rewrite alike. A body being buffered is looked at whole, at its end.
        let mut chunk = None;
        if end_of_stream || !matches!(self.response, Response::Buffer(_)) {
            self.note_upstream_error(body_size, &mut chunk);
        }
        let action = self.govern_response_body(body_size, end_of_stream, &mut chunk);
        if end_of_stream {
            // Settle the decision now: span tags are read when the stream ends, before on_log.
            if let Some(record) = self.audit.as_mut() {
                record.redactions = self.redactions.clone();
                record.finish();
            }
            self.publish_audit(Moment::Settled);
        }
        action
    }

    fn on_log(&mut self) {
        self.release_in_flight();
        let Some(mut record) = self.audit.take() else {
            return;
        };
        record.redactions = std::mem::take(&mut self.redactions);
        record.decision_us = self.decision_ns / 1000;
        record.finish();
        self.audit = Some(record);
        self.publish_audit(Moment::Log);
        if let Some(record) = &self.audit {
            metrics::record(record, self.gateway.config().metrics);
        }
    }
}

/// Largest response chunk read for the upstream's JSON-RPC error code (answers to requests
/// are small; bigger chunks are results, not errors).
const ERROR_PEEK_BYTES: usize = 64 * 1024;

impl Stream {
    /// The response body Envoy holds for this callback, read from the host on first use.
    fn response_chunk<'a>(&self, cache: &'a mut Option<Vec<u8>>, body_size: usize) -> &'a [u8] {
        cache.get_or_insert_with(|| self.get_http_response_body(0, body_size).unwrap_or_default())
    }

    /// Looks for a JSON-RPC error in the upstream's answer to a request, before any rewrite.
    fn note_upstream_error(&mut self, body_size: usize, chunk: &mut Option<Vec<u8>>) {
        let State::Forwarded(exchange) = &self.state else {
            return;
        };
        let wanted = exchange.request_id().is_some()
            && body_size > 0
            && body_size <= ERROR_PEEK_BYTES
            && self.audit.as_ref().is_some_and(|r| r.upstream_error_code.is_none());
        if !wanted {
            return;
        }
        let code = audit::response_error_code(self.response_chunk(chunk, body_size));
        if let (Some(code), Some(record)) = (code, self.audit.as_mut()) {
            record.upstream_answer(None, Some(code));
        }
    }

    /// A response the gateway rewrote into a blocking error: the exchange is `blocked`.
    fn note_blocked(audit: &mut Option<AuditRecord>, rewritten: &[u8], server: &str) {
        let Some(record) = audit.as_mut() else {
            return;
        };
        if record.upstream_error_code.is_none() && audit::response_error_code(rewritten) == Some(code::FORBIDDEN) {
            record.response_blocked(&format!("the response from {server} was blocked by a redaction rule"));
        }
    }

    fn govern_response_body(&mut self, body_size: usize, end_of_stream: bool, chunk: &mut Option<Vec<u8>>) -> Action {
        let State::Forwarded(exchange) = &self.state else {
            return Action::Continue;
        };
        let policy = &self.gateway.config().policy;
        match std::mem::replace(&mut self.response, Response::Untouched) {
            Response::Untouched => Action::Continue,
            Response::Buffer(kind) => {
                let limit = exchange.response_limit.unwrap_or_else(|| self.gateway.max_response_bytes());
                if body_size as u64 > limit {
                    let message = format!("upstream response exceeds the {limit}-byte limit");
                    let body = error_body(exchange.request_id(), code::INTERNAL_ERROR, &message);
                    self.set_http_response_body(0, body_size, &body);
                    // Anything still to come is dropped.
                    self.response = Response::Replace(Vec::new());
                    return Action::Continue;
                }
                if !end_of_stream {
                    self.response = Response::Buffer(kind);
                    return Action::Pause;
                }
                let body = self.response_chunk(chunk, body_size);
                if let Some(new) = exchange.rewrite_body(kind, body, policy, &mut self.redactions) {
                    Self::note_blocked(&mut self.audit, &new, &exchange.server);
                    self.set_http_response_body(0, body_size, &new);
                }
                Action::Continue
            }
            Response::Stream(mut rewriter) => {
                let chunk = self.response_chunk(chunk, body_size);
                let counts = &mut self.redactions;
                let mut rewrite = |data: EventData<'_>| exchange.rewrite_event(data, policy, counts);
                let mut out = rewriter.feed(chunk, &mut rewrite);
                if end_of_stream {
                    out.extend(rewriter.finish(&mut rewrite));
                }
                // An event still growing past the limit is never sent: the stream ends with
                // an error for the request, and the rest of the upstream's bytes are dropped.
                // Streams without a request (GET) are bounded by the default limit: the VM
                // never holds an unbounded event.
                let limit = exchange.response_limit.unwrap_or_else(|| self.gateway.max_response_bytes());
                let overflow = Some(limit).filter(|l| rewriter.pending_len() as u64 > *l);
                if let Some(limit) = overflow {
                    out.extend(exchange.oversized_sse_event(limit));
                    self.set_http_response_body(0, body_size, &out);
                    self.response = Response::Replace(Vec::new());
                    return Action::Continue;
                }
                if out != chunk {
                    Self::note_blocked(&mut self.audit, &out, &exchange.server);
                    self.set_http_response_body(0, body_size, &out);
                }
                self.response = Response::Stream(rewriter);
                Action::Continue
            }
            Response::Replace(body) => {
                let replacement = if end_of_stream { body.as_slice() } else { &[] };
                self.set_http_response_body(0, body_size, replacement);
                if !end_of_stream {
                    self.response = Response::Replace(body);
                }
                Action::Continue
            }
        }
    }
}

/// A header map as the core reads it, values decoded leniently. HTTP header values may
/// carry any byte (obs-text such as Latin-1), and the SDK's `String` readers panic on one
/// that is not UTF-8, which would trap and kill the worker's VM for every later request.
/// Here such bytes become U+FFFD: the value then equals no credential, session id or
/// routing header the core compares it with (it fails closed), and Envoy still forwards
/// the original bytes. Names are tokens (Envoy's codecs refuse anything else).
fn lenient(map: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    map.into_iter()
        .map(|(name, value)| {
            let value = String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            (name, value)
        })
        .collect()
}

/// Charges one local counter. `Ok(None)`: admitted; `Ok(Some(secs))`: refused, retry after.
/// When `cap` counters exist and this call's does not, its rule's overflow counter is
/// charged instead (see [`LocalCharge::overflow_key`]).
fn take(charge: &LocalCharge, cap: u64, now_ns: u64) -> Result<Option<u64>, shared::SharedError> {
    let mut compute = |bytes: Option<&[u8]>| {
        let taken = charge.limit.take(bytes.and_then(QuotaState::decode), now_ns);
        if taken.admitted {
            (Some(taken.state.encode().to_vec()), None)
        } else {
            // A refusal changes nothing that matters: skip the write, spare the contention.
            (None, Some(taken.retry_after_secs))
        }
    };
    match shared::update_capped(&charge.shared_key, Some(cap), now_ns, &mut compute) {
        Err(e @ shared::SharedError::Full { .. }) => {
            warn_overflow_once(&e);
            shared::update(&charge.overflow_key(), now_ns, &mut compute)
        }
        other => other,
    }
}

/// Logs, once per worker, that new quota counters go to overflow counters.
fn warn_overflow_once(e: &shared::SharedError) {
    thread_local! {
        static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        log::warn!("meshgate: {e}: calls needing a new quota counter are charged to their rule's overflow counter");
    }
}

/// Test builds only (feature `test-crash-trigger`): a deliberate VM crash, so the e2e suite
/// can prove that a crashed VM fails one request and is reloaded for the next.
#[cfg(feature = "test-crash-trigger")]
mod test_crash {
    /// The request header naming the callback to crash in.
    pub const HEADER: &str = "x-meshgate-test-crash";

    /// Aborts the VM (a wasm trap: Envoy's `RuntimeError` fail state) when `asked` names
    /// `callback`.
    pub fn maybe(asked: &Option<String>, callback: &str) {
        if asked.as_deref().is_some_and(|v| v.trim() == callback) {
            log::error!("meshgate: test crash in {callback}");
            std::process::abort();
        }
    }
}
