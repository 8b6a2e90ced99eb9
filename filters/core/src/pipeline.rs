//! The per-stream state machine of the Envoy filter, written once for both builds.
//!
//! One [`Stream`] per HTTP stream walks: request headers → (await the body) → decide →
//! forward or answer locally → response plan → rewrite the response (buffered JSON, SSE
//! events as they complete, or a replacement) → the audit record and metrics when the
//! stream ends. It holds no host code: everything it asks of Envoy goes through [`Host`],
//! which the proxy-wasm build (`filters/wasm`) and the dynamic-module build
//! (`filters/native`) implement, and an in-memory host implements for the tests beside
//! this file.
//!
//! What the two hosts differ in stays behind the trait:
//! - bodies: proxy-wasm hands over "the first `size` bytes Envoy holds"; a dynamic module
//!   sees a buffered part and the current chunk. The pipeline only asks for "the body this
//!   callback sees" ([`Host::request_body`]) and replaces it whole;
//! - counters: local quota counters and in-flight slots are byte values updated by a pure
//!   function ([`Host::update_counter`]): proxy-wasm shared data under compare-and-swap, or
//!   process memory under a lock. Either way the update is exact across workers;
//! - metrics, audit fields, the clock and the log.
//!
//! Invariants (as in the wasm filter this came from): a request is forwarded only after
//! the gateway decided on its whole body; any failure to read or update a counter refuses
//! the call (503); the in-flight slot is given back exactly once, in [`Stream::on_log`],
//! which the host calls once for every stream however it ended (client resets included);
//! audit fields are written only when something reads them, and never twice with the same
//! value.

use std::fmt;
use std::sync::Arc;

use crate::approval::{self, CheckAnswer, CheckRequest};
use crate::audit::{self, AuditRecord, MetricOptions};
use crate::gateway::{
    header_value, header_values, headers_to_strip, BodyDecision, BodyKind, CalloutRequest, CalloutResponse, Exchange,
    FanOut, Gateway, HeadDecision, PendingRequest, RequestHead, ResponsePlan, SessionOp,
};
use crate::identity::TokenCache;
use crate::jsonrpc::{code, error_body};
use crate::pinning::PinMode;
use crate::quota::{self, LocalCharge, State as QuotaState};
use crate::redact::RedactionCounts;
use crate::reject::Rejection;
use crate::sse::{EventData, SseRewriter};
use crate::upstream_token::{self, Lookup, NoSubjectToken, TokenExchange};

/// Largest response chunk read for the upstream's JSON-RPC error code (answers to requests
/// are small; bigger chunks are results, not errors).
pub const ERROR_PEEK_BYTES: usize = 64 * 1024;

/// What the host does with the data of the callback that returned this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let it through.
    Continue,
    /// Hold it, and keep what came before: the pipeline needs more of the body.
    Pause,
    /// The pipeline answered locally ([`Host::send_local_reply`]): stop the stream here.
    Answered,
}

/// Log levels the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Why a counter could not be read or updated. The pipeline fails closed on any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The host refused a call (its own words).
    #[error("{0}")]
    Host(String),
    /// Still contended after a bounded number of attempts.
    #[error("counter still contended after bounded retries")]
    Contended,
    /// The key does not exist and `cap` capped keys already do.
    #[error("{cap} counters exist (limits.max_local_counters)")]
    Full { cap: u64 },
}

/// A counter update: the stored bytes (`None`: no key yet) → the bytes to store (`None`:
/// leave it as it is). It may run several times (once per attempt); only the last run's
/// write counts, so it must be a pure function of its input and what it captured.
pub type Compute<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// Everything the pipeline needs from Envoy, for one stream. Header names are lowercase;
/// header values are decoded leniently (bytes that are not UTF-8 become U+FFFD, so they
/// equal no credential or routing value the core compares them with).
///
/// Headers and the request body are lent to a closure rather than returned: a host that
/// can show Envoy's own memory (the dynamic module) copies nothing, and nothing the
/// pipeline keeps can point into a map or buffer that a later call changes.
pub trait Host {
    /// Runs `read` over every request header, pseudo-headers included (one host call).
    fn with_request_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R;
    /// Replaces every value of a request header; `None` removes it.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    /// Runs `read` over the whole request body Envoy holds for this callback (`size` bytes).
    fn with_request_body<R>(&mut self, size: usize, read: impl FnOnce(&[u8]) -> R) -> R;
    /// Replaces the request body ([`Self::with_request_body`]'s `size` bytes) with `body`.
    fn set_request_body(&mut self, size: usize, body: &[u8]);
    /// Runs `read` over every response header, `:status` included (one host call).
    fn with_response_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R;
    /// Replaces every value of a response header; `None` removes it.
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    /// The response body this callback sees: the part Envoy holds for the filter (when it
    /// paused) followed by the new chunk, `size` bytes in all.
    fn response_body(&mut self, size: usize) -> Vec<u8>;
    /// Runs `read` over [`Self::response_body`]'s bytes, for a look that keeps nothing: a
    /// host that can show Envoy's own memory lends it instead of copying it.
    fn with_response_body<R>(&mut self, size: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        read(&self.response_body(size))
    }
    /// Replaces [`Self::response_body`]'s `size` bytes with `body`.
    fn set_response_body(&mut self, size: usize, body: &[u8]);
    /// Makes Envoy select the route again for this request (after the pipeline set a
    /// request header routes match: [`crate::virtual_server::TARGET_HEADER`]).
    fn clear_route_cache(&mut self);
    /// Starts an HTTP callout: `request` sent to its cluster by Envoy itself (no route, no
    /// filter of this listener), bounded by its timeout. `Ok(id)`: the host calls
    /// [`Stream::on_callout_done`] with this id exactly once, however the callout ends
    /// (unless the stream ended first). `Err`: it was not started (the host's words).
    fn start_callout(&mut self, request: &CalloutRequest) -> Result<u64, String>;
    /// Parks this stream until the token exchange of the cache slot `key` settles: after
    /// [`Self::wake_token_waiters`] for `key` on any worker of this Envoy, or at the latest
    /// after a bounded poll period, the host calls [`Stream::on_token_ready`] once (unless
    /// the stream ended first). A stream parks at most once at a time. `false`: it could
    /// not be parked (nothing would wake it); the call then fails closed.
    fn park_for_token(&mut self, key: &str) -> bool;
    /// Wakes every stream parked on `key` (any worker of this Envoy).
    fn wake_token_waiters(&mut self, key: &str);
    /// Lets a request the pipeline paused (its body held) continue to the upstream, after
    /// an asynchronous decision: meshgate's approval ([`Stream::on_callout_done`]) or the
    /// caller's upstream token ([`Stream::on_token_ready`]).
    fn resume_request(&mut self);
    /// Answers the request locally; nothing (more) reaches the upstream.
    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// The pipeline is about to hold up to `bytes` of this stream's body: a host whose own
    /// buffer limit is smaller raises it for this stream (the gateway, not Envoy, answers
    /// an oversized body). Nothing to do by default.
    fn hold_body(&mut self, bytes: u64) {
        let _ = bytes;
    }
    /// Updates the counter at `key` with `compute`, exactly, across every worker of this
    /// Envoy. With `cap`, creating the key counts against `cap` keys created this way:
    /// past it, `Err(Full)` and nothing is written.
    fn update_counter(
        &mut self,
        key: &str,
        cap: Option<u64>,
        now_ns: u64,
        compute: &mut Compute<'_>,
    ) -> Result<(), CounterError>;
    /// Records the metrics of one finished exchange. Never fails the exchange.
    fn record_metrics(&mut self, record: &AuditRecord, options: MetricOptions);
    /// Writes one audit field where the access log and span tags read it.
    fn set_audit_field(&mut self, key: &'static str, value: &str);
    /// Wall-clock time, Unix nanoseconds. May be a host call: read once per step.
    fn now_ns(&self) -> u64;
    fn log(&mut self, level: Level, message: fmt::Arguments<'_>);
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
    /// A virtual server's discovery request: waiting for the callouts to its backing
    /// servers (`ids[i]` for `fan_out.backends[i]`; `answers[i]` once it ended).
    FanningOut { fan_out: FanOut, ids: Vec<Option<u64>>, answers: Vec<Option<CalloutAnswer>> },
    /// A virtual server's session-era request answered by the filter: waiting for its
    /// callouts (`ids[i]` for `op.callouts[i]`; `answers[i]` once it ended).
    SessionCallouts { op: SessionOp, ids: Vec<Option<u64>>, answers: Vec<Option<CalloutAnswer>> },
    /// A guarded `tools/call` (rewritten, charged, held): waiting for meshgate's approval
    /// check, callout `id`.
    AwaitingApproval { exchange: Exchange, check: CheckRequest, id: u64 },
    /// Allowed, and waiting for the caller's upstream token ([`crate::upstream_token`]):
    /// the request is paused; it continues with the token or is refused.
    AwaitingToken { exchange: Exchange, wait: TokenWait },
}

/// What a call waiting for its upstream token waits for.
struct TokenWait {
    /// The cache identity (consumer, server, scope) and its slot's key.
    identity: String,
    key: String,
    step: TokenStep,
}

enum TokenStep {
    /// This stream holds the lease: its callout `id` makes the exchange.
    Leading { id: u64, lease_deadline_ns: u64 },
    /// Another stream's exchange for the same identity is in flight; parked since then.
    Waiting { since_ns: u64 },
}

/// The caller's bearer token, kept only while a token exchange may need it as the subject
/// token. Never printed: its `Debug` says nothing.
struct SubjectToken(String);

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectToken(..)")
    }
}

