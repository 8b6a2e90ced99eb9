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

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use meshgate_core::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use meshgate_core::gateway::{
    Exchange, Gateway, HeadDecision, PendingRequest, RequestHead, ResponseHead, ResponsePlan, STRIPPED_REQUEST_HEADERS,
};
use meshgate_core::identity::TokenCache;
use meshgate_core::jsonrpc::{code, error_body};
use meshgate_core::redact::RedactionCounts;
use meshgate_core::reject::Rejection;
use meshgate_core::sse::SseRewriter;
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

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let compiled = RawFilterConfig::from_json(&bytes).and_then(|raw| FilterConfig::compile(&raw, &EnvSecrets));
        match compiled {
            Ok(config) => {
                let gateway = Gateway::new(config);
                self.tokens = Rc::new(RefCell::new(gateway.new_token_cache()));
                self.gateway = Some(Rc::new(gateway));
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
    /// Waiting for the whole POST body.
    AwaitingBody(PendingRequest),
    /// Let through; its response may need work.
    Forwarded(Exchange),
}

/// What the response body needs.
enum Response {
    Untouched,
    /// Buffer the whole body, then rewrite it.
    Buffer,
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
}

impl Context for Stream {}

impl Stream {
    fn now(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    /// Answers locally; the request never reaches the upstream.
    fn reject(&mut self, r: &Rejection) -> Action {
        self.state = State::Done;
        let headers = r.response_headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(u32::from(r.status), headers, Some(&r.body()));
        Action::Pause
    }

    fn strip_request_headers(&self) {
        for name in STRIPPED_REQUEST_HEADERS {
            self.set_http_request_header(name, None);
        }
    }

    fn decide_body(&mut self, pending: &PendingRequest, body_size: usize) -> Action {
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.gateway.on_request_body(pending, &body) {
            Ok(exchange) => {
                if let Some(rewritten) = &exchange.rewritten_request {
                    self.set_http_request_header("content-length", Some(&rewritten.len().to_string()));
                    self.set_http_request_body(0, body_size, rewritten);
                }
                self.state = State::Forwarded(exchange);
                Action::Continue
            }
            Err(r) => {
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
        let headers = self.get_http_request_headers();
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        let head = RequestHead { method: find(":method"), path: find(":path"), headers: &headers };
        let now = self.now();
        let decision = {
            let mut tokens = self.tokens.borrow_mut();
            self.gateway.on_request_head(head, now, &mut tokens)
        };
        match decision {
            HeadDecision::PassThrough => {
                self.state = State::Done;
                Action::Continue
            }
            HeadDecision::Reject(r) => self.reject(&r),
            HeadDecision::Forward(exchange) => {
                self.strip_request_headers();
                self.state = State::Forwarded(exchange);
                Action::Continue
            }
            HeadDecision::AwaitBody(pending) => {
                self.strip_request_headers();
                if end_of_stream {
                    // A POST without a body: decide now (it is refused as unparsable).
                    return self.decide_body(&pending, 0);
                }
                self.state = State::AwaitingBody(pending);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let State::AwaitingBody(pending) = &self.state else {
            return Action::Continue;
        };
        if let Some(r) = self.gateway.request_too_large(body_size as u64) {
            return self.reject(&r);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let pending = pending.clone();
        self.decide_body(&pending, body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let State::Forwarded(exchange) = &self.state else {
            return Action::Continue;
        };
        let status = self.get_http_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let content_type = self.get_http_response_header("content-type");
        let content_encoding = self.get_http_response_header("content-encoding");
        let plan = exchange.response_plan(ResponseHead {
            status,
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
        });
        self.response = match plan {
            ResponsePlan::PassThrough => return Action::Continue,
            ResponsePlan::Buffer => Response::Buffer,
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
        let State::Forwarded(exchange) = &self.state else {
            return Action::Continue;
        };
        let policy = &self.gateway.config().policy;
        match std::mem::replace(&mut self.response, Response::Untouched) {
            Response::Untouched => Action::Continue,
            Response::Buffer => {
                let limit = self.gateway.max_response_bytes();
                if body_size as u64 > limit {
                    let message = format!("upstream response exceeds the {limit}-byte limit");
                    let body = error_body(exchange.request_id(), code::INTERNAL_ERROR, &message);
                    self.set_http_response_body(0, body_size, &body);
                    // Anything still to come is dropped.
                    self.response = Response::Replace(Vec::new());
                    return Action::Continue;
                }
                if !end_of_stream {
                    self.response = Response::Buffer;
                    return Action::Pause;
                }
                let body = self.get_http_response_body(0, body_size).unwrap_or_default();
                if let Some(new) = exchange.rewrite_message(&body, policy, &mut self.redactions) {
                    self.set_http_response_body(0, body_size, &new);
                }
                Action::Continue
            }
            Response::Stream(mut rewriter) => {
                let chunk = self.get_http_response_body(0, body_size).unwrap_or_default();
                let counts = &mut self.redactions;
                let mut rewrite =
                    |data: &str| exchange.rewrite_message(data.as_bytes(), policy, counts).and_then(|b| String::from_utf8(b).ok());
                let mut out = rewriter.feed(&chunk, &mut rewrite);
                if end_of_stream {
                    out.extend(rewriter.finish(&mut rewrite));
                }
                if out != chunk {
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