/// What a body decision answered by callouts waits for.
enum Callouts {
    FanOut(Box<FanOut>),
    Session(SessionOp),
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

/// When [`Stream::publish_audit`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// The exchange is settled (refused, or its response ended) before the stream ends:
    /// only span tags need the fields this early.
    Settled,
    /// `on_log`: the access loggers read the fields next.
    Log,
}

/// One HTTP stream through the gateway.
pub struct Stream {
    gateway: Arc<Gateway>,
    state: State,
    response: Response,
    /// Redactions made in this exchange, per detector (never values).
    redactions: RedactionCounts,
    /// The counter key of the in-flight slot this stream holds; given back once, in `on_log`.
    in_flight: Option<String>,
    /// What this exchange looked like so far; `None` for streams the gateway does not govern.
    audit: Option<AuditRecord>,
    /// Nanoseconds spent in the core's request-path decisions.
    decision_ns: u64,
    /// The audit fields already written: each write copies into Envoy, so a field is
    /// written again only when its value changed.
    published: Vec<(&'static str, String)>,
    /// The caller's bearer token, kept only when some server has token exchange.
    subject_token: Option<SubjectToken>,
}

impl Stream {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            gateway,
            state: State::Headers,
            response: Response::Untouched,
            redactions: RedactionCounts::new(),
            in_flight: None,
            audit: None,
            decision_ns: 0,
            published: Vec::new(),
            subject_token: None,
        }
    }

    /// The configuration this stream runs under (the one current when it started).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Whether this stream holds an in-flight slot it has not given back yet.
    pub fn holds_in_flight_slot(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Answers locally; the request never reaches the upstream.
    fn reject(&mut self, host: &mut impl Host, r: &Rejection) -> Flow {
        let mut record = self.audit.take().unwrap_or_default();
        record.refused(r);
        self.audit = Some(record);
        self.publish_audit(host, Moment::Settled);
        self.state = State::Done;
        let headers = r.response_headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(r.status, &headers, &r.body());
        Flow::Answered
    }

    /// Answers with `r` instead of the upstream's response (its headers not sent yet):
    /// status, headers and body. With `end_of_stream` no body callback follows: answer anew.
    fn replace_response(&mut self, host: &mut impl Host, r: &Rejection, end_of_stream: bool) -> Flow {
        if let Some(record) = self.audit.as_mut() {
            record.refused(r);
        }
        if end_of_stream {
            return self.reject(host, r);
        }
        self.publish_audit(host, Moment::Settled);
        host.set_response_header(":status", Some(&r.status.to_string()));
        for (name, value) in r.response_headers() {
            host.set_response_header(name, Some(&value));
        }
        host.set_response_header("content-encoding", None);
        host.set_response_header("content-length", None);
        self.response = Response::Replace(r.body());
        Flow::Continue
    }

    /// Writes the audit fields for the access log and span tags: never when the
    /// configuration says nothing reads them, and at [`Moment::Settled`] only when tracing
    /// reads them that early. A field is written only when its value differs from what
    /// was written before (an empty value is what an unset field reads as).
    fn publish_audit(&mut self, host: &mut impl Host, moment: Moment) {
        let config = self.gateway.config();
        if !config.audit_fields || (moment == Moment::Settled && !config.audit_before_stream_end) {
            return;
        }
        let Some(record) = self.audit.as_ref() else {
            return;
        };
        let decision_us = self.decision_ns / 1000;
        // Without tracing, `on_log` is the only write: nothing to compare with, nothing to keep.
        if !config.audit_before_stream_end {
            record.for_each_field(decision_us, |key, value| {
                if !value.is_empty() {
                    host.set_audit_field(key, value);
                }
            });
            return;
        }
        let published = &mut self.published;
        record.for_each_field(decision_us, |key, value| {
            match published.iter_mut().find(|(k, _)| *k == key) {
                Some((_, old)) if old == value => return,
                Some((_, old)) => value.clone_into(old),
                None if value.is_empty() => return,
                None => published.push((key, value.to_string())),
            }
            host.set_audit_field(key, value);
        });
    }

    fn strip_request_headers(host: &mut impl Host, names: &[String]) {
        for name in names {
            host.set_request_header(name, None);
        }
    }

    /// Takes an in-flight slot and charges the local counters at `now_ns` (the time the
    /// body decision started). `Err` is the answer to send.
    fn admit(&mut self, host: &mut impl Host, exchange: &Exchange, now_ns: u64) -> Result<(), Rejection> {
        let id = exchange.request_id();
        // A call of a pinned item under enforce: refused when its last listing (on any
        // worker) drifted. One read of the server's drift state; fails closed.
        if let (Some(pins), Some(target)) = (&exchange.server_pins, exchange.message.as_ref().and_then(|m| m.target()))
        {
            let mut refusal = None;
            let mut compute = |stored: Option<&[u8]>| {
                refusal = pins.refuse_drifted(target.kind, &target.name, stored);
                None
            };
            match host.update_counter(&pins.state_key(), None, now_ns, &mut compute) {
                Ok(()) => {}
                Err(e) => {
                    host.log(
                        Level::Error,
                        format_args!("meshgate: pin drift state of {} unavailable: {e}", pins.server),
                    );
                    return Err(Rejection::forbidden(format!(
                        "{} \"{}/{}\" is refused: the pin drift state cannot be read",
                        target.kind.noun(),
                        pins.server,
                        crate::reject::printable(&target.name)
                    ))
                    .with_id(id));
                }
            }
            if let Some(why) = refusal {
                return Err(Rejection::forbidden(why).with_id(id));
            }
        }
        if let (true, Some(max)) = (exchange.counts_in_flight, self.gateway.max_in_flight()) {
            let key = quota::in_flight_key(&exchange.consumer.name);
            let mut taken = false;
            let updated = host.update_counter(&key, None, now_ns, &mut |bytes| {
                let open = quota::decode_count(bytes);
                taken = open < max;
                taken.then(|| quota::encode_count(open + 1).to_vec())
            });
            match updated {
                Ok(()) if taken => self.in_flight = Some(key),
                Ok(()) => return Err(quota::in_flight_rejection(max, id)),
                Err(e) => {
                    host.log(Level::Error, format_args!("meshgate: in-flight counter unavailable: {e}"));
                    return Err(Rejection::limiter_unavailable("the in-flight limit").with_id(id));
                }
            }
        }
        for charge in &exchange.charges.local {
            match take(host, charge, self.gateway.max_local_counters(), now_ns) {
                Ok(None) => {}
                Ok(Some(retry_after)) => return Err(charge.rejection(retry_after, id)),
                Err(e) => {
                    host.log(Level::Error, format_args!("meshgate: quota counter {} unavailable: {e}", charge.rule));
                    return Err(Rejection::limiter_unavailable(&format!("rate limit \"{}\"", charge.rule)).with_id(id));
                }
            }
        }
        Ok(())
    }

    /// Gives the in-flight slot back (at most once per stream). [`Self::on_log`] does it;
    /// a host calls it directly only when a stream ends without `on_log`.
    pub fn release_in_flight(&mut self, host: &mut impl Host) {
        let Some(key) = self.in_flight.take() else {
            return;
        };
        let now_ns = host.now_ns();
        let released = host.update_counter(&key, None, now_ns, &mut |bytes| {
            let open = quota::decode_count(bytes);
            Some(quota::encode_count(open.saturating_sub(1)).to_vec())
        });
        if let Err(e) = released {
            host.log(Level::Error, format_args!("meshgate: could not release an in-flight slot ({key}): {e}"));
        }
    }

    fn decide_body(&mut self, host: &mut impl Host, pending: &PendingRequest, body_size: usize) -> Flow {
        let started = host.now_ns();
        let gateway = self.gateway.clone();
        // Everything that needs the body itself happens while the host lends it: the one
        // parse, and the audit record (the arguments it may carry are the forwarded ones).
        let read = host.with_request_body(body_size, |body| match gateway.decide_request_body(pending, body) {
            Ok(BodyDecision::Forward(exchange)) => {
                let mut record = AuditRecord::for_exchange(&exchange);
                let forwarded = exchange.rewritten_request.as_deref().unwrap_or(body);
                record.capture_arguments(&gateway.config().audit_values, forwarded);
                let approval = gateway.approval_check(pending, &exchange, forwarded);
                Ok(Ok((exchange, record, approval)))
            }
            Ok(BodyDecision::FanOut(fan_out)) => {
                Ok(Err((Callouts::FanOut(Box::new(fan_out)), AuditRecord::for_pending(pending, body))))
            }
            Ok(BodyDecision::Session(op)) => Ok(Err((Callouts::Session(op), AuditRecord::for_pending(pending, body)))),
            Err(r) => Err((r, AuditRecord::for_pending(pending, body))),
        });
        let read = match read {
            Ok(Ok(forward)) => Ok(forward),
            Ok(Err((callouts, record))) => {
                self.decision_ns += host.now_ns().saturating_sub(started);
                self.audit = Some(record);
                return match callouts {
                    Callouts::FanOut(fan_out) => self.start_fan_out(host, *fan_out),
                    Callouts::Session(op) => self.start_session_op(host, op),
                };
            }
            Err(refused) => Err(refused),
        };
        let decided = match read {
            // Arguments an approval cannot be bound to: refused before anything is charged.
            Ok((exchange, _, Some(Err(r)))) => {
                Err((r, AuditRecord::for_pending_message(pending, exchange.message.as_ref())))
            }
            Ok((exchange, record, approval)) => match self.admit(host, &exchange, started) {
                Ok(()) => Ok((exchange, record, approval.and_then(Result::ok))),
                Err(r) => Err((r, AuditRecord::for_pending_message(pending, exchange.message.as_ref()))),
            },
            Err(refused) => Err(refused),
        };
        self.decision_ns += host.now_ns().saturating_sub(started);
        match decided {
            Ok((exchange, record, approval)) => {
                self.audit = Some(record);
                for global in &exchange.charges.global {
                    host.set_request_header(&global.header, Some(&global.value));
                }
                let mut reroute = false;
                for (name, value) in &exchange.request_header_rewrites {
                    host.set_request_header(name, value.as_deref());
                    reroute |= name == crate::virtual_server::TARGET_HEADER;
                }
                if let Some(rewritten) = &exchange.rewritten_request {
                    host.set_request_header("content-length", Some(&rewritten.len().to_string()));
                    host.set_request_body(body_size, rewritten);
                }
                if reroute {
                    // A virtual server's call: the route naming its backing server applies.
                    host.clear_route_cache();
                }
                if let Some(check) = approval {
                    // Rewritten already: an approval resumes the request as it stands (and
                    // only then is its upstream token obtained).
                    return self.start_approval_check(host, exchange, check);
                }
                self.forward(host, exchange)
            }
            Err((r, record)) => {
                self.audit = Some(record);
                host.log(
                    Level::Info,
                    format_args!(
                        "meshgate: refused consumer={} status={} code={} reason={}",
                        pending.consumer().name,
                        r.status,
                        r.code,
                        r.message
                    ),
                );
                self.reject(host, &r)
            }
        }
    }

    /// Asks meshgate whether a guarded call has a usable approval; the request waits for the
    /// answer ([`Self::finish_approval_check`]). No callout, no forwarding: fail closed.
    fn start_approval_check(&mut self, host: &mut impl Host, exchange: Exchange, check: CheckRequest) -> Flow {
        let target = format!("{}/{}", check.server, check.tool);
        let started = self.gateway.config().approvals.callout(&check).ok_or_else(|| "no approval service".to_string());
        match started.and_then(|request| host.start_callout(&request)) {
            Ok(id) => {
                self.state = State::AwaitingApproval { exchange, check, id };
                Flow::Pause
            }
            Err(e) => {
                host.log(Level::Error, format_args!("meshgate: approval check of {target} could not start: {e}"));
                self.reject(host, &approval::unavailable(&target, exchange.request_id()))
            }
        }
    }

    /// meshgate answered a guarded call's approval check (or the callout failed): forward
    /// the held request on `approved`, answer the caller otherwise.
    fn finish_approval_check(&mut self, host: &mut impl Host, response: Result<CalloutResponse, String>) {
        let State::AwaitingApproval { exchange, check, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let target = format!("{}/{}", check.server, check.tool);
        let answer = response.and_then(|r| CheckAnswer::read(r.status, &r.body));
        let refusal = match &answer {
            Ok(answer) => approval::rejection(answer, &check.rule, &target, exchange.request_id()),
            Err(e) => {
                host.log(Level::Error, format_args!("meshgate: approval check of {target} failed: {e}"));
                Some(approval::unavailable(&target, exchange.request_id()))
            }
        };
        match refusal {
            // Approved: on to the upstream token, if the server needs one; the request
            // resumes now, or once its token is there (or is refused).
            None => {
                if let Flow::Continue = self.forward(host, exchange) {
                    host.resume_request();
                }
            }
            Some(r) => {
                host.log(
                    Level::Info,
                    format_args!(
                        "meshgate: refused consumer={} status={} code={} reason={}",
                        check.consumer, r.status, r.code, r.message
                    ),
                );
                self.reject(host, &r);
            }
        }
    }

    /// Starts one callout per backing server of a discovery request; the request waits
    /// for them ([`Self::on_callout_done`]), or is answered now when none could start.
    fn start_fan_out(&mut self, host: &mut impl Host, fan_out: FanOut) -> Flow {
        // A fresh merged list for this caller: answered from the cache, no callout.
        if let Some(body) = self.gateway.cached_fan_out(&fan_out, host.now_ns()) {
            if let Some(record) = self.audit.as_mut() {
                record.upstream_answer(Some(200), None);
                record.finish();
            }
            self.state = State::Done;
            self.publish_audit(host, Moment::Settled);
            host.send_local_reply(200, &[("content-type", "application/json")], &body);
            return Flow::Answered;
        }
        let (ids, answers) = start_callouts(host, fan_out.backends.iter().map(|b| &b.request));
        self.state = State::FanningOut { fan_out, ids, answers };
        if self.finish_fan_out(host) {
            Flow::Answered
        } else {
            Flow::Pause
        }
    }

    /// Starts the callouts of a virtual server's session-era request answered by the filter
    /// ([`SessionOp`]); the request waits for them, or is answered now when none could start
    /// (or none are needed).
    fn start_session_op(&mut self, host: &mut impl Host, op: SessionOp) -> Flow {
        let (ids, answers) = start_callouts(host, op.callouts.iter().map(|(_, request)| request));
        self.state = State::SessionCallouts { op, ids, answers };
        if self.finish_session_op(host) {
            Flow::Answered
        } else {
            Flow::Pause
        }
    }

    /// Answers a [`SessionOp`] whose callouts all ended; `false` while some are still open.
    fn finish_session_op(&mut self, host: &mut impl Host) -> bool {
        let State::SessionCallouts { answers, .. } = &self.state else {
            return false;
        };
        if answers.iter().any(Option::is_none) {
            return false;
        }
        let State::SessionCallouts { op, answers, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return false;
        };
        let answers: Vec<Result<CalloutResponse, String>> =
            answers.into_iter().map(|a| a.unwrap_or_else(|| Err("no answer".to_string()))).collect();
        let config = self.gateway.config();
        let answer = op.answer(&answers, config.virtual_session_keys.as_ref(), &config.policy, &mut self.redactions);
        for omission in &answer.omitted {
            host.log(
                Level::Warn,
                format_args!(
                    "meshgate: virtual server {} answered without {}: {}",
                    op.virtual_server, omission.server, omission.reason
                ),
            );
        }
        if let Some(record) = self.audit.as_mut() {
            record.fan_out_omissions = answer.omitted.iter().map(|o| o.server.clone()).collect();
            record.upstream_answer(Some(answer.status), None);
            record.finish();
        }
        self.publish_audit(host, Moment::Settled);
        let headers: Vec<(&str, &str)> = answer.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(answer.status, &headers, &answer.body);
        true
    }

    /// A callout of this stream ended: `response`, or why it failed (reset, timeout,
    /// an answer too large). The discovery request is answered once every callout ended.
    pub fn on_callout_done(&mut self, host: &mut impl Host, id: u64, response: Result<CalloutResponse, String>) {
        if let State::AwaitingApproval { id: own, .. } = &self.state {
            if *own == id {
                self.finish_approval_check(host, response);
            }
            return;
        }
        if let State::AwaitingToken { wait: TokenWait { step: TokenStep::Leading { id: own, .. }, .. }, .. } =
            &self.state
        {
            if *own == id {
                self.token_exchanged(host, response);
            }
            return;
        }
        if let State::SessionCallouts { ids, answers, .. } = &mut self.state {
            let Some(i) = ids.iter().position(|own| *own == Some(id)) else {
                return;
            };
            ids[i] = None;
            answers[i] = Some(response);
            self.finish_session_op(host);
            return;
        }
        let State::FanningOut { ids, answers, .. } = &mut self.state else {
            return;
        };
        let Some(i) = ids.iter().position(|own| *own == Some(id)) else {
            return;
        };
        ids[i] = None;
        answers[i] = Some(response);
        self.finish_fan_out(host);
    }

    /// Answers a fan-out whose callouts all ended; `false` while some are still open.
    fn finish_fan_out(&mut self, host: &mut impl Host) -> bool {
        let State::FanningOut { answers, .. } = &self.state else {
            return false;
        };
        if answers.iter().any(Option::is_none) {
            return false;
        }
        let State::FanningOut { fan_out, answers, .. } = std::mem::replace(&mut self.state, State::Done) else {
            return false;
        };
        let answers: Vec<Result<CalloutResponse, String>> =
            answers.into_iter().map(|a| a.unwrap_or_else(|| Err("no answer".to_string()))).collect();
        let policy = &self.gateway.config().policy;
        let (body, omitted, list) = fan_out.answer_cacheable(&answers, policy, &mut self.redactions);
        if let Some(list) = &list {
            self.gateway.store_fan_out(&fan_out, list, host.now_ns());
        }
        for omission in &omitted {
            host.log(
                Level::Warn,
                format_args!(
                    "meshgate: virtual server {} answered discovery without {}: {}",
                    fan_out.virtual_server, omission.server, omission.reason
                ),
            );
        }
        if let Some(record) = self.audit.as_mut() {
            // Counted with the exchange's metrics (`meshgate.fan_out_omissions`).
            record.fan_out_omissions = omitted.iter().map(|o| o.server.clone()).collect();
            record.upstream_answer(Some(200), None);
            record.finish();
        }
        self.publish_audit(host, Moment::Settled);
        host.send_local_reply(200, &[("content-type", "application/json")], &body);
        true
    }

    /// Request headers: route, identity and the head checks; a POST waits for its body.
    pub fn on_request_headers(&mut self, host: &mut impl Host, tokens: &mut TokenCache, end_of_stream: bool) -> Flow {
        let started = host.now_ns();
        let now = started / 1_000_000_000;
        let gateway = &self.gateway;
        // Decided while the host lends the headers; what outlives them is owned: the
        // decision, the names to strip, and the record of a refusal (which names the path).
        let (decision, strip, refused, subject) = host.with_request_headers(|headers| {
            let find = |name: &str| header_value(headers, name).unwrap_or_default();
            let head = RequestHead { method: find(":method"), path: find(":path"), headers, end_of_stream };
            let decision = gateway.on_request_head(head, now, tokens);
            // The subject token of a token exchange: kept only when a server has one, and
            // only when the caller authenticated with it.
            let subject = match &decision {
                HeadDecision::Forward(Exchange { consumer, .. }) if !gateway.config().token_exchanges.is_empty() => {
                    subject_token(consumer, headers)
                }
                HeadDecision::AwaitBody(p) if !gateway.config().token_exchanges.is_empty() => {
                    subject_token(p.consumer(), headers)
                }
                _ => None,
            };
            let (strip, refused) = match &decision {
                HeadDecision::PassThrough => (Vec::new(), None),
                HeadDecision::Reject(_) => {
                    let config = gateway.config();
                    (Vec::new(), Some(AuditRecord::for_path(&config.route_prefix, &config.servers, head.path)))
                }
                HeadDecision::Forward(_) | HeadDecision::AwaitBody(_) => (headers_to_strip(headers), None),
                HeadDecision::Session(_) => {
                    let config = gateway.config();
                    (Vec::new(), Some(AuditRecord::for_path(&config.route_prefix, &config.servers, head.path)))
                }
            };
            (decision, strip, refused, subject)
        });
        self.subject_token = subject;
        self.decision_ns += host.now_ns().saturating_sub(started);
        match decision {
            HeadDecision::PassThrough => {
                self.state = State::Done;
                Flow::Continue
            }
            HeadDecision::Reject(r) => {
                self.audit = refused;
                self.reject(host, &r)
            }
            HeadDecision::Forward(exchange) => {
                self.audit = Some(AuditRecord::for_exchange(&exchange));
                Self::strip_request_headers(host, &strip);
                self.forward(host, exchange)
            }
            HeadDecision::Session(op) => {
                // A virtual server's session end: answered from callouts.
                self.audit = refused;
                self.start_session_op(host, op)
            }
            HeadDecision::AwaitBody(pending) => {
                Self::strip_request_headers(host, &strip);
                if end_of_stream {
                    // A POST without a body: decide now (it is refused as unparsable).
                    return self.decide_body(host, &pending, 0);
                }
                host.hold_body(self.gateway.config().limits.head_request_bytes(pending.server()));
                self.state = State::AwaitingBody { pending, buffered: 0 };
                Flow::Pause
            }
        }
    }

    /// A request body callback; `body_size` is all Envoy holds of the body so far.
    pub fn on_request_body(&mut self, host: &mut impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        let State::AwaitingBody { pending, buffered } = &mut self.state else {
            return Flow::Continue;
        };
        if let Some(r) = self.gateway.request_too_large(pending, body_size as u64) {
            self.audit = Some(AuditRecord::for_pending(pending, &[]));
            return self.reject(host, &r);
        }
        if !end_of_stream {
            *buffered = body_size;
            return Flow::Pause;
        }
        let pending = pending.clone();
        self.decide_body(host, &pending, body_size)
    }

    /// Trailers end the request: no body callback with `end_of_stream` follows, and
    /// continuing here would send the buffered body upstream undecided. Decide on it now.
    pub fn on_request_trailers(&mut self, host: &mut impl Host) -> Flow {
        let State::AwaitingBody { pending, buffered } = &self.state else {
            return Flow::Continue;
        };
        let (pending, buffered) = (pending.clone(), *buffered);
        self.decide_body(host, &pending, buffered)
    }

    /// Response headers: the global rate limit's refusal, and the plan for the body.
    pub fn on_response_headers(&mut self, host: &mut impl Host, end_of_stream: bool) -> Flow {
        let State::Forwarded(exchange) = &self.state else {
            return Flow::Continue;
        };
        if exchange.session_backend.is_some() {
            // A virtual server's session: the client keeps its sealed id. A backend's own
            // id would replace it in clients that take the id from any answer.
            host.set_response_header(crate::mcp::header::SESSION_ID, None);
        }
        let gateway = &self.gateway;
        // One host call for every header: in proxy-wasm each host call that returns data
        // costs a callback into the VM to allocate its buffer, about as much as copying a
        // whole header map. The plan is a pure function of the headers: it is settled while
        // they are lent, and acted on after.
        let (status, seen) = host.with_response_headers(|headers| {
            let header = |name: &str| header_value(headers, name);
            let status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
            // Only a 429 can be the ratelimit filter's refusal.
            let ratelimited = status == 429
                && header(quota::ENVOY_RATELIMITED_HEADER).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
            if ratelimited {
                let refusal = quota::GlobalRefusal {
                    rule: header(quota::LIMIT_RULE_RESPONSE_HEADER),
                    retry_after: header("retry-after"),
                    ratelimit_reset: header("x-ratelimit-reset"),
                    error: header(quota::LIMIT_ERROR_RESPONSE_HEADER),
                };
                return (status, Err(gateway.global_rejection(exchange, &refusal)));
            }
            // Repeated headers joined, as clients read them.
            let plan = exchange.response_plan_from(status, &mut |name| header_values(headers, name).map(String::from));
            (status, Ok(plan))
        });
        if let Some(record) = self.audit.as_mut() {
            record.upstream_answer(Some(status), None);
        }
        let plan = match seen {
            Ok(plan) => plan,
            Err(r) => {
                host.log(
                    Level::Info,
                    format_args!(
                        "meshgate: refused by the global rate limit consumer={} reason={}",
                        exchange.consumer.name, r.message
                    ),
                );
                return self.replace_response(host, &r, end_of_stream);
            }
        };
        if end_of_stream {
            // No body callback follows: settle now, the last chance before the span ends.
            if let Some(record) = self.audit.as_mut() {
                record.redactions = self.redactions.clone();
                record.finish();
            }
            self.publish_audit(host, Moment::Settled);
        }
        let State::Forwarded(exchange) = &self.state else {
            return Flow::Continue;
        };
        self.response = match plan {
            ResponsePlan::Fail(r) => return self.replace_response(host, &r, end_of_stream),
            ResponsePlan::PassThrough => return Flow::Continue,
            ResponsePlan::Buffer(kind) => {
                host.hold_body(exchange.response_limit.unwrap_or_else(|| self.gateway.max_response_bytes()));
                Response::Buffer(kind)
            }
            ResponsePlan::Stream => Response::Stream(SseRewriter::new()),
            ResponsePlan::Replace(body) => {
                host.set_response_header("content-encoding", None);
                host.set_response_header("content-type", Some("application/json"));
                Response::Replace(body)
            }
        };
        host.set_response_header("content-length", None);
        Flow::Continue
    }

    /// A response body callback; `body_size` is what [`Host::response_body`] returns.
    pub fn on_response_body(&mut self, host: &mut impl Host, body_size: usize, end_of_stream: bool) -> Flow {
        // The chunk is copied out of Envoy at most once per callback, for the error check
        // and the rewrite alike. A body being buffered is looked at whole, at its end.
        let mut chunk = None;
        if end_of_stream || !matches!(self.response, Response::Buffer(_)) {
            self.note_upstream_error(host, body_size, &mut chunk);
        }
        let flow = self.govern_response_body(host, body_size, end_of_stream, &mut chunk);
        if end_of_stream {
            // Settle the decision now: span tags are read when the stream ends, before on_log.
            if let Some(record) = self.audit.as_mut() {
                record.redactions = self.redactions.clone();
                record.finish();
            }
            self.publish_audit(host, Moment::Settled);
        }
        flow
    }

    /// The stream ended, however it ended: give the in-flight slot back, write the audit
    /// record for the access log, record the metrics. Called once per stream.
    pub fn on_log(&mut self, host: &mut impl Host) {
        self.release_in_flight(host);
        self.abandon_token_wait(host);
        if matches!(
            self.state,
            State::FanningOut { .. } | State::SessionCallouts { .. } | State::AwaitingApproval { .. }
        ) {
            // The client went away during a fan-out: a callout ending later answers nobody.
            self.state = State::Done;
        }
        let Some(mut record) = self.audit.take() else {
            return;
        };
        record.redactions = std::mem::take(&mut self.redactions);
        record.decision_us = self.decision_ns / 1000;
        record.finish();
        self.audit = Some(record);
        self.publish_audit(host, Moment::Log);
        if let Some(record) = &self.audit {
            host.record_metrics(record, self.gateway.config().metrics);
        }
    }

    /// The response body Envoy holds for this callback, read from the host on first use.
    fn response_chunk<'a>(host: &mut impl Host, cache: &'a mut Option<Vec<u8>>, body_size: usize) -> &'a [u8] {
        cache.get_or_insert_with(|| host.response_body(body_size))
    }

    /// Looks for a JSON-RPC error in the upstream's answer to a request, before any rewrite.
    fn note_upstream_error(&mut self, host: &mut impl Host, body_size: usize, chunk: &mut Option<Vec<u8>>) {
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
        let code = match (chunk.as_deref(), &self.response) {
            (Some(bytes), _) => audit::response_error_code(bytes),
            // Nothing rewrites this body: look at it where the host holds it.
            (None, Response::Untouched) => host.with_response_body(body_size, audit::response_error_code),
            (None, _) => audit::response_error_code(Self::response_chunk(host, chunk, body_size)),
        };
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

    fn govern_response_body(
        &mut self,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
        chunk: &mut Option<Vec<u8>>,
    ) -> Flow {
        let State::Forwarded(exchange) = &self.state else {
            return Flow::Continue;
        };
        let policy = &self.gateway.config().policy;
        match std::mem::replace(&mut self.response, Response::Untouched) {
            Response::Untouched => Flow::Continue,
            Response::Buffer(kind) => {
                let limit = exchange.response_limit.unwrap_or_else(|| self.gateway.max_response_bytes());
                if body_size as u64 > limit {
                    let message = format!("upstream response exceeds the {limit}-byte limit");
                    let body = error_body(exchange.request_id(), code::INTERNAL_ERROR, &message);
                    host.set_response_body(body_size, &body);
                    // Anything still to come is dropped.
                    self.response = Response::Replace(Vec::new());
                    return Flow::Continue;
                }
                if !end_of_stream {
                    self.response = Response::Buffer(kind);
                    return Flow::Pause;
                }
                let body = Self::response_chunk(host, chunk, body_size);
                if let Some(new) = exchange.rewrite_body(kind, body, policy, &mut self.redactions) {
                    Self::note_blocked(&mut self.audit, &new, &exchange.server);
                    host.set_response_body(body_size, &new);
                }
                report_pin_drift(host, exchange, &mut self.audit, &self.gateway);
                Flow::Continue
            }
            Response::Stream(mut rewriter) => {
                let chunk = Self::response_chunk(host, chunk, body_size);
                let counts = &mut self.redactions;
                let mut rewrite = |data: EventData<'_>| exchange.rewrite_event(data, policy, counts);
                let mut out = rewriter.feed(chunk, &mut rewrite);
                if end_of_stream {
                    out.extend(rewriter.finish(&mut rewrite));
                }
                report_pin_drift(host, exchange, &mut self.audit, &self.gateway);
                // An event still growing past the limit is never sent: the stream ends with
                // an error for the request, and the rest of the upstream's bytes are dropped.
                // Streams without a request (GET) are bounded by the default limit: the
                // filter never holds an unbounded event.
                let limit = exchange.response_limit.unwrap_or_else(|| self.gateway.max_response_bytes());
                let overflow = Some(limit).filter(|l| rewriter.pending_len() as u64 > *l);
                if let Some(limit) = overflow {
                    out.extend(exchange.oversized_sse_event(limit));
                    host.set_response_body(body_size, &out);
                    self.response = Response::Replace(Vec::new());
                    return Flow::Continue;
                }
                if out != chunk {
                    Self::note_blocked(&mut self.audit, &out, &exchange.server);
                    host.set_response_body(body_size, &out);
                }
                self.response = Response::Stream(rewriter);
                Flow::Continue
            }
            Response::Replace(body) => {
                let replacement = if end_of_stream { body.as_slice() } else { &[] };
                host.set_response_body(body_size, replacement);
                if !end_of_stream {
                    self.response = Response::Replace(body);
                }
                Flow::Continue
            }
        }
    }
}

/// The caller's bearer token, when it authenticated with one (a JWT consumer).
fn subject_token(consumer: &crate::identity::Consumer, headers: &[(&str, &str)]) -> Option<SubjectToken> {
    if consumer.method != crate::identity::AuthMethod::Jwt {
        return None;
    }
    let value = header_value(headers, "authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| SubjectToken(token.to_string()))
}

impl Stream {
    /// Forwards an allowed exchange: at once, or (a server with token exchange) once the
    /// caller's upstream token is on it. The flow of the callback deciding it.
    fn forward(&mut self, host: &mut impl Host, exchange: Exchange) -> Flow {
        // Without token exchange anywhere (the common case) not even a map lookup.
        if self.gateway.config().token_exchanges.is_empty() {
            self.state = State::Forwarded(exchange);
            return Flow::Continue;
        }
        let gateway = self.gateway.clone();
        let Some(x) = gateway.config().token_exchanges.get(&exchange.server) else {
            self.state = State::Forwarded(exchange);
            return Flow::Continue;
        };
        if self.subject_token.is_none() || exchange.consumer.method != crate::identity::AuthMethod::Jwt {
            return match x.no_subject_token() {
                // Envoy injects the server's static credential (the header stays stripped).
                NoSubjectToken::Static => {
                    self.state = State::Forwarded(exchange);
                    Flow::Continue
                }
                NoSubjectToken::Refuse => {
                    let r = Rejection::forbidden(format!(
                        "server \"{}\" acts as the calling user and needs the caller's bearer token; \
                         consumer \"{}\" authenticated without one",
                        exchange.server,
                        crate::reject::printable(&exchange.consumer.name)
                    ))
                    .with_id(exchange.request_id());
                    self.refuse_token(host, &r)
                }
            };
        }
        let identity = x.identity(&exchange.consumer.name);
        let key = x.slot_key(&identity);
        self.look_up_token(host, exchange, x, identity, key, None)
    }

    /// Looks at the token cache: a hit forwards, a miss leads the exchange or waits for
    /// the one in flight. `since_ns`: when this stream parked (a woken waiter).
    fn look_up_token(
        &mut self,
        host: &mut impl Host,
        exchange: Exchange,
        x: &TokenExchange,
        identity: String,
        key: String,
        since_ns: Option<u64>,
    ) -> Flow {
        let now_ns = host.now_ns();
        let lease_deadline_ns = x.lease_deadline(now_ns);
        let mut lookup = Lookup::Lead;
        let mut compute = |stored: Option<&[u8]>| {
            let (seen, write) = upstream_token::look(stored, &identity, now_ns, lease_deadline_ns, since_ns);
            lookup = seen;
            write
        };
        if let Err(e) = host.update_counter(&key, None, now_ns, &mut compute) {
            // No cache: this call makes its own exchange (nothing is shared or kept).
            host.log(Level::Warn, format_args!("meshgate: upstream token cache of {} unavailable: {e}", x.server));
            lookup = Lookup::Lead;
        }
        match lookup {
            Lookup::Hit(token) => {
                self.note_token(crate::audit::TokenOutcome::CacheHit);
                self.forward_with_token(host, exchange, &token)
            }
            Lookup::Wait => {
                if !host.park_for_token(&key) {
                    let r = token_refusal(&exchange, "the gateway could not wait for the exchange in flight");
                    return self.refuse_token(host, &r);
                }
                let step = TokenStep::Waiting { since_ns: since_ns.unwrap_or(now_ns) };
                self.state = State::AwaitingToken { exchange, wait: TokenWait { identity, key, step } };
                Flow::Pause
            }
            Lookup::Failed => {
                let r = token_refusal(&exchange, "the exchange it waited for failed");
                self.refuse_token(host, &r)
            }
            Lookup::Lead => {
                let subject = self.subject_token.as_ref().map_or("", |t| t.0.as_str());
                match host.start_callout(&x.request(subject)) {
                    Ok(id) => {
                        let step = TokenStep::Leading { id, lease_deadline_ns };
                        self.state = State::AwaitingToken { exchange, wait: TokenWait { identity, key, step } };
                        Flow::Pause
                    }
                    Err(e) => {
                        host.log(
                            Level::Error,
                            format_args!("meshgate: token exchange for {} could not start: {e}", x.server),
                        );
                        settle_token(host, &key, &identity, lease_deadline_ns, Err(()));
                        let r = token_refusal(&exchange, "the token endpoint could not be called");
                        self.refuse_token(host, &r)
                    }
                }
            }
        }
    }

    /// The host woke this stream, parked for its upstream token: look again.
    pub fn on_token_ready(&mut self, host: &mut impl Host) {
        let State::AwaitingToken { wait: TokenWait { step: TokenStep::Waiting { since_ns }, .. }, .. } = &self.state
        else {
            return;
        };
        let since_ns = *since_ns;
        let State::AwaitingToken { exchange, wait } = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let gateway = self.gateway.clone();
        let Some(x) = gateway.config().token_exchanges.get(&exchange.server) else {
            return;
        };
        if let Flow::Continue = self.look_up_token(host, exchange, x, wait.identity, wait.key, Some(since_ns)) {
            host.resume_request();
        }
    }

    /// The exchange's callout ended: settle the cache slot, wake the waiters, and forward
    /// with the token or refuse.
    fn token_exchanged(&mut self, host: &mut impl Host, response: Result<CalloutResponse, String>) {
        let State::AwaitingToken { exchange, wait } = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let TokenStep::Leading { lease_deadline_ns, .. } = wait.step else {
            return;
        };
        let gateway = self.gateway.clone();
        let Some(x) = gateway.config().token_exchanges.get(&exchange.server) else {
            return;
        };
        let now_ns = host.now_ns();
        let answer = match &response {
            Ok(r) => x.read_answer(r.status, &r.body, now_ns),
            Err(e) => Err(format!("the token endpoint did not answer ({e})")),
        };
        let settled = answer.as_ref().map(|(token, until)| (token.as_str(), *until)).map_err(|_| ());
        settle_token(host, &wait.key, &wait.identity, lease_deadline_ns, settled);
        match answer {
            Ok((token, _)) => {
                self.note_token(crate::audit::TokenOutcome::Exchanged);
                if let Flow::Continue = self.forward_with_token(host, exchange, &token) {
                    host.resume_request();
                }
            }
            Err(why) => {
                host.log(
                    Level::Warn,
                    format_args!(
                        "meshgate: upstream token for consumer={} server={} not obtained: {why}",
                        exchange.consumer.name, exchange.server
                    ),
                );
                let r = token_refusal(&exchange, &why);
                self.refuse_token(host, &r);
            }
        }
    }

    /// A stream that ends while it waits for its token: a lease it holds is released (the
    /// waiters then make the exchange themselves); a parked stream just goes.
    fn abandon_token_wait(&mut self, host: &mut impl Host) {
        let State::AwaitingToken { wait, .. } = &self.state else {
            return;
        };
        if let TokenStep::Leading { lease_deadline_ns, .. } = wait.step {
            let (key, identity) = (wait.key.clone(), wait.identity.clone());
            let now_ns = host.now_ns();
            let mut compute = |stored: Option<&[u8]>| upstream_token::release(stored, &identity, lease_deadline_ns);
            if let Err(e) = host.update_counter(&key, None, now_ns, &mut compute) {
                host.log(Level::Warn, format_args!("meshgate: upstream token lease not released: {e}"));
            }
            host.wake_token_waiters(&key);
        }
        self.state = State::Done;
    }

    /// Sets the upstream token and forwards ([`Flow::Continue`]: a paused request is
    /// resumed by the caller).
    fn forward_with_token(&mut self, host: &mut impl Host, exchange: Exchange, token: &str) -> Flow {
        let mut value = String::with_capacity(token.len() + 7);
        value.push_str("Bearer ");
        value.push_str(token);
        host.set_request_header("authorization", Some(&value));
        // The subject token is not needed any more.
        self.subject_token = None;
        self.state = State::Forwarded(exchange);
        Flow::Continue
    }

    fn note_token(&mut self, outcome: crate::audit::TokenOutcome) {
        if let Some(record) = self.audit.as_mut() {
            record.upstream_token = Some(outcome);
        }
    }

    /// Refuses a call whose upstream token could not be obtained (or is not to be had).
    fn refuse_token(&mut self, host: &mut impl Host, r: &Rejection) -> Flow {
        self.note_token(crate::audit::TokenOutcome::Failed);
        self.subject_token = None;
        self.reject(host, r)
    }
}

/// The refusal of a call whose upstream token could not be obtained: names the server and
/// why in words safe to show (never a token, never the client secret).
fn token_refusal(exchange: &Exchange, why: &str) -> Rejection {
    Rejection::upstream_failed(
        503,
        exchange.request_id(),
        format!("the upstream credential for server \"{}\" could not be obtained: {why}", exchange.server),
    )
}

/// Writes the outcome of an exchange into its cache slot (while it still holds this
/// exchange's lease) and wakes the streams parked on it.
fn settle_token(
    host: &mut impl Host,
    key: &str,
    identity: &str,
    lease_deadline_ns: u64,
    outcome: Result<(&str, u64), ()>,
) {
    let now_ns = host.now_ns();
    let mut compute =
        |stored: Option<&[u8]>| upstream_token::settle(stored, identity, lease_deadline_ns, outcome, now_ns);
    if let Err(e) = host.update_counter(key, None, now_ns, &mut compute) {
        host.log(Level::Warn, format_args!("meshgate: upstream token cache not updated: {e}"));
    }
    host.wake_token_waiters(key);
}

/// Updates the server's drift state, counts the pin drift an exchange's answer showed (every
/// time, in the audit record's metrics) and logs each drift once per change across this Envoy's
/// workers ([`crate::pinning::note_logged`]), also written into the audit record's
/// `mcp_pin_drift`. When the dedupe set cannot be read or written the lines are logged
/// anyway (a duplicate line beats a lost one).
fn report_pin_drift(host: &mut impl Host, exchange: &Exchange, audit: &mut Option<AuditRecord>, gateway: &Gateway) {
    let report = exchange.take_pin_drifts();
    if report.is_empty() {
        return;
    }
    let now_ns = host.now_ns();
    // The drift state calls are checked against: one read, and a write only when it changed.
    if let Some(pins) = &exchange.server_pins {
        let mut compute = |stored: Option<&[u8]>| crate::pinning::merge_state(stored, &report);
        if let Err(e) = host.update_counter(&pins.state_key(), None, now_ns, &mut compute) {
            host.log(Level::Error, format_args!("meshgate: pin drift state of {} not updated: {e}", pins.server));
        }
    }
    if report.drifts.is_empty() {
        return;
    }
    if let Some(record) = audit.as_mut() {
        record.pin_drifts.extend(report.drifts.iter().map(|d| (d.kind.noun(), d.change.as_str())));
    }
    // One line per change: the server's dedupe set (one shared key per server) says which
    // drifts were logged already. When it cannot be read, every line is written.
    let server = &report.drifts[0].server;
    let mut fresh: Vec<usize> = (0..report.drifts.len()).collect();
    let mut compute = |stored: Option<&[u8]>| {
        let (new, write) = crate::pinning::note_logged(stored, &report.drifts);
        fresh = new;
        write
    };
    if let Err(e) = host.update_counter(&crate::pinning::logged_key(server), None, now_ns, &mut compute) {
        host.log(Level::Warn, format_args!("meshgate: pin drift log dedupe of {server} unavailable: {e}"));
        fresh = (0..report.drifts.len()).collect();
    }
    let mode = gateway.config().pins.server(server).map_or(PinMode::Observe, |p| p.mode);
    let mut value = String::new();
    let fresh: Vec<_> = fresh.into_iter().filter_map(|i| report.drifts.get(i)).collect();
    for (i, drift) in fresh.iter().enumerate() {
        host.log(Level::Warn, format_args!("{}", drift.audit_line(mode)));
        if i < crate::audit::MAX_PIN_DRIFTS_AUDITED {
            if i > 0 {
                value.push_str("; ");
            }
            value.push_str(&drift.audit_value(mode));
        }
    }
    if fresh.len() > crate::audit::MAX_PIN_DRIFTS_AUDITED {
        value.push_str(&format!("; … and {} more", fresh.len() - crate::audit::MAX_PIN_DRIFTS_AUDITED));
    }
    if let (Some(record), false) = (audit.as_mut(), value.is_empty()) {
        record.pin_drift = Some(value);
    }
}

/// Charges one local counter. `Ok(None)`: admitted; `Ok(Some(secs))`: refused, retry after.
/// When `cap` counters exist and this call's does not, its rule's overflow counter is
/// charged instead (see [`LocalCharge::overflow_key`]).
fn take(host: &mut impl Host, charge: &LocalCharge, cap: u64, now_ns: u64) -> Result<Option<u64>, CounterError> {
    let mut refused = None;
    let mut compute = |bytes: Option<&[u8]>| {
        let taken = charge.limit.take(bytes.and_then(QuotaState::decode), now_ns);
        if taken.admitted {
            refused = None;
            Some(taken.state.encode().to_vec())
        } else {
            // A refusal changes nothing that matters: skip the write, spare the contention.
            refused = Some(taken.retry_after_secs);
            None
        }
    };
    match host.update_counter(&charge.shared_key, Some(cap), now_ns, &mut compute) {
        Err(e @ CounterError::Full { .. }) => {
            warn_overflow_once(host, &e);
            host.update_counter(&charge.overflow_key(), None, now_ns, &mut compute)?;
        }
        other => other?,
    }
    Ok(refused)
}

/// Logs, once per worker thread, that new quota counters go to overflow counters.
fn warn_overflow_once(host: &mut impl Host, e: &CounterError) {
    thread_local! {
        static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        host.log(
            Level::Warn,
            format_args!(
                "meshgate: {e}: calls needing a new quota counter are charged to their rule's overflow counter"
            ),
        );
    }
}

/// A callout's answer: the response, or why there is none.
type CalloutAnswer = Result<CalloutResponse, String>;

/// The ids and answers slots of callouts started for one request: `Some(id)` with an empty
/// slot for each callout that started, `None` with its failure already answered for each one
/// that could not.
fn start_callouts<'r>(
    host: &mut impl Host,
    requests: impl Iterator<Item = &'r CalloutRequest>,
) -> (Vec<Option<u64>>, Vec<Option<CalloutAnswer>>) {
    let (mut ids, mut answers) = (Vec::new(), Vec::new());
    for request in requests {
        match host.start_callout(request) {
            Ok(id) => {
                ids.push(Some(id));
                answers.push(None);
            }
            Err(e) => {
                ids.push(None);
                answers.push(Some(Err(format!("the callout could not start: {e}"))));
            }
        }
    }
    (ids, answers)
}

#[cfg(test)]
mod tests;
